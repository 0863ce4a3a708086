"""A1111's img2img scripts that drive their job (`pipelines.jobs.JobScript`): SD upscale, Outpainting mk2, Poor
man's outpainting and Loopback. Tile geometry and blending against A1111's `split_grid` / `combine_grid`
formulas (numpy), each script's logic against a recording `ScriptJob`, and the scripts over `/sdapi/v1/img2img`
with A1111-shaped `script_args` on the tiny model."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image
from test_api_support import LiveServer, decode_png, make_data_dir, wait_for_job

from sdwebui.pipelines.image_tiles import combine_grid, split_grid, tile_starts
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.jobs import TaskRunner, drive_tasks
from sdwebui.pipelines.scripts import GenerationTask, ScriptRegistry
from sdwebui.scripts import builtin_scripts
from sdwebui.scripts.loopback import Loopback, denoising_strength
from sdwebui.scripts.outpainting_mk2 import match_histograms
from sdwebui.scripts.poor_mans_outpainting import PoorMansOutpainting, expansion
from sdwebui.scripts.sd_upscale import SDUpscale
from sdwebui.server.payloads import encode_png

FAST = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "cfg_scale": 1}


def gradient(width: int, height: int, offset: int = 0) -> Image.Image:
    x = np.arange(width)[None, :, None]
    y = np.arange(height)[:, None, None]
    array = np.concatenate([(x * 255 // max(1, width - 1)).repeat(height, 0),
                            (y * 255 // max(1, height - 1)).repeat(width, 1),
                            np.full((height, width, 1), offset)], axis=2)
    return Image.fromarray(array.astype(np.uint8), "RGB")


# ---- tiles: A1111's split_grid / combine_grid ------------------------------------------------------------------


def a1111_starts(length: int, tile: int, overlap: int) -> list[int]:
    """A1111 `images.split_grid`'s x (or y) positions, written out from its source."""
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [length - tile if int(i * step) + tile >= length else int(i * step) for i in range(count)]


@pytest.mark.parametrize("length,tile,overlap", [(1024, 512, 64), (1000, 512, 64), (128, 64, 32), (64, 64, 16),
                                                 (200, 64, 0), (777, 96, 48)])
def test_tile_positions_are_a1111s(length, tile, overlap):
    assert tile_starts(length, tile, overlap) == a1111_starts(length, tile, overlap)


def test_tiles_cover_the_image_and_unchanged_tiles_recombine_to_it():
    image = gradient(200, 136, 40)
    grid = split_grid(image, 64, 64, 16)
    assert grid.shape == (4, 3) and all(tile.image.size == (64, 64) for tile in grid.tiles())
    assert [row.y for row in grid.rows] == a1111_starts(136, 64, 16)
    assert np.array_equal(np.asarray(combine_grid(grid)), np.asarray(image))


def test_overlaps_blend_with_a1111s_ramp():
    """Two tiles of flat colours: across the overlap, column i is the right tile at weight int(i * 255 / overlap)
    (Pillow's paste through that mask), before it the left tile, after it the right one; rows likewise."""
    overlap = 16
    grid = split_grid(Image.new("RGB", (112, 64)), 64, 64, overlap)
    assert [tile.x for tile in grid.tiles()] == [0, 48]
    grid.rows[0].tiles[0].image = Image.new("RGB", (64, 64), (200, 0, 0))
    grid.rows[0].tiles[1].image = Image.new("RGB", (64, 64), (0, 0, 0))
    row = np.asarray(combine_grid(grid))[10, :, 0].astype(int)
    weights = (np.arange(overlap, dtype=np.float32) * 255 / overlap).astype(np.uint8).astype(int)
    expected = np.round(200 * (255 - weights) / 255)
    assert np.all(row[:48] == 200) and np.all(row[64:] == 0)
    assert np.abs(row[48:64] - expected).max() <= 1 and row[48] == 200 and row[63] < row[49]

    grid = split_grid(Image.new("RGB", (64, 112)), 64, 64, overlap)
    grid.rows[0].tiles[0].image = Image.new("RGB", (64, 64), (0, 0, 0))
    grid.rows[1].tiles[0].image = Image.new("RGB", (64, 64), (0, 200, 0))
    column = np.asarray(combine_grid(grid))[:, 5, 1].astype(int)
    assert np.all(column[:48] == 0) and np.all(column[64:] == 200)
    assert np.abs(column[48:64] - np.round(200 * weights / 255)).max() <= 1


