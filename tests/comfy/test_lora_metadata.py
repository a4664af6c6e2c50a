"""The ``lora_metadata`` attachment: Loom's loaders attach what core's attach, for every format and writer's header.

Upstream's LoraLoader reads the file with ``comfy.utils.load_torch_file(..., return_metadata=True)`` and
``comfy.sd.load_lora_for_models`` attaches that header dict to the patched model and CLIP
(``set_attachments("lora_metadata", …)``; ``comfy_extras/nodes_lt.py`` reads it back). Every case here writes a file
(``lora_writers``: each format family; ``writer_headers``: the header sets of sd-scripts, musubi-tuner, ai-toolkit,
OneTrainer, SimpleTuner, diffusers and Loom) into a ``loras`` folder and loads it through core's own LoraLoader /
LoraLoaderModelOnly and through Loom's loader (or stack):

- on upstream, the two attachments must be equal, on the model and on the CLIP;
- on 0.3.75, whose core loader takes no metadata and attaches none, core's result must carry none, and Loom's must
  equal the header exactly as the safetensors library reads it (``safe_open(...).metadata()``, what upstream's loader
  passes on), so a newer core node downstream finds what it expects.
"""

from __future__ import annotations

import inspect
import json
from functools import partial

import comfy.sd
import lora_writers as lw
import pytest
import writer_headers as wh
from conftest import tiny_flux
from safetensors import safe_open
from safetensors.torch import load_file, save_file

KEY = "lora_metadata"
CORE_ATTACHES = KEY in inspect.signature(comfy.sd.load_lora_for_models).parameters

# format id -> (model fixture, writer); each writer also writes its own header (lora_writers' ss_* / PEFT keys)
FORMATS = {
    "kohya": ("sd", lw.kohya),
    "locon": ("sd", lw.locon),
    "loha": ("sd", lw.loha),
    "lokr": ("sd", lw.lokr),
    "dora-in": ("sd", partial(lw.dora, axis="in")),
    "full-diff": ("sd", lw.full_diff),
    "diffusers-processor": ("sd", lw.diffusers_processor),
    "peft": ("sd", lw.peft),
    "peft-comfy-names": ("sd", lw.peft_comfy_names),
    "flux-kohya": ("flux", lambda m, c, f, s: lw.flux_kohya(m, f, s)),
    "flux-bfl-peft": ("flux", lambda m, c, f, s: lw.flux_bfl_peft(m, f, s)),
    "flux-diffusers": ("flux", lambda m, c, f, s: lw.flux_diffusers(m, f, s)),
    "flux-xlabs": ("flux", lambda m, c, f, s: lw.flux_xlabs(m, f, s)),
}
# writer header -> the format family that writer saves (its lora_adapter_metadata matches that file's r / alpha)
WRITER_FORMAT = {
    "sd-scripts": "kohya",
    "musubi-tuner": "kohya",
    "ai-toolkit": "flux-bfl-peft",
    "onetrainer": "dora-in",
    "simpletuner-peft": "flux-diffusers",
    "simpletuner-lycoris": "lokr",
    "diffusers-model": "peft",
    "loom": "kohya",
}


@pytest.fixture(scope="module")
def flux():
    return tiny_flux(0)


@pytest.fixture(scope="module")
def files(loras, sd15, flux):
    """format id -> path of its written file, written on first use."""
    written = {}

    def get(fmt: str):
        if fmt not in written:
            kind, write = FORMATS[fmt]
            model, clip = (sd15[0], sd15[1]) if kind == "sd" else (flux, None)
            written[fmt] = write(model, clip, loras, 3).path
        return written[fmt]

    return get


def models(fmt, sd15, flux):
    return (sd15[0], sd15[1]) if FORMATS[fmt][0] == "sd" else (flux, None)


def with_header(path, header: dict | None, tag: str):
    """A copy of ``path`` in its folder with ``header`` as its whole ``__metadata__`` (None: no metadata at all)."""
    out = path.with_name(f"{tag}-{path.name}")
    save_file(load_file(str(path)), str(out), metadata=header)
    return out


