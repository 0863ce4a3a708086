"""The web UI without a browser: how it is mounted (one port, behind the security middleware, `--nowebui`),
and the Gradio-free logic behind its controls (`sdwebui.ui.fields`, history, settings). The browser tests are
in `test_ui_browser.py`."""

from __future__ import annotations

import argparse
import base64

import httpx
import pytest
from test_api_support import LiveServer, make_data_dir

from sdwebui.config import Paths
from sdwebui.server.config import Credentials, ServerConfig

USER, PASSWORD = "alice", "s3cret-pass"


# ---- mounting -------------------------------------------------------------------------------------------------


def test_the_ui_is_behind_the_security_middleware(tmp_path):
    with LiveServer(tmp_path, credentials=Credentials(((USER, PASSWORD),)), preload=False) as live:
        with httpx.Client(base_url=live.url, timeout=60) as client:
            for path in ("/", "/config", "/gradio_api/info", "/theme.css"):
                response = client.get(path)
                assert response.status_code == 401, path
                assert response.headers["www-authenticate"].startswith("Basic")
            assert client.post("/gradio_api/queue/join", json={}).status_code == 401
            assert client.get("/api/v1/health").status_code == 200  # the one public route
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        with httpx.Client(base_url=live.url, timeout=60, headers={"Authorization": f"Basic {token}"}) as client:
            page = client.get("/")
            assert page.status_code == 200 and "<html" in page.text
            assert client.get("/config").status_code == 200
            # The API keeps its paths next to the UI.
            assert client.get("/sdapi/v1/samplers").status_code == 200


def test_the_ui_refuses_rebound_hosts_and_cross_site_posts(tmp_path):
    with LiveServer(tmp_path, preload=False) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        assert client.get("/").status_code == 200
        assert client.get("/", headers={"Host": "evil.example"}).status_code == 403
        response = client.post("/gradio_api/queue/join", json={}, headers={"Origin": "http://evil.example"})
        assert response.status_code == 403


def test_the_api_keeps_its_error_answers_next_to_the_ui(tmp_path):
    with LiveServer(tmp_path, preload=False) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        for path in ("/api/v1/no-such-route", "/sdapi/v1/no-such-route"):
            response = client.get(path)
            assert response.status_code == 404 and response.json()["error"] == "not_found", path
        response = client.post("/api/v1/health")
        assert response.status_code == 405 and response.headers["allow"] == "GET"
        assert response.json()["error"] == "method_not_allowed"
        assert client.get("/api/v1/health").status_code == 200


def test_nowebui_serves_the_api_only(tmp_path):
    from sdwebui.app import add_serve_flags, config_from_args

    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    paths = Paths.from_flags(data_dir=tmp_path)
    assert config_from_args(parser.parse_args([]), paths).ui is True
    config = config_from_args(parser.parse_args(["--nowebui"]), paths)
    assert config.ui is False
    assert config_from_args(parser.parse_args(["--no-ui"]), paths).ui is False
    with LiveServer(tmp_path, ui=False, preload=False) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        assert client.get("/").status_code == 404
        assert client.get("/api/v1/health").status_code == 200


# ---- the logic behind the controls ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services(tmp_path_factory, tiny_sd1_path):
    from sdwebui.server.services import Services

    data = make_data_dir(tmp_path_factory.mktemp("ui-logic"), tiny_sd1_path, "tiny-sd1.safetensors")
    services = Services(ServerConfig(paths=Paths.from_flags(data_dir=data), preload=False))
    yield services
    services.close()


def test_a_ui_job_is_the_job_the_a1111_api_would_queue(services):
    from sdwebui.server.a1111.schemas import Txt2ImgRequest
    from sdwebui.server.a1111.translate import to_generation_request
    from sdwebui.ui.fields import request_from_fields, submit_txt2img

    values = {"prompt": "a cat", "negative_prompt": "dog", "sampler": "Euler a", "scheduler": "Karras", "steps": 3,
              "cfg_scale": 5.5, "width": 64, "height": 96, "batch_count": 2, "batch_size": 1, "seed": 11,
              "subseed": 5, "subseed_strength": 0.5, "seed_resize_from_w": 32, "seed_resize_from_h": 48}
    job = submit_txt2img(services, values)
    try:
        same = Txt2ImgRequest(prompt="a cat", negative_prompt="dog", sampler_name="Euler a", scheduler="Karras",
                              steps=3, cfg_scale=5.5, width=64, height=96, n_iter=2, seed=11, subseed=5,
                              subseed_strength=0.5, seed_resize_from_w=32, seed_resize_from_h=48, save_images=True,
                              send_images=False)
        # The same request, made by the UI's field mapping and by the A1111 adapter, makes the same job.
        ui_payload = services.generation.prepare(request_from_fields(values, save_images=True)).to_json()
        api_payload = services.generation.prepare(to_generation_request(services, same, "txt2img", [])).to_json()
        assert {**ui_payload, "client": None} == {**api_payload, "client": None}
        assert {**job.payload.to_json(), "client": None} == {**api_payload, "client": None}
        assert job.payload.client == "ui" and job.payload.output.save is True  # setting samples_save
        assert services.queue.position(job.id) == 0
    finally:
        services.queue.cancel(job.id)


