"""Settings that change where and how jobs are saved and run, applied to the next job without a restart."""

from __future__ import annotations

import json

import pytest

from test_api_support import FAST, LiveServer, make_data_dir
from sdwebui.server.options import OptionError, output_folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("settings"), tiny_sd1_path, "tiny-sd1.safetensors")
    with LiveServer(data, ui=False) as live:
        yield live


def test_output_folder_and_file_name_pattern_apply_to_the_next_job(server):
    options = server.services.options
    values, ignored = options.validate({
        "outdir_txt2img_samples": "outputs/mine/txt2img", "samples_filename_pattern": "[seed]-[steps]-[sampler]",
        "save_to_dirs": False,
    }, from_api=False)
    assert not ignored
    options.update(values)
    try:
        with server.client() as client:
            response = client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 77, "sampler_name": "Euler",
                                                              "save_images": True})
            assert response.status_code == 200, response.text
        outputs = server.services.paths.outputs_dir
        saved = sorted(p.relative_to(outputs).as_posix() for p in (outputs / "mine").rglob("*.png"))
        assert saved == ["mine/txt2img/00000-77-2-Euler.png"]
    finally:
        options.update({"outdir_txt2img_samples": "outputs/txt2img-images", "samples_filename_pattern": "",
                        "save_to_dirs": True})


def test_emphasis_and_nan_check_settings_reach_the_job(server):
    options = server.services.options
    options.update({"emphasis": "No norm", "disable_nan_check": True})
    try:
        with server.client() as client:
            response = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a (red:1.3) cube", "seed": 5})
            assert response.status_code == 200, response.text
            info = json.loads(response.json()["info"])
        assert "Emphasis: No norm" in info["infotexts"][0]
        job = server.services.store.jobs(limit=1)[0]
        assert job["params"]["nan_check"] is False and job["params"]["params"]["emphasis"] == "No norm"
    finally:
        options.update({"emphasis": "Original", "disable_nan_check": False})


@pytest.mark.parametrize("value", ["../elsewhere", "/tmp", "outputs/../../x", "mine/../../x"])
def test_output_folders_stay_inside_the_outputs_folder(server, value):
    with pytest.raises(OptionError, match="outdir_txt2img_samples"):
        server.services.options.validate({"outdir_txt2img_samples": value}, from_api=False)


def test_a1111_style_output_folder_values(tmp_path):
    assert output_folder(tmp_path, "outputs/txt2img-images") == "txt2img-images"
    assert output_folder(tmp_path, "txt2img-images") == "txt2img-images"
    assert output_folder(tmp_path, str(tmp_path / "abs" / "ok")) == "abs/ok"
    assert output_folder(tmp_path, "outputs") == "."


def test_output_folders_cannot_be_changed_over_the_api(server):
    with server.client() as client:
        response = client.post("/sdapi/v1/options", json={"outdir_txt2img_samples": "mine"})
    assert response.status_code == 422 and "outdir_txt2img_samples" in response.text
