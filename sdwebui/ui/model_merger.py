"""The Checkpoint Merger tab, in A1111's layout (`modules/ui_checkpoint_merger.py`): primary / secondary / tertiary
dropdowns with refresh buttons, custom name, multiplier slider, interpolation method, checkpoint format, save as
float16, copy config from, bake in VAE, discard weights, and the metadata accordion; below it, a "Model tools"
area (beyond A1111): bake LoRAs into a checkpoint, extract a LoRA from two checkpoints, convert / prune.

The Merge button queues the same job as `POST /api/v1/jobs {"type": "merge"}` (`server.model_tools`), so the
browser, the API and the CLI make the same file; the tab shows the job's progress, and the new checkpoint is in
the dropdowns (and the top bar's list after a refresh) when it is done.
"""

from __future__ import annotations

import asyncio
import html
import json
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from pydantic import ValidationError

from sdwebui.core.errors import ParamError
from sdwebui.server.model_tools import BakeLoraJob, ConvertJob, ExtractLoraJob, MergeJob, submit_merge, submit_tool
from sdwebui.server.queue import QueueFull
from sdwebui.server.services import Services
from sdwebui.server.store import StoreUnavailable
from sdwebui.ui.fields import UIError, checkpoint_choices, vae_choices
from sdwebui.ui.icons import icon_button
from sdwebui.ui.txt2img import progress_html

POLL_SECONDS = 0.25
DESCRIPTIONS = {
    "No interpolation": "No interpolation will be used. Requires one model; A. Allows for format conversion and VAE "
                        "baking.",
    "Weighted sum": "A weighted sum will be used for interpolation. Requires two models; A and B. The result is "
                    "calculated as A * (1 - M) + B * M",
    "Add difference": "The difference between the last two models will be added to the first. Requires three "
                      "models; A, B and C. The result is calculated as A + (B - C) * M",
}
"""A1111's `update_interp_description` texts."""


@dataclass
class MergerTab:
    fields: dict[str, Any] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)
    tools: dict[str, Any] = field(default_factory=dict)
    """The "Model tools" area's inputs (bake LoRA, extract LoRA, convert)."""


def parse_loras(text: str) -> list[dict[str, Any]]:
    """"name:weight, name" -> [{"name", "weight"}] (weight 1 when left out)."""
    out = []
    for part in (p.strip() for p in str(text or "").split(",")):
        if not part:
            continue
        name, sep, weight = part.rpartition(":")
        try:
            out.append({"name": name.strip(), "weight": float(weight)} if sep and name else {"name": part, "weight": 1.0})
        except ValueError:
            out.append({"name": part, "weight": 1.0})
    return out


def tool_job(tool: str, values: dict[str, Any]):
    """The "Model tools" inputs for `tool` ("bake", "extract", "convert") as the native job."""
    overwrite = bool(values.get("overwrite"))
    try:
        if tool == "bake":
            return BakeLoraJob(checkpoint=values.get("bake_checkpoint") or "", loras=parse_loras(values["bake_loras"]),
                               name=values.get("bake_name") or "", overwrite=overwrite)
        if tool == "extract":
            return ExtractLoraJob(tuned=values.get("extract_tuned") or "", base=values.get("extract_base") or "",
                                  rank=int(values["extract_rank"]), conv_rank=int(values["extract_conv_rank"]),
                                  precision=values["extract_precision"], name=values.get("extract_name") or "",
                                  overwrite=overwrite)
        return ConvertJob(checkpoint=values.get("convert_checkpoint") or "", precision=values["convert_precision"],
                          keep_ema=bool(values["convert_keep_ema"]), name=values.get("convert_name") or "",
                          overwrite=overwrite)
    except ValidationError as error:
        first = error.errors()[0]
        raise UIError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def queue_tool(services: Services, tool: str, values: dict[str, Any]):
    job = tool_job(tool, values)
    try:
        return submit_tool(services, job)
    except ParamError as error:
        raise UIError(f"{error.field_path}: {error.message}") from None
    except (QueueFull, StoreUnavailable) as error:
        raise UIError(str(error)) from None


def description_html(method: str) -> str:
    return f"<p style='margin-bottom: 2.5em'>{html.escape(DESCRIPTIONS.get(method, ''))}</p>"


