"""The "Extra Networks" panel of txt2img and img2img (A1111's `ui_extra_networks.py`): a tab per page (Textual
Inversion, Hypernetworks, Checkpoints, Lora) of cards made by `server.extra_networks`, with search, sort (A1111's
Default / Name / Date Created / Date Modified / Path, either way) and refresh.

Clicking a card inserts what it says into the tab's prompt (`<lora:alias:weight> activation text`, an embedding's
name), or takes it out again when it is already there (A1111's `tryToRemoveExtraNetworkFromPrompt`: a LoRA at any
weight); its "negative text" goes to the negative prompt. A checkpoint card switches the checkpoint (wired in
`layout`, as the top bar's list). The ✏️ on a card opens the editor, which writes A1111's `name.json`, and "Replace
preview" saves the tab's current image as the card's `name.png` (kept in the model's folder).

The page's script (`EXTRA_NETWORKS_JS`, part of the page's `js`) handles clicks on the cards, which are HTML; it
talks to Python through two hidden text boxes per tab (`<tab>_extra_edit_target`, `<tab>_extra_checkpoint`): it
sets their value with a time stamp, so every click is a change (their `change` events, which fire for a value set
by a script; Gradio's `input` fires for typing only).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from sdwebui.server import extra_networks as cards_data
from sdwebui.server.services import Services

SORTS = {"Default": None, "Name": "name", "Date Created": "date_created", "Date Modified": "date_modified",
         "Path": "path"}
"""A1111's sort choices (its `extra_networks_card_order_field`) -> the card's sort key."""

CSS = """
.sdw-hidden { display: none !important; }
.sdw-cards { display: flex; flex-wrap: wrap; gap: 8px; }
.sdw-card { position: relative; width: 148px; height: 200px; border-radius: 8px; overflow: hidden; cursor: pointer;
  background-size: cover; background-position: center; background-color: var(--background-fill-secondary);
  border: 1px solid var(--border-color-primary); }
.sdw-card:hover, .sdw-card:focus { outline: 2px solid var(--color-accent); }
.sdw-card-dimmed { opacity: 0.45; }
.sdw-card-text { position: absolute; left: 0; right: 0; bottom: 0; padding: 6px; color: white;
  background: linear-gradient(transparent, rgba(0, 0, 0, 0.8)); text-shadow: 0 0 2px black; }
.sdw-card-text * { color: inherit !important; }
.sdw-card-no-preview .sdw-card-text { top: 0; background: none; color: var(--body-text-color); text-shadow: none; }
.sdw-card-name { font-weight: 600; overflow-wrap: anywhere; }
.sdw-card-description { font-size: var(--text-xs); max-height: 4.5em; overflow: hidden; }
.sdw-card-edit { position: absolute; top: 4px; right: 4px; border: none; border-radius: 4px; padding: 0 3px;
  background: rgba(0, 0, 0, 0.45); cursor: pointer; }
.sdw-autocomplete { position: absolute; z-index: 1000; margin: 0; padding: 2px 0; list-style: none; max-height: 18em;
  overflow-y: auto; background: var(--background-fill-primary); border: 1px solid var(--border-color-primary);
  border-radius: 6px; box-shadow: 0 4px 12px rgba(0, 0, 0, 0.2); font-size: var(--text-sm); }
.sdw-autocomplete-item { padding: 2px 10px; cursor: pointer; white-space: nowrap; }
.sdw-autocomplete-item.sdw-active, .sdw-autocomplete-item:hover { background: var(--color-accent-soft); }
.sdw-subfolders { display: flex; flex-wrap: wrap; gap: 4px; margin-bottom: 6px; }
.sdw-subfolder { padding: 0 8px; border-radius: 4px; border: 1px solid var(--border-color-primary);
  background: var(--button-secondary-background-fill); cursor: pointer; }
