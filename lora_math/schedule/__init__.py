"""Strength schedules: a LoRA's strength as a function of sampling progress, per LoRA and per block.

A :class:`Schedule` is a list of keyframes ``(position, strength)`` with an interpolation mode for each segment
between two keyframes:

- ``hold``: the segment keeps its first keyframe's strength up to (not including) the next keyframe;
- ``linear``: a straight line between the two strengths;
- ``smooth``: a cosine ease, ``s0 + (s1 - s0) * (1 - cos(pi * t)) / 2``: flat at both ends, linear's value halfway.

Before the first keyframe the first strength holds, after the last the last strength holds. Positions are either
*progress* (0 = start of sampling, 1 = end) or *steps* (sampling step indices, resolved against the run's step count
by :meth:`Schedule.resolve`); one schedule uses one kind.

Steps and progress
------------------
Step ``i`` of an ``n``-step run is at progress ``i / n`` (:func:`step_progress`): the step that starts at sigma
index ``i`` of ComfyUI's ``n + 1`` sigmas, so step 0 is at 0 and the last step at ``(n - 1) / n``; progress 1 is
the final sigma, where no step starts. :meth:`Schedule.values` gives the strength at the start of each step, as
ComfyUI's hook keyframes do (a keyframe applies from the first step whose sigma has reached it). A step keyframe
``@k`` is at progress ``k / n``, so it sets the strength of step ``k`` exactly. ComfyUI's own ``start_percent``
inputs pass through ``model_sampling.percent_to_sigma``, which is linear in the model's timestep rather than in the
step index; with the ``simple``/``sgm_uniform`` schedulers the two agree, with others (karras, exponential) a
percent may land a step or so away. A caller that turns :meth:`Schedule.plateaus` into hook keyframes should
therefore key them to the step index (the position of the current sigma in the run's sigmas), not to percents.

Text form (:func:`parse_schedule`)
----------------------------------
::

    [MODE:] POSITION:STRENGTH [MODE], POSITION:STRENGTH [MODE], …

- Keyframes are separated by commas, semicolons or new lines; spaces are free.
- POSITION is progress ``0.4``, a percent ``40%`` (= 0.4) or a step index ``@3``; positions must increase.
- STRENGTH is any finite number (negative and above 1 allowed).
- MODE is ``hold``, ``linear`` (alias ``lin``) or ``smooth`` (aliases ``cosine``, ``cos``, ``ease``). A mode
  in front, ``smooth: 0:0, 1:1``, is the schedule's mode (``linear`` when left out); a mode after a keyframe's
  strength sets the segment that *starts* at that keyframe: ``0:0 smooth, 0.5:1 hold, 0.8:1, 1:0``.
- A lone number (``0.8``) is a constant schedule; a lone preset name (``fade_in``) is that preset with its
  default parameters (:data:`PRESETS`; ``cross_fade`` makes two schedules, so it has no text form).

Examples: ``0:0.2, 0.4:1.0, 1:0`` · ``smooth: 0%:0, 50%:1, 100%:0`` · ``@0:1 hold, @10:0`` · ``0:0 hold, 0.5:1``.
:meth:`Schedule.to_text` writes the canonical form (fractions; the most common mode in front, left out when it is
``linear`` or ties with it; other modes after their keyframes), which parses back to an equal schedule.

Per-block schedules (:func:`parse_block_schedules`)
--------------------------------------------------
::

    SELECTOR: SCHEDULE | SELECTOR: SCHEDULE | …

Entries are separated by ``|`` or new lines (so within one entry, keyframes are separated by commas or
semicolons). SELECTOR is a block (``IN04``/``IN4``, ``MID``/``M00``, ``OUT11``, ``D05``, ``S12``, ``BASE``, the ids of
:func:`lora_math.blocks.block_id`), a group (``IN``, ``OUT``, ``D``/``DOUBLE``, ``S``/``SINGLE``: each of its blocks
without its own entry) or ``*``/``DEFAULT`` (every block not named). A block entry beats its group, a group beats
``*``. Example::

    IN: 0:1, 1:0 | OUT: smooth: 0:0, 1:1 | *: 1

Errors are ``ValueError`` naming the input, the entry number, its character position (from 1, in the whole text)
and the token, as in :mod:`lora_math.blocks`, and saying what to write instead. :class:`Schedule` and
:class:`BlockSchedules` check themselves when built, so a schedule made in code is validated too.
"""

from .blocks import BlockSchedules, parse_any_schedule, parse_block_schedules
from .curve import MODES, Plateau, Schedule, format_number, step_progress
from .presets import PRESETS, preset
from .text import parse_schedule

__all__ = [
    "MODES",
    "PRESETS",
    "BlockSchedules",
    "Plateau",
    "Schedule",
    "format_number",
    "parse_any_schedule",
    "parse_block_schedules",
    "parse_schedule",
    "preset",
    "step_progress",
]
