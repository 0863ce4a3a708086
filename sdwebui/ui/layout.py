"""The whole page: the top bar (checkpoint and VAE, A1111's quick settings) over the tabs (txt2img, img2img,
Extras, PNG Info, History, Settings), and the wiring between them ("Send to txt2img / img2img / inpaint",
"Reuse parameters", page-load refresh).

`build_ui(services)` returns Gradio Blocks; `mount_ui(app, services)` mounts them at `/` of the server's
FastAPI app, so the page, its event queue and the API share one process and one port, behind the same security
middleware. Gradio follows the browser's light/dark preference by itself; the theme uses system fonts so the
page needs nothing from the internet.
"""

from __future__ import annotations

import html
import logging
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import gradio as gr

from sdwebui.server.options import OptionError
from sdwebui.server.services import Services
from sdwebui.ui import extensions as extensions_tab
from sdwebui.ui import extras, history, img2img, pnginfo, settings, txt2img
from sdwebui.ui import model_merger, train
from sdwebui.ui.fields import (
    TokenCounter,
    checked_paste,
    checkpoint_choices,
    native_size,
    override_entries_from_infotext,
    sampler_choices,
    schedule_choices,
    style_names,
    vae_choices,
)
from sdwebui.ui.extra_networks import CSS as EXTRA_NETWORKS_CSS
from sdwebui.ui.extra_networks import EXTRA_NETWORKS_JS
from sdwebui.ui.icons import ICON_CSS, ICON_TITLES_JS, icon_button

CSS = """
.sdw-progress { position: relative; height: 1.9em; border-radius: 6px; overflow: hidden;
  background: var(--block-background-fill); border: 1px solid var(--border-color-primary); }
.sdw-progress-bar { position: absolute; inset: 0 auto 0 0; background: var(--color-accent-soft);
  transition: width 0.2s linear; }
.sdw-error .sdw-progress-bar { background: var(--error-background-fill); }
.sdw-progress-text { position: relative; padding: 0 0.6em; line-height: 1.9em; font-size: var(--text-sm);
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; display: block; }
.sdw-prompt-box { position: relative; }
.sdw-token-counter { position: absolute !important; top: 0.35em; right: 0.6em; z-index: 10; width: auto !important;
  pointer-events: none; }
.sdw-tokens { font-size: var(--text-xs); opacity: 0.75; padding: 0.1em 0.4em; border-radius: 4px;
  background: var(--background-fill-secondary); }
.sdw-tokens-over { color: var(--color-accent); opacity: 1; }
.sdw-note { font-size: var(--text-sm); opacity: 0.85; margin: 0.2em 0; overflow-wrap: anywhere; }
#txt2img_generate, #img2img_generate { min-height: 4.5em; }
/* The latent preview is 1/8 of the image's size: show it at the gallery's size, pixels kept sharp. */
#txt2img_preview img, #img2img_preview img { width: 100%; height: 100%; object-fit: contain;
  image-rendering: pixelated; }
/* Phones: nothing may be wider than the screen. */
.gradio-container { max-width: 100% !important; overflow-x: hidden; }
@media (max-width: 640px) {
  .gradio-container { padding: 4px !important; }
  #txt2img_generate, #img2img_generate { min-height: 3em; }
}
/* Gradio puts a "·" before each footer link; ours is the only one (footer_links=["settings"]). */
footer .divider { display: none !important; }
""" + ICON_CSS + EXTRA_NETWORKS_CSS

PAGE_JS = """
() => {
  // A1111's hotkey: Ctrl+Enter (Cmd+Enter) in a prompt box generates.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const target = event.target;
    const box = target && target.closest &&
      target.closest("#txt2img_prompt, #txt2img_neg_prompt, #img2img_prompt, #img2img_neg_prompt");
    if (!box) return;
    event.preventDefault();
    const button = document.querySelector(`#${box.id.split("_")[0]}_generate`);
    if (button) button.click();
  });
""" + ICON_TITLES_JS + EXTRA_NETWORKS_JS + """
}
"""

log = logging.getLogger(__name__)

READY_MARK = '<span id="sdw-ready" hidden></span>'
"""Put in the page when the page-load event has filled the lists (tests and scripts wait for it)."""


@dataclass
class Page:
    """The page's parts that the wiring below connects: the top bar's controls and each tab."""

    demo: Any
    checkpoint: Any
    refresh: Any
    vae: Any
    status: Any
    tabs: Any
    t2i: Any
    i2i: Any
    ext: Any
    png: Any
    hist: Any
    sett: Any
    history_tab: Any
    settings_tab: Any


