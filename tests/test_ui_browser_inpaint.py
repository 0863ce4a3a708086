"""The img2img tab's inpainting in a real browser (headless Chromium via Playwright, as `test_ui_browser`): upload
an image into the Inpaint sub-tab, draw a mask with the brush, generate; the job carries the drawn mask and the
pixels far from it come back unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from test_ui_browser import browser, server, set_number, shot, ui_page  # noqa: F401 - fixtures
from test_api_support import wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture
def page(browser, server):  # noqa: F811
    with ui_page(browser, server, height=1000) as page:
        yield page


def test_draw_a_mask_and_inpaint(page, server, tmp_path):  # noqa: F811
    rng = np.random.default_rng(1)
    source = Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8), mode="RGB")
    path = tmp_path / "source.png"
    source.save(path)

    page.get_by_role("tab", name="img2img", exact=True).first.click()
    page.get_by_role("tab", name="Inpaint", exact=True).first.click()
    editor = page.locator("#img2img_img2maskimg")
    # Gradio's editor appends its canvas once its drawing context is set up; an image that arrives before that
    # is added to a context without layers (JavaScript errors, no image), which a loaded CI machine once hit.
    editor.locator("canvas").first.wait_for(state="attached", timeout=60_000)
    with page.expect_file_chooser() as chooser:
        editor.get_by_text("Upload an image").first.click()
    chooser.value.set_files(str(path))
    editor.get_by_text("Upload an image").first.wait_for(state="hidden", timeout=60_000)
    page.wait_for_timeout(1500)
    # The canvas fills the editor; the image is shown fitted in its middle (a square here).
    box = editor.locator("canvas").last.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    side = min(box["width"], box["height"])
    # A short stroke in the image's upper-left quarter.
    x0, y0 = cx - side * 0.3, cy - side * 0.25
    page.mouse.move(x0, y0)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x0 + step * side * 0.02, y0, steps=2)
    page.mouse.up()
    shot(page, "inpaint-mask")

    for elem_id, value in (("img2img_width", "64"), ("img2img_height", "64"), ("img2img_steps", "2"),
                           ("img2img_mask_blur", "0")):
        set_number(page, elem_id, value)
    page.locator("#img2img_prompt textarea").fill("a patch of grass")
    page.locator("#img2img_generate").click()
    page.locator("#img2img_gallery img").first.wait_for(timeout=120_000)
    info = page.locator("#img2img_infotext textarea")
    wait_until(lambda: "Denoising strength" in info.input_value(), timeout=30)
    shot(page, "inpaint-done")

    image_record = server.services.store.images(limit=1)[0]
    assert "Denoising strength: 0.75" in image_record["infotext"]
    out = np.asarray(Image.open(server.services.paths.outputs_dir / image_record["path"]).convert("RGB"))
    changed = (out != np.asarray(source)).any(axis=2)
    # Repainted where the stroke went (upper left), the original everywhere far from it (A1111's overlay).
    assert changed[:32, :32].sum() > 20
    assert not changed[48:, :].any() and not changed[:, 48:].any()


def test_img2img_size_native_then_detected_from_the_image_and_icons_drawn(page, tmp_path):  # noqa: F811
    """The img2img tab starts at the model's native size (64 for the tiny model), 📐 takes the uploaded image's
    size, and the icon buttons are drawn from the package's SVGs with a title and an accessible name. The inpaint
    settings show only on the sub-tabs that take a mask; the footer has no stray separator."""
    from test_ui_browser import number

    page.get_by_role("tab", name="img2img", exact=True).first.click()
    inpaint_controls = page.locator("#img2img_inpaint_controls")
    assert not inpaint_controls.is_visible()
    wait_until(lambda: number(page, "img2img_width") == "64" and number(page, "img2img_height") == "64", timeout=15)
    path = tmp_path / "wide.png"
    Image.new("RGB", (203, 120), (200, 40, 40)).save(path)
    page.locator("#img2img_image input[type=file]").set_input_files(str(path))
    page.locator("#img2img_image img").first.wait_for(timeout=15_000)
    page.locator("#img2img_detect_image_size_btn").click()
    wait_until(lambda: (number(page, "img2img_width"), number(page, "img2img_height")) == ("200", "120"), timeout=15)
    shot(page, "img2img-detect-size")

    for elem_id, title in (("img2img_detect_image_size_btn", "Auto detect size from the image"),
                           ("img2img_random_seed", "Random seed (-1: a new one each time)"),
                           ("refresh_sd_model_checkpoint", "Refresh the checkpoint and VAE lists")):
        button = page.locator(f"#{elem_id}")
        wait_until(lambda: button.get_attribute("title") == title, timeout=15)
        assert button.get_attribute("aria-label") == title
        # the icon is fetched from the server: under a busy suite it may still be loading
        button.scroll_into_view_if_needed()
        loaded = "img => img.complete && img.naturalWidth > 0"
        try:
            wait_until(lambda: button.locator("img").evaluate(loaded), timeout=30)
        except AssertionError:
            state = button.locator("img").evaluate("img => [img.src, img.complete, img.naturalWidth]")
            raise AssertionError(f"{elem_id}: icon not drawn: {state}") from None
        box = button.bounding_box()
        assert box["width"] <= 80, (elem_id, box)  # the hidden label takes no room

    page.get_by_role("tab", name="Inpaint upload", exact=True).first.click()
    inpaint_controls.wait_for(state="visible", timeout=15_000)
    page.get_by_role("tab", name="Sketch", exact=True).first.click()
    inpaint_controls.wait_for(state="hidden", timeout=15_000)
    # "Send to inpaint" (here from PNG Info) opens the Inpaint sub-tab with its settings.
    page.locator("#tab_pnginfo-button, button[role=tab]:has-text('PNG Info')").first.click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    page.locator("#pnginfo_image img").first.wait_for(timeout=15_000)
    page.locator("#pnginfo_send_inpaint").click()
    inpaint_controls.wait_for(state="visible", timeout=15_000)
    assert "·" not in page.locator("footer").first.inner_text()
