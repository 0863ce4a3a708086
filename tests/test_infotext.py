"""Infotext build/parse: A1111's exact layout, and the infotexts other UIs write."""

from __future__ import annotations

import json
import random

import pytest

from sdwebui.pipelines.infotext import (
    build_infotext,
    build_params_line,
    parse_infotext,
    quote,
    split_sampler_name,
)

A1111_REFERENCE = (
    "masterpiece, best quality, 1girl, (red hair:1.2), <lora:catStyle:0.8>\n"
    "Negative prompt: (worst quality:1.4), lowres, bad anatomy\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, "
    "VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0.7, Clip skip: 2, Hires upscale: 2, "
    "Hires steps: 10, Hires upscaler: Latent, Lora hashes: \"catStyle: 0123456789ab\", "
    "TI hashes: \"easynegative: c74b4e810b03\", Version: v1.10.1"
)

A1111_PARAMS: dict[str, object] = {
    "Steps": 20,
    "Sampler": "DPM++ 2M",
    "Schedule type": "Karras",
    "CFG scale": 7.0,
    "Seed": 1234567890,
    "Size": "512x768",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "VAE hash": "735e4c3a44",
    "VAE": "vae-ft-mse-840000-ema-pruned.safetensors",
    "Denoising strength": 0.7,
    "Clip skip": 2,
    "Hires upscale": 2.0,
    "Hires steps": 10,
    "Hires upscaler": "Latent",
    "Lora hashes": "catStyle: 0123456789ab",
    "TI hashes": "easynegative: c74b4e810b03",
    "Version": "v1.10.1",
}


def test_build_matches_a1111_reference_exactly():
    text = build_infotext(
        "masterpiece, best quality, 1girl, (red hair:1.2), <lora:catStyle:0.8>",
        "(worst quality:1.4), lowres, bad anatomy",
        A1111_PARAMS,
    )
    assert text == A1111_REFERENCE


def test_key_order_does_not_depend_on_input_order():
    """Known keys go in create_infotext's order; extras keep their own order between them and Version."""
    known = ["Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
             "VAE hash", "VAE", "Denoising strength", "Clip skip", "Version"]
    extras = ["Hires upscale", "Hires steps", "Hires upscaler", "Lora hashes", "TI hashes"]
    shuffled = known[:]
    random.Random(0).shuffle(shuffled)
    # Interleave shuffled known keys with the extras in their own order.
    keys = shuffled[:4] + extras[:2] + shuffled[4:9] + extras[2:] + shuffled[9:]
    params = {k: A1111_PARAMS[k] for k in keys}
    assert build_infotext(
        "masterpiece, best quality, 1girl, (red hair:1.2), <lora:catStyle:0.8>",
        "(worst quality:1.4), lowres, bad anatomy",
        params,
    ) == A1111_REFERENCE


def test_user_comes_after_version():
    line = build_params_line({"User": "alice", "Version": "v1", "Steps": 1, "My script": "x"})
    assert line == "Steps: 1, My script: x, Version: v1, User: alice"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (7.0, "7"),
        (7.5, "7.5"),
        (7, "7"),
        (0.7, "0.7"),
        (True, "True"),
        ((512, 768), "512x768"),
        ("plain", "plain"),
        ("a, b", '"a, b"'),
        ("key: v", '"key: v"'),
        ("two\nlines", '"two\\nlines"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("ünïcödé, 日本", '"ünïcödé, 日本"'),
    ],
)
def test_value_formatting_and_quoting(value, written):
    assert quote(value) == written


def test_none_dropped_clip_skip_only_above_one_and_bare_keys():
    line = build_params_line(
        {"Steps": 20, "Sampler": "Euler a", "Schedule type": "Automatic", "CFG scale": 7, "Seed": 1,
         "Size": (512, 512), "Clip skip": 1, "VAE": None, "Tiling": None, "Hires fix": "Hires fix"}
    )
    assert line == "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, Hires fix"
    assert "Clip skip: 2" in build_params_line({"Steps": 1, "Clip skip": 2})


def test_negative_prompt_line_omitted_when_empty():
    text = build_infotext("a cat", "", {"Steps": 20, "Seed": 1, "Size": "64x64"})
    assert text == "a cat\nSteps: 20, Seed: 1, Size: 64x64"
    # Empty prompt: A1111 strips the whole text, so the parameters line comes first.
    assert build_infotext("", "", {"Steps": 20, "Seed": 1, "Size": "64x64"}) == "Steps: 20, Seed: 1, Size: 64x64"


