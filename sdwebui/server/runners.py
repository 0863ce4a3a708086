"""The worker's side of each job kind: a typed payload in, images saved and recorded, a JSON result out.

    generation (txt2img / img2img): payload -> [scripts: before job] -> tasks -> engine runs (with the scripts'
        hooks, progress and live previews, each batch saved as soon as it is decoded) -> [scripts: after job]
    extras: upscale each image, save and record it
    load_model: load a checkpoint (a switch queued in order)
    merge: the Checkpoint Merger (`server.model_tools`)
    create_embedding, train_embedding: textual inversion (`server.training`)

The result is what the native API shows under `result` and what the A1111 routes answer with (`seeds`,
`infotexts`, `images`: the saved files, `model`, `notes`, `interrupted`).
"""

from __future__ import annotations

import io
import logging
import time
from typing import TYPE_CHECKING, Any

from sdwebui.pipelines.extras_params import CAPTIONERS
from sdwebui.pipelines.grids import grid_rows, image_grid
from sdwebui.pipelines.jobs import TaskRunner, drive_tasks, job_script, run_tasks, total_batches
from sdwebui.pipelines.scripts import GenerationTask, JobOutcome
from sdwebui.server.console import JobConsoleBar
from sdwebui.server.interrogation import caption_image
from sdwebui.server.model_tools import run_merge_job, run_tool_job
from sdwebui.server.training import run_training_job
from sdwebui.server.payloads import ExtrasPayload, GenerationPayload, OutputOptions, decode_png
from sdwebui.server.store import StoreUnavailable

if TYPE_CHECKING:
    from sdwebui.server.queue import JobHandle
    from sdwebui.server.services import Services

log = logging.getLogger(__name__)


def run_generation(job: "JobHandle", services: "Services") -> dict:
    """Generate, save (when asked) and record the images of one txt2img / img2img job."""
    payload: GenerationPayload = job.payload
    scripts = services.scripts.bind(payload.kind, payload.script, payload.alwayson_scripts)
    tasks = [expanded for task in first_tasks(payload) for expanded in scripts.expand(task)]
    job.progress.textinfo = None
    saver = ImageSaver(services, job, payload.output)
    models_used: list = []
    driver = job_script(scripts)  # a script that runs the job itself (loopback, SD upscale, outpainting)
    batches = sum(driver[0].planned_batches(task, driver[1]) for task in tasks) if driver else total_batches(tasks)
    console = JobConsoleBar(f"{payload.kind} {job.id[:8]}")

    def on_images(batch, model, save: bool = True) -> None:
        if save:
            saver.save(batch, model)
        if payload.preview_every != 0 and batch.images:
            job.progress.preview_png = decoded_preview_png(batch.images[0])

    def run(task: GenerationTask, batch_offset: int, save: bool = True):
        from sdwebui.models.vae_tiling import VaeTiling
        from sdwebui.pipelines.context import GenerationContext  # torch: the worker has it by now
        from sdwebui.pipelines.img2img import img2img
        from sdwebui.pipelines.networks import LoraNetworks
        from sdwebui.pipelines.txt2img import txt2img

        if scripts:  # names a script gave (X/Y/Z's checkpoints, VAEs, styles, refiners) resolved as at submit time
            task = services.generation.resolve_task(task)
        checkpoint = str(services.resolve_checkpoint(task.checkpoint)) if task.checkpoint else payload.checkpoint
        model = services.models.get(checkpoint, vae=task.vae or payload.vae)
        models_used.append(model)
        ctx = GenerationContext(
            model=model, stop=job.stop, embeddings=services.embeddings,
            on_step=progress_reporter(job, services, model, payload.preview_every, batch_offset, batches, console),
            extra_networks=LoraNetworks(services.loras, services.hypernetworks, setting_hypernet(payload)),
            nan_check=payload.nan_check,
            load_model=services.models.get_secondary, upscalers=services.upscalers,
            upscale_tile=tuple(payload.upscale_tile), on_images=lambda batch: on_images(batch, model, save),
            face_restoration=services.face_restoration if task.params.restore_faces else None,
            vae_tiling=VaeTiling(*payload.vae_tiling, memory=services.models.memory),
            hooks=scripts.for_task(task) if scripts else None,
            color_correction=payload.color_correction,
            # A1111's intermediate copies, only beside images that are saved (a script's run that saves none
            # saves none of its copies either)
            intermediates=frozenset(payload.output.intermediates) if save and payload.output.save else frozenset(),
            on_intermediate=lambda suffix, batch: saver.save_copies(suffix, batch, model),
        )
        if payload.kind == "img2img":
            return img2img(ctx, task.params, list(task.init_images), task.mask)
        return txt2img(ctx, task.params)

    def save_script_images(images, result, seeds, infotexts) -> None:
        from sdwebui.pipelines.context import FinishedImages  # torch: the worker has it by now

        prompts = [result.prompts[0] if result.prompts else result.params.prompt] * len(images)
        saver.save(FinishedImages(result.params, list(images), list(seeds), list(infotexts), prompts), models_used[-1])

    script_grids: list[dict] = []

    def script_grid(images, rows: int, infotext: str, seed: int):
        grid, saved = make_grid(services, payload, images, rows, infotext, seed)
        if saved is not None:
            script_grids.append(saved)
        return grid

    try:
        if driver:
            runner = TaskRunner(run, save_script_images, script_grid, job.stop.interrupted.is_set,
                                upscalers=services.upscalers, upscale_tile=tuple(payload.upscale_tile),
                                interrogate=lambda image, model: caption_image(services, image, model))
            outcome = drive_tasks(tasks, driver[0], driver[1], runner)
        else:
            image_counts: list[int] = []

            def counted(task: GenerationTask, batch_offset: int):
                result = run(task, batch_offset)
                image_counts.append(len(result.images))
                return result

            outcome = run_tasks(tasks, counted, job.stop.interrupted.is_set)
            outcome.tasks, outcome.task_image_counts = list(tasks), image_counts
    finally:
        console.close()
    scripts.after_job(outcome)
    script_grids.extend(save_script_grids(services, payload, outcome))
    grid = add_grid(services, payload, outcome) or (script_grids[0] if script_grids else None)
    job.images = [*outcome.extra_images, *outcome.images]
    job.interrupted = outcome.interrupted
    result = generation_result(outcome, saver.saved, models_used[0] if models_used else None)
    if grid is not None:
        result["grid"] = grid
    return result


