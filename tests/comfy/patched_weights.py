"""Comparing patched model weights: LoRA Loom against core's loaders or a hand reference, within dtype rounding.

Shared by the format tests (``test_formats_vs_core``) and the family tests (``test_families_vs_core``): a
:class:`Base` holds a loaded model (and CLIP) with bit-exact copies of its weights; :func:`states` loads a patched
clone the way ComfyUI does and returns its weights; :func:`core` runs core's own loader nodes; :func:`reference` sums
``lora_writers``' hand deltas; :func:`check` compares two of them key by key (:func:`tolerance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import lora_writers as lw
import torch

MANTISSA_BITS = {torch.float16: 10, torch.bfloat16: 7, torch.float32: 23}
FP32_NOISE = 2.0**-16
DELTA_ROUNDINGS = 2


def tolerance(want: torch.Tensor, original: torch.Tensor) -> tuple[float, float]:
    """(rtol, atol) for two computations of the same patched weight ``want`` (``original``: the unpatched weight).

    With m the mantissa bits of the weight dtype (fp16 10, bf16 7), one ulp of ``x`` is at most ``2^-m * |x|``.
    - Core and the reference compute ``W + s*ΔW`` in fp32 (fp64) and cast once: within half an ulp of the exact value.
    - Loom's in-place merge (``lora_math.weights.inplace``) keeps the low-rank factors in the weight dtype (``up * alpha/rank``
      cast, then times the strength) and rounds ``W + ΔW`` once: besides the final half ulp, its ΔW carries up to
      ``DELTA_ROUNDINGS`` roundings of the dtype relative to ``|ΔW|``.
    So ``rtol = 2^-m`` (one ulp of the element: 9.8e-4 fp16, 7.8e-3 bf16) and
    ``atol = DELTA_ROUNDINGS * 2^-m * max|W' - W| + 2^-16 * max|W'|``: the delta's own roundings at the scale of the
    tensor's largest change, plus fp32 operation-order noise (≈ 2^-24 per rounding) at elements near zero. Relative to
    the change, that is 0.2% (fp16) / 1.6% (bf16) of its largest element; relative to the weight, about 1e-3 of its
    scale for fp16, as the written deltas are 10% of the weight's RMS (``lora_writers.RHO``). A wrong alpha, strength,
    slice or sign moves elements by a good fraction of the delta and fails; :func:`check` verifies on every patched
    weight that the delta itself is far above this tolerance.
    """
    return _tolerance(want.float(), original.float(), want.dtype)


def _tolerance(want: torch.Tensor, original: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """:func:`tolerance` on fp32 copies."""
    return _tolerance_of(float((want - original).abs_().amax()), float(want.abs().amax()), dtype)


def _tolerance_of(change: float, largest: float, dtype: torch.dtype) -> tuple[float, float]:
    """:func:`tolerance` from ``max|W' - W|`` and ``max|W'|`` (:func:`check` has both at hand, in fp32)."""
    m = 2.0 ** -MANTISSA_BITS[dtype]
    return m, DELTA_ROUNDINGS * m * change + FP32_NOISE * largest


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _unchanged(value: torch.Tensor, original: torch.Tensor) -> bool:
    """``value`` has the dtype, shape and values of ``original`` (as ``torch.equal``: ``-0.0`` equals ``0.0``, and core
    patching at strength 0 writes ``W + 0`` back, which turns the one into the other).

    These checks compare whole models many times, so the common case goes first: equal bits, compared as integers of
    the float's size, 1.3–2.5× faster on the CPU than ``torch.equal`` on fp32/bf16/fp16. Equal bits are equal values
    because ``original`` holds no NaN (:meth:`Base.of`); other bits fall back to ``torch.equal``."""
    if value.dtype != original.dtype or value.shape != original.shape:
        return False
    if value.is_floating_point():
        as_int = _SAME_SIZE_INT[value.element_size()]
        if torch.equal(value.view(as_int), original.view(as_int)):
            return True
    return torch.equal(value, original)


@dataclass
class Base:
    """A loaded stand-in model, its CLIP (or None) and bit-exact copies of their original weights."""

    model: object
    clip: object
    model_sd: dict
    clip_sd: dict

    @classmethod
    def of(cls, model, clip) -> Base:
        clip_sd = {k: v.clone() for k, v in clip.patcher.model.state_dict().items()} if clip is not None else {}
        base = cls(model, clip, {k: v.clone() for k, v in model.model.state_dict().items()}, clip_sd)
        nan = [k for sd in (base.model_sd, base.clip_sd) for k, v in sd.items() if not torch.equal(v, v)]
        assert not nan, f"uninitialised (NaN) weights would make bit-equality flaky: {nan}"
        return base

    def original(self, component: str) -> dict:
        return self.model_sd if component == "model" else self.clip_sd


# --- running Loom, core and the reference ---------------------------------------------------------------------------

Applied = list[tuple[lw.WrittenLoRA, float, float]]  # (file, strength_model, strength_clip) in stack order


def patched(patcher, original: dict) -> dict:
    """``conftest.patched_state`` that clones only what the patch changed: the weights ``patcher`` produces when
    ComfyUI loads it (then unpatched), where every key still equal to ``original`` (:func:`_unchanged`) *is* the
    original tensor."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    state = {}
    for key, value in patcher.model.state_dict().items():
        o = original[key]
        state[key] = o if _unchanged(value, o) else value.detach().clone()
    patcher.unpatch_model()
    return state


