"""Browser tests (headless Chromium, as `test_ui_browser.py`) for the Hires. fix section and the Extras tab."""

from __future__ import annotations

import io

import pytest
import torch

from test_api_support import LiveServer, make_data_dir, wait_until
from test_ui_browser import ARTIFACTS, browser, number, prompt_box, set_number, ui_page  # noqa: F401

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    from test_upscalers import tiny_esrgan_state_dict

    data = make_data_dir(tmp_path_factory.mktemp("ui-hires"), tiny_sd1_path, "tiny-sd1.safetensors")
    (data / "models" / "ESRGAN").mkdir(parents=True)
    torch.save(tiny_esrgan_state_dict(), data / "models" / "ESRGAN" / "tiny-2x.pth")
    with LiveServer(data) as live:
        yield live


@pytest.fixture
def page(browser, server):  # noqa: F811
    with ui_page(browser, server, height=1000) as page:
        yield page


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f"[role=option]:has-text('{option}')").first.click()


def test_hires_fix_from_the_txt2img_tab(page, server):
    prompt_box(page).fill("a lighthouse")
    for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "2")):
        set_number(page, elem_id, value)
    page.locator("#txt2img_hr").get_by_text("Hires. fix").first.click()  # open the section
    page.locator("#txt2img_enable_hr input").check()
    set_number(page, "txt2img_hr_scale", "1.5")
    set_number(page, "txt2img_hires_steps", "3")
    wait_until(lambda: "to 96x96" in page.locator("#txt2img_hr_final_resolution").inner_text(), timeout=15)
    pick(page, "txt2img_hr_upscaler", "tiny-2x")  # the installed model is listed after the latent modes
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_gallery img").first.wait_for(timeout=120_000)
    info = page.locator("#txt2img_infotext textarea")
    wait_until(lambda: "Hires upscaler" in info.input_value(), timeout=30)
    text = info.input_value()
    assert "Hires upscale: 1.5" in text and "Hires steps: 3" in text and "Hires upscaler: tiny-2x" in text
    assert "Size: 64x64" in text
    record = server.services.store.images(limit=1)[0]
    assert (record["width"], record["height"]) == (96, 96)
    page.screenshot(path=str(ARTIFACTS / "ui-txt2img-hires.png"), full_page=True)

    # Send to extras: the Extras tab opens with the picture as its source; upscale it x2 with Lanczos.
    page.locator("#txt2img_send_to_extras").click()
    page.locator("#extras_image img").first.wait_for(timeout=30_000)
    pick(page, "extras_upscaler_1", "Lanczos")
    page.locator("#extras_generate").click()
    wait_until(lambda: "Done" in page.locator("#extras_status").inner_text(), timeout=120)
    assert "192x192" in page.locator("#extras_status").inner_text()


def test_extras_tab_upscales_an_uploaded_image(page, server, tmp_path):
    from PIL import Image

    source = tmp_path / "small.png"
    Image.new("RGB", (24, 16), (200, 30, 30)).save(source)
    page.locator("button[role=tab]:has-text('Extras')").first.click()
    page.locator("#extras_image input[type=file]").set_input_files(str(source))
    pick(page, "extras_upscaler_1", "tiny-2x")
    page.locator("#extras_generate").click()
    wait_until(lambda: "Done" in page.locator("#extras_status").inner_text(), timeout=120)
    assert "48x32" in page.locator("#extras_status").inner_text()
    assert "Postprocess upscaler: tiny-2x" in page.locator("#extras_html_info").inner_text()
    src = page.locator("#extras_result img").first.get_attribute("src")
    response = page.request.get(src if src.startswith("http") else server.url + src)
    assert response.ok and Image.open(io.BytesIO(response.body())).size == (48, 32)
    page.screenshot(path=str(ARTIFACTS / "ui-extras.png"), full_page=True)
