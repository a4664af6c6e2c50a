"""What a LoRA file's safetensors header says, for people: one view for ``inspect``, Loom LoRA Info and the info panel.

:func:`header_view` turns the header's ``__metadata__`` (string -> string) into a :class:`HeaderView`: who wrote the
file (where the header says so), its trigger words, and every key in a row of one of these sections, in order:

- ``about``: the SAI model spec (``modelspec.*``) and the base model and hashes kohya-style tools record;
- ``training``: the kohya ``ss_*`` fields most trainers write (sd-scripts, musubi-tuner, ai-toolkit, Loom);
- ``adapter config`` (one per diffusers component): the PEFT ``LoraConfig`` that diffusers >= 0.34 (and SimpleTuner
  through it) stores as ``lora_adapter_metadata`` JSON; pipeline saves prefix each field with the component
  (``transformer.r``), a model-level save writes them bare;
- ``other keys``: the writer's own keys under their own names (ai-toolkit ``name``/``version``/``software``/
  ``training_info``, OneTrainer ``ot_*``, SimpleTuner ``lycoris_config``, ``loom_*`` …), JSON objects shown as
  ``field: value`` lists, then one ``not set`` row naming the keys whose value is empty, "None", ``{}`` or ``[]``
  (kohya writes "None" for every unset option).

Nothing is dropped: a value longer than :data:`MAX_VALUE_CHARS` is cut (ending in "…", its keys in ``truncated``),
``ss_tag_frequency`` shows its :data:`TOP_TAGS_SHOWN` most frequent tags and says how many there are, a thumbnail its
size. The raw strings stay available beside the view (``inspect``'s ``metadata``, the route's ``metadata``).

Trigger words: ``triggers``.

Pure: strings in, plain data out; the same view renders as text (:meth:`HeaderView.lines`) and JSON
(:meth:`HeaderView.to_json`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .header_values import decode_value, flat, is_present, is_unset, number, ranked_tags
from .triggers import trigger_words

__all__ = ["MAX_VALUE_CHARS", "HeaderView", "Row", "Section", "decode_value", "header_view", "trigger_words", "writer"]

MAX_VALUE_CHARS = 4000  # ss_tag_frequency, ss_datasets, ot_config and thumbnails can be megabytes
TOP_TAGS_SHOWN = 20  # tags the training section lists
ADAPTER_METADATA = "lora_adapter_metadata"


@dataclass(frozen=True)
class Row:
    label: str
    value: str
    keys: tuple[str, ...]  # the header keys the value comes from


@dataclass(frozen=True)
class Section:
    title: str
    rows: tuple[Row, ...]


@dataclass(frozen=True)
class HeaderView:
    writer: str | None
    trigger_words: tuple[str, ...]
    sections: tuple[Section, ...]
    truncated: tuple[str, ...]  # keys of the values cut to MAX_VALUE_CHARS

    def to_json(self) -> dict[str, Any]:
        return {
            "writer": self.writer,
            "trigger_words": list(self.trigger_words),
            "sections": [
                {"title": s.title, "rows": [{"label": r.label, "value": r.value, "keys": list(r.keys)} for r in s.rows]}
                for s in self.sections
            ],
            "truncated": list(self.truncated),
        }

    def lines(self) -> list[str]:
        """The view as text: ``written by: …``, then each section title and its rows as ``  label: value``."""
        out = [f"written by: {self.writer}"] if self.writer else []
        for section in self.sections:
            out.append(f"{section.title}:")
            out += [f"  {r.label}: {r.value}" for r in section.rows]
        if self.truncated:
            out.append(f"cut to {MAX_VALUE_CHARS} characters: {', '.join(self.truncated)}")
        return out


# --- known fields ---------------------------------------------------------------------------------------------------


def _tags_text(values: list[Any]) -> str:
    ranked = ranked_tags(values[0])
    if not ranked:
        return flat(values[0])
    shown = ", ".join(f"{tag} {count:g}" for tag, count in ranked[:TOP_TAGS_SHOWN])
    where = f"{_count(len(ranked), 'tag')} in {_count(len(values[0]), 'folder')}"
    return shown + (f" ({where})" if len(ranked) <= TOP_TAGS_SHOWN else f" … (top {TOP_TAGS_SHOWN} of {where})")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _datasets_text(values: list[Any]) -> str:
    dirs = values[0]
    if not isinstance(dirs, Mapping):
        return flat(dirs)
    parts = []
    for name, info in dirs.items():
        if isinstance(info, Mapping):
            parts.append(f"{name} ({info.get('img_count', '?')} images x {info.get('n_repeats', '?')})")
        else:
            parts.append(f"{name} ({flat(info)})")
    return "; ".join(parts)


def _date(value: Any) -> str:
    seconds = number(value)
    if seconds is None or not 0 < seconds < 1e11:
        return flat(value)
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))  # no datetime.UTC: Python 3.10 runs ComfyUI too


def _dates_text(values: list[Any]) -> str:
    return " to ".join(_date(v) for v in values)


def _thumbnail_text(values: list[Any]) -> str:
    text = str(values[0])
    m = re.match(r"data:([\w.+-]+/[\w.+-]+)?(;base64)?,", text)
    if not m:
        return flat(text)
    data = len(text) - m.end()
    size = data * 3 // 4 if m.group(2) else data
    return f"{m.group(1) or 'data'} image, {size / 1024:.1f} KiB (data URL, not shown)"


_Render = Callable[[list[Any]], str] | None

# section -> (label, keys joined with " / " when several are present, how to render them)
_KNOWN: dict[str, tuple[tuple[str, tuple[str, ...], _Render], ...]] = {
    "about": (
        ("title", ("modelspec.title",), None),
        ("author", ("modelspec.author",), None),
        ("description", ("modelspec.description",), None),
        ("license", ("modelspec.license",), None),
        ("usage", ("modelspec.usage_hint",), None),
        ("trigger phrase", ("modelspec.trigger_phrase",), None),
        ("tags", ("modelspec.tags",), None),
        ("date", ("modelspec.date",), None),
        ("architecture", ("modelspec.architecture",), None),
        ("implementation", ("modelspec.implementation", "modelspec.implementation_version"), None),
        ("resolution", ("modelspec.resolution",), None),
        ("prediction", ("modelspec.prediction_type",), None),
        ("timestep range", ("modelspec.timestep_range",), None),
        ("encoder layer", ("modelspec.encoder_layer",), None),
        ("merged from", ("modelspec.merged_from",), None),
        ("trained on", ("ss_sd_model_name", "ss_base_model_version"), None),
        ("base model hash", ("ss_new_sd_model_hash", "ss_sd_model_hash"), None),
        ("file hash", ("modelspec.hash_sha256", "sshs_model_hash", "sshs_legacy_hash"), None),
        ("thumbnail", ("modelspec.thumbnail",), _thumbnail_text),
        ("model spec", ("modelspec.sai_model_spec",), None),
    ),
    "training": (
        ("network", ("ss_network_module",), None),
        ("network args", ("ss_network_args",), None),
        ("dim / alpha", ("ss_network_dim", "ss_network_alpha"), None),
        ("network dropout", ("ss_network_dropout",), None),
        ("optimizer", ("ss_optimizer",), None),
        ("learning rate", ("ss_learning_rate",), None),
        ("unet / text encoder lr", ("ss_unet_lr", "ss_text_encoder_lr"), None),
        ("scheduler", ("ss_lr_scheduler",), None),
        ("warmup steps", ("ss_lr_warmup_steps",), None),
        ("epoch / epochs", ("ss_epoch", "ss_num_epochs"), None),
        ("steps", ("ss_steps", "ss_max_train_steps"), None),
        ("train images", ("ss_num_train_images", "ss_num_train_items"), None),
        ("regularisation images", ("ss_num_reg_images",), None),
        ("batch size", ("ss_total_batch_size", "ss_batch_size_per_device"), None),
        ("gradient accumulation", ("ss_gradient_accumulation_steps",), None),
        ("resolution", ("ss_resolution",), None),
        ("precision", ("ss_mixed_precision",), None),
        ("noise offset", ("ss_noise_offset",), None),
        ("min SNR gamma", ("ss_min_snr_gamma",), None),
        ("timestep sampling / shift", ("ss_timestep_sampling", "ss_discrete_flow_shift"), None),
        ("clip skip", ("ss_clip_skip",), None),
        ("seed", ("ss_seed",), None),
        ("output name", ("ss_output_name",), None),
        ("datasets", ("ss_dataset_dirs",), _datasets_text),
        ("tags", ("ss_tag_frequency",), _tags_text),
        ("trained", ("ss_training_started_at", "ss_training_finished_at"), _dates_text),
        ("comment", ("ss_training_comment",), None),
    ),
}


# --- the writer -----------------------------------------------------------------------------------------------------


def _short_hash(value: Any) -> str:
    text = str(value).strip()
    return text[:10] if re.fullmatch(r"[0-9a-f]{11,}", text) else text


def writer(metadata: Mapping[str, str]) -> str | None:
    """The tool that wrote the file, where the header names it (first rule that applies), else None.

    ai-toolkit (and anything else writing a ``software`` JSON with a name): name and version; OneTrainer: ``ot_branch``/
    ``ot_revision``; LoRA Loom: ``loom_version``; kohya sd-scripts: ``ss_sd_scripts_commit_hash`` or a
    ``modelspec.implementation_version`` of ``sd-scripts/<commit>``; SimpleTuner's LyCORIS saves: ``lycoris_config``;
    diffusers / PEFT (and SimpleTuner's PEFT saves): ``lora_adapter_metadata``; any other
    ``modelspec.implementation_version`` as written. musubi-tuner and others that write only ``ss_*``/``modelspec.*``
    name no tool, so none is claimed for them.
    """
    software = decode_value(metadata.get("software"))
    if isinstance(software, Mapping) and is_present(software.get("name")):
        version = software.get("version")
        return f"{software['name']} {version}".strip() if is_present(version) else str(software["name"])
    if "ot_revision" in metadata or "ot_branch" in metadata:
        where = [str(metadata[k]) for k in ("ot_branch", "ot_revision") if is_present(metadata.get(k))]
        return "OneTrainer" + (f" ({' @ '.join(_short_hash(w) for w in where)})" if where else "")
    if is_present(metadata.get("loom_version")):
        return f"LoRA Loom {metadata['loom_version']}"
    impl = str(metadata.get("modelspec.implementation_version") or "")
    commit = metadata.get("ss_sd_scripts_commit_hash")
    if impl.startswith("sd-scripts/") or is_present(commit):
        commit = commit if is_present(commit) else impl.removeprefix("sd-scripts/")
        return f"kohya-ss/sd-scripts (commit {_short_hash(commit)})" if is_present(commit) else "kohya-ss/sd-scripts"
    if "lycoris_config" in metadata:
        return "SimpleTuner (LyCORIS)"
    if ADAPTER_METADATA in metadata:
        return "diffusers / PEFT"
    return impl.strip() or None


# --- the view -------------------------------------------------------------------------------------------------------


class _Rows:
    """Collects rows, cutting long values and remembering whose they were."""

    def __init__(self) -> None:
        self.truncated: list[str] = []

    def row(self, label: str, text: str, keys: Iterable[str]) -> Row:
        keys = tuple(keys)
        if len(text) > MAX_VALUE_CHARS:
            text = text[: MAX_VALUE_CHARS - 1] + "\u2026"
            self.truncated += [k for k in keys if k not in self.truncated]
        return Row(label, text, keys)


_ADAPTER_FIRST = ("r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "rank_pattern", "alpha_pattern")


def _adapter_sections(raw: str, rows: _Rows) -> list[Section] | None:
    """``lora_adapter_metadata`` per component, or None when it is not a JSON object (then it is shown as it is)."""
    config = decode_value(raw)
    if not isinstance(config, Mapping):
        return None
    components: dict[str, dict[str, Any]] = {}
    for key, value in config.items():
        component, _, field = str(key).rpartition(".")
        components.setdefault(component, {})[field] = value
    sections = []
    for component, fields in components.items():
        order = [f for f in _ADAPTER_FIRST if f in fields] + sorted(f for f in fields if f not in _ADAPTER_FIRST)
        empty = [f for f in order if fields[f] is None or fields[f] == {} or fields[f] == []]
        out = [rows.row(f, flat(fields[f]), (ADAPTER_METADATA,)) for f in order if f not in empty]
        if empty:
            out.append(rows.row("not set", ", ".join(empty), (ADAPTER_METADATA,)))
        title = f"adapter config ({component})" if component else "adapter config"
        sections.append(Section(title, tuple(out)))
    return sections


def header_view(metadata: Mapping[str, str]) -> HeaderView:
    """The view of a header (``ParsedLoRA.metadata``); every key appears in a row (see the module docstring)."""
    rows = _Rows()
    shown: set[str] = set()
    unset = sorted(k for k, v in metadata.items() if is_unset(v))
    sections: list[Section] = []
    for title, fields in _KNOWN.items():
        out = []
        for label, keys, render in fields:
            present = [k for k in keys if k in metadata and k not in unset]
            if not present:
                continue
            values = [decode_value(metadata[k]) for k in present]
            text = render(values) if render else " / ".join(flat(v) for v in values)
            out.append(rows.row(label, text, present))
            shown |= set(present)
        if out:
            sections.append(Section(title, tuple(out)))
    if ADAPTER_METADATA in metadata and ADAPTER_METADATA not in unset:
        adapter = _adapter_sections(metadata[ADAPTER_METADATA], rows)
        if adapter is not None:
            sections += adapter
            shown.add(ADAPTER_METADATA)
    other = [
        rows.row(key, flat(decode_value(metadata[key])), (key,))
        for key in sorted(metadata)
        if key not in shown and key not in unset
    ]
    if unset:
        other.append(rows.row("not set", ", ".join(unset), unset))
    if other:
        sections.append(Section("other keys", tuple(other)))
    return HeaderView(writer(metadata), tuple(trigger_words(metadata)), tuple(sections), tuple(rows.truncated))