def states(base: Base, model, clip) -> dict[str, dict]:
    out = {"model": patched(model, base.model_sd)}
    if clip is not None:
        out["clip"] = patched(clip.patcher, base.clip_sd)
    return out


def core(base: Base, applied: Applied) -> dict[str, dict]:
    """Core's own nodes, chained as a user would chain them."""
    import nodes

    model, clip = base.model, base.clip
    for written, sm, sc in applied:
        if clip is None:
            (model,) = nodes.LoraLoaderModelOnly().load_lora_model_only(model, written.name, sm)
        else:
            model, clip = nodes.LoraLoader().load_lora(model, clip, written.name, sm, sc)
    return states(base, model, clip)


def reference(base: Base, applied: Applied) -> dict[str, dict]:
    """``lora_writers``' hand reference: fp64 sums (DoRA merges) in stack order on the original weights, one cast."""
    out = {c: dict(base.original(c)) for c in (["model", "clip"] if base.clip is not None else ["model"])}
    work: dict[tuple[str, str], torch.Tensor] = {}
    for written, sm, sc in applied:
        for e in written.expected:
            strength = sm if e.component == "model" else sc
            if strength == 0:
                continue
            w = work.setdefault((e.component, e.key), base.original(e.component)[e.key].double().clone())
            view = w if e.rows is None else w[e.rows[0] : e.rows[1]]
            if e.dora_scale is None:
                view += strength * e.delta().double()
            else:
                view.copy_(lw.dora_merge(view, e.delta(), e.dora_scale, strength))
    for (component, key), w in work.items():
        out[component][key] = w.to(base.original(component)[key].dtype)
    return out


def strength(e: lw.Expected, sm: float, sc: float) -> float:
    return sm if e.component == "model" else sc


def changed(state: dict, original: dict) -> set[str]:
    """Keys of a ``patched`` state that differ from the original (unchanged keys hold the original tensor)."""
    return {k for k, v in original.items() if state[k] is not v}


def expected_keys(applied: Applied, component: str) -> set[str]:
    return {e.key for w, sm, sc in applied for e in w.expected if e.component == component and strength(e, sm, sc)}


def check(loom: dict, want: dict, base: Base, applied: Applied, against: str, min_moved: float = 0.5) -> None:
    """Loom == want on every key within :func:`tolerance` (bit-exact where unpatched); Loom, and core, changed exactly
    the keys the files target; every patched weight (or row slice) moved beyond the tolerance in most of its
    elements, so a missing, mis-scaled or misplaced delta could not pass; the input model and CLIP still hold their
    original weights. ``min_moved``: the share of elements that must move (0.5; a Kronecker product ΔW, whose
    elements are products of two factors' elements, has most of its mass near zero: LoKr files use 0.3)."""
    for component, state in loom.items():
        original, other = base.original(component), want[component]
        expected = expected_keys(applied, component)
        assert state.keys() == other.keys() == original.keys(), f"{component}: different key sets"
        assert changed(state, original) == expected, f"Loom changed other {component} keys than the file targets"
        if against == "core":
            assert changed(other, original) == expected, f"core changed other {component} keys than Loom"
        regions: dict[str, set] = {}
        for written, sm, sc in applied:
            for e in written.expected:
                if e.component == component and strength(e, sm, sc):
                    regions.setdefault(e.key, set()).add(e.rows)
        for key in expected:
            g, w, o = state[key], other[key], original[key]
            label = f"{component} Loom vs {against} {key}"
            assert (g.dtype, g.shape) == (w.dtype, w.shape), f"{label}: {g.dtype} {list(g.shape)} vs {w.dtype}"
            # :func:`tolerance`, each fp32 intermediate made once: |W' - W| also gives what moved beyond it.
            wf = w.float()
            change = (wf - o.float()).abs_()
            bound = wf.abs()
            rtol, atol = _tolerance_of(float(change.amax()), float(bound.amax()), w.dtype)
            bound.mul_(rtol).add_(atol)
            if not torch.equal(g, w):
                excess = (g.float() - wf).abs_().sub_(bound).flatten()
                if excess.amax() > 0:
                    worst = int(excess.argmax())
                    raise AssertionError(
                        f"{label}: {int((excess > 0).sum())}/{w.numel()} elements beyond rtol {rtol:.3g} + atol "
                        f"{atol:.3g}; worst at flat index {worst}: got {float(g.flatten()[worst]):.8g}, want "
                        f"{float(wf.flatten()[worst]):.8g}, unpatched {float(o.flatten()[worst]):.8g}"
                    )
            moved = change > bound
            for rows in regions[key]:
                fraction = float((moved if rows is None else moved[rows[0] : rows[1]]).float().mean())
                assert fraction > min_moved, (
                    f"{label} rows {rows}: only {fraction:.0%} of the delta beyond the tolerance"
                )
        live = base.model.model.state_dict() if component == "model" else base.clip.patcher.model.state_dict()
        assert all(_unchanged(live[k], original[k]) for k in original), f"the input {component} was modified"


def report(written: lw.WrittenLoRA, sm: float, sc: float) -> str:
    """Loom's summary line: all modules matched; "weights patched" counts model weights (a fused FLUX weight
    patched on three row slices is one weight)."""
    patched = len({(e.component, e.key) for e in written.expected if strength(e, sm, sc)})
    return f"{written.name}: {written.modules}/{written.modules} modules matched, {patched} weights patched"
