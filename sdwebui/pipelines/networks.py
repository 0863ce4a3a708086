"""The extra-networks hook the pipelines call per batch: `<lora:...>` / `<lyco:...>` tags -> a `LoraLibrary` scope.

A1111 dispatches tags by kind (`extra_networks.activate`); the built-in Lora extension takes `lora` (and, for old
prompts, `lyco`). Other kinds (`hypernet`, ...) are not supported here: they are removed from the prompt as in
A1111 and reported in the result's notes instead of failing the job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sdwebui.models.lora import LoraLibrary, lora_calls
from sdwebui.models.sd_model import SDModel
from sdwebui.pipelines.context import NetworkActivation
from sdwebui.prompts.extra_networks import ExtraNetworkCall

log = logging.getLogger(__name__)

LORA_KINDS = ("lora", "lyco")


class LoraNetworks:
    """An `ExtraNetworksHook` (see `pipelines.context`) backed by a `LoraLibrary`.

    The weights are patched while the block runs and restored bit-exactly when it ends; the library keeps the
    patched tensors of the last set, so consecutive jobs with the same `<lora:...>` tags do not recompute them.
    The infotext gets A1111's `Lora hashes`.
    """

    def __init__(self, library: LoraLibrary):
        self.library = library

    @contextmanager
    def __call__(self, model: SDModel, calls: Sequence[ExtraNetworkCall]) -> Iterator[NetworkActivation]:
        others = [call.tag for call in calls if call.kind not in LORA_KINDS]
        notes = []
        if others:
            notes.append(f"unsupported extra networks ignored: {' '.join(others)}")
            log.warning("%s", notes[-1])
        with self.library.applied(model, lora_calls(calls)) as report:
            infotext = {"Lora hashes": report.lora_hashes} if report.lora_hashes else {}
            yield NetworkActivation(infotext=infotext, notes=[*report.notes, *notes])


__all__ = ["LoraNetworks", "LORA_KINDS"]
