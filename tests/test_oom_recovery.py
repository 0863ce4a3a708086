"""Out-of-memory recovery, with the error injected (a CUDA OOM cannot happen on a CPU): a UNet call that runs out
of memory is made again in lowvram, a VAE decode again in tiles; a job that still runs out fails alone with a
clear message, and the next job is fine."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.autoencoders.vae import Decoder

from sdwebui.config import Paths
from sdwebui.models.devices import plan_devices
from sdwebui.models.manager import ModelManager
from sdwebui.models.memory import OutOfDeviceMemory
from sdwebui.pipelines.context import GenerationContext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.txt2img import txt2img

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.fixture
def model(tiny_sd1_path, tmp_path):
    manager = ModelManager(Paths.from_flags(tmp_path), plan_devices("cpu"))
    return manager.get(tiny_sd1_path)


def generate(model):
    params = Txt2ImgParams(prompt="a red cat", negative_prompt="blurry", width=64, height=64, steps=3, seed=4,
                           rng="cpu")
    return txt2img(GenerationContext(model=model), params)


def digest(result) -> list[str]:
    return [hashlib.sha256(image.tobytes()).hexdigest() for image in result.images]


def failing_first(monkeypatch, cls, times: int | None):
    """Make `cls.forward` raise a CUDA out-of-memory error on its first `times` calls (None: always)."""
    real = cls.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        if times is None or calls["n"] <= times:
            raise torch.OutOfMemoryError(OOM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", forward)
    return calls


def test_unet_out_of_memory_is_retried_in_lowvram_with_the_same_image(model, monkeypatch):
    expected = digest(generate(model))
    calls = failing_first(monkeypatch, UNet2DConditionModel, 1)
    assert digest(generate(model)) == expected
    assert calls["n"] > 1
    assert model.placement.mode == "lowvram"  # kept until the model is loaded again


def test_unet_out_of_memory_twice_fails_with_a_clear_message(model, monkeypatch):
    failing_first(monkeypatch, UNet2DConditionModel, None)
    with pytest.raises(OutOfDeviceMemory, match=r"out of device memory in the UNet at 64x64, 2 latents a call even "
                                                 r"after moving to --lowvram .*use a smaller image size or batch size"):
        generate(model)
    with pytest.raises(OutOfDeviceMemory, match="even with --lowvram"):  # in lowvram already: no second retry
        generate(model)


def test_vae_out_of_memory_is_decoded_again_in_tiles(model, monkeypatch):
    plain = generate(model)
    failing_first(monkeypatch, Decoder, 1)
    retried = generate(model)
    assert "out of memory while decoding: decoded again in tiles of 512 px" in retried.notes
    a, b = (np.asarray(result.images[0], dtype=np.int16) for result in (plain, retried))
    assert np.abs(a - b).max() <= 1  # one tile (64 px): only the two-pass statistics differ


def test_server_job_out_of_memory_fails_alone_and_the_next_job_runs(tiny_sd1_path, tmp_path, monkeypatch):
    from test_api_support import FAST, LiveServer, make_data_dir, wait_for_job

    data = make_data_dir(tmp_path / "data", tiny_sd1_path)
    real = UNet2DConditionModel.forward
    failing = {"on": True}

    def forward(self, *args, **kwargs):
        if failing["on"]:
            raise torch.OutOfMemoryError(OOM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", forward)
    with LiveServer(data) as live, live.client() as client:
        job = client.post("/api/v1/jobs", json={"prompt": "a", "seed": 1, **FAST}).json()["id"]
        view = wait_for_job(client, job, timeout=120)
        assert view["status"] == "failed"
        assert view["error"].startswith("out of memory: out of device memory in the UNet at 64x64")
        assert "use a smaller image size or batch size" in view["error"]
        assert live.services.models.loaded is None  # released after the failure
        failing["on"] = False
        job = client.post("/api/v1/jobs", json={"prompt": "a", "seed": 2, **FAST}).json()["id"]
        view = wait_for_job(client, job, timeout=120)
        assert view["status"] == "done" and view["result"]["seeds"] == [2]
        assert client.get("/api/v1/health").json()["worker_alive"] is True
