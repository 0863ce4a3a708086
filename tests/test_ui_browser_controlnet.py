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


def pasted_values(page, unit: str, fields: dict) -> dict:
    return {name: page.locator(f"{unit}_{name} input[type=number]").input_value() for name in fields}


def wait_for_pasted_unit(page, unit: str, fields: dict) -> None:
    """The unit's controls are filled by one update, which the page may render over a few frames: wait until it
    is enabled and every field shows its pasted value; say what it shows if it never does."""
    enabled = page.locator(f"{unit}_enable input")
    try:
        wait_until(lambda: enabled.is_checked() and pasted_values(page, unit, fields) == fields, timeout=30)
    except AssertionError:
        raise AssertionError(f"the pasted unit shows enabled={enabled.is_checked()}, "
                             f"{pasted_values(page, unit, fields)}; expected {fields}") from None


def test_an_infotext_sent_to_txt2img_restores_the_unit(page, server, tmp_path):
    from PIL import PngImagePlugin

    text = ('a red cube\nSteps: 2, Sampler: Euler, Seed: 3, Size: 64x64, ControlNet 0: "Module: canny, Model: '
            'control_tiny_canny, Weight: 0.65, Resize Mode: Just Resize, Processor Res: 256, Threshold A: 50.0, '
            'Threshold B: 150.0, Guidance Start: 0.1, Guidance End: 0.8, Pixel Perfect: True, Control Mode: '
            'My prompt is more important"')
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "pasted.png"
    Image.new("RGB", (64, 64), "gray").save(path, pnginfo=info)
    page.get_by_role("tab", name="PNG Info").first.click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    wait_until(lambda: "ControlNet 0" in page.locator("#pnginfo_parameters textarea").input_value(), timeout=30)
    page.locator("#pnginfo_send_txt2img").click()
    page.locator("#txt2img_script_controlnet").get_by_text("ControlNet").first.click()
    unit = "#txt2img_script_controlnet_0"
    wait_for_pasted_unit(page, unit, {"weight": "0.65", "threshold_a": "50", "start": "0.1"})
    assert page.locator(f"{unit}_pixel_perfect input").is_checked()
    assert page.locator(f"{unit}_control_mode input[value='My prompt is more important']").is_checked()
    shot(page, "controlnet-pasted")


def test_an_infotext_sent_to_img2img_restores_the_unit_there(page, server, tmp_path):
    from PIL import PngImagePlugin

    text = ('a red cube\nSteps: 2, Sampler: Euler, Seed: 3, Size: 64x64, ControlNet 0: "Module: invert, Model: '
            'control_tiny_canny, Weight: 0.45, Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: -1, '
            'Threshold B: -1, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"')
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "pasted-i2i.png"
    Image.new("RGB", (64, 64), "gray").save(path, pnginfo=info)
    page.get_by_role("tab", name="PNG Info").first.click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    wait_until(lambda: "ControlNet 0" in page.locator("#pnginfo_parameters textarea").input_value(), timeout=30)
    page.locator("#pnginfo_send_img2img").click()
    page.locator("#img2img_script_controlnet").get_by_text("ControlNet").first.click()
    unit = "#img2img_script_controlnet_0"
    wait_for_pasted_unit(page, unit, {"weight": "0.45"})
