"""The img2img tab, laid out as A1111's: the txt2img tab (`txt2img.build` with its own fields) with the image
inputs above the settings, in sub-tabs img2img / Sketch / Inpaint / Inpaint sketch / Inpaint upload / Batch,
and the img2img and inpaint controls (resize mode, resize to / by, denoising strength, mask blur, mask mode, masked
content, inpaint area, padding) in place of the hires fix.

A job from here is the job `POST /sdapi/v1/img2img` queues for the same values (both go through
`GenerationService.prepare`). The tab's own controls (sub-tab, "Resize by", the radio buttons) are turned into
parameters in `request_from_img2img_fields`. A colour sketch is sent as the flattened drawing; an inpaint mask is
every pixel the brush touched (white = repaint).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr
import numpy as np

from sdwebui.pipelines.img2img_params import INPAINT_AREAS, INPAINTING_FILLS, MASK_MODES, RESIZE_MODES
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.params import Txt2ImgParams, spec_of
from sdwebui.server.service import GenerationRequest, JobHandle
from sdwebui.server.services import Services
from sdwebui.ui import txt2img
from sdwebui.ui.fields import (TokenCounter, UIError, fields_from_infotext, interrogate, request_from_fields,
                               submit)

MASKED_CONTENT = list(INPAINTING_FILLS)
MODES = ("img2img", "sketch", "inpaint", "inpaint_sketch", "inpaint_upload", "batch")
MASK_TABS = ("inpaint", "inpaint_sketch", "inpaint_upload", "batch")
"""The sub-tabs whose jobs can have a mask (a batch's from its mask folder)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_BATCH_FILES = 1000

# The generation fields txt2img has (no hires fix / refiner), then img2img's own.
COMMON_FIELDS: tuple[str, ...] = (
    "prompt", "negative_prompt", "styles", "sampler", "scheduler", "steps", "cfg_scale", "width", "height",
    "batch_count", "batch_size", "seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h",
    "tiling", "restore_faces", "override_settings",
)
IMG2IMG_FIELDS: tuple[str, ...] = COMMON_FIELDS + (
    "mode", "init_image", "sketch", "inpaint", "inpaint_sketch", "inpaint_upload_image", "inpaint_upload_mask",
    "batch_input_dir", "batch_mask_dir", "resize_mode",
    "size_tab", "scale_by", "denoising_strength", "mask_blur", "mask_mode", "inpainting_fill", "inpaint_full_res",
    "inpaint_full_res_padding",
)

DEFAULTS: dict[str, Any] = {
    "mode": "img2img", "resize_mode": 0, "size_tab": "Resize to", "scale_by": 1.0, "denoising_strength": 0.75,
    "mask_blur": 4, "mask_mode": 0, "inpainting_fill": 1, "inpaint_full_res": 0, "inpaint_full_res_padding": 32,
}
"""A1111's img2img tab defaults (its API's differ: masked content "fill", "only masked", padding 0)."""


def build(services: Services, counter: TokenCounter) -> txt2img.Txt2ImgTab:
    def image_inputs(f: dict, c: dict) -> None:
        f["mode"] = gr.State(DEFAULTS["mode"])
        with gr.Tabs(elem_id="img2img_mode_tabs", selected="img2img") as c["mode_tabs"]:
            with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as tab0:
                f["init_image"] = gr.Image(label="Image for img2img", type="pil", image_mode="RGBA",
                                           sources=["upload", "clipboard"], elem_id="img2img_image", height=360)
                # A1111's "Interrogate CLIP" / "Interrogate DeepBooru" buttons (its elem_ids), and a WD14 tagger
                # (models/interrogators) as a third: each replaces the prompt with the selected sub-tab's image's text
                with gr.Row(elem_id="img2img_interrogate_row"):
                    c["interrogate_clip"] = gr.Button("Interrogate CLIP", size="sm", elem_id="interrogate")
                    c["interrogate_deepbooru"] = gr.Button("Interrogate DeepBooru", size="sm", elem_id="deepbooru")
                    c["interrogate"] = gr.Button("Interrogate (WD14 tagger)", size="sm",
                                                 elem_id="img2img_interrogate")
            with gr.Tab("Sketch", id="sketch", elem_id="img2img_img2img_sketch_tab") as tab1:
                f["sketch"] = gr.ImageEditor(label="Sketch", type="pil", image_mode="RGBA", elem_id="img2img_sketch",
                                             sources=["upload", "clipboard"], height=360,
                                             brush=gr.Brush(default_size=12, color_mode="defaults"))
            with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as tab2:
                f["inpaint"] = gr.ImageEditor(label="Image for inpainting with mask", type="pil", image_mode="RGBA",
                                              elem_id="img2img_img2maskimg", sources=["upload", "clipboard"],
                                              height=360, layers=False,
                                              brush=gr.Brush(default_size=24, colors=["#ffffff"],
                                                             color_mode="fixed"))
            with gr.Tab("Inpaint sketch", id="inpaint_sketch", elem_id="img2img_inpaint_sketch_tab") as tab3:
                f["inpaint_sketch"] = gr.ImageEditor(label="Color sketch inpainting", type="pil", image_mode="RGBA",
                                                     elem_id="img2img_inpaint_sketch", sources=["upload", "clipboard"],
                                                     height=360, layers=False,
                                                     brush=gr.Brush(default_size=12, color_mode="defaults"))
            with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as tab4:
                with gr.Row():
                    f["inpaint_upload_image"] = gr.Image(label="Image", type="pil", image_mode="RGBA",
                                                         sources=["upload", "clipboard"],
                                                         elem_id="img_inpaint_base", height=300)
                    f["inpaint_upload_mask"] = gr.Image(label="Mask (white = repaint)", type="pil", image_mode="L",
                                                        sources=["upload", "clipboard"],
                                                        elem_id="img_inpaint_mask", height=300)
            with gr.Tab("Batch", id="batch", elem_id="img2img_batch_tab") as tab5:
                gr.Markdown("Process the images of a folder on the server, one run each (results go to the img2img "
                            "outputs and the history). A mask folder holds one mask for all, or masks named as "
                            "the images.", elem_classes="sdw-note")
                f["batch_input_dir"] = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
                f["batch_mask_dir"] = gr.Textbox(label="Inpaint batch mask directory (optional)",
                                                 elem_id="img2img_batch_inpaint_mask_dir")
        c["mode_tab_list"] = (tab0, tab1, tab2, tab3, tab4, tab5)
        f["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], type="index", label="Resize mode",
                                    elem_id="img2img_resize_mode")
        with gr.Row():
            f["size_tab"] = gr.Radio(["Resize to", "Resize by"], value="Resize to", label="Size",
                                     elem_id="img2img_size_tab", min_width=140)
            f["scale_by"] = gr.Slider(0.05, 4.0, value=1.0, step=0.05, label="Scale (Resize by)",
                                      elem_id="img2img_scale", min_width=140)

    def extra_settings(f: dict, c: dict) -> None:
        f["denoising_strength"] = gr.Slider(0.0, 1.0, value=DEFAULTS["denoising_strength"], step=0.01,
                                            label="Denoising strength", elem_id="img2img_denoising_strength")
        # Shown on the sub-tabs that take a mask (`inpaint_controls_update`).
        with gr.Accordion("Inpaint", open=True, visible=DEFAULTS["mode"] in MASK_TABS,
                          elem_id="img2img_inpaint_controls") as c["inpaint_controls"]:
            f["mask_blur"] = gr.Slider(0, 64, value=DEFAULTS["mask_blur"], step=1, label="Mask blur",
                                       elem_id="img2img_mask_blur")
            f["mask_mode"] = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], type="index", label="Mask mode",
                                      elem_id="img2img_mask_mode")
            f["inpainting_fill"] = gr.Radio(MASKED_CONTENT, value="original", type="index", label="Masked content",
                                            elem_id="img2img_inpainting_fill")
            with gr.Row():
                f["inpaint_full_res"] = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], type="index",
                                                 label="Inpaint area", elem_id="img2img_inpaint_full_res",
                                                 min_width=140)
                f["inpaint_full_res_padding"] = gr.Slider(0, 256, value=32, step=4,
                                                          label="Only masked padding, pixels",
                                                          elem_id="img2img_inpaint_full_res_padding", min_width=140)

    tab = txt2img.build(services, counter, prefix="img2img", field_names=IMG2IMG_FIELDS, submit=submit_img2img,
                        image_inputs=image_inputs, extra_settings=extra_settings)
    f = tab.fields
    image_fields = ("mode", "init_image", "sketch", "inpaint", "inpaint_sketch", "inpaint_upload_image")

    def detect_size(*images):
        size = image_size(dict(zip(image_fields, images)))
        return size if size is not None else (gr.skip(), gr.skip())

    def interrogator(model: str):
        def interrogate(prompt, *images):
            try:
                return interrogated_prompt(services, dict(zip(image_fields, images)), prompt, model=model)
            except UIError as error:
                raise gr.Error(str(error)) from None
        return interrogate

    for button, model in (("interrogate_clip", "clip"), ("interrogate_deepbooru", "deepdanbooru"),
                          ("interrogate", "wd14")):
        tab.components[button].click(interrogator(model), [f["prompt"], *[f[name] for name in image_fields]],
                                     f["prompt"], show_progress="minimal", concurrency_id="interrogate",
                                     concurrency_limit=1)
    tab.components["detect_size"].click(detect_size, [f[name] for name in image_fields], [f["width"], f["height"]],
                                        show_progress="hidden", queue=False)
    for mode_tab, mode in zip(tab.components["mode_tab_list"], MODES):
        mode_tab.select((lambda m: lambda: (m, inpaint_controls_update(m)))(mode), None,
                        [f["mode"], tab.components["inpaint_controls"]], show_progress="hidden", queue=False)
    return tab


