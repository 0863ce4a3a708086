"""Hypernetwork training with A1111's semantics (`modules/hypernetworks/hypernetwork.py: train_hypernetwork`): the
same loop, dataset, templates, schedules, saves and previews as textual inversion (`pipelines.textual_inversion`),
with the hypernetwork's weights as what is learnt: the prompt's conditioning is computed without a graph, and the
network is hooked into the UNet's attention (`models.hypernetwork.hooked`) in training mode (its dropout on, its
multiplier 1, as A1111's `forward` uses while training). The copies go to `<log>/<date>/<name>/hypernetworks/`,
the loss to `hypernetwork_loss.csv`, the result to the hypernetwork's own file (A1111's layout, with `step` and the
checkpoint's hash and name)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from sdwebui.models.hypernetwork import Hypernetwork, hooked, load_hypernetwork
from sdwebui.models.sd_model import SDModel
from sdwebui.pipelines.textual_inversion import TrainedThing, TrainOptions, TrainResult, training_loop


def train_hypernetwork(model: SDModel, options: TrainOptions, *,
                       on_step: Callable[[int, int, float, str], None] | None = None,
                       should_stop: Callable[[], bool] = lambda: False,
                       preview: Callable[[Hypernetwork, str, int], Image.Image | None] | None = None) -> TrainResult:
    """Train the hypernetwork file `options.embedding_path` (named `options.embedding_name`; copies every
    `options.save_embedding_every` steps). `preview(network, prompt, step)` draws with the network as it is now."""
    net = load_hypernetwork(options.embedding_path)
    net.to(model.device)
    net.set_multiplier(1.0)
    stack = model.text_encoder
    checkpoint_hash, checkpoint_name = model.info.short_hash, Path(model.info.name).stem

    def encode(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return stack.encode(texts).cross_attn

    def save(path: Path, label: str, step: int) -> None:
        name = net.name
        net.name, net.step = label, step
        net.sd_checkpoint, net.sd_checkpoint_name = checkpoint_hash, checkpoint_name
        try:
            net.save(path)
        finally:
            net.name = name

    def draw(prompt: str, step: int):
        net.eval()
        try:
            return preview(net, prompt, step)
        finally:
            net.train()

    net.train()
    try:
        return training_loop(model, options, TrainedThing(
            name=options.embedding_name, path=options.embedding_path, initial_step=net.step,
            parameters=net.parameters(), encode=encode, save=save, preview=draw if preview is not None else None,
            folder="hypernetworks", loss_file="hypernetwork_loss.csv",
            unet_scope=lambda: hooked(model.unet, [net])), on_step=on_step, should_stop=should_stop)
    finally:
        net.eval()


__all__ = ["train_hypernetwork"]
