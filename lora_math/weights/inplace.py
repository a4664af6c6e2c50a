"""Incremental, in-place merging of additive adapters into weights: the fast path for static LoRAs.

A weight holds ``W0 + Σ s_i ΔW_i`` for the terms currently merged into it. Moving it to another set of
terms adds ``Σ_new s ΔW − Σ_old s ΔW`` for the terms that differ only, so a strength change touches
only the LoRAs whose strength changed and never re-reads ``W0``.

Low-rank terms (LoRA, LoCon, including conv kernels: ``up.flatten(1) @ down.flatten(1)`` is the
``[out, in·kh·kw]`` delta) of one weight are concatenated along the rank with their signed scale
folded into ``up``, and applied as one ``addmm_``: the GEMM accumulates in fp32 and the weight is
rounded to its dtype once. The factors themselves are kept in the weight's dtype (``up`` with
alpha/rank folded in, rounded once when cached, then scaled by the strength in that dtype), so a fp16
weight can land one ulp from the correctly rounded fp32 result where core's fp32 path would not:
well inside fp16 rounding of the delta, and the price of not keeping fp32 factor copies on the GPU.
Other additive adapters (LoHa, LoKr, full diffs) materialise their fp32 delta, summed with the
low-rank part before the single rounding.

DoRA is not additive (it renormalises ``W + sΔW``), nor is a replacement (FLUX control LoRAs' norm scales): callers
route them elsewhere (:func:`is_additive`).

Each update rounds once, so weights drift by at most half an ulp per update from the exact
``W0 + Σ sΔW``; callers keep ``W0`` to restore bit-exactly (ComfyUI's backups do).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..adapters import Adapter, LoRA, Replace

log = logging.getLogger("lora_loom")

__all__ = ["FactorCache", "MergeProgram", "Term", "is_additive", "is_low_rank", "terms_delta", "update_weight"]


@dataclass(frozen=True)
class Term:
    """One adapter merged into one weight (or a row slice of it) at one strength.

    ``strength`` already includes block weights; ``alpha/rank`` lives in the adapter (``adapter.scale``).
    Equality is by adapter identity, so two terms are equal when they are the same file's module at the
    same strength and rows.
    """

    adapter: Adapter
    strength: float
    rows: tuple[int, int] | None = None


def is_additive(adapter: Adapter) -> bool:
    """``W + s·ΔW`` with ΔW independent of W: not DoRA (renormalises), not a :class:`Replace` (sets the weight)."""
    return getattr(adapter, "dora_scale", None) is None and not isinstance(adapter, Replace)


def is_low_rank(adapter: Adapter) -> bool:
    """A LoRA/LoCon whose delta is exactly ``up.flatten(1) @ down.flatten(1)`` (no Tucker core)."""
    return isinstance(adapter, LoRA) and adapter.mid is None and adapter.up.flatten(1).shape[1] == adapter.down.shape[0]


class FactorCache:
    """Device copies of low-rank factors, kept as long as their adapter lives (parsed files are cached).

    ``up`` is stored with ``alpha/rank`` folded in, as ``[out, r]``; ``down`` as ``[r, in·k]``; both in
    the weight's dtype on the weight's device, so a strength change uploads nothing.
    """

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def factors(self, adapter: LoRA, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        per_adapter = self._entries.setdefault(adapter, {})
        key = (device, dtype)
        if key not in per_adapter:
            up = adapter.up.flatten(1).to(device=device, dtype=torch.float32) * adapter.scale
            down = adapter.down.flatten(1).to(device=device, dtype=torch.float32)
            per_adapter[key] = (up.to(dtype), down.to(dtype))
        return per_adapter[key]


def _signed(remove: Iterable[Term], add: Iterable[Term]) -> list[tuple[Term, float]]:
    """(term, coefficient) pairs with one entry per (adapter, rows): a strength change is one term."""
    coefs: dict[tuple[int, tuple[int, int] | None], list] = {}
    for term, coef in [(t, -t.strength) for t in remove] + [(t, t.strength) for t in add]:
        entry = coefs.setdefault((id(term.adapter), term.rows), [term, 0.0])
        entry[1] += coef
    return [(term, coef) for term, coef in coefs.values()]


def terms_delta(shape: torch.Size, terms: Sequence[tuple[Term, float]], device: torch.device) -> Tensor:
    """fp32 ``Σ coef·ΔW`` of ``shape`` for (term, coef) pairs (reference path and non-low-rank terms)."""
    delta = torch.zeros(shape, dtype=torch.float32, device=device)
    for term, coef in terms:
        if coef != 0:
            delta += coef * term.adapter.delta_weight(shape, device=device)
    return delta


def update_weight(weight: Tensor, remove: Sequence[Term], add: Sequence[Term], cache: FactorCache) -> None:
    """In place: ``weight += Σ_add s·ΔW − Σ_remove s·ΔW`` (on each term's row slice), one rounding per slice.

    weight: the layer weight ``[out, in, *k]`` (fp32/fp16/bf16), updated in place.
    """
    by_rows: dict[tuple[int, int] | None, list[tuple[Term, float]]] = {}
    for term, coef in _signed(remove, add):
        if coef != 0:
            by_rows.setdefault(term.rows, []).append((term, coef))
    for rows, terms in by_rows.items():
        target = weight if rows is None else weight[rows[0] : rows[1]]
        flat = target.view(target.shape[0], -1)
        low = [(t, c) for t, c in terms if is_low_rank(t.adapter)]
        other = [(t, c) for t, c in terms if not is_low_rank(t.adapter)]
        if low:
            ups, downs = [], []
            for term, coef in low:
                up, down = cache.factors(term.adapter, weight.device, weight.dtype)
                ups.append(up * coef)
                downs.append(down)
            up_cat = ups[0] if len(ups) == 1 else torch.cat(ups, dim=1)
            down_cat = downs[0] if len(downs) == 1 else torch.cat(downs, dim=0)
            if not other:
                flat.addmm_(up_cat, down_cat)
                continue
            delta = terms_delta(target.shape, other, weight.device).view_as(flat)
            delta.addmm_(up_cat.float(), down_cat.float())
        else:
            delta = terms_delta(target.shape, other, weight.device).view_as(flat)
        flat.copy_((flat.float() + delta).to(weight.dtype))


class MergeProgram:
    """A fixed stack structure whose strengths change: the strength-slider case, one pass over the weights.

    Built once for a set of weights and their low-rank terms (in a fixed order); ``apply(deltas)`` adds
    ``Σ delta_i · scale_i · up_i @ down_i`` to every weight. Each weight's factors are concatenated along
    the rank ahead of time, so a weight costs one ``addmm_`` (with the coefficient as ``alpha`` when it has
    one term, else after scaling ``up`` by the uploaded coefficient vector).
    """

    def __init__(self, terms: dict[str, tuple[Term, ...]], dtypes: dict[str, torch.dtype], device, cache: FactorCache):
        # (key, rows, up_cat, down_cat, lo, hi, single-term index or -1)
        self.slots: list[tuple[str, tuple[int, int] | None, Tensor, Tensor, int, int, int]] = []
        expand: list[int] = []
        index = 0
        for key, key_terms in terms.items():
            by_rows: dict[tuple[int, int] | None, list[tuple[int, Term]]] = {}
            for term in key_terms:
                by_rows.setdefault(term.rows, []).append((index, term))
                index += 1
            for rows, items in by_rows.items():
                ups, downs = [], []
                lo = len(expand)
                for i, term in items:
                    up, down = cache.factors(term.adapter, device, dtypes[key])
                    ups.append(up)
                    downs.append(down)
                    expand.extend([i] * up.shape[1])
                up_cat = torch.cat(ups, dim=1) if len(ups) > 1 else ups[0]
                down_cat = torch.cat(downs, dim=0) if len(downs) > 1 else downs[0]
                single = items[0][0] if len(items) == 1 else -1
                self.slots.append((key, rows, up_cat, down_cat, lo, len(expand), single))
        self.num_terms = index
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # compare equal to weights' "cuda:N"
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._expand = torch.tensor(expand, dtype=torch.long, device=self.device)

    @staticmethod
    def supports(terms: dict[str, tuple[Term, ...]]) -> bool:
        return all(is_low_rank(t.adapter) for key_terms in terms.values() for t in key_terms)

    def apply(self, deltas: Sequence[float], weight_of) -> None:
        """``weight_of(key) -> Tensor`` gives the live weight (ComfyUI may have moved it since the build).

        On CUDA the pass is replayed as one CUDA graph (hundreds of small launches cost more than the
        memory traffic); it is re-captured when a weight's storage moved, and skipped for weights that
        live on another device (partially offloaded models), which take the eager path.
        """
        weights = [weight_of(slot[0]) for slot in self.slots]
        if self.device.type == "cuda" and self._graphs_usable and all(w.device == self.device for w in weights):
            try:
                self._replay(deltas, weights)
                return
            except RuntimeError as e:  # e.g. capture not allowed in this context: eager is always correct
                log.warning("LoRA Loom: CUDA graph capture failed (%s); strength updates run eagerly", e)
                self.graph_error = str(e)
                self._graphs_usable = False
                self._graph = None
        self._apply_eager(deltas, weights)

    def _apply_eager(self, deltas: Sequence[float], weights: list[Tensor]) -> None:
        coef: Tensor | None = None
        coef_by_dtype: dict[torch.dtype, Tensor] = {}
        for (_, rows, up, down, lo, hi, single), weight in zip(self.slots, weights, strict=True):
            if single >= 0:
                if deltas[single] == 0:
                    continue
                scaled, alpha = up, deltas[single]
            else:
                if coef is None:
                    coef = torch.tensor(list(deltas), dtype=torch.float32).to(self.device)[self._expand]
                if up.dtype not in coef_by_dtype:
                    coef_by_dtype[up.dtype] = coef.to(up.dtype)
                scaled, alpha = up * coef_by_dtype[up.dtype][lo:hi], 1.0
            if weight.device != self.device:  # partially offloaded model: this weight lives elsewhere now
                scaled, down = scaled.to(weight.device), down.to(weight.device)
            target = weight if rows is None else weight[rows[0] : rows[1]]
            target.view(target.shape[0], -1).addmm_(scaled, down, alpha=alpha)

    # --- CUDA graph replay ----------------------------------------------------------------------

    _graphs_usable = True
    graph_error: str | None = None
    _graph = None
    _graph_ptrs: tuple = ()

    def _graph_pass(self, weights: list[Tensor]) -> None:
        """The whole update with coefficients read from the device buffer ``self._coef``."""
        expanded = self._coef[self._expand]
        by_dtype: dict[torch.dtype, Tensor] = {}
        for (_, rows, up, down, lo, hi, _single), weight in zip(self.slots, weights, strict=True):
            if up.dtype not in by_dtype:
                by_dtype[up.dtype] = expanded.to(up.dtype)
            scratch = self._scratch[(up.shape, up.dtype)]
            torch.mul(up, by_dtype[up.dtype][lo:hi], out=scratch)
            target = weight if rows is None else weight[rows[0] : rows[1]]
            target.view(target.shape[0], -1).addmm_(scratch, down)

    def _replay(self, deltas: Sequence[float], weights: list[Tensor]) -> None:
        ptrs = tuple(w.data_ptr() for w in weights)
        if self._graph is None or ptrs != self._graph_ptrs:
            self._coef = torch.zeros(self.num_terms, dtype=torch.float32, device=self.device)
            self._scratch = {(up.shape, up.dtype): torch.empty_like(up) for _, _, up, *_ in self.slots}
            # Warm up outside the graph with zero coefficients (adds exactly 0), then capture.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._graph_pass(weights)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_pass(weights)
            self._graph, self._graph_ptrs = graph, ptrs
        self._coef.copy_(torch.tensor(list(deltas), dtype=torch.float32))
        self._graph.replay()