def inpaint_controls_update(mode: str):
    """The inpaint settings show on the sub-tabs that take a mask (A1111's `inpaint_controls`)."""
    return gr.update(visible=mode in MASK_TABS)


# ---- images and mask from the controls -----------------------------------------------------------------------


def _as_image(value):
    from PIL import Image

    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        image = Image.open(value)
        image.load()
        return image
    return None


def editor_mask(editor: Mapping[str, Any] | None):
    """The inpaint editor's strokes as a mask: white where any layer has paint (alpha > 0)."""
    from PIL import Image

    if not editor:
        return None
    background = _as_image(editor.get("background"))
    if background is None:
        return None
    mask = np.zeros((background.height, background.width), dtype=bool)
    for layer in editor.get("layers") or []:
        layer = _as_image(layer)
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA").resize(background.size))[..., 3]
        mask |= alpha > 0
    return Image.fromarray((mask * 255).astype(np.uint8), mode="L")


def mode_image(values: Mapping[str, Any]):
    """The selected sub-tab's init image, or None. A sketch is sent as the drawing over the image (A1111: in
    Inpaint sketch the coloured strokes are both the new content and the mask)."""
    mode = values.get("mode") or "img2img"
    if mode in ("sketch", "inpaint_sketch"):
        editor = values.get(mode) or {}
        return _as_image(editor.get("composite")) or _as_image(editor.get("background"))
    if mode == "inpaint":
        return _as_image((values.get("inpaint") or {}).get("background"))
    if mode == "inpaint_upload":
        return _as_image(values.get("inpaint_upload_image"))
    return _as_image(values.get("init_image"))


