"""Face restoration models: GFPGAN, CodeFormer and RestoreFormer files in A1111's folders, loaded with spandrel.

A1111 (`modules/gfpgan_model.py`, `modules/codeformer_model.py`, v1.10) lists two restorers, "CodeFormer" and
"GFPGAN", each backed by one file: `models/Codeformer/codeformer-v0.1.0.pth` and the first `.pth` in
`models/GFPGAN` whose name holds "GFPGAN" (`GFPGANv1.4.pth`), both loaded with spandrel. We add "RestoreFormer"
(GFPGAN's release ships `RestoreFormer.pth`; spandrel knows it): a file in `models/RestoreFormer`, or one named
`*RestoreFormer*` in `models/GFPGAN` where GFPGAN's users keep it.

What we do differently, on purpose:
- A1111 downloads a missing model on first use; we list a restorer only when its file is on disk (offline by
  design), and a job that asks for face restoration with none installed is refused, naming the folder.
- `.safetensors` files are taken, and preferred over a `.pth` of the same restorer; a `.pth` is read by the
  restricted unpickler (tensors and plain containers only), never by `torch.load`.
- CodeFormer's architecture is in `spandrel_extra_arches`, whose licence is non-commercial: it is an optional
  extra (`pip install "sdwebui[codeformer]"`); without it CodeFormer is not listed, and a CodeFormer file is
  reported as needing it.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from sdwebui.models.files import ModelFileError
from sdwebui.models.upscalers import read_upscaler_state_dict

RESTORER_NAMES = ("CodeFormer", "GFPGAN", "RestoreFormer")
"""In A1111's order (`shared.face_restorers`: CodeFormer is set up first), then ours."""
MODEL_EXTENSIONS = (".safetensors", ".pth", ".pt")
FOLDERS = {"CodeFormer": "Codeformer", "GFPGAN": "GFPGAN", "RestoreFormer": "RestoreFormer"}
"""Each restorer's folder below `models/` (A1111's spelling: `Codeformer`)."""
HELPER_FILES = ("detection_", "parsing_", "alignment_")
"""facexlib's detector / parser weights, which A1111 keeps in `models/GFPGAN` too: never a restorer."""


class FaceRestorerNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class FaceRestorerEntry:
    """One face restorer that can run: its name (A1111's), its folder and the file it loads."""

    name: str
    folder: Path
    path: Path

    def a1111(self) -> dict:
        """The `/sdapi/v1/face-restorers` item (A1111's `FaceRestorerItem`)."""
        return {"name": self.name, "cmd_dir": str(self.folder)}


def codeformer_supported() -> bool:
    """Whether the optional `spandrel_extra_arches` (CodeFormer's architecture) is installed."""
    return importlib.util.find_spec("spandrel_extra_arches") is not None  # optional, non-commercial licence


def _candidates(folder: Path, wanted: str | None) -> list[Path]:
    """Model files of `folder` (and below) whose name holds `wanted` (any name when None), best first:
    `.safetensors` before pickles, then the newest."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.rglob("*"):
        name = path.name.lower()
        if not path.is_file() or path.suffix.lower() not in MODEL_EXTENSIONS or name.startswith(HELPER_FILES):
            continue
        if wanted is not None and wanted.lower() not in name:
            continue
        found.append(path)
    return sorted(found, key=lambda p: (p.suffix.lower() != ".safetensors", -p.stat().st_mtime, p.name))


def find_face_restorers(models_dir: Path, *, with_codeformer: bool | None = None) -> list[FaceRestorerEntry]:
    """The restorers whose file is in `models_dir`'s folders, in `RESTORER_NAMES` order."""
    models_dir = Path(models_dir)
    if with_codeformer is None:
        with_codeformer = codeformer_supported()
    entries = []
    gfpgan_folder = models_dir / FOLDERS["GFPGAN"]
    gfpgan = [p for p in _candidates(gfpgan_folder, "gfpgan") if "restoreformer" not in p.name.lower()]
    codeformer = _candidates(models_dir / FOLDERS["CodeFormer"], None)
    restoreformer_folder = models_dir / FOLDERS["RestoreFormer"]
    restoreformer = _candidates(restoreformer_folder, None) or _candidates(gfpgan_folder, "restoreformer")
    if codeformer and with_codeformer:
        entries.append(FaceRestorerEntry("CodeFormer", models_dir / FOLDERS["CodeFormer"], codeformer[0]))
    if gfpgan:
        entries.append(FaceRestorerEntry("GFPGAN", gfpgan_folder, gfpgan[0]))
    if restoreformer:
        entries.append(FaceRestorerEntry("RestoreFormer", restoreformer[0].parent, restoreformer[0]))
    return entries


