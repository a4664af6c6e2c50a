"""Scheduled LoRAs as side paths on layer outputs: ``y = base(x) + Σ_c coef_c · mult · B (A x)``, weights untouched.

A :class:`BypassBank` holds, for every patched layer, the terms of the LoRAs whose strength changes during sampling.
Each term reads one *channel* (one schedule, or one block's schedule), whose value the caller sets once per step
with :meth:`BypassBank.set_coefficients`; the layers then add their update in :meth:`BypassBank.add`.

Why this shape (measured, see BENCHMARKS.md): per-layer cost is what a bypass pays, so a layer's plain low-rank
terms are concatenated along the rank into one ``A [R, in]`` and one ``B [out, R]`` (row-sliced targets such as a
fused qkv get zeros outside their rows, so every layer is exactly two GEMMs: ``h = x Aᵀ``, ``out += h Bᵀ``). The
strengths live in ``A``'s rows: all layers' ``A`` with the same input width share one buffer, rescaled by a single
kernel when the coefficients change, so a step costs a few kernels, not a loop over layers. alpha/rank and the fixed
multipliers (model strength × block weight) are folded into ``B`` once. Other adapters (LoHa, LoKr, Tucker, full
diffs, DoRA, conv layers) add ``coef_c · Δ(x)``, with Δ at the fixed multiplier (every adapter's bypass output is
linear in its strength, DoRA's too: ``W + s·(W' − W)``).

Graph-safe by construction (upstream ComfyUI captures resident blocks into CUDA graphs and replays them): a step
changes only the *contents* of tensors that stay the same objects (the coefficient vector and the rescaled ``A``
buffers, written in :meth:`BypassBank.set_coefficients`, outside the model call), and :meth:`BypassBank.add` never
branches on a strength. So a layer whose channels are all 0 still runs its two GEMMs (adding zeros); the cost of
that is measured in BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..adapters import Adapter, bypass_delta
from ..adapters.lora import low_rank, up_project
from .inplace import is_additive, is_low_rank

__all__ = ["BypassBank", "BypassLayer", "BypassTerm"]


@dataclass(frozen=True)
class BypassTerm:
    """One adapter on one layer: strength ``coef[channel] * multiplier`` on output rows ``rows`` (None: all)."""

    adapter: Adapter
    channel: int
    multiplier: float = 1.0
    rows: tuple[int, int] | None = None


@dataclass(frozen=True)
class BypassLayer:
    """A patched layer: its output width, op kind (``linear``, ``conv2d`` …), conv args and terms."""

    out_features: int
    kind: str
    terms: tuple[BypassTerm, ...]
    conv_args: Mapping[str, Any] | None = None

    @property
    def fast_terms(self) -> tuple[BypassTerm, ...]:
        if self.kind != "linear":
            return ()
        return tuple(t for t in self.terms if is_low_rank(t.adapter) and is_additive(t.adapter))

    @property
    def other_terms(self) -> tuple[BypassTerm, ...]:
        fast = self.fast_terms
        return tuple(t for t in self.terms if t not in fast)


def _on_device(adapter: Adapter, device: torch.device) -> Adapter:
    """The adapter with its tensors on ``device`` (dtypes kept: the math casts once, in fp32 where it materialises)."""
    values = {f.name: getattr(adapter, f.name) for f in dataclasses.fields(adapter)}
    moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in values.items()}
    return type(adapter)(**moved)


class _Group:
    """All fast layers' ``A`` of one input width, for one device/dtype: base rows and their rescaled copy."""

    def __init__(self, downs: list[Tensor], channels: list[int], device, dtype) -> None:
        self.base = torch.cat(downs, dim=0).to(device=device, dtype=dtype)
        self.scaled = torch.zeros_like(self.base)
        self.row_channel = torch.tensor(channels, dtype=torch.long, device=device)


