"""The Settings tab: every server option (`sdwebui.server.options.OPTIONS`, A1111's names and labels) as a
control, grouped as A1111 groups them; "Apply settings" validates the whole set and writes it in one
transaction. Jobs read the options when they are queued, so a change applies to the next job without a restart.

Unlike the API, the UI may change folder options (A1111's `restrict_api` guards only the API: the person at
the UI owns the machine's folders).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from sdwebui.server.options import OPTIONS, OptionError
from sdwebui.server.services import Services

# Shown in the top bar instead (A1111's quick settings), or read-only facts rather than settings.
TOP_BAR_OPTIONS = frozenset({"sd_model_checkpoint", "sd_vae", "sd_checkpoint_hash"})

SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Saving images", ("samples_save", "samples_format", "enable_pnginfo", "save_to_dirs", "outdir_samples",
                       "outdir_txt2img_samples", "save_images_before_face_restoration",
                       "save_images_before_highres_fix", "save_images_before_color_correction", "save_mask",
                       "save_mask_composite")),
    ("Postprocessing", ("use_original_name_batch", "postprocessing_existing_caption_action")),
    ("Live previews", ("live_previews_enable", "show_progress_every_n_steps")),
    ("Stable Diffusion", ("sd_checkpoints_limit", "sd_checkpoint_cache", "CLIP_stop_at_last_layers")),
    ("VAE", ("tiled_vae", "tiled_vae_tile_size")),
    ("Optimizations", ("fp8_storage", "cache_fp16_weight", "token_merging_ratio", "token_merging_ratio_img2img",
                       "token_merging_ratio_hr")),
    ("Face restoration", ("face_restoration", "face_restoration_model", "code_former_weight",
                          "face_restoration_unload")),
    ("Interrogate", ("interrogate_keep_models_in_memory", "interrogate_return_ranks", "interrogate_clip_num_beams",
                     "interrogate_clip_min_length", "interrogate_clip_max_length", "interrogate_clip_dict_limit",
                     "interrogate_clip_skip_categories", "interrogate_deepbooru_score_threshold",
                     "deepbooru_sort_alpha", "deepbooru_use_spaces", "deepbooru_escape", "deepbooru_filter_tags")),
    ("Sampler parameters", ("randn_source", "eta_noise_seed_delta", "eta_ancestral", "eta_ddim", "s_churn",
                            "s_tmin", "s_tmax", "s_noise", "sigma_min", "sigma_max", "rho",
                            "always_discard_next_to_last_sigma")),
    ("Server limits", ("api_max_pixels", "api_max_images", "api_max_steps", "api_max_queue_size")),
)

OPEN_SECTIONS = frozenset({"Saving images", "Live previews", "Stable Diffusion"})


@dataclass
class SettingsTab:
    keys: list[str] = field(default_factory=list)
    controls: list[Any] = field(default_factory=list)
    components: dict[str, Any] = field(default_factory=dict)


def section_keys() -> list[tuple[str, list[str]]]:
    """The sections with their option keys; options no section names go to "Other" (so none is ever hidden)."""
    listed = {key for _, keys in SECTIONS for key in keys}
    sections = [(title, [k for k in keys if k in OPTIONS]) for title, keys in SECTIONS]
    other = [k for k in OPTIONS if k not in listed and k not in TOP_BAR_OPTIONS]
    if other:
        sections.append(("Other", other))
    return [(title, keys) for title, keys in sections if keys]


def apply_settings(services: Services, values: dict[str, Any]) -> str:
    """Validate and write `values` (all or nothing); returns a line for the user."""
    current = services.options.all()
    changed = {}
    for key, value in values.items():
        spec = OPTIONS[key]
        if value is None:
            continue
        if spec.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if spec.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if spec.kind is list:  # kept as a list or (the default) a tuple: the same names are no change
            if tuple(value) != tuple(current.get(key) or ()):
                changed[key] = list(value)
            continue
        if value != current.get(key):
            changed[key] = value
    if not changed:
        return "Nothing to change."
    try:
        accepted, _ = services.options.validate(changed, from_api=False)
    except OptionError as error:
        return f"Not applied: {OPTIONS[error.key].label}: {error.message}"
    services.options.update(accepted)
    names = ", ".join(OPTIONS[key].label for key in accepted)
    return f"{len(accepted)} setting{'s' if len(accepted) != 1 else ''} changed: {names}."


def build(services: Services) -> SettingsTab:
    tab = SettingsTab()
    values = services.options.all()
    with gr.Row():
        tab.components["apply"] = gr.Button("Apply settings", variant="primary", elem_id="settings_submit",
                                            min_width=140)
        tab.components["reload"] = gr.Button("Reload", elem_id="settings_reload", min_width=100)
    tab.components["result"] = gr.HTML("", elem_id="settings_result", padding=False)
    for title, keys in section_keys():
        with gr.Accordion(title, open=title in OPEN_SECTIONS,
                          elem_id=f"settings_section_{title.lower().replace(' ', '_')}"):
            for key in keys:
                tab.keys.append(key)
                tab.controls.append(_control(gr, key, values.get(key)))

    with gr.Accordion("System: workers", open=False, elem_id="settings_section_workers"):
        tab.components["workers"] = gr.HTML(workers_html(services), elem_id="settings_workers", padding=False)
        tab.components["workers_refresh"] = gr.Button("Refresh", elem_id="settings_workers_refresh", min_width=100)
    tab.components["workers_refresh"].click(lambda: workers_html(services), None, tab.components["workers"],
                                            show_progress="hidden")

    def apply(*controls):
        return f"<p class='sdw-note'>{apply_settings(services, dict(zip(tab.keys, controls)))}</p>", *current()

    def current():
        now = services.options.all()
        # a list setting's default is a tuple; Gradio would take a tuple for one choice ([()]) and refuse it
        return [list(now[key]) if isinstance(now.get(key), tuple) else now.get(key) for key in tab.keys]

    tab.components["current"] = current
    tab.components["apply"].click(apply, tab.controls, [tab.components["result"], *tab.controls],
                                  show_progress="hidden")
    tab.components["reload"].click(current, None, tab.controls, show_progress="hidden")
    return tab


def workers_html(services: Services) -> str:
    """What runs the jobs, as `GET /api/v1/workers` lists it: the worker thread, or each Ray worker (`--ray`)."""
    rows = []
    for worker in services.workers():
        cells = (worker["id"], worker["state"], worker.get("host") or worker.get("node") or "", worker.get("device")
                 or "", ", ".join(worker.get("models") or ()) or "none", worker.get("current_job") or "idle",
                 str(worker.get("jobs_done", 0)))
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>")
    head = "".join(f"<th>{name}</th>" for name in ("Worker", "State", "Host", "Device", "Models", "Current job",
                                                   "Jobs done"))
    return f"<table class='sdw-workers'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _control(gr, key: str, value: Any):
    spec = OPTIONS[key]
    elem_id = f"setting_{key}"
    if spec.kind is bool:
        return gr.Checkbox(value=bool(value), label=spec.label, elem_id=elem_id)
    if spec.kind in (int, float):
        return gr.Number(value=value, label=spec.label, elem_id=elem_id, precision=0 if spec.kind is int else None,
                         minimum=spec.minimum, maximum=spec.maximum)
    if spec.kind is list:
        return gr.CheckboxGroup(list(spec.choices or ()), value=list(value or ()), label=spec.label, elem_id=elem_id)
    if spec.choices is not None:
        return gr.Dropdown(list(spec.choices), value=value, label=spec.label, elem_id=elem_id)
    return gr.Textbox(value=value or "", label=spec.label, elem_id=elem_id)


__all__ = ["build", "apply_settings", "section_keys", "SettingsTab"]
