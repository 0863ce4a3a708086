"""The A1111-compatible API (`/sdapi/v1`) against a real uvicorn server on 127.0.0.1 with the tiny SD1 model."""

from __future__ import annotations

import base64
import io
import json
import threading

import pytest

from test_api_support import FAST, SLOW, LiveServer, decode_png, make_data_dir, wait_until

# A1111 v1.10 `Processed.js()` keys.
INFO_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
    "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
    "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash",
    "seed_resize_from_w", "seed_resize_from_h", "denoising_strength", "extra_generation_params",
    "index_of_first_image", "infotexts", "styles", "job_timestamp", "clip_skip", "is_using_inpainting_conditioning",
    "version",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("a1111"), tiny_sd1_path, "tiny-sd1.safetensors", "zz-other.safetensors")
    (data / "styles.csv").write_text(
        'name,prompt,negative_prompt\n"my style","{prompt}, masterpiece",lowres\n', encoding="utf-8")
    with LiveServer(data) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def txt2img(client, **fields):
    response = client.post("/sdapi/v1/txt2img", json={**FAST, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    return body, json.loads(body["info"])


def test_txt2img_returns_pngs_with_infotext_and_a1111_info(client):
    body, info = txt2img(client, prompt="a red cube", negative_prompt="blurry", seed=1234, batch_size=2,
                         styles=["my style"], sampler_name="Euler a", scheduler="Karras")
    assert set(body) >= {"images", "parameters", "info"}
    assert INFO_KEYS <= set(info)
    assert info["all_seeds"] == [1234, 1235] and info["seed"] == 1234
    # The styles are applied to the prompts, as A1111 does before generating (the infotext has the result).
    assert info["prompt"] == "a red cube, masterpiece" and info["all_prompts"] == ["a red cube, masterpiece"] * 2
    assert info["negative_prompt"] == "blurry, lowres"
    assert info["sampler_name"] == "Euler a" and info["steps"] == 2 and info["styles"] == ["my style"]
    assert info["sd_model_name"] == "tiny-sd1" and len(info["sd_model_hash"]) == 10
    assert info["extra_generation_params"].get("Schedule type") == "Karras"
    assert body["parameters"]["prompt"] == "a red cube" and body["parameters"]["n_iter"] == 1
    assert len(body["images"]) == 2
    for b64, infotext, seed in zip(body["images"], info["infotexts"], info["all_seeds"]):
        image = decode_png(b64)
        assert image.size == (64, 64)
        assert image.info["parameters"] == infotext
        assert f"Seed: {seed}," in infotext and "Negative prompt: blurry" in infotext


def test_a1111_defaults_and_legacy_sampler_names(client):
    _, info = txt2img(client, steps=2)  # no sampler at all: A1111's sampler_index default, Euler
    assert info["sampler_name"] == "Euler"
    _, info = txt2img(client, sampler_index="DPM++ 2M Karras")
    assert info["sampler_name"] == "DPM++ 2M" and "Schedule type: Karras" in info["infotexts"][0]
    _, info = txt2img(client, sampler_name="k_euler_a", send_images=False)
    assert info["sampler_name"] == "Euler a"


def test_send_images_false_and_save_images(client, server):
    body, _ = txt2img(client, send_images=False, seed=9)
    assert body["images"] == []
    outputs = server.config.paths.outputs_dir
    before = set(outputs.rglob("*.png"))
    body, info = txt2img(client, save_images=True, seed=10)
    saved = set(outputs.rglob("*.png")) - before
    assert len(saved) == 1 and next(iter(saved)).name.endswith("-10.png")


def test_infotext_fills_unset_fields(client):
    infotext = "a dog on a sofa\nNegative prompt: cat\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 77, Size: 64x64"
    _, info = txt2img(client, infotext=infotext)
    # `steps` was sent (FAST) so it wins over the infotext, as in A1111; the rest comes from the infotext.
    assert info["prompt"] == "a dog on a sofa" and info["negative_prompt"] == "cat"
    assert info["seed"] == 77 and info["cfg_scale"] == 5 and info["steps"] == 2


BAD_INPUTS = [
    ({"width": 100}, "width"),
    ({"width": 0}, "width"),
    ({"height": 10**9}, "height"),
    ({"width": "wide"}, "width"),
    ({"steps": 0}, "steps"),
    ({"steps": 1.5}, "steps"),
    ({"cfg_scale": "inf"}, "cfg_scale"),
    ({"n_iter": 0}, "n_iter"),
    ({"batch_size": 1000}, "batch_size"),
    ({"seed": 2**64}, "seed"),
    ({"subseed_strength": 2}, "subseed_strength"),
    ({"sampler_name": "Nope"}, "sampler_name"),
    ({"sampler_index": "Nope"}, "sampler_index"),
    ({"scheduler": "Nope"}, "scheduler"),
    ({"enable_hr": True, "hr_upscaler": "4x-NotInstalled"}, "hr_upscaler"),
    ({"enable_hr": True, "hr_scale": 64}, "hr_scale"),
    ({"enable_hr": True, "hr_sampler_name": "Nope"}, "hr_sampler_name"),
    ({"enable_hr": True, "hr_checkpoint_name": "missing-model"}, "hr_checkpoint_name"),
    ({"refiner_checkpoint": "missing-model"}, "refiner_checkpoint"),
    ({"refiner_switch_at": 1.5}, "refiner_switch_at"),
    ({"restore_faces": True}, "restore_faces"),
    ({"alwayson_scripts": {"regional prompter": {"args": []}}}, "alwayson_scripts.regional prompter"),
    ({"override_settings": {"sd_model_checkpoint": "missing-model"}}, "override_settings.sd_model_checkpoint"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 99}}, "override_settings.CLIP_stop_at_last_layers"),
    ({"override_settings": {"sd_vae": "no-such-vae.safetensors"}}, "override_settings.sd_vae"),
    ({"width": 4096, "height": 4096, "batch_size": 2}, "width"),  # over the api_max_pixels setting
    ({"height": 68}, "height"),
    ({"width": None}, "width"),
    ({"steps": 1001}, "steps"),
    ({"cfg_scale": -1}, "cfg_scale"),
    ({"batch_size": 64, "n_iter": 100}, "n_iter"),  # over the api_max_images setting
    ({"prompt": "x" * 65537}, "prompt"),
    ({"styles": ["my style", "no such style"]}, "styles"),
    ({"override_settings": {"sd_model_checkpoint": "../../tiny-sd1.safetensors"}},
     "override_settings.sd_model_checkpoint"),
]


