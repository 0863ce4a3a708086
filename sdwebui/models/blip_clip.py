"""BLIP (captioner) and CLIP (ranker) for A1111's "Interrogate CLIP", read from local folders only.

BLIP, from `models/BLIP/` (A1111's folder):
- a transformers `BlipForConditionalGeneration` folder (`config.json` with `model_type: blip`, the weights, the
  tokenizer files: what `Salesforce/blip-image-captioning-base` holds), in `models/BLIP/` itself or a subfolder;
- A1111's own `model_base_caption_capfilt_large.pth` (Salesforce's original BLIP layout, `{"model": state_dict}`),
  read through the restricted loader and renamed to transformers' names as transformers'
  `convert_blip_original_pytorch_to_hf.py` does; the sizes come from the tensors' shapes (heads: hidden / 64, as
  ViT-B and BERT-base). Salesforce's BLIP took its tokenizer from the hub (`bert-base-uncased`), so that file needs
  BERT's `vocab.txt` beside it (or in `models/BLIP/bert-base-uncased/`); the error says so.

CLIP, from `models/CLIP/`: a transformers `CLIPModel` folder (`openai/clip-vit-large-patch14` for A1111's ViT-L/14),
in the folder itself or a subfolder; without tokenizer files the shipped CLIP tokenizer is used. OpenAI's `.pt`
files are TorchScript archives (code, not weights), which this server does not load.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sdwebui.models.files import ModelFileError, load_pickle, read_state_dict
from sdwebui.models.tokenizer import load_clip_tokenizer

BLIP_FOLDER = "BLIP"
CLIP_FOLDER = "CLIP"
BLIP_PROMPT = "a picture of "
"""Salesforce's `blip_decoder` prompt; the caption is what follows it."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


class InterrogateModelMissing(LookupError):
    """No model of a kind is installed; the message names the folder to put one in."""


@dataclass(frozen=True)
class ModelEntry:
    kind: str  # "transformers" (a folder) or "original" (Salesforce's BLIP .pth)
    path: Path


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _find_folder(root: Path, model_type: str) -> Path | None:
    if not root.is_dir():
        return None
    if _model_type(root) == model_type:
        return root
    return next((sub for sub in sorted(root.iterdir()) if sub.is_dir() and _model_type(sub) == model_type), None)


def find_blip(models_dir: Path) -> ModelEntry | None:
    """The BLIP captioner in `models/BLIP` (a transformers folder first, else the first original `.pth`)."""
    root = Path(models_dir) / BLIP_FOLDER
    folder = _find_folder(root, "blip")
    if folder is not None:
        return ModelEntry("transformers", folder)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in _WEIGHT_SUFFIXES)
        files.sort(key=lambda p: p.name != "model_base_caption_capfilt_large.pth")
        if files:
            return ModelEntry("original", files[0])
    return None


def find_clip(models_dir: Path) -> ModelEntry | None:
    folder = _find_folder(Path(models_dir) / CLIP_FOLDER, "clip")
    return ModelEntry("transformers", folder) if folder is not None else None


# ---- BLIP ----------------------------------------------------------------------------------------------------


class Blip:
    """A BLIP captioner and its tokenizer."""

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = int(model.config.vision_config.image_size)

    def to(self, device: torch.device) -> "Blip":
        self.model.to(device)
        return self

    @torch.no_grad()
    def caption(self, pixels: torch.Tensor, *, num_beams: int = 1, min_length: int = 24, max_length: int = 48) -> str:
        """Salesforce's `blip_decoder.generate(sample=False, ...)`: beam search after the prompt "a picture of ",
        repetition penalty 1.0, the prompt cut from the text."""
        device = next(self.model.parameters()).device
        ids = self.tokenizer(BLIP_PROMPT, return_tensors="pt").input_ids.to(device)
        out = self.model.generate(pixel_values=pixels.to(device, next(self.model.parameters()).dtype), input_ids=ids,
                                  num_beams=num_beams, min_length=min_length, max_length=max_length,
                                  repetition_penalty=1.0, do_sample=False)
        text = self.tokenizer.decode(out[0], skip_special_tokens=True)
        prompt = BLIP_PROMPT.strip()
        return text[len(prompt):].strip() if text.startswith(prompt) else text.strip()


