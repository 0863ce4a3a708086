"""`GET/POST /sdapi/v1/options` and `GET /cmd-flags`: A1111's settings, with its names and defaults
(`server.options`), checked before anything is written; a new checkpoint is loaded in queue order."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Body

from sdwebui.server.errors import FieldError
from sdwebui.server.options import OptionError
from sdwebui.server.services import Services

log = logging.getLogger(__name__)

SECRET_FLAGS = ("api_auth", "api_auth_file", "gradio_auth", "gradio_auth_path", "tls_keyfile")


def build_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.get("/options")
    def get_config():
        return services.current_options()

    @router.post("/options")
    def set_config(req: dict[str, Any] = Body(...)):
        try:
            ignored = services.update_options(req, from_api=True)
        except OptionError as error:
            raise FieldError((error.key,), error.message) from None
        if ignored:
            log.info("ignored unknown options: %s", ", ".join(sorted(ignored)))

    @router.get("/cmd-flags")
    def get_cmd_flags():
        flags = dict(services.config.flags)
        for key in SECRET_FLAGS:
            if flags.get(key):
                flags[key] = "<redacted>"
        return flags

    return router


__all__ = ["build_router", "SECRET_FLAGS"]