def install_hint(name: str, models_dir: Path | str = "models") -> str:
    """Where a user puts a restorer's file (for errors)."""
    folder = f"{Path(models_dir).name}/{FOLDERS.get(name, name)}"
    if name == "CodeFormer":
        return (f"put codeformer-v0.1.0.pth in {folder} and install the optional extra spandrel_extra_arches "
                "(non-commercial licence: pip install 'sdwebui[codeformer]')")
    if name == "RestoreFormer":
        return f"put RestoreFormer.pth in {folder} (or in {Path(models_dir).name}/GFPGAN)"
    return f"put GFPGANv1.4.pth (or a .safetensors of it) in {folder}"


def _registry():
    """spandrel's architectures, plus CodeFormer's when the optional extra is installed (a copy of the main
    registry: spandrel's own stays as it is)."""
    from spandrel import MAIN_REGISTRY

    try:
        from spandrel_extra_arches import EXTRA_REGISTRY
    except ImportError:
        return MAIN_REGISTRY
    registry = MAIN_REGISTRY.copy()
    registry.add(*EXTRA_REGISTRY, ignore_duplicates=True)
    return registry


def load_face_restorer_model(path: Path, expected: str, device: torch.device | str = "cpu"):
    """The spandrel `ImageModelDescriptor` of a restorer file (eval mode, on `device`), or ModelFileError."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError
    from spandrel.__helpers.canonicalize import canonicalize_state_dict

    path = Path(path)
    state_dict = canonicalize_state_dict(read_upscaler_state_dict(path))  # unwraps `params_ema` / `params`
    try:
        descriptor = ModelLoader(registry=_registry()).load_from_state_dict(state_dict)
    except UnsupportedModelError:
        if expected == "CodeFormer" and not codeformer_supported():
            raise ModelFileError(path, "CodeFormer needs the optional extra spandrel_extra_arches "
                                       "(pip install 'sdwebui[codeformer]')") from None
        raise ModelFileError(path, f"not a {expected} model (spandrel does not recognise its weights)") from None
    except (KeyError, ValueError, RuntimeError) as error:
        raise ModelFileError(path, f"cannot build the {expected} model from its weights ({error})") from None
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.architecture.id != expected:
        found = getattr(descriptor.architecture, "id", type(descriptor).__name__)
        raise ModelFileError(path, f"holds a {found} model, not {expected}")
    descriptor.eval()
    descriptor.to(torch.device(device))
    return descriptor


def run_restorer(descriptor, face: torch.Tensor, codeformer_weight: float = 0.5) -> torch.Tensor:
    """One aligned face, RGB in -1..1 (N, 3, 512, 512), through the network; RGB in -1..1 out. Called as A1111
    calls each network (GFPGAN with `return_rgb=False`, CodeFormer with its fidelity weight `w` and `adain`)."""
    net = descriptor.model
    kind = descriptor.architecture.id
    if kind == "GFPGAN":
        out = net(face, return_rgb=False)[0]
    elif kind == "CodeFormer":
        out = net(face, w=float(codeformer_weight), adain=True)[0]
    else:
        out = net(face)[0]
    return out.clamp(-1.0, 1.0)


class FaceRestorerLibrary:
    """The restorers in the models folder, with the last loaded network kept for reuse (one at a time)."""

    def __init__(self, models_dir: Path, *, device: torch.device | str = "cpu"):
        self.models_dir = Path(models_dir)
        self._device = device
        """A device, or an object whose `resolve()` gives one when a model is first loaded."""
        self._lock = threading.Lock()
        self._cached: tuple[Path, float, object] | None = None

    @property
    def device(self) -> torch.device:
        device = self._device
        return torch.device(device.resolve() if hasattr(device, "resolve") else device)

    def entries(self) -> list[FaceRestorerEntry]:
        """Read from disk on every call: users copy files in while the app runs."""
        return find_face_restorers(self.models_dir)

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries()]

    def find(self, name: str) -> FaceRestorerEntry:
        entries = self.entries()
        for entry in entries:
            if entry.name.lower() == str(name).strip().lower():
                return entry
        installed = ", ".join(e.name for e in entries) or "none"
        raise FaceRestorerNotFoundError(
            f"face restorer {name!r} is not installed (installed: {installed}); {install_hint(str(name))}"
        )

    def model(self, entry: FaceRestorerEntry):
        """The loaded network of an entry, on the device (reused while the file is unchanged)."""
        mtime = entry.path.stat().st_mtime
        with self._lock:
            cached = self._cached
            if cached is not None and cached[0] == entry.path and cached[1] == mtime:
                cached[2].to(self.device)
                return cached[2]
            self._cached = None
            model = load_face_restorer_model(entry.path, entry.name, self.device)
            self._cached = (entry.path, mtime, model)
            return model

    def offload(self) -> None:
        """Move the kept network to the CPU (A1111's `face_restoration_unload`)."""
        with self._lock:
            if self._cached is not None:
                self._cached[2].to(torch.device("cpu"))

    def release(self) -> None:
        with self._lock:
            self._cached = None


__all__ = [
    "RESTORER_NAMES", "FaceRestorerEntry", "FaceRestorerLibrary", "FaceRestorerNotFoundError", "codeformer_supported",
    "find_face_restorers", "install_hint", "load_face_restorer_model", "run_restorer",
]
