"""Weighted ControlNet preprocessors (annotators) from local folders, as sd-webui-controlnet runs them.

sdwebui never downloads annotator weights. They are looked up in `models/ControlNetAnnotators/<folder>/` (the
extension keeps its downloads in `annotator/downloads/<folder>/`, same sub-folder names):

- `depth_midas` (module `depth`): a transformers `DPTForDepthEstimation` folder (config.json + model.safetensors,
  the Intel/dpt-hybrid-midas or dpt-large layout) in `ControlNetAnnotators/midas/` (or one folder below it). Run as
  the extension's `MidasDetector`: the image padded to a multiple of 64 at the processor resolution, pixels / 127.5 - 1,
  the depth min-max normalised to 0..255, padding removed.
- `depth_anything`: a transformers `DepthAnythingForDepthEstimation` folder (LiheYoung/depth-anything-*-hf layout)
  in `ControlNetAnnotators/depth_anything/`. Run as the extension's `DepthAnythingDetector` (colored=False): the
  padded image with its channels swapped (the extension's `cv2.COLOR_BGR2RGB` on an RGB image), resized so both
  sides are >= 518 and multiples of 14 (cubic), ImageNet-normalised, the depth resized back (bilinear) and min-max
  normalised to 0..255.

Only safetensors weights are read (no pickles). The model lives on the CPU and is moved to the run device only for
the call (the extension's `unload_model` after each detection).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

ANNOTATOR_FOLDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    # module name: (sub-folder of ControlNetAnnotators, transformers model types accepted)
    "depth": ("midas", ("dpt",)),
    "depth_anything": ("depth_anything", ("depth_anything",)),
}
_KEEP = 2
_cache: OrderedDict[tuple, object] = OrderedDict()
_lock = threading.Lock()


class AnnotatorMissing(ValueError):
    """The annotator's weights are not where they would be (the message names the module and the folder)."""


def find_model_folder(module: str, root: Path | None) -> Path | None:
    """The transformers folder a weighted module would run from, or None."""
    if module not in ANNOTATOR_FOLDERS or root is None:
        return None
    sub, types = ANNOTATOR_FOLDERS[module]
    base = Path(root) / sub
    candidates = [base] + (sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else [])
    for folder in candidates:
        config = folder / "config.json"
        if not config.is_file() or not (folder / "model.safetensors").is_file():
            continue
        try:
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError):
            continue
        if model_type in types:
            return folder
    return None


def missing_message(module: str, label: str, root: Path | None, weights: str | None) -> str | None:
    """Why the weighted `module` cannot run with annotators under `root` (None: it can)."""
    if module in ANNOTATOR_FOLDERS:
        if find_model_folder(module, root) is not None:
            return None
        sub, types = ANNOTATOR_FOLDERS[module]
        where = Path(root) / sub if root is not None else Path("models/ControlNetAnnotators") / sub
        kind = {"dpt": "DPTForDepthEstimation", "depth_anything": "DepthAnythingForDepthEstimation"}[types[0]]
        return (f"the {label} preprocessor needs its weights, which were not found in {where} (a transformers "
                f"{kind} folder: config.json + model.safetensors; sdwebui does not download them)")
    where = Path(root) if root is not None else Path("models/ControlNetAnnotators")
    return (f"the {label} preprocessor needs its weights, which were not found in {where / (weights or module)} "
            f"(sdwebui does not support it yet and does not download weights)")


def _folder(module: str, root: Path | None) -> Path:
    folder = find_model_folder(module, root)
    if folder is None:
        raise AnnotatorMissing(missing_message(module, module, root, None))
    return folder