def setting_hypernet(payload: GenerationPayload):
    """The `sd_hypernetwork` setting's network at submit time (`<hypernet:name:strength>` on every prompt), or
    None."""
    from sdwebui.models.hypernetwork import HypernetCall

    if payload.hypernetwork is None:
        return None
    name, strength = payload.hypernetwork
    return HypernetCall(name, float(strength), from_setting=True)


def add_grid(services: "Services", payload: GenerationPayload, outcome: JobOutcome) -> dict | None:
    """A1111's grid of a job's images (`process_images`): shown first (`index_of_first_image` 1, its infotext
    first) and saved as `grid-NNNN.png` in the grids folder, as the job's grid settings say; None when no grid is
    saved. A job of one image, or one whose request or script said so (prompts from file), gets none."""
    options = payload.grid
    wanted = options.make and outcome.make_grid and (options.return_grid or options.save)
    if not wanted or not outcome.images or options.only_if_multiple and len(outcome.images) < 2:
        return None
    rows = grid_rows(len(outcome.images), payload.params.batch_size, options.n_rows, options.prevent_empty_spots)
    grid = image_grid(outcome.images, rows)
    infotext = outcome.infotexts[0] if outcome.infotexts else ""
    grid.info["parameters"] = infotext
    if options.return_grid:
        outcome.extra_images.insert(0, grid)
        outcome.infotexts.insert(0, infotext)
    if not options.save:
        return None
    outputs = services.paths.outputs_dir
    path = services.write_image(grid, outputs / options.folder, seed=outcome.seeds[0] if outcome.seeds else 0,
                      infotext=infotext, pattern=options.filename_pattern, fields=grid_fields(outcome),
                      date_subdir=payload.output.date_subdir, basename="grid")
    return {"path": _relative_to(path, outputs), "rows": rows}


