"""The Extra Networks cards (A1111's `ui_extra_networks*.py`, v1.10): what each model folder holds, as the
txt2img / img2img "Extra Networks" panel shows it, and the routes that serve its previews and write its user
metadata.

Pages, in A1111's order: Textual Inversion (`embeddings/`), Hypernetworks (`models/hypernetworks/`), Checkpoints
(`models/Stable-diffusion/`), Lora (`models/Lora/`). A card is one file:

- its preview: the first of `name.png`, `name.preview.png`, `name.jpg`, `name.preview.jpg`, ... (png, jpg, jpeg,
  webp, gif) beside the file, as A1111 and Civitai Helper save them;
- A1111's *user metadata* from `name.json` beside the file ("description", "activation text", "preferred weight",
  "negative text", "notes", "sd version"); without a description there, `name.txt` / `name.description.txt`;
- what clicking it inserts (A1111's `item["prompt"]`): `<lora:alias:preferred weight>` plus the activation text,
  `<hypernet:name:weight>`, the embedding's name; a checkpoint card switches the checkpoint instead;
- sort keys (name, date created, date modified, path) and search terms (the path below the folder, the alias).

Routes (`build_router`): `GET /sd_extra_networks/thumb?filename=` serves a preview image, only from inside the
model folders (A1111's `fetch_file`: anything else is a 404, `..` and links that leave the folder included);
`GET /sd_extra_networks/metadata?page=&item=` the file's own metadata (a LoRA's safetensors header);
`GET /api/v1/extra-networks/{page}` the cards; `POST /api/v1/extra-networks/{page}/user-metadata` writes a card's
`name.json` (the "edit" dialog).
"""

from __future__ import annotations

import html
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from sdwebui.server import catalog
from sdwebui.server.errors import FieldError

if TYPE_CHECKING:
    from sdwebui.server.services import Services

PAGES = {"textual inversion": "Textual Inversion", "hypernetworks": "Hypernetworks", "checkpoints": "Checkpoints",
         "lora": "Lora"}
"""A1111's page names (its `page.name`, lower case) -> tab titles, in A1111's tab order."""
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")
USER_METADATA_KEYS = ("description", "activation text", "preferred weight", "negative text", "notes", "sd version")
SD_VERSIONS = ("Unknown", "SD1", "SD2", "SDXL")
HYPERNETWORK_EXTENSIONS = (".pt",)
"""A1111 lists `**/*.pt` (`list_hypernetworks`), the only hypernetwork file `models.hypernetwork` reads."""
DEFAULT_MULTIPLIER = 1.0
"""A1111's `extra_networks_default_multiplier`: the weight inserted when a card has no preferred weight."""


@dataclass
class Card:
    page: str
    name: str
    path: Path
    folder: Path
    """The model folder the file is in (previews are served from inside it only)."""
    alias: str = ""
    prompt: str = ""
    """What a click inserts into the prompt ("" for a checkpoint: it is selected instead)."""
    negative_prompt: str = ""
    user_metadata: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    sd_version: str = "Unknown"
    metadata: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = ""
    """A checkpoint card's title (what the checkpoint list calls it)."""

    @property
    def stem(self) -> Path:
        """The file's path without its extension (`name.json`, `name.png` are found beside it)."""
        return self.path.with_suffix("")

    @property
    def relative(self) -> str:
        try:
            return self.path.relative_to(self.folder).as_posix()
        except ValueError:
            return self.path.name

    @property
    def subfolder(self) -> str:
        parent = Path(self.relative).parent.as_posix()
        return "" if parent == "." else parent

    @property
    def preview(self) -> Path | None:
        for extension in PREVIEW_EXTENSIONS:
            for candidate in (f"{self.stem}.{extension}", f"{self.stem}.preview.{extension}"):
                if os.path.isfile(candidate):
                    return Path(candidate)
        return None

    def preview_url(self) -> str | None:
        """A1111's `link_preview`: the thumb route with the file's modification time (so a new preview shows)."""
        preview = self.preview
        if preview is None:
            return None
        return ("./sd_extra_networks/thumb?filename=" + urllib.parse.quote(preview.as_posix())
                + f"&mtime={preview.stat().st_mtime}")

    def sort_keys(self) -> dict[str, Any]:
        """A1111's `get_sort_keys`: name, date created, date modified, path."""
        try:
            stat = self.path.stat()
            created, modified = stat.st_ctime, stat.st_mtime
        except OSError:
            created = modified = 0.0
        return {"name": self.name.lower(), "date_created": created, "date_modified": modified,
                "path": self.relative.lower()}

    def to_json(self) -> dict[str, Any]:
        return {
            "page": self.page, "name": self.name, "alias": self.alias, "filename": str(self.path),
            "relative": self.relative, "subfolder": self.subfolder, "preview": self.preview_url(),
            "local_preview": f"{self.stem}.png", "description": self.description,
            "search_terms": [self.relative, *([self.alias] if self.alias and self.alias != self.name else [])],
            "sort_keys": self.sort_keys(), "user_metadata": self.user_metadata, "sd_version": self.sd_version,
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "checkpoint": self.checkpoint,
            "has_metadata": bool(self.metadata),
        }


