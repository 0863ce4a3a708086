"""A1111's X/Y/Z plot (`scripts/xyz_grid.py`, 1.10): the axis lists of both tabs in A1111's order, every axis
type's value syntax (tables), bad input as 422s naming `script_args[i]` before anything runs, and plots on a tiny
model through `/sdapi/v1/txt2img` with `script_args` written as A1111's clients send them (positional, A1111's
signature), checking the cell order, the seeds, the grid's size and legends, and the infotext."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from PIL import Image
from test_api_support import LiveServer, decode_png, make_data_dir, wait_for_job

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.scripts.xyz_grid import (
    MAX_CELLS,
    axes_for,
    csv_text,
    csv_values,
    expand_numbers,
    parse_axis,
    processing_order,
)

FAST = {"prompt": "a red cat", "negative_prompt": "", "width": 64, "height": 64, "steps": 1,
        "sampler_name": "Euler", "seed": 100}
XYZ = "x/y/z plot"

# A1111 1.10's lists (`current_axis_options` of each tab), by the index clients send.
TXT2IMG_AXES = [
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R",
    "Prompt order", "Sampler", "Hires sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn",
    "Sigma min", "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma",
    "Schedule rho", "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising",
    "Initial noise multiplier", "Extra noise", "Hires upscaler", "VAE", "Styles", "UniPC Order", "Face restore",
    "Token merging ratio", "Token merging ratio high-res", "Always discard next-to-last sigma",
    "SGM noise multiplier", "Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size",
]
IMG2IMG_AXES = [
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale", "Prompt S/R",
    "Prompt order", "Sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min",
    "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho",
    "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising", "Initial noise multiplier",
    "Extra noise", "Cond. Image Mask Weight", "VAE", "Styles", "UniPC Order", "Face restore", "Token merging ratio",
    "Token merging ratio high-res", "Always discard next-to-last sigma", "SGM noise multiplier",
    "Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size",
]
UNAVAILABLE = {"Negative Guidance minimum sigma", "Beta schedule alpha", "Beta schedule beta", "Extra noise",
               "UniPC Order", "SGM noise multiplier", "FP8 mode"}


def xyz_args(x_type=1, x_values="", y_type=0, y_values="", z_type=0, z_values="", *, x_dropdown=(), y_dropdown=(),
             z_dropdown=(), draw_legend=True, include_lone_images=False, include_sub_grids=False,
             no_fixed_seeds=False, vary_seeds_x=False, vary_seeds_y=False, vary_seeds_z=False, margin_size=0,
             csv_mode=False) -> list:
    """`script_args` as A1111 1.10's `run(p, x_type, x_values, x_values_dropdown, ...)` takes them."""
    return [x_type, x_values, list(x_dropdown), y_type, y_values, list(y_dropdown), z_type, z_values,
            list(z_dropdown), draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x,
            vary_seeds_y, vary_seeds_z, margin_size, csv_mode]


# ---- the axis lists ---------------------------------------------------------------------------------------------


def test_the_axis_lists_are_a1111s_for_each_tab():
    assert [axis.label for axis in axes_for("txt2img")] == TXT2IMG_AXES
    assert [axis.label for axis in axes_for("img2img")] == IMG2IMG_AXES
    for tab, labels in (("txt2img", TXT2IMG_AXES), ("img2img", IMG2IMG_AXES)):
        missing = {axis.label for axis in axes_for(tab) if axis.missing or (axis.tab_missing or ("",))[0] == tab}
        expected = UNAVAILABLE | ({"Initial noise multiplier"} if tab == "txt2img" else
                                  {"Refiner checkpoint", "Refiner switch at", "Token merging ratio high-res"})
        assert missing == expected


# ---- value syntax -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, values", [
    ("1, 2, 3", ["1", "2", "3"]),
    ('a, "b, c", d', ["a", "b, c", "d"]),
    ("  spaced  ,x", ["spaced", "x"]),
    ("", []),
])
def test_csv_values(text, values):
    assert csv_values(text) == values


