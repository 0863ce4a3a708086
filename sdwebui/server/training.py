"""Textual-inversion creation and training as queued jobs (A1111's Train tab and its `/sdapi/v1/create/embedding`,
`/sdapi/v1/train/embedding` routes; the work itself is `pipelines.textual_inversion`).

Both need the checkpoint of the `sd_model_checkpoint` setting loaded, so they run in the queue like generation:
one heavy thing at a time, with progress (`/sdapi/v1/progress`: step / steps, loss and the last prompt in
`textinfo`, the last preview image), Interrupt (training stops after the current step and saves what it has),
and the job record as history. Everything a request names is checked before it is queued, so bad input is a
422 naming the field: an unknown embedding or template, a data folder that is missing, empty or holds no image,
steps <= 0, a learning rate or clipping schedule that does not parse, a log folder outside the data folder.

The bodies use A1111's argument names (`train_embedding(id_task, embedding_name, learn_rate, ...)`); A1111's UI
defaults fill what a request leaves out. `log_directory` is relative to the data folder (A1111: to its own
folder), and may not leave it: an API client does not choose where the server writes.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.params import Txt2ImgParams
from sdwebui.server.payloads import TrainingPayload

if TYPE_CHECKING:
    from sdwebui.server.queue import JobHandle
    from sdwebui.server.services import Services


class CreateEmbeddingJob(BaseModel):
    """A1111's `create_embedding(name, num_vectors_per_token, overwrite_old, init_text='*')`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["create_embedding"] = "create_embedding"
    name: str = Field(..., min_length=1, max_length=200)
    num_vectors_per_token: int = Field(1, ge=1, le=75)
    overwrite_old: bool = False
    init_text: str = Field("*", max_length=1000)


class _PreviewFields(BaseModel):
    """A training job's preview image every `create_image_every` steps: A1111's `preview_*` arguments (with
    `preview_from_txt2img` off, the last training text with 20 steps, as A1111)."""

    model_config = ConfigDict(extra="forbid")

    preview_from_txt2img: bool = False
    preview_prompt: str = Field("", max_length=10000)
    preview_negative_prompt: str = Field("", max_length=10000)
    preview_steps: int = Field(20, ge=1, le=150)
    preview_sampler_name: str | None = Field(None, max_length=100)
    preview_sampler_index: int | None = Field(None, ge=0)
    preview_scheduler: str | None = Field(None, max_length=100)
    preview_cfg_scale: float = Field(7.0, ge=1.0, le=30.0)
    preview_seed: int = -1
    preview_width: int = Field(512, ge=64, le=2048, multiple_of=8)
    preview_height: int = Field(512, ge=64, le=2048, multiple_of=8)


class _TrainJob(_PreviewFields):
    """The arguments A1111's `train_embedding` and `train_hypernetwork` share (the Train tab's defaults)."""

    model_config = ConfigDict(extra="forbid")

    id_task: str | None = Field(None, max_length=200)
    learn_rate: str | float = Field("0.005", description='a rate, or a schedule "0.005:100, 1e-4:1000, 1e-5"')
    batch_size: int = Field(1, ge=1, le=64)
    gradient_step: int = Field(1, ge=1, le=1000)
    data_root: str = Field(..., min_length=1, max_length=1000)
    log_directory: str = Field("textual_inversion", max_length=1000)
    training_width: int = Field(512, ge=64, le=2048, multiple_of=8)
    training_height: int = Field(512, ge=64, le=2048, multiple_of=8)
    varsize: bool = False
    steps: int = Field(100000, description="train until the file's step reaches this")
    clip_grad_mode: str = "disabled"
    clip_grad_value: str | float = "0.1"
    shuffle_tags: bool = False
    tag_drop_out: float = Field(0.0, ge=0.0, le=1.0)
    latent_sampling_method: str = "once"
    use_weight: bool = False
    create_image_every: int = Field(500, ge=0)
    template_filename: str = Field("style_filewords.txt", max_length=200)


