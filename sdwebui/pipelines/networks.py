"""The extra-networks hook the pipelines call per batch: `<lora:...>` / `<lyco:...>` tags -> a `LoraLibrary` scope,
`<hypernet:name:multiplier>` tags (and the `sd_hypernetwork` setting) -> a `HypernetworkLibrary` scope.

A1111 dispatches tags by kind (`extra_networks.activate`); the built-in Lora extension takes `lora` (and, for old
prompts, `lyco`), `extra_networks_hypernet.py` takes `hypernet`. Other kinds are removed from the prompt as in
A1111 and reported in the result's notes instead of failing the job.

Infotext: `Lora hashes` for LoRAs. A hypernetwork asked for by a tag is recorded by the tag itself (the infotext
keeps the prompt as typed, as A1111 >= 1.0 does: it writes no `Hypernet` entry then). The one the
`sd_hypernetwork` setting adds is written as A1111 wrote its setting's hypernetwork (`create_infotext` before
1.0): `Hypernet: name`, `Hypernet hash` (the legacy 8-hex model hash) and `Hypernet strength` when it is not 1;
pasting such an infotext (ours or A1111's) turns those back into `<hypernet:name:strength>` in the prompt, so a
tag hypernetwork must not be written the same way or pasting would apply it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sdwebui.models.hypernetwork import HypernetCall, HypernetworkLibrary
from sdwebui.models.lora import LoraLibrary, lora_calls
from sdwebui.models.sd_model import SDModel
from sdwebui.pipelines.context import NetworkActivation
from sdwebui.prompts.extra_networks import ExtraNetworkArgError, ExtraNetworkCall

log = logging.getLogger(__name__)

LORA_KINDS = ("lora", "lyco")
HYPERNET_KINDS = ("hypernet",)


def hypernet_calls(calls: Sequence[ExtraNetworkCall]) -> list[HypernetCall]:
    """`<hypernet:name:multiplier>` tags (A1111: the second item is the multiplier, 1.0 when absent)."""
    out = []
    for call in calls:
        if call.kind not in HYPERNET_KINDS or not call.args:
            continue
        multiplier = 1.0
        if len(call.args) > 1:
            try:
                multiplier = float(call.args[1])
            except ValueError:
                raise ExtraNetworkArgError(f"{call.tag}: {call.args[1]!r} is not a number") from None
        out.append(HypernetCall(call.args[0], multiplier))
    return out


class LoraNetworks:
    """An `ExtraNetworksHook` (see `pipelines.context`) backed by a `LoraLibrary` and, when given, a
    `HypernetworkLibrary`.

    LoRA weights are patched while the block runs and restored bit-exactly when it ends; the library keeps the
    patched tensors of the last set, so consecutive jobs with the same `<lora:...>` tags do not recompute them.
    Hypernetworks are hooked into the UNet's attention for the block. `setting_hypernet`: the `sd_hypernetwork`
    setting's network (A1111 adds it unless a tag already names it).
    """

    def __init__(self, library: LoraLibrary, hypernetworks: HypernetworkLibrary | None = None,
                 setting_hypernet: HypernetCall | None = None):
        self.library = library
        self.hypernetworks = hypernetworks
        self.setting_hypernet = setting_hypernet

    @contextmanager
    def __call__(self, model: SDModel, calls: Sequence[ExtraNetworkCall]) -> Iterator[NetworkActivation]:
        handled = LORA_KINDS + (HYPERNET_KINDS if self.hypernetworks is not None else ())
        others = [call.tag for call in calls if call.kind not in handled]
        notes = []
        if others:
            notes.append(f"unsupported extra networks ignored: {' '.join(others)}")
            log.warning("%s", notes[-1])
        hypernets = hypernet_calls(calls) if self.hypernetworks is not None else []
        setting = self.setting_hypernet
        if setting is not None and self.hypernetworks is not None and setting.name not in ("", "None") \
                and not any(call.name == setting.name for call in hypernets):
            hypernets.append(setting)
        with self.library.applied(model, lora_calls(calls)) as report:
            infotext = {"Lora hashes": report.lora_hashes} if report.lora_hashes else {}
            if not hypernets:
                yield NetworkActivation(infotext=infotext, notes=[*report.notes, *notes])
                return
            with self.hypernetworks.applied(model, hypernets) as applied:
                for call, path in applied.applied:
                    if call.from_setting:
                        infotext["Hypernet"] = call.name
                        infotext["Hypernet hash"] = self.hypernetworks.legacy_hash(path)
                        if call.multiplier != 1:
                            infotext["Hypernet strength"] = call.multiplier
                yield NetworkActivation(infotext=infotext, notes=[*report.notes, *applied.notes, *notes])


__all__ = ["LoraNetworks", "LORA_KINDS", "HYPERNET_KINDS", "hypernet_calls"]
