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


DWPOSE_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")
"""DWPose (`dw_openpose_full`): the YOLOX person detector and the RTMPose whole-body model, in
`ControlNetAnnotators/openpose/` as the extension downloads them."""


def find_model_folder(module: str, root: Path | None) -> Path | None:
    """The folder a weighted module would run from (a transformers folder; DWPose's two ONNX files), or None."""
    if module == "dw_openpose_full" and root is not None:
        folder = Path(root) / "openpose"
        return folder if all((folder / name).is_file() for name in DWPOSE_FILES) else None
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
    if module == "dw_openpose_full":
        if find_model_folder(module, root) is not None:
            return None
        where = (Path(root) if root is not None else Path("models/ControlNetAnnotators")) / "openpose"
        return (f"the {label} preprocessor needs its weights, which were not found in {where} ({' and '.join(DWPOSE_FILES)}, "
                f"run on onnxruntime; sdwebui does not download them)")
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
    embeddings = model.dpt.embeddings
    saved = getattr(embeddings, "image_size", None)
    if config.is_hybrid and saved is not None:  # its size check: MiDaS runs at the padded processor resolution
        embeddings.image_size = tuple(pixels.shape[-2:])
    try:
        out = model.dpt(pixels, output_hidden_states=True, return_dict=True)
    finally:
        if config.is_hybrid and saved is not None:
            embeddings.image_size = saved
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


# ---- DWPose (the extension's annotator/openpose: cv_ox_det.py, cv_ox_pose.py, wholebody.py, util.py) -----------

_sessions: dict[tuple, tuple] = {}


def _dw_sessions(folder: Path):
    try:
        import onnxruntime
    except ImportError:
        raise AnnotatorMissing("the dw_openpose_full preprocessor runs its ONNX models on onnxruntime, which is not "
                               "installed: pip install 'sdwebui[taggers]' (or onnxruntime)") from None

    key = tuple((str(folder / name), (folder / name).stat().st_mtime_ns) for name in DWPOSE_FILES)
    with _lock:
        found = _sessions.get(key)
        if found is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in onnxruntime.get_available_providers()]
            found = tuple(onnxruntime.InferenceSession(str(folder / name), providers=providers)
                          for name in DWPOSE_FILES)
            _sessions.clear()
            _sessions[key] = found
    return found


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        overlap = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(overlap <= threshold)[0] + 1]
    return keep


def _detect_people(session, image: np.ndarray) -> np.ndarray:
    """YOLOX boxes (x1, y1, x2, y2) of people, as the extension's `inference_detector`."""
    import cv2

    size = (640, 640)
    padded = np.ones((*size, 3), dtype=np.uint8) * 114
    ratio = min(size[0] / image.shape[0], size[1] / image.shape[1])
    new_w, new_h = int(image.shape[1] * ratio), int(image.shape[0] * ratio)
    padded[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    batch = np.ascontiguousarray(padded.transpose(2, 0, 1), dtype=np.float32)[None]
    output = session.run(None, {session.get_inputs()[0].name: batch})[0].astype(np.float64)
    grids, strides = [], []
    for stride in (8, 16, 32):
        xv, yv = np.meshgrid(np.arange(size[1] // stride), np.arange(size[0] // stride))
        grid = np.stack((xv, yv), 2).reshape(1, -1, 2)
        grids.append(grid)
        strides.append(np.full((*grid.shape[:2], 1), stride))
    grids, strides = np.concatenate(grids, 1), np.concatenate(strides, 1)
    output[..., :2] = (output[..., :2] + grids) * strides
    output[..., 2:4] = np.exp(output[..., 2:4]) * strides
    predictions = output[0]
    boxes, scores = predictions[:, :4], predictions[:, 4:5] * predictions[:, 5:]
    xyxy = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                     boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], axis=1) / ratio
    people = scores[:, 0]  # class 0; the extension's multiclass NMS keeps class 0's boxes the same way
    valid = people > 0.1
    if not valid.any():
        return np.zeros((0, 4))
    boxes, people = xyxy[valid], people[valid]
    keep = _nms(boxes, people, 0.45)
    boxes, people = boxes[keep], people[keep]
    return boxes[people > 0.3]


def _warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    import cv2

    src_dir, dst_dir = np.array([0.0, scale[0] * -0.5]), np.array([0.0, output_size[0] * -0.5])
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0], src[1] = center, center + src_dir
    dst[0] = [output_size[0] * 0.5, output_size[1] * 0.5]
    dst[1] = dst[0] + dst_dir
    for points in (src, dst):
        direction = points[0] - points[1]
        points[2] = points[1] + np.r_[-direction[1], direction[0]]
    return cv2.getAffineTransform(np.float32(src), np.float32(dst))