def test_a_tile_larger_than_the_image_is_the_image():
    grid = split_grid(gradient(40, 48), 64, 64, 16)
    assert grid.shape == (1, 1) and grid.tiles()[0].image.size == (40, 48)
    with pytest.raises(ValueError):
        split_grid(gradient(100, 100), 64, 64, 64)


# ---- a recording ScriptJob ------------------------------------------------------------------------------------


@dataclass
class FakeResult:
    params: Img2ImgParams
    images: list
    seeds: list
    infotexts: list
    notes: list = field(default_factory=list)
    interrupted: bool = False
    subseeds: list = field(default_factory=list)
    prompts: list = field(default_factory=list)
    negative_prompts: list = field(default_factory=list)


class RecordingJob:
    """Runs a task by handing back its init images (one per image of the batch), recolored by `paint`, with
    seeds as the engine gives them; records every task, save and grid."""

    def __init__(self, paint=None, skip_runs=(), interrupt_after: int | None = None):
        self.tasks: list[GenerationTask] = []
        self.saved: list = []
        self.grids: list = []
        self.paint = paint or (lambda image, index: image)
        self.skip_runs = set(skip_runs)
        self.interrupt_after = interrupt_after
        self.runner = TaskRunner(self._run, self._save, self._grid, self._interrupted)

    def _run(self, task, batch_offset, save):
        self.tasks.append((task, batch_offset, save))
        params = task.params
        if len(self.tasks) - 1 in self.skip_runs:
            return FakeResult(params, [], [], [])
        inits = list(task.init_images) * (params.batch_size if len(task.init_images) == 1 else 1)
        seeds = [params.seed + i for i in range(len(inits))]
        images = [self.paint(image, len(self.tasks) - 1) for image in inits]
        return FakeResult(params, images, seeds, [f"run {len(self.tasks) - 1}, seed {s}" for s in seeds],
                          subseeds=[params.subseed] * len(inits), prompts=[params.prompt] * len(inits),
                          negative_prompts=[params.negative_prompt] * len(inits))

    def _save(self, images, result, seeds, infotexts):
        self.saved.append((list(images), list(seeds)))

    def _grid(self, images, rows, infotext, seed):
        self.grids.append((len(images), rows))
        return Image.new("RGB", (images[0].width * len(images), images[0].height))

    def _interrupted(self):
        return self.interrupt_after is not None and len(self.tasks) >= self.interrupt_after


def darker(image, index):
    return Image.eval(image, lambda value: max(0, value - 10))


def img2img_task(image, **changes) -> GenerationTask:
    params = Img2ImgParams(**{"width": 64, "height": 64, "steps": 4, "seed": 100, "subseed": 7, **changes})
    return GenerationTask(params, (image,))


# ---- Loopback -------------------------------------------------------------------------------------------------


def test_loopback_denoising_curves_are_a1111s():
    # A1111's calculate_denoising_strength(loop) for loops 1..4 of 5, from 0.8 towards 0.2
    linear = [denoising_strength(i, 5, 0.8, 0.2, "Linear") for i in range(5)]
    assert linear == pytest.approx([0.8, 0.65, 0.5, 0.35, 0.2])
    aggressive = [denoising_strength(i, 5, 0.8, 0.2, "Aggressive") for i in range(5)]
    assert aggressive == pytest.approx([0.8 - 0.6 * math.sin(i / 4 * math.pi / 2) for i in range(5)])
    lazy = [denoising_strength(i, 5, 0.8, 0.2, "Lazy") for i in range(5)]
    assert lazy == pytest.approx([0.8 - 0.6 * (1 - math.cos(i / 4 * math.pi / 2)) for i in range(5)])
    assert aggressive[1] < linear[1] < lazy[1]  # aggressive falls fastest
    assert denoising_strength(3, 1, 0.6, 0.1, "Lazy") == 0.6  # one loop keeps the job's strength