# ---- user metadata (name.json) ------------------------------------------------------------------------------


def read_user_metadata(stem: Path) -> dict[str, Any]:
    """A1111's `read_user_metadata`: `name.json` beside the file ({} when missing or not a JSON object)."""
    try:
        data = json.loads(Path(f"{stem}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _description_file(stem: Path) -> str:
    for candidate in (f"{stem}.txt", f"{stem}.description.txt"):
        try:
            return Path(candidate).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
    return ""


class UserMetadata(BaseModel):
    """The editor's fields (A1111's `ui_extra_networks_user_metadata.py` and the Lora page's additions)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(max_length=500, description="the card's name (the file name without extension)")
    description: str = Field("", max_length=20_000)
    activation_text: str = Field("", alias="activation text", max_length=20_000)
    preferred_weight: float = Field(0.0, alias="preferred weight", ge=0.0, le=10.0,
                                    description="0: the default multiplier")
    negative_text: str = Field("", alias="negative text", max_length=20_000)
    notes: str = Field("", max_length=20_000)
    sd_version: str = Field("Unknown", alias="sd version", pattern="^(Unknown|SD1|SD2|SDXL)$")


def write_user_metadata(card: Card, values: UserMetadata) -> dict[str, Any]:
    """Write the card's `name.json` as A1111 does (its keys; other keys already there are kept)."""
    data = {**read_user_metadata(card.stem)}
    data.update({
        "description": values.description, "activation text": values.activation_text,
        "preferred weight": values.preferred_weight, "negative text": values.negative_text,
        "notes": values.notes, "sd version": values.sd_version,
    })
    target = Path(f"{card.stem}.json")
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=4, ensure_ascii=False), encoding="utf-8")
    os.replace(temporary, target)
    return data


# ---- the pages ----------------------------------------------------------------------------------------------


def folders(services: "Services") -> dict[str, list[Path]]:
    """Each page's folders (A1111's `allowed_directories_for_previews`)."""
    paths = services.paths
    return {
        "textual inversion": [paths.embeddings_dir],
        "hypernetworks": [hypernetwork_dir(services)],
        "checkpoints": [paths.ckpt_dir],
        "lora": [paths.lora_dir],
    }


def hypernetwork_dir(services: "Services") -> Path:
    return services.paths.models_dir / "hypernetworks"


def hypernetworks(services: "Services") -> dict[str, Path]:
    """A1111's `list_hypernetworks`: every `.pt` below the folder, by file name."""
    found: dict[str, Path] = {}
    folder = hypernetwork_dir(services)
    if not folder.is_dir():
        return found
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(HYPERNETWORK_EXTENSIONS) and not name.startswith("."):
                found.setdefault(Path(name).stem, Path(root) / name)
    return found


def cards(services: "Services", page: str) -> list[Card]:
    """The cards of `page` (one of `PAGES`), in the folder's order."""
    maker = {"lora": _lora_cards, "textual inversion": _embedding_cards, "checkpoints": _checkpoint_cards,
             "hypernetworks": _hypernetwork_cards}[page]
    made = maker(services)
    for card in made:
        card.user_metadata = read_user_metadata(card.stem)
        card.description = str(card.user_metadata.get("description") or "") or _description_file(card.stem)
        given = card.user_metadata.get("sd version")
        if given in SD_VERSIONS and given != "Unknown":
            card.sd_version = given
        _set_prompt(card)
    return made


