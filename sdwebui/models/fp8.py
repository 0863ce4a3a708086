"""FP8 weight storage: A1111's settings "FP8 weight" (`fp8_storage`: Disable / Enable for SDXL / Enable) and "Cache
FP16 weight for LoRA" (`cache_fp16_weight`).

As in A1111 (`sd_models.load_model_weights`), every `Linear` and `Conv2d` of the UNet and the text encoders keeps
its weight and bias in float8_e4m3fn (half of fp16's memory); the VAE is left as it is. Each layer computes in the
model's dtype: diffusers' layerwise casting (`diffusers.hooks.apply_layerwise_casting`) upcasts a layer just
before it runs and stores it back in fp8 after, so only one layer at a time is ever in the compute dtype.

LoRAs still apply: the patched weight is computed in float32 from the fp8 weight and stored back in fp8, as A1111
does. With "Cache FP16 weight for LoRA" a copy of each layer's original weights in the compute dtype is kept in
RAM when the model is converted, and LoRAs are computed from it (A1111's `fp16_weight`): more RAM, and the base
weight is not rounded twice.

The infotext says so as A1111 writes it (`FP8 weight: Enable, Cache FP16 weight for LoRA: False`, after `Model`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sdwebui.models.family import ModelFamily

FP8_MODES = ("Disable", "Enable for SDXL", "Enable")
STORAGE_DTYPE = torch.float8_e4m3fn


@dataclass
class Fp8Storage:
    """How a loaded model stores its weights in fp8 (kept on the model as `SDModel.fp8`)."""

    setting: str
    """The `fp8_storage` value that enabled it ("Enable" or "Enable for SDXL"), written to the infotext."""
    cache_fp16: bool
    originals: dict = field(default_factory=dict)
    """Parameter -> its weights before the fp8 cast, in the compute dtype, on the CPU (with `cache_fp16`)."""

    def lora_base(self, param: torch.nn.Parameter) -> torch.Tensor:
        """What a LoRA is added to: the cached original when there is one, else the (fp8) weight itself."""
        original = self.originals.get(param)
        return original if original is not None else param.detach()


def fp8_wanted(setting: str, family: ModelFamily) -> bool:
    if setting not in FP8_MODES:
        raise ValueError(f"fp8_storage must be one of {', '.join(FP8_MODES)}, got {setting!r}")
    return setting == "Enable" or setting == "Enable for SDXL" and family.spec.is_sdxl


def store_in_fp8(model, setting: str, *, cache_fp16: bool) -> Fp8Storage:
    """Convert `model`'s UNet and text encoders to fp8 storage (in place, before any memory-mode hooks go on)."""
    from diffusers.hooks import apply_layerwise_casting

    storage = Fp8Storage(setting, cache_fp16)
    encoders = [getattr(model.text_encoder, name, None) for name in ("clip_l", "clip_g", "clip_h")]
    for module in [model.unet, *(m for m in encoders if m is not None)]:
        if cache_fp16:
            for layer in module.modules():
                if isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
                    for param in (layer.weight, layer.bias):
                        if param is not None:
                            storage.originals[param] = param.detach().to("cpu", model.dtype, copy=True)
        # Token embeddings stay as they are (A1111 casts Linear and Conv2d only); norms are not cast either.
        apply_layerwise_casting(module, storage_dtype=STORAGE_DTYPE, compute_dtype=model.dtype,
                                skip_modules_pattern=(), skip_modules_classes=(torch.nn.Embedding,))
    model.fp8 = storage
    return storage


def fp8_infotext(model) -> dict[str, object]:
    """A1111's infotext entries for a model stored in fp8 (none otherwise)."""
    storage = getattr(model, "fp8", None)
    if storage is None:
        return {}
    return {"FP8 weight": storage.setting, "Cache FP16 weight for LoRA": storage.cache_fp16}


__all__ = ["FP8_MODES", "Fp8Storage", "fp8_wanted", "store_in_fp8", "fp8_infotext"]
