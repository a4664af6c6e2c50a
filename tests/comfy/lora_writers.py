"""Seeded-random LoRA files in every format LoRA Loom reads, aimed at a real ComfyUI model's keys.

Each writer takes a loaded ComfyUI model (ModelPatcher, and the CLIP when the format has text-encoder keys), a folder
(registered as a ComfyUI ``loras`` folder by the caller) and a seed, writes one ``.safetensors`` file the way the tool
that defines the format does (lora-formats.md), and returns a :class:`WrittenLoRA`: the file name, how many modules it
holds, and one :class:`Expected` per model weight it patches with the ΔW it must add.

The ΔW of :class:`Expected` is the *hand reference*: plain torch on the tensors exactly as written (after the cast to
the file dtype), straight from the format's definition (``scale * up @ down``, Hadamard, Kronecker, ...). Which model
weight a module lands on comes from the writer itself, and the diffusers names come from ComfyUI's own converters
(``comfy.utils.unet_to_diffusers`` / ``flux_to_diffusers``), never from ``lora_math``, so the reference is independent
of the code under test.

Magnitudes: every module's ΔW (alpha/rank applied, strength 1) has an RMS of ``RHO`` times the RMS of the weight (or
row slice) it patches (``RHO`` = 0.1: a realistic change, far above fp16/bf16 rounding, see
``patched_weights.tolerance``); factors are drawn, the delta measured, and one factor rescaled before the cast.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

RHO = 0.1  # RMS(ΔW) / RMS(W) of every written module

UNET = "diffusion_model."
ATTN = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
FF = re.compile(r"\.ff\.net\.(0\.proj|2)$")
TE = re.compile(r"\.text_model\.encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
TE_ATTN = re.compile(r"\.text_model\.encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj$")


# --- the hand reference ---------------------------------------------------------------------------------------------


def lora_delta(down: Tensor, up: Tensor, mid: Tensor | None = None) -> Tensor:
    """Unscaled ΔW of a LoRA / LoCon pair (fp32): ``up @ down``; Tucker: ``Σ up[o,m] mid[m,n,h,w] down[n,i]``."""
    d, u = down.double(), up.double()
    if mid is None:
        return (u.flatten(1) @ d.flatten(1)).reshape(u.shape[0], *d.shape[1:]).float()
    return torch.einsum("om,mnhw,ni->oihw", u.flatten(1), mid.double(), d.flatten(1)).float()


def _rebuild(t: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    """LyCORIS CP/Tucker rebuild: t ``[r, r, h, w]``, wa ``[r, out]``, wb ``[r, in]`` -> ``[out, in, h, w]``."""
    return torch.einsum("ijhw,jc,io->ochw", t.double(), wb.double(), wa.double())


def loha_delta(w1a, w1b, w2a, w2b, t1=None, t2=None) -> Tensor:
    """Unscaled LoHa ΔW: ``(w1a @ w1b) * (w2a @ w2b)``; with Tucker cores each factor is rebuilt first."""
    if t1 is None:
        return ((w1a.double() @ w1b.double()) * (w2a.double() @ w2b.double())).float()
    return (_rebuild(t1, w1a, w1b) * _rebuild(t2, w2a, w2b)).float()


def lokr_delta(w1: Tensor, w2: Tensor) -> Tensor:
    """Unscaled LoKr ΔW: ``kron(w1, w2)``; a conv ``w2 [c, d, h, w]`` keeps its kernel."""
    w1 = w1.double().reshape(*w1.shape, *[1] * (w2.ndim - 2))
    return torch.kron(w1.contiguous(), w2.double().contiguous()).float()


def dora_merge(w: Tensor, delta: Tensor, magnitude: Tensor, strength: float) -> Tensor:
    """DoRA as in the paper / PEFT / LyCORIS: ``m * (W + ΔW) / ‖W + ΔW‖``, then ``W + strength * (W' - W)``.

    The norm runs over each output row when ``magnitude`` has one value per row (``[out, 1]``), else over each input
    column (``[1, in]``, OneTrainer). fp64 throughout; the caller casts.
    """
    w64, combined = w.double(), w.double() + delta.double()
    m = magnitude.double()
    if m.shape[0] == w.shape[0] and m.numel() == w.shape[0]:
        norm = combined.flatten(1).norm(dim=1).reshape(-1, *[1] * (w.ndim - 1))
    else:
        norm = combined.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1, *[1] * (w.ndim - 2))
    merged = m.reshape(norm.shape) * combined / norm
    return w64 + strength * (merged - w64)


# --- what a writer returns ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One model weight a file patches.

    key: ModelPatcher key (``diffusion_model.….weight`` / ``….bias``, ``clip_l.transformer.….weight`` …);
    component: "model" or "clip" (which strength applies); delta: computes the fp32 ΔW with alpha/rank applied and
    strength not, shaped like the weight or its row slice; rows: ``(start, stop)`` of a fused weight's output axis;
    dora_scale: the magnitude as written (fp32), when the module is DoRA.
    """

    key: str
    component: str
    delta: Callable[[], Tensor]
    rows: tuple[int, int] | None = None
    dora_scale: Tensor | None = None


@dataclass(frozen=True)
class WrittenLoRA:
    name: str  # file name inside the loras folder
    path: Path
    modules: int  # modules in the file (what Loom's report counts as targets)
    expected: tuple[Expected, ...] = field(default=())


# --- the model side -------------------------------------------------------------------------------------------------


class ModelKeys:
    """The weights of a loaded model (and CLIP), with the name maps the writers need."""

    def __init__(self, model, clip=None):
        import comfy.model_base
        import comfy.utils

        self.model_sd = {k: v for k, v in model.model.state_dict().items() if k.startswith(UNET)}
        self.clip_sd = dict(clip.patcher.model.state_dict()) if clip is not None else {}
        self.unet_config = model.model.model_config.unet_config
        self.is_flux = isinstance(model.model, comfy.model_base.Flux)
        # LDM path -> diffusers path (both without .weight), from ComfyUI's own converter (not lora_math).
        self.diffusers: dict[str, str] = {}
        if not self.is_flux:
            for dif, ldm in comfy.utils.unet_to_diffusers(self.unet_config).items():
                if dif.endswith(".weight"):
                    self.diffusers[ldm[: -len(".weight")]] = dif[: -len(".weight")]

    def unet(self, pattern: str | re.Pattern, ndim: int | None = None, kernel: int | None = None) -> list[str]:
        """Sorted LDM/BFL paths (no prefix, no .weight) of UNet weights whose path matches ``pattern``."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        out = []
        for key, w in self.model_sd.items():
            if not key.endswith(".weight"):
                continue
            path = key[len(UNET) : -len(".weight")]
            if not rx.search(path) or (ndim is not None and w.ndim != ndim):
                continue
            if kernel is not None and tuple(w.shape[2:]) != (kernel, kernel):
                continue
            out.append(path)
        return sorted(out)

    def te(self, pattern: re.Pattern = TE, encoder: str = "clip_l") -> list[str]:
        """Sorted CLIP ModelPatcher keys (with .weight) of ``encoder`` matching ``pattern``."""
        pre = f"{encoder}.transformer."
        return sorted(k for k in self.clip_sd if k.startswith(pre) and pattern.search(k[: -len(".weight")]))

    def weight(self, key: str) -> Tensor:
        return self.model_sd[key] if key.startswith(UNET) else self.clip_sd[key]


def te_path(key: str) -> str:
    """``clip_l.transformer.text_model.….weight`` -> ``text_model.…`` (the path text-encoder LoRAs name)."""
    return key.split(".transformer.", 1)[1][: -len(".weight")]


def _seed(seed: int, *parts: str) -> torch.Generator:
    digest = hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _rms(t: Tensor) -> float:
    wide = None if t.dtype == torch.float64 else torch.float32  # fp32 accumulation, no full-size fp64 copy
    return float(torch.linalg.vector_norm(t, dtype=wide)) / math.sqrt(t.numel())


def _target_rms(w: Tensor) -> float:
    rms = _rms(w)
    return RHO * (rms if rms > 0 else 0.5)  # zero-initialised biases: an absolute scale


def _split(n: int) -> tuple[int, int]:
    """``n = a * b`` with ``a <= b`` as close as possible (LoKr factor shapes)."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


class _Writer:
    """Collects tensors and expectations for one file; ``save`` writes it."""

    def __init__(self, keys: ModelKeys, folder: Path, name: str, seed: int, dtype: torch.dtype):
        self.keys, self.folder, self.name, self.seed, self.dtype = keys, Path(folder), name, seed, dtype
        self.tensors: dict[str, Tensor] = {}
        self.expected: list[Expected] = []
        self.modules = 0

    def gen(self, module: str) -> torch.Generator:
        return _seed(self.seed, self.name, module)

    def put(self, key: str, t: Tensor) -> Tensor:
        stored = t.to(self.dtype).contiguous()
        self.tensors[key] = stored
        return stored

    def alpha(self, module: str, value: float) -> float:
        self.tensors[f"{module}.alpha"] = torch.tensor(float(value), dtype=self.dtype)
        return float(self.tensors[f"{module}.alpha"])

    def expect(self, key, component, delta, rows=None, dora_scale=None) -> None:
        self.expected.append(Expected(key, component, delta, rows, dora_scale))

    def save(self, metadata: dict[str, str] | None = None) -> WrittenLoRA:
        path = self.folder / self.name
        save_file(self.tensors, str(path), metadata={"loom.test": "seeded random", **(metadata or {})})
        return WrittenLoRA(self.name, path, self.modules, tuple(self.expected))

    # -- algorithms ---------------------------------------------------------------------------------------------------

    def lora(
        self,
        module: str,
        key: str,
        component: str,
        *,
        rank: int = 4,
        alpha: float | None = None,
        down: str = "lora_down.weight",
        up: str = "lora_up.weight",
        tucker: bool = False,
        rows: tuple[int, int] | None = None,
        dora: str | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """A LoRA module: ``<module>.<down>`` / ``<module>.<up>`` (part suffixes of the format), optional ``.alpha``.

        tucker: 3x3 conv as 1x1 down, ``lora_mid`` core, 1x1 up. rows: the module patches that row slice of ``key``.
        dora: "out" writes ``dora_scale [out, 1]``, "in" ``[1, in]``. transform: maps the file's ΔW onto the model
        weight's row order (FLUX ``norm_out.linear``).
        """
        w = self.keys.weight(key)
        if rows is not None:
            w = w[rows[0] : rows[1]]
        g = self.gen(module)
        out_f, in_f, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
        if tucker:
            d = torch.randn(rank, in_f, 1, 1, generator=g)
            mid = torch.randn(rank, rank, *kernel, generator=g)
            u = torch.randn(out_f, rank, 1, 1, generator=g)
        else:
            d = torch.randn(rank, in_f, *kernel, generator=g)
            mid = None
            u = torch.randn(out_f, rank, *[1] * len(kernel), generator=g)
        scale = 1.0 if alpha is None else alpha / rank
        if mid is None:  # ‖u d‖² = tr((uᵀu)(d dᵀ)): no need to build ΔW of a 66M-value FLUX weight here
            u2, d2 = u.flatten(1).double(), d.flatten(1).double()
            raw = math.sqrt(float(torch.trace((u2.T @ u2) @ (d2 @ d2.T)))) / math.sqrt(w.numel())
        else:
            raw = _rms(lora_delta(d, u, mid))
        u = u * (_target_rms(w) / (raw * scale))
        d_s = self.put(f"{module}.{down}", d)
        u_s = self.put(f"{module}.{up}", u)
        m_s = self.put(f"{module}.lora_mid.weight", mid) if mid is not None else None
        if alpha is not None:
            scale = self.alpha(module, alpha) / rank

        def delta(d_s=d_s, u_s=u_s, m_s=m_s, scale=scale, shape=w.shape):
            out = (lora_delta(d_s, u_s, m_s) * scale).reshape(shape)
            return transform(out) if transform is not None else out

        magnitude = None
        if dora is not None:
            combined = w.double() + delta().double()
            g2 = self.gen(module + ".dora")
            if dora == "out":
                norm = combined.flatten(1).norm(dim=1, keepdim=True)
            else:
                norm = combined.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1)
            magnitude = self.put(f"{module}.dora_scale", norm * (1 + RHO * torch.randn(norm.shape, generator=g2)))
            magnitude = magnitude.float()
        self.expect(key, component, delta, rows, magnitude)
        self.modules += 1

    def loha(self, module: str, key: str, component: str, *, rank: int = 4, alpha: float, tucker: bool = False):
        w = self.keys.weight(key)
        g = self.gen(module)
        out_f, in_f, kernel = w.shape[0], w.shape[1], tuple(w.shape[2:])
        if tucker:
            parts = {
                "hada_w1_a": torch.randn(rank, out_f, generator=g),
                "hada_w1_b": torch.randn(rank, in_f, generator=g),
                "hada_t1": torch.randn(rank, rank, *kernel, generator=g),
                "hada_w2_a": torch.randn(rank, out_f, generator=g),
                "hada_w2_b": torch.randn(rank, in_f, generator=g),
                "hada_t2": torch.randn(rank, rank, *kernel, generator=g),
            }
        else:
            fan_in = math.prod(w.shape[1:])  # plain conv LoHa stores the kernel flattened into w*b
            parts = {
                "hada_w1_a": torch.randn(out_f, rank, generator=g),
                "hada_w1_b": torch.randn(rank, fan_in, generator=g),
                "hada_w2_a": torch.randn(out_f, rank, generator=g),
                "hada_w2_b": torch.randn(rank, fan_in, generator=g),
            }

        def raw_delta(p):
            args = [p[k] for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")]
            return loha_delta(*args, p.get("hada_t1"), p.get("hada_t2"))

        parts["hada_w1_a"] = parts["hada_w1_a"] * (_target_rms(w) / (_rms(raw_delta(parts)) * alpha / rank))
        stored = {k: self.put(f"{module}.{k}", v) for k, v in parts.items()}
        scale = self.alpha(module, alpha) / rank
        self.expect(key, component, lambda p=stored, s=scale, shape=w.shape: (raw_delta(p) * s).reshape(shape))
        self.modules += 1

    def lokr(
        self,
        module: str,
        key: str,
        component: str,
        *,
        full1: bool,
        full2: bool,
        rank: int = 4,
        alpha: float | None = None,
        tucker: bool = False,
        rows: tuple[int, int] | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        """LoKr with each half full (``lokr_wN``) or factorised (``lokr_wN_a @ lokr_wN_b``, second half optionally
        Tucker ``lokr_t2``). Rank for alpha: ``w2_b`` rows, else ``w1_b`` rows; both halves full: scale 1.
        rows / transform: as for :meth:`lora` (a slice of a fused weight; the file's row order onto the model's)."""
        w = self.keys.weight(key)
        if rows is not None:
            w = w[rows[0] : rows[1]]
        g = self.gen(module)
        (a, c), (b, d) = _split(w.shape[0]), _split(w.shape[1])
        kernel = tuple(w.shape[2:])
        parts: dict[str, Tensor] = {}
        if full1:
            parts["lokr_w1"] = torch.randn(a, b, generator=g)
        else:
            parts["lokr_w1_a"], parts["lokr_w1_b"] = (
                torch.randn(a, rank, generator=g),
                torch.randn(rank, b, generator=g),
            )
        if full2:
            parts["lokr_w2"] = torch.randn(c, d, *kernel, generator=g)
        elif tucker:
            parts["lokr_t2"] = torch.randn(rank, rank, *kernel, generator=g)
            parts["lokr_w2_a"], parts["lokr_w2_b"] = (
                torch.randn(rank, c, generator=g),
                torch.randn(rank, d, generator=g),
            )
        else:
            fan = d * math.prod(kernel)
            parts["lokr_w2_a"], parts["lokr_w2_b"] = (
                torch.randn(c, rank, generator=g),
                torch.randn(rank, fan, generator=g),
            )

        def halves(p):
            w1 = p["lokr_w1"].double() if "lokr_w1" in p else p["lokr_w1_a"].double() @ p["lokr_w1_b"].double()
            if "lokr_w2" in p:
                w2 = p["lokr_w2"].double()
            elif "lokr_t2" in p:
                w2 = _rebuild(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
            else:
                w2 = (p["lokr_w2_a"].double() @ p["lokr_w2_b"].double()).reshape(c, d, *kernel)
            return w1, w2

        dim = rank if not (full1 and full2) else None
        scale = alpha / dim if alpha is not None and dim is not None else 1.0
        w1, w2 = halves(parts)
        raw = _rms(w1) * _rms(w2)  # ‖kron(A, B)‖ = ‖A‖·‖B‖
        first = "lokr_w1" if full1 else "lokr_w1_a"
        parts[first] = parts[first] * (_target_rms(w) / (raw * scale))
        stored = {k: self.put(f"{module}.{k}", v) for k, v in parts.items()}
        if alpha is not None:
            stored_alpha = self.alpha(module, alpha)
            scale = stored_alpha / dim if dim is not None else 1.0

        def delta(p=stored, s=scale, shape=w.shape):
            out = (lokr_delta(*halves(p)) * s).reshape(shape)
            return transform(out) if transform is not None else out

        self.expect(key, component, delta, rows)
        self.modules += 1

    def full(self, module: str, key: str, component: str, *, bias: bool) -> None:
        """``.diff`` of the weight, plus ``.diff_b`` of its bias when ``bias``."""
        w = self.keys.weight(key)
        g = self.gen(module)
        diff = self.put(f"{module}.diff", torch.randn(w.shape, generator=g) * _target_rms(w))
        self.expect(key, component, lambda t=diff: t.float())
        if bias:
            bkey = key[: -len("weight")] + "bias"
            b = self.keys.weight(bkey)
            diff_b = self.put(f"{module}.diff_b", torch.randn(b.shape, generator=g) * _target_rms(w))
            self.expect(bkey, component, lambda t=diff_b: t.float())
        self.modules += 1


def _name(tag: str, seed: int) -> str:
    return f"loom-fvc-{tag}-s{seed}.safetensors"


def _te_prefix(keys: ModelKeys, key: str) -> str:
    """kohya text-encoder prefix: ``lora_te_`` for a single CLIP, ``lora_te1_``/``lora_te2_`` for SDXL's pair."""
    if not any(k.startswith("clip_g.") for k in keys.clip_sd):
        return "lora_te_"
    return "lora_te1_" if key.startswith("clip_l.") else "lora_te2_"


def _alpha_for(i: int, rank: int) -> float:
    return (rank / 2, float(rank), 2.0 * rank, 1.0)[i % 4]  # scales 0.5, 1, 2, 1/rank


# --- the formats ----------------------------------------------------------------------------------------------------


def kohya(model, clip, folder: Path, seed: int, *, sgm: bool = False) -> WrittenLoRA:
    """kohya / sd-scripts LoRA: UNet attention, feed-forward, proj_in/out (1x1 conv on SD1) and time embedding,
    plus every CLIP attention / MLP projection. SD1 UNet names are diffusers names; ``sgm=True`` writes SDXL's SGM
    names (``lora_unet_input_blocks_4_1_…``); text encoders ``lora_te_`` (one CLIP) or ``lora_te1_``/``lora_te2_``."""
    keys = ModelKeys(model, clip)
    wr = _Writer(keys, folder, _name("kohya-sgm" if sgm else "kohya", seed), seed, torch.float16)
    paths = keys.unet(ATTN) + keys.unet(FF) + keys.unet(r"\.(proj_in|proj_out)$") + keys.unet(r"emb_layers\.1$")[:2]
    for i, path in enumerate(paths):
        name = "lora_unet_" + (path if sgm else keys.diffusers[path]).replace(".", "_")
        rank = (4, 8)[i % 2]
        wr.lora(name, UNET + path + ".weight", "model", rank=rank, alpha=_alpha_for(i, rank))
    for i, key in enumerate(keys.te()):
        name = _te_prefix(keys, key) + te_path(key).replace(".", "_")
        wr.lora(name, key, "clip", rank=4, alpha=_alpha_for(i, 4))
    return wr.save({"ss_network_module": "networks.lora", "ss_network_dim": "8"})


def locon(model, clip, folder: Path, seed: int) -> WrittenLoRA:
    """LyCORIS LoCon: kohya keys on the resnets' 3x3 convs (``lora_down [r, in, 3, 3]``), the 1x1 shortcut, the
    down/upsamplers; every other 3x3 conv in Tucker form (``lora_mid [r, r, 3, 3]``). Plus attention, as a real
    LoCon file has."""
    keys = ModelKeys(model, clip)
    wr = _Writer(keys, folder, _name("locon", seed), seed, torch.float16)
    convs = keys.unet(r"(in_layers\.2|out_layers\.3|\.op|upsample.*\.conv|\.\d+\.conv)$", ndim=4, kernel=3)
    for i, path in enumerate(convs):
        wr.lora("lora_unet_" + keys.diffusers[path].replace(".", "_"), UNET + path + ".weight", "model",
                rank=4, alpha=_alpha_for(i, 4), tucker=i % 2 == 1)  # fmt: skip
    for i, path in enumerate(keys.unet(r"skip_connection$") + keys.unet(ATTN)[:4]):
        wr.lora("lora_unet_" + keys.diffusers[path].replace(".", "_"), UNET + path + ".weight", "model",
                rank=8, alpha=_alpha_for(i, 8))  # fmt: skip
    return wr.save({"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "locon"})})


def loha(model, clip, folder: Path, seed: int) -> WrittenLoRA:
    """LyCORIS LoHa (fp32 file): attention and feed-forward, 3x3 convs plain (kernel flattened into ``hada_w*_b``)
    and in Tucker form (``hada_t1``/``hada_t2``), and the CLIP attention projections."""
    keys = ModelKeys(model, clip)
    wr = _Writer(keys, folder, _name("loha", seed), seed, torch.float32)
    for i, path in enumerate(keys.unet(ATTN) + keys.unet(FF)):
        wr.loha("lora_unet_" + keys.diffusers[path].replace(".", "_"), UNET + path + ".weight", "model",
                rank=4, alpha=_alpha_for(i, 4))  # fmt: skip
    for i, path in enumerate(keys.unet(r"(in_layers\.2|out_layers\.3)$", ndim=4, kernel=3)):
        wr.loha("lora_unet_" + keys.diffusers[path].replace(".", "_"), UNET + path + ".weight", "model",
                rank=4, alpha=_alpha_for(i, 4), tucker=i % 2 == 0)  # fmt: skip
    for i, key in enumerate(keys.te(TE_ATTN)):
        wr.loha(_te_prefix(keys, key) + te_path(key).replace(".", "_"), key, "clip", rank=4, alpha=_alpha_for(i, 4))
    return wr.save({"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "loha"})})


def lokr(model, clip, folder: Path, seed: int, *, tucker: bool = False) -> WrittenLoRA:
    """LyCORIS LoKr: both halves full (alpha written but ignored), one full and one factorised, both factorised,
    3x3 convs with a full ``lokr_w2 [c, d, 3, 3]`` and with a factorised one (``lokr_w2_b [r, d*9]``, or with
    ``tucker`` a Tucker ``lokr_t2 [r, r, 3, 3]``); CLIP attention factorised."""
    keys = ModelKeys(model, clip)
    wr = _Writer(keys, folder, _name("lokr-tucker" if tucker else "lokr", seed), seed, torch.float16)
    kinds = [(True, True), (True, False), (False, False), (False, True)]
    for i, path in enumerate(keys.unet(ATTN) + keys.unet(FF)):
        full1, full2 = kinds[i % 4]
        wr.lokr("lora_unet_" + keys.diffusers[path].replace(".", "_"), UNET + path + ".weight", "model",
                full1=full1, full2=full2, alpha=_alpha_for(i, 4))  # fmt: skip
    for i, path in enumerate(keys.unet(r"(in_layers\.2|out_layers\.3)$", ndim=4, kernel=3)):
        factorised = i % 2 == 1
        wr.lokr("lora_unet_" + keys.diffusers[path].replace(".", "_"), UNET + path + ".weight", "model",
                full1=True, full2=not factorised, tucker=tucker and factorised, alpha=4.0)  # fmt: skip
    for key in keys.te(TE_ATTN):
        wr.lokr(_te_prefix(keys, key) + te_path(key).replace(".", "_"), key, "clip", full1=False, full2=False,
                alpha=8.0)  # fmt: skip
    return wr.save({"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": "lokr"})})


def dora(model, clip, folder: Path, seed: int, *, axis: str) -> WrittenLoRA:
    """kohya LoRA with DoRA magnitudes: ``axis="out"`` writes ``dora_scale [out, 1]`` (LyCORIS / PEFT), ``"in"``
    ``[1, in]`` (OneTrainer), on UNet attention and CLIP attention."""
    keys = ModelKeys(model, clip)
    wr = _Writer(keys, folder, _name(f"dora-{axis}", seed), seed, torch.float16)
    for i, path in enumerate(keys.unet(ATTN)):
        wr.lora("lora_unet_" + keys.diffusers[path].replace(".", "_"), UNET + path + ".weight", "model",
                rank=4, alpha=_alpha_for(i, 4), dora=axis)  # fmt: skip
    for i, key in enumerate(keys.te(TE_ATTN)):
        wr.lora(_te_prefix(keys, key) + te_path(key).replace(".", "_"), key, "clip", rank=4, alpha=_alpha_for(i, 4),
                dora=axis)  # fmt: skip
    return wr.save({"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"dora_wd": True})})


def diffusers_processor(model, clip, folder: Path, seed: int) -> WrittenLoRA:
    """diffusers attention processors (2023): ``unet.….attn1.processor.to_q_lora.down.weight`` … ``to_out_lora``,
    text encoder ``text_encoder.….q_proj.lora_linear_layer.down.weight``; no alpha (scale 1)."""
    keys = ModelKeys(model, clip)
    wr = _Writer(keys, folder, _name("diffusers-processor", seed), seed, torch.float16)
    for path in keys.unet(ATTN):
        attn, proj = re.fullmatch(r"(.+)\.(to_q|to_k|to_v|to_out)(\.0)?", keys.diffusers[path]).group(1, 2)
        module = f"unet.{attn}.processor.{proj}_lora"
        wr.lora(module, UNET + path + ".weight", "model", down="down.weight", up="up.weight")
    for key in keys.te(TE_ATTN):
        wr.lora(f"text_encoder.{te_path(key)}", key, "clip", down="lora_linear_layer.down.weight",
                up="lora_linear_layer.up.weight")  # fmt: skip
    return wr.save()


def diffusers_lora_layer(model, clip, folder: Path, seed: int) -> WrittenLoRA:
    """diffusers 0.21–0.24 ``LoRACompatibleLinear``: ``unet.….to_k.lora.down.weight``, ``….to_out.0.lora.up.weight``,
    ``text_encoder.….q_proj.lora.down.weight``; no alpha (scale 1)."""
    keys = ModelKeys(model, clip)
    wr = _Writer(keys, folder, _name("diffusers-lora-layer", seed), seed, torch.float16)
    for path in keys.unet(ATTN) + keys.unet(FF):
        wr.lora(f"unet.{keys.diffusers[path]}", UNET + path + ".weight", "model", down="lora.down.weight",
                up="lora.up.weight")  # fmt: skip
    for key in keys.te(TE_ATTN):
        wr.lora(f"text_encoder.{te_path(key)}", key, "clip", down="lora.down.weight", up="lora.up.weight")
    return wr.save()


PEFT_UNET_ALPHA = 8.0  # with r = 4: scale 2
PEFT_TE_ALPHA = 2.0  # scale 0.5
PEFT_PATTERN_ALPHA = 16.0  # one module's alpha_pattern entry: scale 4


def peft(model, clip, folder: Path, seed: int) -> WrittenLoRA:
    """diffusers ≥ 0.34 / PEFT: ``unet.<diffusers path>.lora_A.weight`` / ``lora_B``, ``text_encoder.…``; alpha only in
    ``__metadata__["lora_adapter_metadata"]`` (per component, with one ``alpha_pattern`` entry), r = 4."""
    keys = ModelKeys(model, clip)
    wr = _Writer(keys, folder, _name("peft", seed), seed, torch.float16)
    unet_paths = keys.unet(ATTN) + keys.unet(FF)
    special = keys.diffusers[keys.unet(ATTN)[1]]
    for path in unet_paths:
        dif = keys.diffusers[path]
        alpha = PEFT_PATTERN_ALPHA if dif == special else PEFT_UNET_ALPHA
        wr.lora(f"unet.{dif}", UNET + path + ".weight", "model", down="lora_A.weight", up="lora_B.weight", alpha=alpha)
    for key in keys.te(TE):
        wr.lora(f"text_encoder.{te_path(key)}", key, "clip", down="lora_A.weight", up="lora_B.weight",
                alpha=PEFT_TE_ALPHA)  # fmt: skip
    # PEFT keeps alpha out of the tensors: drop the .alpha keys the helper wrote, the metadata carries it.
    for k in [k for k in wr.tensors if k.endswith(".alpha")]:
        del wr.tensors[k]
    meta = {
        "unet.r": 4,
        "unet.lora_alpha": PEFT_UNET_ALPHA,
        "unet.alpha_pattern": {special: PEFT_PATTERN_ALPHA},
        "unet.target_modules": ["to_q", "to_k", "to_v", "to_out.0", "proj", "net.2"],
        "text_encoder.r": 4,
        "text_encoder.lora_alpha": PEFT_TE_ALPHA,
    }
    return wr.save({"lora_adapter_metadata": json.dumps(meta)})


def peft_comfy_names(model, clip, folder: Path, seed: int) -> WrittenLoRA:
    """``lora_A``/``lora_B`` under the model's own names (``diffusion_model.<LDM path>``, as ComfyUI-side trainers
    and ai-toolkit write) plus ``text_encoder.…``; no alpha anywhere, so scale 1 (PEFT's default alpha = r)."""
    keys = ModelKeys(model, clip)
    wr = _Writer(keys, folder, _name("peft-comfy-names", seed), seed, torch.float16)
    for path in keys.unet(ATTN) + keys.unet(r"\.(proj_in|proj_out)$"):
        wr.lora(f"{UNET}{path}", UNET + path + ".weight", "model", down="lora_A.weight", up="lora_B.weight")
    for key in keys.te(TE):
        wr.lora(f"text_encoder.{te_path(key)}", key, "clip", down="lora_A.weight", up="lora_B.weight")
    return wr.save()


def full_diff(model, clip, folder: Path, seed: int) -> WrittenLoRA:
    """LyCORIS full / kohya diff modules: ``.diff`` on a 1x1 conv (proj_in), 3x3 convs, linear attention, 1-D
    LayerNorm weights, with ``.diff_b`` on some biases; CLIP MLP ``.diff`` + ``.diff_b``."""
    keys = ModelKeys(model, clip)
    wr = _Writer(keys, folder, _name("full-diff", seed), seed, torch.float16)
    paths = keys.unet(r"\.proj_in$") + keys.unet(r"out_layers\.3$") + keys.unet(ATTN)[:4]
    paths += keys.unet(r"transformer_blocks\.0\.norm1$")
    for i, path in enumerate(paths):
        wr.full("lora_unet_" + keys.diffusers[path].replace(".", "_"), UNET + path + ".weight", "model",
                bias=i % 2 == 0 and UNET + path + ".bias" in keys.model_sd)  # fmt: skip
    for key in keys.te(re.compile(r"mlp\.fc[12]$")):
        wr.full(_te_prefix(keys, key) + te_path(key).replace(".", "_"), key, "clip", bias=True)
    return wr.save()


# --- FLUX -----------------------------------------------------------------------------------------------------------

# Every kind of BFL layer name appears in one of the two BFL-named files; each file takes about half of the
# 546M-parameter model, so that the comparisons stay short (flux_diffusers patches nearly all of it).
FLUX_KOHYA = re.compile(
    r"^(double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)|double_blocks\.\d+\.txt_mlp\.0|"
    r"single_blocks\.\d+\.(linear1|linear2)|img_in|txt_in|final_layer\.linear)$"
)
FLUX_AI_TOOLKIT = re.compile(
    r"^(double_blocks\.\d+\.img_mod\.lin|double_blocks\.\d+\.(img|txt)_mlp\.2|single_blocks\.\d+\.modulation\.lin|"
    r"time_in\.(in|out)_layer|vector_in\.in_layer|guidance_in\.in_layer|final_layer\.adaLN_modulation\.1)$"
)


def flux_kohya(model, folder: Path, seed: int) -> WrittenLoRA:
    """kohya FLUX (sd-scripts): ``lora_unet_double_blocks_0_img_attn_qkv`` … BFL names with ``_``, bf16, alpha."""
    keys = ModelKeys(model)
    wr = _Writer(keys, folder, _name("flux-kohya", seed), seed, torch.bfloat16)
    for i, path in enumerate(keys.unet(FLUX_KOHYA)):
        wr.lora("lora_unet_" + path.replace(".", "_"), UNET + path + ".weight", "model", rank=4, alpha=_alpha_for(i, 4))
    return wr.save({"ss_base_model_version": "flux1", "ss_network_module": "networks.lora_flux"})


def flux_bfl_peft(model, folder: Path, seed: int) -> WrittenLoRA:
    """ai-toolkit FLUX: ``diffusion_model.double_blocks.0.img_mod.lin.lora_A.weight`` … BFL names, no alpha."""
    keys = ModelKeys(model)
    wr = _Writer(keys, folder, _name("flux-bfl-peft", seed), seed, torch.bfloat16)
    for path in keys.unet(FLUX_AI_TOOLKIT):
        wr.lora(f"{UNET}{path}", UNET + path + ".weight", "model", rank=4, down="lora_A.weight", up="lora_B.weight")
    return wr.save()


FLUX_DIFFUSERS_ALPHA = 4.0  # = r: diffusers writes lora_alpha into the metadata; scale 1


def flux_diffusers(model, folder: Path, seed: int) -> WrittenLoRA:
    """diffusers FLUX: ``transformer.transformer_blocks.0.attn.to_q`` … split q/k/v (slices of ``qkv``), single-block
    q/k/v and ``proj_mlp`` (slices of ``linear1``), ``norm_out.linear`` (shift/scale halves swapped against BFL),
    embedders; ``lora_adapter_metadata`` with ``lora_alpha == r``. Targets from ``comfy.utils.flux_to_diffusers``."""
    import comfy.utils

    keys = ModelKeys(model)
    wr = _Writer(keys, folder, _name("flux-diffusers", seed), seed, torch.bfloat16)
    written = set()
    # Upstream's table also lists other writers' names for the same weights (LyCORIS ``ff.linear_in``, FLUX.2's
    # ``attn.to_out``): a diffusers file names each weight once, by its first (diffusers) name.
    for dif, target in comfy.utils.flux_to_diffusers(keys.unet_config, output_prefix=UNET).items():
        if not dif.endswith(".weight") or "norm_q" in dif or "norm_k" in dif or "norm_added" in dif:
            continue
        if repr(target) in written or "to_qkv_mlp_proj" in dif:  # FLUX.2's fused name: not in a FLUX.1 file
            continue
        written.add(repr(target))
        module = "transformer." + dif[: -len(".weight")]
        transform = None
        if isinstance(target, tuple):
            key, offset = target[0], target[1]
            rows = None if offset is None else (offset[1], offset[1] + offset[2])
            if len(target) > 2:  # norm_out.linear: diffusers (shift, scale) -> BFL (scale, shift)
                transform = _swap_halves
        else:
            key, rows = target, None
        if key not in keys.model_sd:
            continue  # controlnet_x_embedder: not in this model
        wr.lora(module, key, "model", rank=4, down="lora_A.weight", up="lora_B.weight", rows=rows, transform=transform,
                alpha=FLUX_DIFFUSERS_ALPHA)  # fmt: skip
    for k in [k for k in wr.tensors if k.endswith(".alpha")]:
        del wr.tensors[k]
    meta = {"transformer.r": 4, "transformer.lora_alpha": FLUX_DIFFUSERS_ALPHA}
    return wr.save({"lora_adapter_metadata": json.dumps(meta)})


def _swap_halves(t: Tensor) -> Tensor:
    half = t.shape[0] // 2
    return torch.cat([t[half:], t[:half]], dim=0)


def flux_xlabs(model, folder: Path, seed: int) -> WrittenLoRA:
    """XLabs FLUX: ``double_blocks.N.processor.{qkv,proj}_lora{1,2}.{down,up}.weight`` (1 = image stream, 2 = text
    stream) on the fused BFL layers; no alpha (scale 1)."""
    keys = ModelKeys(model)
    wr = _Writer(keys, folder, _name("flux-xlabs", seed), seed, torch.bfloat16)
    streams = {"1": "img", "2": "txt"}
    for path in keys.unet(r"^double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)$"):
        block, stream_layer = path.rsplit(".", 2)[0], path.rsplit(".", 2)[1:]
        stream, layer = stream_layer[0].split("_")[0], stream_layer[1]
        idx = next(i for i, s in streams.items() if s == stream)
        module = f"{block}.processor.{layer}_lora{idx}"
        wr.lora(module, UNET + path + ".weight", "model", rank=4, down="down.weight", up="up.weight")
    return wr.save()


# --- SDXL CLIP ------------------------------------------------------------------------------------------------------


def thin_sdxl_clip(model, seed: int, layers: int = 3):
    """SDXL's real text encoders (ComfyUI's ``SDXLClipModel``: CLIP-L + CLIP-G, widths 768 / 1280) with ``layers``
    transformer layers each, seeded random fp16 weights: a CLIP for the SDXL stand-in UNet, which has none."""
    import comfy.sd
    import make_models

    options = {
        "dtype": torch.float16,
        "clip_l_model_config": {"num_hidden_layers": layers},
        "clip_g_model_config": {"num_hidden_layers": layers},
    }
    clip = comfy.sd.CLIP(model.model.model_config.clip_target(), model_options=options)
    with torch.no_grad():
        for key, t in clip.patcher.model.state_dict().items():
            if t.is_floating_point():
                t.copy_(make_models.init_tensor(key, tuple(t.shape), make_models.tensor_seed(seed, "sdxl-clip", key)))
    return clip
