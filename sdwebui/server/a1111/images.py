"""Images in, images out: `POST /sdapi/v1/png-info` (an image's infotext, parsed as A1111's reader does) and the
extras routes (`/extra-single-image`, `/extra-batch-images`: upscaling, queued like generation)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from sdwebui.core.errors import ParamError
from sdwebui.pipelines.infotext import parse_infotext
from sdwebui.pipelines.output import read_image_info
from sdwebui.server.a1111.progress import submit_and_wait
from sdwebui.server.a1111.schemas import PNGInfoRequest, PNGInfoResponse
from sdwebui.server.errors import FieldError
from sdwebui.server.extras import (
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    extras_params,
    html_info,
)
from sdwebui.server.images import decode_base64_image, encode_images
from sdwebui.server.queue import JobHandle
from sdwebui.server.service import ExtrasRequest
from sdwebui.server.services import Services


def build_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extras_single_image_api(req: ExtrasSingleImageRequest):
        def request():  # decoding and the first use of the upscaler modules (torch) stay off the event loop
            image = decode_base64_image(req.image, ("image",))
            return ExtrasRequest(extras_params(req), [(("image",), image)], client="a1111")

        job = await run_extras(services, await run_in_threadpool(request))
        info = job.result["infotexts"][0] if job.result and job.result["infotexts"] else ""
        images = await run_in_threadpool(encode_images, job.images)
        return {"image": images[0] if images else None, "html_info": html_info(info)}

    @router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extras_batch_images_api(req: ExtrasBatchImagesRequest):
        def request():
            decoded = [(("imageList", i, "data"), decode_base64_image(item.data, ("imageList", i, "data")))
                       for i, item in enumerate(req.imageList)]
            return ExtrasRequest(extras_params(req), decoded, names=[item.name for item in req.imageList],
                                 client="a1111")

        job = await run_extras(services, await run_in_threadpool(request))
        infotexts = job.result["infotexts"] if job.result else []
        images = await run_in_threadpool(encode_images, job.images)
        return {"images": images, "html_info": html_info(infotexts[0] if infotexts else "")}

    @router.post("/png-info", response_model=PNGInfoResponse)
    def pnginfoapi(req: PNGInfoRequest):
        image = decode_base64_image(req.image, ("image",))
        info, items = read_image_info(image)
        try:
            parameters = parse_infotext(info) if info else {}
        except Exception:  # noqa: BLE001 - an odd text is still returned as is
            parameters = {}
        return {"info": info, "items": items, "parameters": parameters}

    return router


async def run_extras(services: Services, request: ExtrasRequest) -> JobHandle:
    def submit() -> JobHandle:
        try:
            return services.generation.submit_extras(request)
        except ParamError as error:
            raise FieldError(error.loc, error.message) from None

    return await submit_and_wait(submit, "upscaling")


__all__ = ["build_router", "run_extras"]