def make_grid(services: "Services", payload: GenerationPayload, images, rows: int | None, infotext: str,
              seed: int) -> tuple[Any, dict | None]:
    """A grid a script lays out itself (A1111's scripts call `image_grid` and save it under `opts.grid_save`):
    (the grid when the settings show grids (`return_grid`), else None; where it was saved, or None). `rows` None:
    as the settings say for a batch size of 1 (A1111's `image_grid(images)`). A1111's scripts ignore the request's
    `do_not_save_grid` (`options.make`); a request that saves no images saves no grid here either."""
    options = payload.grid
    if not images or not (options.return_grid or options.save) or options.only_if_multiple and len(images) < 2:
        return None, None
    if rows is None:
        rows = grid_rows(len(images), 1, options.n_rows, options.prevent_empty_spots)
    grid = image_grid(images, rows)
    grid.info["parameters"] = infotext
    saved = None
    if options.save:
        outputs = services.paths.outputs_dir
        path = services.write_image(grid, outputs / options.folder, seed=seed, infotext=infotext,
                          pattern=options.filename_pattern, date_subdir=payload.output.date_subdir, basename="grid")
        saved = {"path": _relative_to(path, outputs), "rows": rows}
    return (grid if options.return_grid else None), saved


def save_script_grids(services: "Services", payload: GenerationPayload, outcome: JobOutcome) -> list[dict]:
    """Save the grids a script made in `after_job` (`outcome.grids_to_save`: X/Y/Z's `xyz_grid-0000.png`) to the
    job's grids folder, when the job saves grids (A1111's `grid_save`)."""
    options = payload.grid
    if not options.save:
        return []
    outputs, saved = services.paths.outputs_dir, []
    seed = next((seed for seed in outcome.seeds if seed is not None), 0)  # a cell that did not run has none
    for image, infotext, basename in outcome.grids_to_save:
        path = services.write_image(image, outputs / options.folder, seed=seed, infotext=infotext,
                          pattern=options.filename_pattern, fields=grid_fields(outcome),
                          date_subdir=payload.output.date_subdir, basename=basename)
        saved.append({"path": _relative_to(path, outputs), "rows": 1})
    return saved


def grid_fields(outcome: JobOutcome) -> dict:
    """The values of a grid's file-name tags (`grid_extended_filename`): the first image's parameters and prompt."""
    return {**outcome.params.to_dict(), "prompt": outcome.prompts[0] if outcome.prompts else outcome.params.prompt}


def first_tasks(payload: GenerationPayload) -> list[GenerationTask]:
    """The job's runs before its scripts expand them: one, or one per image of an img2img folder batch."""
    if payload.batch:
        return [GenerationTask(payload.params, (decode_png(entry.image),),
                               decode_png(entry.mask) if entry.mask else None, label=entry.name)
                for entry in payload.batch]
    images, mask = payload.images()
    return [GenerationTask(payload.params, tuple(images), mask)]


def generation_result(outcome: JobOutcome, saved: list[dict], model: Any) -> dict:
    return {
        "params": outcome.params.to_dict(),
        "seeds": outcome.seeds,
        "subseeds": outcome.subseeds,
        "prompts": outcome.prompts,
        "negative_prompts": outcome.negative_prompts,
        "infotexts": outcome.infotexts,
        "images": saved,
        "extra_images": len(outcome.extra_images),
        "model": model_info(model),
        "notes": list(outcome.notes),
        "interrupted": outcome.interrupted,
    }


def model_info(model: Any) -> dict:
    if model is None:
        return {}
    return {
        "name": model.info.name,
        "hash": model.info.short_hash,
        "sha256": model.info.sha256,
        "vae_name": model.vae_info.path.name if model.vae_info else None,
        "vae_hash": model.vae_info.short_hash if model.vae_info else None,
    }


def progress_reporter(job: "JobHandle", services: "Services", model: Any, preview_every: int, batch_offset: int,
                      batches: int, console: JobConsoleBar | None = None):
    """The engine's `on_step`: step and batch (counted over the whole job) and a live preview every
    `preview_every` steps (-1: at the end of each batch; 0: none); progress is saved to the store now and then,
    and shown on the job's console bar."""
    save_progress = services.worker.progress_saver(job)
    family = model.family.value

    def on_step(progress) -> None:
        at_end = progress.step == progress.total_steps
        wanted = preview_every > 0 and progress.step % preview_every == 0 or preview_every == -1 and at_end
        make_preview = None
        if wanted and progress.denoised is not None:
            make_preview = lambda: preview_png(progress.denoised, family)  # noqa: E731
        job.report_step(progress.step, progress.total_steps, batch_offset + progress.batch_index,
                        max(batches, batch_offset + progress.batch_count), make_preview)
        save_progress()
        if console is not None:
            console.show(job.progress)

    return on_step