class _Materialised:
    """The bank's factors on one device/dtype (a model may run in fp16 on CUDA and be probed in fp32 on CPU)."""

    def __init__(self, bank: BypassBank, device: torch.device, dtype: torch.dtype) -> None:
        by_width: dict[int, tuple[list[Tensor], list[int], list[tuple[int, int, int]]]] = {}
        ups: list[Tensor | None] = [None] * len(bank.layers)
        grouped = [i for g in bank.shared for i in g]
        order = [*dict.fromkeys([*grouped, *range(len(bank.layers))])]  # a group's layers side by side
        for index in order:
            layer = bank.layers[index]
            fast = layer.fast_terms
            if not fast:
                continue
            rank = sum(t.adapter.rank for t in fast)
            up = torch.zeros(layer.out_features, rank, dtype=torch.float32, device=device)
            downs, channels, col = [], [], 0
            for t in fast:
                a = t.adapter
                lo, hi = t.rows if t.rows is not None else (0, layer.out_features)
                up[lo:hi, col : col + a.rank] = a.up.flatten(1).to(device=device, dtype=torch.float32) * (
                    a.scale * t.multiplier
                )
                downs.append(a.down.flatten(1).to(dtype))
                channels += [t.channel] * a.rank
                col += a.rank
            width = downs[0].shape[1]
            group = by_width.setdefault(width, ([], [], []))
            start = sum(d.shape[0] for d in group[0])
            group[0].extend(downs)
            group[1].extend(channels)
            group[2].append((index, start, start + rank))
            ups[index] = up.to(dtype)
        self.groups: list[_Group] = []
        self.down_views: list[Tensor | None] = [None] * len(bank.layers)
        rows: dict[int, tuple[_Group, int, int]] = {}
        for downs, channels, spans in by_width.values():
            group = _Group(downs, channels, device, dtype)
            self.groups.append(group)
            for index, lo, hi in spans:
                self.down_views[index] = group.scaled[lo:hi]
                rows[index] = (group, lo, hi)
        # A shared group's layers: one span of one buffer (same width, placed side by side above), or no sharing.
        self.shared_of: dict[int, tuple[_SharedInput, int, int]] = {}
        for members in bank.shared:
            found = [rows[i] for i in members if i in rows]
            if len(found) < 2 or len({id(g) for g, _, _ in found}) != 1:
                continue
            buffer, lo = found[0][0], found[0][1]
            if any(a[2] != b[1] for a, b in zip(found, found[1:], strict=False)):
                continue
            shared = _SharedInput(buffer.scaled[lo : found[-1][2]], len(found))
            for i in members:
                if i in rows:
                    self.shared_of[i] = (shared, rows[i][1] - lo, rows[i][2] - lo)
        self.up_t = [None if u is None else u.t() for u in ups]
        # The other terms, their adapters on this device; each reads its channel's coefficient, a view that stays
        # the same tensor for the bank's life.
        self.coef = torch.zeros(bank.num_channels, dtype=dtype, device=device)
        self.others = [[(t, _on_device(t.adapter, device)) for t in terms] for terms in bank._others]
        self.channel_coef = [self.coef[c] for c in range(bank.num_channels)]
        self.refresh(torch.tensor(bank.values, dtype=torch.float32))

    def refresh(self, values: Tensor) -> None:
        """Write the coefficients (CPU fp32 ``[channels]``) into this copy's persistent tensors, in place."""
        self.coef.copy_(values)
        for group in self.groups:
            torch.mul(group.base, self.coef[group.row_channel].unsqueeze(1), out=group.scaled)


class _SharedInput:
    """One GEMM for the layers that read one input: ``x`` times their side-by-side ``A`` rows, computed by the
    first of them and handed to the others by column range, then forgotten once each has had its part."""

    def __init__(self, rows: Tensor, size: int) -> None:
        self.rows, self.size = rows, size
        self._input: weakref.ref | None = None
        self._hidden: Tensor | None = None
        self._served: set[int] = set()

    def hidden(self, x: Tensor, lo: int, hi: int) -> Tensor:
        if torch.compiler.is_compiling():  # no identity bookkeeping in a traced graph; inductor plans the GEMMs
            return torch.nn.functional.linear(x, self.rows[lo:hi])
        if self._input is None or self._input() is not x or lo in self._served:
            self._hidden = torch.nn.functional.linear(x, self.rows)
            self._input, self._served = weakref.ref(x), set()
        part = self._hidden[..., lo:hi]
        self._served.add(lo)
        if len(self._served) == self.size:
            self._input, self._hidden, self._served = None, None, set()
        return part


