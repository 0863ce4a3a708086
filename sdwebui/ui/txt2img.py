"""The txt2img tab, laid out as A1111's: prompts and Generate on top; sampling, size, batch, CFG and seed on the
left; live progress, the result gallery and the infotext on the right.

Generate is an async generator: it queues the job through the services (as the API would) and then polls the
job's handle a few times a second, so the browser tab that clicked sees its own job's queue position, steps,
ETA and live preview, and several tabs generating at once each follow their own job id (kept in the session's
state, which is also what Interrupt and Skip act on).
"""

from __future__ import annotations

import asyncio
import html
import io
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from sdwebui.core.upscale_modes import BUILTIN_UPSCALERS, LATENT_UPSCALE_MODES
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.pipelines.scripts import Script
from sdwebui.server.services import Services
from sdwebui.ui import extra_networks
from sdwebui.ui.controls import param_control, script_arg_control
from sdwebui.ui.fields import (
    DEFAULTS,
    SAME_AS_FIRST_PASS,
    TXT2IMG_FIELDS,
    TokenCounter,
    UIError,
    apply_styles,
    checkpoint_choices,
    elapsed_text,
    progress_text,
    sampler_choices,
    schedule_choices,
    script_fields,
    submit_txt2img,
    upscaler_choices,
)
from sdwebui.ui.icons import icon_button
from sdwebui.ui.script_ui import TabScriptUI

POLL_SECONDS = 0.25


@dataclass
class Txt2ImgTab:
    fields: dict[str, Any] = field(default_factory=dict)
    """Field name (`fields.TXT2IMG_FIELDS`) -> its Gradio component."""
    components: dict[str, Any] = field(default_factory=dict)
    """Everything else another part of the UI needs (buttons, gallery, info box, states)."""
    names: tuple[str, ...] = TXT2IMG_FIELDS
    """The field names, in the order of `inputs` (the generate event's inputs)."""

    @property
    def inputs(self) -> list:
        return [self.fields[name] for name in self.names]


def progress_html(fraction: float, text: str, *, state: str = "running") -> str:
    percent = max(0.0, min(1.0, fraction)) * 100
    return (
        f'<div class="sdw-progress sdw-{state}" role="progressbar" aria-valuenow="{percent:.0f}" '
        f'aria-valuemin="0" aria-valuemax="100"><div class="sdw-progress-bar" style="width:{percent:.1f}%"></div>'
        f'<span class="sdw-progress-text">{html.escape(text)}</span></div>'
    )


def token_html(count: int, capacity: int) -> str:
    over = " sdw-tokens-over" if count > 75 and capacity > 75 else ""
    return f'<span class="sdw-tokens{over}" title="tokens / capacity (75 per chunk)">{count}/{capacity}</span>'


def build(
    services: Services,
    counter: TokenCounter,
    *,
    prefix: str = "txt2img",
    field_names: tuple[str, ...] = TXT2IMG_FIELDS,
    submit=submit_txt2img,
    image_inputs=None,
    extra_settings=None,
) -> Txt2ImgTab:
    """The generation tab. txt2img by default; img2img builds the same tab (`prefix` for the element ids, its
    own `field_names` and `submit`) with `image_inputs(f, c)` above the settings and `extra_settings(f, c)` in
    place of the hires fix / refiner sections. The tab's script controls follow the settings."""
    scripts = services.scripts.scripts(prefix)
    tab = Txt2ImgTab(names=(*field_names, *script_fields(scripts, prefix)))
    f, c = tab.fields, tab.components
    c["job_state"], c["result_state"] = gr.State(None), gr.State(None)
    _prompt_row(prefix, f, c)
    connect_extra_networks = extra_networks.build(services, prefix, f, c)
    with gr.Row(elem_id=f"{prefix}_main", equal_height=False):
        with gr.Column(scale=1, min_width=300, elem_id=f"{prefix}_settings"):
            if image_inputs is not None:
                image_inputs(f, c)
            _sampling_controls(prefix, f, c, detect_size=image_inputs is not None)
            _seed_controls(prefix, f, c)
            with gr.Row(elem_id=f"{prefix}_checkboxes"):
                f["restore_faces"] = param_control(Txt2ImgParams, "restore_faces", f"{prefix}_restore_faces",
                                                   info=None, min_width=120)
                f["tiling"] = param_control(Txt2ImgParams, "tiling", f"{prefix}_tiling", min_width=120)
            # Filled by pasting an infotext; hidden while empty (as A1111's).
            f["override_settings"] = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True,
                                                 label="Override settings", visible=False,
                                                 elem_id=f"{prefix}_override_settings")
            f["override_settings"].change(lambda entries: gr.update(visible=bool(entries)), f["override_settings"],
                                          f["override_settings"], show_progress="hidden", queue=False)
            if extra_settings is not None:
                extra_settings(f, c)
            else:
                build_hires_and_refiner(services, f, c)
            build_scripts(scripts, prefix, f, c, services)
        _results_column(prefix, c)
    connect_extra_networks(c["gallery"])
    _wire_token_counters(services, counter, f, c)
    _wire_generate(services, tab, submit)
    _wire_seed_and_size_buttons(f, c)
    return tab