def test_csv_text_round_trips_a_dropdown():
    assert csv_text(["Euler a", "DPM++ 2M, extra"]) == 'Euler a,"DPM++ 2M, extra"'
    assert csv_values(csv_text(["Euler a", "DPM++ 2M, extra"])) == ["Euler a", "DPM++ 2M, extra"]


@pytest.mark.parametrize("items, values", [
    (["1", "2", "5"], [1, 2, 5]),
    (["1-5"], [1, 2, 3, 4, 5]),
    (["1-5 (+2)"], [1, 3, 5]),
    (["10-1 (-3)"], [10, 7, 4]),  # A1111 adds 1 to the end whatever the step's sign: range(10, 2, -3)
    (["5-1"], []),  # a falling range without a negative step is empty, as A1111's range()
    (["1-10 [5]"], [1, 3, 5, 7, 10]),  # numpy's linspace, truncated
    (["-3", "0-2"], [-3, 0, 1, 2]),
    (["", "7"], [7]),
])
def test_integer_values_and_ranges(items, values):
    assert expand_numbers(items, int) == values


@pytest.mark.parametrize("items, values", [
    (["1.5", "7"], [1.5, 7.0]),
    (["0.5-1.5 (+0.25)"], [0.5, 0.75, 1.0, 1.25, 1.5]),
    (["1-2 [3]"], [1.0, 1.5, 2.0]),
    (["1-3"], [1.0, 2.0, 3.0]),
])
def test_float_values_and_ranges(items, values):
    assert expand_numbers(items, float) == pytest.approx(values)


