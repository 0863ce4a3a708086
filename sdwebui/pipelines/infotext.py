"""Infotext: the `parameters` text A1111 writes into every image, and its parser.

Writer: A1111 `modules/processing.py` `create_infotext` (v1.10). Reader: `modules/infotext_utils.py`
`parse_generation_parameters`. The layout:

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>      (line left out when the negative prompt is empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, ...

`build_infotext` takes the parameters as a dict keyed by A1111's names; known keys are written in
`create_infotext`'s order, any other key (A1111's `extra_generation_params`: hires, LoRA hashes, script
parameters, ...) in the order given, then `Version` and `User`. `parse_infotext` returns A1111's dict: every
value a string, `Size` split into `Size-1`/`Size-2`, and the defaults A1111 fills in for missing keys.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

# A1111 create_infotext's fixed keys, in order. `**p.extra_generation_params` follows them (a key already
# listed keeps its place, which is how "Denoising strength" stays early), then Version and User.
LEADING_KEYS: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
)
TRAILING_KEYS: tuple[str, ...] = ("Version", "User")

SCHEDULE_SUFFIXES: tuple[str, ...] = (
    # A1111 modules/sd_schedulers.py labels, then names and aliases (get_sampler_and_scheduler tries all).
    "Automatic",
    "Uniform",
    "Karras",
    "Exponential",
    "Polyexponential",
    "SGM Uniform",
    "KL Optimal",
    "Align Your Steps",
    "Simple",
    "Normal",
    "DDIM",
    "Beta",
    "SGMUniform",
    "automatic",
    "uniform",
    "karras",
    "exponential",
    "polyexponential",
    "sgm_uniform",
    "kl_optimal",
    "align_your_steps",
    "simple",
    "normal",
    "ddim",
    "beta",
)
_SCHEDULE_LABELS = {
    "sgmuniform": "SGM Uniform",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "ddim": "DDIM",
}

RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
"""A1111 `re_param`: one `Key: value` pair of the parameters line."""
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
NEGATIVE_PREFIX = "Negative prompt:"


# -- writing -----------------------------------------------------------------------------------------


def quote(value: object) -> str:
    """A1111 `infotext_utils.quote`: JSON-quote a value that would break the `k: v, k: v` line.

    A1111 quotes on `,`, `:` and newlines; we also quote values containing `"`, which A1111's reader would
    otherwise misread when the value starts and ends with one (its reader accepts both forms).
    """
    text = format_value(value)
    if any(c in text for c in ',:\n"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_value(value: object) -> str:
    """How a value reads in the infotext: whole floats without a fraction ("CFG scale: 7"), the rest str()."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}x{value[1]}"  # (width, height) -> "WxH"
    return str(value)


def ordered_params(params: Mapping[str, object]) -> dict[str, object]:
    """The parameters in A1111's order, without the ones A1111 leaves out (None, `Clip skip` <= 1)."""
    kept = {k: v for k, v in params.items() if v is not None and not _left_out(k, v)}
    leading = [k for k in LEADING_KEYS if k in kept]
    trailing = [k for k in TRAILING_KEYS if k in kept]
    middle = [k for k in kept if k not in LEADING_KEYS and k not in TRAILING_KEYS]
    return {k: kept[k] for k in (*leading, *middle, *trailing)}


def _left_out(key: str, value: object) -> bool:
    if key == "Clip skip":
        try:
            return int(value) <= 1  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False
    return False


def build_params_line(params: Mapping[str, object]) -> str:
    """`Steps: 20, Sampler: ..., Version: ...` (a key whose value equals the key is written bare, as A1111)."""
    items = ordered_params(params)
    return ", ".join(k if format_value(v) == k else f"{k}: {quote(v)}" for k, v in items.items())


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """The full infotext, exactly as A1111's `create_infotext` lays it out."""
    negative = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{build_params_line(params)}".strip()


def add_params(infotext: str, extra: Mapping[str, object]) -> str:
    """`infotext` with `extra` entries (quoted as A1111 quotes them) added to its parameters line before the
    trailing `Version` / `User`, where A1111's `create_infotext` puts a script's `extra_generation_params`
    ("Script: X/Y/Z plot, X Type: Seed, X Values: ..."). The rest of the text is kept as it was written."""
    entries = ", ".join(k if format_value(v) == k else f"{k}: {quote(v)}" for k, v in extra.items() if v is not None)
    if not entries:
        return infotext
    head, _, line = infotext.rpartition("\n")
    if len(RE_PARAM.findall(line)) < 3:  # no parameters line (an empty infotext): the entries become one
        return f"{infotext}\n{entries}" if infotext else entries
    trailing = re.search(r"(?:^|, )(?:%s): " % "|".join(map(re.escape, TRAILING_KEYS)), line)
    if trailing is None:
        line = f"{line}, {entries}"
    else:
        start = trailing.start() + (2 if line[trailing.start()] == "," else 0)
        line = f"{line[:start]}{entries}, {line[start:]}"
    return f"{head}\n{line}" if head or infotext.startswith("\n") else line


# -- reading -----------------------------------------------------------------------------------------