def _prompt_row(prefix: str, f: dict, c: dict) -> None:
    """Prompts with their token counters; Generate, Interrupt, Skip and the styles beside them."""
    with gr.Row(elem_id=f"{prefix}_toprow", equal_height=False):
        with gr.Column(scale=6, min_width=280):
            with gr.Group(elem_classes="sdw-prompt-box"):
                c["prompt_tokens"] = gr.HTML(token_html(0, 75), elem_id=f"{prefix}_token_counter",
                                             elem_classes="sdw-token-counter", padding=False)
                f["prompt"] = gr.Textbox(label="Prompt", lines=3, max_lines=20, elem_id=f"{prefix}_prompt",
                                         placeholder="Prompt (press Ctrl+Enter to generate)")
            with gr.Group(elem_classes="sdw-prompt-box"):
                c["negative_tokens"] = gr.HTML(token_html(0, 75), elem_id=f"{prefix}_negative_token_counter",
                                               elem_classes="sdw-token-counter", padding=False)
                f["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, max_lines=20,
                                                  elem_id=f"{prefix}_neg_prompt",
                                                  placeholder="Negative prompt (press Ctrl+Enter to generate)")
        with gr.Column(scale=1, min_width=160, elem_id=f"{prefix}_actions"):
            c["generate"] = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate", size="lg")
            with gr.Row():
                c["interrupt"] = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt", size="sm", min_width=60)
                c["skip"] = gr.Button("Skip", elem_id=f"{prefix}_skip", size="sm", min_width=60)
            # styles.csv (--styles-file); applied to the prompts when the job is queued.
            f["styles"] = gr.Dropdown([], value=[], multiselect=True, label="Styles", elem_id=f"{prefix}_styles")


def _sampling_controls(prefix: str, f: dict, c: dict, *, detect_size: bool = False) -> None:
    """Sampler, steps, size (with A1111's swap button, and its 📐 "auto detect size" where the tab takes an image),
    batch and CFG scale."""
    with gr.Row():
        f["sampler"] = gr.Dropdown([DEFAULTS["sampler"]], value=DEFAULTS["sampler"], label="Sampling method",
                                   elem_id=f"{prefix}_sampling", min_width=140)
        f["scheduler"] = gr.Dropdown([DEFAULTS["scheduler"]], value=DEFAULTS["scheduler"], label="Schedule type",
                                     elem_id=f"{prefix}_scheduler", min_width=140)
    f["steps"] = param_control(Txt2ImgParams, "steps", f"{prefix}_steps")
    with gr.Row(equal_height=True):
        with gr.Column(scale=8, min_width=200):
            f["width"] = param_control(Txt2ImgParams, "width", f"{prefix}_width")
            f["height"] = param_control(Txt2ImgParams, "height", f"{prefix}_height")
        with gr.Column(scale=1, min_width=40):
            c["swap"] = icon_button("swap", "Swap width and height", f"{prefix}_res_switch_btn", min_width=40)
            if detect_size:
                c["detect_size"] = icon_button("detect-size", "Auto detect size from the image",
                                               f"{prefix}_detect_image_size_btn", min_width=40)
    with gr.Row():
        f["batch_count"] = param_control(Txt2ImgParams, "batch_count", f"{prefix}_batch_count", min_width=140)
        f["batch_size"] = param_control(Txt2ImgParams, "batch_size", f"{prefix}_batch_size", min_width=140)
    f["cfg_scale"] = param_control(Txt2ImgParams, "cfg_scale", f"{prefix}_cfg_scale")


