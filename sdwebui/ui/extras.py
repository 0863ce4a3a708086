"""The Extras tab: upscale a picture with one or two upscalers, then restore its faces with GFPGAN and CodeFormer;
A1111's "Single Image" and "Batch from Directory" sub-tabs.

The job is the same one `/sdapi/v1/extra-single-image` (or `extra-batch-images`) queues (`server.extras`), so the
browser and the API get the same pixels for the same settings. A folder's results are saved to the Extras outputs
and the history, under their own names (A1111's setting `use_original_name_batch`), with a `.txt` caption beside each
when "Caption" is on (a LoRA training set). A1111 also takes an output directory; as the img2img tab's Batch, this
page never writes to a folder a browser names.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from pydantic import ValidationError

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.extras_params import CAPTIONERS
from sdwebui.server.errors import FieldError
from sdwebui.server.extras import ExtrasSingleImageRequest, extras_params, html_info
from sdwebui.server.service import ExtrasRequest, QueueFull
from sdwebui.server.services import Services
from sdwebui.server.store import StoreUnavailable
from sdwebui.ui.fields import UIError, extras_upscaler_choices
from sdwebui.ui.img2img import batch_files
from sdwebui.ui.txt2img import progress_html

POLL_SECONDS = 0.25


@dataclass
class ExtrasTab:
    fields: dict[str, Any] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)


def submit_extras(services: Services, image, values: dict[str, Any]):
    """Queue an extras job for one PIL image, or for every image of `values["batch_input_dir"]` when
    `values["mode"]` is "batch_from_directory" (UIError with the field's name for bad input)."""
    batch = []
    if values.get("mode") == "batch_from_directory":
        batch = batch_files(values.get("batch_input_dir"))
    elif image is None:
        raise UIError("image: drop an image to upscale first")
    try:
        request = ExtrasSingleImageRequest(
            resize_mode=int(values["resize_mode"]),
            upscaling_resize=float(values["upscaling_resize"]),
            upscaling_resize_w=int(values["upscaling_resize_w"]),
            upscaling_resize_h=int(values["upscaling_resize_h"]),
            upscaling_crop=bool(values["upscaling_crop"]),
            upscaler_1=str(values["upscaler_1"] or "None"),
            upscaler_2=str(values["upscaler_2"] or "None"),
            extras_upscaler_2_visibility=float(values["extras_upscaler_2_visibility"]),
            gfpgan_visibility=float(values.get("gfpgan_visibility") or 0),
            codeformer_visibility=float(values.get("codeformer_visibility") or 0),
            codeformer_weight=float(values.get("codeformer_weight") or 0),
        )
        params = extras_params(request, caption=values.get("caption") or () if values.get("caption_enable") else ())
        if batch:
            return services.generation.submit_extras(ExtrasRequest(
                params, [(("batch_input_dir", name), picture) for name, picture, _ in batch],
                names=[name for name, _, _ in batch], save_images=True, client="ui"))
        return services.generation.submit_extras(ExtrasRequest(params, [(("image",), image)], client="ui"))
    except ValidationError as error:
        first = error.errors()[0]
        raise UIError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    except (FieldError, ParamError) as error:
        raise UIError(f"{'.'.join(str(p) for p in error.loc)}: {error.message}") from None
    except (QueueFull, StoreUnavailable) as error:  # a full queue; a full disk, a locked database: try later
        raise UIError(str(error)) from None


def build(services: Services) -> ExtrasTab:
    tab = ExtrasTab()
    f, c = tab.fields, tab.components
    names = ["None", "Lanczos", "Nearest"]
    with gr.Row(equal_height=False, elem_id="extras_main"):
        with gr.Column(scale=1, min_width=300):
            f["mode"] = gr.State("single_image")
            with gr.Tabs(elem_id="mode_extras", selected="single_image") as c["mode_tabs"]:
                with gr.Tab("Single Image", id="single_image", elem_id="extras_single_tab") as single_tab:
                    c["image"] = gr.Image(label="Source", type="pil", image_mode="RGB",
                                          sources=["upload", "clipboard"], elem_id="extras_image", height=360)
                with gr.Tab("Batch from Directory", id="batch_from_directory",
                            elem_id="extras_batch_directory_tab") as folder_tab:
                    gr.Markdown("Process every image of a folder on the server; the results go to the Extras "
                                "outputs and the history.", elem_classes="sdw-note")
                    f["batch_input_dir"] = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir")
            c["generate"] = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            f["resize_mode"] = gr.Radio([("Scale by", 0), ("Scale to", 1)], value=0, label="Resize",
                                        elem_id="extras_resize_mode")
            f["upscaling_resize"] = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize",
                                              elem_id="extras_upscaling_resize")
            with gr.Row():
                f["upscaling_resize_w"] = gr.Slider(64, 8192, value=512, step=8, label="Width",
                                                    elem_id="extras_upscaling_resize_w", min_width=140)
                f["upscaling_resize_h"] = gr.Slider(64, 8192, value=512, step=8, label="Height",
                                                    elem_id="extras_upscaling_resize_h", min_width=140)
            f["upscaling_crop"] = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                f["upscaler_1"] = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras_upscaler_1",
                                              min_width=140)
                f["upscaler_2"] = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2",
                                              min_width=140)
            f["extras_upscaler_2_visibility"] = gr.Slider(0.0, 1.0, value=0.0, step=0.001,
                                                          label="Upscaler 2 visibility",
                                                          elem_id="extras_upscaler_2_visibility")
            # A1111's postprocessing_gfpgan.py / postprocessing_codeformer.py, run after the upscaler
            f["gfpgan_visibility"] = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="GFPGAN visibility",
                                               elem_id="extras_gfpgan_visibility")
            with gr.Row():
                f["codeformer_visibility"] = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="CodeFormer visibility",
                                                       elem_id="extras_codeformer_visibility", min_width=140)
                f["codeformer_weight"] = gr.Slider(0.0, 1.0, value=0.0, step=0.001,
                                                   label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                                   elem_id="extras_codeformer_weight", min_width=140)
            # A1111's postprocessing_caption.py: each result's caption, written to a .txt beside the saved image
            with gr.Accordion("Caption", open=False, elem_id="extras_caption_accordion"):
                f["caption_enable"] = gr.Checkbox(False, label="Caption", elem_id="extras_caption_enable")
                f["caption"] = gr.CheckboxGroup(list(CAPTIONERS), value=["Deepbooru"], show_label=False,
                                                elem_id="extras_caption_option")
        with gr.Column(scale=1, min_width=300):
            c["status"] = gr.HTML("", elem_id="extras_status", padding=False)
            c["result"] = gr.Image(label="Result", type="pil", format="png", interactive=False,
                                   elem_id="extras_result", height=420)
            c["html_info"] = gr.HTML("", elem_id="extras_html_info", padding=False)

    order = list(f)

    async def generate(image, *values):
        try:
            job = await asyncio.to_thread(submit_extras, services, image, dict(zip(order, values)))
        except UIError as error:
            yield progress_html(0, f"Error: {error}", state="error"), gr.skip(), ""
            return
        yield progress_html(0, "Upscaling…", state="running"), gr.skip(), ""
        while not job.finished.is_set():
            await asyncio.sleep(POLL_SECONDS)
        if job.status != "done" or not job.images:
            yield progress_html(0, f"Error: {job.error or job.status}", state="error"), None, ""
            return
        infotexts = (job.result or {}).get("infotexts") or [""]
        captions = (job.result or {}).get("captions") or [""]
        out = job.images[0]
        count = f"{len(job.images)} images · " if len(job.images) > 1 else ""
        info = "\n".join(text for text in (infotexts[0], f"Caption: {captions[0]}" if captions[0] else "") if text)
        yield (progress_html(1, f"Done · {count}{out.width}x{out.height}", state="done"), out, html_info(info))

    single_tab.select(lambda: "single_image", None, f["mode"], show_progress="hidden", queue=False)
    folder_tab.select(lambda: "batch_from_directory", None, f["mode"], show_progress="hidden", queue=False)
    # an image sent here (from a result or PNG Info) is for the Single Image sub-tab
    c["image"].change(lambda image: ("single_image", gr.Tabs(selected="single_image")) if image is not None
                      else (gr.skip(), gr.skip()), c["image"], [f["mode"], c["mode_tabs"]], show_progress="hidden",
                      queue=False)
    c["generate"].click(generate, [c["image"], *[f[name] for name in order]],
                        [c["status"], c["result"], c["html_info"]], show_progress="hidden", concurrency_limit=None)
    return tab


def refresh_choices(services: Services):
    names = extras_upscaler_choices(services)
    return gr.update(choices=names), gr.update(choices=names)


__all__ = ["build", "ExtrasTab", "submit_extras", "refresh_choices"]
