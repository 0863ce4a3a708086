"""A script's own controls: most scripts' controls are made from their declared arguments (`ScriptArg`), but one
whose controls work together (X/Y/Z's axis type picks what its values box offers; buttons swap axes and fill in
values) lays them out itself, as A1111's `Script.ui` does.

Such a script defines `build_ui(ui: ScriptUI) -> list` and imports Gradio inside it (the server never imports
Gradio; only the web UI calls this). It returns one input component per declared argument, in the arguments'
order: their values become the job's `script_args`, as the generated controls' would. The web UI passes the
`ScriptUI` below: element ids, the app's icon buttons, and the lists of what is installed.
"""

from __future__ import annotations

from typing import Any, Protocol


class ScriptUI(Protocol):
    tab: str
    """"txt2img" or "img2img"."""

    def elem_id(self, name: str) -> str:
        """A page-unique element id for the script's control `name` (`txt2img_script_x_y_z_plot_x_type`)."""
        ...

    def icon_button(self, icon: str, label: str, name: str, **kwargs: Any) -> Any:
        """One of the app's icon buttons (an SVG of `ui/icons/`, with `label` as its title), id `elem_id(name)`."""
        ...

    def choices(self, catalog: str) -> list[str]:
        """What the server has now, by name: "samplers", "schedulers", "checkpoints", "refiner_checkpoints"
        (with "None"), "vaes" (with "Automatic" and "None"), "hires_upscalers" (latent modes first), "upscalers"
        (Extras' list: None, Lanczos, Nearest and the models), "styles"."""
        ...


__all__ = ["ScriptUI"]
