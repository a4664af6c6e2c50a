"""Which model weight each LoRA module patches: :func:`match` (the family from the file alone is
``families.from_file``; why nothing matched, ``near_misses.diagnose``).

Matching is a pure function of the model's key names and shapes and the file's module names. For a model key set an
:class:`AliasTable` is built once (and cached): every weight gets its own name dotted and with ``.`` -> ``_`` (kohya),
UNet weights also their diffusers names (derived from the keys, ``names.unet``), DiT weights the diffusers / xlabs /
trainer names of each family, fused layers as row slices (``names``). A file module name is then cut into a role (``lora_unet_`` -> denoiser,
``lora_te1_`` -> first text encoder, ``text_encoder_2.`` -> second …) and a path, and looked up: one dict lookup per
candidate spelling, no scans.

Model keys are ComfyUI ModelPatcher keys: ``diffusion_model.<path>.weight``, ``clip_l.transformer.<path>.weight``,
``clip_g.transformer.…``, ``clip_h.transformer.…``, ``t5xxl.transformer.…``.

Text encoder roles: ``te`` (``lora_te_``, ``text_encoder.``) -> clip_l (else clip_h, else clip_g); ``te1`` -> clip_l
(else clip_h); ``te2`` -> clip_g, or t5xxl when the model has no clip_g (FLUX); ``te3`` -> t5xxl.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..adapters import Adapter, Full, LoHa, LoRA, Replace, widen
from ..errors import LoraShapeError
from ..formats import ParsedLoRA
from . import derived_aliases, families
from .spellings import path_spellings, split_role
from .unet import ldm_to_diffusers

__all__ = [
    "BASE_MODELS",
    "AliasTable",
    "KeyMatch",
    "Patch",
    "Target",
    "alias_table",
    "match",
]

BASE_MODELS = families.FAMILIES

COMPONENT_PREFIXES = {
    "diffusion_model.": "unet",
    "clip_l.transformer.": "clip_l",
    "clip_g.transformer.": "clip_g",
    "clip_h.transformer.": "clip_h",
    "t5xxl.transformer.": "t5xxl",
}


@dataclass(frozen=True)
class Target:
    """A model weight a module name lands on: ``key`` (``….weight``), an optional row slice, a half swap."""

    key: str
    rows: tuple[int, int] | None = None
    swap_halves: bool = False


@dataclass(frozen=True)
class Patch:
    """One model key and the adapter to add to it.

    key: a ModelPatcher key (``….weight`` or ``….bias``). rows: ``(start, stop)``, half-open, of the output axis when
    the adapter patches a slice of a fused weight (FLUX ``qkv`` / ``linear1``); its delta then has
    ``stop - start`` rows. ``adapter.delta_weight(shape of the key or slice)`` is always the delta for that key: a
    bias difference is its own Patch on the ``….bias`` key holding ``Full(diff=<Δbias>)``, and a ``Full`` with both
    ``.diff`` and ``.diff_b`` is split into a weight Patch and a bias Patch. shape: the weight's shape after the
    patch when it widens the weight (zero-padded first; BFL control LoRAs' ``img_in``), else None.
    """

    key: str
    adapter: Adapter
    rows: tuple[int, int] | None = None
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class KeyMatch:
    """The outcome of :func:`match`: patches to apply, and which file modules matched or did not."""

    patches: tuple[Patch, ...]
    matched: tuple[str, ...]
    unmatched: tuple[str, ...]
    targets: int
    mismatched: tuple[str, ...] = ()  # strict=False only: named a model weight but do not fit it (also in unmatched)

    @property
    def coverage(self) -> float:
        """matched / targets (1.0 for an empty file)."""
        return len(self.matched) / self.targets if self.targets else 1.0


class AliasTable:
    """Every accepted spelling of every LoRA-targetable weight of one model, by component."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.shapes = dict(shapes)
        self.aliases: dict[str, dict[str, Target]] = {}
        paths: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, shape in self.shapes.items():
            if not key.endswith(".weight"):
                continue
            for prefix, component in COMPONENT_PREFIXES.items():
                if key.startswith(prefix):
                    paths.setdefault(component, {})[key[len(prefix) : -len(".weight")]] = shape
                    break
        for component, weights in paths.items():
            prefix = next(p for p, c in COMPONENT_PREFIXES.items() if c == component)
            table = self.aliases.setdefault(component, {})
            for path in weights:
                self._add(table, path, Target(f"{prefix}{path}.weight"))
            if component != "unet":
                # transformers ≥ 5 dropped CLIPTextModel's ``text_model.`` level, and diffusers (and its kohya
                # conversion, ``lora_te1_encoder_layers_…``) now name text-encoder LoRAs without it.
                for path in weights:
                    if path.startswith("text_model."):
                        self._add(table, path[len("text_model.") :], Target(f"{prefix}{path}.weight"))
                continue
            if any(p.startswith(("input_blocks.", "middle_block.", "output_blocks.")) for p in weights):
                for ldm, diffusers in ldm_to_diffusers(weights).items():
                    self._add(table, diffusers, Target(f"{prefix}{ldm}.weight"))
            else:
                for name, alias in derived_aliases(weights).items():
                    self._add(table, name, Target(f"{prefix}{alias.module}.weight", alias.rows, alias.swap_halves))
        # FLUX's q/k RMSNorm weight is ``scale`` on 0.3.75 and in the key tables (``weight`` upstream, found above):
        # BFL control LoRAs replace it.
        for key, shape in self.shapes.items():
            if key.startswith("diffusion_model.") and key.endswith(".scale") and len(shape) == 1:
                path = key[len("diffusion_model.") : -len(".scale")]
                self._add(self.aliases.setdefault("unet", {}), path, Target(key))

    @staticmethod
    def _add(table: dict[str, Target], path: str, target: Target) -> None:
        # The model's own names are added first and win over derived aliases.
        table.setdefault(path, target)
        table.setdefault(path.replace(".", "_"), target)

    def components_for(self, role: str | None) -> tuple[str, ...]:
        """The model components a role may land on, in preference order (only those the model has)."""
        have = self.aliases

        def first(*names: str) -> tuple[str, ...]:
            return next(((n,) for n in names if n in have), ())

        if role == "unet":
            return first("unet")
        if role == "te":
            return first("clip_l", "clip_h", "clip_g")
        if role == "te1":
            return first("clip_l", "clip_h")
        if role == "te2":
            return first("clip_g", "t5xxl")
        if role == "te3":
            return first("t5xxl")
        return first("unet") + first("clip_l", "clip_h", "clip_g")

    def resolve(self, name: str) -> Target | None:
        """The weight a file module name patches, or None."""
        role, path = split_role(name)
        for component in self.components_for(role):
            table = self.aliases[component]
            for spelling in path_spellings(path):
                target = table.get(spelling)
                if target is not None:
                    return target
        return None


@functools.lru_cache(maxsize=8)
def _cached_table(items: frozenset[tuple[str, tuple[int, ...]]]) -> AliasTable:
    return AliasTable(dict(items))


def alias_table(model_keys: Mapping[str, tuple[int, ...]]) -> AliasTable:
    """The (cached) :class:`AliasTable` of a model key set; shapes may be any int sequences."""
    return _cached_table(frozenset((k, tuple(int(d) for d in v)) for k, v in model_keys.items()))


def _delta_rows_cols(adapter: Adapter) -> tuple[int, int | None]:
    """(output rows, columns of ΔW flattened to a matrix) an adapter produces; columns None for 1-D diffs."""
    if isinstance(adapter, Full):
        if adapter.diff is None:
            return int(adapter.diff_b.shape[0]), None
        return int(adapter.diff.shape[0]), (math.prod(adapter.diff.shape[1:]) if adapter.diff.ndim > 1 else None)
    if isinstance(adapter, Replace):
        return adapter.out_features, adapter.fan_in
    return int(adapter.out_features), int(adapter.fan_in)


def _fmt_delta(rows: int, cols: int | None) -> str:
    return f"[{rows}]" if cols is None else f"[{rows}, {cols}]"


def _fit_problem(name: str, adapter: Adapter, key: str, shape: tuple[int, ...], rows) -> str | None:
    """A message when ``adapter`` cannot patch ``key`` (or its row slice), else None."""
    want_rows = rows[1] - rows[0] if rows else shape[0]
    want_cols = math.prod(shape[1:]) if len(shape) > 1 else None
    got_rows, got_cols = _delta_rows_cols(adapter)
    if got_rows == want_rows and got_cols == want_cols:
        return None
    where = f"{key} rows {rows[0]}:{rows[1]}" if rows else key
    return (
        f"{name}: {adapter!r} gives a delta of {_fmt_delta(got_rows, got_cols)} (out, in*kernel) but {where} "
        f"{list(shape)} expects {_fmt_delta(want_rows, want_cols)}"
    )


def _swap_rows(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[0] // 2
    return torch.cat([t[half:], t[:half]], dim=0)


def _swap_halves(adapter: Adapter, shape: tuple[int, ...]) -> Adapter | None:
    """The adapter with its output halves swapped (diffusers shift/scale -> BFL scale/shift), or None if unsupported.

    LoRA, LoHa and Full swap their output factor. A Kronecker product (LoKr) or a Tucker LoHa interleaves its
    factors on the output axis, so that module becomes its dense ΔW with the halves swapped (``shape``: the target
    weight's): exact, since without DoRA ΔW is linear in the strength; a final-norm layer is small. With DoRA the
    merge is not linear: None (unmatched, reported)."""
    if isinstance(adapter, LoRA):
        dora = adapter.dora_scale
        if dora is not None and dora.shape[0] == adapter.out_features and adapter.out_features > 1:
            dora = _swap_rows(dora)
        return LoRA(down=adapter.down, up=_swap_rows(adapter.up), alpha=adapter.alpha, mid=adapter.mid, dora_scale=dora)
    if isinstance(adapter, Full):
        return Full(
            diff=None if adapter.diff is None else _swap_rows(adapter.diff),
            diff_b=None if adapter.diff_b is None else _swap_rows(adapter.diff_b),
        )
    if isinstance(adapter, LoHa) and adapter.t1 is None and adapter.dora_scale is None:
        return LoHa(
            w1a=_swap_rows(adapter.w1a),
            w1b=adapter.w1b,
            w2a=_swap_rows(adapter.w2a),
            w2b=adapter.w2b,
            alpha=adapter.alpha,
        )
    if getattr(adapter, "dora_scale", None) is None:
        return Full(diff=_swap_rows(adapter.delta_weight(shape)))
    return None


def _patches_for(
    name: str, adapter: Adapter, target: Target, shapes: Mapping[str, tuple[int, ...]], problems: list[str]
) -> list[Patch] | None:
    """Patches for one module on its target; None when the model lacks the needed key (-> unmatched).

    Shape misfits are appended to ``problems`` (one message per module) and give no patches.
    """
    if target.swap_halves:
        swapped = _swap_halves(adapter, shapes[target.key])
        if swapped is None:
            return None
        adapter = swapped
    weight_key = target.key
    if not isinstance(adapter, Full):
        wanted = [(weight_key, adapter, name)]
    else:
        wanted = []
        if adapter.diff is not None:
            wanted.append((weight_key, Full(diff=adapter.diff), name))
        if adapter.diff_b is not None:
            bias_key = weight_key[: -len("weight")] + "bias"
            if bias_key not in shapes:
                return None
            wanted.append((bias_key, Full(diff=adapter.diff_b), f"{name} (bias)"))
    for key, part, label in wanted:
        problem = _fit_problem(label, part, key, shapes[key], target.rows)
        if problem:
            problems.append(problem)
            return []
    return [Patch(key, part, target.rows) for key, part, _ in wanted]


def _widened_patch(name, adapter, target, shapes, shape, family, problems: list[str]) -> list[Patch]:
    """The patch of a module that may widen its weight (``widen``); a message in ``problems`` when it cannot."""
    problem = widen.widen_problem(name, shape, None if target is None else target.key, shapes, family)
    problem = problem or _fit_problem(name, adapter, "its widened weight", shape, None)
    if problem:
        problems.insert(0, problem)  # the first said: it tells a wrong base model best
        return []
    return [Patch(target.key, adapter, None, None if tuple(shapes[target.key]) == shape else shape)]


def match(parsed: ParsedLoRA, model_keys: Mapping[str, tuple[int, ...]], *, strict: bool = True) -> KeyMatch:
    """Map every module of ``parsed`` onto ``model_keys`` ({ModelPatcher key: shape}).

    Modules whose names land on no model weight are returned as ``unmatched`` (a LoRA for another base model, or
    for a component the model lacks). A module that lands on a weight its delta cannot fit raises
    :class:`LoraShapeError` naming the module, the delta shape found and the shape expected; with
    ``strict=False`` such modules are reported in ``mismatched`` (and ``unmatched``) instead.
    """
    table = alias_table(model_keys)
    patches: list[Patch] = []
    matched: list[str] = []
    unmatched: list[str] = []
    mismatched: list[str] = []
    problems: list[str] = []
    family = families.from_model_keys(model_keys) if parsed.widened else ""
    for name, adapter in parsed.modules.items():
        bias_only = isinstance(adapter, Full) and adapter.diff is None and name.endswith(".bias")
        target = table.resolve(name[: -len(".bias")] if bias_only else name)
        n_problems = len(problems)
        if name in parsed.widened:
            found = _widened_patch(name, adapter, target, table.shapes, parsed.widened[name], family, problems)
        else:
            found = None if target is None else _patches_for(name, adapter, target, table.shapes, problems)
        if len(problems) > n_problems:
            mismatched.append(name)
            unmatched.append(name)
        elif found is None:
            unmatched.append(name)
        else:
            patches.extend(found)
            matched.append(name)
    if problems and strict:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise LoraShapeError(
            f"{len(problems)} LoRA module(s) do not fit the model weights they name: "
            + "; ".join(problems[:3])
            + more
            + ". The LoRA was made for a different base model (use one for this model) or is corrupt."
        )
    return KeyMatch(tuple(patches), tuple(matched), tuple(unmatched), len(parsed.modules), tuple(mismatched))
