"""`GET /sdapi/v1/scripts` and `/script-info`: the registered scripts and their arguments, as A1111 lists them
(`name` is the title in lower case; `script-info` has one entry per script and tab), and `/extensions`."""

from __future__ import annotations

from fastapi import APIRouter

from sdwebui.pipelines.scripts import TABS
from sdwebui.server.a1111.schemas import ScriptInfo, ScriptsList
from sdwebui.server.services import Services


def build_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.get("/scripts", response_model=ScriptsList)
    def get_scripts_list():
        return {tab: [script.name for script in services.scripts.scripts(tab)] for tab in TABS}

    @router.get("/script-info", response_model=list[ScriptInfo])
    def get_script_info():
        return [script.info(tab) for tab in TABS for script in services.scripts.scripts(tab)]

    @router.get("/extensions")
    def get_extensions_list():
        loaded = getattr(services, "extensions", None)  # set by app.build_services
        return [item.a1111() for item in loaded.items] if loaded is not None else []

    return router


__all__ = ["build_router"]
