"""lora_math.formats.io.load_state_dict: real files load; pickles, truncated/corrupt files and NaN/Inf are refused clearly."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from fixtures_path import REAL_LORAS, needs_fixtures  # noqa: E402
from safetensors.torch import save_file

from lora_math.errors import LoraFileError
from lora_math.formats.io import load_state_dict, read_header

REAL_FILES = sorted(REAL_LORAS.glob("*.safetensors"))


def _raw_safetensors(header: dict, data: bytes, pad_to: int | None = None) -> bytes:
    """Hand-built safetensors bytes, for headers the library would refuse to write."""
    text = json.dumps(header)
    if pad_to is not None:
        text = text.ljust(pad_to)
    return struct.pack("<Q", len(text)) + text.encode() + data


def _saved(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "lora.safetensors", **metadata: str) -> Path:
    path = tmp_path / name
    save_file(tensors, str(path), metadata=metadata or None)
    return path


# --- loading ------------------------------------------------------------------------------------------------------


@needs_fixtures
def test_real_fixtures_are_present() -> None:
    assert len(REAL_FILES) >= 4


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.stem)
def test_real_files_load_on_cpu(path: Path) -> None:
    tensors, metadata = load_state_dict(path)
    header, _ = read_header(path)
    assert set(tensors) == set(header) and tensors
    assert all(t.device.type == "cpu" for t in tensors.values())
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    sample = next(iter(header))
    assert list(tensors[sample].shape) == header[sample]["shape"]


@needs_fixtures
def test_real_lokr_metadata_and_cloneofsimo_keys() -> None:
    _, metadata = load_state_dict(REAL_LORAS / "smart_falcon_4_lokr.safetensors")
    assert any(key.startswith("ss_") for key in metadata)
    # The legacy cloneofsimo layout loads at this level; refusing it is the format parser's job.
    tensors, _ = load_state_dict(REAL_LORAS / "analog_svd_rank4.safetensors")
    assert "text_encoder:0:down" in tensors and tensors["text_encoder:0:down"].shape == (4, 768)


def test_round_trip_with_and_without_metadata(tmp_path: Path) -> None:
    tensors = {"a.lora_down.weight": torch.randn(4, 8, dtype=torch.float16), "a.alpha": torch.tensor(4.0)}
    loaded, metadata = load_state_dict(_saved(tmp_path, tensors, ss_network_dim="4"))
    assert metadata == {"ss_network_dim": "4"}
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    _, none = load_state_dict(_saved(tmp_path, tensors, name="plain.safetensors"))
    assert none == {}


def test_header_length_starting_with_pickle_byte_is_not_mistaken_for_pickle(tmp_path: Path) -> None:
    # A 640-byte header starts the file with b"\x80\x02", which is also how a protocol-2 pickle starts.
    header = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    path = tmp_path / "odd.safetensors"
    path.write_bytes(_raw_safetensors(header, struct.pack("<2f", 1.0, 2.0), pad_to=640))
    assert path.read_bytes()[:2] == b"\x80\x02"
    tensors, _ = load_state_dict(path)
    assert tensors["w"].tolist() == [1.0, 2.0]


# --- pickle refusal -----------------------------------------------------------------------------------------------


class _Tripwire:
    """Unpickling this creates a file: proof that a loader unpickled."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".pkl", ".CKPT"])
def test_pickle_extensions_refused_unread(tmp_path: Path, suffix: str) -> None:
    tripwire = tmp_path / "unpickled"
    path = tmp_path / f"lora{suffix}"
    path.write_bytes(pickle.dumps(_Tripwire(tripwire)))
    with pytest.raises(LoraFileError, match=rf"lora{suffix}.*never unpickled.*\.safetensors") as info:
        load_state_dict(path)
    assert str(path) in str(info.value)
    assert not tripwire.exists()


def test_valid_safetensors_content_is_still_refused_under_pickle_extension(tmp_path: Path) -> None:
    path = _saved(tmp_path, {"w": torch.zeros(2)}, name="renamed.ckpt")
    with pytest.raises(LoraFileError, match=r"renamed\.ckpt: refusing a \.ckpt file"):
        load_state_dict(path)


