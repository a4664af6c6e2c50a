"""Weight updates as low-rank factors: inner products without materialising ΔW, truncated SVDs, rank rules.

One weight's update is a :class:`Delta`: a low-rank part ``up @ down`` (strengths and alpha/rank folded into
``up``) plus an optional dense part for adapters that are not low rank (LoHa, LoKr, full diffs, DoRA's effective
update). Everything is fp32 ``[out, in·k]`` (conv kernels flattened the way ``weight.flatten(1)`` does).

Why factors: the Frobenius inner product of two low-rank updates is
``<B1 A1, B2 A2> = Σ (B1ᵀ B2) ⊙ (A1 A2ᵀ)``, an ``r1 × r2`` computation, and the SVD of ``B A`` is the SVD of the
small ``R_B R_Aᵀ`` after two thin QRs, so merging and resizing LoRAs never builds an ``out × in`` matrix and is
exact (no randomisation) whatever the rank asked. Only dense parts need a real SVD: a full one, or
``torch.svd_lowrank`` when the kept rank is small against the matrix (its power iterations make it accurate for
the slowly decaying spectra of fine-tune differences; kept energy is still exact, see :func:`compress`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..adapters import Adapter, LoRA, weight_decompose
from ..adapters.shapes import fmt_shape

__all__ = [
    "RULES",
    "Compressed",
    "Delta",
    "RankRule",
    "adapter_delta",
    "check_rank",
    "compress",
    "exact",
    "inner",
    "sq_norm",
    "sum_deltas",
    "svd",
]

RULES = ("rank", "sv_ratio", "energy")
_OVERSAMPLE = 8
_NITER = 4


@dataclass(frozen=True)
class Delta:
    """``up @ down + dense`` for a weight of ``shape``; any part may be absent (all absent: a zero update)."""

    shape: tuple[int, ...]
    up: Tensor | None = None  # [out, R]
    down: Tensor | None = None  # [R, in·k]
    dense: Tensor | None = None  # [out, in·k]

    @property
    def rows(self) -> int:
        return int(self.shape[0])

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def factor_rank(self) -> int:
        return 0 if self.up is None else int(self.up.shape[1])

    @property
    def is_low_rank(self) -> bool:
        return self.dense is None

    def scaled(self, s: float) -> Delta:
        return Delta(
            self.shape,
            None if self.up is None else self.up * s,
            self.down,
            None if self.dense is None else self.dense * s,
        )

    def __add__(self, other: Delta) -> Delta:
        if tuple(other.shape) != tuple(self.shape):
            raise ValueError(f"Delta: adding updates of shapes {fmt_shape(self.shape)} and {fmt_shape(other.shape)}")
        ups = [t for t in (self.up, other.up) if t is not None]
        downs = [t for t in (self.down, other.down) if t is not None]
        denses = [t for t in (self.dense, other.dense) if t is not None]
        return Delta(
            self.shape,
            torch.cat(ups, 1) if ups else None,
            torch.cat(downs, 0) if downs else None,
            sum(denses[1:], denses[0]) if denses else None,
        )

    def to(self, device: torch.device | str) -> Delta:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device, dtype=torch.float32)

        return Delta(self.shape, move(self.up), move(self.down), move(self.dense))

    def matrix(self) -> Tensor:
        """The dense ``[out, in·k]`` fp32 update."""
        device = next((t.device for t in (self.up, self.dense) if t is not None), None)
        out = torch.zeros(self.rows, self.cols, dtype=torch.float32, device=device)
        if self.up is not None:
            out.addmm_(self.up, self.down)
        if self.dense is not None:
            out += self.dense
        return out


def sum_deltas(deltas: list[Delta]) -> Delta:
    return sum(deltas[1:], deltas[0])


def _pad_rows(t: Tensor, rows: tuple[int, int] | None, total: int) -> Tensor:
    if rows is None:
        return t
    out = t.new_zeros(total, t.shape[1])
    out[rows[0] : rows[1]] = t
    return out


def adapter_delta(
    adapter: Adapter,
    shape: tuple[int, ...],
    *,
    rows: tuple[int, int] | None = None,
    strength: float = 1.0,
    base: Tensor | None = None,
    device: torch.device | str | None = None,
) -> Delta:
    """The update ``strength · ΔW`` one adapter makes to a weight of ``shape`` (rows: the slice it patches).

    A plain LoRA/LoCon stays factored. DoRA is not additive: its update is ``W' − W`` against ``base`` (the weight
    it patches), which ComfyUI's convention makes linear in the strength (``W + s·(W' − W)``); against the base
    alone, so a DoRA stacked with other LoRAs on one weight is approximated (each measured on the base weight).
    """
    shape = tuple(int(d) for d in shape)
    part = shape if rows is None else (rows[1] - rows[0], *shape[1:])
    cols = math.prod(shape[1:])
    dora = getattr(adapter, "dora_scale", None)
    if dora is None and isinstance(adapter, LoRA) and adapter.mid is None:
        down = adapter.down.to(device=device, dtype=torch.float32).flatten(1)
        if down.shape[1] == cols and adapter.up.shape[0] == part[0]:
            up = adapter.up.to(device=device, dtype=torch.float32).flatten(1) * (adapter.scale * strength)
            return Delta(shape, _pad_rows(up, rows, shape[0]), down)
    if dora is None:
        dense = adapter.delta_weight(part, device=device).to(torch.float32).reshape(part[0], cols) * strength
    else:
        if base is None:
            raise ValueError(f"{adapter!r}: a DoRA update needs the base weight it patches")
        w = base.to(device=device, dtype=torch.float32)
        w = w if rows is None else w[rows[0] : rows[1]]
        delta = adapter.delta_weight(part, device=device)
        dense = (weight_decompose(w, delta, dora, 1.0) - w).reshape(part[0], cols) * strength
    return Delta(shape, dense=_pad_rows(dense, rows, shape[0]))


def inner(a: Delta, b: Delta) -> float:
    """Frobenius inner product ``<ΔW_a, ΔW_b>`` through the factors (float64 result)."""
    total = 0.0
    if a.up is not None and b.up is not None:
        total += float(((a.up.T @ b.up) * (a.down @ b.down.T)).sum(dtype=torch.float64))
    if a.up is not None and b.dense is not None:
        total += float((a.up * (b.dense @ a.down.T)).sum(dtype=torch.float64))
    if a.dense is not None and b.up is not None:
        total += float((b.up * (a.dense @ b.down.T)).sum(dtype=torch.float64))
    if a.dense is not None and b.dense is not None:
        total += float((a.dense * b.dense).sum(dtype=torch.float64))
    return total


def sq_norm(d: Delta) -> float:
    return inner(d, d)


def svd(d: Delta, max_rank: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``U [out, k], S [k], Vh [k, in·k]`` of the update, singular values descending.

    Low rank: exact via thin QRs of both factors (k = the factor rank). Dense: a full SVD, or randomized
    (``torch.svd_lowrank`` with ``q = 2·max_rank + 8`` columns and 4 power iterations; the generous sketch makes
    it exact for updates of rank ≤ q, such as LoHa/LoKr, and within 0.1% of the optimal error on fine-tune
    spectra) when ``q`` is at most a quarter of the matrix's size; then only the leading ``q`` triplets return.
    """
    if d.is_low_rank:
        if d.up is None:
            empty = torch.zeros(0)
            return empty.reshape(d.rows, 0), empty, empty.reshape(0, d.cols)
        qu, ru = torch.linalg.qr(d.up)
        qd, rd = torch.linalg.qr(d.down.T)
        um, s, vmh = torch.linalg.svd(ru @ rd.T, full_matrices=False)
        return qu @ um, s, vmh @ qd.T
    m = d.matrix()
    if max_rank is not None:
        q = 2 * max_rank + _OVERSAMPLE
        if q * 4 <= min(m.shape):
            u, s, v = torch.svd_lowrank(m, q=q, niter=_NITER)
            return u, s, v.T
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return u, s, vh