def _load(folder: Path):
    import torch  # noqa: F401  (transformers needs it)
    from transformers import DepthAnythingForDepthEstimation, DPTForDepthEstimation

    key = (str(folder), (folder / "model.safetensors").stat().st_mtime_ns)
    with _lock:
        model = _cache.get(key)
        if model is not None:
            _cache.move_to_end(key)
            return model
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    cls = DPTForDepthEstimation if model_type == "dpt" else DepthAnythingForDepthEstimation
    model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()
    with _lock:
        _cache[key] = model
        while len(_cache) > _KEEP:
            _cache.popitem(last=False)
    return model


def _run_device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _dpt_depth(model, pixels):
    """DPTForDepthEstimation on a batch of any size divisible by the patch (transformers' own forward takes the
    ViT neck as square)."""
    config = model.config
    if model.backbone is not None:
        return model(pixel_values=pixels).predicted_depth
    out = model.dpt(pixels, output_hidden_states=True, return_dict=True)
    hidden = out.hidden_states
    if not config.is_hybrid:
        hidden = [f for i, f in enumerate(hidden[1:]) if i in config.backbone_out_indices]
    else:
        hidden = list(out.intermediate_activations) + [f for i, f in enumerate(hidden[1:])
                                                       if i in config.backbone_out_indices[2:]]
    height, width = pixels.shape[-2:]
    features = model.neck(hidden, height // config.patch_size, width // config.patch_size)
    return model.head(features)


def _normalise(depth) -> np.ndarray:
    depth = depth.float()
    depth = depth - depth.min()
    depth = depth / depth.max().clamp_min(1e-12)
    return (depth.cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)


def depth_midas(img: np.ndarray, root: Path | None) -> np.ndarray:
    """The depth map (uint8 HxW) of the padded image (uint8 HWC RGB)."""
    import torch

    model = _load(_folder("depth", root))
    device = _run_device()
    with _lock, torch.inference_mode():
        model.to(device)
        try:
            dtype = next(model.parameters()).dtype
            pixels = torch.from_numpy(img).to(device).float().div(127.5).sub(1.0).permute(2, 0, 1)[None]
            depth = _dpt_depth(model, pixels.to(dtype))[0]
            if depth.shape != img.shape[:2]:
                depth = torch.nn.functional.interpolate(depth[None, None].float(), img.shape[:2], mode="bicubic",
                                                        align_corners=False)[0, 0]
            return _normalise(depth)
        finally:
            model.to("cpu")


def _lower_bound_multiple(x: float, minimum: int, multiple: int = 14) -> int:
    y = int(np.round(x / multiple) * multiple)
    if y < minimum:
        y = int(np.ceil(x / multiple) * multiple)
    return y


def depth_anything(img: np.ndarray, root: Path | None) -> np.ndarray:
    """The depth map (uint8 HxW) of the padded image (uint8 HWC RGB)."""
    import cv2
    import torch

    model = _load(_folder("depth_anything", root))
    height, width = img.shape[:2]
    image = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) / 255.0  # as the extension (its input is already RGB)
    scale = max(518 / height, 518 / width)  # Resize(518, 518, keep_aspect_ratio, "lower_bound", multiple of 14)
    new_h, new_w = _lower_bound_multiple(scale * height, 518), _lower_bound_multiple(scale * width, 518)
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    image = (image - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    device = _run_device()
    with _lock, torch.inference_mode():
        model.to(device)
        try:
            dtype = next(model.parameters()).dtype
            pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]
            depth = model(pixel_values=pixels.to(device, dtype)).predicted_depth
            depth = torch.nn.functional.interpolate(depth[None].float(), (height, width), mode="bilinear",
                                                    align_corners=False)[0, 0]
            return _normalise(depth)
        finally:
            model.to("cpu")


Annotator = Callable[[np.ndarray, "Path | None"], np.ndarray]
WEIGHTED: dict[str, Annotator] = {"depth": depth_midas, "depth_anything": depth_anything}

__all__ = ["ANNOTATOR_FOLDERS", "AnnotatorMissing", "WEIGHTED", "find_model_folder", "missing_message",
           "depth_midas", "depth_anything"]
