"""The services behind every route (native API, A1111 API, and later the UI): one object per app.

Built by `sdwebui.app.build_app` and passed to the routers; nothing here is global, so two apps can run side
by side. Heavy parts are made on first use: the model manager (and torch with it) when the first job or model
question arrives, not at start-up.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

from sdwebui.server.config import ServerConfig
from sdwebui.server.options import Options
from sdwebui.server.queue import JobHandle, JobQueue, Worker
from sdwebui.server.store import open_store

log = logging.getLogger(__name__)


class Services:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.paths = config.paths
        self.store, recovered = open_store(self.paths.data_dir)
        self.options = Options(self.store, self.paths.outputs_dir)
        self.queue = JobQueue(self.store, max_size=lambda: int(self.options.get("api_max_queue_size")))
        self.worker = Worker(
            self.queue,
            {"txt2img": self._run_txt2img, "img2img": self._run_img2img, "load_model": self._run_load_model,
             "extras": self._run_extras},
            name="worker-0",
            on_out_of_memory=self.release_memory,
            warmup=functools.partial(_prepare_worker, threads=config.threads, preload=config.preload),
        )
        self.recovered = self.queue.restore(recovered)
        if recovered:
            log.warning("re-queued %d job(s) left waiting by the last run", len(recovered))
        self._models = None
        self._models_lock = threading.Lock()
        self._styles = None
        self._loras = None
        self._embeddings = None
        self._upscalers = None

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.worker.start()

    def close(self) -> None:
        self.worker.stop()
        self.store.close()

    # ---- models ---------------------------------------------------------------------------------------------
    @property
    def models(self):
        """The `ModelManager` (made on first use: it needs torch and the device plan)."""
        with self._models_lock:
            if self._models is None:
                from sdwebui.models.devices import plan_devices
                from sdwebui.models.manager import ModelManager

                config = self.config
                precision = config.precision
                devices = plan_devices(config.device, precision=precision, vae_precision=config.vae_precision)
                self._models = ModelManager(self.paths, devices, prediction_type=config.prediction_type)
                log.info("device: %s", devices.describe())
            return self._models

    def loaded_model(self):
        """The model in memory, or None (without making the model manager)."""
        return self._models.loaded if self._models is not None else None

    @property
    def loras(self):
        """The `LoraLibrary` over the LoRA folder (made on first use; it keeps the patched weights of the last
        LoRA set between jobs)."""
        with self._models_lock:
            if self._loras is None:
                from sdwebui.models.lora import LoraLibrary

                self._loras = LoraLibrary(self.paths.lora_dir, hash_cache_dir=self.paths.cache_dir)
            return self._loras

    @property
    def embeddings(self):
        """The `EmbeddingDatabase` over the embeddings folder (made on first use, re-read when files change)."""
        with self._models_lock:
            if self._embeddings is None:
                from sdwebui.models.embeddings import EmbeddingDatabase

                self._embeddings = EmbeddingDatabase(self.paths.embeddings_dir)
            return self._embeddings

    @property
    def upscalers(self):
        """The `UpscalerLibrary` over A1111's upscaler folders (`models/ESRGAN`, ...; made on first use). Listing
        needs no torch device; a model is loaded onto the generation device when a job first uses it."""
        with self._models_lock:
            if self._upscalers is None:
                from sdwebui.models.upscalers import UpscalerLibrary

                self._upscalers = UpscalerLibrary(self.paths.upscaler_folders, device=_LazyDevice(self))
            return self._upscalers

    def native_size(self, checkpoint: str | None = None) -> int:
        """The default width and height for a checkpoint (None = the current one): the size it was trained at
        (its metadata, else its family's: SD 1/2 512, SDXL 1024; the demo model 64). Read from the loaded model
        when it is that checkpoint, else from the file's header (no weights are read); 512, A1111's default,
        when it cannot be told."""
        try:
            path = self.resolve_checkpoint(checkpoint)
        except Exception:  # noqa: BLE001 - no checkpoint at all (or a bad name): A1111's default
            return 512
        loaded = self.loaded_model()
        if loaded is not None and getattr(loaded.info, "path", None) == path:
            return loaded.native_size
        try:
            from sdwebui.models.detect import peek_native_size

            return peek_native_size(path) or 512
        except Exception:  # noqa: BLE001 - an unreadable header: loading will report it
            return 512

    def styles(self):
        """The prompt styles of the styles files (`--styles-file`), re-read when a file changed: users edit
        `styles.csv` while the app runs, and the UI asks on every keystroke (token counts)."""
        from sdwebui.prompts.styles import StyleDatabase

        with self._models_lock:
            if self._styles is None:
                self._styles = StyleDatabase(self.paths.styles_files)
            return self._styles.reload_if_changed()

    def resolve_checkpoint(self, name: str | None) -> Path:
        """The checkpoint a client named (file name, stem, A1111 title or hash; None = the default).

        Only files the checkpoints folder lists (and the embedded demo model) can be chosen: the model manager
        also takes any path on disk, which is right for the command line but would let an API client make the
        server open files outside its folders."""
        from sdwebui.models.loader import find_checkpoints
        from sdwebui.models.manager import DEMO_CHECKPOINT, ModelNotFoundError

        path = self.models.resolve_checkpoint(name or None)
        allowed = find_checkpoints(self.paths.ckpt_dir) + ([DEMO_CHECKPOINT] if DEMO_CHECKPOINT.is_file() else [])
        if not _listed(path, allowed):
            raise ModelNotFoundError(f"checkpoint {name!s} not found in {self.paths.ckpt_dir} "
                                     "(only the models in the checkpoints folder can be chosen)")
        return path

    def resolve_vae(self, name: str | None) -> Path | None:
        """A VAE a client named; like checkpoints, only files the VAE folder (or `*.vae.*` files beside the
        checkpoints) lists."""
        from sdwebui.models.manager import ModelNotFoundError
        from sdwebui.models.vae import find_vaes

        path = self.models.resolve_vae(name)
        if path is not None and not _listed(path, find_vaes(self.paths.vae_dir, self.paths.ckpt_dir)):
            raise ModelNotFoundError(f"VAE {name!s} not found in {self.paths.vae_dir} "
                                     "(only the VAEs in the VAE folder can be chosen)")
        return path

    def release_memory(self) -> None:
        from sdwebui.models.manager import release_freed_memory

        if self._loras is not None:
            self._loras.release()
        if self._upscalers is not None:
            self._upscalers.release()
        if self._models is not None:
            self._models.unload()
        release_freed_memory()

    # ---- jobs -----------------------------------------------------------------------------------------------
    def submit(self, kind: str, payload: dict) -> JobHandle:
        return self.queue.submit(kind, payload)

    def job_view(self, job_id: str) -> dict | None:
        """A job as the native API shows it: the stored record with live progress while it runs."""
        record = self.store.job(job_id)
        if record is None:
            return None
        handle = self.queue.get(job_id)
        view = {
            "id": record["id"],
            "kind": record["kind"],
            "status": record["status"],
            "created": record["created"],
            "started": record["started"],
            "finished": record["finished"],
            "error": record["error"],
            "queue_position": self.queue.position(job_id),
            "progress": record["progress"],
            "result": record["result"],
        }
        if handle is not None and handle.status == "running":
            view["progress"] = handle.progress.as_dict()
        return view

    def _run_txt2img(self, job: JobHandle) -> dict:
        from sdwebui.server.generation import run_txt2img

        return run_txt2img(job, self)

    def _run_img2img(self, job: JobHandle) -> dict:
        from sdwebui.server.generation import run_img2img

        return run_img2img(job, self)

    def _run_extras(self, job: JobHandle) -> dict:
        from sdwebui.server.extras import run_extras_job

        return run_extras_job(job, self)

    def _run_load_model(self, job: JobHandle) -> dict:
        model = self.models.get(job.payload.get("checkpoint"), vae=job.payload.get("vae"))
        return {"model": {"name": model.info.name, "hash": model.info.short_hash}}


class _LazyDevice:
    """The generation device, asked for only when an upscaler model is loaded (listing upscalers must not
    build the model manager)."""

    def __init__(self, services: Services):
        self.services = services

    def resolve(self):
        return self.services.models.devices.device


def _listed(path: Path, allowed: list[Path]) -> bool:
    """`path` is one of `allowed` (compared as given, and with symlinks resolved: a checkpoint the user linked
    into the folder is listed under its link name, while a path sent by a client resolves to the target)."""
    if path in allowed:
        return True
    try:
        target = path.resolve()
        return any(target == candidate.resolve() for candidate in allowed)
    except (OSError, RuntimeError):
        return False


def _prepare_worker(*, threads: int | None, preload: bool) -> None:
    """Runs first in the worker thread. The thread count is set here, not at start-up: with OpenMP it is a
    per-thread setting, and this is the thread that generates."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if preload:
        import sdwebui.pipelines.output  # noqa: F401
        import sdwebui.pipelines.txt2img  # noqa: F401


__all__ = ["Services"]