@pytest.mark.parametrize("fields, field", BAD_INPUTS, ids=[f for _, f in BAD_INPUTS])
def test_bad_input_is_422_naming_the_field_and_queues_nothing(client, server, fields, field):
    jobs_before = server.services.store.jobs(limit=1000)
    response = client.post("/sdapi/v1/txt2img", json={**FAST, **fields})
    assert response.status_code == 422, response.text[:500]
    body = response.json()
    assert body["field"] == field
    assert body["detail"][0]["loc"][0] == "body" and "Traceback" not in response.text
    assert server.services.store.jobs(limit=1000) == jobs_before


def test_a_bad_size_pasted_in_an_infotext_is_422(client):
    response = client.post("/sdapi/v1/txt2img", json={"steps": 2, "infotext": "x\nSteps: 3, Seed: 1, Size: 100x64"})
    assert response.status_code == 422 and response.json()["field"] == "width"


def test_malformed_json_body_is_422(client):
    response = client.post("/sdapi/v1/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "Traceback" not in response.text


def test_list_routes_have_a1111_shapes(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    euler_a = next(s for s in samplers if s["name"] == "Euler a")
    assert "k_euler_a" in euler_a["aliases"] and euler_a["options"].get("uses_ensd") is True
    assert next(s for s in samplers if s["name"] == "DPM++ 2M")["options"] == {"scheduler": "karras"}
    schedulers = client.get("/sdapi/v1/schedulers").json()
    karras = next(s for s in schedulers if s["label"] == "Karras")
    assert karras == {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
                      "need_inner_model": False}
    assert [u["name"] for u in client.get("/sdapi/v1/upscalers").json()] == ["None", "Lanczos", "Nearest"]
    assert {"name": "Latent"} in client.get("/sdapi/v1/latent-upscale-modes").json()
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["tiny-sd1", "zz-other"]
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert client.get("/sdapi/v1/sd-vae").json() == []
    assert client.get("/sdapi/v1/loras").json() == []
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert client.get("/sdapi/v1/prompt-styles").json() == [
        {"name": "my style", "prompt": "{prompt}, masterpiece", "negative_prompt": "lowres"}]
    memory = client.get("/sdapi/v1/memory").json()
    assert memory["ram"]["used"] > 0 and "cuda" in memory
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert isinstance(flags, dict)
    for route in ("refresh-checkpoints", "refresh-vae", "refresh-loras", "refresh-embeddings"):
        assert client.post(f"/sdapi/v1/{route}").status_code == 200


def test_png_info_reads_back_what_txt2img_wrote(client):
    body, info = txt2img(client, prompt="a blue ball", seed=4321)
    response = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + body["images"][0]})
    assert response.status_code == 200
    result = response.json()
    assert result["info"] == info["infotexts"][0]
    assert result["parameters"]["Prompt"] == "a blue ball" and result["parameters"]["Seed"] == "4321"
    for bad in ("not base64!!", "", base64.b64encode(b"just some text").decode()):
        response = client.post("/sdapi/v1/png-info", json={"image": bad})
        assert response.status_code == 422 and response.json()["field"] == "image"


