"""The one ``PatcherInjection`` a Loom clone carries: on inject, merge its static plan and hook its scheduled plan;
on eject, unhook (the merge stays: it is lazy on purpose, see below)."""

from __future__ import annotations

from comfy.patcher_extension import PatcherInjection

from . import merge_injection, schedule_bypass

KEY = merge_injection.KEY


def _inject(patcher) -> None:
    merge_injection.reconcile(patcher)
    schedule_bypass.install(patcher)


def _eject(patcher) -> None:
    # ComfyUI ejects around every internal operation and when switching clones. The next Loom clone moves the
    # weights by deltas; any other patcher of this model has another patches_uuid, so ComfyUI unpatches (restoring
    # the backups we registered) before using the weights. A bypass changes what the modules compute, so it leaves
    # with its patcher.
    schedule_bypass.uninstall(patcher.model)


def ensure(patcher) -> None:
    if not patcher.injections.get(KEY):
        patcher.set_injections(KEY, [PatcherInjection(inject=_inject, eject=_eject)])
