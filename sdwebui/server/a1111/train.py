"""A1111's training routes: `POST /create/embedding`, `/train/embedding`, `/create/hypernetwork`,
`/train/hypernetwork` (A1111 v1.10 `api.py`:
`create_embedding(args: dict)` -> `{"info": "create embedding filename: ..."}`, `train_embedding(args: dict)` ->
`{"info": "train embedding complete: filename: ... error: ..."}`), answered when the queued job is done, as A1111
answers when its training returns; `/progress` follows it meanwhile and `/interrupt` stops it (the steps done are
saved). The hypernetwork routes answer likewise ("create hypernetwork filename: ...", "train hypernetwork complete:
..."); creating a hypernetwork needs no model, so it is done at once. Bad arguments are a 422 naming the field
before anything is queued (`server.training`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from sdwebui.core.errors import ParamError
from sdwebui.server.a1111.progress import submit_and_wait
from sdwebui.server.errors import FieldError
from sdwebui.server.queue import JobHandle
from sdwebui.server.services import Services
from sdwebui.server.training import (
    CreateEmbeddingJob,
    CreateHypernetworkJob,
    TrainEmbeddingJob,
    TrainHypernetworkJob,
    create_hypernetwork,
    submit_create,
    submit_train,
)


class InfoResponse(BaseModel):
    info: str


def build_router(services: Services) -> APIRouter:
    router = APIRouter()

    @router.post("/create/embedding", response_model=InfoResponse)
    async def create_embedding(request: CreateEmbeddingJob):
        job = await submit_and_wait(lambda: _submit(submit_create, services, request), "create embedding")
        return {"info": job.result["info"]}

    @router.post("/train/embedding", response_model=InfoResponse)
    async def train_embedding(request: TrainEmbeddingJob):
        job = await submit_and_wait(lambda: _submit(submit_train, services, request), "train embedding")
        return {"info": job.result["info"]}

    @router.post("/create/hypernetwork", response_model=InfoResponse)
    async def create_hypernetwork_route(request: CreateHypernetworkJob):
        def create():
            try:
                return create_hypernetwork(services, request)
            except ParamError as error:
                raise FieldError(error.loc, error.message) from None

        path = await run_in_threadpool(create)
        return {"info": f"create hypernetwork filename: {path}"}

    @router.post("/train/hypernetwork", response_model=InfoResponse)
    async def train_hypernetwork(request: TrainHypernetworkJob):
        job = await submit_and_wait(lambda: _submit(submit_train, services, request), "train hypernetwork")
        return {"info": job.result["info"]}

    return router


def _submit(submit, services: Services, request: BaseModel) -> JobHandle:
    try:
        return submit(services, request)
    except ParamError as error:
        raise FieldError(error.loc, error.message) from None


__all__ = ["build_router"]