def test_bad_fields_are_named_in_the_message(services):
    from sdwebui.ui.fields import UIError, submit_txt2img

    with pytest.raises(UIError, match="^width: .*multiple of 8"):
        submit_txt2img(services, {"prompt": "x", "width": 65})
    with pytest.raises(UIError, match="^sampler: "):
        submit_txt2img(services, {"prompt": "x", "sampler": "No Such Sampler"})
    with pytest.raises(UIError, match="^batch_count: "):
        submit_txt2img(services, {"prompt": "x", "batch_count": 0})


def test_styles_are_applied_to_the_prompts_before_queueing(services):
    from sdwebui.ui.fields import UIError, apply_styles, style_names, submit_txt2img

    styles_file = services.paths.styles_files[0]
    styles_file.write_text("name,prompt,negative_prompt\nFramed,\"{prompt}, framed\",ugly\nSoft,soft light,\n",
                           encoding="utf-8")
    try:
        assert style_names(services) == ["Framed", "Soft"]
        styled = apply_styles(services, {"prompt": "a cat", "negative_prompt": "dog", "styles": ["Framed", "Soft"]})
        assert (styled["prompt"], styled["negative_prompt"]) == ("a cat, framed, soft light", "dog, ugly")
        assert "styles" not in styled
        job = submit_txt2img(services, {"prompt": "a cat", "styles": ["Framed"], "width": 64, "height": 64})
        services.queue.cancel(job.id)
        assert job.payload.params.prompt == "a cat, framed"
        assert job.payload.params.negative_prompt == "ugly"
        with pytest.raises(UIError, match="^styles: .*Nope"):
            submit_txt2img(services, {"prompt": "a cat", "styles": ["Nope"]})
    finally:
        styles_file.unlink()
    assert style_names(services) == []


@pytest.mark.parametrize(
    ("line", "sampler", "schedule"),
    [
        ("Sampler: DPM++ 2M Karras", "DPM++ 2M", "Karras"),  # A1111 < 1.9 wrote the schedule into the name
        ("Sampler: DPM++ 2M, Schedule type: Karras", "DPM++ 2M", "Karras"),
        ("Sampler: k_euler_a", "Euler a", "Automatic"),  # old k-diffusion alias (Forge/SD.Next infotexts)
        ("Sampler: DPM++ SDE Exponential", "DPM++ SDE", "Exponential"),
        ("Sampler: Euler, Schedule type: sgm_uniform", "Euler", "SGM Uniform"),
    ],
)
def test_infotext_sampler_names_become_dropdown_values(line, sampler, schedule):
    from sdwebui.ui.fields import fields_from_infotext

    values = fields_from_infotext(f"a cat\nSteps: 4, {line}, Seed: 3, Size: 64x32")
    assert (values["sampler"], values["scheduler"]) == (sampler, schedule)
    assert (values["steps"], values["seed"], values["width"], values["height"]) == (4, 3, 64, 32)


def test_infotext_fields_only_those_named_and_unknown_sampler_left_alone():
    from sdwebui.ui.fields import fields_from_infotext

    values = fields_from_infotext("just a prompt\nSteps: 9, Sampler: Made Up, CFG scale: 4.5")
    assert values["prompt"] == "just a prompt" and values["steps"] == 9 and values["cfg_scale"] == 4.5
    assert "sampler" not in values and "seed" not in values and "width" not in values


