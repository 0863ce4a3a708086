"""RetinaFace (ResNet-50), the face detector A1111's face restoration uses, ported from facexlib
(`facexlib/detection/retinaface.py`, `retinaface_net.py`, `retinaface_utils.py`; MIT) so that its weights load
without facexlib and basicsr (which download on import and pin old libraries).

Weights: facexlib's `detection_Resnet50_Final.pth` (A1111 keeps it in `models/GFPGAN`), its keys as the file has
them (`body.layer1.0.conv1.weight`, `fpn.output1.0.weight`, `ssh1.conv3X3.0.weight`, `ClassHead.0.conv1x1.weight`,
...; a `module.` prefix is dropped as facexlib drops it), read by the restricted loader, or a `.safetensors` of
the same tensors. Detection is facexlib's `detect_faces`: BGR pixels minus (104, 117, 123), anchors of 16/32,
64/128 and 256/512 pixels at strides 8/16/32, boxes and five landmarks decoded with variances (0.1, 0.2), faces
above 0.8 confidence, non-maximum suppression at 0.4.
"""

from __future__ import annotations

from itertools import product
from math import ceil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdwebui.models.files import ModelFileError
from sdwebui.models.upscalers import read_upscaler_state_dict

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
MEAN_BGR = (104.0, 117.0, 123.0)
FILE_NAMES = ("detection_Resnet50_Final.safetensors", "detection_Resnet50_Final.pth")


def _conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0, kernel: int = 3, relu: bool = True):
    layers: list[nn.Module] = [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup)]
    if relu:
        layers.append(nn.LeakyReLU(negative_slope=leaky, inplace=True))
    return nn.Sequential(*layers)