def _expected_strings(params: dict[str, object]) -> dict[str, str]:
    out = {}
    for k, v in params.items():
        s = {7.0: "7", 2.0: "2"}.get(v, str(v)) if isinstance(v, float) else str(v)
        if k == "Size":
            w, h = s.split("x")
            out["Size-1"], out["Size-2"] = w, h
        else:
            out[k] = s
    return out


def test_round_trip_build_parse():
    prompt = "line one, (emphasis:1.3)\nline two: with colon"
    neg = "bad hands,\nblurry"
    text = build_infotext(prompt, neg, A1111_PARAMS)
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == neg
    for k, v in _expected_strings(A1111_PARAMS).items():
        assert parsed[k] == v, k
    # ... and rebuilding from the parsed values gives the same text.
    rebuilt = {k: parsed[k] for k in A1111_PARAMS if k != "Size"}
    rebuilt["Size"] = f"{parsed['Size-1']}x{parsed['Size-2']}"
    assert build_infotext(parsed["Prompt"], parsed["Negative prompt"], rebuilt) == text


def test_round_trip_tricky_values():
    params = {
        "Steps": 30,
        "Sampler": "Euler",
        "CFG scale": 4.5,
        "Seed": 42,
        "Size": "1024x1024",
        "ADetailer prompt": 'a "smiling" face, detailed\nsecond line',
        "Script": "X/Y/Z plot",
        "Empty-ish": " ",
        "Version": "v1.10.1",
    }
    parsed = parse_infotext(build_infotext("p", "n", params))
    assert parsed["ADetailer prompt"] == 'a "smiling" face, detailed\nsecond line'
    assert parsed["Script"] == "X/Y/Z plot"
    assert parsed["CFG scale"] == "4.5"


def test_parse_a1111_reference():
    res = parse_infotext(A1111_REFERENCE)
    assert res["Prompt"] == "masterpiece, best quality, 1girl, (red hair:1.2), <lora:catStyle:0.8>"
    assert res["Negative prompt"] == "(worst quality:1.4), lowres, bad anatomy"
    assert res["Steps"] == "20" and res["Sampler"] == "DPM++ 2M" and res["Schedule type"] == "Karras"
    assert (res["Size-1"], res["Size-2"]) == ("512", "768")
    assert "Size" not in res
    assert res["Lora hashes"] == "catStyle: 0123456789ab"
    assert res["TI hashes"] == "easynegative: c74b4e810b03"
    assert res["Clip skip"] == "2"
    assert res["Hires upscale"] == "2" and res["Hires upscaler"] == "Latent"
    # Defaults A1111 fills in.
    assert res["RNG"] == "GPU"
    assert res["Hires sampler"] == "Use same sampler"
    assert res["Hires resize-1"] == 0 and res["Hires resize-2"] == 0
    assert res["Masked area padding"] == 32
    assert res["FP8 weight"] == "Disable" and "Cache FP16 weight for LoRA" not in res
    assert res["Emphasis"] == "Original"  # the prompt uses (x:1.2)
    assert "Downcast alphas_cumprod" not in res  # v1.10.1 is new enough


def test_parse_defaults_when_missing():
    res = parse_infotext("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512")
    assert res["Clip skip"] == "1"
    assert res["Schedule type"] == "Automatic"
    assert res["Negative prompt"] == ""
    assert "Emphasis" not in res  # no emphasis syntax in the prompt
    assert "Downcast alphas_cumprod" not in res  # no Version: no backcompat


