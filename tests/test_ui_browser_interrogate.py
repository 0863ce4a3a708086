"""Interrogation in a real browser (headless Chromium, as `test_ui_browser.py`): the img2img tab's "Interrogate
CLIP" and "Interrogate DeepBooru" buttons replace the prompt with the image's caption / tags, and PNG Info's
caption goes to txt2img's prompt; tiny BLIP, CLIP and DeepDanbooru models as `test_interrogate_clip.py` writes
them."""

from __future__ import annotations

import pytest
from test_api_support import LiveServer, make_data_dir, wait_until
from test_interrogate_clip import (blip_tokenizer, expected_caption, photo, write_blip_folder, write_clip_folder,
                                   write_deepdanbooru)
from test_ui_browser import browser, prompt_box, shot, ui_page  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("ui-interrogate"), tiny_sd1_path, "tiny-sd1.safetensors")
    blip = write_blip_folder(data / "models" / "BLIP" / "blip")
    write_clip_folder(data / "models" / "CLIP" / "clip")
    write_deepdanbooru(data / "models" / "torch_deepdanbooru" / "model-resnet_custom_v3.pt")
    with LiveServer(data) as live:
        live.caption = expected_caption(blip, blip_tokenizer(), photo())
        yield live


def test_the_img2img_interrogate_buttons(browser, server, tmp_path):  # noqa: F811 - the fixture imported above
    path = tmp_path / "photo.png"
    photo().save(path)
    with ui_page(browser, server) as page:
        page.get_by_role("tab", name="img2img").first.click()
        page.locator("#img2img_image input[type=file]").set_input_files(str(path))
        page.locator("#img2img_image img").first.wait_for(timeout=15_000)
        prompt = prompt_box(page, "img2img_prompt")
        prompt.fill("old prompt")
        page.locator("#interrogate").click()
        wait_until(lambda: prompt.input_value().startswith(server.caption + ", "), timeout=60)
        page.locator("#deepbooru").click()
        wait_until(lambda: "1girl" in prompt.input_value().split(", "), timeout=60)
        shot(page, "img2img-interrogate")


def test_png_info_caption_to_txt2img(browser, server, tmp_path):  # noqa: F811
    path = tmp_path / "photo.png"
    photo().save(path)
    with ui_page(browser, server) as page:
        page.get_by_role("tab", name="PNG Info").click()
        page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
        page.locator("#pnginfo_caption_accordion").get_by_text("Caption").first.click()
        page.locator("#pnginfo_interrogate_clip").click()
        caption = page.locator("#pnginfo_caption textarea")
        wait_until(lambda: caption.input_value().startswith(server.caption + ", "), timeout=60)
        page.locator("#pnginfo_send_caption_txt2img").click()
        wait_until(lambda: prompt_box(page).input_value() == caption.input_value(), timeout=30)


def test_extras_batch_from_directory(browser, server, tmp_path):  # noqa: F811
    """The Extras tab's "Batch from Directory" sub-tab runs the folder; an image sent to Extras goes back to
    Single Image."""
    from PIL import Image

    folder = tmp_path / "batch"
    folder.mkdir()
    Image.new("RGB", (24, 16), (200, 30, 30)).save(folder / "a.png")
    Image.new("RGB", (16, 16), (30, 30, 200)).save(folder / "b.png")
    with ui_page(browser, server) as page:
        page.locator("button[role=tab]:has-text('Extras')").first.click()
        page.locator("button[role=tab]:has-text('Batch from Directory')").first.click()
        page.locator("#extras_batch_input_dir textarea").fill(str(folder))
        page.locator("#extras_upscaler_1 input").first.click()
        page.locator("[role=option]:has-text('Lanczos')").first.click()
        page.locator("#extras_generate").click()
        status = page.locator("#extras_status")
        wait_until(lambda: "Done" in status.inner_text() or "Error" in status.inner_text(), timeout=120)
        assert "Done · 2 images" in status.inner_text(), status.inner_text()
        shot(page, "extras-batch-directory")
