"""The services behind every route (native API, A1111 API, and later the UI): one object per app.

Built by `sdwebui.app.build_app` and passed to the routers; nothing here is global, so two apps can run side
by side. Heavy parts are made on first use: the model manager (and torch with it) when the first job or model
question arrives, not at start-up.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdwebui.config import DEMO_CHECKPOINT
from sdwebui.pipelines.scripts import ScriptRegistry
from sdwebui.pipelines.output import save_image
from sdwebui.prompts.styles import StyleDatabase
from sdwebui.server import catalog
from sdwebui.server.config import ServerConfig
from sdwebui.server.lifecycle import ServerControl
from sdwebui.server.options import OptionError, Options
from sdwebui.server.payloads import load_payload
from sdwebui.server.queue import JobQueue, QueueFull, Worker
from sdwebui.server.runners import RUNNERS
from sdwebui.server.service import GenerationService
from sdwebui.server.store import Store, open_store

log = logging.getLogger(__name__)


class Services:
    def __init__(self, config: ServerConfig, scripts: ScriptRegistry | None = None):
        self.config = config
        self.paths = config.paths
        self.scripts = scripts if scripts is not None else ScriptRegistry()
        if config.in_memory_store:  # the CLI: its jobs are its own, never another process's queue
            self.store, recovered = Store(":memory:"), []
        else:
            self.store, recovered = open_store(self.paths.data_dir, lock_wait=config.store_lock_wait)
        self.notices: list[str] = list(self.store.notices)
        """What the user should be told at start-up (the server prints them)."""
        self.options = Options(self.store, self.paths.outputs_dir)
        if config.settings:  # operator settings from the command line (`--api-max-steps`, ...)
            accepted, _ = self.options.validate(dict(config.settings), from_api=False)
            self.options.update(accepted)
        self.queue = JobQueue(self.store, max_size=lambda: int(self.options.get("api_max_queue_size")),
                              load_payload=load_payload)
        self.generation = GenerationService(self)
        self.worker = Worker(
            self.queue,
            {kind: functools.partial(runner, services=self) for kind, runner in RUNNERS.items()},
            name="worker-0",
            on_out_of_memory=self.release_memory,
            warmup=functools.partial(_prepare_worker, threads=config.threads, preload=config.preload,
                                     load_model=self.load_model_at_start if config.load_model_at_start else None),
        )
        self.control = ServerControl()
        """Stops the server from the API (`--api-server-stop`); `sdwebui serve` attaches the server it runs."""
        self.write_image = save_image
        """How the runners write a job's image files (`pipelines.output.save_image`'s signature; the path written
        back). A Ray worker's services send them to the API node instead (`server.cluster.ImageOutbox`)."""
        self.recovered = self.queue.restore(recovered)
        if recovered:
            log.warning("re-queued %d job(s) left waiting by the last run", len(recovered))
        self._models = None
        self._models_lock = threading.Lock()
        self._styles = None
        self._loras = None
        self._embeddings = None
        self._hypernetworks = None
        self._upscalers = None
        self._face_restoration = None
        self._taggers = None
        self._interrogate_models = None

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
                from sdwebui.models.fast_paths import FastPaths
                from sdwebui.models.manager import ModelManager
                from sdwebui.models.memory import MemoryPolicy

                config = self.config
                precision = config.precision
                devices = plan_devices(config.device, precision=precision, vae_precision=config.vae_precision)
                memory = MemoryPolicy(config.memory_mode, config.medvram_sdxl, config.vram_budget_gb)
                keep = lambda: (int(self.options.get("sd_checkpoints_limit")),  # noqa: E731
                                int(self.options.get("sd_checkpoint_cache")))
                fp8 = lambda: (str(self.options.get("fp8_storage")),  # noqa: E731
                               bool(self.options.get("cache_fp16_weight")))
                fast = FastPaths(channels_last=config.channels_last, compile=config.compile_unet,
                                 compile_mode=config.compile_mode)
                self._models = ModelManager(self.paths, devices, prediction_type=config.prediction_type,
                                            memory=memory, keep=keep, fp8=fp8, fast=fast)
                log.info("device: %s", devices.describe())
            return self._models

    def load_model_at_start(self) -> None:
        """A1111's start-up load: the checkpoint the settings name (else the default one) with the settings' VAE,
        loaded in the worker thread before it takes the first job, so the server answers at once and the first
        job finds the model ready (it waits in the queue meanwhile). A checkpoint that cannot be loaded is
        logged, naming it and why; the server goes on, and a job loads its checkpoint when it runs."""
        name = self.options.get("sd_model_checkpoint")
        try:
            path = self.resolve_checkpoint(name)
            vae = self.options.get("sd_vae") or "Automatic"
            self.resolve_vae(vae)
            model = self.models.get(str(path), vae=vae)
        except Exception as error:  # noqa: BLE001 - a broken model file must not stop the server
            shown = _shown(name) if name else "(the default checkpoint)"
            log.error("could not load the checkpoint %s at start-up: %s; the server goes on without a model "
                      "(jobs load theirs when they run)", shown, _message(error) if isinstance(error, LookupError)
                      else f"{type(error).__name__}: {error}")
            return
        log.info("loaded %s at start-up", model.info.name)

    def held_models(self) -> list[str]:
        """The checkpoints (paths) this process holds: the loaded one first, then those in the RAM cache; none
        before the model manager is made (this does not make it)."""
        models = self._models
        if models is None:
            return []
        held = [str(models.loaded.info.path)] if models.loaded is not None else []
        held.extend(str(key[0]) for key in models.cached())
        return list(dict.fromkeys(held))

    def workers(self) -> list[dict]:
        """What runs the jobs (`GET /api/v1/workers`): this process's worker thread, or each Ray worker actor
        (`server.cluster`): id, node, device, the models it holds, its current job, the jobs it has done."""
        if hasattr(self.worker, "workers"):
            return self.worker.workers()
        worker, models = self.worker, self._models
        current = worker.current
        return [{"id": worker.name, "state": "ready" if worker.alive else "stopped", "node": "local",
                 "host": socket.gethostname(), "pid": os.getpid(),
                 "device": models.devices.describe() if models is not None else self.config.device,
                 "gpus": [], "models": [Path(path).name for path in self.held_models()],
                 "current_job": current.id if current is not None else None, "jobs_done": worker.jobs_done,
                 "error": None}]

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
    def hypernetworks(self):
        """The `HypernetworkLibrary` over `models/hypernetworks/` (made on first use; it keeps the networks of the
        last job loaded)."""
        with self._models_lock:
            if self._hypernetworks is None:
                from sdwebui.models.hypernetwork import HypernetworkLibrary

                self._hypernetworks = HypernetworkLibrary(self.paths.models_dir / "hypernetworks",
                                                          hash_cache_dir=self.paths.cache_dir)
            return self._hypernetworks

    @property
    def upscalers(self):
        """The `UpscalerLibrary` over A1111's upscaler folders (`models/ESRGAN`, ...; made on first use). Listing
        needs no torch device; a model is loaded onto the generation device when a job first uses it."""
        with self._models_lock:
            if self._upscalers is None:
                from sdwebui.models.upscalers import UpscalerLibrary

                self._upscalers = UpscalerLibrary(self.paths.upscaler_folders, device=_LazyDevice(self))
            return self._upscalers

    @property
    def face_restoration(self):
        """The `FaceRestoration` over A1111's folders (`models/GFPGAN`, `models/Codeformer`, and
        `models/RestoreFormer`; made on first use): the restorer is loaded onto the generation device when a job
        first uses it, and moved to the CPU after each use when the setting `face_restoration_unload` says so."""
        with self._models_lock:
            if self._face_restoration is None:
                from sdwebui.models.face_restorers import FaceRestorerLibrary  # spandrel and torch
                from sdwebui.pipelines.face_restoration import FaceRestoration  # OpenCV

                library = FaceRestorerLibrary(self.paths.models_dir, device=_LazyDevice(self))
                self._face_restoration = FaceRestoration(
                    library, unload=lambda: bool(self.options.get("face_restoration_unload")))
            return self._face_restoration

    @property
    def taggers(self):
        """The `TaggerLibrary` over `models/interrogators` (WD14 taggers; made on first use)."""
        with self._models_lock:
            if self._taggers is None:
                from sdwebui.models.taggers import TaggerLibrary  # OpenCV

                self._taggers = TaggerLibrary(self.paths.models_dir)
            return self._taggers

    @property
    def interrogate_models(self):
        """BLIP, CLIP and DeepDanbooru for `/interrogate` (`models/BLIP`, `models/CLIP`, `models/torch_deepdanbooru`;
        made on first use; each model loaded when first asked for, onto the generation device)."""
        with self._models_lock:
            if self._interrogate_models is None:
                from sdwebui.models.interrogate_models import InterrogateModels  # torch and transformers

                self._interrogate_models = InterrogateModels(self.paths.models_dir, device=_LazyDevice(self))
            return self._interrogate_models

    def face_restorer_names(self) -> list[str]:
        """The installed face restorers (read from disk; needs neither torch nor OpenCV)."""
        from sdwebui.models.face_restorers import find_face_restorers  # torch

        return [entry.name for entry in find_face_restorers(self.paths.models_dir)]

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

        with self._models_lock:
            if self._styles is None:
                self._styles = StyleDatabase(self.paths.styles_files)
            return self._styles.reload_if_changed()

    def resolve_checkpoint(self, name: str | None) -> Path:
        """The checkpoint a client named (file name, stem, A1111 title or hash, or its listed path; None = the
        default: the first loadable one).

        Only files the checkpoints folder lists (and the embedded demo model) can be chosen, and the name is
        matched against that list as text, never opened: the model manager also takes any path on disk, which
        is right for the command line, but would let an API client make the server open files outside its
        folders, and tell from the error whether a path exists. Errors name the folder relative to the data
        folder, never an absolute path; a listed file that cannot be loaded is an `UnusableModelError` naming
        only the file."""
        from sdwebui.models.loader import find_checkpoints
        from sdwebui.models.manager import ModelNotFoundError, UnusableModelError, checkpoint_problem, match_checkpoint

        if self.config.trust_paths:
            return self.models.resolve_checkpoint(name or None)
        if not name:
            try:
                return self.models.default_checkpoint()
            except UnusableModelError:
                raise
            except ModelNotFoundError:
                raise ModelNotFoundError(f"no checkpoint in the checkpoints folder ({self._folder(self.paths.ckpt_dir)})"
                                         ": put a .safetensors file there") from None
        listed = find_checkpoints(self.paths.ckpt_dir)
        allowed = listed + ([DEMO_CHECKPOINT] if DEMO_CHECKPOINT.is_file() else [])
        path = match_checkpoint(str(name), allowed, self.paths.ckpt_dir, self.paths.cache_dir)
        if path is None:
            names = ", ".join(catalog.relative_name(p, self.paths.ckpt_dir) for p in listed[:20])
            more = f", ... ({len(listed)} in all)" if len(listed) > 20 else ""
            raise ModelNotFoundError(
                f"checkpoint {_shown(name)} is not in the checkpoints folder ({self._folder(self.paths.ckpt_dir)})"
                + (f"; available: {names}{more}" if names else ""))
        problem = checkpoint_problem(path)
        if problem is not None:
            raise UnusableModelError(f"checkpoint {path.name} cannot be loaded: {problem}")
        return path

    def resolve_vae(self, name: str | None) -> Path | None:
        """A VAE a client named; like checkpoints, only files the VAE folder (or `*.vae.*` files beside the
        checkpoints) lists, matched as text."""
        from sdwebui.models.manager import ModelNotFoundError, match_vae
        from sdwebui.models.vae import find_vaes

        if self.config.trust_paths:
            return self.models.resolve_vae(name)
        if name is None or str(name) in ("", "Automatic", "None"):
            return None
        path = match_vae(str(name), find_vaes(self.paths.vae_dir, self.paths.ckpt_dir), self.paths.vae_dir)
        if path is None:
            raise ModelNotFoundError(f"VAE {_shown(name)} is not in the VAE folder ({self._folder(self.paths.vae_dir)})")
        return path

    def _folder(self, folder: Path) -> str:
        """A model folder as errors name it: relative to the data folder, or just its name (never the absolute
        path: errors reach API clients)."""
        try:
            return Path(folder).relative_to(self.paths.data_dir).as_posix()
        except ValueError:
            return Path(folder).name

    def release_memory(self) -> None:
        from sdwebui.models.manager import release_freed_memory

        if self._loras is not None:
            self._loras.release()
        if self._hypernetworks is not None:
            self._hypernetworks.forget()
        if self._upscalers is not None:
            self._upscalers.release()
        if self._face_restoration is not None:
            self._face_restoration.library.release()
        if self._models is not None:
            self._models.unload()
        release_freed_memory()

    # ---- settings ---------------------------------------------------------------------------------------------
    def update_options(self, values: dict[str, Any], *, from_api: bool = True) -> list[str]:
        """Check and write settings (A1111's `POST /options`); returns the keys it does not know: those are kept
        as sent (GET returns them; they change nothing here). A new checkpoint is loaded in queue order (A1111
        loads at once, under its lock): the next job finds it ready. Raises OptionError naming the first bad
        key; nothing is written then."""
        accepted, unknown_keys = self.options.validate(values, from_api=from_api)
        unknown = self.options.check_unknown({key: values[key] for key in unknown_keys})
        switch = None
        if "sd_model_checkpoint" in accepted:
            name = accepted["sd_model_checkpoint"]
            try:
                path = self.resolve_checkpoint(name)
            except LookupError as error:
                raise OptionError("sd_model_checkpoint", _message(error)) from None
            accepted["sd_model_checkpoint"] = catalog.entry_for(self.paths, path).title
            switch = str(path)
        if "sd_vae" in accepted:
            try:
                self.resolve_vae(accepted["sd_vae"])
            except LookupError as error:
                raise OptionError("sd_vae", _message(error)) from None
        self.options.update({**unknown, **accepted})
        if switch is not None:
            try:
                self.generation.load_model(switch, self.options.get("sd_vae"))
            except QueueFull:
                pass
        return unknown_keys

    def current_options(self) -> dict[str, Any]:
        """Every setting, as `GET /options` shows them: the current checkpoint's title and hash included, and
        the keys clients sent that this server does not know (kept as they were sent)."""
        options = {**self.options.unknown(), **self.options.all()}
        if not options.get("sd_model_checkpoint"):
            try:  # the default: the first checkpoint that can be loaded
                options["sd_model_checkpoint"] = catalog.entry_for(self.paths, self.resolve_checkpoint(None)).title
            except LookupError:
                options["sd_model_checkpoint"] = None
        loaded = self.loaded_model()
        options["sd_checkpoint_hash"] = _hash_if_ready(loaded.info) if loaded is not None else ""
        return options

    # ---- health ---------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """`ok`, or `degraded` with the reasons the server cannot make progress (the worker is not running, the
        store cannot be written). Reads flags only: never waits on a lock or the database."""
        reasons = []
        if not self.worker.alive:
            reasons.append("the worker thread is not running")
        fault = self.worker.fault
        if fault is not None:
            reasons.append(fault)
        elif self.store.fault is not None:
            reasons.append(f"the database cannot be written: {self.store.fault}")
        return {"status": "degraded" if reasons else "ok", "worker_alive": self.worker.alive, "reasons": reasons}

    # ---- jobs -----------------------------------------------------------------------------------------------
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
        outcome = self.worker.unrecorded(job_id)
        if outcome is not None:  # finished, but the store could not take its record yet (it will)
            view.update(status=outcome.status, finished=outcome.finished, error=outcome.error,
                        result=outcome.result, progress=outcome.progress, recorded=False)
        return view


def _message(error: Exception) -> str:
    return str(error.args[0]) if error.args else str(error)


class _LazyDevice:
    """The generation device, asked for only when an upscaler model is loaded (listing upscalers must not
    build the model manager)."""

    def __init__(self, services: Services):
        self.services = services

    def resolve(self):
        return self.services.models.devices.device


def _shown(name: Any) -> str:
    """A client's model name as an error repeats it (quoted, cut short)."""
    text = str(name)
    return repr(text if len(text) <= 100 else text[:100] + "...")


def _prepare_worker(*, threads: int | None, preload: bool, load_model: Callable[[], None] | None = None) -> None:
    """Runs first in the worker thread. The thread count is set here, not at start-up: with OpenMP it is a
    per-thread setting, and this is the thread that generates. Then the pipeline is imported and (`load_model`)
    the start-up checkpoint loaded, while the server already answers."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    if preload:
        import sdwebui.pipelines.txt2img  # noqa: F401
    if load_model is not None:
        load_model()


def _hash_if_ready(info) -> str:
    """The loaded checkpoint's SHA-256 for `GET /options`, without waiting: its first load hashes the file in the
    background (seconds for a 2-7 GB file, longer from a slow disk), and a settings read must not be held for
    that; until then it is "" (as before any load), and a failed hash is the infotext's to report."""
    try:
        return info.sha256_if_ready or ""
    except Exception:  # noqa: BLE001 - a settings read never fails for the hash
        return ""


__all__ = ["Services"]