def _seed_controls(prefix: str, f: dict, c: dict) -> None:
    """Seed with 🎲 / ♻️, and A1111's "Extra": variation seed and strength, resize seed from."""
    with gr.Row(equal_height=True):
        f["seed"] = param_control(Txt2ImgParams, "seed", f"{prefix}_seed", scale=6, min_width=120)
        c["random_seed"] = icon_button("dice", "Random seed (-1: a new one each time)", f"{prefix}_random_seed",
                                        scale=1, min_width=40)
        c["reuse_seed"] = icon_button("reuse", "Reuse the seed of the selected image", f"{prefix}_reuse_seed",
                                       scale=1, min_width=40)
    with gr.Accordion("Extra", open=False, elem_id=f"{prefix}_subseed_show") as c["extra"]:
        with gr.Row(equal_height=True):
            f["subseed"] = param_control(Txt2ImgParams, "subseed", f"{prefix}_subseed", scale=6, min_width=120)
            c["random_subseed"] = icon_button("dice", "Random variation seed (-1)", f"{prefix}_random_subseed",
                                              scale=1, min_width=40)
            c["reuse_subseed"] = icon_button("reuse", "Reuse the variation seed of the selected image",
                                              f"{prefix}_reuse_subseed", scale=1, min_width=40)
        f["subseed_strength"] = param_control(Txt2ImgParams, "subseed_strength", f"{prefix}_subseed_strength")
        with gr.Row():
            f["seed_resize_from_w"] = param_control(Txt2ImgParams, "seed_resize_from_w",
                                                    f"{prefix}_seed_resize_from_w", min_width=140)
            f["seed_resize_from_h"] = param_control(Txt2ImgParams, "seed_resize_from_h",
                                                    f"{prefix}_seed_resize_from_h", min_width=140)


def _results_column(prefix: str, c: dict) -> None:
    """Progress, the live preview (in the gallery's place while a job runs), the gallery, the infotext and the
    "Send to" buttons (wired in `layout`)."""
    with gr.Column(scale=1, min_width=300, elem_id=f"{prefix}_results"):
        c["progress"] = gr.HTML("", elem_id=f"{prefix}_progress", padding=False)
        c["preview"] = gr.Image(label="Live preview", type="pil", format="png", interactive=False, visible=False,
                                elem_id=f"{prefix}_preview", height=420)
        c["gallery"] = gr.Gallery(label="Output", format="png", columns=2, height="auto", object_fit="contain",
                                  elem_id=f"{prefix}_gallery", interactive=False)
        c["infotext"] = gr.Textbox(label="Generation parameters", lines=4, interactive=False,
                                   elem_id=f"{prefix}_infotext")
        c["html_info"] = gr.HTML("", elem_id=f"{prefix}_html_info", padding=False)
        with gr.Row():
            c["send_to_pnginfo"] = gr.Button("Send parameters to PNG Info", size="sm",
                                             elem_id=f"{prefix}_send_to_pnginfo")
            c["send_to_img2img"] = gr.Button("Send to img2img", size="sm", elem_id=f"{prefix}_send_to_img2img")
            c["send_to_inpaint"] = gr.Button("Send to inpaint", size="sm", elem_id=f"{prefix}_send_to_inpaint")
            c["send_to_extras"] = gr.Button("Send to extras", size="sm", elem_id=f"{prefix}_send_to_extras")


def _wire_token_counters(services: Services, counter: TokenCounter, f: dict, c: dict) -> None:
    """A1111 counts the prompt as it will be encoded: with the selected styles applied."""

    def count(key, text, steps, styles):
        try:
            styled = apply_styles(services, {key: text or "", "styles": styles or []})[key]
        except UIError:
            styled = text or ""
        try:
            return token_html(*counter.count(styled, int(steps or 20)))
        except Exception:  # noqa: BLE001 - a counter must never break typing
            return token_html(0, 75)

    for key, out in (("prompt", c["prompt_tokens"]), ("negative_prompt", c["negative_tokens"])):
        handler = (lambda key: lambda text, steps, styles: count(key, text, steps, styles))(key)
        for trigger in (f[key], f["styles"]):
            trigger.change(handler, [f[key], f["steps"], f["styles"]], out, show_progress="hidden", queue=False,
                           trigger_mode="always_last")


