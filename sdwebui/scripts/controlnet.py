"""ControlNet, as the sd-webui-controlnet extension (v1.1.455) runs in A1111: an always-on script named
"controlnet" whose arguments are its units (`alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`, each unit
an object with the extension's field names: `pipelines.controlnet_units`).

- before the job: the units are checked (an enabled txt2img unit needs an image; img2img falls back to the init
  image with img2img's resize mode, as the extension does);
- around every UNet call: each enabled unit's model acts (`pipelines.controlnet_apply`), in the same batch as the
  CFG pass: a ControlNet adds its residuals, a T2I-Adapter its features, an IP-Adapter its image attention. What
  the model is comes from its weights, as the extension decides it; it is loaded from `models/ControlNet` (and
  `--controlnet-dir`) once and kept while units use it, on the checkpoint's device and dtype; a model for another
  family is refused with the reason before the first step. IP-Adapter units take their CLIP image encoder from
  `models/clip_vision/` (or the extension's `models/ControlNetAnnotators/clip_vision/`), by the module's kind;
- after each batch: the infotext gets `ControlNet 0: "Module: canny, Model: name [hash], Weight: 1.0, ..."` for
  each enabled unit, numbered among the enabled ones, as the extension writes it.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdwebui.core.errors import ParamError
from sdwebui.models.controlnet_files import ControlNetLibrary, checkpoint_target, control_model_target, mismatch
from sdwebui.pipelines.controlnet_units import (
    CONTROL_MODES,
    RESIZE_MODES,
    UNIT_COUNT,
    WEIGHTS_DIR,
    ControlNetUnitArg,
    check_unit,
    decode_image,
    find_preprocessor,
    module_list,
    serialize_unit,
)
from sdwebui.pipelines.img2img_params import Img2ImgParams
from sdwebui.pipelines.scripts import GenerationTask, Script

KEEP_JOBS = 8
"""Jobs whose hook state is kept (a job that failed never reaches `after_job`)."""
KEEP_LOADED = 2
"""ControlNet models kept in memory between jobs (the extension's `control_net_model_cache_size` default is 2)."""


class _JobState:
    """What the hooks of one job share: the task being run (its init image, its seed)."""

    def __init__(self):
        self.task: GenerationTask | None = None
        self.seed = 0
        self.image_seed = 0
        """The batch's first image seed (reference units' noise: the same seed gives the same image)."""
        self.units: list = []
        """The units of the last UNet call wrapped (`ActiveUnit`s): recolor units give their map to `after_batch`."""


class ControlNet(Script):
    title = "ControlNet"
    alwayson = True
    description = "Guide the image with control maps (edges, lines, colour) through ControlNet models."

    def __init__(self, folders: Any = (), clip_vision_folders: Any = None):
        self.library = folders if isinstance(folders, ControlNetLibrary) else ControlNetLibrary(folders)
        if clip_vision_folders is None:  # beside models/ControlNet: models/clip_vision, the extension's downloads
            models = [folder.parent for folder in self.library.folders[:1]]
            clip_vision_folders = [path for root in models
                                   for path in (root / "clip_vision", root / WEIGHTS_DIR / "clip_vision")]
        self.clip_vision_folders = tuple(Path(folder) for folder in clip_vision_folders)
        roots = [folder.parent for folder in self.library.folders[:1]]
        self.annotators = roots[0] / WEIGHTS_DIR if roots else None
        """`models/ControlNetAnnotators`: the weighted preprocessors' weights (depth_midas, depth_anything)."""
        self.args = tuple(ControlNetUnitArg(f"ControlNet Unit {index}", model_exists=self.library.exists,
                                            annotators=self.annotators)
                          for index in range(UNIT_COUNT))
        self._loaded: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._jobs: dict[int, _JobState] = {}

    def _loc(self, index: int, field: str) -> tuple:
        return ("alwayson_scripts", self.name, "args", index, field)

    # ---- the job ---------------------------------------------------------------------------------------------
    def before_job(self, task: GenerationTask, args: tuple) -> list[GenerationTask]:
        for index, unit in enumerate(args):
            if unit["enabled"] and unit["image"] is None and not isinstance(task.params, Img2ImgParams):
                raise ParamError(self._loc(index, "image"), "controlnet is enabled but no input image is given")
        return [task]

    def check_checkpoint(self, args: tuple, checkpoint: str) -> None:
        """Before queueing: a unit whose model file (safetensors header, diffusers config) says it is for another
        family than the checkpoint's is a 422 on its `model` (pickled files are checked when the job loads them)."""
        target = None
        for index, unit in enumerate(args):
            if not unit["enabled"] or find_preprocessor(unit["module"]).model_free:
                continue
            entry = self.library.find(unit["model"])
            model = control_model_target(Path(entry.path)) if entry is not None else None
            if model is None:
                continue
            target = target or checkpoint_target(Path(checkpoint))
            if target is None:
                return
            why = mismatch(model, entry.path.name, target)
            if why is not None:
                raise ParamError(self._loc(index, "model"), why)

    def before_batch(self, batch, args: tuple) -> None:
        if not any(unit["enabled"] for unit in args):
            return
        state = self._state(args)
        state.task = getattr(batch, "task", None) or state.task
        # the extension's set_numpy_seed: (seed + subseed) of the job, for the shuffle preprocessor
        state.seed = (max(int(batch.seeds[0]), 0) + max(int(batch.subseeds[0]), 0)) & 0xFFFFFFFF
        state.image_seed = int(batch.seeds[0]) & 0xFFFFFFFF

    def wrap_model_call(self, model, call, args: tuple):
        enabled = [index for index, unit in enumerate(args)
                   if unit["enabled"] and unit["weight"] > 0 and unit["guidance_start"] < unit["guidance_end"]]
        if not enabled:  # nothing to add: the UNet call as it is (bit-identical images)
            return call
        from sdwebui.pipelines.controlnet_apply import ActiveUnit, controlnet_call  # torch, OpenCV

        state = self._state(args)

        def in_hires(height: int, width: int) -> bool:  # txt2img's second pass runs at another size
            params = state.task.params if state.task is not None else None
            return bool(getattr(params, "enable_hr", False)) and not isinstance(params, Img2ImgParams) \
                and (height, width) != (params.height, params.width)

        units = []
        for index, unit in enumerate(args):
            if index not in enabled:
                continue
            loaded = None if find_preprocessor(unit["module"]).model_free else self._controlnet(model, index, unit)
            units.append(ActiveUnit(unit, loaded, self._source(state, index, unit), seed=lambda: state.seed,
                                    in_hires=in_hires, encoder=self._encoder_for(model, index, unit, loaded),
                                    encode=lambda image: encode_reference(model, image),
                                    reference_seed=lambda: state.image_seed, annotators=self.annotators,
                                    placement=getattr(model, "placement", None)))
        state.units = units
        return controlnet_call(call, units, model.dtype, model.unet, model.alphas_cumprod)

    def after_batch(self, batch, args: tuple) -> None:
        self._recolor(batch, args)
        enabled = [unit for unit in args if unit["enabled"]]
        for number, unit in enumerate(enabled):
            entry = self.library.find(unit["model"])
            batch.infotext[f"ControlNet {number}"] = serialize_unit(unit, entry.title if entry else None)

    def _recolor(self, batch, args: tuple) -> None:
        """Recolor units (the extension's post-processing): each image's lightness (recolor_luminance) or value
        (recolor_intensity) becomes the unit's map at the image's size, so the result keeps the input's tones."""
        if not any(unit["enabled"] and "recolor" in unit["module"] for unit in args):
            return
        from sdwebui.pipelines.controlnet_preprocess import RECOLOR_SPACES, recolor_image  # OpenCV

        for unit in self._state(args).units:
            module = find_preprocessor(unit.unit["module"]).name
            if module not in RECOLOR_SPACES:
                continue
            for index, image in enumerate(batch.images):
                control_map = unit.control_map(image.height, image.width)
                batch.images[index] = Image.fromarray(recolor_image(np.asarray(image.convert("RGB")), control_map,
                                                                    module))

    def after_job(self, outcome, args: tuple) -> None:
        with self._lock:
            self._jobs.pop(id(args), None)

    def _state(self, args: tuple) -> _JobState:
        """The job's shared state (by its arguments' identity: one tuple per bound job). A job that failed never
        reached `after_job`: only the last few are kept."""
        with self._lock:
            state = self._jobs.get(id(args))
            if state is None:
                state = self._jobs[id(args)] = _JobState()
                while len(self._jobs) > KEEP_JOBS:
                    self._jobs.pop(next(iter(self._jobs)))
            return state

    # ---- the web UI -------------------------------------------------------------------------------------------
    def build_ui(self, ui) -> list:
        """The extension's accordion: a tab per unit with its image, Enable / Pixel Perfect / Allow Preview, the
        preprocessor (with Run preprocessor to preview its map) and model (with refresh), weight, start / end, the
        preprocessor's sliders, control mode and resize mode. Each unit's controls are gathered into one hidden
        value (the unit as JSON, image as base64), which is the job's `alwayson_scripts.controlnet.args[i]`."""
        import gradio as gr  # the web UI only

        values = []
        with gr.Tabs(elem_id=ui.elem_id("units")):
            for index in range(UNIT_COUNT):
                with gr.Tab(f"ControlNet Unit {index}", elem_id=ui.elem_id(f"unit_{index}")):
                    values.append(self._unit_ui(gr, ui, index))
        return values

    def _unit_ui(self, gr, ui, index: int):
        def eid(name: str) -> str:
            return ui.elem_id(f"{index}_{name}")

        with gr.Row():
            image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"], elem_id=eid("image"),
                             height=256)
            preview = gr.Image(type="pil", label="Preprocessor Preview", interactive=False, visible=False,
                               elem_id=eid("preview"), height=256)
        with gr.Row():
            enabled = gr.Checkbox(label="Enable", value=False, elem_id=eid("enable"))
            pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False, elem_id=eid("pixel_perfect"))
            allow_preview = gr.Checkbox(label="Allow Preview", value=False, elem_id=eid("allow_preview"))
        with gr.Row():
            module = gr.Dropdown(module_list(), value="none", label="Preprocessor", elem_id=eid("module"))
            run_preview = gr.Button("Run preprocessor", elem_id=eid("run_preprocessor"), size="sm", scale=0)
            model = gr.Dropdown(["None", *self.library.titles()], value="None", label="Model",
                                elem_id=eid("model"), allow_custom_value=True)
            refresh = ui.icon_button("refresh", "Refresh models", f"{index}_refresh_models", scale=0, min_width=40)
        weight = gr.Slider(0.0, 2.0, 1.0, step=0.05, label="Control Weight", elem_id=eid("weight"))
        with gr.Row():
            start = gr.Slider(0.0, 1.0, 0.0, step=0.01, label="Starting Control Step", elem_id=eid("start"))
            end = gr.Slider(0.0, 1.0, 1.0, step=0.01, label="Ending Control Step", elem_id=eid("end"))
        resolution = gr.Slider(64, 2048, 512, step=8, label="Preprocessor Resolution", visible=False,
                               elem_id=eid("processor_res"))
        threshold_a = gr.Slider(0, 255, 100, label="Threshold A", visible=False, elem_id=eid("threshold_a"))
        threshold_b = gr.Slider(0, 255, 200, label="Threshold B", visible=False, elem_id=eid("threshold_b"))
        control_mode = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control Mode",
                                elem_id=eid("control_mode"))
        resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[1], label="Resize Mode",
                               elem_id=eid("resize_mode"))
        value = gr.Textbox(value="", visible=False, elem_id=eid("unit"))

        inputs = [enabled, image, module, model, weight, start, end, control_mode, resize_mode, pixel_perfect,
                  resolution, threshold_a, threshold_b]
        for control in inputs:
            control.change(unit_json, inputs, value, show_progress="hidden", queue=False)
        module.change(slider_updates, [module, resolution, threshold_a, threshold_b],
                      [resolution, threshold_a, threshold_b], show_progress="hidden", queue=False)
        # a pasted infotext (`ControlNet N: "Module: ..."`) sets the unit's value: show it in the controls
        shown = [enabled, module, model, weight, start, end, control_mode, resize_mode, pixel_perfect, resolution,
                 threshold_a, threshold_b]
        value.change(controls_from_unit, value, shown, show_progress="hidden", queue=False)
        allow_preview.change(lambda shown: gr.update(visible=bool(shown)), allow_preview, preview,
                             show_progress="hidden", queue=False)
        run_preview.click(functools.partial(preview_map, annotators=self.annotators),
                          [image, module, resolution, threshold_a, threshold_b], preview) \
            .then(lambda: gr.update(visible=True), None, preview, queue=False)
        refresh.click(lambda: gr.update(choices=["None", *self.library.titles()]), None, model, queue=False)
        return value

    # ---- inputs and models ------------------------------------------------------------------------------------
    def _source(self, state: _JobState, index: int, unit: dict):
        """A callable giving (the unit's input image as uint8 RGB, its resize mode), read when the first step
        needs it (an img2img unit without an image takes the task's init image then)."""
        from sdwebui.pipelines.controlnet_preprocess import as_array  # OpenCV

        if unit["image"] is not None:
            image = decode_image(unit["image"])
            mask = decode_image(unit["mask"]) if unit["mask"] is not None else None
            if mask is not None and find_preprocessor(unit["module"]).clip is not None:
                # IP-Adapter: the mask rides along as alpha (the extension's CLIP mask), not as the input
                rgb = as_array(image)
                alpha = np.asarray(mask.convert("L").resize((rgb.shape[1], rgb.shape[0])))
                array = np.dstack([rgb, alpha])
            else:
                array = as_array(image, mask)
            return lambda: (array, unit["resize_mode"])

        def from_task():
            task = state.task
            if task is None or not task.init_images:
                raise ParamError(self._loc(index, "image"), "controlnet is enabled but no input image is given")
            params = task.params
            mode = RESIZE_MODES[min(int(getattr(params, "resize_mode", 0)), 3) % 3]
            return as_array(task.init_images[0]), mode

        return from_task

    def _controlnet(self, model, index: int, unit: dict):
        from sdwebui.models.controlnet import check_model_compatible, load_control_model  # torch, diffusers
        from sdwebui.models.files import ModelFileError
        from sdwebui.models.ip_adapter import LoadedIPAdapter

        entry = self.library.find(unit["model"])
        if entry is None:
            raise ParamError(self._loc(index, "model"), f"model({unit['model']}) not found in supported models.")
        path = Path(entry.path)
        stamp = path.stat().st_mtime_ns
        device = _home_device(model)
        key = (str(path), stamp, str(device), str(model.dtype), id(model.unet))
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                self._loaded.move_to_end(key)
        if loaded is None:
            try:
                loaded = load_control_model(path, device=device, dtype=model.dtype, unet_config=model.unet.config,
                                            unet=model.unet)
            except ModelFileError as error:
                raise ParamError(self._loc(index, "model"), str(error)) from None
            with self._lock:
                self._loaded[key] = loaded
                while len(self._loaded) > KEEP_LOADED:
                    self._loaded.popitem(last=False)
        why = check_model_compatible(loaded, model.unet, model.family.spec.title)
        if why is not None:
            raise ParamError(self._loc(index, "model"), why)
        ip_module = find_preprocessor(unit["module"]).clip is not None
        if isinstance(loaded, LoadedIPAdapter) != ip_module:
            raise ParamError(self._loc(index, "module"), (
                f"{entry.name} is an IP-Adapter: it takes an ip-adapter_clip_* module, not {unit['module']}"
                if not ip_module else
                f"the {unit['module']} module is for IP-Adapter models; {entry.name} is not one"))
        return loaded

    def _encoder_for(self, model, index: int, unit: dict, loaded):
        """IP-Adapter units: a callable giving the CLIP image encoder the unit's module names (loaded when the
        first step needs it, kept like the models), checked against what the adapter's projection takes."""
        from sdwebui.models.ip_adapter import LoadedIPAdapter, find_clip_vision, load_clip_vision

        if not isinstance(loaded, LoadedIPAdapter):
            return None
        kind = find_preprocessor(unit["module"]).clip
        if kind == "auto":  # the extension's ip-adapter-auto: by the model's name
            name = loaded.path.name.lower()
            kind = "clip_g" if "sdxl" in name and "vit-h" not in name and "vith" not in name else "clip_h"
        path = find_clip_vision(self.clip_vision_folders, kind)
        if path is None:
            where = " or ".join(str(folder) for folder in self.clip_vision_folders) or "models/clip_vision"
            vit = "ViT-H" if kind == "clip_h" else "ViT-bigG"
            raise ParamError(self._loc(index, "module"), (
                f"the {unit['module']} module needs the {kind} CLIP image encoder ({vit}), which was not found in "
                f"{where} (as {kind}.pth / .safetensors, or a folder with config.json; sdwebui does not download it)"))

        def encoder():
            from sdwebui.models.files import ModelFileError

            device = _home_device(model)
            key = ("clip_vision", str(path), path.stat().st_mtime_ns, str(device), str(model.dtype))
            with self._lock:
                found = self._loaded.get(key)
            if found is None:
                try:
                    found = load_clip_vision(path, device=device, dtype=model.dtype)
                except ModelFileError as error:
                    raise ParamError(self._loc(index, "module"), str(error)) from None
                with self._lock:
                    self._loaded[key] = found
                    while len(self._loaded) > KEEP_LOADED + 1:
                        self._loaded.popitem(last=False)
            config = found.config
            gives = int(config.hidden_size if loaded.uses_hidden_states else config.projection_dim)
            if gives != loaded.image_dim:
                raise ParamError(self._loc(index, "module"), (
                    f"{loaded.path.name} takes {loaded.image_dim}-wide image features; the {kind} encoder "
                    f"({path.name}) gives {gives}: choose the module made for this IP-Adapter"))
            return found

        return encoder


