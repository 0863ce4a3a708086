"""The ControlNet accordion in a real browser (headless Chromium via Playwright, as `test_ui_browser`): a unit's
image, Enable, preprocessor and model reach the job as the API's unit (the image's infotext records it), and Run
preprocessor shows the map (issue 18)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw
from test_api_support import LiveServer, make_data_dir, wait_until
from test_ui_browser import browser, set_number, shot, ui_page  # noqa: F401 - fixtures
from tiny_controlnet import build_controlnet, write_original

from sdwebui.models.loader import load_checkpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("ui-controlnet"), tiny_sd1_path, "tiny-sd1.safetensors")
    model = load_checkpoint(tiny_sd1_path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    write_original(build_controlnet(model.unet), data / "models" / "ControlNet" / "control_tiny_canny.safetensors")
    with LiveServer(data) as live:
        yield live


@pytest.fixture
def page(browser, server):  # noqa: F811
    with ui_page(browser, server, height=1600) as page:
        yield page


def test_a_unit_from_the_accordion_drives_the_job(page, server, tmp_path):
    path = tmp_path / "square.png"
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 47, 47), fill="white")
    image.save(path)

    page.locator("#txt2img_script_controlnet").get_by_text("ControlNet").first.click()  # open the accordion
    unit = "#txt2img_script_controlnet_0"
    page.locator(f"{unit}_image input[type=file]").set_input_files(str(path))
    page.locator(f"{unit}_image img").first.wait_for(timeout=15_000)
    page.locator(f"{unit}_enable input").check()
    page.locator(f"{unit}_module input").first.click()
    page.locator("[role=option]:has-text('canny')").first.click()
    page.locator(f"{unit}_model input").first.click()
    page.locator("[role=option]:has-text('control_tiny_canny')").first.click()
    page.locator(f"{unit}_allow_preview input").check()
    page.locator(f"{unit}_run_preprocessor").click()
    page.locator(f"{unit}_preview img").first.wait_for(timeout=30_000)

    for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "2")):
        set_number(page, elem_id, value)
    before = len(server.services.store.images(limit=1000))
    page.locator("#txt2img_generate").click()
    wait_until(lambda: len(server.services.store.images(limit=1000)) == before + 1, timeout=120)
    shot(page, "controlnet-unit")
    record = server.services.store.images(limit=1)[0]
    assert 'ControlNet 0: "Module: canny, Model: control_tiny_canny [' in record["infotext"], record["infotext"]