def interrogated_prompt(services: Services, values: Mapping[str, Any], prompt: str = "", *, model: str = "wd14") -> str:
    """The selected sub-tab's image captioned by `model` ("clip": BLIP + CLIP, "deepdanbooru", or "wd14": the first
    WD14 tagger); A1111's Interrogate buttons replace the prompt with the result. UIError naming the problem (no
    image, no model installed: the folder to put it in)."""
    return interrogate(services, mode_image(values), model)


def images_for(values: Mapping[str, Any]):
    """(init image, mask or None) for the selected sub-tab; a UIError when there is no image."""
    mode = values.get("mode") or "img2img"
    image, mask = mode_image(values), None
    if mode in ("inpaint", "inpaint_sketch"):
        mask = editor_mask(values.get(mode) or {})
        if mask is not None and not mask.getbbox():
            verb = "draw" if mode == "inpaint" else "sketch"
            raise UIError(f"mask: {verb} over the part of the image to repaint first")
    elif mode == "inpaint_upload":
        mask = _as_image(values.get("inpaint_upload_mask"))
        if image is not None and mask is None:
            raise UIError("mask: upload a mask (white = repaint)")
    if image is None:
        raise UIError("init image: upload an image first")
    return image, mask


def generation_size(width: float, height: float) -> tuple[int, int]:
    """A size floored to multiples of 8, as A1111 floors "Resize by" (at least 8)."""
    return max(8, int(width) - int(width) % 8), max(8, int(height) - int(height) % 8)


def image_size(values: Mapping[str, Any]) -> tuple[int, int] | None:
    """A1111's 📐 "auto detect size": the selected sub-tab's image size as Width and Height, or None without one.
    An image larger than the sliders go is scaled down to fit, keeping its aspect ratio (a slider refuses a value
    beyond its range)."""
    image = mode_image(values)
    if image is None:
        return None
    smallest, largest, _ = spec_of(Txt2ImgParams, "width").ui
    fit = min(1.0, largest / max(image.width, image.height))
    width, height = generation_size(image.width * fit, image.height * fit)
    return max(smallest, width), max(smallest, height)