def _home_device(model):
    """Where a unit's models live between uses: the checkpoint's device, or in medvram / lowvram its offload device
    (they are lent to the device only while they run, `ModelPlacement.lend`)."""
    placement = getattr(model, "placement", None)
    return placement.offload_device if placement is not None and placement.offloads else model.device


def encode_reference(model, image):
    """A reference unit's map (uint8 RGB at the generation size) -> the checkpoint's scaled latents."""
    import torch

    from sdwebui.pipelines.vae_encode import encode_pixels  # torch

    pixels = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
    return encode_pixels(model, pixels)


def unit_json(enabled, image, module, model, weight, start, end, control_mode, resize_mode, pixel_perfect,
              resolution, threshold_a, threshold_b) -> str:
    """A unit's UI controls as the unit the job takes (JSON text; the image as base64 PNG)."""
    unit = {"enabled": bool(enabled), "module": module or "none", "model": model or "None", "weight": weight,
            "guidance_start": start, "guidance_end": end, "control_mode": control_mode,
            "resize_mode": resize_mode, "pixel_perfect": bool(pixel_perfect), "processor_res": resolution,
            "threshold_a": threshold_a, "threshold_b": threshold_b}
    if image is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        unit["image"] = base64.b64encode(buffer.getvalue()).decode("ascii")
    return json.dumps(unit)


