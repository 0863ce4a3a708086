"""The img2img tab's logic: a UI job is the job `/sdapi/v1/img2img` would queue for the same values, the
sub-tabs' images and masks (sketch, drawn mask, uploaded mask), "resize by", and the page builds with the tab."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_api_support import make_data_dir

from sdwebui.config import Paths
from sdwebui.server.config import ServerConfig


@pytest.fixture(scope="module")
def services(tmp_path_factory, tiny_sd1_path):
    from sdwebui.server.services import Services

    data = make_data_dir(tmp_path_factory.mktemp("ui-img2img"), tiny_sd1_path, "tiny-sd1.safetensors")
    services = Services(ServerConfig(paths=Paths.from_flags(data_dir=data), preload=False))
    yield services
    services.close()


def picture(width=64, height=48, color=(200, 40, 40)):
    return Image.new("RGB", (width, height), color)


def test_a_ui_img2img_job_is_the_job_the_api_would_queue(services):
    from sdwebui.server.a1111.schemas import Img2ImgRequest
    from sdwebui.server.a1111.translate import to_generation_request
    from sdwebui.server.payloads import encode_png
    from sdwebui.ui.img2img import submit_img2img

    image = picture()
    values = {"prompt": "a cat", "sampler": "Euler", "steps": 3, "width": 64, "height": 48, "seed": 5,
              "mode": "img2img", "init_image": image, "denoising_strength": 0.4, "resize_mode": 1}
    job = submit_img2img(services, values)
    try:
        same = Img2ImgRequest(prompt="a cat", sampler_name="Euler", scheduler="Automatic", steps=3, width=64,
                              height=48, seed=5, init_images=[encode_png(image)], denoising_strength=0.4, resize_mode=1,
                              mask_blur=4, inpainting_fill=1, inpaint_full_res=False, inpaint_full_res_padding=32,
                              inpainting_mask_invert=0, cfg_scale=7.0, save_images=True, send_images=False)
        api_payload = services.generation.prepare(to_generation_request(services, same, "img2img", [])).to_json()
        assert {**job.payload.to_json(), "client": None} == {**api_payload, "client": None}
        assert job.kind == "img2img" and job.payload.params.denoising_strength == 0.4
        assert job.payload.mask is None
    finally:
        services.queue.cancel(job.id)


def test_inpaint_tab_mask_is_the_painted_pixels(services):
    from sdwebui.ui.img2img import images_for

    background = picture()
    layer = Image.new("RGBA", background.size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (10, 10, 20, 30))
    image, mask = images_for({"mode": "inpaint", "inpaint": {"background": background, "layers": [layer],
                                                              "composite": background}})
    assert image is background
    array = np.asarray(mask)
    assert array[15, 15] == 255 and array[0, 0] == 0 and array.sum() == 255 * 10 * 20


def test_inpaint_without_strokes_or_images_is_a_named_error(services):
    from sdwebui.ui.fields import UIError
    from sdwebui.ui.img2img import images_for

    with pytest.raises(UIError, match="^mask: "):
        images_for({"mode": "inpaint", "inpaint": {"background": picture(), "layers": [], "composite": None}})
    with pytest.raises(UIError, match="^init image: "):
        images_for({"mode": "img2img", "init_image": None})
    with pytest.raises(UIError, match="^mask: "):
        images_for({"mode": "inpaint_upload", "inpaint_upload_image": picture(), "inpaint_upload_mask": None})


def test_inpaint_sketch_sends_the_drawing_and_its_strokes_as_mask(services):
    from sdwebui.ui.img2img import images_for

    background = picture()
    layer = Image.new("RGBA", background.size, (0, 0, 0, 0))
    layer.paste((0, 255, 0, 255), (40, 5, 50, 15))
    composite = background.copy()
    composite.paste((0, 255, 0), (40, 5, 50, 15))
    image, mask = images_for({"mode": "inpaint_sketch", "inpaint_sketch": {
        "background": background, "layers": [layer], "composite": composite}})
    assert image is composite
    assert np.asarray(mask).sum() == 255 * 100 and np.asarray(mask)[10, 45] == 255


def test_sketch_sends_the_drawing(services):
    from sdwebui.ui.img2img import images_for

    drawing = picture(color=(0, 0, 255))
    image, mask = images_for({"mode": "sketch", "sketch": {"background": picture(), "layers": [],
                                                            "composite": drawing}})
    assert image is drawing and mask is None


def test_inpaint_upload_job_carries_the_mask_and_options(services):
    from sdwebui.ui.img2img import submit_img2img

    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (0, 0, 16, 16))
    job = submit_img2img(services, {"prompt": "x", "width": 64, "height": 48, "steps": 2, "mode": "inpaint_upload",
                                    "inpaint_upload_image": picture(), "inpaint_upload_mask": mask, "mask_blur": 2,
                                    "mask_mode": 1, "inpainting_fill": 2, "inpaint_full_res": 1,
                                    "inpaint_full_res_padding": 8})
    try:
        params = job.payload.params
        assert job.payload.mask
        assert (params.mask_blur_x, params.mask_blur_y, params.inpainting_mask_invert) == (2, 2, True)
        area = (params.inpainting_fill, params.inpaint_full_res, params.inpaint_full_res_padding)
        assert area == (2, True, 8)
    finally:
        services.queue.cancel(job.id)


def test_resize_by_scales_the_image_size_to_multiples_of_8(services):
    from sdwebui.ui.img2img import request_from_img2img_fields

    request = request_from_img2img_fields({"prompt": "", "mode": "img2img", "init_image": picture(100, 60),
                                           "size_tab": "Resize by", "scale_by": 1.5}, save_images=False)
    assert (request.values["width"], request.values["height"]) == (144, 88)  # 150 -> 144, 90 -> 88


def test_the_page_has_the_img2img_tab(services):
    from sdwebui.ui.layout import build_ui

    demo = build_ui(services)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    for elem_id in ("tab_img2img", "img2img_generate", "img2img_image", "img2img_sketch", "img2img_img2maskimg",
                    "img2img_inpaint_sketch", "img2img_batch_input_dir",
                    "img_inpaint_mask", "img2img_denoising_strength", "img2img_mask_blur", "img2img_inpainting_fill",
                    "txt2img_send_to_inpaint", "pnginfo_send_img2img", "txt2img_generate", "txt2img_enable_hr"):
        assert elem_id in ids, elem_id


def test_detect_size_reads_the_selected_sub_tabs_image():
    """A1111's 📐: the image's own size, floored to multiples of 8; one larger than the sliders go is scaled down
    to fit, keeping its shape; nothing when the sub-tab has no image."""
    from PIL import Image

    from sdwebui.ui.img2img import image_size

    assert image_size({"mode": "img2img", "init_image": Image.new("RGB", (203, 120))}) == (200, 120)
    assert image_size({"mode": "img2img", "init_image": Image.new("RGB", (4096, 2048))}) == (2048, 1024)
    inpaint = {"background": Image.new("RGBA", (96, 64)), "layers": [], "composite": None}
    assert image_size({"mode": "inpaint", "inpaint": inpaint, "init_image": Image.new("RGB", (8, 8))}) == (96, 64)
    assert image_size({"mode": "inpaint_upload", "inpaint_upload_image": Image.new("RGB", (30, 700))}) == (64, 696)
    assert image_size({"mode": "sketch", "sketch": None}) is None


def test_an_inpainting_infotext_fills_the_img2img_fields():
    from sdwebui.ui.img2img import img2img_fields_from_infotext

    text = ("a cat\nSteps: 12, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6, Seed: 9, Size: 64x96, "
            "Denoising strength: 0.35, Mask blur: 8, Mask mode: Inpaint not masked, Inpaint area: Only masked, "
            "Masked area padding: 16, Masked content: latent noise, Version: x")
    values = img2img_fields_from_infotext(text)
    assert values["prompt"] == "a cat" and values["steps"] == 12 and values["seed"] == 9
    assert (values["width"], values["height"], values["denoising_strength"]) == (64, 96, 0.35)
    assert values["mask_blur"] == 8 and values["inpaint_full_res_padding"] == 16
    assert values["mask_mode"] == "Inpaint not masked" and values["inpaint_full_res"] == "Only masked"
    assert values["inpainting_fill"] == "latent noise"


def test_batch_from_a_folder_runs_every_image_with_its_mask(services, tmp_path):
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.img2img import img2img
    from sdwebui.pipelines.jobs import run_tasks
    from sdwebui.server.runners import first_tasks
    from sdwebui.ui.fields import UIError
    from sdwebui.ui.img2img import batch_files, submit_img2img

    inputs, masks = tmp_path / "in", tmp_path / "masks"
    inputs.mkdir()
    masks.mkdir()
    picture(color=(255, 0, 0)).save(inputs / "b.png")
    picture(color=(0, 255, 0)).save(inputs / "a.jpg")
    (inputs / "notes.txt").write_text("not an image")
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (0, 0, 8, 8))
    mask.save(masks / "b.png")
    assert all(m is not None for _, _, m in batch_files(str(inputs), str(masks)))  # one mask: for every image
    mask.save(masks / "c.png")  # several masks: matched by name
    found = batch_files(str(inputs), str(masks))
    assert [name for name, _, _ in found] == ["a.jpg", "b.png"]
    assert found[0][2] is None and found[1][2] is not None
    with pytest.raises(UIError, match="^input directory: "):
        batch_files(str(tmp_path / "missing"))

    job = submit_img2img(services, {"prompt": "x", "width": 64, "height": 48, "steps": 2, "sampler": "Euler",
                                    "mode": "batch", "batch_input_dir": str(inputs),
                                    "batch_mask_dir": str(masks), "mask_blur": 0})
    assert len(job.payload.batch) == 2 and job.payload.batch[1].mask
    services.queue.cancel(job.id)
    # The job's batch as the worker runs it: one run per image, put together.
    ctx = GenerationContext(model=services.models.get(job.payload.checkpoint))
    tasks = first_tasks(job.payload)
    assert [task.label for task in tasks] == ["a.jpg", "b.png"]
    result = run_tasks(tasks, lambda task, _: img2img(ctx, task.params.replace(rng="cpu"), list(task.init_images),
                                                      task.mask), lambda: False)
    assert len(result.seeds) == 2 and len(result.images) == 2 and not result.interrupted
    kept = np.asarray(result.images[1])
    assert np.array_equal(kept[16:, 16:], np.asarray(picture(color=(255, 0, 0)))[16:, 16:])
