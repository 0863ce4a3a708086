"""What the UI's controls mean, without Gradio: field values -> a generation request, infotext -> field values,
progress -> text, model lists, token counts.

The tabs' fields are named as the engine names its parameters (`pipelines.params`), so a field's value goes into
the generation service's request as it is; a job queued from the browser is the job `/sdapi/v1/txt2img` queues
for the same values (both go through `GenerationService.prepare`). Gradio-free, so it reads (and is tested) as plain
Python.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sdwebui.core.errors import ParamError
from sdwebui.core.upscale_modes import LATENT_UPSCALE_MODES
from sdwebui.pipelines.controlnet_units import parse_unit_infotext
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.params import GenerationParams, Txt2ImgParams, param_specs
from sdwebui.pipelines.scripts import Script
from sdwebui.prompts.extra_networks import parse_prompt
from sdwebui.prompts.parser import (
    get_learned_conditioning_prompt_schedules,
    get_multicond_prompt_list,
    parse_prompt_attention,
)
from sdwebui.prompts.styles import StyleFileError, UnknownStyleError
from sdwebui.server import catalog
from sdwebui.server.a1111.translate import SAME_AS_FIRST_PASS
from sdwebui.server.errors import FieldError
from sdwebui.server.interrogation import caption_image
from sdwebui.server.options import OPTIONS
from sdwebui.server.pasting import settings_from_infotext, values_from_infotext
from sdwebui.server.service import PARAMS_TYPES, GenerationRequest, JobHandle, QueueFull
from sdwebui.server.services import Services
from sdwebui.server.store import StoreUnavailable

# The txt2img tab's fields: engine parameter names, in the order of the Gradio inputs that carry them.
TXT2IMG_FIELDS: tuple[str, ...] = (
    "prompt",
    "negative_prompt",
    "styles",
    "sampler",
    "scheduler",
    "steps",
    "cfg_scale",
    "width",
    "height",
    "batch_count",
    "batch_size",
    "seed",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "tiling",
    "restore_faces",
    # Hires fix and refiner
    "enable_hr",
    "hr_upscaler",
    "hr_second_pass_steps",
    "denoising_strength",
    "hr_scale",
    "hr_resize_x",
    "hr_resize_y",
    "hr_checkpoint",
    "hr_sampler",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
    "refiner_checkpoint",
    "refiner_switch_at",
    # A1111's "Override settings": settings for this job only, filled from a pasted infotext ("Clip skip: 2").
    "override_settings",
)

# A1111's txt2img tab defaults (`modules/ui.py`; the API's differ: 50 steps, Euler): the parameters' own.
DEFAULTS: dict[str, Any] = {
    **{spec.name: spec.default for spec in param_specs(Txt2ImgParams) if spec.name in TXT2IMG_FIELDS},
    **SAME_AS_FIRST_PASS,
    "styles": [],
    "override_settings": [],
}
HIRES_FIELDS = tuple(name for name in TXT2IMG_FIELDS if name.startswith("hr_")) + ("denoising_strength",)


class UIError(Exception):
    """A message for the user (shown in the page), e.g. a field out of range or a full queue."""


def interrogate(services: Services, image, model: str) -> str:
    """The Interrogate buttons (img2img, PNG Info): `image` captioned by `model` ("clip", "deepdanbooru", a WD14
    tagger); a UIError naming the problem (no image; a model not installed: the folder to put it in)."""
    if image is None:
        raise UIError("Interrogate: drop an image first")
    try:
        return caption_image(services, image, model)
    except FieldError as error:
        raise UIError(f"Interrogate: {error.message}") from None


# ---- fields -> request ------------------------------------------------------------------------------------------


def request_from_fields(values: Mapping[str, Any], *, save_images: bool, kind: str = "txt2img",
                        scripts: Sequence[Script] = (), **images: Any) -> GenerationRequest:
    """The tab's field values -> the generation service's request. Hires fix and refiner fields are sent only
    when those are on, so a plain job from the UI is the very request a plain API call makes; the script fields
    (`script_fields`) become `script_name`, `script_args` and `alwayson_scripts`."""
    cls: type[GenerationParams] = PARAMS_TYPES[kind]
    names = {spec.name for spec in param_specs(cls)}
    v = {**DEFAULTS, **{key: value for key, value in values.items() if value is not None}}
    params = {name: _typed(cls, name, v[name]) for name in names if name in v}
    for name, same in SAME_AS_FIRST_PASS.items():
        if name in params and params[name] in (same, ""):
            params[name] = None
    if kind == "txt2img":
        if not params.get("enable_hr"):
            for name in HIRES_FIELDS:
                params.pop(name, None)
        if params.get("refiner_checkpoint") is None:
            params.pop("refiner_switch_at", None)
    script_name, script_args, alwayson = script_values(v, scripts)
    return GenerationRequest(
        kind=kind, values=params, styles=tuple(v.get("styles") or ()),
        overrides=override_settings_from_entries(v.get("override_settings")), save_images=save_images,
        script_name=script_name, script_args=script_args, alwayson_scripts=alwayson, client="ui", **images,
    )


def _typed(cls: type[GenerationParams], name: str, value: Any) -> Any:
    """Gradio gives numbers as floats (a slider's 20.0) and dropdowns as text: the parameter's type."""
    kind = next(spec.kind for spec in param_specs(cls) if spec.name == name)
    if value is None or isinstance(value, str) and kind is not str:
        return value
    try:
        if kind is int and isinstance(value, float):
            return int(value) if value.is_integer() else value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError):
        return value
    return value


def script_fields(scripts: Sequence[Script], tab: str) -> tuple[str, ...]:
    """The field names of the tab's script controls: the "Script" dropdown, then every argument of every
    selectable script (shown for the chosen one), then the always-on scripts' arguments."""
    names = ["script_name"] if any(not s.alwayson for s in scripts) else []
    for script in scripts:
        prefix = "alwayson" if script.alwayson else "script"
        names.extend(f"{prefix}:{script.name}:{index}" for index in range(len(script.args)))
    return tuple(names)


def script_values(values: Mapping[str, Any], scripts: Sequence[Script]) -> tuple[str | None, tuple, dict]:
    chosen = str(values.get("script_name") or "None")
    script_name, script_args = None, ()
    alwayson: dict[str, dict] = {}
    for script in scripts:
        if script.alwayson:
            alwayson[script.name] = {"args": [values.get(f"alwayson:{script.name}:{i}") for i in range(len(script.args))]}
        elif script.title == chosen:
            script_name = script.title
            script_args = tuple(values.get(f"script:{script.name}:{i}") for i in range(len(script.args)))
    return script_name, script_args, alwayson


def submit(services: Services, request: GenerationRequest) -> JobHandle:
    """Queue a job through the generation service; bad input becomes a UIError naming the field (a script's
    argument by its control's label)."""
    try:
        return services.generation.submit(request)
    except ParamError as error:
        label = script_arg_label(services.scripts.scripts(request.kind), request, error.loc)
        raise UIError(f"{label}: {error.message}" if label else field_error_text(error)) from None
    except (QueueFull, StoreUnavailable) as error:  # a full queue; a full disk, a locked database: try later
        raise UIError(str(error)) from None


def submit_txt2img(services: Services, values: Mapping[str, Any]) -> JobHandle:
    """Queue a txt2img job from the tab's fields. UI jobs are saved when the setting "Always save all generated
    images" is on (A1111's `samples_save`), so they appear in the history."""
    save = bool(services.options.get("samples_save"))
    try:
        request = request_from_fields(values, save_images=save, scripts=services.scripts.scripts("txt2img"))
    except (TypeError, ValueError) as error:
        raise UIError(str(error)) from None
    return submit(services, request)


def override_settings_from_entries(entries) -> dict[str, Any]:
    """A1111's "Override settings" entries ("Clip skip: 2", named by the settings' labels) -> setting key ->
    value, typed as the setting is. The values are checked later, with the request, like the API's."""
    by_label = {spec.label: key for key, spec in OPTIONS.items()}
    settings: dict[str, Any] = {}
    for entry in entries or []:
        label, separator, text = str(entry).partition(": ")
        key = by_label.get(label)
        if not separator or key is None:
            raise UIError(f"Override settings: {entry!r} is not a setting (write it as 'Clip skip: 2')")
        kind = OPTIONS[key].kind
        try:
            settings[key] = (text == "True") if kind is bool else kind(float(text)) if kind is int else kind(text)
        except ValueError:
            raise UIError(f"Override settings: {label} must be a number, got {text!r}") from None
    return settings


def override_entries_from_infotext(services: Services, text: str) -> list[str]:
    """The "Override settings" entries a pasted infotext implies (A1111 `get_override_settings`): each setting it
    names (Clip skip, ENSD, RNG, ...; the checkpoint its Model hash names) whose value differs from the current
    one."""
    current = services.options.all()
    current["sd_model_checkpoint"] = checkpoint_choices(services)[1]
    return [
        f"{OPTIONS[key].label}: {value}"
        for key, value in settings_from_infotext(services, parse_infotext(text), strict=False).items()
        if value != current.get(key)
    ]


def style_names(services: Services) -> list[str]:
    try:
        return services.styles().names()
    except (StyleFileError, OSError):
        return []


def apply_styles(services: Services, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with the selected styles merged into prompt and negative prompt (A1111 `styles.py` rules) and
    the style list emptied (the token counter counts the prompt as it will be encoded); a style no file defines is
    a UIError naming it."""

    values = dict(values)
    names = [name for name in (values.pop("styles", None) or []) if name]
    if not names:
        return values
    try:
        prompt, negative = services.styles().apply(
            str(values.get("prompt") or ""), str(values.get("negative_prompt") or ""), names)
    except (UnknownStyleError, StyleFileError) as error:
        raise UIError(f"styles: {error}") from None
    values["prompt"], values["negative_prompt"] = prompt, negative
    return values


def script_arg_label(scripts: Sequence[Script], request: GenerationRequest, loc: tuple) -> str | None:
    """The label of the script argument an error's `loc` points at (`script_args.3`, `alwayson_scripts.x.args.1`)."""
    if len(loc) >= 2 and loc[0] == "script_args" and isinstance(loc[1], int):
        script = next((s for s in scripts if s.title == request.script_name), None)
        index = loc[1]
    elif len(loc) >= 4 and loc[0] == "alwayson_scripts" and isinstance(loc[3], int):
        script = next((s for s in scripts if s.name == loc[1]), None)
        index = loc[3]
    else:
        return None
    return script.args[index].label if script is not None and index < len(script.args) else None


def field_error_text(error: ParamError) -> str:
    """"width: must be a multiple of 8" (the setting's key for a bad override, the field for the rest)."""
    loc = [str(part) for part in error.loc if part != "override_settings"]
    field = loc[-1] if loc and not loc[-1].isdigit() else ".".join(loc)
    return f"{field}: {error.message}" if field else error.message


def progress_text(services: Services, job: JobHandle, now: float | None = None) -> tuple[float, str]:
    """(fraction done, one line) for a queued or running job: the queue position while it waits, then step,
    batch and ETA (A1111's progress bar text)."""
    if job.status == "queued":
        position = services.queue.position(job.id)
        if position is None:
            return 0.0, "Starting…"
        ahead = position + len(services.queue.running())
        return 0.0, f"In queue: {ahead} job{'s' if ahead != 1 else ''} ahead" if ahead else "In queue: next"
    p = job.progress
    if p.total_steps <= 0:
        return 0.0, "Loading the model…" if job.kind in PARAMS_TYPES else "Working…"
    parts = [f"Step {p.step}/{p.total_steps}"]
    if p.batch_count > 1:
        parts.append(f"batch {p.batch_index + 1}/{p.batch_count}")
    fraction = p.fraction
    parts.append(f"{fraction * 100:.0f}%")
    eta = p.eta(now)
    if eta is not None:
        parts.append(f"ETA {format_seconds(eta)}")
    return fraction, " · ".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(math.ceil(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def elapsed_text(job: JobHandle) -> str:
    started = job.progress.started or job.created
    return f"Time taken: {format_seconds(time.time() - started)}"


# ---- infotext -> fields -----------------------------------------------------------------------------------------


def fields_from_infotext(text: str, kind: str = "txt2img") -> dict[str, Any]:
    """The tab's fields an infotext sets (A1111 `paste_fields`): only those it names, typed as the controls want
    them. Legacy sampler names ("DPM++ 2M Karras", "k_euler_a") become sampler + schedule type; hires fix is on
    when A1111 would turn it on."""
    params = parse_infotext(text)
    out = {name: value for name, value in values_from_infotext(params, PARAMS_TYPES[kind]).items()
           if name in TXT2IMG_FIELDS or kind != "txt2img"}
    for label, value in params.items():  # the ControlNet extension's `ControlNet 0: "Module: canny, ..."`
        number = str(label).removeprefix("ControlNet ")
        if number != label and number.isdigit():
            out[f"alwayson:controlnet:{int(number)}"] = json.dumps(parse_unit_infotext(str(value)))
    if "sampler" in out or "scheduler" in out:
        sampler, schedule = canonical_sampling(out.get("sampler"), out.get("scheduler"))
        for name, value in (("sampler", sampler), ("scheduler", schedule)):
            if value is not None:
                out[name] = value
            else:
                out.pop(name, None)
    return out


def checked_paste(services: Services, text: str, kind: str = "txt2img") -> tuple[dict[str, Any], list[str]]:
    """`fields_from_infotext`, less what this install does not have (a sampler, schedule type, hires upscaler,
    hires sampler or checkpoint, refiner, checkpoint or VAE the infotext names), with a warning for each: the tab
    keeps its own value there, so Generate still works (a dropdown given a value it does not list fails)."""
    params = parse_infotext(text)
    values = fields_from_infotext(text, kind)
    warnings = []
    for label, name in (("Sampler", "sampler"), ("Schedule type", "scheduler")):
        if label in params and name not in values:
            warnings.append(f"{label} {params[label]!r} is not available here")
    if "hr_upscaler" in values and values["hr_upscaler"] not in upscaler_choices(services):
        warnings.append(f"Hires upscaler {values.pop('hr_upscaler')!r} is not installed (models/ESRGAN, ...)")
    hr_sampler = values.get("hr_sampler")
    if hr_sampler not in (None, SAME_AS_FIRST_PASS["hr_sampler"]) and canonical_sampling(hr_sampler, None)[0] is None:
        warnings.append(f"Hires sampler {values.pop('hr_sampler')!r} is not available here")
    for label, name in (("Hires checkpoint", "hr_checkpoint"), ("Refiner", "refiner_checkpoint")):
        value = values.get(name)
        if value and value not in SAME_AS_FIRST_PASS.values() and not _installed_checkpoint(services, value):
            warnings.append(f"{label} {values.pop(name)!r} is not installed")
    model = params.get("Model") or params.get("Model hash")
    if model and "sd_model_checkpoint" not in settings_from_infotext(services, params, strict=False):
        warnings.append(f"Checkpoint {str(model)!r} is not installed; the current one is used")
    vae = params.get("VAE")
    if vae and str(vae) not in vae_choices(services)[0]:
        warnings.append(f"VAE {str(vae)!r} is not installed; the current one is used")
    return values, warnings


def _installed_checkpoint(services: Services, name: str) -> bool:
    try:
        services.resolve_checkpoint(name)
        return True
    except LookupError:
        return False


def upscaler_choices(services: Services) -> list[str]:
    """The hires fix's upscalers in A1111's order: the latent modes, then None, Lanczos, Nearest and the models."""
    return [*LATENT_UPSCALE_MODES, *(entry.name for entry in services.upscalers.entries())]


def extras_upscaler_choices(services: Services) -> list[str]:
    return [entry.name for entry in services.upscalers.entries()]


def canonical_sampling(sampler: str | None, schedule: str | None) -> tuple[str | None, str | None]:
    """A sampler and schedule as the dropdowns list them (A1111 names and labels), or None for unknown ones."""
    from sdwebui.core.samplers import parse_sampler_name
    from sdwebui.core.schedules import find_schedule

    schedule_label = None
    if schedule:
        try:
            schedule_label = find_schedule(schedule).label
        except (KeyError, ValueError):
            schedule_label = None
    sampler_name = None
    if sampler:
        try:
            sampler_name, schedule_label = parse_sampler_name(sampler, schedule_label)
        except (KeyError, ValueError):
            sampler_name = None
    return sampler_name, schedule_label


# ---- lists ----------------------------------------------------------------------------------------------------


def sampler_choices() -> list[str]:
    from sdwebui.core.samplers import SAMPLERS

    return [spec.name for spec in SAMPLERS.values()]


def schedule_choices() -> list[str]:
    from sdwebui.core.schedules import SCHEDULES

    return [spec.label for spec in SCHEDULES.values()]


def checkpoint_choices(services: Services) -> tuple[list[str], str | None]:
    """(titles, the current one): the setting when it names a file that is there, else the first file."""
    entries = catalog.checkpoints(services.paths)
    titles = [entry.title for entry in entries]
    current = services.options.get("sd_model_checkpoint")
    if current:
        for entry in entries:
            if current in (entry.title, entry.name, entry.model_name, str(entry.path)):
                return titles, entry.title
    return titles, titles[0] if titles else None


def vae_choices(services: Services) -> tuple[list[str], str]:
    names = ["Automatic", "None", *(item["model_name"] for item in catalog.vaes(services.paths))]
    current = services.options.get("sd_vae") or "Automatic"
    if current not in names:
        names.append(current)
    return names, current


def native_size(services: Services, checkpoint: str | None = None) -> int:
    """The default width and height for a checkpoint (`Services.native_size`)."""
    return services.native_size(checkpoint)


# ---- token counter --------------------------------------------------------------------------------------------


class TokenCounter:
    """A1111's prompt token counter (`ui.update_token_counter`): extra networks (`<lora:...>`) removed, every
    prompt of the schedule tokenized with emphasis syntax stripped, chunks of 75 with BREAK and comma
    backtracking as the text encoder cuts them; shows the longest as "tokens/capacity" (e.g. 80/150).

    The CLIP tokenizer ships with the package; it is built on first use and kept for this UI."""

    def __init__(self) -> None:
        self._tokenizer = None

    def count(self, text: str, steps: int = 20) -> tuple[int, int]:
        from sdwebui.models.text_encoding import split_into_chunks, target_token_count

        tokenizer = self._get_tokenizer()
        text, _ = parse_prompt(text or "")
        try:
            _, flat, _ = get_multicond_prompt_list([text])
            schedules = get_learned_conditioning_prompt_schedules(flat, max(1, int(steps or 1)))
            prompts = [prompt for schedule in schedules for _, prompt in schedule] or [text]
        except Exception:  # noqa: BLE001 - a half-typed prompt is still counted as plain text
            prompts = [text]
        best = 0
        comma = tokenizer.convert_tokens_to_ids(",</w>")
        for prompt in prompts:
            spans = parse_prompt_attention(prompt)
            texts = [t for t, w in spans if not (t == "BREAK" and w == -1)]
            ids = iter(tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
                       if texts else [])
            token_spans = [None if (t == "BREAK" and w == -1) else (next(ids), w) for t, w in spans]
            _, count = split_into_chunks(token_spans, bos_id=tokenizer.bos_token_id,
                                         eos_id=tokenizer.eos_token_id, comma_id=comma)
            best = max(best, count)
        return best, target_token_count(best)

    def _get_tokenizer(self):
        if self._tokenizer is None:
            from sdwebui.models.tokenizer import load_clip_tokenizer

            self._tokenizer = load_clip_tokenizer("clip_l")
        return self._tokenizer


__all__ = [
    "TXT2IMG_FIELDS", "DEFAULTS", "UIError", "request_from_fields", "submit", "submit_txt2img", "script_fields",
    "apply_styles", "style_names", "progress_text", "field_error_text", "fields_from_infotext",
    "override_entries_from_infotext", "override_settings_from_entries", "checked_paste", "canonical_sampling", "sampler_choices",
    "schedule_choices", "checkpoint_choices", "vae_choices", "native_size", "TokenCounter", "upscaler_choices",
    "extras_upscaler_choices",
]
