"""A1111's checkpoint cache (`sd_checkpoints_limit`, `sd_checkpoint_cache`): models switched away from stay in
RAM up to the limit, switching back reuses them without reading the file, and the oldest are released."""

from __future__ import annotations

import gc
import weakref

import pytest
from tiny_models import build_tiny, write_single_file

from sdwebui.config import Paths
from sdwebui.models.devices import plan_devices
from sdwebui.models.family import ModelFamily
from sdwebui.models.manager import ModelManager


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-data")
    folder = root / "models" / "Stable-diffusion"
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_single_file(build_tiny(ModelFamily.SD1, seed=seed), folder / f"{name}.safetensors")
    return root


def counting_manager(data_dir, limit: int, cache: int):
    manager = ModelManager(Paths.from_flags(data_dir), plan_devices("cpu"), keep=lambda: (limit, cache))
    loads = []
    real = manager._load

    def load(request, **kwargs):
        loads.append(request.checkpoint.stem)
        return real(request, **kwargs)

    manager._load = load
    return manager, loads


@pytest.mark.parametrize("limit,cache", [(2, 0), (1, 1)])
def test_switching_back_reuses_the_cached_model(data_dir, limit, cache):
    manager, loads = counting_manager(data_dir, limit, cache)
    a = manager.get("a")
    b = manager.get("b")
    assert manager.get("a") is a and manager.get("b") is b and manager.get("a") is a
    assert loads == ["a", "b"]  # each file read once
    assert [key[0].rsplit("/", 1)[-1] for key in manager.cached()] == ["b.safetensors"]


def test_the_cache_is_bounded_and_releases_the_oldest(data_dir):
    manager, loads = counting_manager(data_dir, 2, 0)
    a = weakref.ref(manager.get("a"))
    manager.get("b")
    manager.get("c")  # room for one model besides the loaded one: a goes
    gc.collect()
    assert a() is None
    assert len(manager.cached()) == 1
    manager.get("a")
    assert loads == ["a", "b", "c", "a"]


def test_default_keeps_one_model_and_releases_it_before_loading_the_next(data_dir):
    manager, loads = counting_manager(data_dir, 1, 0)
    a = weakref.ref(manager.get("a"))
    seen = []
    real = manager._load

    def load(request, **kwargs):
        gc.collect()
        seen.append(a())  # the old model is gone before the next one is read
        return real(request, **kwargs)

    manager._load = load
    manager.get("b")
    assert seen == [None] and manager.cached() == []


def test_settings_reach_the_model_manager(tiny_sd1_path, tmp_path):
    from test_api_support import FAST, LiveServer, make_data_dir

    data = make_data_dir(tmp_path / "data", tiny_sd1_path, "one.safetensors", "two.safetensors")
    with LiveServer(data) as live, live.client() as client:
        assert client.post("/sdapi/v1/options", json={"sd_checkpoints_limit": 2}).status_code == 200
        options = client.get("/sdapi/v1/options").json()
        assert options["sd_checkpoints_limit"] == 2 and options["sd_checkpoint_cache"] == 0
        for name in ("one", "two"):
            response = client.post("/sdapi/v1/txt2img", json={
                "prompt": "a", **FAST, "override_settings": {"sd_model_checkpoint": name}})
            assert response.status_code == 200
        models = live.services.models
        first = [model for key, model in models._parked.items() if key[0].endswith("one.safetensors")]
        assert len(first) == 1
        response = client.post("/sdapi/v1/txt2img", json={
            "prompt": "a", **FAST, "override_settings": {"sd_model_checkpoint": "one"}})
        assert response.status_code == 200
        assert models.loaded is first[0]
        assert client.post("/sdapi/v1/options", json={"sd_checkpoints_limit": 0}).status_code == 422