def _blip_tokenizer(folder: Path, *, original: bool):
    from transformers import AutoTokenizer, BertTokenizer

    if not original:
        try:
            return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as error:  # noqa: BLE001 - transformers raises many kinds for a folder without tokenizer
            raise ModelFileError(folder, f"no usable tokenizer files in the BLIP folder ({error})") from None
    for candidate in (folder, folder / "bert-base-uncased"):
        vocab = candidate / "vocab.txt"
        if vocab.is_file():
            words = vocab.read_text(encoding="utf-8").split("\n")
            tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words) if w})
            break
    else:
        raise ModelFileError(folder, "Salesforce's BLIP .pth needs BERT's tokenizer: put bert-base-uncased's "
                                     f"vocab.txt in {folder} (or {folder / 'bert-base-uncased'}), or use a "
                                     "transformers BLIP folder (Salesforce/blip-image-captioning-base)")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


_RENAMES = (  # transformers' convert_blip_original_pytorch_to_hf.rename_key, in its order
    (r"^visual_encoder\.", "vision_model.encoder."), (r"\.blocks\.", ".layers."), (r"\.attn\.", ".self_attn."),
    (r"\.norm1\.", ".layer_norm1."), (r"\.norm2\.", ".layer_norm2."), (r"encoder\.norm\.", "post_layernorm."),
    (r"encoder\.patch_embed\.proj\.", "embeddings.patch_embedding."), (r"encoder\.pos_embed$", "embeddings.position_embedding"),
    (r"encoder\.cls_token$", "embeddings.class_embedding"), (r"self_attn\.proj\.", "self_attn.projection."),
)