PREVIEW_MAX_SIDE = 512
"""Live previews are drawn at the image's size up to this many pixels a side (the PNG is made at every preview)."""


def preview_png(denoised, family: str) -> bytes:
    """A live preview: the cheap latent approximation (one pixel per latent pixel, 1/8 of the image's size),
    scaled smoothly to the image's size; a browser scaling an 8x8 preview up draws it as blocks."""
    from PIL import Image

    from sdwebui.core.latent_preview import latent_preview

    image = Image.fromarray(latent_preview(denoised[0], family))
    return _preview_png(image, (image.width * 8, image.height * 8))


def decoded_preview_png(image) -> bytes:
    """A batch's first decoded image as the job's last preview (the full decode, not the approximation)."""
    return _preview_png(image.convert("RGB"), image.size)


def _preview_png(image, size: tuple[int, int]) -> bytes:
    from PIL import Image

    fit = min(1.0, PREVIEW_MAX_SIDE / max(size))
    size = (max(1, round(size[0] * fit)), max(1, round(size[1] * fit)))
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class ImageSaver:
    """Saves each batch as soon as it is decoded (as A1111 does: a job stopped later, or a server that dies,
    keeps the images already made) and records it in the history."""

    def __init__(self, services: "Services", job: "JobHandle", output: OutputOptions):
        self.services = services
        self.job = job
        self.output = output
        self.saved: list[dict] = []

    def save(self, batch, model) -> None:

        for image, infotext in zip(batch.images, batch.infotexts):
            image.info["parameters"] = infotext  # the PNGs a client gets carry the infotext, as A1111's do
        if not self.output.save:
            return
        params = batch.params
        prompts = batch.prompts or [params.prompt] * len(batch.images)
        filename_fields = self._filename_fields(params, model)
        outputs = self.services.paths.outputs_dir
        for index, (image, seed, infotext, prompt) in enumerate(zip(batch.images, batch.seeds, batch.infotexts,
                                                                    prompts)):
            fields = {**filename_fields, "prompt": prompt}
            # A1111's order, each copy numbered in turn: the "before" copies, the image, then its masks.
            for copy in batch.intermediates:
                if copy.before:
                    self._write_copy(copy.images[index], copy.suffix, seed, infotext, fields)
            path = self.services.write_image(image, outputs / self.output.folder, seed=seed, infotext=infotext,
                                             date_subdir=self.output.date_subdir,
                                             pattern=self.output.filename_pattern, fields=fields)
            for copy in batch.intermediates:
                if not copy.before:
                    self._write_copy(copy.images[index], copy.suffix, seed, infotext, fields)
            relative = _relative_to(path, outputs)
            image_id = record_image(
                self.services, self.job, path=relative, seed=seed, prompt=prompt,
                negative_prompt=params.negative_prompt, infotext=infotext, params=params.to_dict(),
                model_name=model.info.name, model_hash=model.info.short_hash, width=image.width, height=image.height,
            )
            self.saved.append({"id": image_id, "path": relative})

    def save_copies(self, suffix: str, batch, model) -> None:
        """Save intermediate copies that come before their batch is finished (hires fix's first pass), each named
        `<number>-<pattern><suffix>.png` and carrying its infotext."""
        if not self.output.save:
            return
        prompts = batch.prompts or [batch.params.prompt] * len(batch.images)
        fields = self._filename_fields(batch.params, model)
        for image, seed, infotext, prompt in zip(batch.images, batch.seeds, batch.infotexts, prompts):
            self._write_copy(image, suffix, seed, infotext, {**fields, "prompt": prompt})

    def _write_copy(self, image, suffix: str, seed: int, infotext: str, fields: dict) -> None:
        # Written (through `write_image`, so a Ray worker's copies land on the API node too) but neither returned
        # nor recorded in the history: A1111 does not return them, and a history record would list the copy as
        # one of the job's images (the gallery, /api/v1/images) beside the image it is a step towards.
        self.services.write_image(image, self.services.paths.outputs_dir / self.output.folder, seed=seed,
                                  infotext=infotext, date_subdir=self.output.date_subdir,
                                  pattern=self.output.filename_pattern, fields=fields, suffix=suffix)

    @staticmethod
    def _filename_fields(params, model) -> dict:
        return {
            "negative_prompt": params.negative_prompt, "steps": params.steps, "cfg_scale": params.cfg_scale,
            "width": params.width, "height": params.height, "sampler": params.sampler, "scheduler": params.scheduler,
            "clip_skip": params.clip_skip, "model_name": model.info.name, "model_hash": model.info.short_hash,
        }


