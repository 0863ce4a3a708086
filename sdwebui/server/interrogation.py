"""Interrogation, for every caller (the A1111 route, the img2img and PNG Info buttons, Loopback, Extras' Caption): an
image's caption (`clip`: BLIP + CLIP; `blip`: BLIP's caption alone, as Extras' Caption uses it), DeepDanbooru's tags
(`deepdanbooru`) or a WD14 tagger's (a folder name in `models/interrogators`, or `wd14` for the first one),
formatted with A1111's settings.

A model that is not installed is a FieldError naming `model` and the folder to put it in (A1111 downloads it; this
server never does). The models run beside the generation queue, one interrogation at a time; BLIP, CLIP and
DeepDanbooru go back to the CPU after a call and the taggers are released, unless the setting
`interrogate_keep_models_in_memory` is on (A1111's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdwebui.pipelines.interrogate import TagOptions, format_tags
from sdwebui.server.errors import FieldError

if TYPE_CHECKING:
    from sdwebui.server.services import Services

BUILTIN = ("clip", "blip", "deepdanbooru")
NEEDS = {"clip": ("blip", "clip"), "blip": ("blip",), "deepdanbooru": ("deepdanbooru",)}


def check_model(services: Services, model: str) -> str:
    """`clip` / `deepdanbooru`, or the installed tagger `model` names (`wd14`: the first one); a FieldError naming
    `model` (and the folder) when it is not installed."""
    from sdwebui.models.taggers import find_taggers  # OpenCV: not at start-up

    wanted = model.strip()
    if wanted.lower() in BUILTIN:
        from sdwebui.models.blip_clip import InterrogateModelMissing  # torch: not at start-up

        installed = services.interrogate_models.installed()
        for kind in NEEDS[wanted.lower()]:
            if not installed[kind]:
                try:  # the library's message names the folder
                    getattr(services.interrogate_models, kind)()
                except InterrogateModelMissing as error:
                    raise FieldError(("model",), str(error)) from None
        return wanted.lower()
    installed = [entry.name for entry in find_taggers(services.paths.models_dir)]
    if wanted.lower() == "wd14" and installed:
        wanted = installed[0]
    if wanted not in installed:
        raise FieldError(("model",), f"no tagger {model!r}: put a WD14 tagger's model.onnx and selected_tags.csv "
                                     f"in models/interrogators/<name>/ (installed: {', '.join(installed) or 'none'})")
    return wanted


def caption_image(services: Services, image, model: str = "wd14") -> str:
    """An image's caption (`clip`) or tags (`deepdanbooru`, a tagger), formatted with A1111's settings (the route
    and the img2img tab's Interrogate buttons); a FieldError naming `model` when it is not installed or cannot
    run."""
    from sdwebui.models.taggers import TaggerError  # OpenCV: not at start-up

    wanted = check_model(services, model)
    options = services.options.all()
    if wanted in BUILTIN:
        return _builtin(services, wanted, image.convert("RGB"), options)
    library = services.taggers
    try:
        _ratings, tags = library.probabilities(wanted, image)
    except TaggerError as error:
        raise FieldError(("model",), str(error)) from None
    finally:
        if not options.get("interrogate_keep_models_in_memory"):
            library.release()
    return format_tags(tags, TagOptions.from_settings(options))


def _builtin(services: Services, model: str, image, options) -> str:
    from sdwebui.models.blip_clip import InterrogateModelMissing  # torch and transformers: not at start-up
    from sdwebui.models.files import ModelFileError
    from sdwebui.pipelines.clip_interrogator import (ClipOptions, blip_caption, clip_interrogate,
                                                     deepbooru_probabilities, load_categories)

    library = services.interrogate_models
    with library.lock:
        try:
            if model == "clip":
                settings = ClipOptions.from_settings(options)
                folder = services.paths.data_dir / "interrogate"  # A1111's own lists, when the user has that folder
                categories = load_categories(folder, settings.skip_categories) if any(folder.glob("*.txt")) \
                    else load_categories(skip=settings.skip_categories)
                return clip_interrogate(library.blip(), library.clip(), image, settings, categories)
            if model == "blip":
                return blip_caption(library.blip(), image, ClipOptions.from_settings(options))
            net = library.deepdanbooru()
            return format_tags(deepbooru_probabilities(net, image), TagOptions.from_settings(options))
        except (InterrogateModelMissing, ModelFileError) as error:
            raise FieldError(("model",), str(error)) from None
        finally:
            if not options.get("interrogate_keep_models_in_memory"):
                library.send_to_ram()


__all__ = ["BUILTIN", "caption_image", "check_model"]