def _wire_generate(services: Services, tab: Txt2ImgTab, submit) -> None:
    """Generate queues the job through the generation service and follows it (queue position, steps, ETA, live
    preview) until it ends; Interrupt and Skip act on this browser tab's own job."""
    c = tab.components
    job_state, result_state = c["job_state"], c["result_state"]

    async def generate(*values):
        out = {job_state: None, result_state: gr.skip(), c["progress"]: "",
               c["preview"]: gr.update(visible=False, value=None), c["gallery"]: gr.update(visible=True),
               c["infotext"]: gr.skip(), c["html_info"]: ""}
        try:
            # Validation may import the sampler registry (torch) on first use: off the event loop.
            job = await asyncio.to_thread(submit, services, dict(zip(tab.names, values)))
        except UIError as error:
            yield {**out, c["progress"]: progress_html(0, f"Error: {error}", state="error")}
            return
        fraction, text = progress_text(services, job)
        # While it runs the live preview takes the gallery's place (as in A1111).
        yield {**out, job_state: job.id, c["progress"]: progress_html(fraction, text, state="queued"),
               c["preview"]: gr.update(visible=True, value=None), c["gallery"]: gr.update(visible=False)}
        shown_preview, last_text = None, text
        while not job.finished.is_set():
            await asyncio.sleep(POLL_SECONDS)
            if job.finished.is_set():
                break
            fraction, text = progress_text(services, job)
            update: dict = {}
            if text != last_text:
                state = "queued" if job.status == "queued" else "running"
                update[c["progress"]] = progress_html(fraction, text, state=state)
                last_text = text
            p = job.progress
            if p.preview_png is not None and p.preview_png is not shown_preview:
                shown_preview = p.preview_png  # a new preview: a step's, or a batch's decoded image
                update[c["preview"]] = _png_to_image(p.preview_png)
            if update:
                yield update
        yield finished_outputs(job, c)

    outputs = [job_state, result_state, c["progress"], c["preview"], c["gallery"], c["infotext"], c["html_info"]]
    c["generate"].click(generate, tab.inputs, outputs, show_progress="hidden", concurrency_limit=None,
                        trigger_mode="multiple")  # Ctrl+Enter in a prompt clicks it too (layout.PAGE_JS)

    def interrupt(job_id):
        if job_id:
            services.generation.cancel(job_id)  # a queued job is cancelled, a running one interrupted

    def skip(job_id):
        if job_id:
            services.generation.skip(job_id)

    c["interrupt"].click(interrupt, job_state, None, show_progress="hidden", concurrency_limit=None)
    c["skip"].click(skip, job_state, None, show_progress="hidden", concurrency_limit=None)


def finished_outputs(job, c: dict) -> dict:
    """The tab's outputs once `job` has ended: the images, their first infotext, the job's notes, a final bar."""
    result = job.result or {}
    images = list(job.images)
    infotexts = result.get("infotexts") or []
    if job.status == "failed":
        bar = progress_html(0, f"Error: {job.error}", state="error")
    elif job.status == "cancelled":
        bar = progress_html(0, "Cancelled before it started", state="error")
    elif job.status == "interrupted" or result.get("interrupted"):
        bar = progress_html(1, f"Interrupted · {len(images)} image{'s' if len(images) != 1 else ''} kept · "
                               f"{elapsed_text(job)}", state="done")
    else:
        bar = progress_html(1, f"Done · {elapsed_text(job)}", state="done")
    notes = result.get("notes") or []
    info_html = "".join(f'<p class="sdw-note">{html.escape(str(note))}</p>' for note in notes)
    state = {"seeds": result.get("seeds") or [], "subseeds": result.get("subseeds") or [],
             "infotexts": infotexts, "index": 0, "first": int(result.get("extra_images") or 0)}
    return {
        c["job_state"]: None,
        c["result_state"]: state,
        c["progress"]: bar,
        c["preview"]: gr.update(visible=False, value=None),
        c["gallery"]: gr.update(value=images, visible=True) if images else gr.update(visible=True),
        c["infotext"]: infotexts[0] if infotexts else "",
        c["html_info"]: info_html,
    }