def test_loopback_feeds_each_output_into_the_next_iteration():
    job = RecordingJob(paint=darker)
    start = gradient(64, 64)
    mask = Image.new("L", (64, 64), 255)
    task = GenerationTask(img2img_task(start).params.replace(denoising_strength=0.8, inpainting_fill=0,
                                                             batch_size=3), (start,), mask)
    outcome = drive_tasks([task], Loopback(), (4, 0.2, "Linear", "None"), job.runner)
    runs = [run for run, _, _ in job.tasks]
    assert len(runs) == 4 and [offset for _, offset, _ in job.tasks] == [0, 1, 2, 3]
    assert runs[0].init_images[0] is start
    for previous, current in zip(outcome.images, runs[1:]):
        assert current.init_images[0] is previous  # iteration k starts from iteration k-1's image
    assert [run.params.seed for run in runs] == [100, 101, 102, 103]
    assert [run.params.denoising_strength for run in runs] == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert [run.params.inpainting_fill for run in runs] == [0, 1, 1, 1]  # "original" after the first
    assert all(run.params.batch_size == 1 and run.mask is mask for run in runs)
    assert all(save for _, _, save in job.tasks)  # every iteration is saved as it is made
    assert outcome.seeds == [100, 101, 102, 103] and len(outcome.images) == 4
    assert job.grids == [(4, 1)] and len(outcome.extra_images) == 1 and not outcome.make_grid
    assert len(outcome.infotexts) == 5  # the grid's, then each image's


def test_loopback_appends_each_iterations_interrogation_to_the_prompt():
    """A1111: before each iteration the prompt is the job's prompt, ", ", and the interrogator's text for that
    iteration's init image."""
    job = RecordingJob(paint=darker)
    seen = []

    def interrogate(image, model):
        seen.append((image, model))
        return f"caption {len(seen)}"

    job.runner = TaskRunner(job._run, job._save, job._grid, job._interrupted, interrogate=interrogate)
    start = gradient(64, 64)
    task = img2img_task(start).with_params(prompt="a cat", denoising_strength=0.8)
    outcome = drive_tasks([task], Loopback(), (3, 0.2, "Linear", "DeepBooru"), job.runner)
    runs = [run for run, _, _ in job.tasks]
    assert [run.params.prompt for run in runs] == ["a cat, caption 1", "a cat, caption 2", "a cat, caption 3"]
    assert [model for _, model in seen] == ["deepdanbooru"] * 3
    assert seen[0][0] is start and [image for image, _ in seen[1:]] == outcome.images[:2]
    job = RecordingJob()
    job.runner = TaskRunner(job._run, job._save, job._grid, job._interrupted, interrogate=lambda image, model: model)
    drive_tasks([img2img_task(start).with_params(prompt="", denoising_strength=0.8)], Loopback(),
                (1, 0.2, "Linear", "CLIP"), job.runner)
    assert job.tasks[0][0].params.prompt == "clip"  # no prompt: the caption alone


def test_loopback_batch_count_restarts_from_the_original_and_keeps_each_last_image():
    job = RecordingJob(paint=darker, skip_runs={4})
    start = gradient(64, 64)
    outcome = drive_tasks([img2img_task(start, batch_count=3)], Loopback(), (3, 0.5, "Lazy", "None"), job.runner)
    runs = [run for run, _, _ in job.tasks]
    # batch 1: runs 0-2; batch 2: run 3, then run 4 is skipped (the loop ends, no image); batch 3: runs 5-7
    assert len(runs) == 8 and runs[3].init_images[0] is start and runs[5].init_images[0] is start
    assert runs[4].init_images[0] is not start and runs[6].init_images[0] is not start
    assert [run.params.seed for run in runs] == list(range(100, 108))  # on across batches and the skip
    assert [run.params.denoising_strength for run in runs[:3]] == pytest.approx(
        [0.75, 0.75 - 0.25 * (1 - math.cos(math.pi / 4)), 0.5])
    assert len(outcome.images) == 2 and outcome.seeds == [102, 107]


