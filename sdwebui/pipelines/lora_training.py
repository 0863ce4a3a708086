"""LoRA training (what kohya's `train_network.py` does for SD 1/2 and `sdxl_train_network.py` for SDXL, on the app's
own training loop).

- **Network**: peft's `LoraConfig(r=rank, lora_alpha=alpha)` injected (`inject_adapter_in_model`) into the UNet's
  attention projections `to_q`, `to_k`, `to_v`, `to_out.0` (attn1 and attn2 of every transformer block): `lora_A`
  kaiming-initialised, `lora_B` zeros, so step 0 is the model itself; scale alpha / rank as kohya. The text encoder
  is not trained (kohya's `--network_train_unet_only`). SDXL's UNet also takes the pooled text of the caption and
  the size ids (the training size, no crop), as at generation. After training the UNet's original modules are put back:
  the loaded model is what it was.
- **Data, loss, optimiser, schedule**: `pipelines.textual_inversion.training_loop` (shared with embeddings and
  hypernetworks): every image of the data folder (and of kohya's `<repeats>_<concept>` subfolders, each image
  that many times an epoch) with its caption (the `.txt` beside it, else the file name) as the whole prompt (kohya), SD's diffusion loss, `torch.optim.AdamW` (weight decay 0) on the LoRA weights only,
  A1111's learning-rate schedule syntax (`1e-4:500, 5e-5`), interrupt saves the steps done, copies and preview
  images every N steps. With `buckets` each image is scaled and centre-cropped to kohya's aspect-ratio bucket of
  about resolution² pixels (`training_data.bucket_size`) and a batch holds one bucket's images.
- **File**: kohya's `.safetensors`: `lora_unet_<module>.lora_down.weight` [r, in], `.lora_up.weight` [out, r],
  `.alpha` (converted from peft's keys by diffusers' `convert_state_dict_to_kohya`) and kohya's `ss_*` metadata
  (`ss_network_module` "networks.lora", `ss_network_dim`, `ss_network_alpha`, `ss_base_model_version`,
  `ss_steps`, `ss_tag_frequency`, ...), so A1111, ComfyUI and `models.lora` load it. `ss_steps` is the step the
  file holds: training the same name again with `resume` continues from it.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from sdwebui.core.errors import ParamError
from sdwebui.models.sd_model import SDModel
from sdwebui.models.text_encoding import Conditioning
from sdwebui.pipelines.textual_inversion import TrainedThing, TrainOptions, TrainResult, training_loop
from sdwebui.pipelines.training_data import IMAGE_SUFFIXES, dataset_images

TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
ADAPTER = "sdwebui_train"


@dataclass(frozen=True)
class LoraTrainOptions:
    name: str
    output_path: Path
    data_root: Path
    rank: int = 8
    alpha: float = 8.0
    learn_rate: str = "1e-4"
    steps: int = 1000
    batch_size: int = 1
    resolution: int = 512
    buckets: bool = True
    resume: bool = True
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    log_directory: Path | None = None
    save_every: int = 0
    create_image_every: int = 0
    preview: dict | None = None
    seed: int | None = None


def base_model_version(model: SDModel) -> str:
    family = model.family.value
    if family.startswith("sdxl"):
        return "sdxl_base_v1-0"
    return "sd_v2" if family.startswith("sd2") else "sd_v1"


def tag_frequency(data_root: Path) -> dict[str, int]:
    """kohya's `ss_tag_frequency` for one folder: caption tag -> count."""
    counts: dict[str, int] = {}
    for path in sorted(Path(data_root).iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        caption = path.with_suffix(".txt")
        if caption.is_file():
            for tag in caption.read_text(encoding="utf-8").split(","):
                if tag.strip():
                    counts[tag.strip()] = counts.get(tag.strip(), 0) + 1
    return counts


def stored_step(path: Path) -> int:
    """The `ss_steps` of a LoRA file (0 when absent or unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as file:
            return int((file.metadata() or {}).get("ss_steps", 0))
    except Exception:  # noqa: BLE001 - not our file / not safetensors: start from 0
        return 0


def _lora_layers(unet) -> dict[str, torch.nn.Module]:
    """peft's LoRA layers in the UNet, by their module name (`down_blocks.0....attn1.to_q`)."""
    from peft.tuners.lora import LoraLayer

    return {name: module for name, module in unet.named_modules() if isinstance(module, LoraLayer)}


def _kohya_key(name: str) -> str:
    return "lora_unet_" + name.replace(".", "_")


def train_lora(model: SDModel, options: LoraTrainOptions, *,
               on_step: Callable[[int, int, float, str], None] | None = None,
               should_stop: Callable[[], bool] = lambda: False,
               preview: Callable[[str, int], Image.Image | None] | None = None) -> TrainResult:
    """Train a LoRA on `options.data_root` and write it to `options.output_path` (see the module docstring).
    `preview(prompt, step)` draws with the model as it is (the LoRA being trained is in the UNet meanwhile)."""
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    if options.rank <= 0:
        raise ParamError(("rank",), "must be positive")
    initial_step = stored_step(options.output_path) if options.resume and options.output_path.is_file() else 0
    unet = model.unet
    originals = {name: module for name, module in unet.named_modules()
                 if any(name.endswith("." + target) for target in TARGET_MODULES)}
    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, target_modules=list(TARGET_MODULES),
                        init_lora_weights=True)
    if options.seed is not None:
        torch.manual_seed(options.seed)  # lora_A's kaiming init
    inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
    try:
        layers = _lora_layers(unet)
        for layer in layers.values():
            layer.to(model.device)
            for sub in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]):
                sub.to(torch.float32)
        if initial_step:
            _load_into(layers, options.output_path)
        parameters = [p for layer in layers.values()
                      for p in (*layer.lora_A[ADAPTER].parameters(), *layer.lora_B[ADAPTER].parameters())]
        started = int(time.time())
        stack = model.text_encoder
        folders: dict[Path, dict[str, int]] = {}  # kohya's subsets: each folder's repeats and image count
        for path, repeats in dataset_images(options.data_root):
            folders.setdefault(path.parent, {"n_repeats": repeats, "img_count": 0})["img_count"] += 1
        shown = sum(entry["n_repeats"] * entry["img_count"] for entry in folders.values())
        frequency = {folder.name: tag_frequency(folder) for folder in folders}

        def encode(texts: list[str]) -> Conditioning:  # SDXL's pooled text too
            with torch.no_grad():
                return stack.encode(texts)

        def save(path: Path, label: str, step: int) -> None:
            peft_state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
            state = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_state.items()})
            for key in [k for k in state if k.endswith(".alpha")]:
                state[key] = torch.tensor(float(options.alpha))  # the helper writes the rank
            state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
            metadata = {
                "ss_network_module": "networks.lora", "ss_network_dim": str(options.rank),
                "ss_network_alpha": str(float(options.alpha)), "ss_base_model_version": base_model_version(model),
                "ss_v2": str(model.family.value.startswith("sd2")), "ss_output_name": label,
                "ss_steps": str(step), "ss_max_train_steps": str(options.steps),
                "ss_learning_rate": str(options.learn_rate), "ss_unet_lr": str(options.learn_rate),
                "ss_text_encoder_lr": "0", "ss_network_train_unet_only": "True",
                "ss_resolution": f"({options.resolution}, {options.resolution})",
                "ss_enable_bucket": str(options.buckets), "ss_batch_size_per_device": str(options.batch_size),
                "ss_num_train_images": str(shown), "ss_num_batches_per_epoch":
                    str(max(1, shown // options.batch_size)),
                "ss_tag_frequency": json.dumps(frequency),
                "ss_dataset_dirs": json.dumps({folder.name: entry for folder, entry in folders.items()}),
                "ss_sd_model_name": Path(model.info.name).name, "ss_sd_model_hash": model.info.short_hash or "",
                "ss_optimizer": "torch.optim.AdamW(weight_decay=0)", "ss_lr_scheduler": "constant",
                "ss_mixed_precision": "no", "ss_training_started_at": str(started),
                "ss_training_finished_at": str(int(time.time())), "ss_training_comment": "trained with sdwebui",
                "ss_session_id": str(started), "modelspec.date": datetime.date.today().isoformat(),
            }
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.partial")
            save_file(state, str(partial), metadata=metadata)
            os.replace(partial, path)

        draw = (lambda prompt, step: preview(prompt, step)) if preview is not None else None
        train_options = TrainOptions(
            embedding_name=options.name, embedding_path=options.output_path, learn_rate=str(options.learn_rate),
            batch_size=options.batch_size, gradient_step=1, data_root=Path(options.data_root),
            log_directory=options.log_directory, training_width=options.resolution,
            training_height=options.resolution, varsize=options.buckets, steps=options.steps,
            clip_grad_mode="disabled", clip_grad_value="0.1", shuffle_tags=options.shuffle_tags,
            tag_drop_out=options.tag_drop_out, latent_sampling_method="once",
            create_image_every=options.create_image_every, save_embedding_every=options.save_every,
            template_file=Path(options.data_root), preview=options.preview, seed=options.seed,
            template_text=("[filewords]",), buckets=options.buckets)
        return training_loop(model, train_options, TrainedThing(
            name=options.name, path=options.output_path, initial_step=initial_step, parameters=parameters,
            encode=encode, save=save, preview=draw, folder="Lora", loss_file="lora_loss.csv", suffix=".safetensors"),
            on_step=on_step, should_stop=should_stop)
    finally:
        _restore(unet, originals)


def _load_into(layers: dict[str, torch.nn.Module], path: Path) -> None:
    """A saved file's lora_down / lora_up into the injected layers (resume)."""
    with safe_open(str(path), framework="pt") as file:
        keys = set(file.keys())
        for name, layer in layers.items():
            key = _kohya_key(name)
            if f"{key}.lora_down.weight" not in keys:
                continue
            down, up = file.get_tensor(f"{key}.lora_down.weight"), file.get_tensor(f"{key}.lora_up.weight")
            a, b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
            if down.shape != a.shape or up.shape != b.shape:
                raise ParamError(("rank",), f"{path.name} has rank {down.shape[0]}; resume it with that rank")
            with torch.no_grad():
                a.copy_(down)
                b.copy_(up)


def _restore(unet, originals: dict[str, torch.nn.Module]) -> None:
    """Put the UNet's own modules back where peft wrapped them."""
    for name, module in originals.items():
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name)
        if getattr(parent, child) is not module:
            setattr(parent, child, module)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in vars(unet):
            delattr(unet, attr)


__all__ = ["LoraTrainOptions", "train_lora", "base_model_version", "tag_frequency", "stored_step",
           "TARGET_MODULES"]
