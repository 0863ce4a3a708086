"""Extra Networks cards and their API (A1111's `ui_extra_networks*.py` and `/sdapi/v1/loras`, `/hypernetworks`,
`/refresh-*`): card data from real files (previews, `name.json` user metadata, safetensors headers), the metadata
editor's round trip, and the preview route that serves images from inside the model folders only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_api_support import LiveServer, make_data_dir

from sdwebui.server import extra_networks


def lora_tensors(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    return {f"{key}.lora_up.weight": torch.randn(32, 2, generator=generator),
            f"{key}.lora_down.weight": torch.randn(2, 32, generator=generator)}


def fill_folders(data: Path) -> None:
    lora = data / "models" / "Lora"
    (lora / "styles").mkdir(parents=True)
    save_file(lora_tensors(), lora / "inkwash.safetensors", metadata={"ss_output_name": "ink",
                                                                    "ss_base_model_version": "sdxl_base_v1-0"})
    save_file(lora_tensors(1), lora / "styles" / "plain.safetensors")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(lora / "inkwash.preview.png")
    Image.new("RGB", (8, 8), (10, 200, 10)).save(lora / "styles" / "plain.jpg")
    (lora / "inkwash.json").write_text(json.dumps({"description": "ink wash style", "activation text": "inkwash",
                                                   "preferred weight": 0.6, "sd version": "SDXL",
                                                   "custom key": "kept"}))
    (lora / "styles" / "plain.txt").write_text("from a .txt file")
    (data / "embeddings").mkdir()
    torch.save({"string_to_param": {"*": torch.zeros(2, 32)}, "step": 5}, data / "embeddings" / "goodhands.pt")
    hyper = data / "models" / "hypernetworks"
    hyper.mkdir(parents=True)
    torch.save({}, hyper / "anime.pt")
    Image.new("RGB", (8, 8)).save(hyper / "anime.png")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("cards"), tiny_sd1_path, "tiny-sd1.safetensors")
    fill_folders(data)
    (data / "secret.png").parent.mkdir(exist_ok=True)
    Image.new("RGB", (4, 4)).save(data / "secret.png")
    with LiveServer(data, ui=False) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def by_name(cards: list[dict]) -> dict[str, dict]:
    return {card["name"]: card for card in cards}


def test_lora_cards_have_previews_user_metadata_and_what_a_click_inserts(client):
    response = client.get("/api/v1/extra-networks/lora")
    assert response.status_code == 200, response.text
    cards = by_name(response.json())
    ink, plain = cards["inkwash"], cards["plain"]
    assert ink["alias"] == "ink" and ink["sd_version"] == "SDXL" and ink["description"] == "ink wash style"
    assert ink["prompt"] == "<lora:ink:0.6> inkwash"  # A1111: the alias, the preferred weight, the activation text
    assert ink["preview"].startswith("./sd_extra_networks/thumb?filename=") and "inkwash.preview.png" in ink["preview"]
    assert ink["user_metadata"]["custom key"] == "kept" and ink["has_metadata"] is True
    assert plain["prompt"] == "<lora:plain:1>" and plain["subfolder"] == "styles"
    assert plain["description"] == "from a .txt file" and plain["preview"].split("?")[1].startswith("filename=")
    assert plain["sd_version"] == "Unknown" and plain["relative"] == "styles/plain.safetensors"
    assert set(ink["sort_keys"]) == {"name", "date_created", "date_modified", "path"}


def test_other_pages_list_embeddings_hypernetworks_and_checkpoints(client):
    (embedding,) = client.get("/api/v1/extra-networks/textual inversion").json()
    assert embedding["name"] == "goodhands" and embedding["prompt"] == "goodhands"
    (hyper,) = client.get("/api/v1/extra-networks/hypernetworks").json()
    assert hyper["prompt"] == "<hypernet:anime:1>" and hyper["preview"] is not None
    (checkpoint,) = client.get("/api/v1/extra-networks/checkpoints").json()
    assert checkpoint["name"] == "tiny-sd1" and checkpoint["checkpoint"].startswith("tiny-sd1.safetensors")
    assert checkpoint["prompt"] == ""
    assert client.get("/api/v1/extra-networks/nope").status_code == 404


def test_a1111_listings_and_refresh_routes(client, server):
    loras = {item["name"]: item for item in client.get("/sdapi/v1/loras").json()}
    assert loras["inkwash"]["alias"] == "ink" and loras["inkwash"]["metadata"]["ss_base_model_version"]
    assert loras["inkwash"]["path"].endswith("inkwash.safetensors")
    hypernetworks = client.get("/sdapi/v1/hypernetworks").json()
    assert hypernetworks == [{"name": "anime", "path": str(server.config.paths.models_dir / "hypernetworks" /
                                                              "anime.pt")}]
    for route in ("refresh-loras", "refresh-embeddings", "refresh-checkpoints"):
        assert client.post(f"/sdapi/v1/{route}").status_code == 200
    # a file copied in shows after a refresh (listings read the folder)
    lora_dir = server.config.paths.lora_dir
    save_file(lora_tensors(2), lora_dir / "newcomer.safetensors")
    try:
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        assert "newcomer" in {item["name"] for item in client.get("/sdapi/v1/loras").json()}
    finally:
        (lora_dir / "newcomer.safetensors").unlink()
    metadata = client.get("/sd_extra_networks/metadata", params={"page": "lora", "item": "inkwash"}).json()
    assert metadata["metadata"]["ss_output_name"] == "ink"
    assert client.get("/sd_extra_networks/metadata", params={"page": "lora", "item": "nope"}).json() == {}


def test_the_editor_writes_name_json_and_the_card_follows(client, server):
    body = {"name": "plain", "description": "flat colours", "activation text": "flat", "preferred weight": 0.8,
            "negative text": "shading", "notes": "made in a test", "sd version": "SD1"}
    response = client.post("/api/v1/extra-networks/lora/user-metadata", json=body)
    assert response.status_code == 200, response.text
    written = json.loads((server.config.paths.lora_dir / "styles" / "plain.json").read_text())
    assert written == {"description": "flat colours", "activation text": "flat", "preferred weight": 0.8,
                       "negative text": "shading", "notes": "made in a test", "sd version": "SD1"}
    card = by_name(client.get("/api/v1/extra-networks/lora").json())["plain"]
    assert card["prompt"] == "<lora:plain:0.8> flat" and card["negative_prompt"] == "shading"
    assert card["description"] == "flat colours" and card["sd_version"] == "SD1"
    # keys it does not know are kept
    client.post("/api/v1/extra-networks/lora/user-metadata", json={"name": "inkwash", "notes": "x"})
    kept = json.loads((server.config.paths.lora_dir / "inkwash.json").read_text())
    assert kept["custom key"] == "kept" and kept["notes"] == "x"
    for bad, field in [({**body, "name": "nope"}, "name"), ({**body, "sd version": "SD9"}, "sd version"),
                       ({**body, "preferred weight": -1}, "preferred weight"), ({**body, "extra": 1}, "extra")]:
        response = client.post("/api/v1/extra-networks/lora/user-metadata", json=bad)
        assert response.status_code == 422 and response.json()["field"] == field, response.text


def test_previews_are_served_from_inside_the_model_folders_only(client, server):
    lora_dir = server.config.paths.lora_dir
    inside = lora_dir / "inkwash.preview.png"
    response = client.get("/sd_extra_networks/thumb", params={"filename": str(inside)})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == inside.read_bytes()
    data = server.config.paths.data_dir
    os.symlink(data / "secret.png", lora_dir / "escape.png")
    try:
        for filename in [
            str(data / "secret.png"),  # outside every model folder
            str(lora_dir / ".." / ".." / "secret.png"),  # climbs out
            str(lora_dir / "escape.png"),  # a link that leads out
            str(lora_dir / "inkwash.safetensors"),  # inside, but not an image
            str(lora_dir / "inkwash.json"),
            "/etc/passwd", "", "relative.png", str(lora_dir / "missing.png"),
        ]:
            response = client.get("/sd_extra_networks/thumb", params={"filename": filename})
            assert response.status_code == 404, filename
    finally:
        (lora_dir / "escape.png").unlink()


def test_card_html_carries_what_the_page_script_needs(tmp_path, tiny_sd1_path):
    from sdwebui.app import build_services
    from sdwebui.config import Paths
    from sdwebui.server.config import ServerConfig

    data = make_data_dir(tmp_path / "data", tiny_sd1_path, "tiny-sd1.safetensors")
    fill_folders(data)
    services = build_services(ServerConfig(paths=Paths.from_flags(data_dir=data), ui=False))
    page = extra_networks.page_html(services, "lora", "txt2img", family="SD1")
    assert 'data-prompt="&lt;lora:ink:0.6&gt; inkwash"' in page
    assert 'id="txt2img_lora_cards"' in page and 'data-subfolder="styles"' in page
    assert "sdw-card-dimmed" in page  # the SDXL LoRA under an SD1 model
    empty = extra_networks.page_html(services, "checkpoints", "img2img")
    assert "sdw-card-dimmed" not in empty and 'data-checkpoint="tiny-sd1.safetensors' in empty