def test_loopback_stops_when_interrupted_and_keeps_what_was_made():
    job = RecordingJob(interrupt_after=2)
    outcome = drive_tasks([img2img_task(gradient(64, 64))], Loopback(), (5, 0.5, "Linear", "None"), job.runner)
    assert len(job.tasks) == 2 and len(outcome.images) == 2 and outcome.interrupted


# ---- SD upscale ----------------------------------------------------------------------------------------------


def test_sd_upscale_tiles_batches_seeds_and_a_seamless_recombination():
    """With every tile given back unchanged (what a perfect denoising 0 would do), the recombined image is the
    upscaled input; tiles go batch_size at a time with A1111's seeds, unsaved; the result is saved."""
    from sdwebui.pipelines.upscale import upscale_image
    from sdwebui.models.upscalers import UpscalerEntry

    job = RecordingJob()
    start = gradient(64, 48, 90)
    task = img2img_task(start, batch_size=4, batch_count=2)
    script = SDUpscale()
    args = (None, 16, "Lanczos", 2.0)
    assert script.planned_batches(task, args) == 4  # 128x96: 3x2 tiles of 64 -> batches of 4 and 2, x 2
    outcome = drive_tasks([task], script, args, job.runner)
    upscaled = upscale_image(start, UpscalerEntry("Lanczos", "lanczos"), 2.0)
    assert upscaled.size == (128, 96)
    runs = [run for run, _, _ in job.tasks]
    assert [len(run.init_images) for run in runs] == [4, 2, 4, 2]
    assert [run.params.batch_size for run in runs] == [4, 2, 4, 2]
    assert [run.params.seed for run in runs] == [100, 101, 101, 102]  # A1111: processed.seed + 1; upscale n: seed + n
    assert not any(save for _, _, save in job.tasks) and [offset for _, offset, _ in job.tasks] == [0, 1, 2, 3]
    assert len(outcome.images) == 2 and outcome.seeds == [100, 101] and not outcome.make_grid
    for image in outcome.images:
        assert image.size == (128, 96) and np.array_equal(np.asarray(image), np.asarray(upscaled))
    assert [seeds for _, seeds in job.saved] == [[100], [101]]


def test_sd_upscale_recombines_the_redrawn_tiles_in_their_places():
    job = RecordingJob(paint=lambda image, index: Image.new("RGB", image.size, (index * 40, 0, 0)))
    outcome = drive_tasks([img2img_task(gradient(64, 64), batch_size=1)], SDUpscale(), (None, 0, 0, 2.0),
                          job.runner)
    image = np.asarray(outcome.images[0])
    assert image.shape == (64, 64, 3)  # upscaler "None" (index 0) keeps the size: one tile
    job = RecordingJob(paint=lambda image, index: Image.new("RGB", image.size, (index * 40, 0, 0)))
    outcome = drive_tasks([img2img_task(gradient(64, 64), batch_size=1)], SDUpscale(), (None, 0, "Nearest", 2.0),
                          job.runner)
    image = np.asarray(outcome.images[0])[..., 0]
    assert [image[10, 10], image[10, 100], image[100, 10], image[100, 100]] == [0, 40, 80, 120]


# ---- outpainting -----------------------------------------------------------------------------------------------


def test_outpainting_canvas_is_a1111s():
    # 64x64 grown by 16 everywhere: 96 rounds up to 128, the 32 extra pixels shared out
    assert expansion(64, 64, 16, ("left", "right", "up", "down")) == (128, 128, 32, 32, 32, 32)
    assert expansion(512, 512, 128, ("left",)) == (640, 512, 128, 0, 0, 0)
    assert expansion(500, 300, 128, ("right", "down")) == (640, 448, 0, 140, 0, 148)
    assert expansion(64, 64, 8, ("left", "up")) == (128, 128, 64, 0, 64, 0)