def _set_prompt(card: Card) -> None:
    meta = card.user_metadata
    weight = meta.get("preferred weight") or DEFAULT_MULTIPLIER
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        weight = DEFAULT_MULTIPLIER
    weight_text = f"{weight:g}"
    activation = str(meta.get("activation text") or "")
    if card.page == "lora":
        card.prompt = f"<lora:{card.alias or card.name}:{weight_text}>" + (f" {activation}" if activation else "")
    elif card.page == "hypernetworks":
        card.prompt = f"<hypernet:{card.name}:{weight_text}>"
    elif card.page == "textual inversion":
        card.prompt = card.name
    card.negative_prompt = str(meta.get("negative text") or "")


def _lora_cards(services: "Services") -> list[Card]:
    folder = services.paths.lora_dir
    made = []
    for entry in services.loras.files().values():
        metadata = dict(entry.metadata)
        made.append(Card("lora", entry.name, entry.path, folder, alias=entry.alias, metadata=metadata,
                         sd_version=_lora_version(metadata)))
    return made


def _lora_version(metadata: dict) -> str:
    """A1111's `NetworkOnDisk.detect_version` (from the kohya header)."""
    if str(metadata.get("ss_base_model_version", "")).startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True":
        return "SD2"
    return "SD1" if metadata else "Unknown"


def _embedding_cards(services: "Services") -> list[Card]:
    folder = services.paths.embeddings_dir
    made = []
    for name, embedding in services.embeddings.embeddings.items():
        widths = {key: vectors.shape[-1] for key, vectors in embedding.vectors.items()}
        version = "SDXL" if "clip_g" in widths else {768: "SD1", 1024: "SD2"}.get(widths.get("", 0), "Unknown")
        made.append(Card("textual inversion", name, embedding.path, folder, sd_version=version))
    return made


def _checkpoint_cards(services: "Services") -> list[Card]:
    folder = services.paths.ckpt_dir
    return [Card("checkpoints", Path(entry.name).stem, entry.path, folder, checkpoint=entry.title)
            for entry in catalog.checkpoints(services.paths)]


def _hypernetwork_cards(services: "Services") -> list[Card]:
    folder = hypernetwork_dir(services)
    return [Card("hypernetworks", name, path, folder) for name, path in hypernetworks(services).items()]


def find_card(services: "Services", page: str, name: str) -> Card | None:
    return next((card for card in cards(services, page) if card.name == name), None)


def allowed_preview(services: "Services", filename: str) -> Path | None:
    """`filename` when it is an image inside one of the model folders (after resolving `..` and links), else
    None: A1111's `fetch_file` rule, so the route can never serve another file of the machine."""
    if not filename or "\x00" in filename:
        return None
    try:
        path = Path(filename).resolve()
    except (OSError, RuntimeError):
        return None
    if path.suffix.lower().lstrip(".") not in PREVIEW_EXTENSIONS or not path.is_file():
        return None
    for page_folders in folders(services).values():
        for folder in page_folders:
            try:
                path.relative_to(folder.resolve())
            except (ValueError, OSError):
                continue
            return path
    return None


# ---- HTML for the panel ---------------------------------------------------------------------------------------


