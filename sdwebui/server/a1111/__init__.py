"""The A1111-compatible API: `/sdapi/v1/...` with A1111's routes, field names, defaults and response shapes
(A1111 v1.10 `modules/api/api.py`), so existing clients work unmodified. One module per area:

| module | routes |
|---|---|
| `generation.py` | txt2img, img2img |
| `progress.py` | progress, interrupt, skip |
| `options.py` | options, cmd-flags |
| `models.py` | samplers, schedulers, upscalers, sd-models, sd-vae, loras, embeddings, styles, refresh-*, unload / reload-checkpoint, memory |
| `images.py` | png-info, extra-single-image, extra-batch-images |
| `scripts.py` | scripts, script-info, extensions |
| `interrogate.py` | interrogate (clip: BLIP + CLIP, deepdanbooru, WD14 taggers) |
| `train.py` | create/embedding, train/embedding (textual inversion, queued jobs) |
| `..lifecycle` | server-stop, server-restart, server-kill (only with `--api-server-stop`) |

`schemas.py` holds the bodies (made from the parameter declarations), `translate.py` turns a request into the
generation service's request and our errors back into A1111's field names.

Where we differ, on purpose:
- Requests are queued jobs (with ids, stored in the database), not calls serialised by a lock; many clients can
  wait at once and each gets its own result. Settings a job depends on are fixed when it is queued, so a later
  `/options` change never alters a waiting job.
- Bad input is a 422 naming the field before any model work (A1111 floors sizes silently, answers 404 for an
  unknown sampler, and 500 for most other mistakes).
- Features that do not exist yet, or a model that is not installed (A1111 would download it), are refused with a
  422 naming the field rather than silently ignored, so a client never gets an image made differently from what
  it asked for.
"""

from __future__ import annotations

from fastapi import APIRouter

from sdwebui.server import lifecycle
from sdwebui.server.a1111 import generation, images, interrogate, models, options, progress, scripts, train
from sdwebui.server.services import Services

AREAS = (generation, progress, options, models, images, scripts, interrogate, train)


def build_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["A1111-compatible API"])
    for area in AREAS:
        router.include_router(area.build_router(services))
    if services.config.api_server_stop:  # A1111's flag: server-stop, server-restart, server-kill
        router.include_router(lifecycle.build_router(services.control))
    return router


__all__ = ["build_router"]
