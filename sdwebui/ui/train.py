"""The Train tab, in A1111's layout (`modules/ui.py`, "Train"): sub-tabs Create embedding, Create hypernetwork and
Train, plus LoRA (kohya-style LoRA training, the native API's `train_lora` job). The buttons go through the same functions as `/sdapi/v1/create/*` and `/sdapi/v1/train/*`
(`server.training`): a training job is queued like generation, the tab shows its progress (step, loss, last
prompt) and its latest preview image, and Interrupt stops it after the current step (the steps done are saved).
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import gradio as gr
from PIL import Image
from pydantic import BaseModel, ValidationError

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.textual_inversion import list_templates
from sdwebui.server.queue import QueueFull
from sdwebui.server.services import Services
from sdwebui.server.store import StoreUnavailable
from sdwebui.server.training import (
    CreateEmbeddingJob,
    CreateHypernetworkJob,
    TrainEmbeddingJob,
    TrainHypernetworkJob,
    TrainLoraJob,
    create_hypernetwork,
    submit_create,
    submit_train,
    submit_training,
)
from sdwebui.ui.fields import UIError
from sdwebui.ui.icons import icon_button
from sdwebui.ui.txt2img import progress_html

POLL_SECONDS = 0.5
HYPERNETWORK_SIZES = ("768", "320", "640", "1024", "1280")
ACTIVATIONS = ("linear", "relu", "leakyrelu", "elu", "swish", "tanh", "sigmoid", "celu", "gelu", "glu", "hardshrink",
               "hardsigmoid", "hardtanh", "logsigmoid", "mish", "prelu", "rrelu", "relu6", "selu", "silu",
               "softplus", "softshrink", "softsign", "tanhshrink")
"""A1111's Create hypernetwork dropdown (its seven, then torch's activations by lower-case name)."""
TRAIN_FIELDS = ("learn_rate", "batch_size", "gradient_step", "data_root", "log_directory", "template_filename",
                "training_width", "training_height", "varsize", "steps", "clip_grad_mode", "clip_grad_value",
                "shuffle_tags", "tag_drop_out", "latent_sampling_method", "create_image_every", "use_weight")


def _checked(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    try:
        return model(**values)
    except ValidationError as error:
        first = error.errors()[0]
        raise UIError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _queued(submit, services: Services, job: BaseModel):
    try:
        return submit(services, job)
    except ParamError as error:
        raise UIError(f"{error.field_path}: {error.message}") from None
    except (QueueFull, StoreUnavailable) as error:
        raise UIError(str(error)) from None


def embedding_names(services: Services) -> list[str]:
    folder = services.paths.embeddings_dir
    if not folder.is_dir():
        return []
    return sorted({p.stem for p in folder.rglob("*") if p.suffix.lower() in (".pt", ".safetensors", ".bin")})


def hypernetwork_names(services: Services) -> list[str]:
    return list(services.hypernetworks.files())


def template_names(services: Services) -> list[str]:
    return sorted(list_templates([services.paths.data_dir / "textual_inversion_templates"]))


def train_job(kind: str, values: dict[str, Any]) -> BaseModel:
    """The Train sub-tab's inputs as A1111's `train_embedding` / `train_hypernetwork` arguments."""
    common = {name: values[name] for name in TRAIN_FIELDS}
    common["batch_size"], common["gradient_step"] = int(common["batch_size"]), int(common["gradient_step"])
    for name in ("training_width", "training_height", "steps", "create_image_every"):
        common[name] = int(common[name])
    every = int(values["save_every"])
    if kind == "hypernetwork":
        return _checked(TrainHypernetworkJob, {**common, "learn_rate": values["hypernetwork_learn_rate"],
                                               "hypernetwork_name": values.get("hypernetwork_name") or "",
                                               "save_hypernetwork_every": every})
    return _checked(TrainEmbeddingJob, {**common, "embedding_name": values.get("embedding_name") or "",
                                        "save_embedding_every": every})


LORA_FIELDS = ("lora_name", "lora_data_root", "lora_rank", "lora_alpha", "lora_learn_rate", "lora_steps",
               "lora_batch_size", "lora_resolution", "lora_buckets", "lora_resume", "lora_overwrite_old",
               "lora_shuffle_tags", "lora_tag_drop_out", "lora_log_directory", "lora_save_every",
               "lora_create_image_every", "lora_preview_prompt")


def lora_job(values: dict[str, Any]) -> TrainLoraJob:
    """The LoRA sub-tab's inputs (`LORA_FIELDS`) as a `train_lora` job."""
    v = {name.removeprefix("lora_"): values[name] for name in LORA_FIELDS}
    for name in ("rank", "steps", "batch_size", "resolution", "save_every", "create_image_every"):
        v[name] = int(v[name])
    v["name"], v["data_root"] = v["name"] or "", v["data_root"] or ""
    v["alpha"] = float(v["alpha"]) if v["alpha"] not in (None, "") else None
    prompt = v.pop("preview_prompt") or ""
    if prompt.strip():
        v.update(preview_from_txt2img=True, preview_prompt=prompt, preview_width=v["resolution"],
                 preview_height=v["resolution"])
    return _checked(TrainLoraJob, v)