@pytest.mark.parametrize("items, kind, message", [
    (["1.5"], int, "not a whole number"),
    (["abc"], float, "not a number"),
    (["1-5 (+0)"], int, "must not be 0"),
    (["1-100000"], int, f"more than {MAX_CELLS}"),
    (["0-1 [99999]"], float, f"more than {MAX_CELLS}"),
])
def test_bad_numbers_say_which(items, kind, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        expand_numbers(items, kind)


def axis(tab: str, label: str, text: str = "", dropdown=(), csv_mode=False, prompt=("a red cat", "blurry")):
    index = [a.label for a in axes_for(tab)].index(label)
    cls = Txt2ImgParams if tab == "txt2img" else Img2ImgParams
    return parse_axis(tab, cls, prompt, "X", index, text, dropdown, csv_mode, 0)


@pytest.mark.parametrize("tab, label, text, values, labels", [
    ("txt2img", "Nothing", "whatever", (0,), [""]),
    ("txt2img", "Seed", "1, -1, 3", (1, -1, 3), ["Seed: 1", "Seed: -1", "Seed: 3"]),
    ("txt2img", "Var. seed", "4-5", (4, 5), ["Var. seed: 4", "Var. seed: 5"]),
    ("txt2img", "Var. strength", "0-1 [3]", (0.0, 0.5, 1.0), ["Var. strength: 0.0", "Var. strength: 0.5",
                                                             "Var. strength: 1.0"]),
    ("txt2img", "Steps", "1-3", (1, 2, 3), ["Steps: 1", "Steps: 2", "Steps: 3"]),
    ("txt2img", "Hires steps", "0, 5", (0, 5), ["Hires steps: 0", "Hires steps: 5"]),
    ("txt2img", "CFG Scale", "3, 7.5", (3.0, 7.5), ["CFG Scale: 3.0", "CFG Scale: 7.5"]),
    ("img2img", "Image CFG Scale", "1.5", (1.5,), ["Image CFG Scale: 1.5"]),
    ("txt2img", "Prompt S/R", "red, blue, green", ("red", "blue", "green"), ["red", "blue", "green"]),
    ("txt2img", "Prompt order", "red, cat", (("red", "cat"), ("cat", "red")), ["red, cat", "cat, red"]),
    ("txt2img", "Sampler", "Euler a, k_dpmpp_2m", ("Euler a", "k_dpmpp_2m"), ["Euler a", "k_dpmpp_2m"]),
    ("txt2img", "Hires sampler", "Euler", ("Euler",), ["Hires sampler: Euler"]),
    ("img2img", "Sampler", "DDIM", ("DDIM",), ["DDIM"]),
    ("txt2img", "Checkpoint name", "dir/a.safetensors, b", ("dir/a.safetensors", "b"), ["a.safetensors", "b"]),
    ("txt2img", "Sigma Churn", "0, 0.5", (0.0, 0.5), ["Sigma Churn: 0.0", "Sigma Churn: 0.5"]),
    ("txt2img", "Sigma min", "0.1", (0.1,), ["Sigma min: 0.1"]),
    ("txt2img", "Sigma max", "10", (10.0,), ["Sigma max: 10.0"]),
    ("txt2img", "Sigma noise", "1", (1.0,), ["Sigma noise: 1.0"]),
    ("txt2img", "Schedule type", "karras, Uniform", ("Karras", "Uniform"),
     ["Schedule type: Karras", "Schedule type: Uniform"]),
    ("txt2img", "Schedule min sigma", "0.03", (0.03,), ["Schedule min sigma: 0.03"]),
    ("txt2img", "Schedule max sigma", "14.6", (14.6,), ["Schedule max sigma: 14.6"]),
    ("txt2img", "Schedule rho", "7", (7.0,), ["Schedule rho: 7.0"]),
    ("txt2img", "Eta", "0, 1", (0.0, 1.0), ["Eta: 0.0", "Eta: 1.0"]),
    ("txt2img", "Clip skip", "1-2", (1, 2), ["Clip skip: 1", "Clip skip: 2"]),
    ("txt2img", "Denoising", "0.3, 0.7", (0.3, 0.7), ["Denoising: 0.3", "Denoising: 0.7"]),
    ("img2img", "Initial noise multiplier", "1.1", (1.1,), ["Initial noise multiplier: 1.1"]),
    ("txt2img", "Hires upscaler", "Latent, Lanczos", ("Latent", "Lanczos"),
     ["Hires upscaler: Latent", "Hires upscaler: Lanczos"]),
    ("img2img", "Cond. Image Mask Weight", "0.5", (0.5,), ["Cond. Image Mask Weight: 0.5"]),
    ("txt2img", "VAE", "Automatic, None", ("Automatic", "None"), ["VAE: Automatic", "VAE: None"]),
    ("txt2img", "Styles", '"", "a, b"', ("", "a, b"), ["Styles: ", "Styles: a, b"]),
    ("txt2img", "Always discard next-to-last sigma", "true, FALSE", ("True", "False"),
     ["Always discard next-to-last sigma: True", "Always discard next-to-last sigma: False"]),
    ("txt2img", "Refiner checkpoint", "None, ref.safetensors", ("None", "ref.safetensors"),
     ["None", "ref.safetensors"]),
    ("txt2img", "Refiner switch at", "0.5-0.9 [2]", (0.5, 0.9), ["Refiner switch at: 0.5", "Refiner switch at: 0.9"]),
    ("img2img", "RNG source", "cpu, NV", ("CPU", "NV"), ["RNG source: CPU", "RNG source: NV"]),
    ("txt2img", "Size", "64x64, 128 x 64", ((64, 64), (128, 64)), ["Size: 64x64", "Size: 128x64"]),
])
def test_every_axis_parses_its_values(tab, label, text, values, labels):
    choice = axis(tab, label, text, csv_mode=True)
    assert choice.values == pytest.approx(values) if isinstance(values[0], float) else choice.values == values
    assert choice.labels == labels


def test_a_list_axis_takes_its_dropdown_unless_csv_mode():
    choice = axis("txt2img", "Sampler", "Euler", dropdown=("DDIM", "Euler a"))
    assert choice.values == ("DDIM", "Euler a") and choice.text == "DDIM,Euler a" and choice.values_loc == (
        "script_args", 2)
    assert axis("txt2img", "Sampler", "Euler", dropdown=("DDIM",), csv_mode=True).values == ("Euler",)
    # An API client that sends only the text (empty dropdown) gets its text values.
    assert axis("txt2img", "Sampler", "Euler").values == ("Euler",)


@pytest.mark.parametrize("tab, label, text, loc, message", [
    ("txt2img", "Steps", "1, x", 1, "'x' is not a whole number"),
    ("txt2img", "Steps", "0", 1, "Steps 0: must be an integer between 1"),
    ("txt2img", "CFG Scale", "500", 1, "CFG Scale 500.0: must be a number between 0 and 100"),
    ("txt2img", "Sampler", "Euler, Bogus", 1, "Unknown sampler: Bogus"),
    ("txt2img", "Schedule type", "Wobbly", 1, "Unknown schedule type: Wobbly"),
    ("txt2img", "Prompt S/R", "purple, blue", 1, "did not find purple in prompt or negative prompt"),
    ("txt2img", "Size", "64by64", 1, "not a size"),
    ("txt2img", "Size", "60x64", 1, "width must be a multiple of 8"),
    ("txt2img", "RNG source", "tpu", 1, "not one of GPU, CPU, NV"),
    ("txt2img", "Steps", "", 1, "no values for Steps"),
    ("txt2img", "Prompt order", "a, b, c, d, e, f, g", 1, "more than 4096"),
    ("txt2img", "Initial noise multiplier", "1", 0, "applies to img2img only"),
    ("img2img", "Refiner checkpoint", "x", 0, "img2img has no refiner here"),
])
def test_bad_axis_values_name_the_argument(tab, label, text, loc, message):
    with pytest.raises(ParamError) as error:
        axis(tab, label, text, csv_mode=True)
    assert error.value.loc == ("script_args", loc) and message in error.value.message, error.value


def test_an_axis_type_outside_the_tabs_list_is_refused():
    with pytest.raises(ParamError) as error:
        parse_axis("txt2img", Txt2ImgParams, ("", ""), "Y", len(TXT2IMG_AXES), "", (), False, 3)
    assert error.value.loc == ("script_args", 3) and "not an axis type of txt2img" in error.value.message


@pytest.mark.parametrize("costs, order", [
    ((0, 0, 0), [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]),
    # a checkpoint axis on X: X is the outer loop (two model loads, not four), then Z, then Y
    ((1.0, 0, 0.7), [(0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 0, 0), (1, 1, 0), (1, 0, 1), (1, 1, 1)]),
    ((0, 1.0, 0), [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (1, 1, 0), (0, 1, 1), (1, 1, 1)]),
])
def test_cells_run_in_a1111s_order(costs, order):
    assert processing_order(costs, (2, 2, 2)) == order


# ---- through the server ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("xyz"), tiny_sd1_path, "tiny-sd1.safetensors")
    (data / "styles.csv").write_text('name,prompt,negative_prompt\nInk,"{prompt}, ink",smudge\n', encoding="utf-8")
    with LiveServer(data, ui=False) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def legend_is_drawn(image: Image.Image, box: tuple[int, int, int, int]) -> bool:
    """Some dark (text) pixels in `box` of a white legend area."""
    return any(sum(image.getpixel((x, y))) < 300 for x in range(box[0], box[2]) for y in range(box[1], box[3]))


def test_a_2x2x2_plot_over_the_a1111_api(client, server):
    args = xyz_args(1, "11, 22", 4, "1-2", 7, "red, blue", include_lone_images=True, include_sub_grids=True,
                    margin_size=4)
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "script_name": XYZ, "script_args": args,
                                                  "save_images": True})
    assert body.status_code == 200, body.text
    body = body.json()
    info = json.loads(body["info"])
    images = [decode_png(data) for data in body["images"]]
    # the grid of grids, the two Z grids, then the eight cells in X, Y, Z order
    assert len(images) == 1 + 2 + 8 and info["index_of_first_image"] == 1
    cells = images[3:]
    assert all(cell.size == (64, 64) for cell in cells)
    # A1111's lists: the sub-grids' (their first cell's) and every cell's; none for the grid of grids
    assert info["all_seeds"] == [11, 11] + [11, 22] * 4
    cell_texts = [parse_infotext(text) for text in info["infotexts"][3:]]
    assert [(t["Seed"], t["Steps"], t["Prompt"]) for t in cell_texts] == [
        ("11", "1", "a red cat"), ("22", "1", "a red cat"), ("11", "2", "a red cat"), ("22", "2", "a red cat"),
        ("11", "1", "a blue cat"), ("22", "1", "a blue cat"), ("11", "2", "a blue cat"), ("22", "2", "a blue cat")]
    # cells that differ only in the seed differ; the same seed and steps with another prompt differ too
    assert cells[0].tobytes() != cells[1].tobytes() and cells[0].tobytes() != cells[4].tobytes()

    # a Z grid: 2x2 cells 4 px apart under the X legends and right of the Y legends (A1111's sizes)
    sub = images[1]
    pad_left = 64 * 3 // 4
    assert sub.width == pad_left + 2 * 64 + 4 and sub.height > 2 * 64 + 4
    pad_top = sub.height - (2 * 64 + 4)
    assert sub.crop((pad_left, pad_top, pad_left + 64, pad_top + 64)).tobytes() == cells[0].tobytes()
    assert sub.crop((pad_left + 68, pad_top + 68, pad_left + 132, pad_top + 132)).tobytes() == cells[3].tobytes()
    assert legend_is_drawn(sub, (pad_left, 0, pad_left + 64, pad_top))  # "Seed: 11" above the first column
    assert legend_is_drawn(sub, (0, pad_top, pad_left, pad_top + 64))  # "Steps: 1" left of the first row
    assert not legend_is_drawn(sub, (pad_left + 64, pad_top, pad_left + 68, pad_top + 64))  # the margin is white
    # the grid of grids: both Z grids side by side under the Z legends ("red", "blue")
    grid = images[0]
    assert grid.width == 2 * sub.width and grid.height > sub.height
    z_top = grid.height - sub.height
    assert legend_is_drawn(grid, (0, 0, sub.width, z_top))
    assert grid.crop((sub.width, z_top, 2 * sub.width, grid.height)).tobytes() == images[2].tobytes()

    # A1111's infotext of the grid: the first cell's, with the script's entries
    grid_text = parse_infotext(info["infotexts"][0])
    assert grid_text["Script"] == "X/Y/Z plot" and grid_text["X Type"] == "Seed"
    assert grid_text["X Values"] == "11, 22" and grid_text["Fixed X Values"] == "11, 22"
    assert (grid_text["Y Type"], grid_text["Y Values"]) == ("Steps", "1-2")
    assert (grid_text["Z Type"], grid_text["Z Values"]) == ("Prompt S/R", "red, blue")
    sub_text = parse_infotext(info["infotexts"][2])
    assert sub_text["Y Type"] == "Steps" and "Z Type" not in sub_text and sub_text["Prompt"] == "a blue cat"
    assert images[0].info["parameters"] == info["infotexts"][0]

    # saved: the grid of grids and, with sub-grids asked for, each Z grid, as xyz_grid-NNNN.png (A1111's grid_save)
    folder = server.services.paths.outputs_dir / "txt2img-grids" / dt.date.today().isoformat()
    assert sorted(path.name for path in folder.glob("xyz_grid-*.png")) == [
        "xyz_grid-0000.png", "xyz_grid-0001.png", "xyz_grid-0002.png"]
    saved = Image.open(folder / "xyz_grid-0000.png")
    assert saved.size == grid.size and saved.info["parameters"] == info["infotexts"][0]