class SSH(nn.Module):
    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = _conv_bn(in_channel, out_channel // 2, relu=False)
        self.conv5X5_1 = _conv_bn(in_channel, out_channel // 4, leaky=leaky)
        self.conv5X5_2 = _conv_bn(out_channel // 4, out_channel // 4, relu=False)
        self.conv7X7_2 = _conv_bn(out_channel // 4, out_channel // 4, leaky=leaky)
        self.conv7x7_3 = _conv_bn(out_channel // 4, out_channel // 4, relu=False)

    def forward(self, x):
        conv5 = self.conv5X5_1(x)
        out = torch.cat([self.conv3X3(x), self.conv5X5_2(conv5), self.conv7x7_3(self.conv7X7_2(conv5))], dim=1)
        return F.relu(out)


class FPN(nn.Module):
    def __init__(self, in_channels: tuple[int, int, int], out_channels: int):
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = _conv_bn(in_channels[0], out_channels, leaky=leaky, kernel=1)
        self.output2 = _conv_bn(in_channels[1], out_channels, leaky=leaky, kernel=1)
        self.output3 = _conv_bn(in_channels[2], out_channels, leaky=leaky, kernel=1)
        self.merge1 = _conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = _conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, features):
        out1, out2, out3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        out2 = self.merge2(out2 + F.interpolate(out3, size=out2.shape[2:], mode="nearest"))
        out1 = self.merge1(out1 + F.interpolate(out2, size=out1.shape[2:], mode="nearest"))
        return [out1, out2, out3]


class _Head(nn.Module):
    def __init__(self, in_channels: int, values: int, anchors: int = 2):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channels, anchors * values, kernel_size=1)

    def forward(self, x):
        out = self.conv1x1(x).permute(0, 2, 3, 1).contiguous()
        return out.view(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """facexlib's `RetinaFace(network_name="resnet50")` (module names kept, so its weights load as they are)."""

    def __init__(self, in_channel: int = 256, out_channel: int = 256):
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.models._utils import IntermediateLayerGetter

        self.body = IntermediateLayerGetter(resnet50(weights=None), {"layer2": 1, "layer3": 2, "layer4": 3})
        self.fpn = FPN((in_channel * 2, in_channel * 4, in_channel * 8), out_channel)
        self.ssh1, self.ssh2, self.ssh3 = SSH(out_channel, out_channel), SSH(out_channel, out_channel), \
            SSH(out_channel, out_channel)
        self.ClassHead = nn.ModuleList(_Head(out_channel, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(out_channel, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(out_channel, 10) for _ in range(3))

    def forward(self, x):
        features = self.fpn(list(self.body(x).values()))
        features = [self.ssh1(features[0]), self.ssh2(features[1]), self.ssh3(features[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features)], dim=1)
        scores = torch.cat([head(f) for head, f in zip(self.ClassHead, features)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features)], dim=1)
        return boxes, F.softmax(scores, dim=-1), landmarks


def prior_boxes(height: int, width: int) -> torch.Tensor:
    """facexlib's `PriorBox`: (cx, cy, w, h) of every anchor, relative to the image, in the heads' order."""
    anchors = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        for i, j in product(range(ceil(height / step)), range(ceil(width / step))):
            for size in sizes:
                anchors.append(((j + 0.5) * step / width, (i + 0.5) * step / height, size / width, size / height))
    return torch.tensor(anchors, dtype=torch.float32)


def decode(loc: torch.Tensor, landmarks: torch.Tensor, priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (x0, y0, x1, y1) and landmarks (x, y) x 5, relative to the image (facexlib's `decode`,
    `decode_landm`)."""
    centres = priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:]
    sizes = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=1)
    points = [priors[:, :2] + landmarks[:, 2 * k:2 * k + 2] * VARIANCES[0] * priors[:, 2:] for k in range(5)]
    return boxes, torch.cat(points, dim=1)


def load_retinaface(path: Path, device: torch.device | str = "cpu") -> RetinaFace:
    """facexlib's `detection_Resnet50_Final.pth` (or a `.safetensors` of it) as a RetinaFace in eval mode."""
    path = Path(path)
    state = read_upscaler_state_dict(path)
    state = {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}
    net = RetinaFace()
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        shown = ", ".join((missing or unexpected)[:3])
        raise ModelFileError(path, f"not facexlib's RetinaFace ResNet-50 weights ({'missing' if missing else 'unexpected'}"
                                   f" keys: {shown}, ...)")
    return net.eval().to(torch.device(device))


def find_retinaface(folders) -> Path | None:
    """The RetinaFace weights in the first of `folders` that has them (`.safetensors` first)."""
    for folder in folders:
        for name in FILE_NAMES:
            candidate = Path(folder) / name
            if candidate.is_file():
                return candidate
    return None


@torch.inference_mode()
def detect(net: RetinaFace, image_rgb: np.ndarray, *, confidence: float = 0.8, nms: float = 0.4,
           device: torch.device | str = "cpu") -> list[tuple[np.ndarray, float, np.ndarray]]:
    """facexlib's `detect_faces` at the image's own size: [(box x0 y0 x1 y1, score, landmarks (5, 2))], best
    first."""
    from torchvision.ops import nms as box_nms

    height, width = image_rgb.shape[:2]
    bgr = torch.from_numpy(np.ascontiguousarray(image_rgb[:, :, ::-1], dtype=np.float32))
    x = (bgr - torch.tensor(MEAN_BGR)).permute(2, 0, 1).unsqueeze(0).to(device)
    loc, scores, landmarks = net(x)
    boxes, points = decode(loc[0].float().cpu(), landmarks[0].float().cpu(), prior_boxes(height, width))
    boxes = boxes * torch.tensor([width, height] * 2)
    points = points * torch.tensor([width, height] * 5)
    scores = scores[0, :, 1].float().cpu()
    keep = scores > confidence
    boxes, points, scores = boxes[keep], points[keep], scores[keep]
    order = box_nms(boxes, scores, nms)  # sorted by score, as facexlib's py_cpu_nms keeps them
    return [(boxes[i].numpy(), float(scores[i]), points[i].view(5, 2).numpy()) for i in order.tolist()]


__all__ = ["RetinaFace", "decode", "detect", "find_retinaface", "load_retinaface", "prior_boxes"]