def _estimate_poses(session, boxes: np.ndarray, image: np.ndarray, input_size=(288, 384)) -> np.ndarray:
    """RTMPose whole-body keypoints [N, 133, 3] (x, y, score) in pixels, as the extension's `inference_pose`."""
    import cv2

    if len(boxes) == 0:
        boxes = np.array([[0, 0, image.shape[1], image.shape[0]]], dtype=np.float64)
    crops, centers, scales = [], [], []
    w, h = input_size
    for x0, y0, x1, y1 in boxes:
        center = np.array([x0 + x1, y0 + y1]) * 0.5
        scale = np.array([x1 - x0, y1 - y0]) * 1.25
        scale = np.array([scale[0], scale[0] / (w / h)]) if scale[0] > scale[1] * (w / h) else \
            np.array([scale[1] * (w / h), scale[1]])
        crop = cv2.warpAffine(image, _warp_matrix(center, scale, (w, h)), (int(w), int(h)), flags=cv2.INTER_LINEAR)
        crops.append((crop - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375]))
        centers.append(center)
        scales.append(scale)
    batch = np.stack(crops, axis=0).transpose(0, 3, 1, 2).astype(np.float32)
    simcc_x, simcc_y = session.run(None, {session.get_inputs()[0].name: batch})[:2]
    n, k, _ = simcc_x.shape
    flat_x, flat_y = simcc_x.reshape(n * k, -1), simcc_y.reshape(n * k, -1)
    locs = np.stack((np.argmax(flat_x, axis=1), np.argmax(flat_y, axis=1)), axis=-1).astype(np.float32)
    vals = np.minimum(np.amax(flat_x, axis=1), np.amax(flat_y, axis=1))
    locs[vals <= 0.0] = -1
    locs, vals = locs.reshape(n, k, 2) / 2.0, vals.reshape(n, k)  # simcc split ratio 2
    keypoints = np.stack([locs[i] / np.array(input_size) * scales[i] + centers[i] - scales[i] / 2
                          for i in range(n)])
    return np.concatenate([keypoints, vals[..., None]], axis=-1)


_LIMBS = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13], [13, 14],
          [2, 1], [1, 15], [15, 17], [1, 16], [16, 18]]
_COLORS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
           [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
           [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]
_HAND_EDGES = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [0, 9], [9, 10], [10, 11], [11, 12],
               [0, 13], [13, 14], [14, 15], [15, 16], [0, 17], [17, 18], [18, 19], [19, 20]]


def _part(points: np.ndarray) -> list | None:
    """The extension's `format_keypoint_part`: keypoints with score >= 0.3, else None; None when none is."""
    part = [(float(x), float(y)) if score >= 0.3 else None for x, y, score in points]
    return None if all(p is None for p in part) else part


def _draw(people: np.ndarray, height: int, width: int) -> np.ndarray:
    """The extension's `draw_poses` (body, hands, face) of DWPose keypoints in pixels (18 OpenPose body points)."""
    import colorsys
    import math

    import cv2

    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    eps = 0.01
    for person in people:
        body = _part(person[:18]) or [None] * 18
        left, right, face = _part(person[92:113]), _part(person[113:134]), _part(person[24:92])
        if face is not None:
            face += [body[14], body[15]]
        for (a, b), color in zip(_LIMBS, _COLORS):
            p1, p2 = body[a - 1], body[b - 1]
            if p1 is None or p2 is None:
                continue
            ys, xs = np.array([p1[0], p2[0]]), np.array([p1[1], p2[1]])
            length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(xs[0] - xs[1], ys[0] - ys[1]))
            polygon = cv2.ellipse2Poly((int(np.mean(ys)), int(np.mean(xs))), (int(length / 2), 4), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, color)
        canvas = (canvas * 0.6).astype(np.uint8)
        for point, color in zip(body, _COLORS):
            if point is not None:
                cv2.circle(canvas, (int(point[0]), int(point[1])), 4, color, thickness=-1)
        for hand in (left, right):
            if not hand:
                continue
            for index, (a, b) in enumerate(_HAND_EDGES):
                if hand[a] is None or hand[b] is None:
                    continue
                x1, y1, x2, y2 = int(hand[a][0]), int(hand[a][1]), int(hand[b][0]), int(hand[b][1])
                if x1 > eps and y1 > eps and x2 > eps and y2 > eps:
                    color = [c * 255 for c in colorsys.hsv_to_rgb(index / float(len(_HAND_EDGES)), 1.0, 1.0)]
                    cv2.line(canvas, (x1, y1), (x2, y2), color, thickness=2)
            for point in hand:
                if point is not None and int(point[0]) > eps and int(point[1]) > eps:
                    cv2.circle(canvas, (int(point[0]), int(point[1])), 4, (0, 0, 255), thickness=-1)
        for point in face or []:
            if point is not None and int(point[0]) > eps and int(point[1]) > eps:
                cv2.circle(canvas, (int(point[0]), int(point[1])), 3, (255, 255, 255), thickness=-1)
    return canvas


def dw_openpose_full(img: np.ndarray, root: Path | None) -> np.ndarray:
    """DWPose's whole-body skeleton (body, hands, face) of the padded image, drawn as the extension draws it."""
    detector, estimator = _dw_sessions(_folder("dw_openpose_full", root))
    boxes = _detect_people(detector, img)
    if len(boxes) == 0:
        return np.zeros_like(img)
    info = _estimate_poses(estimator, boxes, img)
    neck = np.mean(info[:, [5, 6]], axis=1)  # the extension's Wholebody: a neck joint, OpenPose's order
    neck[:, 2:4] = np.logical_and(info[:, 5, 2:4] > 0.3, info[:, 6, 2:4] > 0.3).astype(int)
    info = np.insert(info, 17, neck, axis=1)
    mmpose = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
    openpose = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]
    info[:, openpose] = info[:, mmpose]
    return _draw(info, img.shape[0], img.shape[1])


Annotator = Callable[[np.ndarray, "Path | None"], np.ndarray]
WEIGHTED: dict[str, Annotator] = {"depth": depth_midas, "depth_anything": depth_anything,
                                  "dw_openpose_full": dw_openpose_full}

__all__ = ["ANNOTATOR_FOLDERS", "AnnotatorMissing", "WEIGHTED", "find_model_folder", "missing_message",
           "depth_midas", "depth_anything", "dw_openpose_full", "DWPOSE_FILES"]
