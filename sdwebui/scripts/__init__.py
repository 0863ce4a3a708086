"""The scripts that ship with sdwebui (A1111's `scripts/` folder). Each is a `pipelines.scripts.Script`; the app
registers them in `app.py`, and anything that plugs in later (extensions) goes through the same registry.

| file | script | kind |
|---|---|---|
| `prompt_matrix.py` | Prompt matrix | selectable |
| `prompts_from_file.py` | Prompts from file or textbox | selectable |
| `loopback.py` | Loopback (img2img) | selectable, drives its job |
| `outpainting_mk2.py` | Outpainting mk2 (img2img) | selectable, drives its job |
| `poor_mans_outpainting.py` | Poor man's outpainting (img2img) | selectable, drives its job |
| `sd_upscale.py` | SD upscale (img2img) | selectable, drives its job |
| `xyz_grid.py` | X/Y/Z plot | selectable |
| `dynamic_prompts.py` | Dynamic Prompts (the sd-dynamic-prompts extension: wildcards, `{a|b}`) | always-on |
| `controlnet.py` | ControlNet (the sd-webui-controlnet extension's units and API) | always-on |
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sdwebui.pipelines.scripts import Script
from sdwebui.scripts.controlnet import ControlNet
from sdwebui.scripts.dynamic_prompts import DynamicPrompts
from sdwebui.scripts.loopback import Loopback
from sdwebui.scripts.outpainting_mk2 import OutpaintingMk2
from sdwebui.scripts.poor_mans_outpainting import PoorMansOutpainting
from sdwebui.scripts.prompt_matrix import PromptMatrix
from sdwebui.scripts.prompts_from_file import PromptsFromFile
from sdwebui.scripts.sd_upscale import SDUpscale
from sdwebui.scripts.xyz_grid import XYZPlot


def builtin_scripts(wildcards_dir: Path | None = None, controlnet_dirs: Sequence[Path] = ()) -> list[Script]:
    """The built-in scripts; `wildcards_dir`: where dynamic prompts finds `__name__` (None: nowhere);
    `controlnet_dirs`: the ControlNet models folders."""
    return [PromptMatrix(), PromptsFromFile(), XYZPlot(), Loopback(), OutpaintingMk2(), PoorMansOutpainting(), SDUpscale(),
            DynamicPrompts(wildcards_dir), ControlNet(controlnet_dirs)]


__all__ = ["builtin_scripts"]
