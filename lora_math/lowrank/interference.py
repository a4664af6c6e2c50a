"""Interference between the LoRAs of a stack, per block, and the strength scale that keeps the stack in a budget.

For every targeted weight the stack's strength-scaled updates ``s_i ΔW_i`` go into a Gram matrix
``G_ij = <s_i ΔW_i, s_j ΔW_j>_F`` (through the low-rank factors, :func:`lowrank.inner`), summed per block
together with ``‖W‖²_F``. Everything the report says follows from that one matrix per block:

* each LoRA's relative update ``√G_ii / ‖W‖``,
* the overlap of two LoRAs, ``cos_ij = G_ij / √(G_ii G_jj)``: +1 the same direction (they add up: over-driving),
  −1 opposite (they cancel), 0 independent,
* the combined relative update ``√(Σ_ij G_ij) / ‖W‖`` (what the block really receives).

Scaling every strength by ``c`` scales each block's combined update by exactly ``|c|`` (DoRA included, under
ComfyUI's linear-in-strength convention), so the budget scale is closed form: :meth:`Report.balance_scale`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..names.blocks import base_part, block_id, sort_key
from .delta import Delta, inner

__all__ = ["BlockStats", "Flag", "Report", "ReportBuilder", "block_of"]


def block_of(model_key: str) -> str:
    """The row a weight is reported in: its block id, or for the rest its part (``CLIP``, ``T5``, ``IN`` …)."""
    bid = block_id(model_key)
    return (base_part(model_key) or bid) if bid == "BASE" else bid


@dataclass
class BlockStats:
    """Sums over the weights of one block (``IN04``, ``MID``, ``D07``, ``CLIP`` …)."""

    block: str
    part: str  # "model" or "clip": which strengths act on it
    base_sq: float = 0.0
    gram: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.float64))
    weights: int = 0

    def relative(self, i: int) -> float:
        return math.sqrt(max(float(self.gram[i, i]), 0.0) / self.base_sq) if self.base_sq > 0 else 0.0

    @property
    def combined(self) -> float:
        return math.sqrt(max(float(self.gram.sum()), 0.0) / self.base_sq) if self.base_sq > 0 else 0.0

    def cosine(self, i: int, j: int) -> float | None:
        """None when either LoRA leaves the block untouched."""
        denom = float(self.gram[i, i]) * float(self.gram[j, j])
        return float(self.gram[i, j]) / math.sqrt(denom) if denom > 0 else None


@dataclass(frozen=True)
class Flag:
    block: str
    kind: str  # "overlap" | "dominates"
    text: str
    pair: tuple[int, int] | None = None  # the two LoRAs of an overlap


@dataclass(frozen=True)
class Report:
    """The interference of a stack, block by block (blocks in model order, text encoder last)."""

    names: tuple[str, ...]
    blocks: tuple[BlockStats, ...]
    overlap_threshold: float = 0.3
    dominance_threshold: float = 0.5

    def pairs(self) -> list[tuple[int, int]]:
        n = len(self.names)
        return [(i, j) for i in range(n) for j in range(i + 1, n)]

    def flags(self) -> list[Flag]:
        """Blocks where two LoRAs collide, and blocks whose combined update dominates the base weight.

        A collision needs both the overlap (``|cos| ≥ overlap_threshold``) and both LoRAs mattering there (each at
        least a tenth of the dominance threshold): two aligned but negligible updates are not a problem.
        """
        out: list[Flag] = []
        floor = self.dominance_threshold / 10
        for b in self.blocks:
            for i, j in self.pairs():
                cos = b.cosine(i, j)
                if cos is None or abs(cos) < self.overlap_threshold:
                    continue
                if min(b.relative(i), b.relative(j)) < floor:
                    continue
                how = "reinforce" if cos > 0 else "cancel"
                text = f"{b.block}: {self.names[i]} × {self.names[j]} overlap {cos:+.2f} ({how})"
                out.append(Flag(b.block, "overlap", text, (i, j)))
            if b.combined >= self.dominance_threshold:
                out.append(
                    Flag(
                        b.block,
                        "dominates",
                        f"{b.block}: combined update {b.combined:.2f} of the base weight "
                        f"(≥ {self.dominance_threshold:g})",
                    )
                )
        return out

    def worst(self, part: str) -> BlockStats | None:
        """The block of ``part`` with the largest combined relative update."""
        mine = [b for b in self.blocks if b.part == part and b.base_sq > 0]
        return max(mine, key=lambda b: b.combined) if mine else None

    def balance_scale(self, budget: float, part: str) -> float:
        """The factor (≤ 1) on every strength of ``part`` that brings its worst block's combined update to
        ``budget``; 1 when it is already within. Exact: the combined update is linear in a common scale."""
        if not budget > 0:
            raise ValueError(f"budget: {budget!r} must be > 0 (the largest combined relative update allowed)")
        worst = self.worst(part)
        if worst is None or worst.combined <= budget:
            return 1.0
        return budget / worst.combined

    def text(self) -> str:
        n = len(self.names)
        lines = [
            f"LoRA interference: {n} LoRA(s), {len(self.blocks)} block(s); relative update = ‖s·ΔW‖/‖W‖ per block, "
            "overlap = cosine of two LoRAs' updates (+ reinforce, − cancel)"
        ]
        for i, name in enumerate(self.names):
            peak = max(self.blocks, key=lambda b: b.relative(i), default=None)
            if peak is not None and peak.relative(i) > 0:
                lines.append(f"  [{i + 1}] {name}: largest in {peak.block} ({peak.relative(i):.3f})")
            else:
                lines.append(f"  [{i + 1}] {name}: touches no analysed weight")
        header = "block      " + " ".join(f"[{i + 1}]".rjust(7) for i in range(n)) + "  combined"
        if n > 1:
            header += "  max|overlap|"
        lines.append(header)
        for b in self.blocks:
            row = f"{b.block:<10} " + " ".join(f"{b.relative(i):7.3f}" for i in range(n)) + f"  {b.combined:8.3f}"
            if n > 1:
                cosines = [(abs(c), c, i, j) for i, j in self.pairs() if (c := b.cosine(i, j)) is not None]
                if cosines:
                    _, c, i, j = max(cosines)
                    row += f"  {c:+.2f} ([{i + 1}]×[{j + 1}])"
            lines.append(row)
        flags = self.flags()
        if flags:
            lines.append(f"flags ({len(flags)}):")
            lines += [f"  ! {f.text}" for f in flags]
        else:
            lines.append(
                f"no flags: no overlap ≥ {self.overlap_threshold:g} between LoRAs that matter, no combined update "
                f"≥ {self.dominance_threshold:g}"
            )
        return "\n".join(lines)


class ReportBuilder:
    """Accumulates weights into blocks; ``add`` once per weight with every LoRA's update on it (None: untouched)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._blocks: dict[str, BlockStats] = {}

    def add(self, block: str, part: str, base_sq: float, deltas: Sequence[Delta | None]) -> None:
        n = len(self.names)
        if len(deltas) != n:
            raise ValueError(f"ReportBuilder.add: {len(deltas)} updates for {n} LoRAs")
        stats = self._blocks.get(block)
        if stats is None:
            stats = self._blocks[block] = BlockStats(block, part, gram=torch.zeros(n, n, dtype=torch.float64))
        stats.base_sq += float(base_sq)
        stats.weights += 1
        present = [i for i, d in enumerate(deltas) if d is not None]
        for a, i in enumerate(present):
            for j in present[a:]:
                value = inner(deltas[i], deltas[j])
                stats.gram[i, j] += value
                if i != j:
                    stats.gram[j, i] += value

    def build(self, **thresholds: float) -> Report:
        """Model blocks in model order (IN, MID, OUT / D, S), then the text encoders."""
        ordered = sorted(self._blocks.values(), key=lambda b: (b.part != "model", sort_key(b.block), b.block))
        return Report(self.names, tuple(ordered), **thresholds)
