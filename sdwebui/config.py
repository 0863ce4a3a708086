"""Where things live: A1111's folder layout, with A1111's flag names for overriding it.

`--data-dir` is the root (default: the current directory, which `webui.sh` sets to the checkout, as A1111
does); `--models-dir` defaults to `<data-dir>/models`; each model kind has its own folder below it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "demo" / "sdwebui-demo-shapes-v1.safetensors"
"""The built-in demo model (used when the checkpoints folder is empty; see `sdwebui/demo/MODEL_CARD.md`)."""

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""torch.compile's modes `--compile-mode` takes (`models.fast_paths`)."""

UPSCALER_FAMILIES = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")
"""Model-upscaler folders below `models/`, named as A1111 names them (each has an `--<name>-models-path` flag)."""


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    models_dir: Path
    ckpt_dir: Path
    vae_dir: Path
    lora_dir: Path
    embeddings_dir: Path
    outputs_dir: Path
    styles_files: tuple[Path, ...] = ()
    """A1111's `--styles-file` (repeatable, wildcards allowed); `from_flags` defaults it to
    `<data-dir>/styles.csv`, as A1111."""
    upscaler_dirs: tuple[tuple[str, Path], ...] = ()
    """(family, folder) for the model upscalers, in A1111's order: ESRGAN, RealESRGAN, SwinIR, DAT, HAT
    (`<models-dir>/ESRGAN` etc.; flags `--esrgan-models-path` etc.). Empty: the defaults below `models_dir`."""
    wildcards_dir: Path | None = None
    """Dynamic prompts' wildcard files (`__name__` -> `name.txt`; flag `--wildcards-dir`); None: `wildcards`
    below the data dir (`wildcards_folder`)."""
    controlnet_dir: Path | None = None
    """sd-webui-controlnet's `--controlnet-dir`: a ControlNet models folder besides `<models-dir>/ControlNet`."""

    @classmethod
    def from_flags(
        cls,
        data_dir: str | Path | None = None,
        models_dir: str | Path | None = None,
        ckpt_dir: str | Path | None = None,
        vae_dir: str | Path | None = None,
        lora_dir: str | Path | None = None,
        embeddings_dir: str | Path | None = None,
        outputs_dir: str | Path | None = None,
        styles_file: str | Path | Sequence[str | Path] | None = None,
        upscaler_dirs: dict[str, str | Path | None] | None = None,
        wildcards_dir: str | Path | None = None,
        controlnet_dir: str | Path | None = None,
    ) -> "Paths":
        data = Path(data_dir or ".").expanduser().resolve()
        models = Path(models_dir).expanduser().resolve() if models_dir else data / "models"

        def pick(value, default: Path) -> Path:
            return Path(value).expanduser().resolve() if value else default

        return cls(
            data_dir=data,
            models_dir=models,
            ckpt_dir=pick(ckpt_dir, models / "Stable-diffusion"),
            vae_dir=pick(vae_dir, models / "VAE"),
            lora_dir=pick(lora_dir, models / "Lora"),
            embeddings_dir=pick(embeddings_dir, data / "embeddings"),
            outputs_dir=pick(outputs_dir, data / "outputs"),
            styles_files=tuple(_expand(f) for f in _as_list(styles_file)) or (data / "styles.csv",),
            upscaler_dirs=tuple(
                (family, pick((upscaler_dirs or {}).get(family), models / family)) for family in UPSCALER_FAMILIES
            ),
            wildcards_dir=pick(wildcards_dir, data / "wildcards"),
            controlnet_dir=pick(controlnet_dir, None) if controlnet_dir else None,
        )

    @property
    def upscaler_folders(self) -> tuple[tuple[str, Path], ...]:
        """(family, folder) of each model-upscaler family (A1111's `models/ESRGAN`, `models/RealESRGAN`, ...)."""
        given = dict(self.upscaler_dirs)
        return tuple((family, given.get(family, self.models_dir / family)) for family in UPSCALER_FAMILIES)

    @property
    def wildcards_folder(self) -> Path:
        """Where dynamic prompts' `__name__` finds `name.txt` (`--wildcards-dir`, default `<data-dir>/wildcards`)."""
        return self.wildcards_dir if self.wildcards_dir is not None else self.data_dir / "wildcards"

    @property
    def controlnet_folders(self) -> tuple[Path, ...]:
        """Where ControlNet models are found: `<models-dir>/ControlNet`, then `--controlnet-dir` (the extension's
        order; a name in the first wins)."""
        folders = [self.models_dir / "ControlNet"]
        if self.controlnet_dir is not None and self.controlnet_dir not in folders:
            folders.append(self.controlnet_dir)
        return tuple(folders)

    @property
    def cache_dir(self) -> Path:
        """Hash cache and other derived data (A1111 keeps `cache.json` in the data dir)."""
        return self.data_dir / "cache"


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [value]
    return list(value)


def _expand(value: str | Path) -> Path:
    # Not resolve(): a wildcard pattern is not a path yet; absolute() keeps it meaning the same after a chdir.
    return Path(value).expanduser().absolute()
