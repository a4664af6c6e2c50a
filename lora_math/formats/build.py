"""Turn the grouped parts of one module into an adapter (LoRA / LoHa / LoKr / Full), with clear errors."""

from __future__ import annotations

from ..adapters import Adapter, Full, LoHa, LoKr, LoRA
from ..errors import LoraFormatError, LoraShapeError
from .keys import ModuleParts

__all__ = ["build_adapters"]

_REQUIRED = {"lora": ("down", "up"), "loha": ("w1a", "w1b", "w2a", "w2b"), "lokr": ()}
_PART_SUFFIX = {"down": "down", "up": "up", "w1a": "w1_a", "w1b": "w1_b", "w2a": "w2_a", "w2b": "w2_b"}


def _missing(module: str, mp: ModuleParts, algorithm: str) -> None:
    """Raise when a module lacks a part its algorithm needs (names the key present and the part missing)."""
    parts = mp.parts[algorithm]
    present = mp.keys[(algorithm, next(iter(parts)))]
    needed = list(_REQUIRED.get(algorithm, ()))
    if algorithm == "lokr":
        # Each Kronecker half is either full (lokr_wN) or a pair (lokr_wN_a, lokr_wN_b).
        for half in ("w1", "w2"):
            if half not in parts:
                needed += [f"{half}a", f"{half}b"]
    for part in needed:
        if part not in parts:
            raise LoraFormatError(
                f"module {module!r}: found {present!r} but not its {algorithm} part {_PART_SUFFIX[part]!r}; "
                "the file is incomplete or was cut short"
            )


def _check_rank(module: str, mp: ModuleParts) -> None:
    """LoRA up/down must share the rank; say which keys disagree, with both shapes."""
    parts = mp.parts["lora"]
    down, up = parts["down"], parts["up"]
    if up.ndim >= 2 and down.ndim >= 1 and up.shape[1] != down.shape[0]:
        raise LoraShapeError(
            f"{mp.keys[('lora', 'up')]}: shape {list(up.shape)} does not fit {mp.keys[('lora', 'down')]} shape "
            f"{list(down.shape)}; expected up {[up.shape[0], down.shape[0], *up.shape[2:]]} (the rank is down's first "
            "dimension)"
        )


def _build_one(module: str, mp: ModuleParts, alpha: float | None) -> Adapter:
    shared = mp.parts.get("shared", {})
    dora = shared.get("dora_scale")
    algorithms = [a for a in mp.parts if a not in ("shared", "bias")]
    if len(algorithms) > 1:
        raise LoraFormatError(
            f"module {module!r} mixes {' and '.join(sorted(algorithms))} parts; expected one algorithm"
        )
    algorithm = algorithms[0]
    _missing(module, mp, algorithm)
    parts = mp.parts[algorithm]
    if algorithm == "lora":
        _check_rank(module, mp)
        return LoRA(down=parts["down"], up=parts["up"], alpha=alpha, mid=parts.get("mid"), dora_scale=dora)
    if algorithm == "loha":
        return LoHa(
            w1a=parts["w1a"],
            w1b=parts["w1b"],
            w2a=parts["w2a"],
            w2b=parts["w2b"],
            alpha=alpha,
            t1=parts.get("t1"),
            t2=parts.get("t2"),
            dora_scale=dora,
        )
    if algorithm == "lokr":
        return LoKr(
            w1=parts.get("w1"),
            w1a=parts.get("w1a"),
            w1b=parts.get("w1b"),
            w2=parts.get("w2"),
            w2a=parts.get("w2a"),
            w2b=parts.get("w2b"),
            t2=parts.get("t2"),
            alpha=alpha,
            dora_scale=dora,
        )
    return Full(diff=parts.get("diff"), diff_b=parts.get("diff_b"))


def module_rank(mp: ModuleParts) -> int | None:
    """The rank a module's alpha is divided by, read from the raw parts (None for full diffs)."""
    lora = mp.parts.get("lora")
    if lora and "down" in lora:
        return int(lora["down"].shape[0])
    return None


def build_adapters(
    modules: dict[str, ModuleParts], alphas: dict[str, float | None]
) -> tuple[dict[str, Adapter], list[str]]:
    """Build every module's adapter. Returns ({module: adapter}, keys left over such as orphan alphas).

    A ``lora_B.bias`` beside a low-rank pair becomes an extra ``"<module>.bias"`` entry holding ``Full(diff_b=…)``;
    so does a ``.diff_b`` beside another algorithm's parts (ComfyUI's own trainer writes ``X.lora_up``/``lora_down``/
    ``alpha`` and ``X.diff_b`` for every layer with a bias).
    """
    adapters: dict[str, Adapter] = {}
    leftover: list[str] = []
    for module, mp in modules.items():
        full = mp.parts.get("full")
        if full is not None and set(full) == {"diff_b"} and any(a not in ("shared", "bias", "full") for a in mp.parts):
            adapters[f"{module}.bias"] = Full(diff_b=full["diff_b"])
            mp = ModuleParts({a: parts for a, parts in mp.parts.items() if a != "full"}, mp.keys, mp.suffixes)
        if not any(a not in ("shared", "bias") for a in mp.parts):
            if "bias" in mp.parts:
                adapters[f"{module}.bias"] = Full(diff_b=mp.parts["bias"]["diff_b"])
            else:
                leftover.extend(mp.keys.values())
            continue
        try:
            adapters[module] = _build_one(module, mp, alphas.get(module))
        except (LoraShapeError, LoraFormatError) as exc:
            if module in str(exc):
                raise
            # The adapter classes name the part (e.g. "LoRA.down"); add which module of the file it is.
            raise type(exc)(f"module {module!r}: {exc}") from exc
        if "bias" in mp.parts:
            adapters[f"{module}.bias"] = Full(diff_b=mp.parts["bias"]["diff_b"])
    return adapters, leftover
