"""ComfyUI nodes (V3 schema). Each node is thin: validate, call lora_math, call `patching`, return."""

from comfy_api.latest import ComfyExtension, io

from .dataset import LoomLoadTrainingImages
from .info import LoomLoraInfo
from .interference_node import LoomBalanceStack, LoomLoraInterference
from .loader import LoomLoraLoader
from .lora_utilities import LoomConvertLora, LoomExtractLora, LoomMergeLoras, LoomResizeLora
from .save_lora import LoomSaveLora
from .schedule_node import LoomLoraSchedule
from .schedule_stack import LoomScheduleLora
from .stack import LoomLoraStack
from .train import LoomTrainLora

NODES: list[type[io.ComfyNode]] = [
    LoomLoraLoader,
    LoomLoraStack,
    LoomLoraInfo,
    LoomLoraSchedule,
    LoomScheduleLora,
    LoomLoadTrainingImages,
    LoomTrainLora,
    LoomSaveLora,
    LoomLoraInterference,
    LoomBalanceStack,
    LoomMergeLoras,
    LoomResizeLora,
    LoomConvertLora,
    LoomExtractLora,
]


class LoomExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from . import web_routes

        web_routes.register()  # the web panels' routes, when ComfyUI's server runs (before it mounts its routes)
        return list(NODES)