@dataclass(frozen=True)
class RankRule:
    """How many singular values to keep.

    ``rank``: ``value`` of them. ``sv_ratio``: those at least ``σ_max / value`` (sd-scripts' ``sv_ratio``).
    ``energy``: the fewest whose squares hold ``value`` of ``‖ΔW‖²_F`` (the Frobenius fraction, 0..1).
    ``max_rank`` caps the last two (0: no cap).
    """

    mode: str
    value: float
    max_rank: int = 0

    def __post_init__(self) -> None:
        if self.mode not in RULES:
            raise ValueError(f"method: {self.mode!r} is not one of {', '.join(RULES)}")
        v = float(self.value)
        if self.mode == "rank" and (v < 1 or v != int(v)):
            raise ValueError(f"rank: {self.value!r} must be a whole number ≥ 1")
        if self.mode == "sv_ratio" and not v >= 1:
            raise ValueError(f"sv_ratio: {self.value!r} must be ≥ 1 (largest / smallest kept singular value)")
        if self.mode == "energy" and not 0 < v <= 1:
            raise ValueError(f"energy: {self.value!r} must be a fraction in (0, 1]")
        if self.max_rank < 0:
            raise ValueError(f"max_rank: {self.max_rank} must be ≥ 0 (0: no cap)")

    @property
    def cap(self) -> int | None:
        """The most ranks this rule can keep (None: unbounded), which decides whether a randomized SVD will do."""
        if self.mode == "rank":
            return int(self.value)
        return self.max_rank or None

    def pick(self, s: Tensor, total_sq: float) -> int:
        n = int(s.numel())
        if n == 0 or total_sq <= 0 or float(s[0]) <= 0:
            return 0
        if self.mode == "rank":
            k = int(self.value)
        elif self.mode == "sv_ratio":
            k = int((s >= float(s[0]) / self.value).sum())
        else:
            kept = torch.cumsum(s.double() ** 2, 0) / total_sq
            # a tiny slack so that "1.0" keeps the numerical rank instead of failing on rounding
            k = int((kept < self.value - 1e-9).sum()) + 1
        if self.max_rank:
            k = min(k, self.max_rank)
        return max(0, min(k, n))

    def describe(self) -> str:
        text = {"rank": "rank {:g}", "sv_ratio": "sv ratio {:g}", "energy": "energy {:g}"}[self.mode]
        text = text.format(self.value)
        return text + (f" (max rank {self.max_rank})" if self.max_rank and self.mode != "rank" else "")


