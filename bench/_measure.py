"""Measuring a training run for bench/train.py: per-optimizer-step times, peak RSS sampled during a call, medians,
and a short profile of the slowest ops."""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import sys
import threading
import time

from _common import sync

GIB = 2**30


def log(text: str) -> None:
    print(f"[bench/train] {text}", file=sys.stderr, flush=True)


class StepClock:
    """Timestamps of every optimizer step in the process (a global post-step hook on all optimizers)."""

    def __init__(self, gpu: bool) -> None:
        self.gpu = gpu
        self.stamps: list[float] = []
        self.on_step = None  # extra callback per step (profiler.step)

    def hook(self, optimizer, args, kwargs) -> None:
        if self.gpu:
            sync()
        self.stamps.append(time.perf_counter())
        if self.on_step is not None:
            self.on_step()

    @contextlib.contextmanager
    def watch(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.stamps = []
        handle = register_optimizer_step_post_hook(self.hook)
        try:
            yield self
        finally:
            handle.remove()


class PeakRSS:
    """Peak resident set size of this process, sampled every `every` s in a thread (Linux /proc)."""

    def __init__(self, every: float = 0.01) -> None:
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.every)

    def __enter__(self):
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def max_rss_gib() -> float:
    """Process max RSS so far (getrusage; kilobytes on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (GIB if sys.platform == "darwin" else 2**20)


def measure(label: str, call, clock: StepClock, warmup: int, timed: int, gpu: bool) -> dict:
    """Run `call()` (one whole training call of warmup+timed steps); per-step times from the optimizer steps."""
    import torch

    if gpu:
        sync()
        torch.cuda.reset_peak_memory_stats()
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with clock.watch(), PeakRSS() as rss:
        sync()
        t0 = time.perf_counter()
        out = call()
        sync()
        wall = time.perf_counter() - t0
        stamps = list(clock.stamps)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if len(stamps) != warmup + timed:
        raise SystemExit(f"bench/train.py: {label} made {len(stamps)} optimizer steps, expected {warmup + timed}")
    intervals = [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)]
    steps = intervals[warmup:]
    mean = statistics.fmean(steps)
    median = statistics.median(steps)
    entry = {
        "s_per_step": round(median, 4),
        "mean_s": round(mean, 4),
        "min_s": round(min(steps), 4),
        "max_s": round(max(steps), 4),
        "steps_s": [round(s, 4) for s in steps],
        "wall_s": round(wall, 3),
        "setup_s": round(intervals[0] - median, 3),  # before the first step (first step's excess included)
        "teardown_s": round(wall - (stamps[-1] - t0), 3),  # after the last optimizer step
        # machine load: 1-min load average before/after, and this process's CPU seconds per wall second (about
        # the thread count when it had the cores to itself; lower when other jobs took them)
        "loadavg_before_after": [load_before, round(os.getloadavg()[0], 2) if load_before is not None else None],
        "process_cpu_per_wall": round(cpu_s / wall, 2),
    }
    if gpu:
        entry["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
        entry["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
    else:
        entry["peak_rss_during_gib"] = round(rss.peak / GIB, 3)
        entry["max_rss_gib"] = round(max_rss_gib(), 3)
    log(f"{label}: {median:.4f} s/step median (mean {mean:.4f}, wall {wall:.1f} s, load {load_before})")
    return {"entry": entry, "out": out}


def profile(label: str, call, clock: StepClock, k: int, gpu: bool, top: int = 15) -> dict:
    """torch.profiler over k steady-state steps of one training call (setup and the first step skipped)."""
    import torch.profiler as tp

    activities = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if gpu else [])
    with tp.profile(activities=activities, schedule=tp.schedule(wait=1, warmup=1, active=k, repeat=1)) as prof:
        clock.on_step = prof.step
        try:
            with clock.watch():
                call()
        finally:
            clock.on_step = None
    events = prof.key_averages()
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1
    rows = []
    for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]:
        rows.append(
            {
                "op": e.key,
                "self_ms_per_step": round(getattr(e, key) / 1000 / k, 3),
                "share": round(getattr(e, key) / total, 3),
                "calls_per_step": round(e.count / k, 1),
            }
        )
    calls = sum(e.count for e in events) / k
    log(
        f"profile {label}: {calls:.0f} op calls per step; top: "
        + ", ".join(f"{r['op']} {r['share']}" for r in rows[:5])
    )
    return {"op_calls_per_step": round(calls), "self_time_ms_per_step": round(total / 1000 / k, 1), "top": rows}