class TrainEmbeddingJob(_TrainJob):
    """A1111's `train_embedding` arguments."""

    type: Literal["train_embedding"] = "train_embedding"
    embedding_name: str = Field(..., min_length=1, max_length=200)
    save_embedding_every: int = Field(500, ge=0)
    save_image_with_stored_embedding: bool = True


class TrainHypernetworkJob(_TrainJob):
    """A1111's `train_hypernetwork` arguments (its Train tab's hypernetwork learning rate by default)."""

    type: Literal["train_hypernetwork"] = "train_hypernetwork"
    hypernetwork_name: str = Field(..., min_length=1, max_length=200)
    learn_rate: str | float = "0.00001"
    save_hypernetwork_every: int = Field(500, ge=0)


class CreateHypernetworkJob(BaseModel):
    """A1111's `create_hypernetwork(name, enable_sizes, overwrite_old, layer_structure, activation_func,
    weight_init, add_layer_norm, use_dropout, dropout_structure)` with its UI defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200)
    enable_sizes: list[int | str] = Field(default_factory=lambda: [768, 320, 640, 1280], min_length=1, max_length=16)
    overwrite_old: bool = False
    layer_structure: str | list[float] = "1, 2, 1"
    activation_func: str = "linear"
    weight_init: str = "Normal"
    add_layer_norm: bool = False
    use_dropout: bool = False
    dropout_structure: str | list[float] = "0, 0, 0"


class TrainLoraJob(_PreviewFields):
    """LoRA training (kohya's `train_network.py` semantics, `pipelines.lora_training`): the images of `data_root`
    with their `.txt` captions, a LoRA of `rank` / `alpha` on the UNet's attention projections, written to
    models/Lora/<name>.safetensors in kohya's format. An existing file of that name is resumed from its
    `ss_steps` (`resume`), or replaced with `overwrite_old`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["train_lora"] = "train_lora"
    name: str = Field(..., min_length=1, max_length=200)
    data_root: str = Field(..., min_length=1, max_length=1000)
    rank: int = Field(8, description="the LoRA's dimension (network_dim), > 0", le=1024)
    alpha: float | None = Field(None, description="network_alpha (scale alpha / rank); default: the rank",
                                gt=0, le=1024)
    learn_rate: str | float = Field("1e-4", description='a rate, or a schedule "1e-4:500, 5e-5"')
    steps: int = Field(1000, description="train until the file's ss_steps reaches this")
    batch_size: int = Field(1, ge=1, le=64)
    resolution: int = Field(512, ge=64, le=2048, multiple_of=8)
    buckets: bool = Field(True, description="aspect-ratio buckets of about resolution² pixels (kohya)")
    resume: bool = True
    overwrite_old: bool = False
    shuffle_tags: bool = False
    tag_drop_out: float = Field(0.0, ge=0.0, le=1.0)
    log_directory: str = Field("textual_inversion", max_length=1000)
    save_every: int = Field(500, ge=0, description="a copy in the log folder every N steps (0: never)")
    create_image_every: int = Field(500, ge=0)
    seed: int | None = None


TRAINING_JOBS = {"create_embedding": CreateEmbeddingJob, "train_embedding": TrainEmbeddingJob,
                 "train_hypernetwork": TrainHypernetworkJob, "train_lora": TrainLoraJob}
"""The native API's job types (`POST /api/v1/jobs {"type": "train_embedding", ...}`): the A1111 routes' bodies."""


def submit_training(services: "Services", job: BaseModel):
    """Queue a create_embedding / train_embedding / train_hypernetwork job (ParamError before anything is queued)."""
    if isinstance(job, CreateEmbeddingJob):
        return submit_create(services, job)
    if isinstance(job, TrainLoraJob):
        payload = prepare_train_lora(services, job)
        return services.queue.submit(payload.job, payload)
    return submit_train(services, job)


def _embedding_path(services: "Services", name: str, field: str) -> Path:
    folder = services.paths.embeddings_dir
    embedding = services.embeddings.get(name)
    if embedding is not None:
        return Path(embedding.path)
    for suffix in (".pt", ".safetensors", ".bin"):
        if (folder / f"{name}{suffix}").is_file():
            return folder / f"{name}{suffix}"
    raise ParamError((field,), f"no embedding {name!r} in the embeddings folder")


def _model(services: "Services") -> tuple[str, str]:
    options = services.options.all()
    try:
        checkpoint = services.resolve_checkpoint(options.get("sd_model_checkpoint"))
    except LookupError as error:
        raise ParamError(("sd_model_checkpoint",), str(error.args[0]) if error.args else str(error)) from None
    return str(checkpoint), str(options.get("sd_vae") or "Automatic")


def prepare_create(services: "Services", job: CreateEmbeddingJob) -> TrainingPayload:
    from sdwebui.pipelines.textual_inversion import clean_name

    name = clean_name(job.name)
    if not name:
        raise ParamError(("name",), "the name has no letters, digits or ._- characters")
    path = services.paths.embeddings_dir / f"{name}.pt"
    if path.exists() and not job.overwrite_old:
        raise ParamError(("name",), f"file {path.name} already exists (overwrite_old replaces it)")
    checkpoint, vae = _model(services)
    args = {"name": name, "path": str(path), "num_vectors_per_token": job.num_vectors_per_token,
            "init_text": job.init_text}
    return TrainingPayload("create_embedding", args, checkpoint, vae)


def prepare_train(services: "Services", job: "TrainEmbeddingJob | TrainHypernetworkJob") -> TrainingPayload:
    """Check every argument (A1111's `validate_train_inputs` and more) and resolve the paths."""
    from sdwebui.pipelines.textual_inversion import (
        CLIP_GRAD_MODES,
        LATENT_SAMPLING_METHODS,
        list_templates,
        parse_schedule,
    )

    if isinstance(job, TrainHypernetworkJob):
        kind, save_every = "train_hypernetwork", job.save_hypernetwork_every
        path = services.hypernetworks.find(job.hypernetwork_name)
        if path is None:
            raise ParamError(("hypernetwork_name",), f"no hypernetwork {job.hypernetwork_name!r} in "
                                                     "models/hypernetworks")
    else:
        kind, save_every = "train_embedding", job.save_embedding_every
        path = _embedding_path(services, job.embedding_name, "embedding_name")
    check_steps_and_schedule(job)
    if job.clip_grad_mode not in CLIP_GRAD_MODES:
        raise ParamError(("clip_grad_mode",), f"one of {', '.join(CLIP_GRAD_MODES)}")
    if job.clip_grad_mode != "disabled":
        try:
            parse_schedule(job.clip_grad_value, job.steps)
        except ValueError as error:
            raise ParamError(("clip_grad_value",), f"not a clipping schedule: {error}") from None
    if job.latent_sampling_method not in LATENT_SAMPLING_METHODS:
        raise ParamError(("latent_sampling_method",), f"one of {', '.join(LATENT_SAMPLING_METHODS)}")
    root, images = checked_dataset(services, job)
    templates = list_templates([services.paths.data_dir / "textual_inversion_templates"])
    template = templates.get(job.template_filename)
    if template is None:
        raise ParamError(("template_filename",), f"Prompt template file {job.template_filename} not found; "
                                                 f"there are {', '.join(sorted(templates))}")
    log_dir = None
    if save_every or job.create_image_every:
        if not job.log_directory:
            raise ParamError(("log_directory",), "Log directory is empty")
        data_dir = services.paths.data_dir.resolve()
        log_dir = (data_dir / job.log_directory).resolve()
        if not log_dir.is_relative_to(data_dir):
            raise ParamError(("log_directory",), "must be a folder inside the data folder")
    preview = None
    if job.preview_from_txt2img:
        preview = _preview_params(job)
    checkpoint, vae = _model(services)
    args = {
        "embedding_name": Path(path).stem, "embedding_path": str(path), "learn_rate": str(job.learn_rate),
        "batch_size": job.batch_size, "gradient_step": job.gradient_step, "data_root": str(root),
        "log_directory": str(log_dir) if log_dir else None, "training_width": job.training_width,
        "training_height": job.training_height, "varsize": job.varsize, "steps": job.steps,
        "clip_grad_mode": job.clip_grad_mode, "clip_grad_value": str(job.clip_grad_value),
        "shuffle_tags": job.shuffle_tags, "tag_drop_out": job.tag_drop_out,
        "latent_sampling_method": job.latent_sampling_method, "create_image_every": job.create_image_every,
        "save_embedding_every": save_every, "template_file": str(template), "preview": preview,
        "use_weight": job.use_weight,
    }
    return TrainingPayload(kind, args, checkpoint, vae)


def prepare_train_lora(services: "Services", job: TrainLoraJob) -> TrainingPayload:
    """Check a LoRA training request (422 naming the field) and resolve its paths."""
    from sdwebui.pipelines.lora_training import stored_step
    from sdwebui.pipelines.textual_inversion import clean_name

    name = clean_name(job.name)
    if not name or name.startswith("."):
        raise ParamError(("name",), "the name has no letters, digits or ._- characters")
    if job.rank <= 0:
        raise ParamError(("rank",), "must be positive")
    check_steps_and_schedule(job)
    root, images = checked_dataset(services, job)
    path = services.paths.lora_dir / f"{name}.safetensors"
    resume = False
    if path.exists():
        if job.resume:
            resume = True
            if stored_step(path) >= job.steps:
                raise ParamError(("steps",), f"{path.name} is already trained to step {stored_step(path)}")
        elif not job.overwrite_old:
            raise ParamError(("name",), f"file {path.name} already exists (resume continues it, overwrite_old "
                                        "replaces it)")
    log_dir = None
    if job.save_every or job.create_image_every:
        data_dir = services.paths.data_dir.resolve()
        log_dir = (data_dir / (job.log_directory or "textual_inversion")).resolve()
        if not log_dir.is_relative_to(data_dir):
            raise ParamError(("log_directory",), "must be a folder inside the data folder")
    preview = _preview_params(job) if job.preview_from_txt2img else None
    checkpoint, vae = _model(services)
    args = {"name": name, "output_path": str(path), "data_root": str(root), "rank": job.rank,
            "alpha": float(job.alpha if job.alpha is not None else job.rank), "learn_rate": str(job.learn_rate),
            "steps": job.steps, "batch_size": job.batch_size, "resolution": job.resolution, "buckets": job.buckets,
            "resume": resume, "shuffle_tags": job.shuffle_tags, "tag_drop_out": job.tag_drop_out,
            "log_directory": str(log_dir) if log_dir else None, "save_every": job.save_every,
            "create_image_every": job.create_image_every, "preview": preview, "seed": job.seed}
    return TrainingPayload("train_lora", args, checkpoint, vae)


def _preview_params(job: "_TrainJob | TrainLoraJob") -> dict:
    from sdwebui.core.samplers.registry import sampler_names
    from sdwebui.core.samplers.resolve import resolve_sampling

    sampler = job.preview_sampler_name
    if sampler is None and job.preview_sampler_index is not None:
        names = sampler_names()
        if job.preview_sampler_index >= len(names):
            raise ParamError(("preview_sampler_index",), f"there are {len(names)} samplers")
        sampler = names[job.preview_sampler_index]
    sampler, scheduler = sampler or "Euler a", job.preview_scheduler or "Automatic"
    try:
        resolve_sampling(sampler, scheduler)
    except ParamError as error:
        raise ParamError(("preview_scheduler" if error.field == "scheduler"
                          else "preview_sampler_name",), error.message) from None
    return {"prompt": job.preview_prompt, "negative_prompt": job.preview_negative_prompt, "steps": job.preview_steps,
            "sampler": sampler, "scheduler": scheduler, "cfg_scale": job.preview_cfg_scale, "seed": job.preview_seed,
            "width": job.preview_width, "height": job.preview_height}


def submit_create(services: "Services", job: CreateEmbeddingJob):
    return services.queue.submit("create_embedding", prepare_create(services, job))


def submit_train(services: "Services", job: "TrainEmbeddingJob | TrainHypernetworkJob"):
    payload = prepare_train(services, job)
    return services.queue.submit(payload.job, payload)


def create_hypernetwork(services: "Services", job: CreateHypernetworkJob) -> Path:
    """A1111's `create_hypernetwork`: a new network, initialised as A1111 does, written to models/hypernetworks
    (needs no model: done at once, not queued). ParamError naming the field for a bad structure."""
    from sdwebui.models.hypernetwork import ACTIVATIONS, WEIGHT_INITS, Hypernetwork, HypernetworkError
    from sdwebui.pipelines.textual_inversion import clean_name

    name = clean_name(job.name)
    if not name:
        raise ParamError(("name",), "the name has no letters, digits or ._- characters")
    path = services.hypernetworks.folder / f"{name}.pt"
    if path.exists() and not job.overwrite_old:
        raise ParamError(("name",), f"file {path.name} already exists (overwrite_old replaces it)")
    sizes = []
    for index, size in enumerate(job.enable_sizes):
        try:
            sizes.append(int(size))
        except ValueError:
            raise ParamError(("enable_sizes", index), f"{size!r} is not a whole number") from None
        if not 1 <= sizes[-1] <= 8192:
            raise ParamError(("enable_sizes", index), "must be between 1 and 8192")
    structure = _numbers(job.layer_structure, "layer_structure")
    if len(structure) < 2 or structure[0] != 1 or structure[-1] != 1 or any(x <= 0 or x > 16 for x in structure):
        raise ParamError(("layer_structure",), "must start and end with 1 (e.g. 1, 2, 1), every value in (0, 16]")
    if job.activation_func not in ACTIVATIONS:
        raise ParamError(("activation_func",), f"one of {', '.join(sorted(ACTIVATIONS))}")
    if job.weight_init not in WEIGHT_INITS:
        raise ParamError(("weight_init",), f"one of {', '.join(WEIGHT_INITS)}")
    dropout = None
    if job.use_dropout and job.dropout_structure:
        dropout = _numbers(job.dropout_structure, "dropout_structure")
        if len(dropout) != len(structure) or dropout[0] != 0 or dropout[-1] != 0 \
                or any(not 0 <= x < 1 for x in dropout):
            raise ParamError(("dropout_structure",), "one value per layer, each in [0, 1), 0 at both ends")
    elif not job.use_dropout:
        dropout = [0.0] * len(structure)  # A1111: no dropout at all unless use_dropout
    try:
        net = Hypernetwork.create(name, sizes, layer_structure=structure, activation_func=job.activation_func,
                                  weight_init=job.weight_init, add_layer_norm=job.add_layer_norm,
                                  use_dropout=job.use_dropout, dropout_structure=dropout)
    except HypernetworkError as error:
        raise ParamError(("layer_structure",), str(error)) from None
    return net.save(path)


def _numbers(value, field: str) -> list[float]:
    try:
        items = [float(x) for x in (value.split(",") if isinstance(value, str) else value)]
    except ValueError:
        raise ParamError((field,), f"{value!r} is not a comma-separated list of numbers") from None
    return items


# ---- the worker's side --------------------------------------------------------------------------------------------


def run_training_job(job: "JobHandle", services: "Services") -> dict:
    payload: TrainingPayload = job.payload
    model = services.models.get(payload.checkpoint, vae=payload.vae)
    if payload.job == "create_embedding":
        return _create(services, model, payload.args)
    if payload.job == "train_lora":
        return _train_lora(job, services, model, payload.args)
    return _train(job, services, model, payload.args, hypernetwork=payload.job == "train_hypernetwork")


def _create(services: "Services", model, args) -> dict:
    from sdwebui.pipelines.textual_inversion import init_vectors, save_embedding

    vectors = init_vectors(model, args["init_text"], int(args["num_vectors_per_token"]))
    path = save_embedding(Path(args["path"]), vectors, args["name"], 0, None, None)
    services.embeddings.refresh(force=True)
    return {"info": f"create embedding filename: {path}", "file": path.name, "vectors": vectors.shape[0],
            "shape": vectors.shape[1]}


def _train(job: "JobHandle", services: "Services", model, args: dict[str, Any], *, hypernetwork: bool) -> dict:
    from sdwebui.pipelines.hypernetwork_training import train_hypernetwork
    from sdwebui.pipelines.textual_inversion import TrainOptions, train_embedding

    options = TrainOptions(
        embedding_name=args["embedding_name"], embedding_path=Path(args["embedding_path"]),
        learn_rate=args["learn_rate"], batch_size=args["batch_size"], gradient_step=args["gradient_step"],
        data_root=Path(args["data_root"]),
        log_directory=Path(args["log_directory"]) if args.get("log_directory") else None,
        training_width=args["training_width"], training_height=args["training_height"], varsize=args["varsize"],
        steps=args["steps"], clip_grad_mode=args["clip_grad_mode"], clip_grad_value=args["clip_grad_value"],
        shuffle_tags=args["shuffle_tags"], tag_drop_out=args["tag_drop_out"],
        latent_sampling_method=args["latent_sampling_method"], create_image_every=args["create_image_every"],
        save_embedding_every=args["save_embedding_every"], template_file=Path(args["template_file"]),
        preview=args.get("preview"), seed=args.get("seed"), use_weight=bool(args.get("use_weight", False)),
    )
    what = "hypernetwork" if hypernetwork else "embedding"
    job.progress.textinfo = f"Initializing {'hypernetwork' if hypernetwork else 'textual inversion'} training..."

    def on_step(step: int, steps: int, loss: float, text: str) -> None:
        job.progress.textinfo = f"Loss: {loss:.7f}, Step: {step}, Last prompt: {text}"
        job.report_step(step, steps, 0, 1)

    def preview(trained, prompt: str, step: int):
        image = _preview_image(model, trained, prompt, options, hypernetwork=hypernetwork)
        if image is not None:
            job.progress.preview_png = _png(image)
        return image

    train = train_hypernetwork if hypernetwork else train_embedding
    try:
        result = train(model, options, on_step=on_step, should_stop=job.stop.interrupted.is_set, preview=preview)
    finally:
        if hypernetwork:
            services.hypernetworks.forget()
        else:
            services.embeddings.refresh(force=True)
    job.interrupted = result.interrupted
    info = f"train {what} complete: filename: {options.embedding_path} error: None"
    return {"info": info, "file": options.embedding_path.name, "step": result.step, "losses": result.losses,
            "saved": [str(p) for p in result.saved], "images": [str(p) for p in result.images],
            "interrupted": result.interrupted, "log_directory": str(result.log_dir) if result.log_dir else None}


def _train_lora(job: "JobHandle", services: "Services", model, args: dict[str, Any]) -> dict:
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.lora_training import LoraTrainOptions, train_lora
    from sdwebui.pipelines.txt2img import txt2img

    values = dict(args)
    for key in ("output_path", "data_root", "log_directory"):
        values[key] = Path(values[key]) if values.get(key) else None
    options = LoraTrainOptions(**values)
    job.progress.textinfo = "Initializing LoRA training..."

    def on_step(step: int, steps: int, loss: float, text: str) -> None:
        job.progress.textinfo = f"Loss: {loss:.7f}, Step: {step}, Last prompt: {text}"
        job.report_step(step, steps, 0, 1)

    def preview(prompt: str, step: int):
        # The LoRA being trained is in the UNet while this runs: a plain txt2img draws with it.
        values = dict(options.preview) if options.preview else {
            "prompt": prompt, "steps": 20, "width": options.resolution, "height": options.resolution}
        if values.get("seed", -1) == -1:
            values["seed"] = 0
        result = txt2img(GenerationContext(model=model, embeddings=None), Txt2ImgParams(**values))
        image = result.images[0] if result.images else None
        if image is not None:
            job.progress.preview_png = _png(image)
        return image

    services.loras.release()  # patched tensors of earlier LoRAs: the UNet's own weights are trained around
    try:
        result = train_lora(model, options, on_step=on_step, should_stop=job.stop.interrupted.is_set,
                            preview=preview)
    finally:
        services.loras.release()
    job.interrupted = result.interrupted
    return {"info": f"train LoRA complete: filename: {options.output_path} error: None",
            "file": options.output_path.name, "step": result.step, "losses": result.losses,
            "saved": [str(p) for p in result.saved], "images": [str(p) for p in result.images],
            "interrupted": result.interrupted, "log_directory": str(result.log_dir) if result.log_dir else None}


def _preview_image(model, trained, prompt: str, options, *, hypernetwork: bool):
    """A txt2img of the preview prompt with the embedding as it is now (A1111: `process_images` with the
    preview settings, or the last training text at 20 steps and the training size)."""
    from sdwebui.models.hypernetwork import hooked
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.textual_inversion import TrainingEmbeddings
    from sdwebui.pipelines.txt2img import txt2img

    values = dict(options.preview) if options.preview else {
        "prompt": prompt, "steps": 20, "width": options.training_width, "height": options.training_height}
    if values.get("seed", -1) == -1:
        values["seed"] = 0
    params = Txt2ImgParams(**values)
    if hypernetwork:
        with hooked(model.unet, [trained]):
            result = txt2img(GenerationContext(model=model, embeddings=None), params)
    else:
        result = txt2img(GenerationContext(model=model, embeddings=TrainingEmbeddings(trained)), params)
    return result.images[0] if result.images else None


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


__all__ = ["CreateEmbeddingJob", "TrainEmbeddingJob", "TrainHypernetworkJob", "TrainLoraJob", "prepare_train_lora", "CreateHypernetworkJob",
           "create_hypernetwork", "TRAINING_JOBS", "submit_training", "prepare_create", "prepare_train", "submit_create",
           "submit_train", "run_training_job"]


def check_steps_and_schedule(job) -> None:
    """A training job's `steps` (positive) and `learn_rate` (A1111's schedule syntax): a ParamError naming them."""
    from sdwebui.pipelines.textual_inversion import parse_schedule  # torch: not at start-up

    if job.steps <= 0:
        raise ParamError(("steps",), "Max steps must be positive")
    try:
        parse_schedule(job.learn_rate, job.steps)
    except ValueError as error:
        raise ParamError(("learn_rate",), f"not a learning rate schedule: {error}") from None


def checked_dataset(services: "Services", job) -> tuple[Path, list[Path]]:
    """A training job's `data_root` (relative to the data folder) and its images (those of kohya's `N_concept`
    subfolders too); a ParamError naming `data_root` (missing, no images) or `batch_size` (more than the images an
    epoch shows, repeats counted) otherwise."""
    from sdwebui.pipelines.training_data import dataset_images  # torch: not at start-up

    root = Path(job.data_root).expanduser()
    if not root.is_absolute():
        root = services.paths.data_dir / root
    if not root.is_dir():
        raise ParamError(("data_root",), f"Dataset directory {job.data_root} doesn't exist")
    found = dataset_images(root)
    if not found:
        raise ParamError(("data_root",), f"Dataset directory {job.data_root} has no images")
    shown = sum(repeats for _, repeats in found)
    if job.batch_size > shown:
        raise ParamError(("batch_size",), f"larger than the {shown} images of the dataset")
    return root, [path for path, _ in found]
