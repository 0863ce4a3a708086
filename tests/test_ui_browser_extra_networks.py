"""The Extra Networks panel in a real browser (headless Chromium via Playwright, as `test_ui_browser`): a LoRA
card inserts `<lora:alias:preferred weight>` and its activation text into the prompt and takes them out on a second
click, an embedding card inserts its name, search filters the cards, the ✏️ editor writes `name.json`, and a
generation with the inserted tag records its LoRA."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_api_support import LiveServer, make_data_dir, wait_until
from test_extra_network_cards import fill_folders
from test_ui_browser import browser, prompt_box, set_number, shot, ui_page  # noqa: F401 - fixtures

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("ui-cards"), tiny_sd1_path, "tiny-sd1.safetensors",
                         "zz-other.safetensors")
    fill_folders(data)
    with LiveServer(data) as live:
        yield live


@pytest.fixture
def page(browser, server):  # noqa: F811
    with ui_page(browser, server, height=1400) as page:
        yield page


def open_panel(page, tab: str = "txt2img"):
    page.locator(f"#{tab}_extra_networks").get_by_text("Extra Networks").first.click()
    page.locator(f"#{tab}_extra_networks").get_by_role("tab", name="Lora").first.click()
    cards = page.locator(f"#{tab}_lora_cards .sdw-card")
    cards.first.wait_for(state="visible", timeout=15_000)
    return cards


def test_clicking_cards_inserts_and_removes_their_text(page, server):
    cards = open_panel(page)
    assert sorted(cards.evaluate_all("cards => cards.map(c => c.dataset.name)")) == ["inkwash", "plain"]
    prompt = prompt_box(page)
    prompt.fill("a landscape")
    page.locator("#txt2img_lora_cards .sdw-card[data-name=inkwash]").click()
    wait_until(lambda: prompt.input_value() == "a landscape <lora:ink:0.6> inkwash", timeout=10)
    shot(page, "extra-networks-lora")
    page.locator("#txt2img_lora_cards .sdw-card[data-name=inkwash]").click()  # a second click takes it out
    wait_until(lambda: prompt.input_value() == "a landscape", timeout=10)
    page.locator("#txt2img_lora_cards .sdw-card[data-name=plain]").click()
    wait_until(lambda: prompt.input_value() == "a landscape <lora:plain:1>", timeout=10)

    page.locator("#txt2img_extra_networks").get_by_role("tab", name="Textual Inversion").first.click()
    page.locator("#txt2img_textual_inversion_cards .sdw-card[data-name=goodhands]").click()
    wait_until(lambda: prompt.input_value() == "a landscape <lora:plain:1> goodhands", timeout=10)

    # the inserted text reaches the job: Gradio saw the change, and the LoRA is applied and recorded
    for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "2")):
        set_number(page, elem_id, value)
    page.locator("#txt2img_generate").click()
    wait_until(lambda: page.locator("#txt2img_gallery img").count() == 1, timeout=120)
    record = server.services.store.images(limit=1)[0]
    assert record["prompt"] == "a landscape <lora:plain:1> goodhands"
    assert "Lora hashes" in record["infotext"]


def test_search_filters_and_the_editor_writes_name_json(page, server):
    open_panel(page)
    page.locator("#txt2img_extra_search textarea").first.press_sequentially("ink wash")
    wait_until(lambda: page.locator("#txt2img_lora_cards .sdw-card").count() == 1, timeout=15)
    assert page.locator("#txt2img_lora_cards .sdw-card").first.get_attribute("data-name") == "inkwash"
    # "ink" already leaves one card, and the searches for "ink w…" still replace it: let them finish first
    page.wait_for_timeout(1000)
    wait_until(lambda: page.locator("#txt2img_lora_cards .sdw-card").count() == 1, timeout=15)

    editor = page.locator("#txt2img_extra_editor").first
    page.locator("#txt2img_lora_cards .sdw-card[data-name=inkwash] .sdw-card-edit").click()
    try:
        editor.wait_for(state="visible", timeout=60_000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError (playwright is imported only where installed)
        shot(page, "extra-networks-editor-not-open")
        target = page.locator("#txt2img_extra_edit_target textarea, #txt2img_extra_edit_target input").first
        toasts = page.locator(".toast-body").all_inner_texts()
        pytest.fail(f"the editor did not open: edit target {target.input_value()!r}, toasts {toasts}")
    activation = page.locator("#txt2img_extra_edit_activation_text textarea, "
                              "#txt2img_extra_edit_activation_text input").first
    wait_until(lambda: activation.input_value() == "inkwash", timeout=10)
    activation.fill("ink wash painting")
    page.locator("#txt2img_extra_edit_save").click()
    path = server.config.paths.lora_dir / "inkwash.json"
    wait_until(lambda: json.loads(path.read_text()).get("activation text") == "ink wash painting", timeout=15)
    assert json.loads(path.read_text())["preferred weight"] == 0.6
    card = page.locator("#txt2img_lora_cards .sdw-card[data-name=inkwash]")
    wait_until(lambda: card.get_attribute("data-prompt") == "<lora:ink:0.6> ink wash painting", timeout=15)


def test_a_card_without_a_preview_gets_one_from_the_gallery(page, server):
    lora_dir = server.config.paths.lora_dir
    assert not (lora_dir / "styles" / "plain.png").exists()
    for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "2")):
        set_number(page, elem_id, value)
    prompt_box(page).fill("a cube")
    page.locator("#txt2img_generate").click()
    wait_until(lambda: page.locator("#txt2img_gallery img").count() == 1, timeout=120)
    open_panel(page)
    page.locator("#txt2img_lora_cards .sdw-card[data-name=plain] .sdw-card-edit").click()
    page.locator("#txt2img_extra_editor").first.wait_for(state="visible", timeout=15_000)
    page.locator("#txt2img_extra_edit_replace_preview").click()
    wait_until(lambda: (lora_dir / "styles" / "plain.png").is_file(), timeout=15)
    assert Image.open(lora_dir / "styles" / "plain.png").size == (64, 64)


def test_a_checkpoint_card_switches_the_checkpoint(page, server):
    page.locator("#txt2img_extra_networks").get_by_text("Extra Networks").first.click()
    page.locator("#txt2img_extra_networks").get_by_role("tab", name="Checkpoints").first.click()
    card = page.locator("#txt2img_checkpoints_cards .sdw-card[data-name=zz-other]")
    card.wait_for(state="visible", timeout=15_000)
    card.click()
    wait_until(lambda: str(server.services.options.get("sd_model_checkpoint")).startswith("zz-other"), timeout=30)
    top_bar = page.locator("#setting_sd_model_checkpoint input").first
    wait_until(lambda: top_bar.input_value().startswith("zz-other"), timeout=15)
    assert prompt_box(page).input_value() == ""  # a checkpoint card inserts nothing