def test_by_default_only_the_grid_comes_back(client):
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "seed": -1, "script_name": XYZ,
                                                  "script_args": xyz_args(1, "-1, 5", csv_mode=False)}).json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 1 and info["index_of_first_image"] == 1
    assert len(info["infotexts"]) == 3 and len(info["all_seeds"]) == 2 and info["all_seeds"][1] == 5
    assert info["all_seeds"][0] not in (-1, 5)  # a random seed, fixed before the job
    fixed = parse_infotext(info["infotexts"][0])["Fixed X Values"]
    assert fixed == f"{info['all_seeds'][0]}, 5"
    grid = decode_png(body["images"][0])
    assert grid.size[0] == 128 and grid.size[1] > 64  # no Y legend: no left pad


def test_vary_seeds_and_list_axes_from_the_dropdown(client, server):
    args = xyz_args(9, "", 0, "", 0, "", x_dropdown=["Euler", "DDIM"], vary_seeds_x=True, draw_legend=False,
                    include_lone_images=True)
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "script_name": XYZ, "script_args": args}).json()
    info = json.loads(body["info"])
    texts = [parse_infotext(text) for text in info["infotexts"][1:]]
    assert [(t["Sampler"], t["Seed"]) for t in texts] == [("Euler", "100"), ("DDIM", "101")]
    assert parse_infotext(info["infotexts"][0])["X Values"] == "Euler,DDIM"
    assert decode_png(body["images"][0]).size == (128, 64)  # no legend


