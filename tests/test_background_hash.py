"""The checkpoint's SHA-256 is computed in the background (`hashing.sha256_later`): loading returns before the
file is hashed, generation runs meanwhile, and the infotext still carries A1111's `Model hash` (the first 10 hex
digits of the file's SHA-256); the hash cache is filled, and a later load takes the hash from it without reading
the file."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading

import pytest
import torch
from test_api_support import LiveServer, make_data_dir, wait_for_job, wait_until

import sdwebui.models.hashing as hashing
from sdwebui.models.loader import load_checkpoint
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.txt2img import txt2img

REAL_SHA256_FILE = hashing.sha256_file


@pytest.fixture
def checkpoint(tmp_path, tiny_sd1_path):
    path = tmp_path / "models" / "tiny-hash.safetensors"
    path.parent.mkdir()
    shutil.copyfile(tiny_sd1_path, path)
    return path


def test_loading_does_not_wait_for_the_hash_and_the_infotext_carries_it(tmp_path, checkpoint, monkeypatch):
    cache_dir = tmp_path / "cache"
    real = REAL_SHA256_FILE
    release = threading.Event()
    hashing_started = threading.Event()

    def held(path):
        hashing_started.set()
        assert release.wait(60), "the test never released the hash"
        return real(path)

    monkeypatch.setattr(hashing, "sha256_file", held)
    model = load_checkpoint(checkpoint, device="cpu", dtype=torch.float32, vae_dtype=torch.float32,
                            hash_cache_dir=cache_dir)
    # The model is ready while its file is still being hashed.
    assert hashing_started.wait(30)
    assert model.info.sha256_if_ready is None
    assert not (cache_dir / hashing.CACHE_FILE_NAME).exists()

    unet_calls = []
    model.unet.register_forward_hook(lambda *_: unet_calls.append(1))
    result = {}

    def generate():
        params = Txt2ImgParams(prompt="a red square", width=64, height=64, steps=2, seed=7, sampler="Euler")
        result["out"] = txt2img(GenerationContext(model=model), params)

    thread = threading.Thread(target=generate)
    thread.start()
    try:
        # Sampling runs without the hash; only the infotext needs it.
        for _ in range(600):
            if unet_calls or not thread.is_alive():
                break
            release.wait(0.1)
        assert unet_calls, "generation waited for the hash before sampling"
        assert model.info.sha256_if_ready is None
    finally:
        release.set()
        thread.join(120)
    expected = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert model.info.sha256 == expected
    infotext = result["out"].infotexts[0]
    assert f"Model hash: {expected[:10]}, Model: tiny-hash," in infotext
    # The background hash filled the cache, keyed as before (resolved path, size, mtime).
    entry = json.loads((cache_dir / hashing.CACHE_FILE_NAME).read_text())[str(checkpoint.resolve())]
    assert entry["sha256"] == expected and entry["size"] == checkpoint.stat().st_size


def test_a_cached_hash_is_used_at_once_without_reading_the_file(tmp_path, checkpoint, monkeypatch):
    cache_dir = tmp_path / "cache"
    expected = hashing.HashCache(cache_dir).sha256(checkpoint)

    def must_not_hash(path):
        raise AssertionError(f"{path} hashed again")

    monkeypatch.setattr(hashing, "sha256_file", must_not_hash)
    model = load_checkpoint(checkpoint, device="cpu", dtype=torch.float32, vae_dtype=torch.float32,
                            hash_cache_dir=cache_dir)
    assert model.info.sha256_if_ready == expected and model.info.short_hash == expected[:10]
    # A changed file is hashed again (in the background), not taken from the stale entry.
    monkeypatch.setattr(hashing, "sha256_file", REAL_SHA256_FILE)
    with open(checkpoint, "ab") as out:
        out.write(b"\0" * 16)
    model = load_checkpoint(checkpoint, device="cpu", dtype=torch.float32, vae_dtype=torch.float32,
                            hash_cache_dir=cache_dir)
    assert model.info.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest() != expected


def test_a_failed_background_hash_raises_where_the_hash_is_used(tmp_path):
    missing = tmp_path / "gone.safetensors"
    pending = hashing.sha256_later(missing, tmp_path / "cache")
    assert isinstance(pending, hashing.PendingHash)
    with pytest.raises(OSError):
        pending.result(30)


def test_a_cache_that_cannot_be_written_still_gives_the_hash(tmp_path, checkpoint):
    """A full disk or read-only data folder: the hash is right, only not kept (a real full disk once made the
    background hash fail, and with it every later job's infotext)."""
    not_a_folder = tmp_path / "cache-is-a-file"
    not_a_folder.write_text("")
    expected = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert hashing.HashCache(not_a_folder).sha256(checkpoint) == expected
    assert hashing.sha256_later(checkpoint, not_a_folder).result(timeout=30) == expected


def test_a_failed_background_hash_is_raised_once_then_hashed_again():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        return "ab" * 32

    pending = hashing.PendingHash(flaky)
    with pytest.raises(OSError, match="No space left"):
        pending.result(timeout=30)
    assert pending.result(timeout=30) == "ab" * 32 and len(calls) == 2


def test_get_options_does_not_wait_for_the_hash(tmp_path, tiny_sd1_path, monkeypatch):
    """`GET /sdapi/v1/options` answers while the loaded checkpoint is still being hashed (`sd_checkpoint_hash` is
    "" until then, as before any load) and shows the hash once it is known."""
    data = make_data_dir(tmp_path, tiny_sd1_path, "tiny-sd1.safetensors")
    release = threading.Event()

    def held(path):
        assert release.wait(60), "the test never released the hash"
        return REAL_SHA256_FILE(path)

    monkeypatch.setattr(hashing, "sha256_file", held)
    try:
        with LiveServer(data, ui=False) as live, live.client() as client:
            job = client.post("/api/v1/jobs", json={"width": 64, "height": 64, "steps": 1, "sampler": "Euler"})
            wait_until(lambda: live.services.loaded_model() is not None, timeout=120)
            response = client.get("/sdapi/v1/options", timeout=10)
            assert response.status_code == 200 and response.json()["sd_checkpoint_hash"] == ""
            release.set()
            expected = hashlib.sha256(tiny_sd1_path.read_bytes()).hexdigest()
            assert wait_for_job(client, job.json()["id"], timeout=120)["status"] == "done"
            assert client.get("/sdapi/v1/options").json()["sd_checkpoint_hash"] == expected
    finally:
        release.set()
