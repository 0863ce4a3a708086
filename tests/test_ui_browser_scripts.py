"""The txt2img tab's "Script" dropdown in a real browser (headless Chromium via Playwright, as `test_ui_browser`):
choosing "Prompts from file or textbox" shows its controls (made from the script's declared arguments); its list
runs one job per line, and a bad line is reported in the page, naming the line."""

from __future__ import annotations

import pytest
from test_api_support import wait_until
from test_ui_browser import browser, server, set_number, shot, ui_page  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture
def page(browser, server):  # noqa: F811
    with ui_page(browser, server, height=1400) as page:
        yield page


def test_prompts_from_file_from_the_script_dropdown(page, server):  # noqa: F811
    controls = page.locator("#txt2img_script_prompts_from_file_or_textbox")
    assert not controls.is_visible()
    page.locator("#txt2img_script_list input").first.click()
    page.locator("[role=option]:has-text('Prompts from file or textbox')").first.click()
    controls.wait_for(state="visible", timeout=15_000)
    for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "2")):
        set_number(page, elem_id, value)
    page.locator("#txt2img_seed input").fill("50")
    page.locator("#txt2img_script_prompts_from_file_or_textbox_0 input").check()  # iterate seed every line
    lines = page.locator("#txt2img_script_prompts_from_file_or_textbox_3 textarea")

    lines.fill("a red circle\n--prompt a blue square --steps 0")
    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    # Named as the control is labelled: "List of prompt inputs: line 2: steps: must be ..."
    wait_until(lambda: "List of prompt inputs: line 2: steps" in progress.inner_text(), timeout=60)

    jobs_before = len(server.services.store.images(limit=1000))
    lines.fill("a red circle\n--prompt a blue square --steps 3")
    page.locator("#txt2img_generate").click()
    wait_until(lambda: page.locator("#txt2img_gallery img").count() == 2, timeout=120)
    shot(page, "script-prompts-from-file")
    records = server.services.store.images(limit=2)
    assert len(server.services.store.images(limit=1000)) == jobs_before + 2
    assert [(r["prompt"], r["seed"]) for r in reversed(records)] == [("a red circle", 50), ("a blue square", 51)]
    assert "Steps: 3" in records[0]["infotext"]


def test_sd_upscale_from_the_img2img_script_dropdown(page, server, tmp_path):  # noqa: F811
    """img2img's Script dropdown offers the img2img scripts; SD upscale's upscaler list is the installed one
    (Extras' list), and its job returns the image at twice the size."""
    from PIL import Image

    page.get_by_role("tab", name="img2img", exact=True).first.click()
    page.locator("#img2img_script_list input").first.click()
    for title in ("SD upscale", "Loopback", "Outpainting mk2", "Poor man's outpainting", "X/Y/Z plot"):
        assert page.locator(f"[role=option]:has-text(\"{title}\")").count() >= 1, title
    page.locator("[role=option]:has-text('SD upscale')").first.click()
    controls = page.locator("#img2img_script_sd_upscale")
    controls.wait_for(state="visible", timeout=15_000)

    upscaler = page.locator("#img2img_script_sd_upscale_2 input")
    upscaler.click()
    options = page.locator("#img2img_script_sd_upscale_2 [role=option]")
    options.first.wait_for(timeout=15_000)
    offered = [text.replace("✓", "").strip() for text in options.all_inner_texts()]  # ✓ marks the chosen one
    assert offered == [entry.name for entry in server.services.upscalers.entries()]
    options.filter(has_text="Lanczos").first.click()

    path = tmp_path / "small.png"
    Image.new("RGB", (64, 64), (40, 120, 200)).save(path)
    page.locator("#img2img_image input[type=file]").set_input_files(str(path))
    page.locator("#img2img_image img").first.wait_for(timeout=15_000)
    for elem_id, value in (("img2img_width", "64"), ("img2img_height", "64"), ("img2img_steps", "2")):
        set_number(page, elem_id, value)
    page.locator("#img2img_script_sd_upscale_1 input[type=number]").fill("16")  # tile overlap
    page.locator("#img2img_prompt textarea").fill("a blue wall")
    page.locator("#img2img_generate").click()
    info = page.locator("#img2img_infotext textarea")
    wait_until(lambda: "SD upscale upscaler: Lanczos" in info.input_value(), timeout=120)
    shot(page, "script-sd-upscale")
    record = server.services.store.images(limit=1)[0]
    assert "SD upscale overlap: 16" in record["infotext"]
    assert (record["width"], record["height"]) == (128, 128), record
