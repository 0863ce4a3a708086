"""The generation service: the one way work gets queued and followed, for the native API, the A1111 API, the UI
and the CLI alike.

    request = GenerationRequest("txt2img", {"prompt": "a cat", "steps": 20}, styles=("Framed",))
    job = services.generation.submit(request)      # checked and queued, or ParamError / QueueFull
    services.generation.wait_sync(job); job.result, job.images

A `GenerationRequest` holds what a client asked for, in the engine's parameter names (`pipelines.params`); what it
leaves out comes from the settings (the job's `overrides` first), then the parameter's default; width and height
default to the checkpoint's native size. `prepare` resolves all of it into a typed `GenerationPayload` without
loading a model, so bad input fails before any work with a `ParamError` whose `loc` names the request field:
a parameter (`("steps",)`), `("checkpoint",)`, `("vae",)`, `("styles",)`, `("init_images", i)`, `("mask",)`,
`("override_settings", key)`, `("script_name",)`, `("script_args", i)`, `("alwayson_scripts", name, "args", i)`.
Each interface maps those to its own names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sdwebui.core.errors import ParamError
from sdwebui.core.upscale_modes import is_latent_mode
from sdwebui.pipelines.extras_params import CAPTIONERS, ExtrasParams
from sdwebui.pipelines.jobs import job_script
from sdwebui.pipelines.output import INTERMEDIATE_SETTINGS
from sdwebui.pipelines.params import (
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULER,
    MAX_SIDE,
    GenerationParams,
    param_specs,
    settings_defaults,
)
from sdwebui.pipelines.scripts import GenerationTask
from sdwebui.prompts.styles import StyleFileError, UnknownStyleError
from sdwebui.server.errors import FieldError
from sdwebui.server.interrogation import check_model
from sdwebui.server.options import OptionError, output_folder
from sdwebui.server.payloads import (
    PARAMS_TYPES,
    BatchEntry,
    ExtrasPayload,
    GenerationPayload,
    GridOptions,
    LoadModelPayload,
    OutputOptions,
    encode_png,
)
from sdwebui.server.queue import JobHandle, QueueFull

if TYPE_CHECKING:
    from PIL.Image import Image

    from sdwebui.server.services import Services

OUTDIR_OPTIONS = {"txt2img": ("outdir_txt2img_samples", "txt2img-images"),
                  "img2img": ("outdir_img2img_samples", "img2img-images")}
GRID_OUTDIR_OPTIONS = {"txt2img": ("outdir_txt2img_grids", "txt2img-grids"),
                       "img2img": ("outdir_img2img_grids", "img2img-grids")}
MAX_BATCH_FILES = 1000


@dataclass(frozen=True)
class GenerationRequest:
    """A txt2img or img2img job as a client asks for it (engine names; see the module docstring)."""

    kind: str
    values: Mapping[str, Any] = field(default_factory=dict)
    """Parameters the client gave; None means "not given" (the setting, then the default)."""
    styles: Sequence[str] = ()
    checkpoint: str | None = None
    """A checkpoint name, title, hash or (in its folder) path; None: `overrides`' or the current one."""
    vae: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Settings for this job only (A1111's `override_settings`), checked like `/options` values."""
    save_images: bool = True
    make_grid: bool = True
    """A grid of a job's images when it makes several (A1111's settings say whether it is returned and saved);
    False: none (A1111's `do_not_save_grid`)."""
    script_name: str | None = None
    script_args: Sequence[Any] = ()
    alwayson_scripts: Mapping[str, Any] = field(default_factory=dict)
    init_images: Sequence["Image"] = ()
    mask: "Image | None" = None
    batch: Sequence[tuple[str, "Image", "Image | None"]] = ()
    """img2img "Batch": (name, image, mask) per file of a folder on the server; each is a run of its own."""
    client: str = "native"
    task_id: str | None = None
    outdir: str | None = None
    """An output folder of the caller's choice: trusted callers only (the CLI's `--out`; the server refuses it)."""


@dataclass(frozen=True)
class ExtrasRequest:
    """Upscale images (A1111's extras); `params` are checked already, `images` are (loc, PIL image)."""

    params: ExtrasParams
    images: Sequence[tuple[tuple, "Image"]]
    names: Sequence[str] = ()
    save_images: bool = False
    client: str = "native"
    outdir: str | None = None
    """An output folder of the caller's choice: trusted callers only (the CLI's `--out`)."""


class GenerationService:
    def __init__(self, services: "Services"):
        self.services = services

    # ---- submitting -------------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> JobHandle:
        """Check and queue a generation job (ParamError before anything is queued; QueueFull when full)."""
        payload = self.prepare(request)
        return self.services.queue.submit(payload.kind, payload)

    def submit_extras(self, request: ExtrasRequest) -> JobHandle:
        return self.services.queue.submit("extras", self.prepare_extras(request))

    def load_model(self, checkpoint: str | None, vae: str | None = None) -> JobHandle:
        """Queue a checkpoint switch (done in queue order, so the next job finds the model ready)."""
        path = self._checkpoint_path(checkpoint, ("checkpoint",))
        return self.services.queue.submit("load_model", LoadModelPayload(str(path), vae or "Automatic"))

    def prepare(self, request: GenerationRequest) -> GenerationPayload:
        """The payload of a generation request, checked (see the module docstring); no model is loaded."""
        if request.kind not in PARAMS_TYPES:
            raise ParamError(("type",), f"unknown job type {request.kind!r}")
        services = self.services
        overrides = self._checked_overrides(request.overrides)
        options = {**services.options.all(), **overrides}
        if request.kind == "img2img" and "token_merging_ratio" in overrides and \
                "token_merging_ratio_img2img" not in overrides:
            options["token_merging_ratio_img2img"] = 0.0  # A1111: a request's own ratio wins over img2img's setting
        checkpoint = self._checkpoint_path(
            request.checkpoint or overrides.get("sd_model_checkpoint") or options.get("sd_model_checkpoint"),
            ("checkpoint",) if request.checkpoint or "sd_model_checkpoint" not in overrides
            else ("override_settings", "sd_model_checkpoint"),
        )
        params = self._params(request, options, str(checkpoint))
        self._check_face_restoration(params)
        vae = request.vae if request.vae is not None else options.get("sd_vae") or "Automatic"
        self._check_vae(vae, ("vae",) if request.vae is not None else ("override_settings", "sd_vae"))
        init_images, mask = self._checked_images(request, params)
        script, alwayson = services.scripts.check_calls(
            request.kind, request.script_name, request.script_args, request.alwayson_scripts)
        self._check_script_tasks(request.kind, params, script, alwayson, options, str(checkpoint))
        return GenerationPayload(
            params=params,
            checkpoint=str(checkpoint),
            vae=vae,
            output=self._output(request, options),
            grid=self._grid(request, options),
            nan_check=not options["disable_nan_check"],
            upscale_tile=(int(options["ESRGAN_tile"]), int(options["ESRGAN_tile_overlap"])),
            vae_tiling=(str(options["tiled_vae"]), int(options["tiled_vae_tile_size"]) // 8 * 8),
            preview_every=preview_period(options),
            script=script,
            alwayson_scripts=alwayson,
            init_images=tuple(encode_png(image) for image in init_images),
            mask=encode_png(mask) if mask is not None else None,
            batch=self._batch(request),
            styles=tuple(name for name in request.styles if name),
            client=request.client,
            task_id=request.task_id,
            hypernetwork=self._setting_hypernet(options),
            color_correction=request.kind == "img2img" and bool(options["img2img_color_correction"]),
        )

    def _setting_hypernet(self, options: Mapping[str, Any]) -> tuple[str, float] | None:
        """The `sd_hypernetwork` setting: (name, strength), or None for "None" or a name no file has (A1111 adds
        it only when `shared.hypernetworks` has it)."""
        name = str(options.get("sd_hypernetwork") or "None")
        if name == "None" or self.services.hypernetworks.find(name) is None:
            return None
        return name, float(options.get("sd_hypernetwork_strength", 1.0))

    def prepare_extras(self, request: ExtrasRequest) -> ExtrasPayload:
        """Check upscaler names and output sizes (ParamError naming the field or the image) and build the
        payload."""
        from sdwebui.models.upscalers import (
            UpscalerNotFoundError,  # spandrel and torch: not at start-up
        )

        params = request.params
        for name, value in (("upscaler_1", params.upscaler_1), ("upscaler_2", params.upscaler_2)):
            try:
                self.services.upscalers.find(value)
            except UpscalerNotFoundError as error:
                raise ParamError((name,), str(error.args[0])) from None
        self._check_extras_restorers(params)
        for captioner in params.caption:
            try:
                check_model(self.services, CAPTIONERS[captioner])
            except FieldError as error:
                raise ParamError(("caption",), f"{captioner}: {error.message}") from None
        options = self.services.options.all()
        for loc, image in request.images:
            width, height = params.output_size(image.width, image.height)
            if width * height > options["api_max_pixels"] or max(width, height) > MAX_SIDE:
                raise ParamError(loc, f"the result would be {width}x{height}, over this server's limit "
                                      f"(setting api_max_pixels, at most {MAX_SIDE} a side)")
            if width < 1 or height < 1:
                raise ParamError(("upscaling_resize",), f"the result would be {width}x{height}")
        parameters = [image.info.get("parameters") for _, image in request.images]
        return ExtrasPayload(
            params=params,
            images=tuple(encode_png(image) for _, image in request.images),
            names=tuple(request.names) or ("",) * len(request.images),
            infotexts=tuple(text if isinstance(text, str) else None for text in parameters),
            tile=int(options["ESRGAN_tile"]),
            tile_overlap=int(options["ESRGAN_tile_overlap"]),
            output=OutputOptions(
                save=request.save_images, date_subdir=bool(options["save_to_dirs"]) and request.outdir is None,
                folder=request.outdir or output_folder(self.services.paths.outputs_dir,
                                                       options["outdir_samples"] or "extras-images"),
                filename_pattern=""),
            client=request.client,
        )

    def _check_extras_restorers(self, params: ExtrasParams) -> None:
        """Extras' GFPGAN / CodeFormer visibility asks for that restorer: refused (naming the field and the
        folder to put it in) when it is not installed."""
        from sdwebui.models.face_restorers import install_hint  # torch: not at start-up

        installed = self.services.face_restorer_names()
        for field_name, name in (("gfpgan_visibility", "GFPGAN"), ("codeformer_visibility", "CodeFormer")):
            if getattr(params, field_name) > 0 and name not in installed:
                raise ParamError((field_name,), f"{name} is not installed: {install_hint(name)}")

    def _check_face_restoration(self, params: GenerationParams) -> None:
        """A job with `restore_faces` needs an installed restorer (the chosen one, or any: see
        `FaceRestoration.pick`)."""
        if not getattr(params, "restore_faces", False):
            return
        from sdwebui.models.face_restorers import codeformer_supported, install_hint  # torch: not at start-up

        if not self.services.face_restorer_names():
            wanted = params.face_restoration_model
            if wanted == "CodeFormer" and not codeformer_supported():
                wanted = "GFPGAN"  # the one that needs no optional extra
            raise ParamError(("restore_faces",), f"no face restoration model is installed: {install_hint(wanted)}")

    # ---- following and stopping ---------------------------------------------------------------------------
    def job(self, job_id: str) -> JobHandle | None:
        """A queued or running job (None once it has finished: `view` reads the store)."""
        return self.services.queue.get(job_id)

    def view(self, job_id: str) -> dict | None:
        """A job as the native API shows it: the stored record with live progress while it runs."""
        return self.services.job_view(job_id)

    def running(self) -> list[JobHandle]:
        return self.services.queue.running()

    def position(self, job_id: str) -> int | None:
        return self.services.queue.position(job_id)

    def progress(self, job_id: str) -> dict | None:
        """Step, steps, batch, fraction done and ETA of a running job; what was last saved of it otherwise."""
        view = self.view(job_id)
        return view["progress"] if view is not None else None

    def result(self, job_id: str) -> dict | None:
        """A finished job's result (seeds, infotexts, saved images, model, notes), from the store."""
        view = self.view(job_id)
        return view["result"] if view is not None else None

    def preview(self, job_id: str) -> bytes | None:
        handle = self.job(job_id)
        return handle.progress.preview_png if handle is not None else None

    def interrupt(self, job_id: str | None = None) -> bool:
        """Stop after the current step, keeping what was made (A1111's Interrupt); None: every running job."""
        handles = self.running() if job_id is None else [h for h in [self.job(job_id)] if h is not None]
        return any([handle.interrupt() for handle in handles])

    def skip(self, job_id: str | None = None) -> bool:
        """Abandon the current batch and go on with the next (A1111's Skip); None: every running job."""
        handles = self.running() if job_id is None else [h for h in [self.job(job_id)] if h is not None]
        return any([handle.skip() for handle in handles])

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job ("cancelled") or interrupt a running one ("interrupting"); None when it is
        neither (already finished, or unknown)."""
        if self.services.queue.cancel(job_id):
            return "cancelled"
        handle = self.job(job_id)
        if handle is not None and handle.interrupt():
            return "interrupting"
        return None

    # ---- the parts of `prepare` ------------------------------------------------------------------------------
    def _params(self, request: GenerationRequest, options: Mapping[str, Any], checkpoint: str) -> GenerationParams:
        from sdwebui.core.samplers import (  # the registry imports torch
            find_sampler,
            resolve_sampling,
        )

        cls = PARAMS_TYPES[request.kind]
        names = {spec.name for spec in param_specs(cls)}
        values = {key: value for key, value in request.values.items() if value is not None}
        for key in values:
            if key not in names:
                raise ParamError((key,), f"not a parameter of {request.kind} jobs")
        values["prompt"], values["negative_prompt"] = self._styled(
            request.styles, values.get("prompt", ""), values.get("negative_prompt", ""))
        for side in ("width", "height"):
            values.setdefault(side, self.services.native_size(checkpoint))
        # Stored as resolved (A1111's API does the same): "DPM++ 2M Karras" -> sampler "DPM++ 2M", schedule Karras.
        sampling = resolve_sampling(str(values.get("sampler", DEFAULT_SAMPLER)),
                                    str(values.get("scheduler") or DEFAULT_SCHEDULER))
        values["sampler"], values["scheduler"] = sampling.sampler.name, sampling.schedule_label
        values = {**settings_defaults(cls, values, options, find_sampler(sampling.sampler.name).options), **values}
        params = cls(**values)
        check_limits(params, options)
        return self._other_models(params)

    def _other_models(self, params: GenerationParams) -> GenerationParams:
        """The hires checkpoint and refiner as paths (A1111's "Use same checkpoint" / "None" mean none), the hires
        sampler as resolved, and the hires upscaler checked against what is installed."""
        from sdwebui.core.samplers import resolve_sampling  # torch

        changes: dict[str, Any] = {}
        for name in ("hr_checkpoint", "refiner_checkpoint"):
            value = getattr(params, name, None)
            if value in (None, "", "None", "Use same checkpoint"):
                if value is not None:
                    changes[name] = None
                continue
            changes[name] = str(self._checkpoint_path(value, (name,)))
        if getattr(params, "enable_hr", False):
            if params.hr_sampler is not None or params.hr_scheduler is not None:
                try:
                    sampling = resolve_sampling(params.hr_sampler or params.sampler,
                                                params.hr_scheduler or DEFAULT_SCHEDULER)
                except ParamError as error:
                    raise ParamError(("hr_scheduler" if error.field == "scheduler" else "hr_sampler",),
                                     error.message) from None
                if params.hr_sampler is not None:
                    changes["hr_sampler"] = sampling.sampler.name
            if not is_latent_mode(params.hr_upscaler):
                try:
                    self.services.upscalers.find(params.hr_upscaler)
                except LookupError as error:
                    raise ParamError(("hr_upscaler",), str(error.args[0])) from None
        return params.replace(**changes) if changes else params

    def _styled(self, styles: Sequence[str], prompt: str, negative_prompt: str) -> tuple[str, str]:
        """The prompts with the request's styles applied (A1111 applies them before generating, so the infotext
        carries the styled text); an unknown style is a ParamError on `styles`."""

        names = [name for name in styles if name]
        if not names:
            return prompt, negative_prompt
        try:
            return self.services.styles().apply(prompt, negative_prompt, names)
        except (UnknownStyleError, StyleFileError) as error:
            raise ParamError(("styles",), str(error)) from None

    def _checked_overrides(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        try:
            accepted, _ = self.services.options.validate(overrides, from_api=True)
        except OptionError as error:
            raise ParamError(("override_settings", error.key), error.message) from None
        return accepted

    def _checkpoint_path(self, name: str | None, loc: tuple):
        try:
            return self.services.resolve_checkpoint(name)
        except LookupError as error:
            raise ParamError(loc, _message(error)) from None

    def _check_vae(self, name: str, loc: tuple) -> None:
        try:
            self.services.resolve_vae(name)
        except LookupError as error:
            raise ParamError(loc, _message(error)) from None

    def _checked_images(self, request: GenerationRequest, params: GenerationParams):
        init_images, mask = list(request.init_images), request.mask
        if request.kind != "img2img":
            if init_images or mask is not None:
                raise ParamError(("init_images",), "txt2img jobs take no images")
            return [], None
        if not init_images and not request.batch:
            raise ParamError(("init_images",), "at least one init image is needed")
        if len(init_images) > 1 and len(init_images) > params.batch_size:
            raise ParamError(("init_images",), f"{len(init_images)} init images for a batch size of "
                             f"{params.batch_size}; give one image, or at most batch size images")
        if mask is not None and init_images and mask.size != init_images[0].size:
            raise ParamError(("mask",), f"the mask is {mask.width}x{mask.height}, the init image "
                             f"{init_images[0].width}x{init_images[0].height}; they must be the same size")
        return init_images, mask

    def _batch(self, request: GenerationRequest) -> tuple[BatchEntry, ...]:
        if len(request.batch) > MAX_BATCH_FILES:
            raise ParamError(("batch",), f"{len(request.batch)} images, more than {MAX_BATCH_FILES} in one job")
        return tuple(BatchEntry(name, encode_png(image), encode_png(mask) if mask is not None else None)
                     for name, image, mask in request.batch)

    def _check_script_tasks(self, kind, params, script, alwayson, options, checkpoint: str | None = None) -> None:
        """Expand the job through its scripts now, so a script's bad arguments (a prompts-from-file line with a
        bad value, an X/Y/Z value) and the checkpoints they name fail the request, not the job later."""
        if script is None and not alwayson:
            return
        bound = self.services.scripts.bind(kind, script, alwayson)
        try:
            tasks = bound.expand(GenerationTask(params))
        except ParamError as error:
            # a script may name the job's prompt itself (dynamic prompts: a wildcard it names has no file)
            named = error.loc[:1] in (("script_args",), ("alwayson_scripts",), ("prompt",), ("negative_prompt",))
            raise error if named else error.under("script_args")
        for task in tasks:
            task = self.resolve_task(task)
            try:
                check_limits(task.params, options)
                self._check_face_restoration(task.params)
            except ParamError as error:
                raise ParamError(task.arg_locs.get(error.field, ("script_args",)),
                                 f"{task.label}: {error.message}" if task.label else error.message) from None
            # scripts that can tell from the files that their arguments do not fit the task's checkpoint
            path = str(self._checkpoint_path(task.checkpoint, ("script_args",))) if task.checkpoint else checkpoint
            if path:
                for bound_script, bound_args in bound.bound:
                    check = getattr(bound_script, "check_checkpoint", None)  # an extension's script may lack it
                    if check is not None:
                        check(bound_args, path)
        driver = job_script(bound)
        if driver is not None:  # e.g. SD upscale's upscaler must be installed
            driver[0].check(tasks[0], driver[1], self.services)

    def resolve_task(self, task: GenerationTask) -> GenerationTask:
        """A task a script made, with the names only the server can resolve checked and resolved: its checkpoint
        and VAE (installed ones only), its extra styles applied to its prompts, and its hires / refiner
        checkpoint, hires sampler and upscaler as `prepare` resolves the job's. A ParamError names the script
        argument that gave the name (`task.arg_locs`), else `script_args`. The job runner resolves each task
        again when it runs (the stored job keeps the names, as the request gave them)."""
        locs = task.arg_locs

        def loc(name: str) -> tuple:
            return tuple(locs.get(name, ("script_args",)))

        def named(error: ParamError, name: str) -> ParamError:
            return ParamError(loc(name), f"{task.label}: {error.message}" if task.label else error.message)

        params = task.params
        if task.checkpoint:
            try:
                self._checkpoint_path(task.checkpoint, loc("checkpoint"))
            except ParamError as error:
                raise named(error, "checkpoint") from None
        if task.vae is not None:
            try:
                self._check_vae(task.vae, loc("vae"))
            except ParamError as error:
                raise named(error, "vae") from None
        if task.styles:
            try:
                prompt, negative = self._styled(task.styles, params.prompt, params.negative_prompt)
            except ParamError as error:
                raise named(error, "styles") from None
            params = params.replace(prompt=prompt, negative_prompt=negative)
        upscaler = getattr(params, "hr_upscaler", None)
        if "hr_upscaler" in locs and not is_latent_mode(upscaler):
            try:  # checked even without hires fix: the axis named it
                self.services.upscalers.find(upscaler)
            except LookupError as error:
                raise ParamError(loc("hr_upscaler"), f"{task.label}: {_message(error)}") from None
        try:
            params = self._other_models(params)
        except ParamError as error:
            raise named(error, error.field) from None
        return replace(task, params=params)

    def _grid(self, request: GenerationRequest, options: Mapping[str, Any]) -> GridOptions:
        setting, default = GRID_OUTDIR_OPTIONS[request.kind]
        save = bool(options["grid_save"]) and request.save_images  # a job that saves nothing saves no grid
        return GridOptions(
            make=request.make_grid, return_grid=bool(options["return_grid"]), save=save,
            only_if_multiple=bool(options["grid_only_if_multiple"]), n_rows=int(options["n_rows"]),
            prevent_empty_spots=bool(options["grid_prevent_empty_spots"]),
            # A1111's grid_extended_filename: grid-0000-<the images' pattern>.png
            filename_pattern=str(options["samples_filename_pattern"] or "[seed]")
            if options["grid_extended_filename"] else "",
            folder=request.outdir or output_folder(self.services.paths.outputs_dir,
                                                   options["outdir_grids"] or options[setting] or default),
        )

    def _output(self, request: GenerationRequest, options: Mapping[str, Any]) -> OutputOptions:
        if request.outdir is not None:
            folder, date_subdir = request.outdir, False
        else:
            setting, default = OUTDIR_OPTIONS[request.kind]
            folder = output_folder(self.services.paths.outputs_dir,
                                   options["outdir_samples"] or options[setting] or default)
            date_subdir = bool(options["save_to_dirs"])
        # A1111 saves these copies only beside images it saves (`p.save_samples()`).
        intermediates = tuple(suffix for key, suffix in INTERMEDIATE_SETTINGS.items() if options[key])
        return OutputOptions(save=request.save_images, folder=folder, date_subdir=date_subdir,
                             filename_pattern=str(options["samples_filename_pattern"] or "[seed]"),
                             intermediates=intermediates if request.save_images else ())


def check_limits(params: GenerationParams, options: Mapping[str, Any]) -> None:
    """The server's own limits (settings `api_max_*`), on top of what the parameters allow."""
    pixels = params.width * params.height * params.batch_size
    if pixels > options["api_max_pixels"]:
        raise ParamError("width", f"width x height x batch size = {pixels} pixels is over this server's limit of "
                                  f"{options['api_max_pixels']} (setting api_max_pixels)")
    if params.image_count > options["api_max_images"]:
        raise ParamError("batch_count", f"batch size x batch count = {params.image_count} images is over this "
                                        f"server's limit of {options['api_max_images']} (setting api_max_images)")
    if params.steps > options["api_max_steps"]:
        raise ParamError("steps", f"{params.steps} steps is over this server's limit of {options['api_max_steps']}")
    if getattr(params, "enable_hr", False):
        width, height = params.hires_size
        if width * height * params.batch_size > options["api_max_pixels"]:
            raise ParamError("hr_scale", f"the hires size {width}x{height} x batch size is over this server's limit "
                                         f"of {options['api_max_pixels']} pixels (setting api_max_pixels)")
        if params.hires_steps > options["api_max_steps"]:
            raise ParamError("hr_second_pass_steps", f"{params.hires_steps} steps is over this server's limit")


def preview_period(options: Mapping[str, Any]) -> int:
    return int(options["show_progress_every_n_steps"]) if options["live_previews_enable"] else 0


def _message(error: Exception) -> str:
    return str(error.args[0]) if error.args else str(error)


__all__ = [
    # The service and what its callers need to use it (the UI and the CLI import these, not the queue).
    "GenerationService", "GenerationRequest", "ExtrasRequest", "JobHandle", "QueueFull", "PARAMS_TYPES",
    "check_limits", "preview_period",
]