def record_image(services: "Services", job: "JobHandle", **record) -> int | None:
    """Record a saved image in the history; its id, or None when the store cannot take it now (another process
    holds the database's lock past the wait, a full disk): the record then waits in memory and is written with
    the job's outcome, which the worker retries until the store takes it. Once the store has failed a job, its
    later images wait too rather than each waiting on the store again."""
    if not job.unrecorded_images and not job.defer_image_records:
        try:
            return services.store.add_image(job_id=job.id, **record)
        except StoreUnavailable as error:
            log.warning("job %s: the image %s is saved but cannot be recorded now (%s); it will be recorded with "
                        "the job", job.id, record["path"], error.reason)
    job.unrecorded_images.append({**record, "created": time.time()})
    return None


def _relative_to(path, root) -> str:
    """The history's path of a saved file: relative to the outputs folder, or absolute for the CLI's `--out`."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def run_extras(job: "JobHandle", services: "Services") -> dict:
    """Upscale each image (the job stops between images when interrupted), then save and record them."""
    from sdwebui.pipelines.extras import run_extras as upscale
    from sdwebui.pipelines.upscale import TileOptions

    payload: ExtrasPayload = job.payload
    tiles = TileOptions(payload.tile, payload.tile_overlap)
    stop = job.stop
    images, infotexts, notes, captions = [], [], [], []
    total = len(payload.images)
    for index, data in enumerate(payload.images):
        if stop.interrupted.is_set():
            job.interrupted = True
            break
        result = upscale(decode_png(data), payload.params, services.upscalers, tiles=tiles,
                         should_stop=stop.interrupted.is_set,
                         faces=services.face_restoration if payload.params.restores_faces else None)
        parameters = payload.infotexts[index] if index < len(payload.infotexts) else None
        if parameters:
            result.image.info["parameters"] = parameters  # A1111 keeps the generation infotext
        if result.info:
            result.image.info["postprocessing"] = result.infotext
        images.append(result.image)
        infotexts.append(result.infotext)
        captions.append(", ".join(text for text in (caption_image(services, result.image, CAPTIONERS[name])
                                                    for name in payload.params.caption) if text))
        notes.extend(note for note in result.notes if note not in notes)
        job.report_step(index + 1, total, 0, 1, None)
    job.images = images
    saved: list[dict] = []
    if payload.output.save and images:
        outputs = services.paths.outputs_dir
        options = services.options.all()
        for index, (image, info) in enumerate(zip(images, infotexts)):
            # The saved PNG keeps the generation infotext it came with (as A1111's extras do); the history records
            # that, or the upscaling's infotext for a picture without one.
            original = image.info.get("parameters") or ""
            name = payload.names[index] if index < len(payload.names) else ""
            path = services.write_image(image, outputs / payload.output.folder, seed=0, infotext=original, pattern="",
                                        date_subdir=payload.output.date_subdir,
                                        extra_text={"postprocessing": info} if info else None,
                                        filename=name if options["use_original_name_batch"] else "",
                                        caption=captions[index],
                                        caption_action=options["postprocessing_existing_caption_action"])
            relative = _relative_to(path, outputs)
            image_id = record_image(services, job, path=relative, infotext=original or info,
                                    params=payload.to_json()["params"], width=image.width, height=image.height)
            saved.append({"id": image_id, "path": relative})
    return {"infotexts": infotexts, "sizes": [list(image.size) for image in images], "images": saved, "notes": notes,
            **({"captions": captions} if payload.params.caption else {})}


def run_load_model(job: "JobHandle", services: "Services") -> dict:
    model = services.models.get(job.payload.checkpoint, vae=job.payload.vae)
    return {"model": {"name": model.info.name, "hash": model.info.short_hash}}


RUNNERS = {"txt2img": run_generation, "img2img": run_generation, "extras": run_extras, "load_model": run_load_model,
           "merge": run_merge_job, "convert": run_tool_job, "extract_lora": run_tool_job, "bake_lora": run_tool_job,
           "create_embedding": run_training_job, "train_embedding": run_training_job,
           "train_hypernetwork": run_training_job, "train_lora": run_training_job}


__all__ = ["run_generation", "run_extras", "run_load_model", "RUNNERS", "ImageSaver", "generation_result"]
