"""Loom LoRA Info: what a LoRA file is (format, base model, rank/alpha, coverage, trigger words, header metadata).

The pieces come from ``lora_math.report``, the same code as ``python -m lora_math inspect`` and the web info panel:
the header metadata is ``report.header_view`` as text (every key, the writer, trigger words from every source).
Coverage is measured against the connected MODEL (and CLIP, when connected); with neither, against the full-size key
table of the base model guessed from the file.

A connected MODEL's ``lora_metadata`` attachment (the header of the last LoRA a loader applied to it) is not shown:
it holds one header without the file's name, so next to ``lora_name`` it would describe another file.
"""

from __future__ import annotations

from comfy_api.latest import io

from ...lora_math import report
from ...lora_math.names import families
from ...lora_math.names.keytables import ARCHES, load_keytable
from .. import comfy_bridge
from ..files import lora_files

OUTPUTS = (
    ("summary", "Everything below in one text."),
    (
        "trigger_words",
        "Likely trigger words, comma separated: modelspec.trigger_phrase, loom_trigger_words, the training comment, "
        "OneTrainer embedding placeholders, the top tags.",
    ),
    ("base_model", "Base model guessed from the file: sd15, sd2, sdxl, flux, sd3 or unknown."),
    ("format", "File format, e.g. kohya, lycoris-lokr, diffusers-peft, flux-diffusers."),
    ("rank_alpha", "Rank and alpha of the adapters."),
    ("coverage", "How many of the file's modules land on a weight of the model (or of the key table)."),
    (
        "training",
        "The header metadata, every key: 'written by', then sections (about, training, adapter config, other keys) "
        "of '  field: value' lines.",
    ),
)


def _first(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def coverage_text(parsed, model=None, clip=None) -> str:
    if model is None and clip is None:
        base = families.from_file(parsed)
        if base not in ARCHES:
            return f"not measured: no key table for base model {base!r}; connect a model to measure against it"
        cov, against = report.coverage(parsed, load_keytable(base)), f"the full-size {base} key table"
    else:
        keys = comfy_bridge.model_keys(model, clip)
        cov = report.coverage(parsed, keys, denoiser=model is not None, text_encoders=clip is not None)
        against = " and ".join(n for n, x in (("this model", model), ("this CLIP", clip)) if x is not None)
    text = f"{cov['matched']}/{cov['targets']} modules match {against} ({cov['coverage']:.0%})"
    if cov["mismatched"]:
        text += (
            f"; {len(cov['mismatched'])} name weights of another shape (wrong base model?): {_first(cov['mismatched'])}"
        )
    others = [n for n in cov["unmatched"] if n not in cov["mismatched"]]
    if others:
        text += f"; {len(others)} unmatched: {_first(others)}"
    if cov["skipped"]:
        missing = "CLIP" if clip is None else "model"
        text += f"; {cov['skipped']} modules not checked (no {missing} connected)"
    return text


def rank_alpha_text(parsed) -> str:
    rank, alpha = report.rank_alpha(parsed)

    def fmt(value) -> str:
        if isinstance(value, list):
            return f"{value[0]:g}-{value[-1]:g} (mixed: {', '.join(f'{v:g}' for v in value)})"
        return f"{value:g}"

    rank_text = "rank n/a (full weight differences)" if rank is None else f"rank {fmt(rank)}"
    alpha_text = "no alpha (scale 1)" if alpha is None else f"alpha {fmt(alpha)}"
    return f"{rank_text}, {alpha_text}"


class LoomLoraInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoomLoraInfo",
            display_name="Loom LoRA Info",
            category="loom/info",
            description="What a LoRA file is: format, base model, rank/alpha, coverage against a model, trigger "
            "words and training metadata. Reads the file only; nothing is applied.",
            inputs=[
                io.Combo.Input("lora_name", options=lora_files.lora_names(), tooltip="A file in a `loras` folder."),
                io.Model.Input("model", optional=True, tooltip="Measure coverage against this model."),
                io.Clip.Input("clip", optional=True, tooltip="Measure the text encoder modules against this CLIP."),
            ],
            outputs=[io.String.Output(name, display_name=name, tooltip=tip) for name, tip in OUTPUTS],
        )

    @classmethod
    def validate_inputs(cls, lora_name: str | None = None) -> bool | str:
        return lora_files.validate(lora_name)

    @classmethod
    def execute(cls, lora_name, model=None, clip=None) -> io.NodeOutput:
        parsed = lora_files.load(lora_name)  # may raise ValueError naming lora_name
        view = report.header_view(parsed.metadata)
        words = ", ".join(view.trigger_words)
        base = families.from_file(parsed)
        rank_alpha = rank_alpha_text(parsed)
        coverage = coverage_text(parsed, model, clip)
        training = "\n".join(view.lines())
        lines = [
            lora_name,
            f"format: {parsed.format}, {len(parsed.modules)} modules",
            f"base model: {base}",
            rank_alpha,
            f"coverage: {coverage}",
            f"trigger words: {words or '(none found)'}",
        ]
        if parsed.ignored:
            lines.append(f"ignored keys: {len(parsed.ignored)} ({_first(list(parsed.ignored))})")
        lines += view.lines() or ["header metadata: (none)"]
        summary = "\n".join(lines)
        return io.NodeOutput(summary, words, base, parsed.format, rank_alpha, coverage, training)