def test_a_paste_leaves_out_what_this_install_lacks_and_says_so(services):
    """A PNG from another machine names an upscaler, VAE, checkpoint or sampler this install does not have:
    those fields keep the tab's value (a dropdown given an unlisted value breaks Generate) and each is named."""
    from sdwebui.server import catalog
    from sdwebui.ui.fields import checked_paste, request_from_fields

    text = ("a cat\nSteps: 4, Sampler: Made Up, Seed: 3, Size: 64x64, Model: somebody-elses-model, "
            "VAE: kl-f8-anime.safetensors, Denoising strength: 0.4, Hires upscale: 2, Hires upscaler: R-ESRGAN 4x+, "
            "Hires sampler: Not A Sampler, Hires checkpoint: missing-hires, Refiner: missing-refiner, "
            "Refiner switch at: 0.8")
    values, warnings = checked_paste(services, text)
    assert values["steps"] == 4 and values["seed"] == 3 and values["enable_hr"] is True
    for name in ("sampler", "hr_upscaler", "hr_sampler", "hr_checkpoint", "refiner_checkpoint"):
        assert name not in values
    assert warnings == [
        "Sampler 'Made Up' is not available here",
        "Hires upscaler 'R-ESRGAN 4x+' is not installed (models/ESRGAN, ...)",
        "Hires sampler 'Not A Sampler' is not available here",
        "Hires checkpoint 'missing-hires' is not installed",
        "Refiner 'missing-refiner' is not installed",
        "Checkpoint 'somebody-elses-model' is not installed; the current one is used",
        "VAE 'kl-f8-anime.safetensors' is not installed; the current one is used",
    ]
    request_from_fields({**values, "prompt": "x"}, save_images=False)  # what is left makes a valid job

    current = catalog.checkpoints(services.paths)[0].model_name
    values, warnings = checked_paste(services, f"a cat\nSteps: 4, Sampler: Euler a, Hires upscaler: Latent, "
                                               f"Denoising strength: 0.5, Model: {current}, VAE: None")
    assert warnings == [] and values["hr_upscaler"] == "Latent" and values["sampler"] == "Euler a"


def test_pasted_settings_become_override_entries_and_reach_the_job(services):
    """A1111's "Override settings": an infotext's Clip skip / ENSD / RNG that differ from the current settings
    are listed for the next job only; the checkpoint its Model hash names is listed when it is another one."""
    from sdwebui.server import catalog
    from sdwebui.ui.fields import UIError, override_entries_from_infotext, request_from_fields, submit_txt2img

    current = catalog.checkpoints(services.paths)[0]
    text = ("a cat\nSteps: 4, Seed: 3, Size: 64x64, Clip skip: 2, ENSD: 31337, RNG: cpu, "
            f"Model hash: 0123456789, Model: {current.model_name}")
    entries = override_entries_from_infotext(services, text)
    assert entries == ["Clip skip: 2", "Eta noise seed delta: 31337", "Random number generator source: CPU"]
    assert override_entries_from_infotext(services, "a cat\nSteps: 4, Clip skip: 1, Clip skip: x") == []
    request = request_from_fields({"prompt": "x", "override_settings": entries}, save_images=False)
    assert request.overrides == {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337,
                                 "randn_source": "CPU"}
    job = submit_txt2img(services, {"prompt": "x", "width": 64, "height": 64, "override_settings": ["Clip skip: 2"]})
    try:
        assert job.payload.params.clip_skip == 2
    finally:
        services.queue.cancel(job.id)
    other = services.paths.ckpt_dir / "z-other-model.safetensors"
    other.write_bytes(current.path.read_bytes())
    try:
        assert override_entries_from_infotext(services, "a cat\nSteps: 4, Seed: 3, Model: z-other-model") == [
            "Stable Diffusion checkpoint: z-other-model.safetensors"]
    finally:
        other.unlink()
    with pytest.raises(UIError, match="Override settings: 'Colour: red' is not a setting"):
        request_from_fields({"prompt": "x", "override_settings": ["Colour: red"]}, save_images=False)
    with pytest.raises(UIError, match="Override settings: Clip skip must be a number"):
        request_from_fields({"prompt": "x", "override_settings": ["Clip skip: two"]}, save_images=False)


def test_no_button_needs_an_emoji_font_and_every_icon_has_a_label(services):
    """Emoji render as empty boxes on systems without an emoji font: buttons show the package's SVGs instead, and
    each icon button has a text label (its title and accessible name on the page)."""
    import re

    import gradio as gr

    from sdwebui.ui.icons import ICON_ONLY_CLASS
    from sdwebui.ui.layout import build_ui

    emoji = re.compile("[\u2190-\u2bff\U0001f000-\U0001ffff]")
    demo = build_ui(services)
    buttons = [block for block in demo.blocks.values() if isinstance(block, gr.Button)]
    icon_buttons = [button for button in buttons if ICON_ONLY_CLASS in (button.elem_classes or [])]
    assert {"txt2img_random_seed", "img2img_reuse_seed", "txt2img_res_switch_btn", "img2img_detect_image_size_btn",
            "refresh_sd_model_checkpoint"} <= {button.elem_id for button in icon_buttons}
    for button in buttons:
        assert not emoji.search(str(button.value or "")), (button.elem_id, button.value)
    for button in icon_buttons:
        assert button.icon and str(button.value).strip(), button.elem_id


