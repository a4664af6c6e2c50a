"""Loom Save LoRA: a trained LoRA, or a LoRA utility's result, as a kohya-format safetensors file in ComfyUI's
`loras` folder.

The file (``lora_unet_…`` / ``lora_te…`` names, ``.alpha`` per module, ``ss_*`` / ``modelspec.*`` / ``loom_*``
metadata) loads in ComfyUI's LoraLoader, LoRA Loom's loaders, A1111/Forge and kohya's tools; it lands in the first
`loras` folder so every loader lists it right away. Beside a trained LoRA, ``<name>.loom-state`` keeps the fp32
factors and the optimizer state for resuming (utilities' results have none). The work is ``lora_math.save``;
this node validates the inputs and picks the path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import folder_paths
import torch
from comfy_api.latest import io, ui

from ...lora_math import save as lora_save
from ...lora_math.stack import LoraStackEntry, check_name

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DEFAULT_PREFIX = "loom/my_lora"
_BAD_CHARS = re.compile(r'[<>:"|?*\x00-\x1f]')


def relative_name(filename_prefix: str) -> str:
    """``filename_prefix`` -> the file's name under `loras` (``loom/my_lora.safetensors``); ValueError names it."""
    text = (filename_prefix or "").strip().replace("\\", "/")
    where = f"filename_prefix: {filename_prefix!r}"
    if not text:
        raise ValueError(f"{where} is empty; give a name such as {DEFAULT_PREFIX!r}")
    check_name(text, "filename_prefix", f"give a name under the `loras` folder, e.g. {DEFAULT_PREFIX!r}")
    parts = PurePosixPath(text).parts
    if text.endswith("/") or not parts:
        raise ValueError(f"{where} ends in a folder; add a file name, e.g. {text}my_lora")
    bad = _BAD_CHARS.search(text)
    if bad:
        raise ValueError(f"{where} contains {bad.group()!r}, which file names cannot hold on every system")
    if any(p.endswith((".", " ")) for p in parts):
        raise ValueError(f"{where}: a folder or file name ends in '.' or a space, which Windows cannot store")
    name = "/".join(p for p in parts if p != ".")
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not name or name.endswith("/"):
        raise ValueError(f"{where} has no file name")
    return name + ".safetensors"


def _model_keys(lora) -> list[str] | None:
    """The model's full list of weight keys the trainer stored (``base['model_keys']``, or ``module_paths``)."""
    base = getattr(lora, "base", None) or {}
    keys = base.get("model_keys")
    if keys:
        return list(keys)
    paths = base.get("module_paths")
    if paths:
        out = []
        for p in paths:
            p = p if p.startswith(lora_save.UNET_PREFIX) else lora_save.UNET_PREFIX + p
            out.append(p if p.endswith((".weight", ".bias")) else p + ".weight")
        return out
    return None


def _check_lora(lora) -> None:
    if lora is None or not all(hasattr(lora, a) for a in ("modules", "alpha", "rank", "arch", "base", "operation")):
        raise ValueError(
            f"lora: expected a LOOM_LORA from Loom Train LoRA or a Loom LoRA utility node, got {type(lora).__name__}"
        )
    if not lora.modules:
        raise ValueError("lora: the LoRA holds no modules; nothing to save")


def _made_by(lora) -> str:
    """What a utility made: ``merge of 3 LoRAs``, ``extract of 2 models`` …; "" for a trained LoRA."""
    if lora.operation == "train":
        return ""
    n = len(lora.sources)
    noun = "model" if lora.operation == "extract" else "LoRA"
    return f"{lora.operation} of {n} {noun}{'' if n == 1 else 's'}"


def _diffs(lora) -> str:
    n = len(getattr(lora, "diffs", {}))
    return f" + {n} bias/norm diffs" if n else ""


def _rank_alpha(lora) -> str:
    """``rank 4, alpha 8`` for a trained LoRA (or any LoRA of one rank and alpha); ranges when modules differ."""
    ranks = sorted({lora.rank_of(k) for k in lora.modules}) if lora.operation != "train" else [lora.rank]
    alphas = sorted({lora.alpha_of(k) for k in lora.modules}) if lora.operation != "train" else [lora.alpha]
    rank = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
    alpha = f"alpha {alphas[0]:g}" if len(alphas) == 1 else f"alphas {alphas[0]:g}-{alphas[-1]:g}"
    return f"{rank}, {alpha}"