def batch_files(input_dir: str, mask_dir: str | None = None) -> list[tuple[str, Any, Any]]:
    """(name, image, mask or None) for every image in `input_dir`, sorted by name (A1111's img2img batch): the
    mask is the only file of `mask_dir`, or the one with the image's name (any image extension)."""
    from pathlib import Path

    folder = Path(str(input_dir or "").strip()).expanduser()
    if not str(input_dir or "").strip() or not folder.is_dir():
        raise UIError(f"input directory: not a folder: {input_dir!r}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UIError(f"input directory: no images in {folder}")
    if len(files) > MAX_BATCH_FILES:
        raise UIError(f"input directory: {len(files)} images, more than {MAX_BATCH_FILES} in one job")
    masks: dict[str, Any] = {}
    single = None
    if str(mask_dir or "").strip():
        mask_folder = Path(str(mask_dir).strip()).expanduser()
        if not mask_folder.is_dir():
            raise UIError(f"mask directory: not a folder: {mask_dir!r}")
        mask_files = sorted(p for p in mask_folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        masks = {p.stem: p for p in mask_files}
        single = mask_files[0] if len(mask_files) == 1 else None
    out = []
    for path in files:
        try:
            image = _as_image(str(path))
            mask_path = single or masks.get(path.stem)
            mask = _as_image(str(mask_path)) if mask_path else None
        except Exception as error:  # noqa: BLE001 - PIL raises many types for odd files
            raise UIError(f"input directory: cannot read {path.name}: {error}") from None
        if mask is not None and mask.size != image.size:
            raise UIError(f"mask directory: the mask for {path.name} is {mask.width}x{mask.height}, the image "
                          f"{image.width}x{image.height}")
        out.append((path.name, image, mask))
    return out


def request_from_img2img_fields(values: Mapping[str, Any], *, save_images: bool, scripts=()) -> GenerationRequest:
    """The img2img tab's values -> the generation service's request: the sub-tab's image and mask, "Resize by"
    as a size, and the radio buttons as the parameters they stand for."""
    v = {**DEFAULTS, **{k: val for k, val in values.items() if val is not None}}
    batch = []
    if v["mode"] == "batch":
        batch = batch_files(v.get("batch_input_dir"), v.get("batch_mask_dir"))
        _, image, mask = batch[0]
    else:
        image, mask = images_for(v)
    common = {k: val for k, val in v.items() if k in COMMON_FIELDS}
    if v["size_tab"] == "Resize by":
        # A1111: the image's size times the scale, floored to a multiple of 8.
        scale = float(v["scale_by"])
        common["width"], common["height"] = generation_size(image.width * scale, image.height * scale)
    common.update({
        "resize_mode": int(v["resize_mode"]),
        "denoising_strength": float(v["denoising_strength"]),
        "mask_blur_x": int(v["mask_blur"]),
        "mask_blur_y": int(v["mask_blur"]),
        "inpainting_mask_invert": bool(int(v["mask_mode"])),
        "inpainting_fill": int(v["inpainting_fill"]),
        "inpaint_full_res": bool(int(v["inpaint_full_res"])),
        "inpaint_full_res_padding": int(v["inpaint_full_res_padding"]),
    })
    images = {"batch": tuple(batch)} if batch else {"init_images": (image,), "mask": mask}
    return request_from_fields({**common, **{k: val for k, val in v.items() if ":" in k or k == "script_name"}},
                               save_images=save_images, kind="img2img", scripts=scripts, **images)


def submit_img2img(services: Services, values: Mapping[str, Any]) -> JobHandle:
    """Queue an img2img job from the tab's values (saved when "Always save all generated images" is on)."""
    request = request_from_img2img_fields(values, save_images=bool(services.options.get("samples_save")),
                                          scripts=services.scripts.scripts("img2img"))
    return submit(services, request)


def img2img_fields_from_infotext(text: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The img2img tab's fields an infotext sets: the parameters (prompt, seed, size, denoising strength, ...;
    `values` when they were read already) and A1111's inpainting keys as the tab's controls show them (Mask blur,
    Mask mode, Masked content, Inpaint area, Masked area padding)."""
    values = fields_from_infotext(text, "img2img") if values is None else values
    out = {k: v for k, v in values.items() if k in IMG2IMG_FIELDS and k != "styles"}
    params = parse_infotext(text)
    choices = (("Mask mode", "mask_mode", MASK_MODES), ("Masked content", "inpainting_fill", MASKED_CONTENT),
               ("Inpaint area", "inpaint_full_res", INPAINT_AREAS))
    for label, name, options in choices:
        if str(params.get(label)) in options:
            out[name] = options[options.index(str(params[label]))]
    for label, name in (("Mask blur", "mask_blur"), ("Masked area padding", "inpaint_full_res_padding")):
        try:
            out[name] = int(float(params[label]))
        except (KeyError, TypeError, ValueError):
            pass
    return out


def gallery_image(gallery, state):
    """The selected (or first) image of a result gallery, as PIL."""
    items = list(gallery or [])
    if not items:
        return None
    index = min(int((state or {}).get("index") or 0), len(items) - 1)
    item = items[index]
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, Mapping):
        item = item.get("image", {}).get("path") if isinstance(item.get("image"), Mapping) else item.get("image")
    return _as_image(item)


__all__ = ["build", "IMG2IMG_FIELDS", "submit_img2img", "img2img_fields_from_infotext", "request_from_img2img_fields",
           "images_for", "editor_mask", "gallery_image", "batch_files"]
