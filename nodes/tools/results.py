"""What the LoRA utilities share: the rank-rule inputs, which updates a kohya file can name, compressing summed
updates, and the LOOM_LORA result with its report."""

from __future__ import annotations

import time

from comfy_api.latest import io

from ...lora_math import save as lora_save
from ...lora_math.lowrank import delta
from ...lora_math.lowrank.delta import Delta, RankRule
from ..train import engine
from . import stack_updates

LOOM_LORA = io.Custom("LOOM_LORA")


def lora_and_report() -> list:
    """The outputs of every LoRA utility: the LOOM_LORA for Loom Save LoRA, and the report."""
    return [LOOM_LORA.Output("lora", display_name="LOOM_LORA"), io.String.Output("report", display_name="report")]


_RULE_TOOLTIP = (
    "rank: keep `rank` singular values per module. sv_ratio: keep those ≥ σ_max / dynamic_param. energy: keep the "
    "fewest whose squares hold dynamic_param (0..1) of the update's squared Frobenius norm. The dynamic methods "
    "never exceed `rank`."
)


def rule(method: str, rank: int, dynamic_param: float) -> RankRule:
    if method == "rank":
        return RankRule("rank", rank)
    try:
        return RankRule(method, dynamic_param, max_rank=rank)
    except ValueError as e:
        raise ValueError(f"dynamic_param: {e}") from e


def rule_inputs(default_rank: int) -> list:
    return [
        io.Combo.Input("method", options=list(delta.RULES), default="rank", tooltip=_RULE_TOOLTIP),
        io.Int.Input(
            "rank", default=default_rank, min=1, max=4096, tooltip="Rank (the most kept, for sv_ratio/energy)."
        ),
        io.Float.Input(
            "dynamic_param",
            default=0.95,
            min=0.0,
            max=1000.0,
            step=0.01,
            tooltip="sv_ratio: the largest ratio σ_max/σ kept (≥ 1). energy: the fraction of ‖ΔW‖² kept (0..1].",
        ),
    ]


_UNNAMEABLE = "text-encoder updates that kohya LoRA files cannot name (T5, embeddings …)"


def savable(model, updates: stack_updates.StackUpdates) -> list:
    """The weights a kohya file can name for this model; the rest (a T5 encoder's) is noted as left out. Full diffs
    of weights it cannot name are dropped from ``updates.diffs`` the same way."""
    encoders = lora_save.TEXT_ENCODER_PREFIXES.get(engine.arch_of(model.model), {})

    def nameable(key: str) -> bool:
        return key.startswith(stack_updates.UNET) or (
            key.split(".", 1)[0] in encoders and lora_save.CLIP_LAYER.search(key)
        )

    keep = []
    for w in updates.weights:
        if w.part == "model" or nameable(w.key):
            keep.append(w)
        else:
            updates.left_out[_UNNAMEABLE] += 1
    for key in [k for k in updates.diffs if not nameable(lora_save.layer_key(k))]:
        del updates.diffs[key]
        updates.left_out[_UNNAMEABLE] += 1
    return keep


def compress_updates(weights, rule: RankRule | None):
    """Sum each weight's updates and make it one plain LoRA (``rule`` None: exact)."""
    pairs = []
    for w in weights:
        present = [d for d in w.deltas if d is not None]
        if present:
            pairs.append((w.key, delta.sum_deltas(present)))

    def one(key: str, d: Delta):
        return delta.exact(d) if rule is None else delta.compress(d, rule, key)

    return stack_updates.compress_all(pairs, one)


def finish(
    results, zero, model, operation: str, rule_text: str, head: list[str], sources, started: float, on, diffs=None
):
    if not results:
        raise ValueError(f"{operation}: no weight received a non-zero update; nothing to save")
    text, notes = stack_updates.kept_report(results, rule_text, zero)
    elapsed = time.perf_counter() - started
    notes["seconds"] = round(elapsed, 3)
    lora = stack_updates.to_lora(results, model, operation, sources, notes, diffs)
    lines = [*head, text, f"took {elapsed:.2f} s on {on}"]
    return lora, "\n".join(lines)