"""

EXTRA_NETWORKS_JS = """
  // Extra Networks cards (A1111's cardClicked / updatePromptArea): insert into the tab's prompt, or take out.
  const sdwSendInput = (box) => box.dispatchEvent(new Event("input", {bubbles: true}));
  const sdwEscape = (text) => text.replace(/[.*+?^${}()|[\\]\\\\]/g, "\\\\$&");
  const sdwToggle = (prompt, text) => {
    if (!text) return prompt;
    const tag = text.match(/^<(lora|lyco|hypernet):([^:>]+):[^>]*>/);
    const extra = tag ? text.slice(tag[0].length).trim() : "";
    const pattern = tag ? new RegExp("\\\\s*<" + tag[1] + ":" + sdwEscape(tag[2]) + "(:[^>]*)?>" +
                                     (extra ? "(\\\\s*" + sdwEscape(extra) + ")?" : ""))
                        : new RegExp("(^|\\\\s*)" + sdwEscape(text));
    if (pattern.test(prompt)) return prompt.replace(pattern, "").trim();
    return prompt.trim() ? prompt.replace(/\\s+$/, "") + " " + text : text;
  };
  document.addEventListener("click", (event) => {
    const target = event.target;
    if (!target || !target.closest) return;
    const folder = target.closest(".sdw-subfolder");
    if (folder) {
      const tab = folder.closest("[data-sdw-tab]");
      const search = tab && document.querySelector(`#${tab.dataset.sdwTab}_extra_search textarea, ` +
                                                   `#${tab.dataset.sdwTab}_extra_search input`);
      if (search) { search.value = folder.dataset.subfolder; sdwSendInput(search); }
      return;
    }
    const card = target.closest(".sdw-card");
    if (!card) return;
    event.preventDefault();
    const tab = card.dataset.tab;
    const hidden = (name) => document.querySelector(`#${tab}_${name} textarea, #${tab}_${name} input`);
    if (target.closest(".sdw-card-edit")) {
      const box = hidden("extra_edit_target");
      if (box) { box.value = `${card.dataset.page}\\n${card.dataset.name}\\n${Date.now()}`; sdwSendInput(box); }
      return;
    }
    if (card.dataset.checkpoint) {
      const box = hidden("extra_checkpoint");
      if (box) { box.value = `${card.dataset.checkpoint}\\n${Date.now()}`; sdwSendInput(box); }
      return;
    }
    const prompt = document.querySelector(`#${tab}_prompt textarea`);
    if (prompt) { prompt.value = sdwToggle(prompt.value, card.dataset.prompt); sdwSendInput(prompt); }
    const negative = document.querySelector(`#${tab}_neg_prompt textarea`);
    if (negative && card.dataset.negativePrompt) {
      negative.value = sdwToggle(negative.value, card.dataset.negativePrompt);
      sdwSendInput(negative);
    }
  });