def _wire_seed_and_size_buttons(f: dict, c: dict) -> None:
    """🎲 / ♻️ for the seeds (♻️: the selected image's), ⇅ for the size, and the gallery's selection."""
    result_state = c["result_state"]

    def reuse(state, key):
        """The selected image's seed (the first image's when the grid, shown first, is selected)."""
        state = state or {}
        values = state.get(key) or []
        if not values:
            return gr.skip()
        index = int(state.get("index") or 0) - int(state.get("first") or 0)
        return values[min(max(index, 0), len(values) - 1)]

    c["random_seed"].click(lambda: -1, None, f["seed"], show_progress="hidden", queue=False)
    c["random_subseed"].click(lambda: -1, None, f["subseed"], show_progress="hidden", queue=False)
    c["reuse_seed"].click(lambda s: reuse(s, "seeds"), result_state, f["seed"], show_progress="hidden", queue=False)
    c["reuse_subseed"].click(lambda s: reuse(s, "subseeds"), result_state, f["subseed"], show_progress="hidden",
                             queue=False)
    c["swap"].click(lambda w, h: (h, w), [f["width"], f["height"]], [f["width"], f["height"]],
                    show_progress="hidden", queue=False)

    def select_image(state, evt: gr.SelectData):
        state = dict(state or {})
        state["index"] = int(evt.index or 0)
        infotexts = state.get("infotexts") or []
        text = infotexts[state["index"]] if state["index"] < len(infotexts) else gr.skip()
        return state, text

    c["gallery"].select(select_image, result_state, [result_state, c["infotext"]], show_progress="hidden",
                        queue=False)


def build_hires_and_refiner(services: Services, f: dict, c: dict) -> None:
    """A1111's "Hires. fix" and "Refiner" sections (dropdown lists are filled on page load, see `refresh_choices`)."""
    titles, _ = checkpoint_choices(services)
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr") as c["hires"]:
        f["enable_hr"] = param_control(Txt2ImgParams, "enable_hr", "txt2img_enable_hr", label="Enable hires. fix")
        with gr.Row():
            f["hr_upscaler"] = gr.Dropdown([*LATENT_UPSCALE_MODES, *BUILTIN_UPSCALERS],
                                           value=DEFAULTS["hr_upscaler"], label="Upscaler",
                                           elem_id="txt2img_hr_upscaler", min_width=140)
            f["hr_second_pass_steps"] = param_control(Txt2ImgParams, "hr_second_pass_steps", "txt2img_hires_steps",
                                                      min_width=140)
            f["denoising_strength"] = param_control(Txt2ImgParams, "denoising_strength",
                                                    "txt2img_denoising_strength", min_width=140)
        with gr.Row():
            f["hr_scale"] = param_control(Txt2ImgParams, "hr_scale", "txt2img_hr_scale", min_width=140)
            f["hr_resize_x"] = param_control(Txt2ImgParams, "hr_resize_x", "txt2img_hr_resize_x", min_width=140)
            f["hr_resize_y"] = param_control(Txt2ImgParams, "hr_resize_y", "txt2img_hr_resize_y", min_width=140)
        with gr.Row():
            f["hr_checkpoint"] = gr.Dropdown([SAME_AS_FIRST_PASS["hr_checkpoint"], *titles],
                                             value=SAME_AS_FIRST_PASS["hr_checkpoint"], label="Hires checkpoint",
                                             elem_id="txt2img_hr_checkpoint", allow_custom_value=True, min_width=140)
            f["hr_sampler"] = gr.Dropdown([SAME_AS_FIRST_PASS["hr_sampler"]], value=SAME_AS_FIRST_PASS["hr_sampler"],
                                          label="Hires sampling method", elem_id="txt2img_hr_sampler", min_width=140)
            f["hr_scheduler"] = gr.Dropdown([SAME_AS_FIRST_PASS["hr_scheduler"]],
                                            value=SAME_AS_FIRST_PASS["hr_scheduler"], label="Hires schedule type",
                                            elem_id="txt2img_hr_scheduler", min_width=140)
        with gr.Row():
            f["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, elem_id="txt2img_hr_prompt",
                                        placeholder="Prompt for hires fix pass.\nLeave empty to use the same prompt "
                                                    "as in the first pass.")
            f["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2,
                                                 elem_id="txt2img_hr_negative_prompt",
                                                 placeholder="Negative prompt for hires fix pass.\nLeave empty to use "
                                                             "the same negative prompt as in the first pass.")
        c["hr_final_size"] = gr.HTML("", elem_id="txt2img_hr_final_resolution", padding=False)
    with gr.Accordion("Refiner", open=False, elem_id="txt2img_refiner") as c["refiner"]:
        with gr.Row():
            f["refiner_checkpoint"] = gr.Dropdown([SAME_AS_FIRST_PASS["refiner_checkpoint"], *titles],
                                                  value=SAME_AS_FIRST_PASS["refiner_checkpoint"], label="Checkpoint",
                                                  elem_id="txt2img_checkpoint", allow_custom_value=True,
                                                  min_width=200)
            f["refiner_switch_at"] = param_control(Txt2ImgParams, "refiner_switch_at", "txt2img_switch_at",
                                                   min_width=140)

    def final_size(enabled, width, height, scale, resize_x, resize_y):
        """A1111 shows "from 512x512 to 1024x1024" under the hires settings."""
        if not enabled:
            return ""
        try:
            params = Txt2ImgParams(prompt="", width=int(width), height=int(height), enable_hr=True,
                                   hr_scale=float(scale), hr_resize_x=int(resize_x), hr_resize_y=int(resize_y))
        except ValueError as error:
            return f'<span class="sdw-note">{html.escape(str(error))}</span>'
        to_w, to_h = params.hires_size
        return (f'<span class="sdw-hr-size">from <b>{int(width)}x{int(height)}</b> to '
                f'<b>{to_w}x{to_h}</b></span>')

    size_inputs = [f["enable_hr"], f["width"], f["height"], f["hr_scale"], f["hr_resize_x"], f["hr_resize_y"]]
    for control in size_inputs:
        control.change(final_size, size_inputs, c["hr_final_size"], show_progress="hidden", queue=False)


