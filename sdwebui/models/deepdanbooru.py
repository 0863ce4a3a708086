"""DeepDanbooru's `resnet_custom_v3` tagger as A1111 runs it: the PyTorch port that A1111 downloads to
`models/torch_deepdanbooru/model-resnet_custom_v3.pt` (its `modules/deepbooru_model.py`, from
AUTOMATIC1111/TorchDeepDanbooru), rebuilt here from that file's layer list, with the same parameter names
(`n_Conv_0` ... `n_Conv_178`) so the released state dict loads unchanged.

The network is a bottleneck ResNet converted from Keras, so its padding is TensorFlow's "same": 3x3 convolutions pad
one pixel on each side, strided ones pad only right and bottom, and the 7x7 stem pads (2, 3). Stages (bottleneck
width -> output channels, blocks): 64 -> 256 x3, 128 -> 512 x8, 256 -> 1024 x20 then a strided block and x19 more,
512 -> 2048 x3, 1024 -> 4096 x3; a bias-free 1x1 convolution to one logit per tag, global average, sigmoid.
Input: N x H x W x 3 RGB in 0..1 (512 x 512 in A1111). The `.pt` file also holds the tag names under `"tags"`.

Every width scales with the stem's (64 in the released file): a test builds the same graph at width 8.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sdwebui.models.files import ModelFileError, load_pickle

FOLDER = "torch_deepdanbooru"
SUFFIXES = (".pt", ".pth")

# (kind, bottleneck width, output channels, stride) in conv-index order, at stem width 64. "first": the projection
# shortcut's conv is numbered before the block's three; "last": after them (blocks 97-100 of the released file).
_BLOCKS: list[tuple[str, int, int, int]] = (
    [("first", 64, 256, 1)] + [("plain", 64, 256, 1)] * 2
    + [("first", 128, 512, 2)] + [("plain", 128, 512, 1)] * 7
    + [("first", 256, 1024, 2)] + [("plain", 256, 1024, 1)] * 19
    + [("last", 256, 1024, 2)] + [("plain", 256, 1024, 1)] * 19
    + [("first", 512, 2048, 2)] + [("plain", 512, 2048, 1)] * 2
    + [("first", 1024, 4096, 2)] + [("plain", 1024, 4096, 1)] * 2
)


class DeepDanbooruModel(nn.Module):
    """`width`: the stem's channels (64 released); `num_tags`: 9176 released."""

    def __init__(self, num_tags: int = 9176, width: int = 64):
        super().__init__()
        self.tags: list[str] = []
        scale = width / 64

        def ch(n: int) -> int:
            return max(1, round(n * scale))

        index = 0

        def conv(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True) -> int:
            nonlocal index
            setattr(self, f"n_Conv_{index}", nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, bias=bias))
            index += 1
            return index - 1

        conv(3, ch(64), 7, 2)
        # Each block: (a, b, c, shortcut or None, stride): a 1x1 in->mid, b 3x3 mid->mid, c 1x1 mid->out.
        self._plan: list[tuple[int, int, int, int | None, int]] = []
        channels = ch(64)
        for kind, mid, out, stride in _BLOCKS:
            mid, out = ch(mid), ch(out)
            shortcut = conv(channels, out, 1, stride) if kind == "first" else None
            a = conv(channels, mid, 1)
            b = conv(mid, mid, 3, stride)
            c = conv(mid, out, 1)
            if kind == "last":
                shortcut = conv(channels, out, 1, stride)
            self._plan.append((a, b, c, shortcut, stride))
            channels = out
        self._head = conv(channels, num_tags, 1, bias=False)
        self._pool = nn.MaxPool2d(kernel_size=3, stride=2)

    def _conv(self, i: int) -> nn.Conv2d:
        return getattr(self, f"n_Conv_{i}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N x H x W x 3 (0..1) -> N x tags probabilities."""
        x = x.permute(0, 3, 1, 2)
        x = x.to(self.n_Conv_0.weight.dtype)
        x = F.relu(self.n_Conv_0(F.pad(x, [2, 3, 2, 3])))
        x = self._pool(F.pad(x, [0, 1, 0, 1], value=float("-inf")))
        for a, b, c, shortcut, stride in self._plan:
            residual = x if shortcut is None else self._conv(shortcut)(x)
            y = F.relu(self._conv(a)(x))
            y = F.pad(y, [1, 1, 1, 1] if stride == 1 else [0, 1, 0, 1])
            y = F.relu(self._conv(b)(y))
            x = F.relu(self._conv(c)(y) + residual)
        logits = self._conv(self._head)(x).mean(dim=(2, 3))
        return torch.sigmoid(logits)


def find_deepdanbooru(models_dir: Path) -> list[Path]:
    """The `.pt` files in `models/torch_deepdanbooru` (A1111's folder), `model-resnet_custom_v3.pt` first."""
    root = Path(models_dir) / FOLDER
    if not root.is_dir():
        return []
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    return sorted(files, key=lambda p: p.name != "model-resnet_custom_v3.pt")


def load_deepdanbooru(path: Path, device: torch.device | str = "cpu") -> DeepDanbooruModel:
    """The tagger in `path` (through the restricted loader), eval mode on `device`; ModelFileError when the file
    is not a DeepDanbooru state dict with its tag list."""
    path = Path(path)
    state = load_pickle(path)
    if not isinstance(state, dict) or "n_Conv_0.weight" not in state:
        raise ModelFileError(path, "not a DeepDanbooru model (A1111's model-resnet_custom_v3.pt: no n_Conv_0.weight)")
    state = dict(state)
    tags = state.pop("tags", None)
    head = state.get("n_Conv_178.weight")
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags) or head is None:
        raise ModelFileError(path, "not a DeepDanbooru model (no tag list under 'tags', or no n_Conv_178)")
    if head.shape[0] != len(tags):
        raise ModelFileError(path, f"{head.shape[0]} outputs for {len(tags)} tags")
    model = DeepDanbooruModel(num_tags=len(tags), width=int(state["n_Conv_0.weight"].shape[0]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelFileError(path, f"not the resnet_custom_v3 layout ({str(error).splitlines()[0]})") from None
    model.tags = list(tags)
    return model.eval().to(torch.device(device))


__all__ = ["FOLDER", "DeepDanbooruModel", "find_deepdanbooru", "load_deepdanbooru"]
