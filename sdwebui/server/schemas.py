"""Request bodies made from the parameter declarations (`pipelines.params`), so every parameter is declared once.

`param_fields(cls, names="engine")` gives pydantic fields with the engine's names, types, bounds and defaults (the
native API); `names="a1111"` gives A1111's request fields: its names (`sampler_name`, `n_iter`), its defaults
(`steps` 50, `sampler_name` None) and its optional types, for the parameters A1111's request has (settings such as
clip skip travel in `override_settings` there). Bounds are ours in both: A1111 checks none.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, create_model

from sdwebui.pipelines.params import SAME, GenerationParams, ParamSpec, param_specs


def param_fields(cls: type[GenerationParams], names: str = "engine") -> dict[str, tuple[Any, Any]]:
    """`{field name: (annotation, FieldInfo)}` for `pydantic.create_model`."""
    fields: dict[str, tuple[Any, Any]] = {}
    for spec in param_specs(cls):
        if names == "engine":
            fields[spec.name] = _engine_field(spec)
        else:
            a1111_name = spec.a1111_name
            if a1111_name:
                fields[a1111_name] = _a1111_field(spec)
    return fields


def _engine_field(spec: ParamSpec) -> tuple[Any, Any]:
    """Setting-backed and nullable parameters are optional (None: the setting, or "the sampler's own"); the rest
    take the engine's default when left out, and refuse null."""
    optional = spec.nullable or spec.setting is not None
    default = None if optional else spec.default
    return _field(spec, spec.kind, default, optional, spec.minimum)


def _a1111_field(spec: ParamSpec) -> tuple[Any, Any]:
    default = spec.a1111_default_value
    optional = default is None or spec.nullable or spec.a1111_optional
    minimum = spec.minimum if spec.a1111_minimum is SAME else spec.a1111_minimum
    kind = spec.a1111_kind or spec.kind
    return _field(spec, kind, default, optional, minimum,
                  maximum=1 if spec.a1111_kind is int and spec.kind is bool else spec.maximum)


def _field(spec: ParamSpec, kind: type, default: Any, optional: bool, minimum: float | None,
           maximum: float | None = SAME) -> tuple[Any, Any]:
    maximum = spec.maximum if maximum is SAME else maximum
    annotation: Any = Literal[spec.choices] if spec.choices and kind is str else kind  # type: ignore[valid-type]
    if optional:
        annotation = annotation | None
    constraints: dict[str, Any] = {}
    if kind in (int, float) and not (kind is int and spec.kind is bool):
        constraints.update(ge=minimum, le=maximum)
    elif kind is int:
        constraints.update(ge=0, le=1)
    if kind is float:
        constraints["allow_inf_nan"] = False
    if spec.multiple_of:
        constraints["multiple_of"] = spec.multiple_of
    if spec.max_length is not None:
        constraints["max_length"] = spec.max_length
    description = spec.help or spec.label or None
    return annotation, Field(default, description=description, **constraints)


def params_model(model_name: str, cls: type[GenerationParams], base: type[BaseModel], names: str = "engine",
                 doc: str | None = None) -> type[BaseModel]:
    """A request body: `base`'s own fields (what is not a generation parameter) plus the parameters of `cls`."""
    model = create_model(model_name, __base__=base, __module__=base.__module__, **param_fields(cls, names))
    if doc:
        model.__doc__ = doc
    return model


__all__ = ["param_fields", "params_model"]
