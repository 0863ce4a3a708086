"""The scripts that ship with sdwebui (A1111's `scripts/` folder). Each is a `pipelines.scripts.Script`; the app
registers them in `app.py`, and anything that plugs in later (extensions) goes through the same registry.

| file | script | kind |
|---|---|---|
| `prompt_matrix.py` | Prompt matrix | selectable |
| `prompts_from_file.py` | Prompts from file or textbox | selectable |
| `xyz_grid.py` | X/Y/Z plot | selectable |
"""

from __future__ import annotations

from sdwebui.pipelines.scripts import Script
from sdwebui.scripts.prompt_matrix import PromptMatrix
from sdwebui.scripts.prompts_from_file import PromptsFromFile
from sdwebui.scripts.xyz_grid import XYZPlot


def builtin_scripts() -> list[Script]:
    return [PromptMatrix(), PromptsFromFile(), XYZPlot()]


__all__ = ["builtin_scripts"]