def build_ui(services: Services):
    counter = TokenCounter()
    titles, current = checkpoint_choices(services)
    vaes, current_vae = vae_choices(services)
    # Gradio keeps a copy of every image it sends in its cache folder: drop the day-old ones every hour.
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        with gr.Row(elem_id="quicksettings", equal_height=True):
            checkpoint = gr.Dropdown(titles, value=current, label="Stable Diffusion checkpoint",
                                     elem_id="setting_sd_model_checkpoint", scale=4, min_width=200)
            refresh = icon_button("refresh", "Refresh the checkpoint and VAE lists", "refresh_sd_model_checkpoint",
                                  scale=0, min_width=44)
            vae = gr.Dropdown(vaes, value=current_vae, label="SD VAE", elem_id="setting_sd_vae", scale=2,
                              min_width=140)
        status = gr.HTML("", elem_id="quicksettings_status", padding=False)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i = txt2img.build(services, counter)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i = img2img.build(services, counter)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                ext = extras.build(services)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = pnginfo.build(services)
            with gr.Tab("Checkpoint Merger", id="modelmerger", elem_id="tab_modelmerger"):
                model_merger.build(services)
            with gr.Tab("Train", id="train", elem_id="tab_train"):
                train.build(services)
            with gr.Tab("History", id="history", elem_id="tab_history") as history_tab:
                hist = history.build(services)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions_tab.build(services)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings") as settings_tab:
                sett = settings.build(services)
        page = Page(demo, checkpoint, refresh, vae, status, tabs, t2i, i2i, ext, png, hist, sett, history_tab,
                    settings_tab)
        _wire_top_bar(services, page)
        _wire_paste_to_txt2img(services, page)
        _wire_send_to_img2img(services, page)
        _wire_send_to_extras(page)
        _wire_page_load(services, page)
    return demo


def _wire_top_bar(services: Services, page: Page) -> None:
    """Checkpoint and VAE: the same path as POST /sdapi/v1/options; 🔄 re-reads the lists."""
    t2i = page.t2i

    def set_option(key, value, *sizes):
        """`sizes`: txt2img's and img2img's width and height."""
        unchanged = [gr.skip()] * len(sizes)
        old_size = native_size(services) if key == "sd_model_checkpoint" else None
        try:
            services.update_options({key: value})
        except OptionError as error:
            return f"<p class='sdw-note'>Not switched: {error.message}</p>", *unchanged
        if old_size is None:
            return "", *unchanged
        # Each tab follows the new model's native size unless the user chose another size there.
        new_size = native_size(services)
        follow = []
        for width, height in zip(sizes[::2], sizes[1::2]):
            at_native = int(width) == old_size and int(height) == old_size
            follow += [new_size if at_native else gr.skip()] * 2
        return "", *follow

    sizes = [page.t2i.fields["width"], page.t2i.fields["height"], page.i2i.fields["width"], page.i2i.fields["height"]]
    page.checkpoint.input(lambda v, *s: set_option("sd_model_checkpoint", v, *s), [page.checkpoint, *sizes],
                          [page.status, *sizes], show_progress="hidden")
    page.vae.input(lambda v, *s: set_option("sd_vae", v, *s), [page.vae, *sizes], [page.status, *sizes],
                   show_progress="hidden")

    def checkpoint_card(value, *sizes):
        """A checkpoint card clicked in a tab's Extra Networks: switched as the top bar's list switches."""
        title = (value or "").split("\n")[0]
        if not title:
            return gr.skip(), gr.skip(), *[gr.skip()] * len(sizes)
        status, *follow = set_option("sd_model_checkpoint", title, *sizes)
        return gr.update(value=title) if not status else gr.skip(), status, *follow

    for tab in (page.t2i, page.i2i):
        tab.components["extra_checkpoint"].change(checkpoint_card, [tab.components["extra_checkpoint"], *sizes],
                                                  [page.checkpoint, page.status, *sizes], show_progress="hidden")

    def refresh_lists():
        titles, current = checkpoint_choices(services)
        names, current_vae = vae_choices(services)
        return (gr.update(choices=titles, value=current), gr.update(choices=names, value=current_vae),
                gr.update(choices=style_names(services)))

    page.refresh.click(refresh_lists, None, [page.checkpoint, page.vae, t2i.fields["styles"]], show_progress="hidden")


def warnings_html(warnings: list[str]) -> str:
    """What a paste left out, shown under the tab's gallery (where a job's notes go)."""
    return "".join(f'<p class="sdw-note sdw-warning">⚠ {html.escape(text)}</p>' for text in warnings)


def override_settings_update(services: Services, text: str):
    entries = override_entries_from_infotext(services, text)
    return gr.update(choices=entries, value=entries, visible=bool(entries))