def test_options_switch_checkpoint_and_persist(client, server):
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_vae"] == "Automatic" and options["CLIP_stop_at_last_layers"] == 1
    assert options["sd_model_checkpoint"].startswith(("zz-other.safetensors", "tiny-sd1.safetensors"))
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd1", "some_extension_opt": 1})
    assert response.status_code == 200, response.text
    title = client.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    assert title.startswith("tiny-sd1.safetensors")
    assert server.services.store.get_setting("sd_model_checkpoint") == title
    _, info = txt2img(client, send_images=False)
    assert info["sd_model_name"] == "tiny-sd1"
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "zz-other"}).status_code == 200
    _, info = txt2img(client, send_images=False)
    assert info["sd_model_name"] == "zz-other"
    # Per-request override, without touching the setting.
    _, info = txt2img(client, send_images=False, override_settings={"sd_model_checkpoint": "tiny-sd1"})
    assert info["sd_model_name"] == "tiny-sd1"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("zz-other")
    for bad, field in (({"sd_model_checkpoint": "nope"}, "sd_model_checkpoint"),
                       ({"CLIP_stop_at_last_layers": "two"}, "CLIP_stop_at_last_layers"),
                       ({"outdir_txt2img_samples": "/etc"}, "outdir_txt2img_samples")):
        response = client.post("/sdapi/v1/options", json=bad)
        assert response.status_code == 422 and response.json()["field"] == field
    assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert server.services.models.loaded is None
    assert client.post("/sdapi/v1/reload-checkpoint").json() == {}
    assert server.services.models.loaded.info.name == "zz-other"


def test_concurrent_clients_each_get_their_own_result(server):
    """8 clients x 3 jobs at once: every response carries its own prompt and seed."""
    results, errors = {}, []

    def client_run(c):
        try:
            with server.client() as client:
                for j in range(3):
                    seed = 1000 + 10 * c + j
                    body, info = txt2img(client, prompt=f"client {c} job {j}", seed=seed)
                    results[(c, j)] = (seed, body, info)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=client_run, args=(c,)) for c in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert len(results) == 24
    for (c, j), (seed, body, info) in results.items():
        assert info["prompt"] == f"client {c} job {j}" and info["all_seeds"] == [seed]
        assert decode_png(body["images"][0]).info["parameters"].startswith(f"client {c} job {j}\n")


def _run_in_background(server, fields):
    out = {}

    def run():
        with server.client() as client:
            response = client.post("/sdapi/v1/txt2img", json=fields)
            out["status"] = response.status_code
            out["body"] = response.json()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_progress_reflects_the_running_job_and_interrupt_keeps_its_image(server, client):
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    thread, out = _run_in_background(
        server, {**SLOW, "n_iter": 2, "seed": 5, "override_settings": {"show_progress_every_n_steps": 1}})
    progress = wait_until(lambda: (p := client.get("/sdapi/v1/progress").json())["state"]["sampling_step"] >= 2
                          and p["current_image"] and p)
    assert progress["state"]["job_count"] == 2 and progress["state"]["sampling_steps"] == 1000
    assert 0 < progress["progress"] < 0.5 and progress["eta_relative"] > 0
    # The cheap latent preview (1/8 of the image) scaled smoothly to the image's size.
    assert decode_png(progress["current_image"]).size == (64, 64)
    assert client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    thread.join(60)
    assert out["status"] == 200
    info = json.loads(out["body"]["info"])
    assert info["all_seeds"] == [5] and len(out["body"]["images"]) == 1  # the first batch, cut short
    job = server.services.store.jobs(limit=1)[0]
    assert job["status"] == "interrupted"


def test_skip_abandons_the_current_batch_only(server, client):
    thread, out = _run_in_background(server, {**FAST, "steps": 200, "n_iter": 2, "seed": 50})
    wait_until(lambda: client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 1)
    assert client.post("/sdapi/v1/skip").status_code == 200
    thread.join(60)
    info = json.loads(out["body"]["info"])
    assert info["all_seeds"] == [51], "batch 0 was skipped, batch 1 ran"


def test_left_out_size_is_the_checkpoints_native_size(client):
    """A1111's API always defaults to 512; here a request without width/height gets the model's own size (the
    tiny model's metadata says 64), and sizes a client sends are kept."""
    response = client.post("/sdapi/v1/txt2img", json={"steps": 1})
    assert response.status_code == 200, response.text
    body, info = response.json(), json.loads(response.json()["info"])
    assert (info["width"], info["height"]) == (64, 64) and decode_png(body["images"][0]).size == (64, 64)
    body, info = txt2img(client, steps=1, width=128, height=64)
    assert decode_png(body["images"][0]).size == (128, 64)