def unquote(text: str) -> str:
    """A1111 `infotext_utils.unquote`."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_params_line(line: str) -> dict[str, str]:
    """`k: v, k: v` -> dict (values unquoted; `WxH` values split into `k-1`/`k-2`)."""
    res: dict[str, str] = {}
    for key, value in RE_PARAM.findall(line):
        if value[:1] == '"' and value[-1:] == '"':
            value = unquote(value)
        m = RE_IMAGESIZE.match(value) if isinstance(value, str) else None
        if m is not None:
            res[f"{key}-1"] = m.group(1)
            res[f"{key}-2"] = m.group(2)
        else:
            res[key] = value
    return res


def split_infotext(text: str) -> tuple[str, str, str]:
    """(prompt, negative prompt, parameters line) as A1111 splits them; the line is "" when there is none."""
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt = ""
    negative = ""
    done_with_prompt = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            done_with_prompt = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    return prompt, negative, last


COMFY_SAMPLERS = {
    "euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2", "dpm_2_ancestral": "DPM2 a",
    "lms": "LMS", "dpm_fast": "DPM fast", "dpm_adaptive": "DPM adaptive", "dpmpp_2s_ancestral": "DPM++ 2S a",
    "dpmpp_sde": "DPM++ SDE", "dpmpp_2m": "DPM++ 2M", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE", "ddim": "DDIM", "uni_pc": "UniPC", "uni_pc_bh2": "UniPC", "lcm": "LCM",
    "restart": "Restart",
}
"""ComfyUI's sampler names (which Fooocus writes) -> A1111's; a `_gpu` suffix (Fooocus) names the same one."""
COMFY_SCHEDULERS = {
    "normal": "Normal", "karras": "Karras", "exponential": "Exponential", "sgm_uniform": "SGM Uniform",
    "simple": "Simple", "ddim_uniform": "DDIM", "beta": "Beta", "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
}


def fooocus_to_infotext(text: str) -> str | None:
    """Fooocus's own metadata scheme (a JSON object in the `parameters` chunk, `fooocus_scheme: fooocus`) as
    an A1111 infotext; None when `text` is not that. Keys as Fooocus's `modules/meta_parser.py` writes them;
    its LoRAs (`lora_combined_N: "name : weight"`) become `<lora:name:weight>` tags, as A1111 would write them."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        data = json.loads(stripped)
    except ValueError:
        return None
    if not isinstance(data, dict) or "prompt" not in data:
        return None

    def given(key: str) -> str | None:
        value = data.get(key)
        return None if value in (None, "", "None") else str(value)

    prompt = given("prompt") or ""
    for key in sorted(k for k in data if k.startswith("lora_combined_")):
        name, _, weight = str(data[key]).partition(" : ")
        if given(key) and name:
            prompt += f" <lora:{re.sub(r'[.](safetensors|ckpt|pt)$', '', name.strip())}:{weight.strip() or 1}>"
    params: dict[str, object] = {}
    if given("steps"):
        params["Steps"] = given("steps")
    sampler = given("sampler")
    if sampler:
        params["Sampler"] = COMFY_SAMPLERS.get(sampler.removesuffix("_gpu"), sampler)
    scheduler = given("scheduler")
    if scheduler:
        params["Schedule type"] = COMFY_SCHEDULERS.get(scheduler, scheduler)
    if given("guidance_scale"):
        params["CFG scale"] = given("guidance_scale")
    if given("seed"):
        params["Seed"] = given("seed")
    size = re.findall(r"\d+", given("resolution") or "")
    if len(size) == 2:
        params["Size"] = f"{size[0]}x{size[1]}"
    if given("base_model_hash"):
        params["Model hash"] = given("base_model_hash")
    if given("base_model"):
        params["Model"] = re.sub(r"[.](safetensors|ckpt)$", "", given("base_model"))
    if given("refiner_model"):
        params["Refiner"] = re.sub(r"[.](safetensors|ckpt)$", "", given("refiner_model"))
        if given("refiner_switch"):
            params["Refiner switch at"] = given("refiner_switch")
    if given("version"):
        params["Version"] = given("version")
    return build_infotext(prompt.strip(), given("negative_prompt") or "", params)


