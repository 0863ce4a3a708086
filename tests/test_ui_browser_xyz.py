"""The X/Y/Z plot's controls in a real browser (headless Chromium via Playwright, as `test_ui_browser`): A1111's
layout, made by the script (`build_ui`): picking a list axis shows its fill button, which puts every choice in the
axis's dropdown; the swap buttons exchange two axes; a 2x1 plot comes back as one grid, shown first."""

from __future__ import annotations

import pytest
from test_api_support import wait_until
from test_ui_browser import browser, server, set_number, shot, ui_page  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

XYZ = "#txt2img_script_x_y_z_plot"


@pytest.fixture
def page(browser, server):  # noqa: F811
    with ui_page(browser, server, height=1600) as page:
        yield page


def pick(page, elem_id: str, option: str) -> None:
    page.locator(f"{elem_id} input").first.click()
    page.locator(f"[role=option]:has-text('{option}')").first.click()


def test_xyz_controls_fill_swap_and_plot(page, server):  # noqa: F811
    controls = page.locator(XYZ)
    assert not controls.is_visible()
    pick(page, "#txt2img_script_list", "X/Y/Z plot")
    controls.wait_for(state="visible", timeout=15_000)
    for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "1")):
        set_number(page, elem_id, value)

    # swap: X (CFG Scale, "1, 7") and Y (Nothing) change places, and back
    pick(page, f"{XYZ}_x_type", "CFG Scale")
    x_values = page.locator(f"{XYZ}_x_values textarea")
    x_values.fill("1, 7")
    page.locator(f"{XYZ}_swap_xy").click()
    wait_until(lambda: page.locator(f"{XYZ}_y_type input").input_value() == "CFG Scale", timeout=15)
    wait_until(lambda: page.locator(f"{XYZ}_y_values textarea").input_value() == "1, 7", timeout=15)
    wait_until(lambda: page.locator(f"{XYZ}_x_type input").input_value() == "Nothing", timeout=15)
    page.locator(f"{XYZ}_swap_xy").click()
    wait_until(lambda: page.locator(f"{XYZ}_x_type input").input_value() == "CFG Scale", timeout=15)

    # a list axis: its fill button appears and puts every choice in the dropdown
    fill = page.locator(f"{XYZ}_fill_x")
    assert not fill.is_visible()
    pick(page, f"{XYZ}_x_type", "Always discard next-to-last sigma")
    fill.wait_for(state="visible", timeout=15_000)
    wait_until(lambda: not x_values.is_visible(), timeout=15)
    fill.click()
    dropdown = page.locator(f"{XYZ}_x_values_dropdown")
    wait_until(lambda: "False" in dropdown.inner_text() and "True" in dropdown.inner_text(), timeout=15)
    images_before = len(server.services.store.images(limit=1000))

    page.locator("#txt2img_generate").click()
    gallery = page.locator("#txt2img_gallery img")
    wait_until(lambda: gallery.count() == 1 and len(server.services.store.images(limit=1000)) == images_before + 2,
               timeout=120)
    shot(page, "script-xyz-plot")
    # the one image shown is the grid: two 64 px cells side by side, under their legends
    wait_until(lambda: gallery.first.evaluate("img => img.naturalWidth") == 128, timeout=15)
    size = gallery.first.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size[0] == 128 and size[1] > 64
    records = server.services.store.images(limit=2)
    assert {"Discard penultimate sigma: True" in record["infotext"] for record in records} == {True, False}