@dataclass(frozen=True)
class Compressed:
    """A plain-LoRA approximation: ``up @ down`` (kohya shapes, scale 1: alpha = rank) and how much it keeps.

    kept: fraction of ``‖ΔW‖²_F`` kept (1 − relative error²); total_sq: ``‖ΔW‖²_F``; source_rank: the rank the
    update had (factor rank, or the matrix size for dense updates).
    """

    down: Tensor
    up: Tensor
    kept: float
    total_sq: float
    source_rank: int

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def relative_error(self) -> float:
        return math.sqrt(max(0.0, 1.0 - self.kept))


def _kohya_shapes(down: Tensor, up: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    if len(shape) > 2:  # LoCon: a k×k down conv and a 1×1 up conv
        return down.reshape(down.shape[0], *shape[1:]), up.reshape(*up.shape, *([1] * (len(shape) - 2)))
    return down, up


def check_rank(rank: int, shape: tuple[int, ...], key: str) -> None:
    limit = min(int(shape[0]), math.prod(shape[1:]))
    if rank > limit:
        raise ValueError(
            f"rank: {rank} is above the rank of {key} ({fmt_shape(shape)}: at most {limit}); choose a rank ≤ {limit}"
        )


def compress(d: Delta, rule: RankRule, key: str = "weight") -> Compressed | None:
    """The best plain LoRA for ``d`` under ``rule`` (Eckart–Young), on ``d``'s device; None for a zero update.

    The kept energy is exact even after a randomized SVD: the result is an orthogonal projection of ΔW, so
    ``‖ΔW − ΔW_k‖² = ‖ΔW‖² − Σ_{i<k} σ_i²`` holds for the σ it computed.
    Singular values are split evenly (``√σ`` on each side) so fp16/bf16 saving has the most headroom.
    """
    if rule.mode == "rank":
        check_rank(int(rule.value), d.shape, key)
    total = sq_norm(d)
    if total <= 0:
        return None
    u, s, vh = svd(d, rule.cap)
    k = rule.pick(s, total)
    if k == 0:
        return None
    root = s[:k].sqrt()
    down, up = _kohya_shapes(vh[:k] * root[:, None], u[:, :k] * root, d.shape)
    kept = min(1.0, float((s[:k].double() ** 2).sum()) / total)
    source = d.factor_rank if d.is_low_rank else min(d.rows, d.cols)
    return Compressed(down.contiguous(), up.contiguous(), kept, total, source)


def exact(d: Delta) -> Compressed | None:
    """``d`` as a plain LoRA without loss: the factors concatenated; dense parts at their numerical rank."""
    total = sq_norm(d)
    if total <= 0:
        return None
    if d.is_low_rank:
        down, up = _kohya_shapes(d.down, d.up, d.shape)
        return Compressed(down.contiguous(), up.contiguous(), 1.0, total, d.factor_rank)
    u, s, vh = svd(d)
    k = int((s > float(s[0]) * max(d.rows, d.cols) * torch.finfo(torch.float32).eps).sum())
    root = s[:k].sqrt()
    down, up = _kohya_shapes(vh[:k] * root[:, None], u[:, :k] * root, d.shape)
    kept = min(1.0, float((s[:k].double() ** 2).sum()) / total)
    return Compressed(down.contiguous(), up.contiguous(), kept, total, min(d.rows, d.cols))