def test_poor_mans_outpainting_inpaints_the_border_tiles_only():
    job = RecordingJob(paint=lambda image, index: Image.new("RGB", image.size, (255, 255, 255)))
    start = gradient(64, 64, 30)
    task = img2img_task(start, batch_size=3, batch_count=2)
    args = (16, 0, 1, ("left", "right", "up", "down"))
    script = PoorMansOutpainting()
    assert script.planned_batches(task, args) == 8  # 3x3 tiles of the 128x128 canvas but the centre one
    outcome = drive_tasks([task], script, args, job.runner)
    runs = [run for run, _, _ in job.tasks]
    assert len(runs) == 8 and [run.params.seed for run in runs] == list(range(100, 108))
    assert all(run.params.inpainting_fill == 1 and run.params.mask_blur_x == 0 and run.mask is not None
               for run in runs)
    assert len(outcome.images) == 1 and outcome.images[0].size == (128, 128) and job.saved


def test_match_histograms_follows_the_template_distribution():
    rng = np.random.default_rng(1)
    source = rng.random((500, 3))
    template = rng.normal(0.5, 0.05, (800, 3))
    matched = match_histograms(source, template)
    assert np.argsort(matched[:, 0]).tolist() == np.argsort(source[:, 0]).tolist()  # order kept
    assert abs(matched.mean() - template.mean()) < 0.01 and abs(matched.std() - template.std()) < 0.01


# ---- over the A1111 API, on the tiny model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("img2img-scripts"), tiny_sd1_path, "tiny-sd1.safetensors")
    with LiveServer(data, ui=False) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def img2img(client, image, script_name, script_args, **values):
    body = {**FAST, "init_images": [encode_png(image)], "seed": 11, "denoising_strength": 0.6,
            "script_name": script_name, "script_args": script_args, **values}
    return client.post("/sdapi/v1/img2img", json=body, timeout=300)


def test_the_img2img_scripts_are_listed_with_a1111s_arguments(client):
    listed = client.get("/sdapi/v1/scripts").json()
    for name in ("sd upscale", "loopback", "outpainting mk2", "poor man's outpainting"):
        assert name in listed["img2img"] and name not in listed["txt2img"]
    info = {item["name"]: item for item in client.get("/sdapi/v1/script-info").json() if item["is_img2img"]}
    labels = {name: [arg["label"] for arg in info[name]["args"]] for name in info}
    assert labels["sd upscale"] == ["Info", "Tile overlap", "Upscaler", "Scale Factor"]
    assert labels["loopback"] == ["Loops", "Final denoising strength", "Denoising strength curve",
                                  "Append interrogated prompt at each iteration"]
    assert labels["outpainting mk2"] == ["Info", "Pixels to expand", "Mask blur", "Outpainting direction",
                                         "Fall-off exponent (lower=higher detail)", "Color variation"]
    assert labels["poor man's outpainting"] == ["Pixels to expand", "Mask blur", "Masked content",
                                                "Outpainting direction"]
    assert info["poor man's outpainting"]["args"][2]["value"] == "fill"
    assert info["outpainting mk2"]["args"][3]["value"] == ["left", "right", "up", "down"]


def test_sd_upscale_over_the_a1111_api(client, server):
    # A1111 clients: [info, overlap, upscaler_index, scale_factor]; index 1 is Lanczos in /sdapi/v1/upscalers
    assert client.get("/sdapi/v1/upscalers").json()[1]["name"] == "Lanczos"
    response = img2img(client, gradient(64, 64), "SD upscale", ["", 32, 1, 2], batch_size=2)
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 1 and info["index_of_first_image"] == 0
    image = decode_png(body["images"][0])
    assert image.size == (128, 128)
    assert info["all_seeds"] == [11]
    assert "SD upscale overlap: 32" in info["infotexts"][0] and "SD upscale upscaler: Lanczos" in info["infotexts"][0]
    assert "Size: 64x64" in image.info["parameters"]  # the tiles' size, as A1111 writes it


