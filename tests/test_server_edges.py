"""The last edges of issues 24 and 15, against a real server with the tiny SD1 model: model names are matched
against the folders' listings without touching the file system (errors tell nothing about other paths and print
no absolute path), broken checkpoints are skipped for the default and refused by name with a 422 naming the
file, the server's own limits are operator settings (read-only over the API), options this server does not know
are kept for the client, and a LoRA that changed nothing is left out of `Lora hashes`."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from sdwebui.server.options import OPTIONS
from test_api_support import FAST, LiveServer, make_data_dir, wait_for_job

# A kohya LoRA key of a layer the tiny SD1 model has (a 32x32 attention projection; see tests/test_lora.py).
LINEAR_KOHYA = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"


def lora(size: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {f"{LINEAR_KOHYA}.lora_up.weight": torch.randn(size, 2, generator=generator) * 0.2,
            f"{LINEAR_KOHYA}.lora_down.weight": torch.randn(2, size, generator=generator) * 0.2}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("edges"), tiny_sd1_path, "tiny-sd1.safetensors")
    # First by name, and broken: never the default.
    (data / "models" / "Stable-diffusion" / "aa-broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00x")
    (data / "models" / "VAE").mkdir(parents=True)
    loras = data / "models" / "Lora"
    loras.mkdir(parents=True)
    save_file(lora(32), loras / "fits.safetensors")
    save_file(lora(48), loras / "other-family.safetensors")  # shapes of another model: every layer skipped
    save_file({"lora_unet_no_such_layer.lora_up.weight": torch.ones(4, 2),
               "lora_unet_no_such_layer.lora_down.weight": torch.ones(2, 4)}, loras / "matches-nothing.safetensors")
    with LiveServer(data, ui=False) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


# ---- model names ---------------------------------------------------------------------------------------------


def test_model_name_errors_tell_nothing_about_other_paths(server, client, tmp_path, tiny_sd1_path):
    """An existing file outside the folder and a path that does not exist get the same answer, and no answer
    names a server folder by its absolute path."""
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(tiny_sd1_path.read_bytes())
    names = [str(outside), str(tmp_path / "missing.safetensors"), "/etc/passwd", "/etc/no-such-file"]
    answers = set()
    for name in names:
        for path, body, field in (
            ("/api/v1/jobs", {**FAST, "model": name}, "model"),
            ("/sdapi/v1/txt2img", {**FAST, "override_settings": {"sd_model_checkpoint": name}},
             "override_settings.sd_model_checkpoint"),
            ("/sdapi/v1/options", {"sd_model_checkpoint": name}, "sd_model_checkpoint"),
            ("/api/v1/jobs", {**FAST, "vae": name}, "vae"),
            ("/sdapi/v1/options", {"sd_vae": name}, "sd_vae"),
        ):
            response = client.post(path, json=body)
            assert response.status_code == 422 and response.json()["field"] == field, response.text
            message = response.json()["message"]
            assert str(server.config.paths.data_dir) not in message.replace(repr(name), "")
            answers.add((path, field, message.replace(repr(name), "NAME")))
    assert len(answers) == 5, answers  # one answer per route and field, whatever the name
    assert ("/api/v1/jobs", "model", "checkpoint NAME is not in the checkpoints folder (models/Stable-diffusion); "
            "available: aa-broken.safetensors, tiny-sd1.safetensors") in answers
    assert ("/api/v1/jobs", "vae", "VAE NAME is not in the VAE folder (models/VAE)") in answers


def test_a_listed_checkpoint_may_be_named_by_its_listed_path(server, client):
    listed = {m["name"]: m["filename"] for m in client.get("/api/v1/models").json()}
    response = client.post("/api/v1/jobs", json={**FAST, "model": listed["tiny-sd1.safetensors"], "seed": 3})
    assert response.status_code == 202, response.text
    assert wait_for_job(client, response.json()["id"], timeout=120)["status"] == "done"


def test_the_default_checkpoint_skips_broken_files_and_says_so(server, client, caplog):
    caplog.set_level(logging.WARNING, logger="sdwebui.models.manager")
    server.services.models._warned.clear()
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd1.safetensors")
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 21})
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["info"])["sd_model_name"] == "tiny-sd1"
    warnings = [r.getMessage() for r in caplog.records if "default checkpoint" in r.getMessage()]
    assert warnings and "skipped aa-broken.safetensors" in warnings[0] and "using tiny-sd1.safetensors" in warnings[0]


# ---- operator settings -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value", [("api_max_pixels", 2**40), ("api_max_images", 1_000_000),
                                        ("api_max_steps", 1000), ("api_max_queue_size", 1_000_000)])
def test_the_servers_limits_cannot_be_raised_over_the_api(server, client, key, value):
    services = server.services
    services.options.update({key: 10 if key != "api_max_pixels" else 64 * 64})
    try:
        response = client.post("/sdapi/v1/options", json={key: value})
        assert response.status_code == 422 and response.json()["field"] == key
        assert "cannot be changed over the API (set it with --api-max-" in response.json()["message"]
        response = client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {key: value}})
        assert response.status_code == 422 and response.json()["field"] == f"override_settings.{key}"
        # Posting back what GET returned is not an attempt to change it (clients round-trip every option).
        current = client.get("/sdapi/v1/options").json()
        assert client.post("/sdapi/v1/options", json={key: current[key]}).status_code == 200
        assert services.options.get(key) != value
        services.update_options({key: value}, from_api=False)  # the Settings tab
        assert services.options.get(key) == value
    finally:
        services.options.update({key: OPTIONS[key].default})


def test_limit_flags_set_the_operator_settings(tmp_path, tiny_sd1_path):
    from sdwebui.app import config_from_args
    from sdwebui.cli import build_parser, paths_from
    from sdwebui.server.config import ConfigError

    data = make_data_dir(tmp_path / "data", tiny_sd1_path)
    args = build_parser().parse_args(["serve", "--data-dir", str(data), "--api-max-steps", "5",
                                      "--api-max-queue-size", "7"])
    config = config_from_args(args, paths_from(args))
    assert config.settings == {"api_max_steps": 5, "api_max_queue_size": 7}
    with LiveServer(data, ui=False, settings=config.settings, preload=False) as live, live.client() as client:
        options = client.get("/sdapi/v1/options").json()
        assert options["api_max_steps"] == 5 and options["api_max_queue_size"] == 7
        response = client.post("/sdapi/v1/txt2img", json={**FAST, "steps": 6})
        assert response.status_code == 422 and response.json()["field"] == "steps"
    args = build_parser().parse_args(["serve", "--data-dir", str(data), "--api-max-steps", "0"])
    with pytest.raises(ConfigError, match="--api-max-steps: must be between 1 and 1000, got 0"):
        config_from_args(args, paths_from(args))


# ---- options this server does not know (issue 15) ------------------------------------------------------------------


def test_unknown_options_are_kept_and_returned(server, client, caplog):
    caplog.set_level(logging.INFO, logger="sdwebui.server.options")
    body = {"my_extension_option": {"nested": [1, "two"]}, "CLIP_stop_at_last_layers": 2,
            "show_progress_in_title": False}
    try:
        for _ in range(2):
            assert client.post("/sdapi/v1/options", json=body).status_code == 200
        options = client.get("/sdapi/v1/options").json()
        assert options["my_extension_option"] == {"nested": [1, "two"]}
        assert options["show_progress_in_title"] is False
        assert options["CLIP_stop_at_last_layers"] == 2
        logged = [r.getMessage() for r in caplog.records if "no effect here" in r.getMessage()]
        assert len(logged) == 1 and "my_extension_option, show_progress_in_title" in logged[0], "logged once"
        # A known key with a bad value is still a 422 naming it, and nothing of that request is written.
        response = client.post("/sdapi/v1/options", json={"another_unknown": 1, "CLIP_stop_at_last_layers": 99})
        assert response.status_code == 422 and response.json()["field"] == "CLIP_stop_at_last_layers"
        assert "another_unknown" not in client.get("/sdapi/v1/options").json()
        response = client.post("/sdapi/v1/options", json={"huge_unknown": "x" * 100_000})
        assert response.status_code == 422 and response.json()["field"] == "huge_unknown"
    finally:
        server.services.options.update({"CLIP_stop_at_last_layers": 1})


# ---- LoRA ---------------------------------------------------------------------------------------------------------


def test_a_lora_that_changed_nothing_is_left_out_of_lora_hashes(client):
    def generate(prompt):
        response = client.post("/api/v1/jobs", json={**FAST, "prompt": prompt, "seed": 5, "save_images": False})
        view = wait_for_job(client, response.json()["id"], timeout=120)
        assert view["status"] == "done", view
        return view["result"]["infotexts"][0], view["result"]["notes"]

    infotext, notes = generate("a cube <lora:fits:1>")
    assert 'Lora hashes: "fits: ' in infotext and notes == []
    infotext, notes = generate("a cube <lora:other-family:1>")
    assert "Lora hashes" not in infotext
    assert any(note.startswith("Lora other-family: every layer was skipped") and "left out of Lora hashes" in note
               for note in notes), notes
    infotext, notes = generate("a cube <lora:fits:1> <lora:other-family:0.5> <lora:matches-nothing:1>")
    assert 'Lora hashes: "fits: ' in infotext and "other-family" not in infotext.split("Lora hashes")[1]
    assert "matches-nothing" not in infotext.split("Lora hashes")[1]
    assert "Lora matches-nothing: no layer matches this model; left out of Lora hashes" in notes
