"""A1111's "Interrogate CLIP" (BLIP caption + CLIP ranking of the category lists) and "Interrogate DeepBooru" with
tiny random-weight models written in the layouts users have (a transformers BLIP folder, Salesforce's original BLIP
`.pth`, a transformers CLIPModel folder, A1111's DeepDanbooru `.pt`), loaded through the real path behind
`POST /sdapi/v1/interrogate`. Expected captions and matches are computed independently with transformers' own
processors and models."""

from __future__ import annotations

import base64
import io
import re

import pytest
import torch
from PIL import Image

from sdwebui.models.blip_clip import BLIP_PROMPT, find_blip, load_blip
from sdwebui.models.deepdanbooru import DeepDanbooruModel, load_deepdanbooru
from sdwebui.models.files import ModelFileError
from sdwebui.pipelines.clip_interrogator import CATEGORIES_DIR, category_names, load_categories

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "picture", "of", "cat", "dog", "red", "blue", "sky",
         "house", "on", "the", "with", "tree", "big", "small"]


def tiny_blip(heads: int = 1):
    from transformers import BlipConfig, BlipForConditionalGeneration

    torch.manual_seed(1)
    vocab = len(WORDS)
    config = BlipConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=heads,
                           image_size=32, patch_size=16),
        text_config=dict(vocab_size=vocab + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=heads, max_position_embeddings=64, bos_token_id=vocab, sep_token_id=3,
                         pad_token_id=0, encoder_hidden_size=32),
    )
    return BlipForConditionalGeneration(config).eval()


def blip_tokenizer():
    from transformers import BertTokenizer

    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


def write_blip_folder(folder):
    model = tiny_blip()
    model.save_pretrained(folder)
    blip_tokenizer().save_pretrained(folder)
    return model


def to_original_blip(state: dict) -> dict:
    """transformers' BLIP names back to Salesforce's (the inverse of transformers' conversion script)."""
    out = {}
    for key, value in state.items():
        if key.startswith("vision_model."):
            key = (key.replace("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj.")
                   .replace("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed")
                   .replace("vision_model.embeddings.class_embedding", "visual_encoder.cls_token")
                   .replace("vision_model.post_layernorm.", "visual_encoder.norm.")
                   .replace("vision_model.encoder.layers.", "visual_encoder.blocks.")
                   .replace(".self_attn.projection.", ".attn.proj.").replace(".self_attn.", ".attn.")
                   .replace(".layer_norm1.", ".norm1.").replace(".layer_norm2.", ".norm2."))
        out[key] = value
    return out


def write_clip_folder(folder):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(2)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)  # no tokenizer files: the shipped CLIP tokenizer is used
    return model


DDB_TAGS = ["1girl", "rating:safe", "smile_(happy)", "no_tag", "blue_sky"]


def write_deepdanbooru(path):
    """A DeepDanbooru network at width 8 saved as A1111's file is (a state dict with the tag list under "tags").
    The head makes "1girl", "rating:safe" and "smile_(happy)" certain and "no_tag" impossible; "blue_sky" follows
    the network."""
    torch.manual_seed(3)
    model = DeepDanbooruModel(num_tags=len(DDB_TAGS), width=8)
    with torch.no_grad():
        head = model.n_Conv_178.weight
        head.zero_()
        head[[0, 1, 2]] = 50.0
        head[3] = -50.0
        head[4] = torch.randn_like(head[4])
    state = dict(model.state_dict())
    state["tags"] = DDB_TAGS
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return model


def _b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def photo() -> Image.Image:
    """A small picture with some structure (random weights need something to tell images apart)."""
    gen = torch.Generator().manual_seed(4)
    pixels = (torch.rand(48, 40, 3, generator=gen) * 255).to(torch.uint8).numpy()
    return Image.fromarray(pixels)


