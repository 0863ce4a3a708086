"""The History tab: saved generations from the store, newest first, searchable by prompt; the selected image's
parameters, reuse them in txt2img, or delete the image (file and record, as `DELETE /api/v1/images/{id}`).

Files are read from the outputs folder through `confine` (the same guard the native API's file routes use),
so a record pointing outside it is never served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from sdwebui.server.security import confine
from sdwebui.server.services import Services
from sdwebui.ui.icons import icon_button

PAGE_SIZE = 60
SCAN_BATCH = 500
SCAN_LIMIT = 20_000
"""How many records a search looks through at most (newest first)."""


@dataclass
class HistoryTab:
    components: dict[str, Any] = field(default_factory=dict)


def find_images(services: Services, query: str = "", limit: int = PAGE_SIZE) -> list[dict]:
    """The newest image records whose prompt (or negative prompt) contains `query` (case-insensitive) and whose
    file is still there, each with `file`: its absolute path."""
    needle = (query or "").strip().lower()
    found: list[dict] = []
    offset = 0
    while len(found) < limit and offset < SCAN_LIMIT:
        rows = services.store.images(limit=SCAN_BATCH, offset=offset)
        if not rows:
            break
        offset += len(rows)
        for row in rows:
            if needle and needle not in (row.get("prompt") or "").lower() \
                    and needle not in (row.get("negative_prompt") or "").lower():
                continue
            path = confine(services.paths.outputs_dir, row.get("path") or "")
            if path is None or not path.is_file():
                continue
            found.append({**row, "file": str(path)})
            if len(found) >= limit:
                break
    return found


def delete_image(services: Services, image_id: int) -> bool:
    """Delete an image's file and record (what `DELETE /api/v1/images/{id}` does)."""
    record = services.store.image(image_id)
    if record is None:
        return False
    path = confine(services.paths.outputs_dir, record["path"])
    if path is not None and path.is_file():
        path.unlink()
    return services.store.delete_image(image_id)


def caption(row: dict) -> str:
    prompt = (row.get("prompt") or "").strip().replace("\n", " ")
    return prompt if len(prompt) <= 80 else prompt[:77] + "…"


def build(services: Services) -> HistoryTab:
    tab = HistoryTab()
    c = tab.components
    ids = gr.State([])
    selected = gr.State(None)
    with gr.Row(equal_height=True):
        c["search"] = gr.Textbox(label="Search prompts", placeholder="words in the prompt", scale=6, min_width=200,
                                 elem_id="history_search")
        c["refresh"] = icon_button("refresh", "Refresh", "history_refresh", show_label=True, size="lg", scale=1,
                                   min_width=100)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=280):
            c["gallery"] = gr.Gallery(label="History", columns=4, height="auto", object_fit="contain", format="png",
                                      elem_id="history_gallery", interactive=False, allow_preview=False,
                                      fit_columns=False)
        with gr.Column(scale=1, min_width=280):
            c["parameters"] = gr.Textbox(label="Parameters", lines=8, interactive=False, elem_id="history_parameters")
            c["details"] = gr.HTML("", elem_id="history_details", padding=False)
            with gr.Row():
                c["reuse"] = gr.Button("Reuse parameters", variant="primary", elem_id="history_reuse", min_width=120)
                c["delete"] = icon_button("trash", "Delete", "history_delete", show_label=True, size="lg", variant="stop",
                                          min_width=100)
    c["ids"] = ids
    c["selected"] = selected

    def load(query):
        rows = find_images(services, query or "")
        return [(row["file"], caption(row)) for row in rows], [row["id"] for row in rows], None, "", ""

    load_outputs = [c["gallery"], ids, selected, c["parameters"], c["details"]]
    c["load"] = load
    c["load_outputs"] = load_outputs
    c["refresh"].click(load, c["search"], load_outputs, show_progress="hidden")
    c["search"].submit(load, c["search"], load_outputs, show_progress="hidden")

    def select(image_ids, evt: gr.SelectData):
        index = int(evt.index or 0)
        if index >= len(image_ids):
            return None, "", ""
        record = services.store.image(image_ids[index])
        if record is None:
            return None, "", "<p class='sdw-note'>This image was deleted.</p>"
        import datetime as dt
        import html

        when = dt.datetime.fromtimestamp(record["created"]).strftime("%Y-%m-%d %H:%M:%S")
        details = (f"<p class='sdw-note'>#{record['id']} · {html.escape(when)} · {record.get('width')}×"
                   f"{record.get('height')} · {html.escape(record.get('model_name') or '')} · "
                   f"{html.escape(record['path'])}</p>")
        return record["id"], record.get("infotext") or "", details

    c["gallery"].select(select, ids, [selected, c["parameters"], c["details"]], show_progress="hidden")

    def delete(image_id, query):
        if image_id is not None:
            delete_image(services, int(image_id))
        return load(query)

    c["delete"].click(delete, [selected, c["search"]], load_outputs, show_progress="hidden")
    return tab


__all__ = ["build", "find_images", "delete_image", "HistoryTab"]