def _wire_paste_to_txt2img(services: Services, page: Page) -> None:
    """An infotext (PNG Info's "Send to txt2img", History's "Reuse") -> the txt2img fields; the tabs' "Send
    parameters to PNG Info"."""
    t2i, png, tabs = page.t2i, page.png, page.tabs

    def paste(text):
        values, warnings = checked_paste(services, text or "") if (text or "").strip() else ({}, [])
        if values:
            values["override_settings"] = override_settings_update(services, text)
        updates = [values[name] if name in values else gr.skip() for name in t2i.names]
        extra_open = any(values.get(k) for k in ("subseed_strength", "seed_resize_from_w", "seed_resize_from_h"))
        return [*updates, gr.update(open=True) if extra_open else gr.skip(),
                gr.update(open=True) if values.get("enable_hr") else gr.skip(),
                gr.update(open=True) if values.get("refiner_checkpoint") else gr.skip(),
                warnings_html(warnings), gr.Tabs(selected="txt2img")]

    paste_outputs = [*t2i.inputs, t2i.components["extra"], t2i.components["hires"], t2i.components["refiner"],
                     t2i.components["html_info"], tabs]
    png.components["send_to_txt2img"].click(paste, png.components["parameters"], paste_outputs,
                                            show_progress="hidden")
    png.components["send_caption_to_txt2img"].click(lambda text: (text or "", gr.Tabs(selected="txt2img")),
                                                    png.components["caption"], [t2i.fields["prompt"], tabs],
                                                    show_progress="hidden")
    page.hist.components["reuse"].click(paste, page.hist.components["parameters"], paste_outputs,
                                        show_progress="hidden")

    def to_pnginfo(text):
        return text or "", gr.Tabs(selected="pnginfo")

    for tab in (t2i, page.i2i):
        tab.components["send_to_pnginfo"].click(to_pnginfo, tab.components["infotext"],
                                                [png.components["parameters"], tabs], show_progress="hidden")


def _wire_send_to_img2img(services: Services, page: Page) -> None:
    """An image and its infotext (from a result gallery or PNG Info) -> the img2img or inpaint sub-tab."""
    i2i, png, tabs = page.i2i, page.png, page.tabs
    i2i_paste = [name for name in img2img.IMG2IMG_FIELDS
                 if name in img2img.COMMON_FIELDS and name != "styles" or name in img2img.DEFAULTS
                 and name not in ("mode", "size_tab", "scale_by", "resize_mode")]
    # the ControlNet units an infotext records (`ControlNet 0: "Module: ..."`)
    i2i_paste += [name for name in i2i.names if name.startswith("alwayson:controlnet:")]

    def to_img2img(image, text, target):
        values, warnings = {}, []
        if (text or "").strip():
            values, warnings = checked_paste(services, text, "img2img")
            units = {name: value for name, value in values.items() if name.startswith("alwayson:controlnet:")}
            values = {**img2img.img2img_fields_from_infotext(text, values), **units}
            values["override_settings"] = override_settings_update(services, text)
        updates = [values[name] if name in values else gr.skip() for name in i2i_paste]
        note = warnings_html(warnings)
        if image is None:
            return [*updates, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), note, gr.Tabs(selected="img2img")]
        if target == "inpaint":
            editor = {"background": image, "layers": [], "composite": image}
            return [*updates, gr.skip(), editor, "inpaint", gr.Tabs(selected="inpaint"),
                    img2img.inpaint_controls_update("inpaint"), note, gr.Tabs(selected="img2img")]
        return [*updates, image, gr.skip(), "img2img", gr.Tabs(selected="img2img"),
                img2img.inpaint_controls_update("img2img"), note, gr.Tabs(selected="img2img")]

    send_outputs = [*[i2i.fields[name] for name in i2i_paste], i2i.fields["init_image"], i2i.fields["inpaint"],
                    i2i.fields["mode"], i2i.components["mode_tabs"], i2i.components["inpaint_controls"],
                    i2i.components["html_info"], tabs]
    for tab in (page.t2i, i2i):
        for target in ("img2img", "inpaint"):
            tab.components[f"send_to_{target}"].click(
                (lambda target: lambda gallery, state, text: to_img2img(
                    img2img.gallery_image(gallery, state), text, target))(target),
                [tab.components["gallery"], tab.components["result_state"], tab.components["infotext"]],
                send_outputs, show_progress="hidden")
    for target in ("img2img", "inpaint"):
        png.components[f"send_to_{target}"].click(
            (lambda target: lambda path, text: to_img2img(pnginfo.open_image(path), text, target))(target),
            [png.components["image"], png.components["parameters"]], send_outputs, show_progress="hidden")