def build(services: Services) -> dict[str, Any]:
    c: dict[str, Any] = {}
    with gr.Row(equal_height=False):
        with gr.Column(variant="panel"):
            with gr.Tabs(elem_id="train_tabs"):
                with gr.Tab("Create embedding", id="train_create_embedding"):
                    c["new_embedding_name"] = gr.Textbox(label="Name", elem_id="train_new_embedding_name")
                    c["initialization_text"] = gr.Textbox(label="Initialization text", value="*")
                    c["nvpt"] = gr.Slider(label="Number of vectors per token", minimum=1, maximum=75, step=1, value=1)
                    c["overwrite_old_embedding"] = gr.Checkbox(label="Overwrite Old Embedding", value=False)
                    c["create_embedding"] = gr.Button("Create embedding", variant="primary",
                                                      elem_id="train_create_embedding_button")
                with gr.Tab("Create hypernetwork", id="train_create_hypernetwork"):
                    c["new_hypernetwork_name"] = gr.Textbox(label="Name")
                    c["new_hypernetwork_sizes"] = gr.CheckboxGroup(label="Modules", choices=list(HYPERNETWORK_SIZES),
                                                                   value=["768", "320", "640", "1280"])
                    c["new_hypernetwork_layer_structure"] = gr.Textbox(
                        "1, 2, 1", label="Enter hypernetwork layer structure", placeholder="1st and last digit must be 1. ex:'1, 2, 1'")
                    c["new_hypernetwork_activation_func"] = gr.Dropdown(
                        value="linear", label="Select activation function of hypernetwork. Recommended : Swish / Linear(none)",
                        choices=list(ACTIVATIONS))
                    c["new_hypernetwork_initialization_option"] = gr.Dropdown(
                        value="Normal", label="Select Layer weights initialization. Recommended: Kaiming for relu-like, "
                        "Xavier for sigmoid-like, Normal otherwise",
                        choices=["Normal", "KaimingUniform", "KaimingNormal", "XavierUniform", "XavierNormal"])
                    c["new_hypernetwork_add_layer_norm"] = gr.Checkbox(label="Add layer normalization")
                    c["new_hypernetwork_use_dropout"] = gr.Checkbox(label="Use dropout")
                    c["new_hypernetwork_dropout_structure"] = gr.Textbox(
                        "0, 0, 0", label="Enter hypernetwork Dropout structure (or empty)",
                        placeholder="1st and last digit must be 0 and values should be between 0 and 1. ex:'0, 0.01, 0'")
                    c["overwrite_old_hypernetwork"] = gr.Checkbox(value=False, label="Overwrite Old Hypernetwork")
                    c["create_hypernetwork"] = gr.Button("Create hypernetwork", variant="primary")
                with gr.Tab("Train", id="train_train"):
                    gr.Markdown("Train an embedding or Hypernetwork; you must specify a directory with a set of 1:1 "
                                "ratio images")
                    with gr.Row():
                        c["embedding_name"] = gr.Dropdown(label="Embedding", choices=embedding_names(services),
                                                          elem_id="train_embedding")
                        c["hypernetwork_name"] = gr.Dropdown(label="Hypernetwork",
                                                             choices=hypernetwork_names(services))
                        c["refresh"] = icon_button("refresh", "Refresh the embedding and hypernetwork lists",
                                                   "train_refresh", scale=0, min_width=40)
                    with gr.Row():
                        c["learn_rate"] = gr.Textbox(label="Embedding Learning rate", placeholder="Embedding Learning rate",
                                                     value="0.005")
                        c["hypernetwork_learn_rate"] = gr.Textbox(label="Hypernetwork Learning rate",
                                                                  placeholder="Hypernetwork Learning rate",
                                                                  value="0.00001")
                    with gr.Row():
                        c["clip_grad_mode"] = gr.Dropdown(value="disabled", label="Gradient Clipping",
                                                          choices=["disabled", "value", "norm"])
                        c["clip_grad_value"] = gr.Textbox(placeholder="Gradient clip value", value="0.1",
                                                          show_label=False)
                    with gr.Row():
                        c["batch_size"] = gr.Number(label="Batch size", value=1, precision=0)
                        c["gradient_step"] = gr.Number(label="Gradient accumulation steps", value=1, precision=0)
                    c["data_root"] = gr.Textbox(label="Dataset directory", placeholder="Path to directory with input "
                                                "images", elem_id="train_dataset_directory")
                    c["log_directory"] = gr.Textbox(label="Log directory", value="textual_inversion")
                    c["template_filename"] = gr.Dropdown(label="Prompt template", value="style_filewords.txt",
                                                         choices=template_names(services))
                    c["training_width"] = gr.Slider(minimum=64, maximum=2048, step=8, label="Width", value=512)
                    c["training_height"] = gr.Slider(minimum=64, maximum=2048, step=8, label="Height", value=512)
                    c["varsize"] = gr.Checkbox(label="Do not resize images", value=False)
                    c["steps"] = gr.Number(label="Max steps", value=100000, precision=0)
                    with gr.Row():
                        c["create_image_every"] = gr.Number(label="Save an image to log directory every N steps, 0 to "
                                                            "disable", value=500, precision=0)
                        c["save_every"] = gr.Number(label="Save a copy of embedding to log directory every N steps, "
                                                    "0 to disable", value=500, precision=0)
                    c["use_weight"] = gr.Checkbox(label="Use PNG alpha channel as loss weight", value=False)
                    c["shuffle_tags"] = gr.Checkbox(label="Shuffle tags by ',' when creating prompts.", value=False)
                    c["tag_drop_out"] = gr.Slider(minimum=0, maximum=1, step=0.1, label="Drop out tags when "
                                                  "creating prompts.", value=0)
                    c["latent_sampling_method"] = gr.Radio(label="Choose latent sampling method", value="once",
                                                           choices=["once", "deterministic", "random"])
                    with gr.Row():
                        c["interrupt"] = gr.Button("Interrupt", elem_id="train_interrupt")
                        c["train_hypernetwork"] = gr.Button("Train Hypernetwork", variant="primary")
                        c["train_embedding"] = gr.Button("Train Embedding", variant="primary",
                                                         elem_id="train_train_embedding")
                with gr.Tab("LoRA", id="train_lora"):
                    gr.Markdown("Train a LoRA on the UNet's attention (kohya's format, saved to models/Lora): the "
                                "images of a folder, each captioned by the .txt file beside it (else its file name). "
                                "Use it in prompts as `<lora:name:1>`.")
                    c["lora_name"] = gr.Textbox(label="Name", elem_id="train_lora_name")
                    c["lora_data_root"] = gr.Textbox(label="Dataset directory", placeholder="Path to directory with "
                                                     "input images and .txt captions", elem_id="train_lora_dataset")
                    with gr.Row():
                        c["lora_rank"] = gr.Number(label="Rank (network dim)", value=8, precision=0)
                        c["lora_alpha"] = gr.Number(label="Alpha", value=8)
                        c["lora_learn_rate"] = gr.Textbox(label="Learning rate", value="1e-4")
                    with gr.Row():
                        c["lora_steps"] = gr.Number(label="Max steps", value=1000, precision=0)
                        c["lora_batch_size"] = gr.Number(label="Batch size", value=1, precision=0)
                        c["lora_resolution"] = gr.Slider(minimum=64, maximum=2048, step=8, label="Resolution",
                                                         value=512)
                    with gr.Row():
                        c["lora_buckets"] = gr.Checkbox(label="Aspect-ratio buckets", value=True)
                        c["lora_resume"] = gr.Checkbox(label="Resume an existing file of this name", value=True)
                        c["lora_overwrite_old"] = gr.Checkbox(label="Overwrite Old LoRA", value=False)
                    with gr.Row():
                        c["lora_shuffle_tags"] = gr.Checkbox(label="Shuffle tags by ','", value=False)
                        c["lora_tag_drop_out"] = gr.Slider(minimum=0, maximum=1, step=0.1, label="Drop out tags",
                                                           value=0)
                    c["lora_log_directory"] = gr.Textbox(label="Log directory", value="textual_inversion")
                    with gr.Row():
                        c["lora_create_image_every"] = gr.Number(label="Save an image to log directory every N "
                                                                 "steps, 0 to disable", value=500, precision=0)
                        c["lora_save_every"] = gr.Number(label="Save a copy of the LoRA to log directory every N "
                                                         "steps, 0 to disable", value=500, precision=0)
                    c["lora_preview_prompt"] = gr.Textbox(label="Preview prompt (empty: the last caption)")
                    with gr.Row():
                        c["lora_interrupt"] = gr.Button("Interrupt")
                        c["train_lora"] = gr.Button("Train LoRA", variant="primary", elem_id="train_train_lora")
        with gr.Column():
            c["progress"] = gr.HTML(elem_id="train_progress")
            c["preview"] = gr.Image(label="Preview", type="pil", interactive=False, elem_id="train_preview")
            c["info"] = gr.HTML(elem_id="train_info")

    async def create_embedding(name, init_text, nvpt, overwrite):
        try:
            job = _checked(CreateEmbeddingJob, {"name": name or "", "init_text": init_text or "",
                                                "num_vectors_per_token": int(nvpt), "overwrite_old": bool(overwrite)})
            handle = await asyncio.to_thread(_queued, submit_create, services, job)
        except UIError as error:
            return progress_html(0, f"Error: {error}", state="error"), gr.skip()
        await asyncio.to_thread(handle.finished.wait)
        if handle.status != "done":
            return progress_html(0, f"Error: {handle.error or handle.status}", state="error"), gr.skip()
        return (progress_html(1.0, f"Created: {handle.result['info'].split(': ', 1)[-1]}", state="done"),
                gr.update(choices=embedding_names(services), value=(handle.result["file"].rsplit(".", 1)[0])))

    c["create_embedding"].click(create_embedding, [c["new_embedding_name"], c["initialization_text"], c["nvpt"],
                                                   c["overwrite_old_embedding"]], [c["progress"], c["embedding_name"]])

    def create_hypernet(name, sizes, structure, activation, init, layer_norm, dropout, dropout_structure, overwrite):
        try:
            job = _checked(CreateHypernetworkJob, {
                "name": name or "", "enable_sizes": list(sizes or []), "layer_structure": structure or "",
                "activation_func": activation, "weight_init": init, "add_layer_norm": bool(layer_norm),
                "use_dropout": bool(dropout), "dropout_structure": dropout_structure or "",
                "overwrite_old": bool(overwrite)})
            path = create_hypernetwork(services, job)
        except UIError as error:
            return progress_html(0, f"Error: {error}", state="error"), gr.skip()
        except ParamError as error:
            return progress_html(0, f"Error: {error.field_path}: {error.message}", state="error"), gr.skip()
        return (progress_html(1.0, f"Created: {path}", state="done"),
                gr.update(choices=hypernetwork_names(services), value=path.stem))

    c["create_hypernetwork"].click(create_hypernet, [c[k] for k in (
        "new_hypernetwork_name", "new_hypernetwork_sizes", "new_hypernetwork_layer_structure",
        "new_hypernetwork_activation_func", "new_hypernetwork_initialization_option",
        "new_hypernetwork_add_layer_norm", "new_hypernetwork_use_dropout", "new_hypernetwork_dropout_structure",
        "overwrite_old_hypernetwork")], [c["progress"], c["hypernetwork_name"]])

    order = ["embedding_name", "hypernetwork_name", "hypernetwork_learn_rate", "save_every", *TRAIN_FIELDS]

    def trainer(kind: str):
        async def train(*values):
            try:
                if kind == "lora":
                    job = lora_job(dict(zip(LORA_FIELDS, values)))
                    handle = await asyncio.to_thread(_queued, submit_training, services, job)
                else:
                    job = train_job(kind, dict(zip(order, values)))
                    handle = await asyncio.to_thread(_queued, submit_train, services, job)
            except UIError as error:
                yield progress_html(0, f"Error: {error}", state="error"), gr.skip(), gr.skip()
                return
            shown = None
            while not handle.finished.is_set():
                p = handle.progress
                text = f"{p.textinfo or 'Training'} ({p.step}/{p.total_steps})" if p.total_steps else \
                    (p.textinfo or "Waiting…")
                image = gr.skip()
                if p.preview_png is not None and p.preview_png is not shown:
                    shown = p.preview_png
                    image = Image.open(io.BytesIO(shown))
                yield progress_html(p.fraction, text, state="running"), image, gr.skip()
                await asyncio.sleep(POLL_SECONDS)
            result = handle.result or {}
            if handle.status in ("done", "interrupted") and result.get("info"):
                state = "done" if handle.status == "done" else "error"
                note = "Interrupted; the steps done are saved. " if handle.status == "interrupted" else ""
                yield (progress_html(1.0 if state == "done" else 0, f"{note}{result['info']}", state=state),
                       gr.skip(), f"<p>Step {result.get('step')}; log: {result.get('log_directory') or '—'}</p>")
            else:
                yield progress_html(0, f"Error: {handle.error or handle.status}", state="error"), gr.skip(), gr.skip()
        return train

    inputs = [c[name] for name in order]
    c["train_embedding"].click(trainer("embedding"), inputs, [c["progress"], c["preview"], c["info"]])
    c["train_hypernetwork"].click(trainer("hypernetwork"), inputs, [c["progress"], c["preview"], c["info"]])
    c["train_lora"].click(trainer("lora"), [c[name] for name in LORA_FIELDS],
                          [c["progress"], c["preview"], c["info"]])
    c["interrupt"].click(lambda: services.generation.interrupt(), None, None)
    c["lora_interrupt"].click(lambda: services.generation.interrupt(), None, None)
    c["refresh"].click(lambda: (gr.update(choices=embedding_names(services)),
                                gr.update(choices=hypernetwork_names(services))),
                       None, [c["embedding_name"], c["hypernetwork_name"]], show_progress="hidden")
    return c


__all__ = ["build", "train_job", "lora_job", "LORA_FIELDS", "embedding_names", "hypernetwork_names", "template_names"]
