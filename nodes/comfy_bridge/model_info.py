"""Per model (shared by all its clones): weight keys and shapes, and each LoRA file's key match against them."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from ...lora_math.errors import LoraShapeError
from ...lora_math.formats import ParsedLoRA
from ...lora_math.lru import LRU
from ...lora_math.names import families, keymap, near_misses

_MATCH_CACHE_SIZE = 64


class ModelInfo:
    """Key shapes, fast-path eligibility per key, key matches per file, for one ``torch.nn.Module``."""

    def __init__(self, module, backup=None) -> None:
        backup = backup or {}
        # A loaded clone may hold a patched weight of another shape (a FLUX control LoRA's widened img_in): the
        # shape a LoRA is matched against is the original's, which ComfyUI keeps in the patchers' shared backup.
        self.keys = {k: tuple((backup[k].weight if k in backup else v).shape) for k, v in module.state_dict().items()}
        self.eligible: dict[str, bool] = {}
        # (id(parsed), models) -> match. Entries die with their parsed file (the file cache decides how
        # long that lives), so this cache never keeps a LoRA's tensors in memory on its own.
        self.matches: LRU = LRU(_MATCH_CACHE_SIZE)


_infos: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def info(patcher) -> ModelInfo:
    found = _infos.get(patcher.model)
    if found is None:
        found = _infos[patcher.model] = ModelInfo(patcher.model, getattr(patcher, "backup", None))
    return found


def infos(model, clip) -> list[ModelInfo]:
    return [info(p) for p in (model, clip.patcher if clip is not None else None) if p is not None]


def model_keys(model, clip=None) -> dict[str, tuple[int, ...]]:
    """Weight key -> shape for a MODEL and/or CLIP, as ComfyUI's patchers name them (cached per model)."""
    keys: dict[str, tuple[int, ...]] = {}
    for found in infos(model, clip):
        keys.update(found.keys)
    return keys


def _families(parsed: ParsedLoRA, keys) -> tuple[str, str]:
    """(the file's family, the model's), ``unknown`` where it cannot be told."""
    return families.from_file(parsed), families.from_model_keys(keys)


def cached_match(name: str, parsed: ParsedLoRA, input_name: str, models: Sequence[ModelInfo]) -> keymap.KeyMatch:
    """Key match of a parsed file against the given models, cached while both live; ValueError naming
    ``input_name`` and the file when nothing in the file matches or a module does not fit its weight."""
    cache = models[0].matches
    token = (id(parsed), *(id(i) for i in models))
    match = cache.get(token)
    if match is None:
        keys: dict[str, tuple[int, ...]] = {}
        for found in models:
            keys.update(found.keys)
        try:
            match = cache.put(token, keymap.match(parsed, keys))
        except LoraShapeError as exc:  # the message names the module and weights; the user picks the file
            lora, model = _families(parsed, keys)
            told = "unknown" not in (lora, model) and lora != model
            differ = f" is a {lora} LoRA and this model is {model}" if told else ""
            raise LoraShapeError(f"{input_name}: '{name}'{differ}: {exc}") from exc
        weakref.finalize(parsed, cache.pop, token, None)  # before its id can be reused
    if not match.patches:
        keys = {k: v for found in models for k, v in found.keys.items()}
        hint = near_misses.diagnose(parsed, keys)
        if hint:
            raise ValueError(f"{input_name}: '{name}': {hint}")
        lora, model = _families(parsed, keys)
        first = next(iter(parsed.modules), "-")
        raise ValueError(
            f"{input_name}: nothing in '{name}' ({parsed.format}, {match.targets} modules, first {first}) matches "
            "this model"
            + (f"; it looks like a {lora} LoRA" if lora != "unknown" else "")
            + (f" and this model is {model}" if "unknown" not in (lora, model) and lora != model else "")
            + "; load it with a matching checkpoint"
        )
    return match
