"""What the UI's controls mean, without Gradio: field values -> a queued job, infotext -> field values, progress
-> text, model lists, token counts.

Everything here goes through the server's services and helpers (the queue, the store, the options, the A1111
adapter's request mapping), so a job queued from the browser is the same job `/sdapi/v1/txt2img` would queue
for the same values. Gradio-free, so it reads (and is tested) as plain Python.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from sdwebui.server import catalog
from sdwebui.server.queue import JobHandle, QueueFull
from sdwebui.server.services import Services

# The txt2img tab's fields, named as the engine names them (`Txt2ImgParams`); the order is the order of the
# Gradio inputs and outputs that carry them.
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
    # Hires fix, refiner and tiling (A1111 request names)
    "tiling",
    "enable_hr",
    "hr_upscaler",
    "hr_second_pass_steps",
    "denoising_strength",
    "hr_scale",
    "hr_resize_x",
    "hr_resize_y",
    "hr_checkpoint_name",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
    "refiner_checkpoint",
    "refiner_switch_at",
    # A1111's "Override settings": settings for this job only, filled from a pasted infotext ("Clip skip: 2").
    "override_settings",
)

# A1111's txt2img tab defaults (`modules/ui.py`; the API's differ: 50 steps, Euler).
DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "styles": [],
    "sampler": "DPM++ 2M",
    "scheduler": "Automatic",
    "steps": 20,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "batch_count": 1,
    "batch_size": 1,
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_w": 0,
    "seed_resize_from_h": 0,
    "tiling": False,
    "enable_hr": False,
    "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0,
    "denoising_strength": 0.7,
    "hr_scale": 2.0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_checkpoint_name": "Use same checkpoint",
    "hr_sampler_name": "Use same sampler",
    "hr_scheduler": "Use same scheduler",
    "hr_prompt": "",
    "hr_negative_prompt": "",
    "refiner_checkpoint": "None",
    "refiner_switch_at": 0.8,
    "override_settings": [],
}

# A1111 request field -> UI field (the rest have the same name).
_REQUEST_TO_FIELD = {"sampler_name": "sampler", "n_iter": "batch_count"}


class UIError(Exception):
    """A message for the user (shown in the page), e.g. a field out of range or a full queue."""


# ---- txt2img --------------------------------------------------------------------------------------------------


def request_from_fields(values: Mapping[str, Any], *, save_images: bool):
    """The UI's field values -> the A1111 request the API would receive for them."""
    from pydantic import ValidationError

    from sdwebui.server.a1111_models import Txt2ImgRequest

    v = {**DEFAULTS, **{k: val for k, val in values.items() if val is not None}}
    try:
        return Txt2ImgRequest(
            prompt=str(v["prompt"]),
            negative_prompt=str(v["negative_prompt"]),
            sampler_name=str(v["sampler"]),
            scheduler=str(v["scheduler"]),
            steps=int(v["steps"]),
            cfg_scale=float(v["cfg_scale"]),
            width=int(v["width"]),
            height=int(v["height"]),
            n_iter=int(v["batch_count"]),
            batch_size=int(v["batch_size"]),
            seed=int(v["seed"]),
            subseed=int(v["subseed"]),
            subseed_strength=float(v["subseed_strength"]),
            seed_resize_from_w=int(v["seed_resize_from_w"]),
            seed_resize_from_h=int(v["seed_resize_from_h"]),
            **_hires_request_fields(v),
            override_settings=override_settings_from_entries(v["override_settings"]) or None,
            save_images=save_images,
            send_images=False,
        )
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise UIError(f"{_REQUEST_TO_FIELD.get(field, field)}: {first['msg']}") from None
    except (TypeError, ValueError) as error:
        raise UIError(str(error)) from None


def override_settings_from_entries(entries) -> dict[str, Any]:
    """A1111's "Override settings" entries ("Clip skip: 2", named by the settings' labels) -> setting key ->
    value, typed as the setting is. The values are checked later, with the request, like the API's."""
    from sdwebui.server.options import OPTIONS

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
    from sdwebui.pipelines.infotext import parse_infotext
    from sdwebui.server.a1111 import settings_from_infotext
    from sdwebui.server.options import OPTIONS

    current = services.options.all()
    current["sd_model_checkpoint"] = checkpoint_choices(services)[1]
    return [
        f"{OPTIONS[key].label}: {value}"
        for key, value in settings_from_infotext(services, parse_infotext(text), strict=False).items()
        if value != current.get(key)
    ]


_HIRES_TYPES = {
    "tiling": bool, "enable_hr": bool, "hr_upscaler": str, "hr_second_pass_steps": int, "denoising_strength": float,
    "hr_scale": float, "hr_resize_x": int, "hr_resize_y": int, "hr_checkpoint_name": str, "hr_sampler_name": str,
    "hr_scheduler": str, "hr_prompt": str, "hr_negative_prompt": str, "refiner_checkpoint": str,
    "refiner_switch_at": float,
}


def _hires_request_fields(v: Mapping[str, Any]) -> dict[str, Any]:
    """The hires fix / refiner / tiling controls as request fields: only those the user changed (so a plain job
    from the UI is the very request a plain API call makes), and the hires ones only with hires fix on."""
    out: dict[str, Any] = {}
    for name, kind in _HIRES_TYPES.items():
        value = kind(v[name])
        if value == DEFAULTS[name]:
            continue
        if name.startswith("hr_") or name == "denoising_strength":
            if not v["enable_hr"]:
                continue
        out[name] = value
    if v["enable_hr"]:
        out["denoising_strength"] = float(v["denoising_strength"])
    if out.get("refiner_checkpoint") is None:
        out.pop("refiner_switch_at", None)
    return out


