"""Pasting an infotext (A1111's `infotext_utils`): the request parameters it names, and the settings it implies.

Both come from the parameter declarations: a parameter's infotext label fills the parameter (A1111's
`paste_fields`), except for parameters backed by a setting (Clip skip, ENSD, RNG, Eta, ...), which A1111 turns into
settings for the next job (`infotext_to_setting_name_mapping`, its "Override settings"). The A1111 API's
`infotext` field and the UI's "Send to txt2img" both use this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.params import (
    GenerationParams,
    Txt2ImgParams,
    infotext_fields,
    infotext_settings,
    spec_of,
    value_from_text,
)
from sdwebui.server import catalog

if TYPE_CHECKING:
    from sdwebui.server.services import Services

HIRES_INFOTEXT_KEYS = ("Hires upscale", "Hires upscaler", "Hires resize-1")
"""A1111 turns hires fix on for a pasted infotext with "Denoising strength" and one of these."""


def values_from_infotext(params: Mapping[str, object], cls: type[GenerationParams] = Txt2ImgParams, *,
                         strict: bool = False) -> dict[str, Any]:
    """Parameter name -> value for each request parameter a parsed infotext names (only those), typed. A value
    that cannot be read is a ParamError on `infotext` when `strict`, else left out (A1111 leaves the field)."""
    values: dict[str, Any] = {}
    for label, spec in infotext_fields(cls).items():
        if label not in params:
            continue
        try:
            values[spec.name] = value_from_text(spec.kind, params[label])
        except (TypeError, ValueError):
            if strict:
                raise ParamError(("infotext",), f"cannot read {label!r} from the infotext: {params[label]!r}") from None
    if hasattr(cls, "hires_target") and "Denoising strength" in params and any(k in params for k in HIRES_INFOTEXT_KEYS):
        values["enable_hr"] = True
    return values


def settings_from_infotext(services: "Services", params: Mapping[str, object], *, strict: bool = True) -> dict[str, Any]:
    """The settings a parsed infotext names (Clip skip, ENSD, RNG, the schedule and sampler parameters), typed,
    and the checkpoint its `Model hash` (else its `Model`) names when that file is in the model folders. A value
    that cannot be read is a ParamError on `infotext` when `strict`, else left out."""
    settings: dict[str, Any] = {}
    for label, (key, kind) in infotext_settings(Txt2ImgParams, Img2ImgParams).items():
        if label not in params:
            continue
        try:
            value = value_from_text(kind, params[label])
        except (TypeError, ValueError):
            if strict:
                raise ParamError(("infotext",), f"cannot read {label!r} from the infotext: {params[label]!r}") from None
            continue
        settings[key] = str(value).upper() if key == "randn_source" else value
    restorer = params.get("Face restoration")
    if restorer:  # A1111: the option `face_restoration` is written as the model's name, and pasted back truthy
        settings["face_restoration"] = True
        if str(restorer) in (spec_of(Txt2ImgParams, "face_restoration_model").choices or ()):
            settings["face_restoration_model"] = str(restorer)
    model_hash, model_name = params.get("Model hash"), params.get("Model")
    if model_hash or model_name:
        entries = catalog.checkpoints(services.paths)
        # By hash when the file's hash is known (hashed once it was loaded), else by A1111's model name.
        by_hash = [e for e in entries if model_hash and e.sha256 and e.sha256.startswith(str(model_hash).lower())]
        by_name = [e for e in entries if model_name and e.model_name == str(model_name)]
        if by_hash or by_name:
            settings["sd_model_checkpoint"] = (by_hash or by_name)[0].title
    return settings


__all__ = ["values_from_infotext", "settings_from_infotext", "HIRES_INFOTEXT_KEYS"]