class BypassBank:
    """Scheduled terms of many layers, with per-channel coefficients set once per sampling step.

    layers: the patched layers, in a fixed order; :meth:`add` takes a layer's index. num_channels: how many
    coefficients :meth:`set_coefficients` takes. shared: groups of layer indices that read one input (q/k/v):
    their ``A`` rows sit side by side and run as one GEMM, the first of them called with an input computing it
    for all (by that input's identity; any other input, or a layer called twice, computes it afresh). Factors are copied to a device/dtype the first time a layer runs
    there and kept (the first model call is a warm-up, before any graph capture); :meth:`release` drops the copies.
    """

    def __init__(self, layers: Sequence[BypassLayer], num_channels: int, shared: Sequence[Sequence[int]] = ()) -> None:
        self.layers = tuple(layers)
        self.num_channels = num_channels
        self.shared = tuple(tuple(g) for g in shared)  # layer indices that read one input: one down-projection
        for layer in self.layers:
            for term in layer.terms:
                if not 0 <= term.channel < num_channels:
                    raise ValueError(f"BypassBank: channel {term.channel} outside 0..{num_channels - 1}")
        self._values: tuple[float, ...] = (0.0,) * num_channels
        self._others = [layer.other_terms for layer in self.layers]
        self._mats: dict[tuple[torch.device, torch.dtype], _Materialised] = {}
        self._last: tuple[torch.device, torch.dtype, _Materialised] | None = None

    @property
    def values(self) -> tuple[float, ...]:
        return self._values

    def set_coefficients(self, values: Sequence[float]) -> bool:
        """Set every channel's value (a schedule's strength now), in place in every device copy; returns whether
        anything changed. Call it outside the model call: it is the step's only write."""
        values = tuple(float(v) for v in values)
        if len(values) != self.num_channels:
            raise ValueError(f"BypassBank: {len(values)} coefficients for {self.num_channels} channels")
        if values == self._values:
            return False
        self._values = values
        if self._mats:
            host = torch.tensor(values, dtype=torch.float32)
            for mat in self._mats.values():
                mat.refresh(host)
        return True

    def _materialised(self, device: torch.device, dtype: torch.dtype) -> _Materialised:
        last = self._last
        if last is not None and last[0] == device and last[1] == dtype:
            return last[2]
        return self._materialise(device, dtype)

    @torch.compiler.disable  # built once, eagerly; a compiled model call only ever takes the fast path above
    def _materialise(self, device: torch.device, dtype: torch.dtype) -> _Materialised:
        mat = self._mats.get((device, dtype))
        if mat is None:
            mat = self._mats[(device, dtype)] = _Materialised(self, device, dtype)
        self._last = (device, dtype, mat)
        return mat

    def prepare(self, device: torch.device, dtype: torch.dtype) -> None:
        """Copy the factors to ``device``/``dtype`` now (before a compiled or captured call would)."""
        self._materialised(torch.device(device), dtype)

    def release(self) -> None:
        self._mats.clear()
        self._last = None

    def add(self, index: int, x: Tensor, out: Tensor, weight: Tensor | None = None) -> Tensor:
        """Layer ``index``'s output with its scheduled terms at the current coefficients.

        x: the layer input; out: the base layer's output (updated in place when it can be: a fresh, contiguous
        tensor of x's dtype, as linear layers return). weight: the layer's weight, needed only for DoRA terms.
        Runs under the caller's grad mode (ComfyUI samples under no_grad/inference mode; no per-call context here).
        The same ops on the same tensors at every step: nothing here depends on the coefficients' values.
        """
        mat = self._materialised(x.device, x.dtype)
        down = mat.down_views[index]
        if down is not None:
            shared = mat.shared_of.get(index)
            if shared is None:
                out = low_rank(x, down, mat.up_t[index].t(), out=out)  # coefficients folded into up_t
            else:
                hidden = shared[0].hidden(x, shared[1], shared[2])
                out = up_project(hidden, mat.up_t[index].t(), out=out)
        others = mat.others[index]
        if not others:
            return out
        layer = self.layers[index]
        for term, adapter in others:
            w = weight if getattr(adapter, "dora_scale", None) is not None else None
            coef = mat.channel_coef[term.channel]
            if term.rows is None:
                delta = bypass_delta(
                    adapter, x, out, term.multiplier, kind=layer.kind, conv_args=layer.conv_args, weight=w
                )
                out = out + delta * coef.to(delta.dtype)
            else:
                lo, hi = term.rows
                part = out[..., lo:hi]
                delta = bypass_delta(
                    adapter, x, part, term.multiplier, kind="linear", weight=None if w is None else w[lo:hi]
                )
                out[..., lo:hi] = part + delta * coef.to(delta.dtype)
        return out
