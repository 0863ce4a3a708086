"""Face restoration as txt2img / img2img ("Restore faces") and the Extras tab (GFPGAN / CodeFormer visibility)
use it.

Reference: A1111 `modules/face_restoration.py` (`restore_faces`: the restorer named by the setting
`face_restoration_model`), `modules/processing.py` (each image is restored after decoding and before the
inpainting overlay and saving; the infotext says `Face restoration: <model>`), `scripts/postprocessing_gfpgan.py`
and `postprocessing_codeformer.py` (Extras: the restored image blended over the input with the visibility;
`GFPGAN visibility`, `CodeFormer visibility`, `CodeFormer weight` in its infotext).

Where we differ: a setting that names a restorer that is not installed falls back to one that is (A1111 would
download it), and says so in the job's notes; an image without a face is returned as it was, with a note.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from sdwebui.models.face_restorers import FOLDERS, FaceRestorerLibrary, FaceRestorerNotFoundError, run_restorer
from sdwebui.models.retinaface import find_retinaface
from sdwebui.pipelines.faces import FaceDetector, HaarFaceDetector, RetinaFaceDetector, restore_faces_in


class FaceRestorationError(RuntimeError):
    pass


class FaceRestoration:
    """The installed restorers and a face detector: restores the faces of PIL images."""

    def __init__(self, library: FaceRestorerLibrary, *, detector: FaceDetector | None = None,
                 unload: Callable[[], bool] = lambda: False):
        self.library = library
        self._given_detector = detector
        self._detector: FaceDetector | None = None
        self.unload = unload
        """A1111's `face_restoration_unload`: move the network to the CPU after each use."""

    @property
    def detector(self) -> FaceDetector:
        """The given detector; else RetinaFace when facexlib's weights are in `models/GFPGAN` (where A1111 keeps
        them) or `models/Codeformer`, else OpenCV's Haar cascades (looked for again at each use: users copy files
        in while the app runs)."""
        if self._given_detector is not None:
            return self._given_detector
        models = self.library.models_dir
        path = find_retinaface([models / FOLDERS["GFPGAN"], models / FOLDERS["CodeFormer"]])
        current = self._detector
        if path is not None:
            if not isinstance(current, RetinaFaceDetector) or current.path != path:
                current = RetinaFaceDetector(path, self.library.device)
        elif not isinstance(current, HaarFaceDetector):
            current = HaarFaceDetector()
        self._detector = current
        return current

    def names(self) -> list[str]:
        return self.library.names()

    def pick(self, wanted: str) -> tuple[str, str | None]:
        """(the restorer to use for `wanted`, a note when it is another one), or FaceRestorationError when none
        is installed."""
        names = self.names()
        for name in names:
            if name.lower() == str(wanted).lower():
                return name, None
        if not names:
            try:
                self.library.find(wanted)
            except FaceRestorerNotFoundError as error:
                raise FaceRestorationError(f"face restoration: {error.args[0]}") from None
        return names[0], f"face restoration model {wanted} is not installed; used {names[0]}"

    def restore(self, image: Image.Image, name: str, codeformer_weight: float = 0.5) -> tuple[Image.Image, int]:
        """(the image with its faces restored by restorer `name`, the number of faces). The restorer must be
        installed (FaceRestorationError otherwise)."""
        try:
            entry = self.library.find(name)
        except FaceRestorerNotFoundError as error:
            raise FaceRestorationError(str(error.args[0])) from None
        model = self.library.model(entry)
        device = self.library.device

        def restore_crop(crop: np.ndarray) -> np.ndarray:
            face = torch.from_numpy(crop).permute(2, 0, 1).float().div(127.5).sub(1.0).unsqueeze(0).to(device)
            with torch.inference_mode():
                out = run_restorer(model, face, codeformer_weight)
            out = out[0].float().cpu().add(1.0).mul(127.5).round().clamp(0, 255)
            return out.permute(1, 2, 0).numpy().astype(np.uint8)

        rgb = np.asarray(image.convert("RGB"))
        try:
            restored, count = restore_faces_in(rgb, self.detector, restore_crop)
        finally:
            if self.unload():
                self.library.offload()
        if count == 0:
            return image, 0
        return Image.fromarray(restored), count

    def restore_batch(self, images: list[Image.Image], params) -> tuple[list[Image.Image], dict, list[str]]:
        """A generation batch's images restored as `params` say (`face_restoration_model`, `code_former_weight`):
        (images, infotext entries, notes). The engine calls it for jobs with `restore_faces`."""
        name, note = self.pick(getattr(params, "face_restoration_model", "CodeFormer"))
        notes = [note] if note else []
        out = []
        for image in images:
            restored, count = self.restore(image, name, getattr(params, "code_former_weight", 0.5))
            if count == 0:
                notes.append("face restoration: no face found in an image; it is unchanged")
            out.append(restored)
        return out, {"Face restoration": name}, notes

    def extras(self, image: Image.Image, name: str, visibility: float, codeformer_weight: float = 0.5
               ) -> tuple[Image.Image, int]:
        """Extras' GFPGAN / CodeFormer step: the restored image blended over `image` with `visibility`."""
        source = image.convert("RGB")
        restored, count = self.restore(source, name, codeformer_weight)
        if count and visibility < 1.0:
            restored = Image.blend(source, restored.convert("RGB"), float(visibility))
        return restored, count


__all__ = ["FaceRestoration", "FaceRestorationError"]