def core(model, clip, name, sm=1.0, sc=1.0):
    import nodes

    if clip is None:
        return nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, sm)[0], None
    return nodes.LoraLoader().load_lora(model, clip, name, sm, sc)


def loom(pack, model, clip, name, sm=1.0, sc=1.0):
    result = pack.nodes.load.loader.LoomLoraLoader.execute(
        model=model, clip=clip, lora_name=name, strength_model=sm, strength_clip=sc
    ).result
    return result[0], result[1]


def attached(model, clip):
    return model.get_attachment(KEY), None if clip is None else clip.patcher.get_attachment(KEY)


def check_attachments(loom_out, core_out, path, clip) -> None:
    """Loom's attachments equal core's on upstream; on 0.3.75, core attaches none and Loom the header as read."""
    got, want = attached(*loom_out), attached(*core_out)
    if CORE_ATTACHES:
        assert got == want
    else:
        assert want == (None, None)
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or None  # no metadata: nothing attached, as upstream's `if lora_metadata:`
        assert got == (header, header if clip is not None else None)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_attaches_its_header_as_core_does(pack, files, sd15, flux, fmt):
    model, clip = models(fmt, sd15, flux)
    path = files(fmt)
    check_attachments(loom(pack, model, clip, path.name), core(model, clip, path.name), path, clip)
    assert attached(*loom(pack, model, clip, path.name))[0]["loom.test"] == "seeded random"  # the file's own header


@pytest.mark.parametrize("writer", sorted(WRITER_FORMAT))
def test_every_writers_header_is_attached_whole(pack, files, sd15, flux, writer):
    fmt = WRITER_FORMAT[writer]
    model, clip = models(fmt, sd15, flux)
    path = with_header(files(fmt), wh.WRITERS[writer], writer)
    out = loom(pack, model, clip, path.name)
    check_attachments(out, core(model, clip, path.name), path, clip)
    assert out[0].get_attachment(KEY) == wh.WRITERS[writer]  # every key, every value as the file holds it


@pytest.mark.parametrize(("sm", "sc"), [(1.0, 0.0), (0.0, 0.7), (0.0, 0.0)])
def test_strengths_of_zero_attach_as_core_does(pack, files, sd15, sm, sc):
    """Core attaches the header to every patcher the LoRA was loaded onto, one at strength 0 too; with both
    strengths 0 its LoraLoader returns the inputs untouched (so does Loom's)."""
    model, clip = sd15[0], sd15[1]
    path = with_header(files("kohya"), wh.SD_SCRIPTS, "strength")
    out, core_out = loom(pack, model, clip, path.name, sm, sc), core(model, clip, path.name, sm, sc)
    if sm == sc == 0:
        assert out == core_out == (model, clip) and attached(*out) == (None, None)
        return
    check_attachments(out, core_out, path, clip)
    assert attached(*out) == (wh.SD_SCRIPTS, wh.SD_SCRIPTS)


def test_the_last_lora_with_a_header_wins_in_a_stack_as_in_a_core_chain(pack, files, sd15):
    model, clip = sd15[0], sd15[1]
    kohya = files("kohya")
    first = with_header(kohya, wh.SD_SCRIPTS, "first")
    second = with_header(files("lokr"), wh.SIMPLETUNER_LYCORIS, "second")
    bare = with_header(kohya, None, "bare")  # no metadata: the earlier LoRA's header stays
    for names in ([first, second], [second, first], [first, bare], [bare]):
        rows = json.dumps([{"name": p.name, "model": 0.8, "clip": 0.5} for p in names])
        stacked = pack.nodes.load.stack.LoomLoraStack.execute(model=model, clip=clip, rows=rows).result
        chain = (model, clip)
        for p in names:
            chain = core(*chain, p.name, 0.8, 0.5)
        got = attached(stacked[0], stacked[1])
        if CORE_ATTACHES:
            assert got == attached(*chain), [p.name for p in names]
        else:
            assert attached(*chain) == (None, None)
        headers = [h for h in (wh.SD_SCRIPTS if p is first else wh.SIMPLETUNER_LYCORIS if p is second else None
                               for p in names) if h]  # fmt: skip
        assert got == ((headers[-1],) * 2 if headers else (None, None)), [p.name for p in names]