def card_html(card: Card, tab: str, dimmed: bool = False) -> str:
    """One card (A1111's `extra-networks-card.html` in spirit): preview, name, description; the data the page's
    script needs (what to insert, the checkpoint to select, sort keys, search terms) in data- attributes."""
    data = card.to_json()
    preview = data["preview"]
    style = f" style=\"background-image: url('{html.escape(preview)}')\"" if preview else ""
    keys = data["sort_keys"]
    attributes = {
        "data-page": card.page, "data-name": card.name, "data-prompt": card.prompt,
        "data-negative-prompt": card.negative_prompt, "data-checkpoint": card.checkpoint,
        "data-search": " ".join([card.name, *data["search_terms"], card.description]).lower(),
        "data-sort-name": keys["name"], "data-sort-path": keys["path"],
        "data-sort-date-created": f"{keys['date_created']:.3f}", "data-sort-date-modified": f"{keys['date_modified']:.3f}",
        "data-subfolder": data["subfolder"], "data-sd-version": card.sd_version, "data-tab": tab,
    }
    attrs = " ".join(f'{key}="{html.escape(str(value))}"' for key, value in attributes.items())
    classes = "sdw-card" + (" sdw-card-dimmed" if dimmed else "") + ("" if preview else " sdw-card-no-preview")
    description = (f'<div class="sdw-card-description">{html.escape(card.description)}</div>'
                   if card.description else "")
    return (f'<div class="{classes}" {attrs} tabindex="0" role="button" title="{html.escape(card.relative)}"{style}>'
            f'<button class="sdw-card-edit" title="Edit metadata" aria-label="Edit metadata">&#x270F;&#xFE0F;</button>'
            f'<div class="sdw-card-text"><div class="sdw-card-name">{html.escape(card.name)}</div>{description}</div>'
            f"</div>")


def page_html(services: "Services", page: str, tab: str, family: str | None = None) -> str:
    """A page's cards and its folder buttons; cards of another model family than `family` ("SD1", "SD2",
    "SDXL"; None: not known) are dimmed (A1111's "filter by model version" setting shows them faded)."""
    made = cards(services, page)
    subfolders = sorted({card.subfolder for card in made if card.subfolder}, key=str.casefold)
    buttons = "".join(f'<button class="sdw-subfolder" data-subfolder="{html.escape(name)}">{html.escape(name)}</button>'
                      for name in subfolders)
    if made:
        body = "".join(card_html(card, tab, dimmed=bool(family) and card.sd_version not in ("Unknown", family))
                       for card in made)
    else:
        places = "".join(f"<li>{html.escape(str(folder))}</li>" for folder in folders(services)[page])
        body = f'<div class="sdw-no-cards">Nothing here. Add files to:<ul>{places}</ul></div>'
    slug = page.replace(" ", "_")
    return (f'<div class="sdw-subfolders" id="{tab}_{slug}_subdirs">'
            f'{"<button class=sdw-subfolder data-subfolder=>all</button>" + buttons if buttons else ""}</div>'
            f'<div class="sdw-cards" id="{tab}_{slug}_cards">{body}</div>')


# ---- routes -----------------------------------------------------------------------------------------------------


def build_router(services: "Services") -> APIRouter:
    router = APIRouter()

    @router.get("/sd_extra_networks/thumb", tags=["Extra networks"])
    def thumb(filename: str = "", mtime: str | None = None):
        path = allowed_preview(services, filename)
        if path is None:
            raise HTTPException(404, "File cannot be fetched: not an image in one of the model folders")
        return FileResponse(path, headers={"Accept-Ranges": "bytes", "Cache-Control": "no-cache"})

    @router.get("/sd_extra_networks/metadata", tags=["Extra networks"])
    def metadata(page: str = "", item: str = ""):
        if page not in PAGES:
            return {}
        card = find_card(services, page, item)
        return {"metadata": card.metadata} if card is not None and card.metadata else {}

    @router.get("/api/v1/extra-networks/{page}", tags=["Extra networks"])
    def list_cards(page: str):
        if page not in PAGES:
            raise HTTPException(404, f"no extra networks page {page!r}; pages: {', '.join(PAGES)}")
        return [card.to_json() for card in cards(services, page)]

    @router.post("/api/v1/extra-networks/{page}/user-metadata", tags=["Extra networks"])
    def save_user_metadata(page: str, body: UserMetadata):
        if page not in PAGES:
            raise HTTPException(404, f"no extra networks page {page!r}; pages: {', '.join(PAGES)}")
        card = find_card(services, page, body.name)
        if card is None:
            raise FieldError(("name",), f"no {PAGES[page]} named {body.name!r}")
        return write_user_metadata(card, body)

    return router


__all__ = ["PAGES", "Card", "cards", "find_card", "folders", "hypernetworks", "allowed_preview", "read_user_metadata",
           "write_user_metadata", "UserMetadata", "card_html", "page_html", "build_router"]