def convert_original_blip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Salesforce BLIP names -> transformers' `BlipForConditionalGeneration` names (the text decoder's are the same)."""
    out = {}
    for key, value in state.items():
        if not key.startswith(("visual_encoder.", "text_decoder.")):
            continue  # the momentum encoders and ITM heads of other BLIP checkpoints
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def _original_blip_config(state: dict[str, torch.Tensor], tokenizer):
    from transformers import BlipConfig

    def count(prefix: str) -> int:
        found = {int(m[1]) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
        return max(found) + 1 if found else 0

    patch = state["vision_model.embeddings.patch_embedding.weight"]
    hidden, patch_size = int(patch.shape[0]), int(patch.shape[2])
    positions = int(state["vision_model.embeddings.position_embedding"].shape[1]) - 1
    vision = {"hidden_size": hidden, "patch_size": patch_size, "image_size": round(positions ** 0.5) * patch_size,
              "num_hidden_layers": count("vision_model.encoder.layers."), "num_attention_heads": max(1, hidden // 64),
              "intermediate_size": int(state["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0])}
    words = state["text_decoder.bert.embeddings.word_embeddings.weight"]
    text_hidden = int(words.shape[1])
    text = {"vocab_size": int(words.shape[0]), "hidden_size": text_hidden, "encoder_hidden_size": hidden,
            "num_hidden_layers": count("text_decoder.bert.encoder.layer."),
            "num_attention_heads": max(1, text_hidden // 64),
            "intermediate_size": int(state["text_decoder.bert.encoder.layer.0.intermediate.dense.weight"].shape[0]),
            "max_position_embeddings": int(state["text_decoder.bert.embeddings.position_embeddings.weight"].shape[0]),
            "bos_token_id": int(tokenizer.bos_token_id), "sep_token_id": int(tokenizer.sep_token_id),
            "pad_token_id": int(tokenizer.pad_token_id)}
    return BlipConfig(text_config=text, vision_config=vision)


def load_blip(entry: ModelEntry) -> Blip:
    """The captioner in `entry` on the CPU (float32); ModelFileError for a file or folder that is not one."""
    from transformers import BlipForConditionalGeneration

    if entry.kind == "transformers":
        try:
            model = BlipForConditionalGeneration.from_pretrained(str(entry.path), local_files_only=True,
                                                                 dtype=torch.float32)
        except Exception as error:  # noqa: BLE001 - a broken folder fails in many ways inside transformers
            raise ModelFileError(entry.path, f"not a loadable BLIP captioner folder ({error})") from None
        return Blip(model, _blip_tokenizer(entry.path, original=False))
    if entry.path.suffix.lower() == ".safetensors":
        raw = read_state_dict(entry.path)
    else:
        raw = load_pickle(entry.path)
        raw = raw.get("model", raw) if isinstance(raw, dict) else raw
    if not isinstance(raw, dict) or "visual_encoder.patch_embed.proj.weight" not in raw:
        raise ModelFileError(entry.path, "not a BLIP captioner (Salesforce's model_base_caption_capfilt_large.pth "
                                         "layout: no visual_encoder.patch_embed.proj.weight)")
    state = convert_original_blip({k: v for k, v in raw.items() if isinstance(v, torch.Tensor)})
    tokenizer = _blip_tokenizer(entry.path.parent, original=True)
    model = BlipForConditionalGeneration(_original_blip_config(state, tokenizer)).float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("text_decoder.cls.predictions.decoder.", "vision_model."
                                                       "embeddings.position_ids", "text_decoder.bert.embeddings.position_ids"))
               and not k.startswith(("text_encoder.", "vision_proj.", "text_proj."))]
    if missing or unexpected:
        raise ModelFileError(entry.path, f"not Salesforce's BLIP caption layout (missing {missing[:3]}, "
                                         f"unexpected {unexpected[:3]})")
    model.tie_weights()
    return Blip(model, tokenizer)


# ---- CLIP ----------------------------------------------------------------------------------------------------


class Clip:
    """A CLIP model and its tokenizer (for ranking text against an image)."""

    TEXT_BATCH = 256
    CACHED_LISTS = 16

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = int(model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self._lists: dict[tuple[str, ...], torch.Tensor] = {}
        """Text features of the lists ranked lately (on the CPU): the category lists are the same every call."""

    def to(self, device: torch.device) -> "Clip":
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (N x D)."""
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, next(self.model.parameters()).dtype))
        out = getattr(out, "pooler_output", out)
        return out / out.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N x D); each text truncated to the model's context as `clip.tokenize(...,
        truncate=True)`. Padded to the batch's longest text, not to 77 tokens: CLIP's causal mask keeps the padding
        from reaching the end-of-text token the embedding is read at, and the short lists encode ~8x faster."""
        batch = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        out = self.model.get_text_features(input_ids=batch.input_ids.to(self.device),
                                           attention_mask=batch.attention_mask.to(self.device))
        out = getattr(out, "pooler_output", out)
        return out / out.norm(dim=-1, keepdim=True)


    def list_features(self, texts) -> torch.Tensor:
        """`text_features` of a whole list, in batches, remembered for the next call with the same list."""
        key = tuple(texts)
        cached = self._lists.get(key)
        if cached is None:
            cached = torch.cat([self.text_features(list(key[i:i + self.TEXT_BATCH]))
                                for i in range(0, len(key), self.TEXT_BATCH)]).cpu()
            if len(self._lists) >= self.CACHED_LISTS:
                self._lists.pop(next(iter(self._lists)))
            self._lists[key] = cached
        return cached.to(self.device)


def load_clip(entry: ModelEntry) -> Clip:
    from transformers import CLIPModel, CLIPTokenizer

    try:
        model = CLIPModel.from_pretrained(str(entry.path), local_files_only=True, dtype=torch.float32)
    except Exception as error:  # noqa: BLE001 - a broken folder fails in many ways inside transformers
        raise ModelFileError(entry.path, f"not a loadable CLIPModel folder ({error})") from None
    has_tokenizer = any((entry.path / name).is_file() for name in ("tokenizer.json", "vocab.json"))
    tokenizer = (CLIPTokenizer.from_pretrained(str(entry.path), local_files_only=True) if has_tokenizer
                 else load_clip_tokenizer("clip_l"))
    return Clip(model, tokenizer)


__all__ = ["BLIP_FOLDER", "BLIP_PROMPT", "CLIP_FOLDER", "CLIP_MEAN", "CLIP_STD", "Blip", "Clip",
           "InterrogateModelMissing", "ModelEntry", "convert_original_blip", "find_blip", "find_clip", "load_blip",
           "load_clip"]
