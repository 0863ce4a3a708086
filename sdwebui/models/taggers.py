"""WD14-style image taggers (SmilingWolf's `wd-v1-4-*` ONNX models, as the popular WD14 tagger extension runs
them), through onnxruntime.

Layout (the extension's `models/interrogators/<name>/`): `model.onnx` (input N x S x S x 3, BGR, 0..255 float;
output N x T, each tag's probability) and `selected_tags.csv` (`tag_id,name,category,count`; the first four rows
are the ratings general / sensitive / questionable / explicit). Preprocessing as SmilingWolf's reference
(`wd-v1-4-tags/app.py`, which the extension copies): alpha over white, RGB -> BGR, padded to a white square,
resized to S (INTER_AREA down, INTER_CUBIC up).

onnxruntime is an optional dependency (`pip install "sdwebui[taggers]"`): imported only when a tagger runs.
"""

from __future__ import annotations

import csv
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

FOLDER = "interrogators"
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
RATING_ROWS = 4


class TaggerError(RuntimeError):
    pass


@dataclass(frozen=True)
class TaggerEntry:
    name: str
    folder: Path


def find_taggers(models_dir: Path) -> list[TaggerEntry]:
    """Every `models/interrogators/<name>/` holding both files, by name."""
    root = Path(models_dir) / FOLDER
    if not root.is_dir():
        return []
    return [TaggerEntry(folder.name, folder) for folder in sorted(root.iterdir())
            if (folder / MODEL_FILE).is_file() and (folder / TAGS_FILE).is_file()]


def read_tags(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    if not rows or "name" not in rows[0]:
        raise TaggerError(f"{path.name}: not a tag list (a CSV with a 'name' column)")
    return [row["name"] for row in rows]


def prepare(image: Image.Image, size: int) -> np.ndarray:
    """1 x size x size x 3 float32 BGR 0..255, as SmilingWolf's reference prepares it."""
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, "WHITE")
    white.paste(rgba, mask=rgba)
    bgr = np.asarray(white.convert("RGB"))[:, :, ::-1]
    height, width = bgr.shape[:2]
    side = max(height, width, size)
    top, left = (side - height) // 2, (side - width) // 2
    square = cv2.copyMakeBorder(bgr, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT,
                                value=[255, 255, 255])
    if square.shape[0] != size:
        interpolation = cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_CUBIC
        square = cv2.resize(square, (size, size), interpolation=interpolation)
    return square.astype(np.float32)[None]


class Tagger:
    """One tagger's session and tag list, loaded on first use."""

    def __init__(self, entry: TaggerEntry):
        self.entry = entry
        try:
            import onnxruntime
        except ImportError:
            raise TaggerError("WD14 taggers need onnxruntime (pip install onnxruntime)") from None
        self.tags = read_tags(entry.folder / TAGS_FILE)
        try:
            self.session = onnxruntime.InferenceSession(str(entry.folder / MODEL_FILE),
                                                        providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for a broken file
            raise TaggerError(f"{entry.name}/{MODEL_FILE}: cannot be loaded ({error})") from None
        shape = self.session.get_inputs()[0].shape
        self.size = int(shape[1]) if isinstance(shape[1], int) else 448

    def probabilities(self, image: Image.Image) -> tuple[dict[str, float], dict[str, float]]:
        """(ratings, tags): each name's probability."""
        inputs = {self.session.get_inputs()[0].name: prepare(image, self.size)}
        scores = self.session.run([self.session.get_outputs()[0].name], inputs)[0][0]
        if len(scores) != len(self.tags):
            raise TaggerError(f"{self.entry.name}: the model gives {len(scores)} scores for {len(self.tags)} tags")
        pairs = [(name, float(score)) for name, score in zip(self.tags, scores)]
        return dict(pairs[:RATING_ROWS]), dict(pairs[RATING_ROWS:])


class TaggerLibrary:
    """The taggers in `models/interrogators`, the last one used kept loaded unless asked otherwise."""

    def __init__(self, models_dir: Path):
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._loaded: Tagger | None = None

    def entries(self) -> list[TaggerEntry]:
        return find_taggers(self.models_dir)

    def tagger(self, name: str) -> Tagger:
        with self._lock:
            entry = next((e for e in self.entries() if e.name == name), None)
            if entry is None:
                raise TaggerError(f"no tagger {name!r} in models/{FOLDER}")
            if self._loaded is None or self._loaded.entry != entry:
                self._loaded = None
                self._loaded = Tagger(entry)
            return self._loaded

    def probabilities(self, name: str, image: Image.Image) -> tuple[dict[str, float], dict[str, float]]:
        """Tagger `name`'s (ratings, tags) for `image`; one image at a time (as A1111's queue lock: a tagger takes
        every CPU core it is given)."""
        with self._run_lock:
            return self.tagger(name).probabilities(image)

    def release(self) -> None:
        with self._lock:
            self._loaded = None


__all__ = ["FOLDER", "Tagger", "TaggerEntry", "TaggerError", "TaggerLibrary", "find_taggers", "prepare", "read_tags"]
