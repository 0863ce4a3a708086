"""The Extensions tab (A1111's `ui_extensions.py`, in short): the installed extensions with their version (git
commit), what each added and why any part was skipped; turning them on and off (A1111's `disabled_extensions`
setting, applied at the next start, as A1111's "Apply and restart"); installing from a git URL or from a folder or
zip on this machine, with the API route's rule (refused when listening beyond loopback without
`--enable-insecure-extension-access`)."""

from __future__ import annotations

import html
from pathlib import Path

import gradio as gr

from sdwebui.server import extensions as ext
from sdwebui.server.options import OptionError
from sdwebui.server.services import Services


def installed_html(services: Services) -> str:
    loaded = getattr(services, "extensions", None)
    if loaded is None or not loaded.items:
        folder = loaded.folder if loaded is not None else services.paths.data_dir / "extensions"
        return f"<p class='sdw-note'>No extensions in {html.escape(str(folder))}.</p>"
    rows = []
    for item in loaded.items:
        data = item.to_json()
        state = "enabled" if item.enabled else "disabled"
        added = ", ".join([*data["scripts"], *data["javascript"], *(["style.css"] if data["css"] else [])]) or "—"
        errors = "<br>".join(html.escape(error) for error in item.errors)
        rows.append(f"<tr data-extension='{html.escape(item.name)}'><td>{html.escape(item.name)}</td><td>{state}</td>"
                    f"<td>{html.escape(data['version'] or '—')}</td><td>{html.escape(data['remote'] or '')}</td>"
                    f"<td>{html.escape(added)}</td><td class='sdw-extension-errors'>{errors}</td></tr>")
    return ("<table id='extensions_table'><thead><tr><th>Extension</th><th>State</th><th>Version</th><th>URL</th>"
            "<th>Adds</th><th>Errors (skipped)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def build(services: Services) -> dict:
    c: dict = {}
    loaded = getattr(services, "extensions", None)
    names = [item.name for item in loaded.items] if loaded is not None else []
    with gr.Tabs(elem_id="extensions_tabs"):
        with gr.Tab("Installed", id="extensions_installed"):
            c["table"] = gr.HTML(lambda: installed_html(services), elem_id="extensions_installed_html")
            c["enabled"] = gr.CheckboxGroup(names, value=[i.name for i in loaded.items if i.enabled] if loaded else [],
                                            label="Enabled (applied at the next start)", elem_id="extensions_enabled")
            with gr.Row():
                c["apply"] = gr.Button("Apply (restart the server to take effect)", elem_id="extensions_apply")
                c["check"] = gr.Button("Check for updates", elem_id="extensions_check_updates")
            c["status"] = gr.HTML("", elem_id="extensions_status")
        with gr.Tab("Install", id="extensions_install"):
            allowed, reason = ext.install_allowed(services.config)
            if not allowed:
                gr.Markdown(reason, elem_classes="sdw-note")
            c["url"] = gr.Textbox(label="URL for extension's git repository", elem_id="extensions_install_url",
                                  interactive=allowed)
            c["path"] = gr.Textbox(label="Or a folder or .zip on this machine", elem_id="extensions_install_path",
                                   interactive=allowed)
            c["name"] = gr.Textbox(label="Local directory name (default: from the URL)",
                                   elem_id="extensions_install_dirname", interactive=allowed)
            c["install"] = gr.Button("Install", variant="primary", elem_id="extensions_install_button",
                                     interactive=allowed)
            c["install_status"] = gr.HTML("", elem_id="extensions_install_status")

    def apply(enabled):
        disabled = sorted(set(names) - set(enabled or []))
        try:
            services.update_options({"disabled_extensions": disabled})
        except OptionError as error:
            return f"<p class='sdw-note'>Not saved: {html.escape(error.message)}</p>"
        return (f"<p class='sdw-note'>Saved: {html.escape(', '.join(disabled) or 'none')} disabled from the next "
                "start.</p>")

    c["apply"].click(apply, c["enabled"], c["status"], show_progress="hidden")

    def check():
        items = loaded.items if loaded is not None else []
        rows = "".join(f"<li data-extension='{html.escape(item.name)}'>{html.escape(item.name)}: "
                       f"{html.escape(item.check_update())}</li>" for item in items)
        return f"<ul class='sdw-note'>{rows}</ul>" if rows else "<p class='sdw-note'>No extensions.</p>"

    c["check"].click(check, None, c["status"])

    def install(url, path, name):
        allowed_now, why = ext.install_allowed(services.config)
        if not allowed_now:
            return f"<p class='sdw-note'>{html.escape(why)}</p>"
        folder = loaded.folder if loaded is not None else services.paths.data_dir / "extensions"
        try:
            target = ext.install(folder, url=(url or "").strip() or None,
                                 source=Path(path.strip()) if (path or "").strip() else None,
                                 name=(name or "").strip() or None)
        except ext.ExtensionError as error:
            return f"<p class='sdw-note'>Not installed: {html.escape(str(error))}</p>"
        return (f"<p class='sdw-note'>Installed into {html.escape(str(target))}; restart the server to load "
                "it.</p>")

    c["install"].click(install, [c["url"], c["path"], c["name"]], c["install_status"], show_progress="hidden")
    return c


__all__ = ["build", "installed_html"]
