"""Gradio controls made from declarations: a generation parameter's slider, number or checkbox from its
`ParamSpec` (label, default, the UI's range), and a script argument's control from its `ScriptArg`, so the UI
shows what the API validates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from sdwebui.pipelines.params import GenerationParams, spec_of
from sdwebui.pipelines.script_args import ChoiceIndexArg, InfoArg, InstalledChoiceArg
from sdwebui.pipelines.scripts import ScriptArg


def param_control(cls: type[GenerationParams], name: str, elem_id: str, **kwargs: Any):
    """A parameter's control: a slider over its UI range, else a number box (ints) or a checkbox (bools)."""
    spec = spec_of(cls, name)
    kwargs.setdefault("label", spec.label)
    kwargs.setdefault("value", spec.default)
    if spec.ui is not None:
        minimum, maximum, step = spec.ui
        return gr.Slider(minimum, maximum, step=step, elem_id=elem_id, **kwargs)
    if spec.kind is bool:
        kwargs.setdefault("info", spec.help or None)
        return gr.Checkbox(elem_id=elem_id, **kwargs)
    if spec.kind is int:
        return gr.Number(precision=0, minimum=spec.minimum, maximum=spec.maximum, elem_id=elem_id, **kwargs)
    if spec.kind is float:
        return gr.Number(minimum=spec.minimum, maximum=spec.maximum, elem_id=elem_id, **kwargs)
    return gr.Textbox(elem_id=elem_id, **kwargs)


def script_arg_control(arg: ScriptArg, elem_id: str, installed: Callable[[str], list[str]] | None = None):
    """A script argument's control (A1111's scripts build theirs by hand; ours follow the declaration).
    `installed(catalog)`: what the app has now, for arguments that name something installed."""
    common = {"label": arg.label, "value": arg.default, "elem_id": elem_id, "info": arg.help or None}
    if isinstance(arg, InfoArg):  # A1111's gr.HTML note: a place in script_args that carries nothing
        return gr.Markdown(arg.help, elem_id=elem_id)
    if isinstance(arg, ChoiceIndexArg):  # A1111's Radio(type="index"): the job gets the position
        return gr.Radio(list(arg.choices or ()), type="index", **{**common, "value": arg.choices[arg.default]})
    if isinstance(arg, InstalledChoiceArg):  # the server checks the name against what is installed
        choices = installed(arg.catalog) if installed is not None and arg.catalog else list(arg.choices or ())
        return gr.Dropdown(choices, allow_custom_value=True, **common)
    if arg.kind is list:  # A1111's CheckboxGroup (Outpainting direction)
        return gr.CheckboxGroup(list(arg.choices or ()), **{**common, "value": list(arg.default)})
    if arg.kind is bool:
        return gr.Checkbox(**common)
    if arg.choices is not None:
        if len(arg.choices) <= 4:
            return gr.Radio(list(arg.choices), **common)
        return gr.Dropdown(list(arg.choices), **common)
    if arg.kind in (int, float):
        if arg.minimum is not None and arg.maximum is not None:
            return gr.Slider(arg.minimum, arg.maximum, step=arg.step or (1 if arg.kind is int else 0.01), **common)
        return gr.Number(precision=0 if arg.kind is int else None, minimum=arg.minimum, maximum=arg.maximum,
                         **common)
    return gr.Textbox(lines=arg.lines, max_lines=max(arg.lines, 20), **common)


__all__ = ["param_control", "script_arg_control"]
