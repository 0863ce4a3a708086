"""`POST /sdapi/v1/interrogate` (A1111's `InterrogateRequest` {image, model} -> {caption}).

Models: the WD14-style taggers in `models/interrogators/<name>/` (`model.onnx` + `selected_tags.csv`, the layout of
the popular WD14 tagger extension), by folder name, or `wd14` for the first one; their tags are formatted with
A1111's DeepBooru settings (`pipelines.interrogate`). A1111's own `clip` (BLIP caption + CLIP ranking) and
`deepdanbooru` are not in this server yet: asking for them is a 422 naming `model` (A1111 answers 404 for a model
it does not know; a missing model file is a 422 naming the folder here too). The tagger runs on the CPU
(onnxruntime), beside the generation queue; it is released after each call unless the setting
`interrogate_keep_models_in_memory` is on (A1111's).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from sdwebui.pipelines.interrogate import TagOptions, format_tags
from sdwebui.server.errors import FieldError
from sdwebui.server.images import decode_base64_image
from sdwebui.server.services import Services

NOT_YET = {
    "clip": "CLIP interrogation (BLIP caption + CLIP ranking) is not available in this server yet; "
            "WD14 taggers are (put one in models/interrogators/<name>/ and ask for model \"wd14\")",
    "deepdanbooru": "DeepDanbooru is not available in this server yet; WD14 taggers are (put one in "
                    "models/interrogators/<name>/ and ask for model \"wd14\")",
}


class InterrogateRequest(BaseModel):
    image: str = Field("", description="base64 image (a data: URL prefix is accepted)")
    model: str = Field("clip", max_length=200, description='a WD14 tagger\'s folder name in models/interrogators, '
                                                           'or "wd14" for the first one')


class InterrogateResponse(BaseModel):
    caption: str | None = None


def interrogate(services: Services, req: InterrogateRequest) -> str:
    """The caption (tags) for the request, or a FieldError naming `model` / `image`."""
    check_model(services, req.model)
    return caption_image(services, decode_base64_image(req.image, ("image",)), req.model)


def check_model(services: Services, model: str) -> str:
    """The installed tagger `model` names (`wd14`: the first one), or a FieldError naming `model`."""
    from sdwebui.models.taggers import find_taggers  # OpenCV: not at start-up

    wanted = model.strip()
    if wanted.lower() in NOT_YET:
        raise FieldError(("model",), NOT_YET[wanted.lower()])
    installed = [entry.name for entry in find_taggers(services.paths.models_dir)]
    if wanted.lower() == "wd14" and installed:
        wanted = installed[0]
    if wanted not in installed:
        raise FieldError(("model",), f"no tagger {model!r}: put a WD14 tagger's model.onnx and selected_tags.csv "
                                     f"in models/interrogators/<name>/ (installed: {', '.join(installed) or 'none'})")
    return wanted


def caption_image(services: Services, image, model: str = "wd14") -> str:
    """An image's tags from tagger `model`, formatted with A1111's DeepBooru settings (the route and the img2img
    tab's Interrogate button); a FieldError naming `model` when it is not installed or cannot run."""
    from sdwebui.models.taggers import TaggerError  # OpenCV: not at start-up

    wanted = check_model(services, model)
    options = services.options.all()
    library = services.taggers
    try:
        _ratings, tags = library.probabilities(wanted, image)
    except TaggerError as error:
        raise FieldError(("model",), str(error)) from None
    finally:
        if not options.get("interrogate_keep_models_in_memory"):
            library.release()
    return format_tags(tags, TagOptions.from_settings(options))


def build_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.post("/interrogate", response_model=InterrogateResponse)
    async def interrogateapi(req: InterrogateRequest):
        return {"caption": await run_in_threadpool(interrogate, services, req)}

    return router


__all__ = ["build_router", "InterrogateRequest", "InterrogateResponse", "caption_image", "check_model", "interrogate"]