def test_zip_magic_safetensors_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    torch.save({"w": torch.zeros(2)}, path)  # torch.save writes a zip archive
    assert path.read_bytes()[:4] == b"PK\x03\x04"
    with pytest.raises(LoraFileError, match=r"checkpoint\.safetensors: this is a PyTorch/pickle file.*never unpickled"):
        load_state_dict(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_magic_safetensors_refused_unread(tmp_path: Path, protocol: int) -> None:
    tripwire = tmp_path / "unpickled"
    path = tmp_path / "sneaky.safetensors"
    path.write_bytes(pickle.dumps(_Tripwire(tripwire), protocol=protocol))
    with pytest.raises(LoraFileError, match=r"sneaky\.safetensors: .*pickle.*convert it to \.safetensors"):
        load_state_dict(path)
    assert not tripwire.exists()


# --- truncated and corrupt ----------------------------------------------------------------------------------------


def test_truncated_data_names_file_and_key(tmp_path: Path) -> None:
    path = _saved(tmp_path, {"a": torch.zeros(4), "b.lora_up.weight": torch.ones(64, 4)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LoraFileError, match=r"lora\.safetensors: truncated: tensor 'b\.lora_up\.weight'.*re-download"):
        load_state_dict(path)


@pytest.mark.parametrize("keep", [0, 5, 8, 40])
def test_truncated_header_refused(tmp_path: Path, keep: int) -> None:
    path = _saved(tmp_path, {"a": torch.zeros(4)})
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(LoraFileError, match=r"lora\.safetensors: truncated.*re-download it"):
        load_state_dict(path)


def test_invalid_json_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 12) + b"{not json!!}" + b"\0" * 8)
    with pytest.raises(LoraFileError, match=r"bad\.safetensors: corrupt safetensors header \(invalid JSON"):
        load_state_dict(path)


def test_not_safetensors_at_all(tmp_path: Path) -> None:
    path = tmp_path / "text.safetensors"
    path.write_bytes(b"hello, this is not a tensor file at all")
    with pytest.raises(LoraFileError, match=r"text\.safetensors: (truncated|not a safetensors file)"):
        load_state_dict(path)


def test_tensor_size_disagreeing_with_its_byte_range(tmp_path: Path) -> None:
    header = {"w.alpha": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    path = tmp_path / "short.safetensors"
    path.write_bytes(_raw_safetensors(header, b"\0" * 8))
    with pytest.raises(LoraFileError, match=r"'w\.alpha' is F32 \[3\] \(12 bytes\) but spans 8 bytes"):
        load_state_dict(path)


def test_non_string_metadata_refused(tmp_path: Path) -> None:
    header = {"__metadata__": {"ss_network_dim": 4}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    path = tmp_path / "meta.safetensors"
    path.write_bytes(_raw_safetensors(header, b"\0" * 4))
    with pytest.raises(LoraFileError, match=r"meta\.safetensors: .*__metadata__ must map strings to strings"):
        load_state_dict(path)


# --- NaN / Inf ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float8_e5m2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensor_names_key(tmp_path: Path, dtype: torch.dtype, bad: float) -> None:
    broken = torch.ones(3, 4)
    broken[1, 2] = bad
    tensors = {"ok.lora_down.weight": torch.ones(2, 2).to(dtype), "mid.lora_up.weight": broken.to(dtype)}
    path = _saved(tmp_path, tensors)
    with pytest.raises(LoraFileError, match=r"lora\.safetensors: tensor 'mid\.lora_up\.weight' holds NaN or Inf"):
        load_state_dict(path)


def test_non_finite_counts_other_keys_and_ignores_integers(tmp_path: Path) -> None:
    nan = torch.full((2,), float("nan"))
    tensors = {"a": nan, "b": nan.clone(), "c": nan.clone(), "steps": torch.tensor([7], dtype=torch.int64)}
    with pytest.raises(LoraFileError, match=r"tensor 'a' \(and 2 more keys\)"):
        load_state_dict(_saved(tmp_path, tensors))
    loaded, _ = load_state_dict(_saved(tmp_path, {"steps": tensors["steps"]}, name="ints.safetensors"))
    assert loaded["steps"].item() == 7