""" + """
  // Prompt autocompletion (server.autocomplete): LoRA / hypernetwork / wildcard names, embeddings and tags.
  const sdwPromptBoxes = "#txt2img_prompt textarea, #txt2img_neg_prompt textarea, #img2img_prompt textarea, " +
                         "#img2img_neg_prompt textarea";
  const sdwList = document.createElement("ul");
  sdwList.className = "sdw-autocomplete";
  sdwList.style.display = "none";
  document.body.appendChild(sdwList);
  let sdwTarget = null, sdwWord = "", sdwItems = [], sdwActive = 0, sdwTimer = null, sdwAsked = 0;
  const sdwClose = () => { sdwList.style.display = "none"; sdwItems = []; };
  const sdwWordBefore = (box) => {
    const text = box.value.slice(0, box.selectionStart);
    const match = text.match(/(<(lora|lyco|hypernet):[^<>:,]*|__[^_\\s,]*_?_?|[^\\s,()\\[\\]{}|<>:]+)$/);
    return match ? match[0] : "";
  };
  const sdwShow = () => {
    sdwList.innerHTML = "";
    sdwItems.forEach((item, index) => {
      const entry = document.createElement("li");
      entry.className = "sdw-autocomplete-item" + (index === sdwActive ? " sdw-active" : "");
      entry.dataset.index = String(index);
      entry.textContent = item.label + (item.count ? "  " + item.count : "");
      entry.title = item.kind;
      sdwList.appendChild(entry);
    });
    const rect = sdwTarget.getBoundingClientRect();
    sdwList.style.left = (rect.left + window.scrollX) + "px";
    sdwList.style.top = (rect.bottom + window.scrollY) + "px";
    sdwList.style.minWidth = Math.min(rect.width, 360) + "px";
    sdwList.style.display = sdwItems.length ? "block" : "none";
  };
  const sdwAccept = (index) => {
    const item = sdwItems[index];
    if (!item || !sdwTarget) return;
    const box = sdwTarget, caret = box.selectionStart;
    const start = caret - sdwWord.length;
    const tail = item.kind === "lora" || item.kind === "hypernetworks" || item.kind === "wildcard" ||
                 item.kind === "embedding" ? " " : ", ";
    box.value = box.value.slice(0, start) + item.text + tail + box.value.slice(caret);
    const at = start + item.text.length + tail.length;
    box.setSelectionRange(at, at);
    sdwClose();
    sdwSendInput(box);
    box.focus();
  };
  document.addEventListener("input", (event) => {
    const box = event.target;
    if (!box || !box.matches || !box.matches(sdwPromptBoxes) || !event.isTrusted) return;
    clearTimeout(sdwTimer);
    sdwTimer = setTimeout(async () => {
      const word = sdwWordBefore(box);
      if (word.length < 2) { sdwClose(); return; }
      const asked = ++sdwAsked;
      try {
        const answer = await fetch("./api/v1/autocomplete?text=" + encodeURIComponent(word));
        const items = answer.ok ? await answer.json() : [];
        if (asked !== sdwAsked) return;
        sdwTarget = box; sdwWord = word; sdwItems = items; sdwActive = 0;
        sdwShow();
      } catch (error) { sdwClose(); }
    }, 120);
  }, true);
  document.addEventListener("keydown", (event) => {
    if (!sdwItems.length || sdwList.style.display === "none" || event.target !== sdwTarget) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      sdwActive = (sdwActive + (event.key === "ArrowDown" ? 1 : sdwItems.length - 1)) % sdwItems.length;
      sdwShow();
    } else if ((event.key === "Enter" && !(event.ctrlKey || event.metaKey)) || event.key === "Tab") {
      sdwAccept(sdwActive);
    } else if (event.key === "Escape") {
      sdwClose();
    } else {
      return;
    }
    event.preventDefault();
    event.stopPropagation();
  }, true);
  sdwList.addEventListener("mousedown", (event) => {
    const entry = event.target.closest(".sdw-autocomplete-item");
    if (entry) { event.preventDefault(); sdwAccept(Number(entry.dataset.index)); }
  });
  document.addEventListener("focusout", (event) => { if (event.target === sdwTarget) setTimeout(sdwClose, 150); });
