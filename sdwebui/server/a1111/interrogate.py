"""`POST /sdapi/v1/interrogate` (A1111's `InterrogateRequest` {image, model} -> {caption}).

Models, as A1111:
- `clip`: the BLIP caption plus CLIP's best matches from the category lists (`pipelines.interrogate`), BLIP from
  `models/BLIP/` and CLIP from `models/CLIP/` (`models.blip_clip` for the layouts);
- `deepdanbooru`: A1111's `models/torch_deepdanbooru/model-resnet_custom_v3.pt`;
- and the WD14-style taggers in `models/interrogators/<name>/` (`model.onnx` + `selected_tags.csv`, the layout of
  the popular WD14 tagger extension), by folder name, or `wd14` for the first one.
Tags (DeepDanbooru's and the taggers') are formatted with A1111's DeepBooru settings. A model that is not installed
is a 422 naming `model` and the folder to put it in (A1111 downloads it; this server never does). The work is
`server.interrogation`'s, which the UI's buttons and Loopback share.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from sdwebui.server.images import decode_base64_image
from sdwebui.server.interrogation import BUILTIN, caption_image, check_model
from sdwebui.server.services import Services


class InterrogateRequest(BaseModel):
    image: str = Field("", description="base64 image (a data: URL prefix is accepted)")
    model: str = Field("clip", max_length=200, description='"clip", "deepdanbooru", a WD14 tagger\'s folder name in '
                                                           'models/interrogators, or "wd14" for the first one')


class InterrogateResponse(BaseModel):
    caption: str | None = None


def interrogate(services: Services, req: InterrogateRequest) -> str:
    """The caption (tags) for the request, or a FieldError naming `model` / `image`."""
    check_model(services, req.model)
    return caption_image(services, decode_base64_image(req.image, ("image",)), req.model)


def build_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.post("/interrogate", response_model=InterrogateResponse)
    async def interrogateapi(req: InterrogateRequest):
        return {"caption": await run_in_threadpool(interrogate, services, req)}

    return router


__all__ = ["BUILTIN", "build_router", "InterrogateRequest", "InterrogateResponse", "caption_image", "check_model", "interrogate"]
