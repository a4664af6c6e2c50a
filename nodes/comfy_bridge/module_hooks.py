"""Adding computation to a module's call and taking it back out: the one place that touches module forwards.

Side paths (a scheduled LoRA's bypass, a trainer's factors, a norm's input copy) are torch forward hooks. torch runs
them around whatever ``forward`` is at call time, so they compose with anyone who replaces ``forward`` (upstream's
bypass loader, other packs), in any order of install and removal, and removing one never drops another's. Hooks are
Python running around each call, not state in the call: a CUDA graph replay of the module replays their kernels.

Only a wrapper that must own the call (gradient checkpointing runs the block inside ``checkpoint``) replaces
``forward``; on removal it restores what it found when it is still on top, and otherwise steps aside (passes calls
through), since unlinking it would drop whoever wrapped it since.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class ModuleHooks:
    """What one owner added to modules; :meth:`remove` takes all of it back out, newest first."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._undo)

    def on_output(self, module: torch.nn.Module, fn: Callable) -> None:
        """``fn(module, x, out) -> out`` after every call; ``x`` is the call's first input. It runs before the
        module's other forward hooks, so they see the output with the side path in it, as with merged weights."""

        def hook(mod, args, kwargs, out):
            return fn(mod, args[0] if args else next(iter(kwargs.values())), out)

        self._undo.append(module.register_forward_hook(hook, with_kwargs=True, prepend=True).remove)

    def on_input(self, module: torch.nn.Module, fn: Callable) -> None:
        """``fn(x) -> x`` on the first positional input before every call."""

        def hook(mod, args):
            return (fn(args[0]), *args[1:]) if args else None

        self._undo.append(module.register_forward_pre_hook(hook).remove)

    def around(self, module: torch.nn.Module, wrap: Callable[[Callable], Callable]) -> None:
        """Replace ``module.forward`` by ``wrap(current forward)`` until :meth:`remove`."""
        own = module.__dict__.get("forward")  # another pack's wrapper, if any: we wrap it, never assume we own it
        inner = own or module.forward
        wrapped = wrap(inner)
        active = [True]

        def forward(*args, **kwargs):
            return wrapped(*args, **kwargs) if active[0] else inner(*args, **kwargs)

        module.forward = forward

        def undo() -> None:
            if module.__dict__.get("forward") is forward:
                if own is None:
                    del module.forward
                else:
                    module.forward = own
            else:  # someone wrapped on top of us since: unlinking would drop them, so pass calls through
                active[0] = False

        self._undo.append(undo)

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()