def submit_txt2img(services: Services, values: Mapping[str, Any]) -> JobHandle:
    """Queue a txt2img job exactly as `/sdapi/v1/txt2img` does (`a1111.prepare_txt2img` builds the payload).

    Selected styles are applied to the prompt texts first (from the styles files, read afresh), so the job and
    its infotext carry the styled prompts, as A1111's do. UI jobs are saved when the setting "Always save all
    generated images" is on (A1111's `samples_save`), so they appear in the history."""
    from sdwebui.server.a1111 import prepare_txt2img
    from sdwebui.server.errors import FieldError

    values = apply_styles(services, values)
    save = bool(services.options.get("samples_save"))
    request = request_from_fields(values, save_images=save)
    try:
        payload = prepare_txt2img(services, request, [])
    except FieldError as error:
        raise UIError(_field_error_text(error)) from None
    except Exception as error:  # noqa: BLE001 - HTTPException (no checkpoint) and friends: say what it was
        detail = getattr(error, "detail", None)
        raise UIError(str(detail or error)) from None
    payload["client"] = "ui"
    try:
        return services.submit("txt2img", payload)
    except QueueFull as error:
        raise UIError(str(error)) from None


def style_names(services: Services) -> list[str]:
    from sdwebui.prompts.styles import StyleFileError

    try:
        return services.styles().names()
    except (StyleFileError, OSError):
        return []


def apply_styles(services: Services, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with the selected styles merged into prompt and negative prompt (A1111 `styles.py` rules) and
    the style list emptied; a style no file defines is a UIError naming it."""
    from sdwebui.prompts.styles import StyleFileError, UnknownStyleError

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


def _field_error_text(error) -> str:
    loc = [str(part) for part in getattr(error, "loc", ()) if part not in ("body", "override_settings")]
    field = _REQUEST_TO_FIELD.get(loc[-1], loc[-1]) if loc else ""
    message = getattr(error, "message", None) or str(error)
    return f"{field}: {message}" if field else message


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
        return 0.0, "Loading the model…" if job.kind == "txt2img" else "Working…"
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


def fields_from_infotext(text: str) -> dict[str, Any]:
    """The txt2img fields an infotext sets (A1111 `paste_fields`): only those it names, typed as the controls
    want them. Legacy sampler names ("DPM++ 2M Karras", "k_euler_a") become sampler + schedule type."""
    from sdwebui.pipelines.infotext import parse_infotext
    from sdwebui.server.a1111 import INFOTEXT_FIELDS

    params = parse_infotext(text)
    out: dict[str, Any] = {}
    for label, (name, kind) in INFOTEXT_FIELDS.items():
        field = _REQUEST_TO_FIELD.get(name, name)
        if field not in TXT2IMG_FIELDS or label not in params:
            continue
        try:
            out[field] = kind(float(params[label])) if kind is int else kind(params[label])
        except (TypeError, ValueError):
            continue  # an odd value leaves the field as it is (A1111 does the same)
    # A1111's paste rule: hires fix is on when the infotext has a denoising strength and a hires key.
    from sdwebui.server.a1111 import HIRES_INFOTEXT_KEYS

    if "Denoising strength" in params and any(key in params for key in HIRES_INFOTEXT_KEYS):
        out["enable_hr"] = True
    # Checkpoints are named "name [hash]" there; the dropdowns take that as a custom value (it resolves).
    if "Hires checkpoint" in params:
        out["hr_checkpoint_name"] = str(params["Hires checkpoint"])
    if "Refiner" in params:
        out["refiner_checkpoint"] = str(params["Refiner"])
    if "Tiling" in params:
        out["tiling"] = str(params["Tiling"]) == "True"
    if "sampler" in out or "scheduler" in out:
        sampler, schedule = canonical_sampling(out.get("sampler"), out.get("scheduler"))
        if sampler is not None:
            out["sampler"] = sampler
        else:
            out.pop("sampler", None)
        if schedule is not None:
            out["scheduler"] = schedule
        else:
            out.pop("scheduler", None)
    return out


def upscaler_choices(services: Services) -> list[str]:
    """The hires fix's upscalers in A1111's order: the latent modes, then None, Lanczos, Nearest and the models."""
    from sdwebui.models.upscalers import LATENT_UPSCALE_MODES

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
        from sdwebui.prompts.extra_networks import parse_prompt
        from sdwebui.prompts.parser import (
            get_learned_conditioning_prompt_schedules,
            get_multicond_prompt_list,
            parse_prompt_attention,
        )

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
    "TXT2IMG_FIELDS", "DEFAULTS", "UIError", "request_from_fields", "submit_txt2img", "apply_styles", "style_names",
    "progress_text",
    "fields_from_infotext", "override_entries_from_infotext", "override_settings_from_entries", "canonical_sampling", "sampler_choices", "schedule_choices", "checkpoint_choices",
    "vae_choices", "native_size", "TokenCounter", "upscaler_choices", "extras_upscaler_choices",
]
