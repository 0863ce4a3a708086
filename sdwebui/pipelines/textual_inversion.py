"""Textual inversion: creating an embedding and training it on the user's images, with A1111's semantics.

Reference: A1111 `modules/textual_inversion/textual_inversion.py` (`create_embedding`, `train_embedding`,
`validate_train_inputs`, `Embedding.save`, `write_loss`), `dataset.py` (`PersonalizedBase`) and
`learn_schedule.py` (`LearnScheduleIterator`).

- **File**: A1111's `.pt`: `{"string_to_token": {"*": 265}, "string_to_param": {"*": vectors [n, D]}, "name",
  "step", "sd_checkpoint" (the checkpoint's short hash), "sd_checkpoint_name"}`; `models.embeddings` reads it back,
  so a trained embedding is usable in prompts as soon as it is written.
- **Create**: `init_text` is tokenised and its token embeddings taken (A1111's `encode_embedding_init_text`);
  vector i of n is the init text's token `i * len // n` (all zeros without an init text).
- **Dataset** (`training_data`): every image of `data_root` (and of kohya's `<repeats>_<concept>` sub-folders),
  converted to RGB and resized to the training size (bicubic) unless `varsize`; its caption (`[filewords]`) is the
  `.txt` beside it, else the file name without its extension and leading numbers (A1111's `re_numbers_at_start`).
  Each sample's text is a random line of the
  template with `[name]` -> the embedding's name and `[filewords]` -> the caption's comma-separated tags (dropped
  with probability `tag_drop_out`, shuffled with `shuffle_tags`). Latents: `once` and `deterministic` encode each
  image once (we use the VAE posterior's mean for both, as `vae_encode` does everywhere), `random` samples the
  posterior anew each time the image is used.
- **Training**: the diffusion loss SD was trained with (`LatentDiffusion.p_losses`): t uniform in [0, 1000), x_t from
  the model's `alphas_cumprod`, MSE between the UNet's output and the noise (epsilon models) or v (v models),
  averaged; AdamW (weight decay 0) on the vectors only; `gradient_step` batches accumulated per step; gradient
  clipping by value or norm with its own schedule; the learning rate follows A1111's schedule syntax.
  Training starts from the embedding's stored `step` and ends at `steps` (so a saved embedding resumes).
- **Outputs**: every `save_embedding_every` steps a copy `<log>/<date>/<name>/embeddings/<name>-<step>.pt`, every
  `create_image_every` steps a preview `<log>/<date>/<name>/images/<name>-<step>.png`, each step a row of
  `textual_inversion_loss.csv`; at the end (also when interrupted) the embedding itself in the embeddings folder.
  Differences from A1111, on purpose: the copies are named by the step they hold (A1111 names them one step
  ahead), and the loss is written every step (A1111: every `training_write_csv_every` steps, default 500).
"""

from __future__ import annotations

import csv
import datetime
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from sdwebui.core.errors import ParamError
from sdwebui.models.embeddings import SINGLE, Embedding, EmbeddingLookup
from sdwebui.models.sd_model import SDModel
from sdwebui.models.text_encoding import Conditioning
from sdwebui.pipelines.sampling import unet_condition
from sdwebui.pipelines.training_data import Sample, dataset_images, encode_dataset, read_dataset

TEMPLATES_DIR = Path(__file__).resolve().parent / "textual_inversion_templates"
"""The templates A1111 ships in `textual_inversion_templates/` (our own text, A1111's names and placeholders)."""

LATENT_SAMPLING_METHODS = ("once", "deterministic", "random")
CLIP_GRAD_MODES = ("disabled", "value", "norm")


# ---------------------------------------------------------------------------------------------- schedule


def parse_schedule(text: str | float, max_steps: int, cur_step: int = 0) -> list[tuple[float, int]]:
    """A1111's `LearnScheduleIterator`: "0.005:100, 1e-4:1000, 1e-5" -> [(rate, until step), ...]: each rate
    holds until its step (the last one, or one without a step, or step -1, until `max_steps`); pairs whose step
    is already passed (`<= cur_step`) are skipped. `ValueError` naming the bad part."""
    pairs = str(text).split(",")
    rates: list[tuple[float, int]] = []
    for pair in pairs:
        parts = pair.split(":")
        try:
            rate = float(parts[0])
            step = int(parts[1]) if len(parts) == 2 else None
        except ValueError:
            raise ValueError(f"{pair.strip()!r} is not RATE or RATE:STEP") from None
        if len(parts) > 2 or not math.isfinite(rate):
            raise ValueError(f"{pair.strip()!r} is not RATE or RATE:STEP")
        if step is None or step == -1:
            rates.append((rate, max_steps))
            break
        if step > cur_step:
            rates.append((rate, min(step, max_steps)))
            if step > max_steps:
                break
    if not rates:
        raise ValueError(f"no rate applies after step {cur_step}")
    return rates