def test_parse_legacy_sampler_with_schedule_suffix_and_old_version():
    text = (
        "portrait of a knight [armor:cloth:0.5]\n"
        "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x640, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.5.1"
    )
    res = parse_infotext(text)
    assert res["Sampler"] == "DPM++ 2M"
    assert res["Schedule type"] == "Karras"
    assert res["Old prompt editing timelines"] is True
    assert res["Downcast alphas_cumprod"] is True
    assert res["Emphasis"] == "Original"  # [..] is a weight of 1/1.1 to A1111's parser


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
        ("DPM++ 2M SDE Heun Karras", ("DPM++ 2M SDE Heun", "Karras")),
        ("DPM2 a Karras", ("DPM2 a", "Karras")),
        ("Euler SGM Uniform", ("Euler", "SGM Uniform")),
        ("Euler sgm_uniform", ("Euler", "SGM Uniform")),
        ("Euler Align Your Steps", ("Euler", "Align Your Steps")),
        ("DPM++ SDE karras", ("DPM++ SDE", "Karras")),
        ("Euler a", ("Euler a", None)),
        ("DDIM", ("DDIM", None)),
        ("DPM++ 2M SDE Heun", ("DPM++ 2M SDE Heun", None)),
        ("UniPC", ("UniPC", None)),
        ("Karras", ("Karras", None)),
    ],
)
def test_split_sampler_name(name, expected):
    assert split_sampler_name(name) == expected


def test_parse_legacy_does_not_override_explicit_schedule():
    res = parse_infotext("x\nSteps: 20, Sampler: DPM++ 2M Karras, Schedule type: Exponential, Seed: 1")
    assert res["Sampler"] == "DPM++ 2M" and res["Schedule type"] == "Exponential"


def test_parse_very_old_hires_first_pass():
    text = "a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 1024x1024, Model hash: 7460a6fa, Denoising strength: 0.7, First pass size: 0x0"
    res = parse_infotext(text)
    assert (res["Size-1"], res["Size-2"]) == (512, 512)
    assert (res["Hires resize-1"], res["Hires resize-2"]) == (1024, 1024)


def test_parse_multiline_prompt_without_negative():
    text = "first line\nsecond line, with comma\n\nthird after blank\nSteps: 20, Seed: 7, Size: 64x96"
    res = parse_infotext(text)
    assert res["Prompt"] == "first line\nsecond line, with comma\n\nthird after blank"
    assert res["Negative prompt"] == ""
    assert res["Seed"] == "7"


def test_parse_multiline_negative():
    text = "pos\nNegative prompt: neg one\nneg two\nSteps: 20, Seed: 7, Size: 64x96"
    res = parse_infotext(text)
    assert res["Prompt"] == "pos" and res["Negative prompt"] == "neg one\nneg two"


def test_parse_text_without_parameters_line():
    res = parse_infotext("just a prompt, nothing else: really")
    assert res["Prompt"] == "just a prompt, nothing else: really"
    assert "Steps" not in res and res["Clip skip"] == "1"


def test_parse_forge():
    text = (
        "a cozy cabin in the snowy woods, volumetric light\n"
        "Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, "
        "Seed: 2403571337, Size: 896x1152, Model hash: 275ef623d3, Model: flux1-dev-bnb-nf4-v2, "
        "Version: f2.0.1v1.10.1-previous-313-g8a042934, Diffusion in Low Bits: Automatic (fp16 LoRA), "
        "Module 1: ae, Module 2: clip_l, Module 3: t5xxl_fp8_e4m3fn"
    )
    res = parse_infotext(text)
    assert res["Prompt"] == "a cozy cabin in the snowy woods, volumetric light"
    assert res["Distilled CFG Scale"] == "3.5"
    assert res["Diffusion in Low Bits"] == "Automatic (fp16 LoRA)"
    assert res["Module 3"] == "t5xxl_fp8_e4m3fn"
    assert res["Version"] == "f2.0.1v1.10.1-previous-313-g8a042934"
    assert (res["Size-1"], res["Size-2"]) == ("896", "1152")
    assert "Downcast alphas_cumprod" not in res  # Forge's version string is not a parseable A1111 version


def test_parse_fooocus_a1111_scheme():
    text = (
        "a majestic lion, golden hour, cinematic\n"
        "Negative prompt: unrealistic, saturated, high contrast\n"
        "Steps: 30, Sampler: DPM++ 2M SDE Karras, Seed: 1234, Size: 1152x896, CFG scale: 4, Sharpness: 2, "
        "ADM Guidance: \"(1.5, 0.8, 0.3)\", Model: juggernautXL_v8Rundiffusion, Model hash: aeb7e9e689, "
        "Refiner: None, Lora hashes: \"sd_xl_offset_example-lora_1.0: 4852686128\", Performance: Speed, "
        "Styles: \"['Fooocus V2', 'Fooocus Enhance', 'Fooocus Sharp']\", Version: Fooocus v2.5.5, Created By: Fooocus"
    )
    res = parse_infotext(text)
    assert res["Sampler"] == "DPM++ 2M SDE" and res["Schedule type"] == "Karras"
    assert res["ADM Guidance"] == "(1.5, 0.8, 0.3)"
    assert res["Styles"] == "['Fooocus V2', 'Fooocus Enhance', 'Fooocus Sharp']"
    assert res["Created By"] == "Fooocus"
    assert res["Negative prompt"] == "unrealistic, saturated, high contrast"


