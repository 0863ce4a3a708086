"""Face restoration in a real browser (headless Chromium, as `test_ui_browser.py`): the txt2img tab's "Restore
faces" checkbox reaches the job (its infotext names the restorer), and the Extras tab has its GFPGAN / CodeFormer
controls, once."""

from __future__ import annotations

import pytest
from test_api_support import LiveServer, make_data_dir, wait_until
from test_face_restoration import tiny_restoreformer_state
from test_ui_browser import SMALL, browser, prompt_box, set_number, shot, ui_page  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    from safetensors.torch import save_file

    data = make_data_dir(tmp_path_factory.mktemp("ui-faces"), tiny_sd1_path, "tiny-sd1.safetensors")
    (data / "models" / "RestoreFormer").mkdir(parents=True)
    save_file(tiny_restoreformer_state(), str(data / "models" / "RestoreFormer" / "RestoreFormer.safetensors"))
    with LiveServer(data) as live:
        yield live


def test_restore_faces_from_the_txt2img_tab(browser, server):  # noqa: F811 - the fixture imported above
    with ui_page(browser, server) as page:
        prompt_box(page).fill("a portrait")
        for elem_id, value in (("txt2img_width", SMALL["width"]), ("txt2img_height", SMALL["height"]),
                               ("txt2img_steps", SMALL["steps"])):
            set_number(page, elem_id, value)
        page.locator("#txt2img_restore_faces input[type=checkbox]").check()
        page.locator("#txt2img_generate").click()
        page.locator("#txt2img_gallery img").first.wait_for(timeout=120_000)
        info = page.locator("#txt2img_infotext textarea")
        wait_until(lambda: "Steps: 2" in info.input_value(), timeout=30)
        # The setting's model (CodeFormer) is not installed: the installed RestoreFormer restored the faces.
        assert "Face restoration: RestoreFormer" in info.input_value()
        shot(page, "txt2img-restore-faces")


def test_the_extras_tab_has_the_face_restorers(browser, server):  # noqa: F811
    with ui_page(browser, server) as page:
        page.get_by_role("tab", name="Extras").click()
        for elem_id in ("extras_gfpgan_visibility", "extras_codeformer_visibility", "extras_codeformer_weight"):
            page.locator(f"#{elem_id}").first.wait_for(timeout=30_000)
        assert page.locator("#extras_gfpgan_visibility").count() == 1  # once, not twice
