"""sd-webui-controlnet's HTTP routes (`scripts/api.py`, API version 3), with its paths and response shapes:

    GET  /controlnet/version       {"version": 3}
    GET  /controlnet/model_list    {"model_list": ["control_v11p_sd15_canny [d14c016b]", ...]}  (`update` accepted)
    GET  /controlnet/module_list   {"module_list": [...], "module_detail": {name: {"model_free", "sliders"}}}
                                   (`alias_names=true`: the UI labels)
    GET  /controlnet/control_types {"control_types": {"All" | tag: {"module_list", "model_list", "default_option",
                                   "default_model"}}}
    GET  /controlnet/settings      {"control_net_unit_count": 3}
    POST /controlnet/detect        {"controlnet_module", "controlnet_input_images": [b64], "controlnet_processor_res",
                                    "controlnet_threshold_a", "controlnet_threshold_b", "controlnet_masks"}
                                   -> {"info": "Success", "images": [b64 PNG]}; an unknown module is a 422 "Module
                                   not available", no image a 422 "No image selected", as the extension answers.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

from fastapi import APIRouter, Body, HTTPException
from fastapi.concurrency import run_in_threadpool

from sdwebui.models.controlnet_files import ControlNetLibrary
from sdwebui.pipelines.controlnet_units import (
    API_VERSION,
    UNIT_COUNT,
    WEIGHTS_DIR,
    control_types,
    find_preprocessor,
    module_detail,
    module_list,
)
from sdwebui.server.images import decode_base64_image

if TYPE_CHECKING:
    from sdwebui.server.services import Services


def build_router(services: "Services") -> APIRouter:
    router = APIRouter(tags=["ControlNet"])
    library = ControlNetLibrary(services.config.paths.controlnet_folders)

    @router.get("/controlnet/version")
    def version():
        return {"version": API_VERSION}

    @router.get("/controlnet/model_list")
    def model_list(update: bool = True):
        return {"model_list": library.titles()}

    @router.get("/controlnet/module_list")
    def modules(alias_names: bool = False):
        return {"module_list": module_list(alias_names), "module_detail": module_detail(alias_names)}

    @router.get("/controlnet/control_types")
    def types():
        return {"control_types": control_types(library.titles())}

    @router.get("/controlnet/settings")
    def settings():
        return {"control_net_unit_count": UNIT_COUNT}

    @router.post("/controlnet/detect")
    async def detect(
        controlnet_module: str = Body("none"),
        controlnet_input_images: list[str] = Body([]),
        controlnet_processor_res: int = Body(-1),
        controlnet_threshold_a: float = Body(-1),
        controlnet_threshold_b: float = Body(-1),
        controlnet_masks: list[str] = Body([]),
        low_vram: bool = Body(False),
    ):
        spec = find_preprocessor(controlnet_module)
        if spec is None:
            raise HTTPException(422, "Module not available")
        if not controlnet_input_images:
            raise HTTPException(422, "No image selected")
        images = [decode_base64_image(text, ("body", "controlnet_input_images", index))
                  for index, text in enumerate(controlnet_input_images)]
        masks = [decode_base64_image(text, ("body", "controlnet_masks", index))
                 for index, text in enumerate(controlnet_masks)]
        return await run_in_threadpool(_detect, spec.name, images, masks, controlnet_processor_res,
                                       controlnet_threshold_a, controlnet_threshold_b,
                                       services.config.paths.models_dir / WEIGHTS_DIR)

    return router


def _detect(module: str, images: list, masks: list, resolution: int, threshold_a: float, threshold_b: float,
            annotators=None) -> dict:
    from PIL import Image

    from sdwebui.pipelines.controlnet_preprocess import (  # OpenCV: loaded when a detection is asked
        PreprocessorError,
        as_array,
        run_preprocessor,
    )

    out = []
    for index, image in enumerate(images):
        source = as_array(image, masks[index] if index < len(masks) else None)
        try:
            detected = run_preprocessor(module, source, resolution, threshold_a, threshold_b, annotators=annotators)
        except PreprocessorError as error:
            raise HTTPException(422, str(error)) from None
        buffer = io.BytesIO()
        Image.fromarray(detected).save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return {"info": "Success", "images": out}


__all__ = ["build_router"]
