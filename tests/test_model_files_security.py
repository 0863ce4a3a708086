"""Reading untrusted model files: damaged safetensors are reported in one line, pickles never run code."""

from __future__ import annotations

import json
import os
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdwebui.models.files import ModelFileError, read_safetensors_header, read_state_dict
from sdwebui.models.loader import load_checkpoint


def _safetensors(path: Path) -> Path:
    save_file({"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(4, 4)}, str(path))
    return path


def _rewrite_header(path: Path, mutate) -> Path:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    mutate(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return path


def test_model_file_error_shape():
    error = ModelFileError(Path("/m/x.safetensors"), "truncated file")
    assert isinstance(error, Exception)
    assert error.path == Path("/m/x.safetensors") and error.reason == "truncated file"
    assert str(error) == "/m/x.safetensors: truncated file"
    assert pickle.loads(pickle.dumps(error)).reason == "truncated file"


def test_valid_safetensors_reads(tmp_path):
    sd = read_state_dict(_safetensors(tmp_path / "ok.safetensors"), dtype=torch.float16)
    assert sd["a"].dtype == torch.float16 and torch.equal(sd["a"].float(), torch.arange(1000.0))


def test_dtype_rule_never_casts_integer_tensors(tmp_path):
    path = tmp_path / "mixed.safetensors"
    save_file({"ids": torch.arange(5), "w": torch.ones(2)}, str(path))
    sd = read_state_dict(path, dtype=lambda key: torch.bfloat16)
    assert sd["ids"].dtype == torch.int64 and sd["w"].dtype == torch.bfloat16


def test_truncated_safetensors(tmp_path):
    path = _safetensors(tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFileError) as error:
        read_state_dict(path)
    assert "truncated" in error.value.reason and "'a'" in error.value.reason
    assert "\n" not in str(error.value)


def test_header_length_beyond_file_end(tmp_path):
    path = _safetensors(tmp_path / "len.safetensors")
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", len(data) + 10)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="truncated or not a safetensors file"):
        read_state_dict(path)


def test_header_that_is_not_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 64)
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_state_dict(path)


def test_tensor_data_beyond_file_end(tmp_path):
    path = _safetensors(tmp_path / "offsets.safetensors")

    def grow(header):
        begin, end = header["b"]["data_offsets"]
        header["b"]["data_offsets"] = [begin + 10_000, end + 10_000]

    _rewrite_header(path, grow)
    with pytest.raises(ModelFileError, match="truncated file: tensor 'b'"):
        read_state_dict(path)


def test_shape_and_byte_range_disagree(tmp_path):
    path = _rewrite_header(_safetensors(tmp_path / "shape.safetensors"), lambda h: h["a"].update(shape=[2000]))
    with pytest.raises(ModelFileError, match="needs 8000 bytes"):
        read_safetensors_header(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError) as error:
        read_state_dict(path)
    assert "not a safetensors file" in error.value.reason or "truncated" in error.value.reason


def test_random_bytes_ckpt(tmp_path):
    path = tmp_path / "random.ckpt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ModelFileError):
        read_state_dict(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty file"):
        read_state_dict(path)
    with pytest.raises(ModelFileError, match="empty file"):
        load_checkpoint(path)


def test_unsupported_extension_and_missing_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="unsupported file type"):
        read_state_dict(path)
    with pytest.raises(ModelFileError, match="file not found"):
        read_state_dict(tmp_path / "nope.safetensors")


class _Malicious:
    """Unpickling this calls os.system, which would create the marker file."""

    marker: str = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_ckpt_is_rejected_and_does_not_run(tmp_path, zip_format, tiny_sd1):
    marker = tmp_path / "PWNED"
    payload = _Malicious()
    payload.marker = str(marker)
    # Prove the payload is live: plain pickle.loads would run it.
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "evil.ckpt"
    state = {k: v for k, v in list(tiny_sd1.ldm_state_dict().items())}
    torch.save({"state_dict": state, "callback": payload}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(ModelFileError) as error:
        read_state_dict(path)
    assert "refused to load" in error.value.reason and "system" in error.value.reason
    with pytest.raises(ModelFileError):
        load_checkpoint(path)
    assert not marker.exists()


def test_plain_tensor_ckpt_and_state_dict_nesting(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(3), "step": 5}, plain)
    assert set(read_state_dict(plain)) == {"w"}  # non-tensor entries dropped
    nested = tmp_path / "nested.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3), "state_dict": {"x": torch.zeros(1)}}, "global_step": 1}, nested)
    assert set(read_state_dict(nested)) == {"w"}  # A1111 drops a second-level state_dict
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_state_dict(legacy)["w"], torch.ones(3))


def test_training_leftovers_that_a1111_allows(tmp_path, monkeypatch):
    """Old SD training checkpoints pickle numpy scalars and Lightning's ModelCheckpoint next to the weights."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    for name in names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))

    class ModelCheckpoint:
        def __init__(self):
            self.monitor = "val/loss"

    ModelCheckpoint.__module__ = names[-1]
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    sys.modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    path = tmp_path / "lightning.ckpt"
    torch.save(
        {"state_dict": {"w": torch.ones(2)}, "callbacks": {ModelCheckpoint: {"best": np.float64(0.5)}}, "cb": ModelCheckpoint()},
        path,
    )
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))
