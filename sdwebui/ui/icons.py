"""Icon buttons drawn with SVGs shipped in the package (`ui/icons/`): A1111's emoji buttons (🎲 ♻️ ⇅ 📐 🔄 🗑️)
render as empty boxes where the system has no emoji font, so the page does not depend on one.

Every icon button keeps a text label: it is the button's title (hover) and accessible name, set by `ICON_TITLES_JS`
on the page (Gradio's Button has no title attribute); icon-only buttons hide the text with CSS."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

ICONS_DIR = Path(__file__).resolve().parent / "icons"
ICON_ONLY_CLASS = "sdw-icon-button"
ICON_AND_TEXT_CLASS = "sdw-icon-text-button"

ICON_CSS = f"""
.{ICON_ONLY_CLASS} {{ font-size: 0 !important; gap: 0 !important; padding: 4px !important; }}
.{ICON_ONLY_CLASS} img, .{ICON_AND_TEXT_CLASS} img {{ width: 20px !important; height: 20px !important; }}
.{ICON_ONLY_CLASS} img {{ margin: 0 !important; }}
"""

ICON_TITLES_JS = f"""
  // Icon buttons: their text label becomes the title and aria-label (Gradio renders tabs as they are opened).
  const label = () => document.querySelectorAll(
    ".{ICON_ONLY_CLASS}:not([title]), .{ICON_AND_TEXT_CLASS}:not([title])").forEach((button) => {{
      const text = button.textContent.trim();
      if (!text) return;
      button.title = text;
      button.setAttribute("aria-label", text);
      button.querySelectorAll("img").forEach((img) => img.setAttribute("alt", ""));
    }});
  label();
  new MutationObserver(label).observe(document.body, {{ childList: true, subtree: true }});
"""


def icon_path(name: str) -> Path:
    path = ICONS_DIR / f"{name}.svg"
    if not path.is_file():
        raise FileNotFoundError(f"no icon {name!r} in {ICONS_DIR}")
    return path


def icon_button(icon: str, label: str, elem_id: str, *, show_label: bool = False, **kwargs) -> gr.Button:
    """A button showing `icon` (a name in `ui/icons/`); `label` is its title and accessible name, and is shown
    beside the icon when `show_label`."""
    kwargs.setdefault("size", "sm")
    return gr.Button(label, icon=str(icon_path(icon)), elem_id=elem_id,
                     elem_classes=[ICON_AND_TEXT_CLASS if show_label else ICON_ONLY_CLASS], **kwargs)


__all__ = ["icon_button", "icon_path", "ICONS_DIR", "ICON_CSS", "ICON_TITLES_JS", "ICON_ONLY_CLASS",
           "ICON_AND_TEXT_CLASS"]
