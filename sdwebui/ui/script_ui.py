"""The `pipelines.script_ui.ScriptUI` the tabs give a script that lays out its own controls (`build_ui`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdwebui.server.services import Services
from sdwebui.ui.fields import (
    checkpoint_choices,
    extras_upscaler_choices,
    sampler_choices,
    schedule_choices,
    style_names,
    upscaler_choices,
    vae_choices,
)
from sdwebui.ui.icons import icon_button


class TabScriptUI:
    def __init__(self, services: Services, tab: str, prefix: str):
        self.services = services
        self.tab = tab
        self.prefix = prefix
        self._catalogs: dict[str, Callable[[], list[str]]] = {
            "samplers": sampler_choices,
            "schedulers": schedule_choices,
            "checkpoints": lambda: sorted(checkpoint_choices(services)[0], key=str.casefold),
            "refiner_checkpoints": lambda: ["None", *sorted(checkpoint_choices(services)[0], key=str.casefold)],
            "vaes": lambda: vae_choices(services)[0],
            "hires_upscalers": lambda: upscaler_choices(services),
            "upscalers": lambda: extras_upscaler_choices(services),
            "styles": lambda: style_names(services),
        }

    def elem_id(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def icon_button(self, icon: str, label: str, name: str, **kwargs: Any):
        return icon_button(icon, label, self.elem_id(name), **kwargs)

    def choices(self, catalog: str) -> list[str]:
        return list(self._catalogs[catalog]())


__all__ = ["TabScriptUI"]
