"""The Gradio web UI: A1111's txt2img workflow, PNG Info, history and settings.

It calls the services the API calls (the job queue, the store, the options) and never a model directly.
`mount_ui(app, services)` is what `sdwebui.app.build_app` calls; Gradio is imported only then, so the API-only
server (`--nowebui`) never loads it.
"""

from __future__ import annotations


def mount_ui(app, services):
    from sdwebui.ui.layout import mount_ui as _mount

    return _mount(app, services)


__all__ = ["mount_ui"]