def test_styles_and_vae_axes(client):
    args = xyz_args(30, '"", Ink', 29, "Automatic, None", csv_mode=True, include_lone_images=True)
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "script_name": XYZ, "script_args": args})
    assert body.status_code == 200, body.text
    prompts = json.loads(body.json()["info"])["all_prompts"]
    assert prompts == ["a red cat", "a red cat, ink", "a red cat", "a red cat, ink"]


@pytest.mark.parametrize("args, field, message", [
    (xyz_args(4, "1, two"), "script_args.1", "'two' is not a whole number"),
    (xyz_args(9, "Euler, Nope", csv_mode=True), "script_args.1", "Unknown sampler: Nope"),
    (xyz_args(9, "", x_dropdown=["Nope"]), "script_args.2", "Unknown sampler: Nope"),
    (xyz_args(11, "missing.safetensors", csv_mode=True), "script_args.1", "missing.safetensors"),
    (xyz_args(1, "1", 29, "NoSuchVae", csv_mode=True), "script_args.4", "NoSuchVae"),
    (xyz_args(28, "NoSuchUpscaler", csv_mode=True), "script_args.1", "NoSuchUpscaler"),
    (xyz_args(1, "1", 30, "Nope", csv_mode=True), "script_args.4", "Nope"),
    (xyz_args(1, "1-64", 4, "1-64", 6, "1-2"), "script_args.7", "8192 cells, more than 4096"),
    (xyz_args(32, "true"), "script_args.1", "no face restoration model is installed"),
    (xyz_args(99, "1"), "script_args.0", "must be between 0 and 44"),
    (xyz_args(42, "1"), "script_args.0", "not an axis type of txt2img"),  # in img2img's list, not txt2img's
])
def test_bad_plots_are_422_naming_the_argument_before_anything_runs(client, server, args, field, message):
    jobs_before = len(server.services.store.jobs(limit=10_000))
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "script_name": XYZ, "script_args": args})
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and message in response.text, response.text
    assert len(server.services.store.jobs(limit=10_000)) == jobs_before  # refused before it was queued


