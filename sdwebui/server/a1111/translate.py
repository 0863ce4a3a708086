"""An A1111 request as the generation service's request: the one place A1111's field names, sentinels and quirks
are read (`to_generation_request`), and the one place our errors get A1111's field names back (`field_error`).

What is translated, and why (A1111 v1.10 `modules/api/api.py` and `processing.py`):
- names come from the parameter declarations (`sampler_name` -> sampler, `n_iter` -> batch_count, ...);
- a request without `sampler_name` uses `sampler_index` (default "Euler": A1111's API default differs from its
  UI's); "Use same checkpoint / sampler / scheduler" and "None" mean none; `seed_resize_from_*` -1 means off;
  `s_tmax` 0 means infinity; `mask_blur` sets both blurs; `denoising_strength` only matters for txt2img with
  hires fix (A1111's UI default 0.7 then);
- width and height the client left out get the checkpoint's native size (A1111 uses 512, wrong for SDXL);
- `infotext` fills the fields the request did not set and its settings become `override_settings`
  (A1111 `Api.apply_infotext`);
- features this server lacks are refused with a 422 naming the field, never silently ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi.exceptions import HTTPException
from pydantic import BaseModel, ValidationError

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.params import GenerationParams, Txt2ImgParams, param_specs
from sdwebui.server.errors import FieldError
from sdwebui.server.images import decode_base64_image
from sdwebui.server.options import OPTIONS
from sdwebui.server.pasting import settings_from_infotext, values_from_infotext
from sdwebui.server.service import GenerationRequest

if TYPE_CHECKING:
    from sdwebui.server.services import Services

PARAMS_TYPES: dict[str, type[GenerationParams]] = {"txt2img": Txt2ImgParams, "img2img": Img2ImgParams}
SAME_AS_FIRST_PASS = {"hr_checkpoint": "Use same checkpoint", "hr_sampler": "Use same sampler",
                      "hr_scheduler": "Use same scheduler", "refiner_checkpoint": "None"}
"""A1111's dropdown values that mean "none": the first pass's checkpoint / sampler / schedule, no refiner."""


def to_generation_request(services: "Services", req: BaseModel, kind: str,
                          warnings: list[str]) -> GenerationRequest:
    """A1111 `Txt2ImgRequest` / `Img2ImgRequest` -> `GenerationRequest`, or a FieldError naming the A1111 field.
    Notes for the client (ignored fields) are appended to `warnings`."""
    apply_infotext(services, req, kind)
    refuse_unavailable(req, kind)
    values = parameter_values(req, kind)
    images, mask = [], None
    if kind == "img2img":
        values.update(img2img_values(req, warnings))
        images = [decode_base64_image(text, ("init_images", i)) for i, text in enumerate(req.init_images)]
        mask = decode_base64_image(req.mask, ("mask",)) if req.mask else None
    return GenerationRequest(
        kind=kind, values=values, styles=tuple(req.styles or ()), overrides=dict(req.override_settings or {}),
        # A1111's API: `do_not_save_grid = not save_images`, and no grid at all then (neither returned nor saved).
        save_images=req.save_images, make_grid=req.save_images,
        script_name=req.script_name or None, script_args=tuple(req.script_args),
        alwayson_scripts=dict(req.alwayson_scripts or {}), init_images=tuple(images), mask=mask, client="a1111",
        task_id=req.force_task_id,
    )


def parameter_values(req: BaseModel, kind: str) -> dict[str, Any]:
    """The generation parameters the request carries, by engine name (see the module docstring)."""
    values: dict[str, Any] = {}
    given = req.model_fields_set
    for spec in param_specs(PARAMS_TYPES[kind]):
        name = spec.a1111_name
        if not name or name not in type(req).model_fields:
            continue
        value = getattr(req, name)
        if spec.name in ("width", "height") and name not in given:
            continue  # the checkpoint's native size
        if spec.name in SAME_AS_FIRST_PASS and value in ("", SAME_AS_FIRST_PASS[spec.name]):
            value = None
        values[spec.name] = value
    values["sampler"] = req.sampler_name or req.sampler_index
    values["seed_resize_from_w"] = max(0, req.seed_resize_from_w)
    values["seed_resize_from_h"] = max(0, req.seed_resize_from_h)
    values["s_tmax"] = req.s_tmax or None  # A1111: 0 means infinity
    if kind == "txt2img":
        values["hr_upscaler"] = req.hr_upscaler or None
        # The strength matters for the hires pass only; A1111's UI default is 0.7 (its API model says 0.75).
        values["denoising_strength"] = (0.7 if req.denoising_strength is None else req.denoising_strength) \
            if req.enable_hr else None
    return values


def img2img_values(req: BaseModel, warnings: list[str]) -> dict[str, Any]:
    if req.latent_mask:
        warnings.append("ignored latent_mask (not supported; the mask is used)")
    if req.image_cfg_scale is not None:
        warnings.append("image_cfg_scale only applies to instruct-pix2pix models; ignored")
    values: dict[str, Any] = {"inpainting_mask_invert": bool(req.inpainting_mask_invert)}
    if req.mask_blur is not None:
        values["mask_blur_x"] = values["mask_blur_y"] = req.mask_blur
    return values


def refuse_unavailable(req: BaseModel, kind: str) -> None:
    if kind == "img2img" and req.refiner_checkpoint not in (None, "", "None"):
        raise FieldError(("refiner_checkpoint",), "the refiner is not available for img2img yet")


def apply_infotext(services: "Services", req: BaseModel, kind: str) -> None:
    """A1111 `Api.apply_infotext`: fields the request did not set are taken from the infotext; settings named in
    it become `override_settings` unless the request overrides them itself."""
    if not req.infotext:
        return
    params = parse_infotext(req.infotext)
    explicit = set(req.model_fields_set)
    try:
        for name, value in values_from_infotext(params, PARAMS_TYPES[kind], strict=True).items():
            field = a1111_name(kind, name)
            if field and field in type(req).model_fields and field not in explicit:
                setattr(req, field, value)
        settings = settings_from_infotext(services, params)
    except ParamError as error:
        raise FieldError(error.loc, error.message) from None
    overrides = dict(req.override_settings or {})
    for key, value in settings.items():
        if key not in overrides and (key == "sd_model_checkpoint" or value != OPTIONS[key].default):
            overrides[key] = value
    if overrides:
        req.override_settings = overrides
    # Re-validate what the infotext put in (a pasted "Size: 1000x1000" must fail like a typed one would).
    try:
        type(req).model_validate(req.model_dump())
    except ValidationError as error:
        first = error.errors()[0]
        raise FieldError(tuple(first["loc"]), f"{first['msg']} (from the infotext)") from None


def a1111_name(kind: str, name: str) -> str | None:
    for spec in param_specs(PARAMS_TYPES[kind]):
        if spec.name == name:
            return spec.a1111_name
    return None


def field_error(error: ParamError, req: BaseModel, kind: str) -> Exception:
    """A ParamError from the service as A1111's field: `sampler_name` (or `sampler_index` when that is what the
    request used), `n_iter`, a setting under `override_settings`; an unknown default checkpoint is a 404, as
    A1111 answers."""
    loc = error.loc
    if loc == ("checkpoint",):
        return HTTPException(404, error.message)
    if len(loc) == 1 and isinstance(loc[0], str):
        specs = {spec.name: spec for spec in param_specs(PARAMS_TYPES[kind])}
        spec = specs.get(loc[0])
        if loc[0] == "sampler":
            loc = ("sampler_name" if req.sampler_name else "sampler_index",)
        elif loc[0] == "vae":
            loc = ("override_settings", "sd_vae")
        elif spec is not None and spec.a1111_name:
            loc = (spec.a1111_name,)
        elif spec is not None and spec.setting:
            loc = ("override_settings", spec.setting)
    return FieldError(loc, error.message)


__all__ = ["to_generation_request", "field_error", "apply_infotext", "a1111_name"]