def test_loopback_over_the_a1111_api(client):
    response = img2img(client, gradient(64, 64), "Loopback", [3, 0.2, "Linear", "None"])
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 4 and info["index_of_first_image"] == 1  # the one-row grid first
    assert decode_png(body["images"][0]).size == (192, 64)
    assert info["all_seeds"] == [11, 12, 13]
    strengths = [text.split("Denoising strength: ")[1].split(",")[0] for text in info["infotexts"][1:]]
    assert strengths == ["0.6", "0.4", "0.2"]
    assert "Final denoising strength: 0.2" in info["infotexts"][1] and "Denoising curve: Linear" in info["infotexts"][1]


def test_poor_mans_outpainting_keeps_the_original_over_the_api(client):
    start = gradient(64, 64, 30)
    response = img2img(client, start, "Poor man's outpainting", [16, 0, 1, ["left", "right", "up", "down"]])
    assert response.status_code == 200, response.text
    image = decode_png(response.json()["images"][0])
    assert image.size == (128, 128)
    assert np.array_equal(np.asarray(image.convert("RGB"))[32:96, 32:96], np.asarray(start))
    assert np.asarray(image)[:16].std() > 0  # the border was painted, not left black


def test_outpainting_mk2_over_the_native_api(client):
    start = gradient(64, 64, 30)
    response = client.post("/api/v1/jobs", json={
        "type": "img2img", **{k: v for k, v in FAST.items() if k != "sampler_name"}, "sampler": "Euler",
        "seed": 5, "init_images": [encode_png(start)], "denoising_strength": 0.8,
        "script_name": "Outpainting mk2", "script_args": [None, 8, 0, ["left", "up"], 1.0, 0.05]})
    assert response.status_code == 202, response.text
    view = wait_for_job(client, response.json()["id"], timeout=300)
    assert view["status"] == "done", view
    assert view["result"]["seeds"] == [5] and len(view["result"]["images"]) == 1
    assert view["progress"]["batch_index"] == 1 and view["progress"]["batch_count"] == 2  # one bar: both sides
    image_file = client.get(f"/api/v1/images/{view['result']['images'][0]['id']}/file")
    image = Image.open(io.BytesIO(image_file.content))
    assert image.size == (128, 128)  # 64 + 8 left / up, rounded up to 128 with the rounding on those sides
    assert np.array_equal(np.asarray(image.convert("RGB"))[64:, 64:], np.asarray(start))


@pytest.mark.parametrize("script_name,script_args,field", [
    ("Loopback", [3, 0.2, "Linear", "CLIP"], "script_args.3"),
    ("Loopback", [3, 0.2, "Steep", "None"], "script_args.2"),
    ("SD upscale", ["", 64, 0, 2], "script_args.1"),  # overlap not less than the 64x64 tile
    ("SD upscale", ["", 16, 99, 2], "script_args.2"),
    ("SD upscale", ["", 16, "no such upscaler", 2], "script_args.2"),
    ("Poor man's outpainting", [16, 4, 7, ["left"]], "script_args.2"),
    ("Poor man's outpainting", [16, 4, 0, ["sideways"]], "script_args.3"),
    ("Outpainting mk2", [None, 8, 8, [], 1.0, 0.05], "script_args.3"),
])
def test_bad_script_args_are_422_naming_the_argument(client, server, script_name, script_args, field):
    jobs_before = len(server.services.store.jobs(limit=1000))
    response = img2img(client, gradient(64, 64), script_name, script_args)
    assert response.status_code == 422 and response.json()["field"] == field, response.text
    assert len(server.services.store.jobs(limit=1000)) == jobs_before


def test_builtin_img2img_scripts_check_their_defaults():
    registry = ScriptRegistry(builtin_scripts())
    for title in ("SD upscale", "Loopback", "Outpainting mk2", "Poor man's outpainting"):
        selected, _ = registry.check_calls("img2img", title, [], {})
        assert selected is not None and registry.find("txt2img", title) is None