def expected_caption(model, tokenizer, image, *, num_beams=1, min_length=24, max_length=48) -> str:
    """Salesforce's `blip_decoder.generate` with transformers' own BLIP image processor."""
    from transformers import BlipImageProcessor

    pixels = BlipImageProcessor(size={"height": 32, "width": 32})(image.convert("RGB"), return_tensors="pt")
    ids = tokenizer(BLIP_PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(pixel_values=pixels.pixel_values, input_ids=ids, num_beams=num_beams,
                             min_length=min_length, max_length=max_length)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert text.startswith("a picture of")
    return text[len("a picture of"):].strip()


def expected_matches(model, image, categories) -> list[str]:
    """Each category's entry with the highest cosine similarity to the image, from transformers' CLIP image
    processor and CLIPModel's features (the softmax A1111 ranks by keeps the order of the similarities)."""
    from transformers import CLIPImageProcessor

    from sdwebui.models.tokenizer import load_clip_tokenizer

    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tokenizer = load_clip_tokenizer("clip_l")
    with torch.no_grad():
        image_features = model.get_image_features(**processor(image.convert("RGB"), return_tensors="pt"))
        image_features = getattr(image_features, "pooler_output", image_features)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        out = []
        for category in categories:
            batch = tokenizer(list(category.items), padding="max_length", max_length=77, truncation=True,
                              return_tensors="pt")
            text = model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            text = getattr(text, "pooler_output", text)
            text = text / text.norm(dim=-1, keepdim=True)
            out.append(category.items[int((image_features @ text.T)[0].argmax())])
    return out


def test_the_shipped_category_lists():
    assert category_names() == ["artists", "flavors", "mediums", "movements"]
    categories = load_categories()
    assert all(c.topn == 1 and len(c.items) >= 40 and len(set(c.items)) == len(c.items) for c in categories)
    assert [c.name for c in load_categories(skip=["artists", "flavors"])] == ["mediums", "movements"]
    assert CATEGORIES_DIR.is_dir()


def test_categories_with_top_n_and_skips(tmp_path):
    (tmp_path / "flavors.top3.txt").write_text("x\ny\n\nz\nw\n")
    (tmp_path / "mediums.txt").write_text("oil\n")
    categories = load_categories(tmp_path)
    assert [(c.name, c.topn, c.items) for c in categories] == [("flavors.top3", 3, ("x", "y", "z", "w")),
                                                               ("mediums", 1, ("oil",))]


def test_original_blip_pth_loads_as_the_transformers_folder_does(tmp_path):
    """Salesforce's layout ({"model": state dict}, A1111's model_base_caption_capfilt_large.pth) through the
    restricted loader and the key conversion gives the same captioner."""
    folder = tmp_path / "models" / "BLIP"
    folder.mkdir(parents=True)
    model = tiny_blip()
    torch.save({"model": to_original_blip(model.state_dict())}, folder / "model_base_caption_capfilt_large.pth")
    entry = find_blip(tmp_path / "models")
    assert entry.kind == "original"
    with pytest.raises(ModelFileError, match="vocab.txt"):
        load_blip(entry)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    blip = load_blip(entry)
    for key, value in model.state_dict().items():
        assert torch.equal(blip.model.state_dict()[key], value), key
    image = photo()
    from sdwebui.pipelines.clip_interrogator import ClipOptions, blip_caption

    short = ClipOptions(min_length=4, max_length=12)
    assert blip_caption(blip, image, short) == expected_caption(model, blip_tokenizer(), image, min_length=4,
                                                                max_length=12)


def test_a_file_that_is_not_blip_is_refused(tmp_path):
    folder = tmp_path / "models" / "BLIP"
    folder.mkdir(parents=True)
    torch.save({"model": {"weight": torch.zeros(2)}}, folder / "other.pth")
    with pytest.raises(ModelFileError, match="not a BLIP captioner"):
        load_blip(find_blip(tmp_path / "models"))


def test_deepdanbooru_file_loads_with_its_tags(tmp_path):
    path = tmp_path / "model-resnet_custom_v3.pt"
    model = write_deepdanbooru(path)
    loaded = load_deepdanbooru(path)
    assert loaded.tags == DDB_TAGS
    x = torch.rand(1, 128, 128, 3)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
    torch.save({"n_Conv_0.weight": torch.zeros(8, 3, 7, 7)}, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="tag list"):
        load_deepdanbooru(tmp_path / "broken.pt")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    from test_api_support import LiveServer, make_data_dir

    root = make_data_dir(tmp_path_factory.mktemp("interrogate-clip-data"), tiny_sd1_path)
    models = root / "models"
    blip = write_blip_folder(models / "BLIP" / "blip-image-captioning-base")
    clip = write_clip_folder(models / "CLIP" / "clip-vit-large-patch14")
    write_deepdanbooru(models / "torch_deepdanbooru" / "model-resnet_custom_v3.pt")
    with LiveServer(root) as live:
        live.tiny = {"blip": blip, "clip": clip}
        yield live


def test_api_interrogate_clip(server):
    image = photo()
    caption = expected_caption(server.tiny["blip"], blip_tokenizer(), image)
    matches = expected_matches(server.tiny["clip"], image, load_categories())
    with server.client() as client:
        r = client.post("/sdapi/v1/interrogate", json={"image": _b64png(image), "model": "clip"})
        assert r.status_code == 200, r.text
        assert r.json()["caption"] == ", ".join([caption, *matches])
        again = client.post("/sdapi/v1/interrogate", json={"image": _b64png(image), "model": "clip"})
        assert again.json() == r.json()  # the lists' text features come from the cache the second time
        # A1111's settings: skipped categories, a dict limit, ranks, BLIP's lengths
        assert client.post("/sdapi/v1/options", json={
            "interrogate_clip_skip_categories": ["artists", "flavors"], "interrogate_clip_dict_limit": 3,
            "interrogate_return_ranks": True, "interrogate_clip_min_length": 5,
            "interrogate_clip_max_length": 9}).status_code == 200
        try:
            r = client.post("/sdapi/v1/interrogate", json={"image": _b64png(image), "model": "clip"})
        finally:
            client.post("/sdapi/v1/options", json={
                "interrogate_clip_skip_categories": [], "interrogate_clip_dict_limit": 1500,
                "interrogate_return_ranks": False, "interrogate_clip_min_length": 24,
                "interrogate_clip_max_length": 48})
    short = expected_caption(server.tiny["blip"], blip_tokenizer(), image, min_length=5, max_length=9)
    limited = [c for c in load_categories() if c.name in ("mediums", "movements")]
    limited = [type(c)(c.name, c.topn, c.items[:3]) for c in limited]
    text = r.json()["caption"]
    assert text.startswith(short + ", (")
    ranked = re.findall(r"\(([^():]+):(\d\.\d{3})\)", text[len(short):])
    assert [m for m, _ in ranked] == expected_matches(server.tiny["clip"], image, limited)
    assert all(1 / 3 <= float(p) <= 1 for _, p in ranked)  # the best of three by softmax


def test_api_interrogate_deepdanbooru(server):
    with server.client() as client:
        r = client.post("/sdapi/v1/interrogate", json={"image": _b64png(photo()), "model": "deepdanbooru"})
        assert r.status_code == 200, r.text
        tags = r.json()["caption"].split(", ")
        assert {"1girl", "smile \\(happy\\)"} <= set(tags) and "no tag" not in tags and "rating:safe" not in tags
        assert tags == sorted(tags)
        assert client.post("/sdapi/v1/options", json={"deepbooru_use_spaces": False, "deepbooru_escape": False,
                                                        "deepbooru_filter_tags": "1girl",
                                                        "interrogate_deepbooru_score_threshold": 0.999}).status_code == 200
        try:
            r = client.post("/sdapi/v1/interrogate", json={"image": _b64png(photo()), "model": "deepdanbooru"})
        finally:
            client.post("/sdapi/v1/options", json={"deepbooru_use_spaces": True, "deepbooru_escape": True,
                                                    "deepbooru_filter_tags": "",
                                                    "interrogate_deepbooru_score_threshold": 0.5})
        assert r.json()["caption"] == "smile_(happy)"


def test_the_img2img_tabs_interrogate_buttons(server):
    from sdwebui.ui.img2img import interrogated_prompt

    image = photo().convert("RGBA")
    caption = interrogated_prompt(server.services, {"mode": "img2img", "init_image": image}, "old", model="clip")
    assert caption.startswith(expected_caption(server.tiny["blip"], blip_tokenizer(), photo()) + ", ")
    tags = interrogated_prompt(server.services, {"mode": "img2img", "init_image": image}, "old",
                               model="deepdanbooru")
    assert "1girl" in tags.split(", ")


def test_png_info_captions_an_image_for_txt2img(server, tmp_path):
    from sdwebui.ui.fields import UIError
    from sdwebui.ui.pnginfo import caption_file

    path = tmp_path / "photo.png"
    photo().save(path)
    caption = caption_file(server.services, str(path), "clip")
    assert caption.startswith(expected_caption(server.tiny["blip"], blip_tokenizer(), photo()) + ", ")
    assert "1girl" in caption_file(server.services, str(path), "deepdanbooru").split(", ")
    with pytest.raises(UIError, match="models/interrogators"):
        caption_file(server.services, str(path), "wd14")  # no WD14 tagger installed here
    with pytest.raises(UIError, match="drop an image"):
        caption_file(server.services, None, "clip")


def test_caption_a_folder_with_blip_and_deepdanbooru(tmp_path, capsys):
    from sdwebui.cli import main

    models = tmp_path / "models"
    blip = write_blip_folder(models / "BLIP" / "blip")
    write_deepdanbooru(models / "torch_deepdanbooru" / "model-resnet_custom_v3.pt")
    pictures = tmp_path / "dataset"
    pictures.mkdir()
    photo().save(pictures / "one.png")
    assert main(["caption", str(pictures), "--tagger", "blip", "--data-dir", str(tmp_path)]) == 0
    assert (pictures / "one.txt").read_text() == expected_caption(blip, blip_tokenizer(), photo()) + "\n"
    assert main(["caption", str(pictures), "--tagger", "deepdanbooru", "--overwrite", "--keep-underscores",
                 "--no-escape", "--data-dir", str(tmp_path)]) == 0
    assert {"1girl", "smile_(happy)"} <= set((pictures / "one.txt").read_text().strip().split(", "))
    capsys.readouterr()
    assert main(["caption", str(pictures), "--tagger", "clip", "--overwrite", "--data-dir", str(tmp_path)]) == 2
    assert "models/CLIP/" in capsys.readouterr().err


def test_extras_batch_from_directory(server, tmp_path):
    """The Extras tab's "Batch from Directory" (issue 20's Extras folder mode): every image of the folder, upscaled
    and saved to the Extras outputs."""
    from sdwebui.ui.extras import submit_extras
    from sdwebui.ui.fields import UIError

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (16, 8), (200, 10, 10)).save(folder / "first.png")
    Image.new("RGB", (8, 8), (10, 10, 200)).save(folder / "second.jpg")
    (folder / "notes.txt").write_text("not an image")
    values = {"mode": "batch_from_directory", "batch_input_dir": str(folder), "resize_mode": 0, "upscaling_resize": 2,
              "upscaling_resize_w": 512, "upscaling_resize_h": 512, "upscaling_crop": True,
              "upscaler_1": "Lanczos", "upscaler_2": "None", "extras_upscaler_2_visibility": 0}
    job = submit_extras(server.services, None, values)
    assert job.finished.wait(60) and job.status == "done", job.error
    assert [im.size for im in job.images] == [(32, 16), (16, 16)]
    saved = [p for p in server.services.paths.outputs_dir.rglob("*.png") if "extras" in str(p)]
    assert sorted(Image.open(p).size for p in saved) == [(16, 16), (32, 16)]
    with pytest.raises(UIError, match="^input directory: "):
        submit_extras(server.services, None, {**values, "batch_input_dir": str(tmp_path / "missing")})


