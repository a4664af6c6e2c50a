"""``torch.compile`` for a training run: the diffusion model compiled once per input shape, swapped in per call.

On a GPU the trainer's cost over the bare model is mostly kernel launches (bench/launches.py); inductor fuses the
side paths' small ops into their neighbours and, with ``max-autotune``, replays each step as CUDA graphs. The swap
is the one ComfyUI's own ``TorchCompileModel`` does (``comfy_api.torch_helpers``: the compiled module stands in for
``diffusion_model`` for the length of one ``apply_model``), so everything around the model call (ComfyUI's input
scaling, Loom's strength and factor updates) stays eager, and a preview sampled mid-run runs the plain model.

Shapes: compiled with ``dynamic=False``, so each bucket (latent size, batch, token count) compiles once and then
replays; the recompile limit is raised for the run to cover every bucket the dataset has.

For sampling with scheduled LoRAs no Loom option is needed: ComfyUI's own ``TorchCompileModel`` node after the Loom
loader compiles the model with the bypass in it (the strengths are tensors written outside the compiled call, so
steps never recompile; tests/comfy/test_compile.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

COMPILE_MODES = ("off", "default", "max-autotune")
BACKEND = "inductor"  # what the modes are modes of (tests swap in "aot_eager" to count graphs without codegen)


def check_mode(mode: str, name: str = "compile") -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"{name}: {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    return mode


class Compiled:
    """A model's diffusion model compiled in ``mode``; ``with compiled.swapped():`` runs ``apply_model`` on it."""

    def __init__(self, base_model, mode: str, shapes: int = 1) -> None:
        check_mode(mode)
        self.base = base_model
        self.module = torch.compile(
            base_model.diffusion_model,
            backend=BACKEND,
            mode=None if mode == "default" or BACKEND != "inductor" else mode,
            dynamic=False,
        )
        self.limit = max(8, 2 * shapes + 2)  # every bucket, with and without the prior batch, and slack

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        plain = self.base.diffusion_model
        self.base.diffusion_model = self.module  # nn.Module.__setattr__: the compiled wrapper, for this call only
        try:
            yield
        finally:
            self.base.diffusion_model = plain

    @contextlib.contextmanager
    def limits(self) -> Iterator[None]:
        """The run's recompile limit (one compile per shape must not fall back to eager after eight buckets)."""
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        with config.patch({name: max(getattr(config, name), self.limit)}):
            yield


@contextlib.contextmanager
def maybe_compiled(base_model, mode: str, shapes: int = 1) -> Iterator[Compiled | None]:
    """``Compiled`` for the run when ``mode`` is not ``off``, else ``None``."""
    if check_mode(mode) == "off":
        yield None
        return
    compiled = Compiled(base_model, mode, shapes)
    with compiled.limits():
        yield compiled