def test_the_native_api_runs_a_plot(client):
    response = client.post("/api/v1/jobs", json={
        "prompt": "a red cat", "width": 64, "height": 64, "steps": 1, "sampler": "Euler", "seed": 3,
        "script_name": "X/Y/Z plot", "script_args": xyz_args(6, "1, 9")})
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"], timeout=120)
    assert job["status"] == "done", job
    result = job["result"]
    assert result["extra_images"] == 1 and len(result["images"]) == 2  # the grid, and the two cells saved
    assert [parse_infotext(text)["CFG scale"] for text in result["infotexts"][1:]] == ["1", "9"]


def test_script_info_lists_the_plot_with_a1111s_arguments(client):
    info = client.get("/sdapi/v1/script-info").json()
    plots = [entry for entry in info if entry["name"] == XYZ]
    assert [entry["is_img2img"] for entry in plots] == [False, True]
    labels = [arg["label"] for arg in plots[0]["args"]]
    assert len(labels) == 18 and labels[:3] == ["X type", "X values", "X values"] and labels[-1] == (
        "Use text inputs instead of dropdowns")
    assert plots[0]["args"][2]["value"] == [] and plots[0]["args"][0]["value"] == 1  # X: Seed, as A1111's UI
    assert XYZ in client.get("/sdapi/v1/scripts").json()["txt2img"]