def build_scripts(scripts: list[Script], prefix: str, f: dict, c: dict, services: Services | None = None) -> None:
    """A1111's "Script" dropdown (None or one selectable script, whose controls show when it is chosen) and an
    accordion per always-on script; every control is made from the script's declared arguments, or by the script
    itself when it has a `build_ui` (`pipelines.script_ui`), and its value reaches the job as `script_args` /
    `alwayson_scripts` (`fields.script_values`)."""
    selectable = [script for script in scripts if not script.alwayson]
    for script in (s for s in scripts if s.alwayson):
        with gr.Accordion(script.title, open=False, elem_id=f"{prefix}_script_{_slug(script.name)}"):
            own_layout = getattr(script, "build_ui", None)  # ControlNet's unit tabs
            if own_layout is not None and services is not None:
                controls = own_layout(TabScriptUI(services, prefix, f"{prefix}_script_{_slug(script.name)}"))
            else:
                controls = [script_arg_control(arg, f"{prefix}_script_{_slug(script.name)}_{index}")
                            for index, arg in enumerate(script.args)]
            for index, control in enumerate(controls):
                f[f"alwayson:{script.name}:{index}"] = control
    if not selectable:
        return
    f["script_name"] = gr.Dropdown(["None", *(script.title for script in selectable)], value="None", label="Script",
                                   elem_id=f"{prefix}_script_list")
    groups = []
    for script in selectable:
        with gr.Column(visible=False, elem_id=f"{prefix}_script_{_slug(script.name)}") as group:
            if script.description:
                gr.Markdown(script.description, elem_classes="sdw-note")
            own_layout = getattr(script, "build_ui", None)
            script_ui = TabScriptUI(services, prefix, f"{prefix}_script_{_slug(script.name)}") if services else None
            if own_layout is not None and script_ui is not None:
                controls = own_layout(script_ui)
                if len(controls) != len(script.args):
                    raise ValueError(f"{script.title}: build_ui made {len(controls)} controls for "
                                     f"{len(script.args)} arguments")
            else:
                controls = [script_arg_control(arg, f"{prefix}_script_{_slug(script.name)}_{index}",
                                               script_ui.choices if script_ui else None)
                            for index, arg in enumerate(script.args)]
            for index, control in enumerate(controls):
                f[f"script:{script.name}:{index}"] = control
        groups.append(group)
    c["script_groups"] = groups
    titles = [script.title for script in selectable]

    def show_chosen(chosen):
        updates = [gr.update(visible=chosen == title) for title in titles]
        return updates if len(updates) > 1 else updates[0]  # Gradio unpacks a list only for several outputs

    f["script_name"].change(show_chosen, f["script_name"], groups, show_progress="hidden", queue=False)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def refresh_choices(services: Services):
    """Fresh dropdown lists for the hires fix and refiner (installed upscalers, checkpoints, samplers)."""
    titles, _ = checkpoint_choices(services)
    return (gr.update(choices=upscaler_choices(services)),
            gr.update(choices=[SAME_AS_FIRST_PASS["hr_checkpoint"], *titles]),
            gr.update(choices=[SAME_AS_FIRST_PASS["hr_sampler"], *sampler_choices()]),
            gr.update(choices=[SAME_AS_FIRST_PASS["hr_scheduler"], *schedule_choices()]),
            gr.update(choices=[SAME_AS_FIRST_PASS["refiner_checkpoint"], *titles]))


def _png_to_image(data: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


__all__ = ["build", "Txt2ImgTab", "progress_html", "token_html", "refresh_choices"]