def parse_infotext(text: str) -> dict[str, object]:
    """A1111 `parse_generation_parameters` (without styles extraction and the paste-skip option).

    Beyond A1111's dict: a legacy sampler name with a schedule suffix ("DPM++ 2M Karras") is split into
    `Sampler` and `Schedule type` here (A1111 does the same later, when pasting the values into the UI);
    Fooocus's JSON metadata is read too (`fooocus_to_infotext`).
    """
    text = fooocus_to_infotext(text) or text
    prompt, negative, last = split_infotext(text)
    res: dict[str, object] = {"Prompt": prompt, "Negative prompt": negative}
    res.update(parse_params_line(last))

    if "Clip skip" not in res:
        res["Clip skip"] = "1"
    hypernet = res.get("Hypernet")
    if hypernet is not None:
        res["Prompt"] = f"{res['Prompt']}<hypernet:{hypernet}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"] = 0
        res["Hires resize-2"] = 0
    res.setdefault("Hires sampler", "Use same sampler")
    res.setdefault("Hires schedule type", "Use same scheduler")
    res.setdefault("Hires checkpoint", "Use same checkpoint")
    res.setdefault("Hires prompt", "")
    res.setdefault("Hires negative prompt", "")
    res.setdefault("Mask mode", "Inpaint masked")
    res.setdefault("Masked content", "original")
    res.setdefault("Inpaint area", "Whole picture")
    res.setdefault("Masked area padding", 32)
    _restore_old_hires_fix_params(res)
    res.setdefault("RNG", "GPU")
    _split_legacy_sampler(res)
    res.setdefault("Schedule type", "Automatic")
    res.setdefault("Schedule max sigma", 0)
    res.setdefault("Schedule min sigma", 0)
    res.setdefault("Schedule rho", 0)
    res.setdefault("VAE Encoder", "Full")
    res.setdefault("VAE Decoder", "Full")
    res.setdefault("FP8 weight", "Disable")
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = True
    if "Emphasis" not in res and (_uses_emphasis(prompt) or _uses_emphasis(negative)):
        res["Emphasis"] = "Original"
    res.setdefault("refiner_switch_by_sample_steps", False)
    _backcompat(res)
    return res


def split_sampler_name(name: str) -> tuple[str, str | None]:
    """"DPM++ 2M Karras" -> ("DPM++ 2M", "Karras"); a name without a known schedule suffix -> (name, None)."""
    # Longest first, so "SGM Uniform" is not read as "Uniform" (A1111 tries them in table order).
    for suffix in sorted(SCHEDULE_SUFFIXES, key=len, reverse=True):
        if name.endswith(" " + suffix) and len(name) > len(suffix) + 1:
            label = _SCHEDULE_LABELS.get(suffix.lower(), suffix[:1].upper() + suffix[1:])
            return name[: -(len(suffix) + 1)], label
    return name, None


def _split_legacy_sampler(res: dict[str, object]) -> None:
    sampler = res.get("Sampler")
    if not isinstance(sampler, str):
        return
    base, schedule = split_sampler_name(sampler)
    if schedule is None:
        return
    res["Sampler"] = base
    if res.get("Schedule type") in (None, "Automatic"):
        res["Schedule type"] = schedule


def _restore_old_hires_fix_params(res: dict[str, object]) -> None:
    """A1111 `restore_old_hires_fix_params`: pre-1.0 hires fix wrote the first pass size, not the target."""
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    first_w, first_h = int(first_w), int(first_h)  # type: ignore[arg-type]
    width = int(res.get("Size-1", 512))  # type: ignore[arg-type]
    height = int(res.get("Size-2", 512))  # type: ignore[arg-type]
    if first_w == 0 or first_h == 0:
        # A1111 `old_hires_fix_first_pass_dimensions`: the 512x512-pixel-count size, rounded up to 64.
        scale = math.sqrt(512 * 512 / (width * height))
        first_w = math.ceil(scale * width / 64) * 64
        first_h = math.ceil(scale * height / 64) * 64
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def _backcompat(res: dict[str, object]) -> None:
    """A1111 `infotext_versions.backcompat`: options that reproduce images made by older A1111 versions."""
    version = _parse_version(res.get("Version"))
    if version is None:
        return
    from packaging.version import Version

    if version < Version("v1.6.0") and "[" in str(res.get("Prompt", "")):
        res["Old prompt editing timelines"] = True
    if version < Version("v1.6.0") and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if version < Version("v1.7.0-225"):
        res["Downcast alphas_cumprod"] = True
    if version < Version("v1.8.0") and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


def _parse_version(text: object):
    if not isinstance(text, str):
        return None
    from packaging.version import InvalidVersion, Version

    m = re.match(r"([^-]+-[^-]+)-.*", text)
    if m:
        text = m.group(1)
    try:
        return Version(text)
    except InvalidVersion:
        return None


# A1111 `prompt_parser.re_attention`; used only to tell whether a prompt uses emphasis (for the `Emphasis`
# default). The prompt language itself lives in `sdwebui.prompts`.
_RE_ATTENTION = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:", re.X)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def _uses_emphasis(text: str) -> bool:
    """Whether A1111's `parse_prompt_attention` would give any span a weight other than 1."""
    spans: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for span in spans[start:]:
            span[1] *= factor

    for m in _RE_ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            spans.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(spans))
        elif token == "[":
            square_brackets.append(len(spans))
        elif weight is not None and round_brackets:
            multiply(round_brackets.pop(), float(weight))
        elif token == ")" and round_brackets:
            multiply(round_brackets.pop(), 1.1)
        elif token == "]" and square_brackets:
            multiply(square_brackets.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(_RE_BREAK.split(token)):
                if i > 0:
                    spans.append(["BREAK", -1])
                spans.append([part, 1.0])
    for pos in round_brackets:
        multiply(pos, 1.1)
    for pos in square_brackets:
        multiply(pos, 1 / 1.1)
    return any(w != 1.0 for t, w in spans if not (t == "BREAK" and w == -1))