def slider_updates(module: str, *current: float) -> list[dict]:
    """The preprocessor's sliders (label, range), hidden where it has none; a current value inside the new range
    is kept (a pasted unit sets the module and its thresholds together), else the slider's default."""
    spec = find_preprocessor(module or "none")
    updates = []
    sliders = (spec.resolution, spec.slider_1, spec.slider_2) if spec else (None, None, None)
    for index, slider in enumerate(sliders):
        if slider is None:
            updates.append({"__type__": "update", "visible": False})
            continue
        value = current[index] if index < len(current) else None
        if not isinstance(value, (int, float)) or not slider.minimum <= value <= slider.maximum:
            value = slider.value
        updates.append({"__type__": "update", "visible": True, "label": slider.label, "minimum": slider.minimum,
                        "maximum": slider.maximum, "value": value, "step": slider.step})
    return updates


UNIT_CONTROLS = ("enabled", "module", "model", "weight", "guidance_start", "guidance_end", "control_mode",
                 "resize_mode", "pixel_perfect", "processor_res", "threshold_a", "threshold_b")


def controls_from_unit(text: str) -> list:
    """A unit's value -> its controls' updates, when it came from a pasted infotext (one the controls made
    carries the image, or is a disabled default: left alone)."""
    skip = {"__type__": "update"}
    try:
        unit = json.loads(text) if text else None
    except ValueError:
        unit = None
    if not isinstance(unit, dict) or "image" in unit or not unit.get("enabled"):
        return [skip] * len(UNIT_CONTROLS)
    try:
        unit = check_unit(unit, ("unit",))
    except ParamError:
        return [skip] * len(UNIT_CONTROLS)
    return [{"__type__": "update", "value": unit[name]} for name in UNIT_CONTROLS]


def preview_map(image, module, resolution, threshold_a, threshold_b, annotators=None):
    """The preprocessor's map of the unit's image (Run preprocessor), or None without an image."""
    from sdwebui.pipelines.controlnet_preprocess import PreprocessorError, as_array, run_preprocessor  # OpenCV

    if image is None:
        return None
    try:
        return Image.fromarray(run_preprocessor(module or "none", as_array(image), int(resolution), threshold_a,
                                                threshold_b, annotators=annotators))
    except PreprocessorError as error:
        import gradio as gr

        raise gr.Error(str(error)) from None


__all__ = ["ControlNet", "unit_json", "slider_updates", "controls_from_unit", "preview_map"]