"""


def model_family(services: Services) -> str | None:
    """"SD1", "SD2" or "SDXL" for the loaded model (cards of other families are dimmed); None when none is."""
    model = services.loaded_model()
    if model is None:
        return None
    family = str(getattr(getattr(model, "family", None), "value", getattr(model, "family", ""))).lower()
    return {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}.get(family.split("-")[0].split("_")[0])


def render(services: Services, tab: str, search: str = "", sort: str = "Default", descending: bool = False
           ) -> list[str]:
    """Every page's HTML for `tab`: cards matching `search` (name, path, alias, description; case-insensitive),
    in the chosen order."""
    family = model_family(services)
    pages = []
    for page in cards_data.PAGES:
        pages.append(page_html(services, page, tab, search, SORTS.get(sort), descending, family))
    return pages


def page_html(services: Services, page: str, tab: str, search: str, sort_key: str | None, descending: bool,
              family: str | None) -> str:
    made = cards_data.cards(services, page)
    words = search.lower().split()
    if words:
        made = [card for card in made
                if all(word in " ".join([card.name, card.relative, card.alias, card.description]).lower()
                       for word in words)]
    if sort_key is not None:
        made.sort(key=lambda card: card.sort_keys()[sort_key])
    if descending:
        made.reverse()
    subfolders = sorted({c.subfolder for c in cards_data.cards(services, page) if c.subfolder}, key=str.casefold)
    buttons = "".join(
        f'<button class="sdw-subfolder" data-subfolder="{html.escape(name)}">{html.escape(name)}</button>'
        for name in ["", *subfolders]) if subfolders else ""
    buttons = buttons.replace('data-subfolder="">', 'data-subfolder="">all', 1)
    slug = page.replace(" ", "_")
    if made:
        body = "".join(cards_data.card_html(card, tab, dimmed=bool(family) and card.sd_version not in ("Unknown", family))
                       for card in made)
    elif words:
        body = f'<div class="sdw-note">Nothing matches "{html.escape(search)}".</div>'
    else:
        places = "".join(f"<li>{html.escape(str(folder))}</li>" for folder in cards_data.folders(services)[page])
        body = f'<div class="sdw-note">Nothing here yet. Put files in:<ul>{places}</ul></div>'
    return (f'<div data-sdw-tab="{tab}"><div class="sdw-subfolders" id="{tab}_{slug}_subdirs">{buttons}</div>'
            f'<div class="sdw-cards" id="{tab}_{slug}_cards">{body}</div></div>')


def build(services: Services, prefix: str, f: dict, c: dict):
    """The panel, below the tab's prompts. Returns `connect(gallery)`, called once the tab's result gallery is
    made: "Replace preview" reads its first image."""
    with gr.Accordion("Extra Networks", open=False, elem_id=f"{prefix}_extra_networks"):
        with gr.Row(equal_height=True):
            search = gr.Textbox(show_label=False, placeholder="Search...", elem_id=f"{prefix}_extra_search",
                                scale=4, container=False)
            sort = gr.Dropdown(list(SORTS), value="Default", show_label=False, elem_id=f"{prefix}_extra_sort",
                               scale=1, container=False, min_width=120)
            descending = gr.Checkbox(False, label="Descending", elem_id=f"{prefix}_extra_sort_dir", scale=0,
                                     container=False, min_width=110)
            refresh = gr.Button("Refresh", elem_id=f"{prefix}_extra_refresh", scale=0, min_width=80, size="sm")
        htmls = []
        with gr.Tabs(elem_id=f"{prefix}_extra_tabs"):
            for page, title in cards_data.PAGES.items():
                slug = page.replace(" ", "_")
                with gr.Tab(title, id=f"{prefix}_extra_{slug}", elem_id=f"{prefix}_extra_tab_{slug}"):
                    # a function: Gradio calls it on every page load, so a new browser tab sees the folders as now
                    htmls.append(gr.HTML(lambda page=page: page_html(services, page, prefix, "", None, False,
                                                                     model_family(services)),
                                         elem_id=f"{prefix}_{slug}_cards_html", padding=False))
        edit_target = gr.Textbox("", elem_id=f"{prefix}_extra_edit_target", elem_classes="sdw-hidden",
                                 show_label=False, container=False)
        c["extra_checkpoint"] = gr.Textbox("", elem_id=f"{prefix}_extra_checkpoint", elem_classes="sdw-hidden",
                                           show_label=False, container=False)
        with gr.Group(visible=False, elem_id=f"{prefix}_extra_editor") as editor:
            gr.Markdown("Edit the card's metadata (saved as `name.json` beside the file)", elem_classes="sdw-note")
            with gr.Row():
                page_box = gr.Textbox(label="Page", interactive=False, elem_id=f"{prefix}_extra_edit_page")
                name_box = gr.Textbox(label="Name", interactive=False, elem_id=f"{prefix}_extra_edit_name")
                version = gr.Dropdown(list(cards_data.SD_VERSIONS), value="Unknown", label="Stable Diffusion version",
                                      elem_id=f"{prefix}_extra_edit_sd_version")
            description = gr.Textbox(label="Description", lines=2, elem_id=f"{prefix}_extra_edit_description")
            with gr.Row():
                activation = gr.Textbox(label="Activation text", elem_id=f"{prefix}_extra_edit_activation_text")
                weight = gr.Slider(0.0, 2.0, value=0.0, step=0.01, label="Preferred weight (0: the default)",
                                   elem_id=f"{prefix}_extra_edit_preferred_weight")
            negative = gr.Textbox(label="Negative prompt", elem_id=f"{prefix}_extra_edit_negative_text")
            notes = gr.Textbox(label="Notes", lines=2, elem_id=f"{prefix}_extra_edit_notes")
            edit_status = gr.HTML("", elem_id=f"{prefix}_extra_edit_status", padding=False)
            with gr.Row():
                save = gr.Button("Save", variant="primary", elem_id=f"{prefix}_extra_edit_save")
                replace_preview = gr.Button("Replace preview", elem_id=f"{prefix}_extra_edit_replace_preview")
                close = gr.Button("Close", elem_id=f"{prefix}_extra_edit_close")

    controls = [search, sort, descending]

    def refreshed(text, order, down):
        services.embeddings.refresh(force=True)
        return render(services, prefix, text or "", order or "Default", bool(down))

    def rendered(text, order, down):
        return render(services, prefix, text or "", order or "Default", bool(down))

    refresh.click(refreshed, controls, htmls, show_progress="hidden")
    # `change`, not `input`: the page's script sets these boxes (a folder button fills the search), and Gradio's
    # text box sends `input` for typing only
    search.change(rendered, controls, htmls, show_progress="hidden", trigger_mode="always_last")
    sort.input(rendered, controls, htmls, show_progress="hidden")
    descending.input(rendered, controls, htmls, show_progress="hidden")

    editor_fields = [page_box, name_box, version, description, activation, weight, negative, notes]

    def open_editor(target):
        page, _, rest = (target or "").partition("\n")
        name = rest.split("\n")[0]
        card = cards_data.find_card(services, page, name) if page in cards_data.PAGES else None
        if card is None:
            return gr.update(visible=False), *[gr.skip()] * len(editor_fields), ""
        meta = card.user_metadata
        try:
            preferred = float(meta.get("preferred weight") or 0.0)
        except (TypeError, ValueError):
            preferred = 0.0
        return (gr.update(visible=True), page, name, card.sd_version, card.description,
                str(meta.get("activation text") or ""), preferred, str(meta.get("negative text") or ""),
                str(meta.get("notes") or ""), "")

    edit_target.change(open_editor, edit_target, [editor, *editor_fields, edit_status], show_progress="hidden")

    def save_editor(page, name, sd_version, text, activation_text, preferred, negative_text, note, *view):
        card = cards_data.find_card(services, page, name) if page in cards_data.PAGES else None
        if card is None:
            return f"<p class='sdw-note'>Not saved: no {html.escape(page)} card named {html.escape(name)}</p>", \
                *[gr.skip()] * len(htmls)
        values = cards_data.UserMetadata.model_validate({
            "name": name, "description": text or "", "activation text": activation_text or "",
            "preferred weight": float(preferred or 0.0), "negative text": negative_text or "", "notes": note or "",
            "sd version": sd_version or "Unknown"})
        cards_data.write_user_metadata(card, values)
        return f"<p class='sdw-note'>Saved {html.escape(Path(f'{card.stem}.json').name)}</p>", *rendered(*view)

    save.click(save_editor, [*editor_fields, *controls], [edit_status, *htmls], show_progress="hidden")
    close.click(lambda: gr.update(visible=False), None, editor, show_progress="hidden")

    def save_preview(page, name, images, *view):
        card = cards_data.find_card(services, page, name) if page in cards_data.PAGES else None
        image = _first_image(images)
        if card is None or image is None:
            return "<p class='sdw-note'>No image to use: generate one first.</p>", *[gr.skip()] * len(htmls)
        target = Path(f"{card.stem}.png")
        image.save(target)  # beside the model file, inside its folder (the card's own stem)
        return f"<p class='sdw-note'>Saved {html.escape(target.name)}</p>", *rendered(*view)

    def connect(gallery) -> None:
        replace_preview.click(save_preview, [page_box, name_box, gallery, *controls], [edit_status, *htmls],
                              show_progress="hidden")

    return connect


def _first_image(images: Any):
    """The first picture of a Gradio gallery value (a list of (image, caption) or image paths), as PIL."""
    from PIL import Image

    for item in images or []:
        value = item[0] if isinstance(item, (list, tuple)) else item
        if isinstance(value, dict):
            value = value.get("path") or (value.get("image") or {}).get("path")
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, (str, Path)) and Path(value).is_file():
            return Image.open(value).convert("RGB")
    return None


__all__ = ["build", "render", "page_html", "model_family", "CSS", "EXTRA_NETWORKS_JS", "SORTS"]