def _wire_send_to_extras(page: Page) -> None:
    ext, png, tabs = page.ext, page.png, page.tabs

    def to_extras(image):
        return (image if image is not None else gr.skip()), gr.Tabs(selected="extras")

    for tab in (page.t2i, page.i2i):
        tab.components["send_to_extras"].click(
            lambda gallery, state: to_extras(img2img.gallery_image(gallery, state)),
            [tab.components["gallery"], tab.components["result_state"]], [ext.components["image"], tabs],
            show_progress="hidden")
    png.components["send_to_extras"].click(lambda path: to_extras(pnginfo.open_image(path)),
                                           png.components["image"], [ext.components["image"], tabs],
                                           show_progress="hidden")


def _wire_page_load(services: Services, page: Page) -> None:
    """Fresh lists on every page load (models, samplers, styles, upscalers, the model's size) and tab visit."""
    t2i, i2i, ext, demo = page.t2i, page.i2i, page.ext, page.demo
    page.history_tab.select(page.hist.components["load"], page.hist.components["search"],
                            page.hist.components["load_outputs"], show_progress="hidden")
    page.settings_tab.select(page.sett.components["current"], None, page.sett.controls, show_progress="hidden")

    def on_load():
        titles, current = checkpoint_choices(services)
        names, current_vae = vae_choices(services)
        side = native_size(services, current)
        return (gr.update(choices=titles, value=current), gr.update(choices=names, value=current_vae),
                gr.update(choices=sampler_choices()), gr.update(choices=schedule_choices()),
                gr.update(choices=style_names(services)), side, side, side, side, READY_MARK)

    # Both tabs start at the current model's native size (512 for SD 1.x, 1024 for SDXL).
    demo.load(on_load, None, [page.checkpoint, page.vae, t2i.fields["sampler"], t2i.fields["scheduler"],
                              t2i.fields["styles"], t2i.fields["width"], t2i.fields["height"],
                              page.i2i.fields["width"], page.i2i.fields["height"], page.status],
              show_progress="hidden")
    hires_lists = [t2i.fields[name] for name in ("hr_upscaler", "hr_checkpoint", "hr_sampler", "hr_scheduler",
                                                 "refiner_checkpoint")]
    demo.load(lambda: txt2img.refresh_choices(services), None, hires_lists, show_progress="hidden")
    demo.load(lambda: (gr.update(choices=sampler_choices()), gr.update(choices=schedule_choices()),
                       gr.update(choices=style_names(services))),
              None, [i2i.fields["sampler"], i2i.fields["scheduler"], i2i.fields["styles"]], show_progress="hidden")
    demo.load(lambda: extras.refresh_choices(services), None, [ext.fields["upscaler_1"], ext.fields["upscaler_2"]],
              show_progress="hidden")


def theme():
    fonts = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Default(primary_hue="orange", font=fonts, font_mono=mono)


class _OneLineGradioErrors:
    """Stands in for the `traceback` module inside Gradio's event handling, which prints a whole traceback when a
    control refuses a value (a number beyond a slider's range, a choice not listed): those get one log line, as
    the page shows the message too. Any other exception still prints its traceback (it is a bug)."""

    def __getattr__(self, name: str):
        return getattr(traceback, name)

    def print_exc(self, *args, **kwargs) -> None:
        from gradio.exceptions import Error

        error = sys.exc_info()[1]
        if isinstance(error, Error):
            log.warning("UI: %s", error.message)
            return
        traceback.print_exc(*args, **kwargs)


def one_line_gradio_errors() -> None:
    """Install `_OneLineGradioErrors` in the Gradio modules that print a refused value's traceback."""
    import gradio.queueing
    import gradio.routes
    import gradio.utils

    for module in (gradio.queueing, gradio.routes, gradio.utils):
        if getattr(module, "traceback", None) is traceback:
            module.traceback = _OneLineGradioErrors()


def mount_ui(app, services: Services):
    """Mount the UI at `/` of `app` (after the API routes, which therefore keep their paths)."""
    one_line_gradio_errors()
    demo = build_ui(services)
    demo.queue(default_concurrency_limit=None)
    outputs = services.paths.outputs_dir
    return gr.mount_gradio_app(
        app, demo, path="/", allowed_paths=[str(outputs)], theme=theme(), css=CSS, js=PAGE_JS,
        # the enabled extensions' javascript/*.js and style.css (`server.extensions`), after our own
        head=loaded.head_html() if (loaded := getattr(services, "extensions", None)) is not None else "",
        footer_links=["settings"], show_error=True, ssr_mode=False,
    )


__all__ = ["build_ui", "mount_ui", "theme", "CSS", "PAGE_JS"]