def merge_job(values: dict[str, Any]) -> MergeJob:
    """The tab's values as the native job (UIError naming the field for bad input)."""
    try:
        return MergeJob(
            primary_model_name=values.get("primary_model_name") or "",
            secondary_model_name=values.get("secondary_model_name") or None,
            tertiary_model_name=values.get("tertiary_model_name") or None,
            interp_method=values["interp_method"], multiplier=float(values["multiplier"]),
            save_as_half=bool(values["save_as_half"]), custom_name=str(values.get("custom_name") or ""),
            checkpoint_format=values["checkpoint_format"], config_source=int(values["config_source"]),
            bake_in_vae=str(values.get("bake_in_vae") or "None"), discard_weights=str(values.get("discard_weights") or ""),
            save_metadata=bool(values["save_metadata"]), add_merge_recipe=bool(values["add_merge_recipe"]),
            copy_metadata_fields=bool(values["copy_metadata_fields"]),
            metadata_json=str(values.get("metadata_json") or "{}"), overwrite=bool(values.get("overwrite")))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "primary_model_name"
        if where == "primary_model_name":
            raise UIError("Failed: Merging requires a primary model.") from None
        raise UIError(f"{where}: {first['msg']}") from None


def queue_merge(services: Services, values: dict[str, Any]):
    job = merge_job(values)
    try:
        return submit_merge(services, job)
    except ParamError as error:
        raise UIError(f"{error.field_path}: {error.message}") from None
    except (QueueFull, StoreUnavailable) as error:
        raise UIError(str(error)) from None


def same_title(value: str | None, choices: list[str]) -> str | None:
    """The listed title of the checkpoint `value` named (its title gains a hash once the merge has hashed it)."""
    if not value:
        return None
    name = value.split(" [")[0]
    return next((title for title in choices if title.split(" [")[0] == name), None)


def read_metadata(services: Services, *names) -> str:
    """A1111's "Read metadata from selected checkpoints": their safetensors metadata, merged, as JSON."""
    from sdwebui.models.files import ModelFileError, read_metadata as file_metadata

    metadata: dict[str, Any] = {}
    for name in names:
        if not name:
            continue
        try:
            metadata.update(file_metadata(services.resolve_checkpoint(name)))
        except (LookupError, ModelFileError):
            continue
    return json.dumps(metadata, indent=4, ensure_ascii=False)