class LearnRateScheduler:
    """A1111's `LearnRateScheduler`: `apply(optimizer, step)` moves to the next rate once `step` reaches the
    current rate's end; `finished` when the schedule runs out."""

    def __init__(self, text: str | float, max_steps: int, cur_step: int = 0):
        self.rates = parse_schedule(text, max_steps, cur_step)
        self.index = 0
        self.learn_rate, self.end_step = self.rates[0]
        self.finished = False

    def step(self, step_number: int) -> bool:
        if step_number < self.end_step:
            return False
        self.index += 1
        if self.index >= len(self.rates):
            self.finished = True
            return False
        self.learn_rate, self.end_step = self.rates[self.index]
        return True

    def apply(self, optimizer: torch.optim.Optimizer, step_number: int) -> None:
        if self.step(step_number):
            for group in optimizer.param_groups:
                group["lr"] = self.learn_rate


# --------------------------------------------------------------------------------------------- templates


def list_templates(folders: Sequence[Path] = ()) -> dict[str, Path]:
    """A1111's `list_textual_inversion_templates`: file name -> path; the user's folders (e.g.
    `<data-dir>/textual_inversion_templates`) after the shipped ones, so a user's file of the same name wins."""
    found: dict[str, Path] = {}
    for folder in (TEMPLATES_DIR, *folders):
        if not Path(folder).is_dir():
            continue
        for root, _, names in os.walk(folder):
            for name in sorted(names):
                if name.lower().endswith(".txt"):
                    found[name] = Path(root) / name
    return found


