"""The PNG Info tab: drop an image, read its generation parameters (A1111 `parameters` chunk, or EXIF
UserComment for JPEG/WebP as A1111, Forge, Fooocus and SD.Next write them), send them to txt2img, or the
image with them to img2img / inpaint. An image without parameters can be captioned instead (BLIP + CLIP,
DeepDanbooru or a WD14 tagger, as the img2img tab's Interrogate buttons) and the caption sent to txt2img's prompt.

The upload is read from the file as the browser sent it (`type="filepath"`): converting it to a PIL image in
Gradio would drop the text chunks that hold the parameters.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image

from sdwebui.pipelines.output import read_image_info
from sdwebui.server.services import Services
from sdwebui.ui.fields import UIError, interrogate

INTERROGATORS = (("Interrogate CLIP", "clip"), ("Interrogate DeepBooru", "deepdanbooru"),
                 ("Interrogate (WD14 tagger)", "wd14"))


@dataclass
class PngInfoTab:
    components: dict[str, Any] = field(default_factory=dict)


def read_parameters(path: str | None) -> tuple[str, str]:
    """(infotext, HTML of the other text items) of an image file; ("", message) when there is nothing."""
    if not path:
        return "", ""
    try:
        with Image.open(path) as image:
            info, items = read_image_info(image)
    except Exception as error:  # noqa: BLE001 - PIL raises many types for odd files
        return "", f'<p class="sdw-note">Not a readable image: {html.escape(str(error))}</p>'
    extra = "".join(f"<div><b>{html.escape(k)}</b><pre>{html.escape(str(v))}</pre></div>" for k, v in items.items())
    if not info and not extra:
        extra = '<p class="sdw-note">No generation parameters found in this image.</p>'
    return info, extra


def open_image(path: str | None):
    """The uploaded file as an RGB(A) PIL image for img2img, or None."""
    if not path:
        return None
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGBA" if "A" in image.getbands() else "RGB")
    except Exception:  # noqa: BLE001 - not an image: nothing to send
        return None


def caption_file(services: Services, path: str | None, model: str) -> str:
    """The caption `model` gives the uploaded image; UIError naming the problem (no image, model not installed)."""
    return interrogate(services, open_image(path), model)


def build(services: Services | None = None) -> PngInfoTab:
    tab = PngInfoTab()
    c = tab.components
    with gr.Row(equal_height=False):
        with gr.Column(min_width=280):
            c["image"] = gr.Image(label="Source", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                  elem_id="pnginfo_image", height=360)
        with gr.Column(min_width=280):
            c["parameters"] = gr.Textbox(label="Parameters", lines=8, interactive=False,
                                         elem_id="pnginfo_parameters")
            c["items"] = gr.HTML("", elem_id="pnginfo_items", padding=False)
            c["send_to_txt2img"] = gr.Button("Send to txt2img", variant="primary", elem_id="pnginfo_send_txt2img")
            with gr.Row():
                c["send_to_img2img"] = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img", size="sm")
                c["send_to_inpaint"] = gr.Button("Send to inpaint", elem_id="pnginfo_send_inpaint", size="sm")
                c["send_to_extras"] = gr.Button("Send to extras", elem_id="pnginfo_send_extras", size="sm")
            if services is not None:
                with gr.Accordion("Caption", open=False, elem_id="pnginfo_caption_accordion"):
                    with gr.Row():
                        for label, model in INTERROGATORS:
                            c[f"interrogate_{model}"] = gr.Button(label, size="sm",
                                                                  elem_id=f"pnginfo_interrogate_{model}")
                    c["caption"] = gr.Textbox(label="Caption", lines=3, elem_id="pnginfo_caption")
                    c["send_caption_to_txt2img"] = gr.Button("Send caption to txt2img", size="sm",
                                                             elem_id="pnginfo_send_caption_txt2img")
    c["image"].change(read_parameters, c["image"], [c["parameters"], c["items"]], show_progress="hidden")
    if services is not None:
        def interrogator(model: str):
            def interrogate(path):
                try:
                    return caption_file(services, path, model)
                except UIError as error:
                    raise gr.Error(str(error)) from None
            return interrogate

        for _label, model in INTERROGATORS:
            c[f"interrogate_{model}"].click(interrogator(model), c["image"], c["caption"], show_progress="minimal",
                                            concurrency_id="interrogate", concurrency_limit=1)
    return tab


__all__ = ["build", "caption_file", "read_parameters", "open_image", "PngInfoTab"]