def build(services: Services) -> MergerTab:
    tab = MergerTab()
    f, c = tab.fields, tab.components
    titles, _ = checkpoint_choices(services)
    vaes, _ = vae_choices(services)
    vae_files = [name for name in vaes if name not in ("Automatic", "None")]
    with gr.Row(equal_height=False):
        with gr.Column(variant="compact"):
            c["description"] = gr.HTML(description_html("Weighted sum"), elem_id="modelmerger_interp_description")
            with gr.Row(elem_id="modelmerger_models"):
                for key, label, slot in (("primary_model_name", "Primary model (A)", "A"),
                                         ("secondary_model_name", "Secondary model (B)", "B"),
                                         ("tertiary_model_name", "Tertiary model (C)", "C")):
                    f[key] = gr.Dropdown(titles, value=None, label=label, elem_id=f"modelmerger_{key}", min_width=160)
                    c[f"refresh_{slot}"] = icon_button("refresh", "Refresh the checkpoint list",
                                                       f"refresh_checkpoint_{slot}", scale=0, min_width=44)
            f["custom_name"] = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
            f["multiplier"] = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A",
                                        elem_id="modelmerger_interp_amount")
            f["interp_method"] = gr.Radio(["No interpolation", "Weighted sum", "Add difference"], value="Weighted sum",
                                          label="Interpolation Method", elem_id="modelmerger_interp_method")
            with gr.Row():
                f["checkpoint_format"] = gr.Radio(["ckpt", "safetensors"], value="safetensors",
                                                  label="Checkpoint format", elem_id="modelmerger_checkpoint_format")
                f["save_as_half"] = gr.Checkbox(False, label="Save as float16", elem_id="modelmerger_save_as_half")
            with gr.Row():
                f["config_source"] = gr.Radio(["A, B or C", "B", "C", "Don't"], value="A, B or C", type="index",
                                              label="Copy config from", elem_id="modelmerger_config_method")
                f["bake_in_vae"] = gr.Dropdown(["None", *vae_files], value="None", label="Bake in VAE",
                                               elem_id="modelmerger_bake_in_vae", min_width=160)
                c["refresh_vae"] = icon_button("refresh", "Refresh the VAE list", "modelmerger_refresh_bake_in_vae",
                                               scale=0, min_width=44)
            f["discard_weights"] = gr.Textbox("", label="Discard weights with matching name",
                                              elem_id="modelmerger_discard_weights")
            f["overwrite"] = gr.Checkbox(False, label="Overwrite an existing checkpoint of the same name",
                                         elem_id="modelmerger_overwrite")
            with gr.Accordion("Metadata", open=False, elem_id="modelmerger_metadata") as metadata_editor:
                with gr.Row():
                    f["save_metadata"] = gr.Checkbox(True, label="Save metadata", elem_id="modelmerger_save_metadata")
                    f["add_merge_recipe"] = gr.Checkbox(True, label="Add merge recipe metadata",
                                                        elem_id="modelmerger_add_recipe")
                    f["copy_metadata_fields"] = gr.Checkbox(True, label="Copy metadata from merged models",
                                                            elem_id="modelmerger_copy_metadata")
                f["metadata_json"] = gr.TextArea("{}", label="Metadata in JSON format", elem_id="modelmerger_metadata_json")
                c["read_metadata"] = gr.Button("Read metadata from selected checkpoints",
                                               elem_id="modelmerger_read_metadata")
            c["merge"] = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
            t = tab.tools
            with gr.Accordion("Model tools", open=False, elem_id="modeltools"):
                with gr.Tabs():
                    with gr.Tab("Bake LoRA", elem_id="modeltools_bake_tab"):
                        t["bake_checkpoint"] = gr.Dropdown(titles, value=None, label="Checkpoint",
                                                           elem_id="modeltools_bake_checkpoint")
                        t["bake_loras"] = gr.Textbox("", label="LoRAs (name:weight, comma-separated)",
                                                     placeholder="my-style:0.7, detail:0.3", elem_id="modeltools_bake_loras")
                        t["bake_name"] = gr.Textbox("", label="New checkpoint name", elem_id="modeltools_bake_name")
                        c["bake"] = gr.Button("Bake", variant="primary", elem_id="modeltools_bake")
                    with gr.Tab("Extract LoRA", elem_id="modeltools_extract_tab"):
                        with gr.Row():
                            t["extract_tuned"] = gr.Dropdown(titles, value=None, label="Fine-tuned model",
                                                             elem_id="modeltools_extract_tuned")
                            t["extract_base"] = gr.Dropdown(titles, value=None, label="Base model",
                                                            elem_id="modeltools_extract_base")
                        with gr.Row():
                            t["extract_rank"] = gr.Slider(1, 256, value=32, step=1, label="Rank",
                                                          elem_id="modeltools_extract_rank")
                            t["extract_conv_rank"] = gr.Slider(1, 256, value=32, step=1, label="Conv rank (3x3)",
                                                               elem_id="modeltools_extract_conv_rank")
                        t["extract_precision"] = gr.Radio(["fp16", "bf16", "fp32"], value="fp16", label="Precision",
                                                          elem_id="modeltools_extract_precision")
                        t["extract_name"] = gr.Textbox("", label="LoRA name (in the LoRA folder)",
                                                       elem_id="modeltools_extract_name")
                        c["extract"] = gr.Button("Extract", variant="primary", elem_id="modeltools_extract")
                    with gr.Tab("Convert", elem_id="modeltools_convert_tab"):
                        t["convert_checkpoint"] = gr.Dropdown(titles, value=None, label="Checkpoint or diffusers folder",
                                                              elem_id="modeltools_convert_checkpoint")
                        with gr.Row():
                            t["convert_precision"] = gr.Radio(["fp16", "bf16", "fp32", "keep"], value="fp16",
                                                              label="Precision", elem_id="modeltools_convert_precision")
                            t["convert_keep_ema"] = gr.Checkbox(False, label="Keep EMA weights",
                                                                elem_id="modeltools_convert_keep_ema")
                        t["convert_name"] = gr.Textbox("", label="New checkpoint name", elem_id="modeltools_convert_name")
                        c["convert"] = gr.Button("Convert", variant="primary", elem_id="modeltools_convert")
                t["overwrite"] = gr.Checkbox(False, label="Overwrite an existing file of the same name",
                                             elem_id="modeltools_overwrite")
        with gr.Column(variant="compact", elem_id="modelmerger_results_container"):
            c["result"] = gr.HTML("", elem_id="modelmerger_result", padding=False)
            c["tools_result"] = gr.HTML("", elem_id="modeltools_result", padding=False)

    order = list(f)
    dropdowns = [f["primary_model_name"], f["secondary_model_name"], f["tertiary_model_name"]]
    f["interp_method"].change(description_html, f["interp_method"], c["description"], show_progress="hidden")
    f["checkpoint_format"].change(lambda fmt: gr.update(visible=fmt == "safetensors"), f["checkpoint_format"],
                                  metadata_editor, show_progress="hidden")
    c["read_metadata"].click(lambda *names: read_metadata(services, *names), dropdowns, f["metadata_json"])

    def refreshed():
        return gr.update(choices=checkpoint_choices(services)[0])

    for slot, dropdown in zip("ABC", dropdowns):
        c[f"refresh_{slot}"].click(refreshed, None, dropdown, show_progress="hidden")
    c["refresh_vae"].click(
        lambda: gr.update(choices=["None", *[n for n in vae_choices(services)[0] if n not in ("Automatic", "None")]]),
        None, f["bake_in_vae"], show_progress="hidden")

    async def merge(*values):
        try:
            job = await asyncio.to_thread(queue_merge, services, dict(zip(order, values)))
        except UIError as error:
            yield progress_html(0, f"Error merging checkpoints: {error}", state="error"), *[gr.skip()] * 3
            return
        while not job.finished.is_set():
            p = job.progress
            text = f"{p.textinfo or 'Merging'} {p.step}/{p.total_steps}" if p.total_steps else "Waiting…"
            yield progress_html(p.fraction, text, state="running"), *[gr.skip()] * 3
            await asyncio.sleep(POLL_SECONDS)
        result = job.result or {}
        if job.status == "done" and result.get("checkpoint"):
            message = progress_html(1.0, result["info"], state="done")
        elif job.status == "interrupted":
            message = progress_html(0, "Interrupted: nothing was written", state="error")
        else:
            message = progress_html(0, f"Error merging checkpoints: {job.error or job.status}", state="error")
        choices = checkpoint_choices(services)[0]
        chosen = dict(zip(order, values))
        yield message, *[gr.update(choices=choices, value=same_title(chosen.get(name), choices))
                         for name in ("primary_model_name", "secondary_model_name", "tertiary_model_name")]

    c["merge"].click(merge, [f[name] for name in order], [c["result"], *dropdowns])

    tool_order = list(tab.tools)

    def tool_runner(tool: str):
        async def run(*values):
            try:
                job = await asyncio.to_thread(queue_tool, services, tool, dict(zip(tool_order, values)))
            except UIError as error:
                yield progress_html(0, f"Error: {error}", state="error")
                return
            while not job.finished.is_set():
                p = job.progress
                text = f"{p.textinfo or 'Working'} {p.step}/{p.total_steps}" if p.total_steps else "Waiting…"
                yield progress_html(p.fraction, text, state="running")
                await asyncio.sleep(POLL_SECONDS)
            result = job.result or {}
            if job.status == "done" and result.get("file"):
                yield progress_html(1.0, result["info"], state="done")
            else:
                yield progress_html(0, f"Error: {job.error or result.get('info') or job.status}", state="error")
        return run

    for tool in ("bake", "extract", "convert"):
        c[tool].click(tool_runner(tool), [tab.tools[name] for name in tool_order], c["tools_result"])
    return tab


__all__ = ["build", "MergerTab", "merge_job", "queue_merge", "tool_job", "queue_tool", "parse_loras", "read_metadata", "description_html", "DESCRIPTIONS"]