def test_parse_sdnext():
    text = (
        "photo of a woman, detailed skin\n"
        "Negative prompt: ugly, deformed\n"
        "Steps: 20, Seed: 1620085323, Sampler: DPM++ 2M, CFG scale: 6, Size: 512x512, Parser: Full parser, "
        "Model: v1-5-pruned-emaonly, Model hash: 6ce0161689, Backend: Diffusers, App: SD.next, Version: 6e2b1a1, "
        "Operations: txt2img, Pipeline: StableDiffusionPipeline"
    )
    res = parse_infotext(text)
    assert res["Seed"] == "1620085323"
    assert res["Parser"] == "Full parser"
    assert res["App"] == "SD.next"
    assert res["Pipeline"] == "StableDiffusionPipeline"
    assert res["Schedule type"] == "Automatic"


def test_parse_hypernet_appended_to_prompt():
    res = parse_infotext("cat\nSteps: 20, Seed: 1, Size: 64x64, Hypernet: anime, Hypernet strength: 0.5")
    assert res["Prompt"] == "cat<hypernet:anime:0.5>"


def test_parse_fp8_adds_cache_default():
    res = parse_infotext("cat\nSteps: 20, Seed: 1, Size: 64x64, FP8 weight: Enable for SDXL")
    assert res["Cache FP16 weight for LoRA"] is True


def test_parse_escaped_emphasis_is_not_emphasis():
    res = parse_infotext("a \\(literal\\) bracket\nSteps: 20, Seed: 1, Size: 64x64")
    assert "Emphasis" not in res
    res = parse_infotext("a (literal:1.0) weight\nNegative prompt: ((bad))\nSteps: 20, Seed: 1, Size: 64x64")
    assert res["Emphasis"] == "Original"  # the negative prompt's ((bad))


def test_parse_windows_line_endings_and_surrounding_whitespace():
    text = "  a cat\r\nNegative prompt: dog\r\nSteps: 20, Seed: 3, Size: 64x64\n\n"
    res = parse_infotext(text)
    assert res["Prompt"] == "a cat" and res["Negative prompt"] == "dog" and res["Seed"] == "3"


def test_fooocus_json_metadata_is_read_as_an_infotext():
    """Fooocus's default metadata scheme: JSON in the `parameters` chunk, ComfyUI sampler names."""
    from sdwebui.pipelines.infotext import parse_infotext as parse

    fooocus = json.dumps({
        "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": "juggernautXL_v8Rundiffusion.safetensors",
        "base_model_hash": "aeb7e9e689", "guidance_scale": 4, "lora_combined_1": "sd_xl_offset_example-lora_1.0.safetensors : 0.1",
        "negative_prompt": "blurry", "performance": "Speed", "prompt": "a cat on a sofa", "refiner_model": "None",
        "resolution": "(1152, 896)", "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras", "seed": "12345",
        "sharpness": 2, "steps": 30, "styles": "['Fooocus V2']", "version": "Fooocus v2.5.5",
    })
    res = parse(fooocus)
    assert res["Prompt"] == "a cat on a sofa <lora:sd_xl_offset_example-lora_1.0:0.1>"
    assert res["Negative prompt"] == "blurry"
    assert (res["Sampler"], res["Schedule type"], res["Steps"], res["CFG scale"], res["Seed"]) == (
        "DPM++ 2M SDE", "Karras", "30", "4", "12345")
    assert (res["Size-1"], res["Size-2"]) == ("1152", "896")
    assert res["Model"] == "juggernautXL_v8Rundiffusion" and res["Model hash"] == "aeb7e9e689"
    assert "Refiner" not in res
    # Text that merely starts with a brace is still an ordinary prompt.
    assert parse("{not json} a cat\nSteps: 5, Seed: 1, Size: 64x64")["Prompt"] == "{not json} a cat"
