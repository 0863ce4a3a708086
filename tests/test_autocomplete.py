"""Prompt autocompletion: LoRA / hypernetwork / wildcard names, embeddings, and tags from CSVs in the
tag-autocomplete extension's format (`name,type,count,aliases`), through the API and typed in a real browser."""

from __future__ import annotations

import pytest
from test_api_support import LiveServer, make_data_dir, wait_until
from test_dynamic_prompts import write_wildcards
from test_extra_network_cards import fill_folders

from sdwebui.server.autocomplete import read_tags, tag_text

TAGS = ('1girl,0,4114588,"1girls,sole_female"\nlong_hair,0,1000,"longhair,long_hairs"\n'
        'looking_at_viewer,0,2000,\nstrawberry_(fruit),0,50,\nbad row,x,y,\n,0,1,\n')


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("complete"), tiny_sd1_path, "tiny-sd1.safetensors")
    fill_folders(data)
    write_wildcards(data)
    (data / "tags").mkdir()
    (data / "tags" / "danbooru.csv").write_text(TAGS)
    with LiveServer(data) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def ask(client, text, **params):
    response = client.get("/api/v1/autocomplete", params={"text": text, **params})
    assert response.status_code == 200, response.text
    return response.json()


def test_tag_files_in_the_tagcomplete_format(tmp_path):
    (tmp_path / "t.csv").write_text(TAGS)
    tags = read_tags(tmp_path / "t.csv")
    assert [tag.name for tag in tags] == ["1girl", "long_hair", "looking_at_viewer", "strawberry_(fruit)"]
    assert tags[0].aliases == ("1girls", "sole_female") and tags[0].count == 4114588
    assert tag_text("strawberry_(fruit)") == "strawberry \\(fruit\\)"


@pytest.mark.parametrize("text, expected", [
    ("<lora:in", ["<lora:ink:1>", "<lora:inkwash:1>"]),  # the alias first, as the cards insert it
    ("<lora:pla", ["<lora:plain:1>"]),
    ("<hypernet:an", ["<hypernet:anime:1>"]),
    ("__sea", ["__season__"]),
    ("__people/", ["__people/all__", "__people/europe__"]),
    ("lo", ["looking at viewer", "long hair"]),  # tags by count
    ("longhai", ["long hair"]),  # an alias finds its tag
    ("strawberry", ["strawberry \\(fruit\\)"]),
    ("goodh", ["goodhands"]),  # embeddings
    ("zzz", []),
])
def test_completions(client, text, expected):
    assert [item["text"] for item in ask(client, text)] == expected


def test_limits_and_bad_input(client):
    assert len(ask(client, "lo", limit=1)) == 1
    response = client.get("/api/v1/autocomplete", params={"text": "x", "limit": 0})
    assert response.status_code == 422 and response.json()["field"] == "limit"
    assert ask(client, "l") == []  # one letter is not enough for tags


def test_typing_in_the_prompt_offers_completions(server):
    from test_ui_browser import ensure_chromium, open_ui, prompt_box

    reason = ensure_chromium()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--headless"])
        try:
            page = browser.new_page()
            open_ui(page, server)
            prompt = prompt_box(page)
            prompt.click()
            prompt.press_sequentially("a girl, <lora:pla")
            page.locator(".sdw-autocomplete-item").first.wait_for(state="visible", timeout=15_000)
            page.keyboard.press("Enter")
            wait_until(lambda: prompt.input_value() == "a girl, <lora:plain:1> ", timeout=10)
            prompt.press_sequentially("lo")
            items = page.locator(".sdw-autocomplete-item")
            wait_until(lambda: items.count() == 2 and "looking_at_viewer" in items.first.inner_text(), timeout=15)
            page.keyboard.press("ArrowDown")
            page.keyboard.press("Tab")
            wait_until(lambda: prompt.input_value() == "a girl, <lora:plain:1> long hair, ", timeout=10)
            assert not page.locator(".sdw-autocomplete").is_visible()
        finally:
            browser.close()