def template_lines(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


# ----------------------------------------------------------------------------------------------- the file


def clean_name(name: str) -> str:
    """A1111 keeps letters, digits and `._- ` of a new embedding's (or hypernetwork's) name."""
    return "".join(ch for ch in name if ch.isalnum() or ch in "._- ").strip()


def save_embedding(path: Path, vectors: torch.Tensor, name: str, step: int, sd_checkpoint: str | None,
                   sd_checkpoint_name: str | None) -> Path:
    """A1111's `Embedding.save` (atomically: the embeddings folder is read while training writes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vectors.detach().to("cpu", torch.float32).clone()},
        "name": name,
        "step": int(step),
        "sd_checkpoint": sd_checkpoint,
        "sd_checkpoint_name": sd_checkpoint_name,
    }
    partial = path.with_name(f".{path.name}.partial")
    torch.save(data, partial)
    os.replace(partial, path)
    return path


def init_vectors(model: SDModel, init_text: str, count: int) -> torch.Tensor:
    """A1111's `create_embedding`: `count` vectors from the token embeddings of `init_text` ("" -> zeros)."""
    stack = model.text_encoder
    if len(stack.towers) != 1:
        raise ParamError(("name",), "creating embeddings for SDXL is not supported (A1111 neither)")
    layer = stack.towers[0].module.get_input_embeddings()
    width = int(layer.weight.shape[-1])
    vectors = torch.zeros((count, width), dtype=torch.float32)
    if init_text:
        ids = stack._tokenize_texts([init_text])[0] or stack._tokenize_texts(["*"])[0]
        with torch.no_grad():
            embedded = layer(torch.tensor(ids, device=layer.weight.device)).float().cpu()
        for i in range(count):
            vectors[i] = embedded[i * embedded.shape[0] // count]
    return vectors


# ------------------------------------------------------------------------------------------------ dataset


def make_text(lines: Sequence[str], name: str, caption: str, shuffle_tags: bool, tag_drop_out: float,
              rng: random.Random) -> str:
    """A1111's `PersonalizedBase.create_text`."""
    text = rng.choice(lines)
    tags = caption.split(",")
    if tag_drop_out != 0:
        tags = [tag for tag in tags if rng.random() > tag_drop_out]
    if shuffle_tags:
        rng.shuffle(tags)
    return text.replace("[filewords]", ",".join(tags)).replace("[name]", name)


# ----------------------------------------------------------------------------------------------- training


class TrainingEmbeddings:
    """The `embeddings` a prompt is encoded with while training: the embedding being trained, by its name (its
    vectors are the tensor the optimiser updates)."""

    def __init__(self, embedding: Embedding):
        self.embedding = embedding
        self._lookups: dict = {}

    def lookup(self, towers, tokenize) -> EmbeddingLookup:
        key = id(tokenize.__self__) if hasattr(tokenize, "__self__") else id(tokenize)
        if key not in self._lookups:
            ids = tuple(int(i) for i in tokenize([self.embedding.name])[0])
            self._lookups[key] = EmbeddingLookup({ids[0]: ((ids, self.embedding),)} if ids else {})
        return self._lookups[key]


@dataclass(frozen=True)
class TrainOptions:
    """A1111's `train_embedding` arguments, checked (the server builds this from the request)."""

    embedding_name: str
    embedding_path: Path
    learn_rate: str
    batch_size: int
    gradient_step: int
    data_root: Path
    log_directory: Path | None
    training_width: int
    training_height: int
    varsize: bool
    steps: int
    clip_grad_mode: str
    clip_grad_value: str
    shuffle_tags: bool
    tag_drop_out: float
    latent_sampling_method: str
    create_image_every: int
    save_embedding_every: int
    template_file: Path
    preview: dict | None = None
    """txt2img parameters of the preview images (`preview_from_txt2img`), or None: the last training text, 20
    steps, at the training size (A1111)."""
    seed: int | None = None
    template_text: tuple[str, ...] | None = None
    """Template lines used instead of `template_file` (LoRA training: the captions alone, "[filewords]")."""
    buckets: bool = False
    """Aspect-ratio buckets (`read_dataset`); batches hold one bucket's images (give `varsize` too)."""
    use_weight: bool = False
    """A1111's "Use PNG alpha channel as loss weight" (`alpha_weight`)."""


@dataclass
class TrainResult:
    path: Path
    step: int
    losses: list[float] = field(default_factory=list)
    saved: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    interrupted: bool = False
    log_dir: Path | None = None


def diffusion_loss(model: SDModel, latents: torch.Tensor, cond: "torch.Tensor | Conditioning",
                   generator: torch.Generator, weight: torch.Tensor | None = None) -> torch.Tensor:
    """SD's training loss (`LatentDiffusion.p_losses` with SD's config: l_simple weight 1, no VLB term). `cond`: the
    text's hidden states, or its whole `Conditioning` (SDXL's pooled text and size ids go in as at generation).
    `weight` ([B, C, h, w], `use_weight`): each latent element's squared error weighted by it before the mean (A1111's
    `weighted_loss`)."""
    batch = latents.shape[0]
    t = torch.randint(0, model.alphas_cumprod.shape[0], (batch,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    ac = model.alphas_cumprod[t].to(latents.device, torch.float32).view(batch, 1, 1, 1)
    x_t = ac.sqrt() * latents + (1 - ac).sqrt() * noise
    target = noise if model.prediction_type == "epsilon" else ac.sqrt() * noise - (1 - ac).sqrt() * latents
    if isinstance(cond, torch.Tensor):
        kwargs = {"encoder_hidden_states": cond}
    else:  # the size ids: the training image's own size, uncropped (kohya's default for a bucketed image)
        kwargs = unet_condition(model, cond, latents.shape[-1] * 8, latents.shape[-2] * 8)
    out = model.unet(x_t.to(model.dtype), t.to(latents.device), **_in_dtype(kwargs, model.dtype)).sample
    if weight is None:
        return torch.nn.functional.mse_loss(out.float(), target.float())
    return (torch.nn.functional.mse_loss(out.float(), target.float(), reduction="none") * weight).mean()


def _in_dtype(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype)
    return {key: _in_dtype(item, dtype) for key, item in value.items()}


def train_embedding(model: SDModel, options: TrainOptions, *, on_step: Callable[[int, int, float, str], None] | None = None,
                    should_stop: Callable[[], bool] = lambda: False,
                    preview: Callable[[Embedding, str, int], Image.Image | None] | None = None) -> TrainResult:
    """Train `options.embedding_path` (A1111's `train_embedding`; see the module docstring). `on_step(step, steps,
    loss, text)`; `preview(embedding, prompt, step)` draws a preview image with the embedding as it is now."""
    from sdwebui.models.embeddings import load_embedding

    if len(model.text_encoder.towers) != 1 or model.family.spec.is_sdxl:
        raise ParamError(("embedding_name",), "training embeddings for SDXL is not supported (A1111 neither)")
    stored = load_embedding(options.embedding_path)
    vec = stored.vectors.get(SINGLE)
    width = model.text_encoder.tower_widths[0][1]
    if vec is None or int(vec.shape[-1]) != width:
        raise ParamError(("embedding_name",), f"{stored.name} has vectors of width {stored.shape}, the model's text "
                                              f"encoder {width}")
    name = options.embedding_name
    param = torch.nn.Parameter(vec.clone().to(model.device, torch.float32))
    lookup = TrainingEmbeddings(Embedding(name=name, path=options.embedding_path, vectors={SINGLE: param},
                                          sha256="0" * 64, step=stored.step))
    stack = model.text_encoder
    checkpoint_hash, checkpoint_name = model.info.short_hash, Path(model.info.name).stem
    te_mode = stack.towers[0].module.training
    stack.towers[0].module.requires_grad_(False)

    def encode(texts: list[str]) -> torch.Tensor:
        chunks = [stack.tokenize_weighted([(text, 1.0)], embeddings=lookup)[0] for text in texts]
        return stack.encode_chunks(chunks, grad=True).cross_attn

    def save(path: Path, label: str, step: int) -> None:
        save_embedding(path, param, label, step, checkpoint_hash, checkpoint_name)

    def draw(prompt: str, step: int):
        return preview(Embedding(name=name, path=options.embedding_path, vectors={SINGLE: param.detach().clone()},
                                 sha256="0" * 64, step=step), prompt, step)

    try:
        return training_loop(model, options, TrainedThing(
            name=name, path=options.embedding_path, initial_step=stored.step or 0, parameters=[param], encode=encode,
            save=save, preview=draw if preview is not None else None, folder="embeddings",
            loss_file="textual_inversion_loss.csv"), on_step=on_step, should_stop=should_stop)
    finally:
        stack.towers[0].module.train(te_mode)


@dataclass
class TrainedThing:
    """What `training_loop` trains: an embedding's vectors or a hypernetwork's weights."""

    name: str
    path: Path
    initial_step: int
    parameters: list[torch.nn.Parameter]
    encode: Callable[[list[str]], torch.Tensor]
    """Texts -> cross-attention conditioning (with the graph to `parameters` when they are in the encoder)."""
    save: Callable[[Path, str, int], None]
    """(path, name written in the file, step)."""
    preview: Callable[[str, int], Image.Image | None] | None
    folder: str
    """The log folder's sub-folder for the copies ("embeddings", "hypernetworks")."""
    loss_file: str
    unet_scope: Callable[[], object] | None = None
    """A context manager around every UNet call (a hypernetwork's hooks), or None."""
    suffix: str = ".pt"
    """The copies' file suffix."""


def training_loop(model: SDModel, options: TrainOptions, thing: TrainedThing, *,
                  on_step: Callable[[int, int, float, str], None] | None = None,
                  should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """A1111's training loop (the same for embeddings and hypernetworks): see the module docstring."""
    from contextlib import nullcontext

    name, initial_step = thing.name, thing.initial_step
    parameters = list(thing.parameters)  # may be a generator (`Module.parameters()`); used by AdamW and clipping
    result = TrainResult(thing.path, initial_step)
    if initial_step >= options.steps:
        return result  # A1111: "Model has already been trained beyond specified max steps"
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)

    scheduler = LearnRateScheduler(options.learn_rate, options.steps, initial_step)
    clip = {"value": torch.nn.utils.clip_grad_value_, "norm": torch.nn.utils.clip_grad_norm_}.get(
        options.clip_grad_mode)
    clip_schedule = LearnRateScheduler(options.clip_grad_value, options.steps, initial_step) if clip else None

    log_dir = None
    if options.log_directory is not None and (options.save_embedding_every or options.create_image_every):
        log_dir = Path(options.log_directory) / datetime.date.today().isoformat() / name
        log_dir.mkdir(parents=True, exist_ok=True)
    result.log_dir = log_dir
    lines = list(options.template_text) if options.template_text else template_lines(options.template_file)
    items = read_dataset(options.data_root, options.training_width, options.training_height, options.varsize,
                         options.buckets, keep_alpha=options.use_weight)
    repeats = dict(dataset_images(options.data_root))
    samples = [sample for sample in encode_dataset(model, items, options.latent_sampling_method, options.use_weight)
               for _ in range(repeats.get(sample.path, 1))]
    if options.batch_size > len(samples):
        raise ParamError(("batch_size",), f"larger than the {len(samples)} images of the dataset")

    optimizer = torch.optim.AdamW(parameters, lr=scheduler.learn_rate, weight_decay=0.0)
    unet_mode = model.unet.training
    model.unet.requires_grad_(False)
    for param in parameters:  # a LoRA's weights live in the UNet
        param.requires_grad_(True)
    scope = thing.unet_scope or nullcontext
    step = initial_step
    epoch_batches = _batches(samples, options.batch_size, options.varsize, rng)
    epoch_len = max(1, len(samples) // options.batch_size // options.gradient_step)
    last_text = ""
    try:
        while step < options.steps and not scheduler.finished:
            if should_stop():
                result.interrupted = True
                break
            scheduler.apply(optimizer, step)
            if scheduler.finished:
                break
            if clip_schedule is not None:
                clip_schedule.step(step)
            total = 0.0
            for _ in range(options.gradient_step):
                if not epoch_batches:
                    epoch_batches = _batches(samples, options.batch_size, options.varsize, rng)
                batch = epoch_batches.pop()
                texts = [make_text(lines, name, s.caption, options.shuffle_tags, options.tag_drop_out, rng)
                         for s in batch]
                last_text = texts[0]
                latents = torch.stack([_latent(s, generator) for s in batch]).to(model.device)
                weight = torch.stack([s.weight for s in batch]) if options.use_weight else None
                with scope():
                    loss = diffusion_loss(model, latents, thing.encode(texts), generator, weight) \
                        / options.gradient_step
                loss.backward()
                total += float(loss.detach())
            if clip is not None:
                clip(parameters, clip_schedule.learn_rate)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            result.step = step
            result.losses.append(total)
            if log_dir is not None:
                _write_loss(log_dir / thing.loss_file, step, epoch_len, total, scheduler.learn_rate)
            if log_dir is not None and options.save_embedding_every and step % options.save_embedding_every == 0:
                copy = log_dir / thing.folder / f"{name}-{step}{thing.suffix}"
                thing.save(copy, f"{name}-{step}", step)
                result.saved.append(copy)
            if log_dir is not None and thing.preview is not None and options.create_image_every \
                    and step % options.create_image_every == 0:
                prompt = options.preview["prompt"] if options.preview else last_text
                image = thing.preview(prompt, step)
                if image is not None:
                    out = log_dir / "images" / f"{name}-{step}.png"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    image.save(out)
                    result.images.append(out)
            if on_step is not None:
                on_step(step, options.steps, total, last_text)
    finally:
        model.unet.train(unet_mode)
        # Saved also when interrupted or failed part-way: the steps done are kept (A1111 saves after its loop).
        if step > initial_step:
            thing.save(thing.path, name, step)
    return result


def _latent(sample: Sample, generator: torch.Generator) -> torch.Tensor:
    if sample.latent is not None:
        return sample.latent
    noise = torch.randn(sample.mean.shape, generator=generator).to(sample.mean.device)
    return sample.mean + sample.std * noise


def _batches(samples: list[Sample], batch_size: int, varsize: bool, rng: random.Random) -> list[list[Sample]]:
    """One epoch's batches, shuffled, the last partial one dropped (images of one size per batch with
    `varsize`); popped from the end."""
    groups: dict[tuple, list[Sample]] = {}
    for sample in samples:
        key = tuple((sample.latent if sample.latent is not None else sample.mean).shape) if varsize else ()
        groups.setdefault(key, []).append(sample)
    batches = []
    for group in groups.values():
        group = list(group)
        rng.shuffle(group)
        batches.extend(group[i:i + batch_size] for i in range(0, len(group) - batch_size + 1, batch_size))
    rng.shuffle(batches)
    if not batches:  # varsize with no size group large enough: one image at a time
        batches = [[s] for s in samples]
    return batches


def _write_loss(path: Path, step: int, epoch_len: int, loss: float, learn_rate: float) -> None:
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["step", "epoch", "epoch_step", "loss", "learn_rate"])
        if new:
            writer.writeheader()
        writer.writerow({"step": step, "epoch": (step - 1) // epoch_len, "epoch_step": (step - 1) % epoch_len,
                         "loss": f"{loss:.7f}", "learn_rate": learn_rate})


__all__ = ["parse_schedule", "LearnRateScheduler", "list_templates", "template_lines", "clean_name",
           "save_embedding", "init_vectors", "make_text", "TrainOptions", "TrainResult",
           "train_embedding", "training_loop", "TrainedThing", "diffusion_loss", "TrainingEmbeddings", "TEMPLATES_DIR", "LATENT_SAMPLING_METHODS",
           "CLIP_GRAD_MODES"]
