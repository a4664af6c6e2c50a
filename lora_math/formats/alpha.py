"""Alpha for PEFT / diffusers ``lora_A``/``lora_B`` files, which store no alpha tensor.

Order (lora-formats.md): an explicit ``.alpha`` key (handled by the caller); the header's ``lora_adapter_metadata``
JSON (diffusers ≥ 0.34); a sidecar ``adapter_config.json``; else ``alpha = r`` (scale 1).

Both configs carry PEFT's ``LoraConfig`` fields: ``r``, ``lora_alpha``, ``alpha_pattern``, ``rank_pattern``,
``use_rslora``. diffusers pipelines prefix them with the component (``"transformer.lora_alpha"``); a model-level
save writes them bare. With ``use_rslora`` the scale is ``alpha / sqrt(r)``; the adapters compute
``alpha / rank``, so the alpha handed over is ``alpha * rank / sqrt(r)``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import LoraFormatError

__all__ = ["PeftAlpha", "METADATA_KEY"]

METADATA_KEY = "lora_adapter_metadata"
# Prefixes of module names that are not part of the PEFT target path.
_WRAPPERS = ("base_model.model.",)
# diffusers pipeline components, as they prefix both the file's keys and the metadata fields.
_COMPONENTS = frozenset({"unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "prior", "decoder"})


@dataclass(frozen=True)
class _Config:
    """The alpha-relevant part of one PEFT ``LoraConfig``."""

    r: int | None = None
    lora_alpha: float | None = None
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    use_rslora: bool = False

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], source: str) -> _Config:
        try:
            return cls(
                r=int(fields["r"]) if fields.get("r") is not None else None,
                lora_alpha=float(fields["lora_alpha"]) if fields.get("lora_alpha") is not None else None,
                alpha_pattern={str(k): float(v) for k, v in (fields.get("alpha_pattern") or {}).items()},
                rank_pattern={str(k): int(v) for k, v in (fields.get("rank_pattern") or {}).items()},
                use_rslora=bool(fields.get("use_rslora", False)),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise LoraFormatError(
                f"{source}: r / lora_alpha / alpha_pattern / rank_pattern are malformed ({exc})"
            ) from exc

    @property
    def empty(self) -> bool:
        return self.lora_alpha is None and not self.alpha_pattern


def _pattern_value(patterns: Mapping[str, Any], path: str) -> Any:
    """PEFT's rule: pattern ``p`` applies to ``path`` when ``path`` matches ``(.*\\.)?p$``; first hit wins."""
    for pattern, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", path):
                return value
        except re.error:
            if path == pattern or path.endswith("." + pattern):
                return value
    return None


def _split_components(fields: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"transformer.r": 4, "r": 8}`` -> ``{"transformer": {"r": 4}, "": {"r": 8}}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in fields.items():
        component, _, name = key.rpartition(".")
        out.setdefault(component, {})[name] = value
    return out


class PeftAlpha:
    """Resolves the alpha of each ``lora_A``/``lora_B`` module from header metadata or a sidecar config."""

    def __init__(self, metadata: Mapping[str, str], sidecar_config: Mapping[str, Any] | None = None) -> None:
        self._metadata: dict[str, _Config] = {}
        raw = metadata.get(METADATA_KEY)
        if raw:
            try:
                fields = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise LoraFormatError(f"header metadata {METADATA_KEY!r} is not valid JSON ({exc.msg})") from exc
            if not isinstance(fields, dict):
                raise LoraFormatError(f"header metadata {METADATA_KEY!r} must be a JSON object")
            for component, sub in _split_components(fields).items():
                cfg = _Config.from_fields(sub, f"header metadata {METADATA_KEY!r}")
                if not cfg.empty:
                    self._metadata[component] = cfg
        self._sidecar = _Config.from_fields(sidecar_config, "adapter_config.json") if sidecar_config else None

    @property
    def has_config(self) -> bool:
        return bool(self._metadata) or (self._sidecar is not None and not self._sidecar.empty)

    def _config_for(self, module: str) -> tuple[_Config | None, str]:
        """The config that governs ``module`` and the module's path relative to that config's component."""
        head, _, rest = module.partition(".")
        if head in self._metadata and rest:
            return self._metadata[head], rest
        if "" in self._metadata:
            return self._metadata[""], module
        if len(self._metadata) == 1 and head not in _COMPONENTS:
            # One component described, module names written without it (a model-level save).
            ((_, cfg),) = self._metadata.items()
            return cfg, module
        if self._sidecar is not None and not self._sidecar.empty:
            return self._sidecar, module
        return None, module

    def alpha(self, module: str, rank: int) -> float:
        """Alpha to store on the adapter of ``module`` (rank = ``down.shape[0]``) so that alpha/rank is PEFT's scale."""
        found = self.configured(module, rank)
        return float(rank) if found is None else found

    def configured(self, module: str, rank: int) -> float | None:
        """:meth:`alpha` when a config gives ``module`` an alpha (``lora_alpha`` or an ``alpha_pattern`` entry), else
        None (no config, or one without alpha: PEFT then uses alpha = r)."""
        cfg, path = self._config_for(module)
        if cfg is None:
            return None
        for wrapper in _WRAPPERS:
            path = path.removeprefix(wrapper)
        alpha = _pattern_value(cfg.alpha_pattern, path)
        if alpha is None:
            alpha = cfg.lora_alpha
        if alpha is None:
            return None
        if cfg.use_rslora:
            r = _pattern_value(cfg.rank_pattern, path) or cfg.r or rank
            return float(alpha) * rank / math.sqrt(r)
        return float(alpha)