def _kohya_names(lora) -> dict[str, str]:
    """The kohya name of every module; SD1.x/SD2 names need the model's full key list, which the LoRA carries."""
    keys = _model_keys(lora)
    unet = any(k.startswith(lora_save.UNET_PREFIX) for k in lora.modules)
    if keys is None and unet and lora.arch in ("sd15", "sd2"):
        again = (
            "train it again with the current Loom Train LoRA"
            if lora.operation == "train"
            else f"run the Loom LoRA utility ({lora.operation}) again with the current LoRA Loom"
        )
        raise ValueError(
            "lora: this LoRA carries no list of the model's weight keys (base['model_keys']), which SD1.x/SD2 "
            f"names need; {again}"
        )
    return lora_save.kohya_names(lora_save.named_keys(lora), lora.arch, keys)


def _report(lora, shown: str, path: Path, root: Path, save_dtype: str) -> str:
    size = path.stat().st_size
    text = (
        f"saved {shown} ({len(lora.modules)} modules{_diffs(lora)}, {_rank_alpha(lora)}, {save_dtype}, "
        f"{size / 2**20:.1f} MiB) in {root}"
    )
    if lora.operation == "train":
        text += f"; resume state: {lora_save.state_path(path).name}"
    else:
        text += f"; {_made_by(lora)}"
    if lora.interrupted:
        text += f"; training was interrupted at step {lora.step}"
    return text


class LoomSaveLora(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomSaveLora",
            display_name="Loom Save LoRA",
            category="loom/train",
            description="Save a trained LoRA, or the result of a Loom LoRA utility (merge, resize, extract, "
            "convert), as a kohya-format .safetensors file (with metadata, trigger words and provenance) in the "
            "`loras` folder, where every LoRA loader finds it. Beside a trained LoRA a resume file "
            "(<name>.loom-state: fp32 factors and optimizer state) is written.",
            is_output_node=True,
            inputs=[
                io.Custom("LOOM_LORA").Input(
                    "lora",
                    tooltip="The LoRA from Loom Train LoRA or from a Loom LoRA utility node (merge, resize, extract, "
                    "convert).",
                ),
                io.String.Input(
                    "filename_prefix",
                    default=DEFAULT_PREFIX,
                    tooltip="File name under the `loras` folder, without .safetensors; sub-folders allowed "
                    "(no absolute paths, no '..').",
                ),
                io.String.Input(
                    "scope",
                    multiline=True,
                    default="",
                    tooltip="What this LoRA is for (subject, style, intended use). Stored in the file's metadata.",
                ),
                io.Boolean.Input(
                    "overwrite", default=False, tooltip="Replace an existing file of that name (otherwise an error)."
                ),
                io.Combo.Input(
                    "save_dtype",
                    options=list(DTYPES),
                    default="fp16",
                    optional=True,
                    tooltip="Precision of the saved factors (a trained LoRA's resume file always keeps fp32).",
                ),
            ],
            outputs=[
                io.String.Output("path", display_name="path", tooltip="The saved file, relative to `loras`."),
                io.Custom("LORA_STACK").Output(
                    "stack",
                    display_name="LORA_STACK",
                    tooltip="The saved file as a one-entry LORA_STACK (strength 1): feed it to Loom LoRA Stack to "
                    "load it from disk like any other LoRA.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, filename_prefix: str | None = None, save_dtype: str | None = None) -> bool | str:
        try:
            if filename_prefix is not None:
                relative_name(filename_prefix)
            if save_dtype is not None and save_dtype not in DTYPES:
                raise ValueError(f"save_dtype: {save_dtype!r} is not one of {', '.join(DTYPES)}")
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(
        cls, lora, filename_prefix: str = DEFAULT_PREFIX, scope: str = "", overwrite: bool = False, save_dtype="fp16"
    ) -> io.NodeOutput:
        _check_lora(lora)
        if save_dtype not in DTYPES:
            raise ValueError(f"save_dtype: {save_dtype!r} is not one of {', '.join(DTYPES)}")
        rel = relative_name(filename_prefix)
        root = Path(folder_paths.get_folder_paths("loras")[0])
        path = root.joinpath(*rel.split("/"))

        names = _kohya_names(lora)
        lora_save.save(path, lora, names, scope, PurePosixPath(rel).stem, overwrite=overwrite, dtype=DTYPES[save_dtype])
        if hasattr(folder_paths, "filename_list_cache"):  # list it at once, even where mtimes are coarse
            folder_paths.filename_list_cache.pop("loras", None)

        shown = os.path.join(*rel.split("/"))  # as ComfyUI's loader lists name it on this system
        text = _report(lora, shown, path, root, save_dtype)
        return io.NodeOutput(shown, [LoraStackEntry(shown, 1.0, 1.0)], ui=ui.PreviewText(text))
