"""The Checkpoint Merger tab in a real browser (headless Chromium via Playwright, as `test_ui_browser`): A1111's
layout (models A/B/C, method with its description, multiplier, format, fp16, config, bake VAE, discard, metadata),
a merge that makes the file and lists it in the dropdowns, and an error that names the field."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from test_api_support import LiveServer, make_data_dir, wait_until
from test_ui_browser import browser, shot, ui_page  # noqa: F401 - fixtures
from tiny_models import build_tiny, write_single_file

from sdwebui.models.family import ModelFamily

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("ui-merger"), tiny_sd1_path, "alpha.safetensors")
    write_single_file(build_tiny(ModelFamily.SD1, seed=1), data / "models" / "Stable-diffusion" / "beta.safetensors")
    with LiveServer(data) as live:
        yield live


@pytest.fixture
def page(browser, server):  # noqa: F811
    with ui_page(browser, server, height=1400) as page:
        tab = page.get_by_role("tab", name="Checkpoint Merger", exact=True)
        if not tab.first.is_visible():  # Gradio moves tabs that do not fit into its overflow menu
            page.locator(".overflow-menu button, button.overflow-menu").first.click()
        page.get_by_role("tab", name="Checkpoint Merger", exact=True).locator("visible=true").first.click()
        page.locator("#modelmerger_merge").wait_for(state="visible", timeout=15_000)
        yield page


def choose(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f"[role=option]:has-text('{text}')").first.click()


def test_merge_from_the_tab(page, server):
    description = page.locator("#modelmerger_interp_description")
    assert "A * (1 - M) + B * M" in description.inner_text()
    page.locator("#modelmerger_interp_method label:has-text('Add difference')").click()
    wait_until(lambda: "A + (B - C) * M" in description.inner_text(), timeout=10)
    # Add difference without C: A1111's message
    choose(page, "modelmerger_primary_model_name", "alpha")
    choose(page, "modelmerger_secondary_model_name", "beta")
    page.locator("#modelmerger_merge").click()
    result = page.locator("#modelmerger_result")
    wait_until(lambda: "tertiary_model_name" in result.inner_text(), timeout=30)
    assert "requires a tertiary model" in result.inner_text()

    page.locator("#modelmerger_interp_method label:has-text('Weighted sum')").click()
    page.locator("#modelmerger_custom_name input, #modelmerger_custom_name textarea").first.fill("ui-mix")
    page.locator("#modelmerger_save_as_half input").check()
    page.locator("#modelmerger_discard_weights input, #modelmerger_discard_weights textarea").first.fill("^alphas")
    page.locator("#modelmerger_merge").click()
    wait_until(lambda: "Checkpoint saved to ui-mix.safetensors" in result.inner_text(), timeout=120)
    shot(page, "checkpoint-merger")
    path = server.config.paths.ckpt_dir / "ui-mix.safetensors"
    with safe_open(str(path), "pt") as file:
        recipe = json.loads(file.metadata()["sd_merge_recipe"])
        assert file.get_tensor("model.diffusion_model.out.2.weight").dtype.itemsize == 2
        assert "alphas_cumprod" not in file.keys()
    assert recipe["interp_method"] == "Weighted sum" and recipe["save_as_half"] is True
    assert recipe["multiplier"] == 0.3 and recipe["discard_weights"] == "^alphas"
    # the chosen models stay chosen (their titles now carry the hash), and the new model is offered at once
    assert "alpha.safetensors [" in page.locator("#modelmerger_primary_model_name input").first.input_value()
    page.locator("#modelmerger_tertiary_model_name input").first.click()
    wait_until(lambda: page.locator("[role=option]:has-text('ui-mix')").count() >= 1, timeout=10)


def test_model_tools_area_converts_and_names_bad_fields(page, server):
    page.locator("#modeltools").get_by_text("Model tools").first.click()
    page.get_by_role("tab", name="Convert", exact=True).first.click()
    choose(page, "modeltools_convert_checkpoint", "beta")
    page.locator("#modeltools_convert_name input, #modeltools_convert_name textarea").first.fill("beta-small")
    page.locator("#modeltools_convert").click()
    result = page.locator("#modeltools_result")
    wait_until(lambda: "Saved beta-small.safetensors" in result.inner_text(), timeout=120)
    with safe_open(str(server.config.paths.ckpt_dir / "beta-small.safetensors"), "pt") as file:
        assert file.get_tensor("model.diffusion_model.out.2.weight").dtype.itemsize == 2
    page.get_by_role("tab", name="Bake LoRA", exact=True).first.click()
    choose(page, "modeltools_bake_checkpoint", "alpha")
    page.locator("#modeltools_bake_loras input, #modeltools_bake_loras textarea").first.fill("nolora:0.5")
    page.locator("#modeltools_bake_name input, #modeltools_bake_name textarea").first.fill("x")
    page.locator("#modeltools_bake").click()
    wait_until(lambda: "loras.0.name" in result.inner_text(), timeout=30)
    shot(page, "model-tools")