def test_loopback_appends_deepbooru_tags_over_the_api(server):
    """Loopback's "Append interrogated prompt at each iteration": DeepBooru's tags of each iteration's image after
    the job's prompt."""
    import json

    body = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "cfg_scale": 1,
            "seed": 3, "denoising_strength": 0.5, "init_images": [_b64png(photo().resize((64, 64)))],
            "script_name": "Loopback", "script_args": [2, 0.3, "Linear", "DeepBooru"]}
    with server.client() as client:
        r = client.post("/sdapi/v1/img2img", json=body, timeout=300)
    assert r.status_code == 200, r.text
    infotexts = json.loads(r.json()["info"])["infotexts"]
    prompts = [text.split("\n")[0] for text in infotexts]
    assert len(prompts) >= 2 and all(p.startswith("a cat, ") and "1girl" in p.split(", ") for p in prompts), prompts


def test_skip_categories_is_a_list_setting(server):
    """A1111's `interrogate_clip_skip_categories` is a list of names (a CheckboxGroup in its Settings)."""
    from sdwebui.ui.settings import apply_settings

    with server.client() as client:
        bad = client.post("/sdapi/v1/options", json={"interrogate_clip_skip_categories": "artists"})
        assert bad.status_code == 422 and "interrogate_clip_skip_categories" in bad.text
        assert client.get("/sdapi/v1/options").json()["interrogate_clip_skip_categories"] == []
    try:
        # the Settings tab sends every control: the default (a tuple) and the box's [] are no change, and so is
        # the list the setting holds once it was set
        assert apply_settings(server.services, {"interrogate_clip_skip_categories": []}) == "Nothing to change."
        assert apply_settings(server.services, {"interrogate_clip_skip_categories": ["artists"]}) == \
            "1 setting changed: CLIP: skip inquire categories."
        assert server.services.options.get("interrogate_clip_skip_categories") == ["artists"]
        assert apply_settings(server.services, {"interrogate_clip_skip_categories": ["artists"]}) == \
            "Nothing to change."
    finally:
        with server.client() as client:
            client.post("/sdapi/v1/options", json={"interrogate_clip_skip_categories": []})