def test_every_data_file_in_the_package_is_installed():
    """Files under sdwebui/ that are not Python must match pyproject's package-data, or a wheel install lacks
    them (the UI's icons, model configs, the tokenizer)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["sdwebui"]
    package = root / "sdwebui"
    for path in package.rglob("*"):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) or fnmatch.fnmatch(relative, pattern.removeprefix("**/"))
                   for pattern in patterns), f"{relative} is not in [tool.setuptools.package-data]"


def test_token_counter_counts_as_a1111():
    from sdwebui.ui.fields import TokenCounter

    counter = TokenCounter()
    assert counter.count("") == (0, 75)
    assert counter.count("a red fox in the snow") == (6, 75)
    # Emphasis syntax and extra networks are not tokens.
    assert counter.count("(a red fox:1.3) in the [snow] <lora:foxes:0.8>") == (6, 75)
    # BREAK closes the chunk: 75 (padded) + the rest.
    assert counter.count("a red fox BREAK in the snow") == (78, 150)
    # Past 75 the capacity grows by a chunk.
    assert counter.count(" ".join(["fox"] * 80)) == (80, 150)
    # Prompt editing: the longest prompt of the schedule counts.
    assert counter.count("[a red fox:a very very very red fox in deep snow:5]", steps=10) == (9, 75)


def test_progress_text_queue_position_then_steps(services):
    from sdwebui.server.queue import JobHandle
    from sdwebui.ui.fields import format_seconds, progress_text, submit_txt2img

    first = submit_txt2img(services, {"prompt": "a", "width": 64, "height": 64, "steps": 1})
    second = submit_txt2img(services, {"prompt": "b", "width": 64, "height": 64, "steps": 1})
    try:
        assert progress_text(services, first) == (0.0, "In queue: next")
        assert progress_text(services, second) == (0.0, "In queue: 1 job ahead")
    finally:
        services.queue.cancel(first.id)
        services.queue.cancel(second.id)
    running = JobHandle("x", "txt2img", {}, status="running")
    assert progress_text(services, running)[1] == "Loading the model…"
    running.progress.started = 100.0
    running.report_step(5, 20, 1, 2)
    fraction, text = progress_text(services, running, now=110.0)
    assert fraction == pytest.approx(0.625)
    assert text == "Step 5/20 · batch 2/2 · 62% · ETA 6s"
    assert format_seconds(61) == "1m 01s" and format_seconds(3600 * 2 + 5) == "2h 00m"


def test_native_size_follows_the_checkpoint(services, tiny_sdxl_path):
    from safetensors.torch import load_file, save_file

    from sdwebui.ui.fields import native_size

    # The tiny checkpoints state their size in their metadata (`sdwebui.native_size`), as the demo model does.
    assert native_size(services) == 64
    # Without metadata, the family's size: SDXL 1024, from the file's header with nothing loaded.
    copy = services.paths.ckpt_dir / "tiny-sdxl.safetensors"
    save_file(load_file(str(tiny_sdxl_path)), str(copy))
    try:
        assert native_size(services, "tiny-sdxl.safetensors") == 1024
        assert services._models is None or services._models.loaded is None
    finally:
        copy.unlink()


def test_settings_are_validated_as_a_whole_and_persisted(services):
    from sdwebui.ui.settings import apply_settings, section_keys

    shown = {key for _, keys in section_keys() for key in keys}
    assert "show_progress_every_n_steps" in shown and "CLIP_stop_at_last_layers" in shown
    assert "sd_model_checkpoint" not in shown  # in the top bar
    before = services.options.all()
    message = apply_settings(services, {"show_progress_every_n_steps": 4, "CLIP_stop_at_last_layers": 99})
    assert message.startswith("Not applied: Clip skip")
    assert services.options.all() == before
    message = apply_settings(services, {"show_progress_every_n_steps": 4.0, "outdir_samples": "mine"})
    assert message.startswith("2 settings changed")
    assert services.options.get("show_progress_every_n_steps") == 4
    assert services.options.get("outdir_samples") == "mine"  # the UI may set folders; the API may not
    assert apply_settings(services, {"show_progress_every_n_steps": 4}) == "Nothing to change."
    services.options.update({"show_progress_every_n_steps": before["show_progress_every_n_steps"],
                             "outdir_samples": before["outdir_samples"]})


def test_history_search_and_delete(services):
    from sdwebui.ui.history import delete_image, find_images

    outputs = services.paths.outputs_dir
    (outputs / "txt2img-images").mkdir(parents=True, exist_ok=True)
    ids = []
    for prompt in ("a red fox", "a blue whale", "a red panda"):
        name = f"txt2img-images/{prompt.replace(' ', '-')}.png"
        (outputs / name).write_bytes(b"\x89PNG\r\n\x1a\n")
        ids.append(services.store.add_image(job_id=None, path=name, prompt=prompt))
    services.store.add_image(job_id=None, path="txt2img-images/gone.png", prompt="a red ghost")  # no file
    services.store.add_image(job_id=None, path="../outside.png", prompt="a red escape")  # outside outputs

    assert [row["prompt"] for row in find_images(services)][:3] == ["a red panda", "a blue whale", "a red fox"]
    assert [row["prompt"] for row in find_images(services, "RED")] == ["a red panda", "a red fox"]
    assert find_images(services, "zebra") == []

    fox = ids[0]
    path = outputs / services.store.image(fox)["path"]
    assert delete_image(services, fox) is True
    assert not path.exists() and services.store.image(fox) is None
    assert [row["prompt"] for row in find_images(services, "red")] == ["a red panda"]
    assert delete_image(services, fox) is False


# ---- hires fix, refiner, tiling, extras ------------------------------------------------------------------------


def test_hires_fields_make_the_request(services):
    from sdwebui.ui.fields import request_from_fields

    values = {"prompt": "x", "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.3,
              "hr_sampler": "Use same sampler", "tiling": True, "refiner_checkpoint": "None",
              "refiner_switch_at": 0.5}
    request = request_from_fields(values, save_images=False).values
    assert request["enable_hr"] is True and request["hr_scale"] == 1.5 and request["hr_upscaler"] == "Lanczos"
    assert request["denoising_strength"] == 0.3 and request["tiling"] is True
    assert request["hr_sampler"] is None and request["refiner_checkpoint"] is None
    assert "refiner_switch_at" not in request  # no refiner: its switch point is not sent
    # Hires settings without hires fix on are not sent.
    plain = request_from_fields({"prompt": "x", "hr_scale": 3.0}, save_images=False).values
    assert plain["enable_hr"] is False and "hr_scale" not in plain


def test_infotext_with_hires_keys_turns_hires_on():
    from sdwebui.ui.fields import fields_from_infotext

    values = fields_from_infotext("a cat\nSteps: 4, Seed: 3, Size: 64x64, Denoising strength: 0.45, "
                                  "Hires upscale: 2.5, Hires steps: 7, Hires upscaler: Latent (bicubic), "
                                  "Refiner: base-refiner [0123456789], Refiner switch at: 0.7, Tiling: True")
    assert values["enable_hr"] is True and values["hr_scale"] == 2.5 and values["hr_second_pass_steps"] == 7
    assert values["hr_upscaler"] == "Latent (bicubic)" and values["denoising_strength"] == 0.45
    assert values["refiner_checkpoint"] == "base-refiner [0123456789]" and values["refiner_switch_at"] == 0.7
    assert values["tiling"] is True
    assert "enable_hr" not in fields_from_infotext("a cat\nSteps: 4, Denoising strength: 0.45")


def test_extras_tab_job_upscales(services):
    from PIL import Image

    from sdwebui.ui.extras import submit_extras
    from sdwebui.ui.fields import UIError

    values = {"resize_mode": 0, "upscaling_resize": 2, "upscaling_resize_w": 512, "upscaling_resize_h": 512,
              "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "None",
              "extras_upscaler_2_visibility": 0}
    job = submit_extras(services, Image.new("RGB", (16, 8)), values)
    try:
        assert job.kind == "extras" and job.payload.params.upscaler_1 == "Lanczos"
    finally:
        services.queue.cancel(job.id)
    with pytest.raises(UIError, match="^upscaler_1: "):
        submit_extras(services, Image.new("RGB", (16, 8)), {**values, "upscaler_1": "nope"})
    with pytest.raises(UIError, match="^image: "):
        submit_extras(services, None, values)