def test_img2img_plots_use_img2img_axes_and_grids_folder(client, server):
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    init = base64.b64encode(buffer.getvalue()).decode()
    denoising = IMG2IMG_AXES.index("Denoising")
    body = client.post("/sdapi/v1/img2img", json={
        **FAST, "steps": 2, "init_images": [init], "save_images": True, "script_name": XYZ,
        "script_args": xyz_args(denoising, "0.5, 1", IMG2IMG_AXES.index("Image CFG Scale"), "1.5")})
    assert body.status_code == 200, body.text
    info = json.loads(body.json()["info"])
    assert [parse_infotext(text)["Denoising strength"] for text in info["infotexts"][1:]] == ["0.5", "1"]
    folder = server.services.paths.outputs_dir / "img2img-grids" / dt.date.today().isoformat()
    assert [path.name for path in folder.glob("xyz_grid-*.png")] == ["xyz_grid-0000.png"]


def test_grid_options_extended_file_names(client, server):
    options = client.get("/sdapi/v1/options").json()
    assert options["grid_format"] == "png" and options["grid_extended_filename"] is False
    assert client.post("/sdapi/v1/options", json={"grid_extended_filename": True}).status_code == 200
    try:
        client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 77, "save_images": True, "script_name": XYZ,
                                               "script_args": xyz_args(6, "2, 3")}).raise_for_status()
        client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 78, "batch_size": 2,
                                               "save_images": True}).raise_for_status()
    finally:
        client.post("/sdapi/v1/options", json={"grid_extended_filename": False})
    folder = server.services.paths.outputs_dir / "txt2img-grids" / dt.date.today().isoformat()
    names = {path.name for path in folder.glob("*.png")}
    assert any(name.startswith("xyz_grid-") and name.endswith("-77.png") for name in names), names
    assert any(name.startswith("grid-") and name.endswith("-78.png") for name in names), names


def test_one_progress_bar_over_the_cells_and_skip_then_interrupt(client):
    """Four cells of 60 steps: progress counts the cells as A1111's job_count; Skip ends the running cell only,
    Interrupt ends the plot, and the cells made so far come back (the others as blanks in the grid)."""
    from test_api_support import wait_until

    response = client.post("/api/v1/jobs", json={
        "prompt": "a red cat", "width": 64, "height": 64, "steps": 60, "sampler": "Euler", "seed": 3,
        "script_name": "X/Y/Z plot", "script_args": xyz_args(1, "1, 2, 3, 4")})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    def progress():
        view = client.get(f"/api/v1/jobs/{job_id}").json()
        return view["status"] == "running" and view["progress"]

    first = wait_until(lambda: (p := progress()) and p["total_steps"] == 60 and p["step"] >= 1 and p, timeout=120)
    assert first["batch_count"] == 4 and first["batch_index"] == 0
    assert client.post(f"/api/v1/jobs/{job_id}/skip").status_code == 200
    wait_until(lambda: (p := progress()) and p["batch_index"] >= 1, timeout=120)  # the next cell runs
    assert client.post(f"/api/v1/jobs/{job_id}/interrupt").status_code == 200
    job = wait_for_job(client, job_id, timeout=120)
    assert job["status"] in ("done", "interrupted"), job
    # as A1111, a cell that made no image holds a blank place in the grid (no seed, no infotext)
    seeds = job["result"]["seeds"]
    assert len(seeds) == 4 and seeds[0] is None, seeds  # the skipped cell
    made = [seed for seed in seeds if seed is not None]
    assert made[:1] == [2] and len(made) < 3, seeds  # the cell running at Interrupt keeps its image; no more ran
