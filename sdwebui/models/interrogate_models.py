"""The interrogation models (BLIP, CLIP, DeepDanbooru): found in A1111's folders when asked for, loaded once, moved
to the generation device for a call and back to the CPU after it unless `interrogate_keep_models_in_memory` (A1111's
`send_blip_to_ram` / `send_clip_to_ram` / DeepDanbooru's `stop`). A file replaced on disk is loaded again."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from sdwebui.models.blip_clip import (BLIP_FOLDER, CLIP_FOLDER, Blip, Clip, InterrogateModelMissing, find_blip,
                                      find_clip, load_blip, load_clip)
from sdwebui.models.deepdanbooru import FOLDER as DEEPDANBOORU_FOLDER
from sdwebui.models.deepdanbooru import DeepDanbooruModel, find_deepdanbooru, load_deepdanbooru


def _stamp(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError:
        return (str(path),)
    return (str(path), stat.st_mtime_ns, stat.st_size)


class InterrogateModels:
    def __init__(self, models_dir: Path, *, device: torch.device | str = "cpu"):
        self.models_dir = Path(models_dir)
        self._device = device
        self.lock = threading.RLock()
        """Held for a whole interrogation (one at a time, as A1111's queue lock)."""
        self._cache: dict[str, tuple[tuple, object]] = {}

    @property
    def device(self) -> torch.device:
        device = self._device
        return torch.device(device.resolve() if hasattr(device, "resolve") else device)

    def _get(self, kind: str, stamp: tuple, load):
        with self.lock:
            cached = self._cache.get(kind)
            if cached is None or cached[0] != stamp:
                self._cache.pop(kind, None)
                cached = (stamp, load())
                self._cache[kind] = cached
            model = cached[1]
            model.to(self.device)
            return model

    def blip(self) -> Blip:
        entry = find_blip(self.models_dir)
        if entry is None:
            raise InterrogateModelMissing(
                f"no BLIP captioner: put a transformers BLIP folder (Salesforce/blip-image-captioning-base) or "
                f"A1111's model_base_caption_capfilt_large.pth in models/{BLIP_FOLDER}/")
        return self._get("blip", (entry.kind, *_stamp(entry.path / "config.json" if entry.kind == "transformers"
                                                      else entry.path)), lambda: load_blip(entry))

    def clip(self) -> Clip:
        entry = find_clip(self.models_dir)
        if entry is None:
            raise InterrogateModelMissing(
                f"no CLIP model: put a transformers CLIPModel folder (openai/clip-vit-large-patch14, A1111's "
                f"ViT-L/14) in models/{CLIP_FOLDER}/")
        return self._get("clip", _stamp(entry.path / "config.json"), lambda: load_clip(entry))

    def deepdanbooru(self) -> DeepDanbooruModel:
        files = find_deepdanbooru(self.models_dir)
        if not files:
            raise InterrogateModelMissing(
                f"no DeepDanbooru model: put A1111's model-resnet_custom_v3.pt in models/{DEEPDANBOORU_FOLDER}/")
        return self._get("deepdanbooru", _stamp(files[0]), lambda: load_deepdanbooru(files[0]))

    def installed(self) -> dict[str, bool]:
        return {"blip": find_blip(self.models_dir) is not None, "clip": find_clip(self.models_dir) is not None,
                "deepdanbooru": bool(find_deepdanbooru(self.models_dir))}

    def send_to_ram(self) -> None:
        """Every loaded model to the CPU (kept loaded, as A1111)."""
        with self.lock:
            for _stamp_, model in self._cache.values():
                model.to(torch.device("cpu"))


__all__ = ["InterrogateModels"]
