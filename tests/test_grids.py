"""Grids, as A1111 makes them (`images.image_grid`, `process_images`): a job of several images also returns a grid of
them first (`index_of_first_image` 1, its infotext first) and saves it as `grid-NNNN.png` in the grids folder; not
for one image, not when the A1111 request does not save (`do_not_save_grid = not save_images`), not for prompts
from file (the script says so), and the settings turn either half off."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from PIL import Image

from sdwebui.pipelines.grids import grid_rows, image_grid
from test_api_support import LiveServer, decode_png, make_data_dir, wait_for_job

FAST = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 5}


@pytest.mark.parametrize("count, batch_size, n_rows, prevent, rows", [
    (4, 1, -1, False, 2), (3, 1, -1, False, 2), (2, 2, -1, False, 1), (6, 3, 0, False, 3), (6, 1, 4, False, 4),
    (8, 1, -1, True, 2), (7, 1, -1, True, 1), (5, 1, 9, False, 5),
])
def test_rows_as_a1111(count, batch_size, n_rows, prevent, rows):
    assert grid_rows(count, batch_size, n_rows, prevent) == rows


def test_images_fill_the_grid_left_to_right_centred_in_their_cells():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [Image.new("RGB", (8, 8), colour) for colour in colours]
    images.append(Image.new("RGB", (4, 4), (9, 9, 9)))
    grid = image_grid(images, rows=2)
    assert grid.size == (16, 16)
    assert [grid.getpixel(xy) for xy in ((0, 0), (8, 0), (0, 8))] == colours
    assert grid.getpixel((12, 12)) == (9, 9, 9) and grid.getpixel((9, 9)) == (255, 255, 255)  # centred, white around


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("grids"), tiny_sd1_path, "tiny-sd1.safetensors")
    with LiveServer(data, ui=False) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def grids_folder(server):
    return server.services.paths.outputs_dir / "txt2img-grids" / dt.date.today().isoformat()


def test_a_batch_returns_and_saves_its_grid_first(client, server):
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "batch_size": 2, "n_iter": 2, "save_images": True}).json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 5 and info["index_of_first_image"] == 1
    assert len(info["infotexts"]) == 5 and info["all_seeds"] == [5, 6, 7, 8]
    grid = decode_png(body["images"][0])
    assert grid.size == (128, 128)  # four images, two rows (A1111's square-root rule)
    assert grid.info["parameters"] == info["infotexts"][1]  # the first image's infotext
    first = decode_png(body["images"][1]).convert("RGB")
    assert list(grid.convert("RGB").crop((0, 0, 64, 64)).getdata()) == list(first.getdata())
    saved = sorted(grids_folder(server).glob("grid-*.png"))
    assert saved and Image.open(saved[-1]).info["parameters"] == info["infotexts"][1]


def test_no_grid_for_one_image_nor_when_the_request_does_not_save(client, server):
    before = len(list(grids_folder(server).glob("grid-*.png"))) if grids_folder(server).exists() else 0
    one = client.post("/sdapi/v1/txt2img", json={**FAST, "save_images": True}).json()
    assert len(one["images"]) == 1 and json.loads(one["info"])["index_of_first_image"] == 0
    unsaved = client.post("/sdapi/v1/txt2img", json={**FAST, "batch_size": 2}).json()  # A1111's default: not saved
    assert len(unsaved["images"]) == 2 and json.loads(unsaved["info"])["index_of_first_image"] == 0
    listed = client.post("/sdapi/v1/txt2img", json={**FAST, "save_images": True, "script_name": "prompts from file "
                         "or textbox", "script_args": [False, False, "start", "a\nb"]}).json()
    assert len(listed["images"]) == 2  # the script asks for no grid, as A1111's
    after = len(list(grids_folder(server).glob("grid-*.png"))) if grids_folder(server).exists() else 0
    assert after == before


def test_the_settings_turn_either_half_off(client, server):
    assert client.post("/sdapi/v1/options", json={"return_grid": False}).status_code == 200
    try:
        body = client.post("/sdapi/v1/txt2img", json={**FAST, "batch_size": 2, "save_images": True}).json()
        assert len(body["images"]) == 2  # saved, not returned
    finally:
        client.post("/sdapi/v1/options", json={"return_grid": True})
    job_id = client.post("/api/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "steps": 2,
                                                 "batch_size": 2}).json()["id"]
    view = wait_for_job(client, job_id, timeout=120)
    assert view["result"]["grid"]["path"].startswith("txt2img-grids/") and view["result"]["grid"]["rows"] == 1
    assert (server.services.paths.outputs_dir / view["result"]["grid"]["path"]).is_file()
