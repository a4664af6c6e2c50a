"""ComfyUI nodes (V3 schema). Each node is thin: validate, call lora_math, call `patching`, return."""

from comfy_api.latest import ComfyExtension, io

from .files.save_lora import LoomSaveLora
from .load.info import LoomLoraInfo
from .load.loader import LoomLoraLoader
from .load.stack import LoomLoraStack
from .schedule.make_schedule import LoomLoraSchedule
from .schedule.schedule_lora import LoomScheduleLora
from .tools.balance import LoomBalanceStack
from .tools.extract import LoomExtractLora
from .tools.interference import LoomLoraInterference
from .tools.merge import LoomMergeLoras
from .tools.resize import LoomConvertLora, LoomResizeLora
from .train.load_images import LoomLoadTrainingImages
from .train.train_lora import LoomTrainLora

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
