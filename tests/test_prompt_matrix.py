"""A1111's "Prompt matrix" (`scripts/prompt_matrix.py`): the combinations of the `|` parts (a table), and a job
over `/sdapi/v1/txt2img` with `script_args` as A1111's clients send them (put_at_start, different_seeds,
prompt_type, variations_delimiter, margin_size): an image per combination, the grid with the parts' legends first,
A1111's seeds."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from PIL import Image
from test_api_support import LiveServer, decode_png, make_data_dir

from sdwebui.pipelines.grids import image_grid
from sdwebui.scripts.prompt_matrix import draw_prompt_matrix, matrix_prompts

FAST = {"width": 64, "height": 64, "steps": 1, "sampler_name": "Euler", "seed": 40}
MATRIX = "prompt matrix"


@pytest.mark.parametrize("prompt, at_start, delimiter, prompts", [
    ("a cat", False, "comma", ["a cat"]),
    ("a cat|red|hat", False, "comma", ["a cat", "a cat, red", "a cat, hat", "a cat, red, hat"]),
    ("a cat | red, | hat", False, "space", ["a cat ", "a cat  red", "a cat  hat", "a cat  red hat"]),
    ("a cat|red|hat", True, "comma", ["a cat", "red, a cat", "hat, a cat", "red, hat, a cat"]),
    ("x|a|b|c", False, "comma", ["x", "x, a", "x, b", "x, a, b", "x, c", "x, a, c", "x, b, c", "x, a, b, c"]),
])
def test_every_combination_of_the_parts(prompt, at_start, delimiter, prompts):
    assert matrix_prompts(prompt, at_start, delimiter) == prompts


def test_the_legends_strike_out_the_parts_that_are_off():
    cells = [Image.new("RGB", (100, 100), "red")] * 4
    grid = draw_prompt_matrix(image_grid(cells, rows=2), 100, 100, ["a cat", "red", "hat"])
    pad_left = 75
    assert grid.width == pad_left + 200 and grid.height > 200
    top = grid.height - 200

    def darkest(box):  # text is antialiased: black text has dark pixels, grey (153) text none darker than grey
        return min(sum(grid.getpixel((x, y))) // 3 for x in range(box[0], box[2]) for y in range(box[1], box[3]))

    assert 140 <= darkest((pad_left, 0, pad_left + 100, top)) <= 153  # column 1: "red" off, grey
    assert darkest((pad_left + 100, 0, pad_left + 200, top)) < 100  # column 2: "red" on, black
    assert 140 <= darkest((0, top, pad_left, top + 100)) <= 153 and darkest((0, top + 100, pad_left, top + 200)) < 100


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("matrix"), tiny_sd1_path, "tiny-sd1.safetensors")
    with LiveServer(data, ui=False) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def test_a_matrix_over_the_a1111_api(client, server):
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cat|red|hat", "save_images": True,
                                                  "script_name": MATRIX,
                                                  "script_args": [False, True, "positive", "comma", 2]})
    assert body.status_code == 200, body.text
    body = body.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 5 and info["index_of_first_image"] == 1
    assert info["all_prompts"] == ["a cat", "a cat, red", "a cat, hat", "a cat, red, hat"]
    assert info["all_seeds"] == [40, 41, 42, 43]  # "use different seed for each picture"
    assert len(info["infotexts"]) == 5 and info["infotexts"][0] == info["infotexts"][1]
    grid, *cells = [decode_png(data) for data in body["images"]]
    # 2x2 with a 2 px margin, the legends above and left; the cells where the combination says
    pad_left = 64 * 3 // 4
    assert grid.width == pad_left + 2 * 64 + 2
    top = grid.height - (2 * 64 + 2)
    assert grid.crop((pad_left + 66, top + 66, pad_left + 130, top + 130)).tobytes() == cells[3].tobytes()
    folder = server.services.paths.outputs_dir / "txt2img-grids" / dt.date.today().isoformat()
    assert [path.name for path in folder.glob("prompt_matrix-*.png")] == ["prompt_matrix-0000.png"]


def test_the_negative_prompt_with_one_seed(client):
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cat", "negative_prompt": "blur|noise",
                                                  "script_name": MATRIX,
                                                  "script_args": [True, False, "negative", "space", 0]}).json()
    info = json.loads(body["info"])
    assert info["all_negative_prompts"] == ["blur", "noise blur"] and info["all_seeds"] == [40, 40]
    assert info["all_prompts"] == ["a cat", "a cat"]
    assert decode_png(body["images"][0]).size[0] == 128  # one row of two, no row legends


def test_too_many_parts_and_bad_choices_are_422(client):
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "x" + "|p" * 13, "script_name": MATRIX})
    assert response.status_code == 422 and response.json()["field"] == "script_args.2", response.text
    assert "13 variable parts make 8192 images" in response.text
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a|b", "script_name": MATRIX,
                                                      "script_args": [False, False, "sideways"]})
    assert response.status_code == 422 and response.json()["field"] == "script_args.2", response.text
