"""Saving generated images as A1111 does, and reading their infotext back.

Layout (A1111 `modules/images.py` `save_image` with its default options):

    <outdir>/YYYY-MM-DD/NNNNN-SEED.png

`NNNNN` is A1111's `get_next_sequence_number`: one more than the largest number any file in the folder
starts with (`00041-123.png`, `00041.txt`, ...), zero-padded to 5 digits. The infotext goes into a PNG text
chunk named `parameters` (`PngInfo.add_text`: `tEXt`, or `iTXt` when the text is not Latin-1).

Beyond A1111, a save is safe against crashes and concurrent savers:
- the PNG is written completely to a hidden temporary file in the same folder, flushed to disk, and only then
  published under its final name, so a final name never holds a partial image;
- a number is reserved with a hidden marker file created with `O_CREAT | O_EXCL` (then the folder is scanned
  again, in case another saver published that number meanwhile), so two savers (threads or processes) never
  get the same number; the loser moves on to the next one. The marker is removed once the image is published;
- publishing uses `os.link`, which never replaces an existing file (e.g. one written by another program).
  Where hard links are not supported, an empty placeholder created with `O_EXCL` takes the name and the
  finished file replaces it (`os.replace`).
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import uuid
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, PngImagePlugin

PARAMETERS_KEY = "parameters"
"""A1111's `pnginfo_section_name`."""
_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286
_TMP_PREFIX = ".tmp-"
_RESERVE_PREFIX = ".reserve-"
"""Hidden names: A1111's numbering (`int(name.split("-")[0])`) ignores them."""
_MAX_ATTEMPTS = 1000

# A1111's intermediate copies (`modules/processing.py`): saved beside a job's images, with these name suffixes,
# when the job saves images and the setting of the same name is on.
BEFORE_FACE_RESTORATION = "-before-face-restoration"
"""`save_images_before_face_restoration`: each image as decoded, before its faces are restored."""
BEFORE_HIGHRES_FIX = "-before-highres-fix"
"""`save_images_before_highres_fix`: hires fix's first pass (decoded just for this with a latent upscaler)."""
BEFORE_COLOR_CORRECTION = "-before-color-correction"
"""`save_images_before_color_correction`: an img2img image pasted over the original, before color correction."""
MASK = "-mask"
"""`save_mask`: an inpainting job's greyscale mask (blurred, at the original's size)."""
MASK_COMPOSITE = "-mask-composite"
"""`save_mask_composite`: an inpainting result, transparent where the mask kept the original."""
INTERMEDIATE_SETTINGS = {
    "save_images_before_face_restoration": BEFORE_FACE_RESTORATION,
    "save_images_before_highres_fix": BEFORE_HIGHRES_FIX,
    "save_images_before_color_correction": BEFORE_COLOR_CORRECTION,
    "save_mask": MASK,
    "save_mask_composite": MASK_COMPOSITE,
}
"""Setting -> the suffix of the copies it saves."""


def next_sequence_number(folder: Path, basename: str = "") -> int:
    """A1111 `get_next_sequence_number`: 1 + the largest leading number among the folder's file names."""
    result = -1
    prefix = f"{basename}-" if basename else ""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.startswith(prefix):
            continue
        first = os.path.splitext(name[len(prefix) :])[0].split("-")[0]
        try:
            result = max(int(first), result)
        except ValueError:
            pass
    return result + 1


_PATTERN_TAG = re.compile(r"\[(\w+)(?:<([^>]*)>)?\]")
_NON_LETTERS = re.compile(r"[\s' \"\\,.:;!?/|()\[\]{}<>+=*&^%$#@~`]+")
MAX_FILENAME_PART = 128
"""A1111's `max_filename_part_length` (the default of its setting)."""
PROMPT_WORDS = 8
"""A1111's `directories_max_prompt_words` default."""


def sanitize_filename_part(text: str, *, replace_spaces: bool = True) -> str:
    """A1111 `sanitize_filename_part`: no path separators or characters Windows rejects, at most 128 chars."""
    if replace_spaces:
        text = text.replace(" ", "_")
    text = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", text)
    return text[:MAX_FILENAME_PART].strip(" .")


def apply_filename_pattern(pattern: str, *, seed: int, date: dt.date, fields: dict | None = None) -> str:
    """The file-name part after the number, with A1111's tags filled in (`modules/images.py`
    `FilenameGenerator`): `[seed]`, `[date]`, `[datetime]` (optionally `[datetime<%Y%m%d>]`), `[steps]`,
    `[cfg]`, `[width]`, `[height]`, `[sampler]`, `[scheduler]`, `[model_name]`, `[model_hash]`, `[clip_skip]`,
    `[prompt]` (spaces as `_`), `[prompt_spaces]`, `[prompt_words]` (first 8 words), `[negative_prompt]`,
    `[prompt_hash]` (first 8 hex digits of sha256), `[batch_number]`, `[none]`. `fields` gives the values (the
    generation parameters by name: prompt, steps, ...). A tag without a value stays as written, as in A1111."""
    import hashlib

    values = {"seed": seed, "date": date.isoformat(), **(fields or {})}
    prompt = str(values.get("prompt", ""))

    def fill(match: re.Match) -> str:
        tag, argument = match.group(1).lower(), match.group(2)
        if tag == "datetime":
            return dt.datetime.now().strftime(argument or "%Y%m%d%H%M%S")
        if tag == "none":
            return ""
        if tag == "prompt" and "prompt" in values:
            return sanitize_filename_part(prompt)
        if tag == "prompt_spaces" and "prompt" in values:
            return sanitize_filename_part(prompt, replace_spaces=False)
        if tag == "prompt_words" and "prompt" in values:
            words = [w for w in _NON_LETTERS.split(prompt) if w]
            return sanitize_filename_part(" ".join(words[:PROMPT_WORDS]) or "empty", replace_spaces=False)
        if tag == "prompt_hash" and "prompt" in values:
            return hashlib.sha256(prompt.encode()).hexdigest()[:8]
        if tag == "cfg" and "cfg_scale" in values:
            return f"{float(values['cfg_scale']):g}"
        value = values.get(tag)
        if value is None:
            return match.group(0)
        return sanitize_filename_part(str(value), replace_spaces=False)

    return sanitize_filename_part(_PATTERN_TAG.sub(fill, pattern), replace_spaces=False)


def png_info(infotext: str, extra_text: Mapping[str, str] | None = None) -> PngImagePlugin.PngInfo:
    """The PNG text chunks: the infotext under `parameters`, then `extra_text` (A1111's `postprocessing`, ...)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, infotext)
    for key, value in (extra_text or {}).items():
        info.add_text(key, value)
    return info


def save_image(
    image: Image.Image,
    outdir: Path,
    *,
    seed: int,
    infotext: str,
    pattern: str = "[seed]",
    date_subdir: bool = True,
    date: dt.date | None = None,
    fields: dict | None = None,
    extra_text: Mapping[str, str] | None = None,
    basename: str = "",
    filename: str = "",
    caption: str = "",
    caption_action: str = "Ignore",
    suffix: str = "",
) -> Path:
    """Save `image` as the next `NNNNN-<pattern>.png` in `outdir` (or `outdir/YYYY-MM-DD`); return its path.
    `fields` are the values of the pattern's tags (see `apply_filename_pattern`). With a `basename` the name is
    A1111's `<basename>-NNNN.png` (its grids: `grid-0000.png`), numbered apart from the images. With a `filename`
    (A1111's `forced_filename`: Extras' "use original name") it is exactly `<filename>.png`, replacing a file of
    that name whole (never half-written). A `caption` (Extras' Caption) is written beside it as `<name>.txt`
    (`write_caption`, `caption_action` saying what to do with one already there): here, where the image is
    written, so it lands beside it also when a Ray worker sends the image to the API node. A `suffix` follows the
    pattern's part (A1111's `save_image(..., suffix=...)`: `00012-7-before-highres-fix.png`, or `00012-mask.png`
    with an empty pattern); a forced `filename` takes none, as in A1111."""
    date = date or dt.date.today()
    folder = Path(outdir) / date.isoformat() if date_subdir else Path(outdir)
    folder.mkdir(parents=True, exist_ok=True)
    decoration = apply_filename_pattern(pattern, seed=seed, date=date, fields=fields)
    ending = f"-{decoration}{suffix}.png" if decoration else f"{suffix}.png"
    forced = sanitize_filename_part(Path(filename).stem, replace_spaces=False) if filename else ""

    tmp = folder / f"{_TMP_PREFIX}{uuid.uuid4().hex}.png"
    try:
        with open(tmp, "xb") as f:
            image.save(f, format="PNG", pnginfo=png_info(infotext, extra_text))
            f.flush()
            os.fsync(f.fileno())
        if forced:
            final = folder / f"{forced}.png"
            os.replace(tmp, final)
            if caption:
                write_caption(final.with_suffix(".txt"), caption, caption_action)
            return final
        number = next_sequence_number(folder, basename)
        for _ in range(_MAX_ATTEMPTS):
            # Reserve the number (not just the name: savers with different seeds would not collide on names).
            marker = folder / f"{_RESERVE_PREFIX}{basename}{number:05}"
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                number += 1
                continue
            try:
                # Another saver may have published this number between our scan and the reservation.
                if _number_taken(folder, number, basename):
                    number += 1
                    continue
                final = folder / (f"{basename}-{number:04}{ending}" if basename else f"{number:05}{ending}")
                if _publish(tmp, final):
                    if caption:
                        write_caption(final.with_suffix(".txt"), caption, caption_action)
                    return final
                number += 1
            finally:
                marker.unlink(missing_ok=True)
        raise FileExistsError(f"no free file name in {folder} after {_MAX_ATTEMPTS} attempts")
    finally:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def write_caption(path: Path, caption: str, existing: str = "Ignore") -> None:
    """A1111's Extras caption file: `caption` at `path` (beside the saved image), or combined with the `.txt`
    already there as the setting `postprocessing_existing_caption_action` says (Ignore: replace it, Keep, Prepend,
    Append); written whole (a temporary file renamed), never half."""
    try:
        old = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        old = ""
    if old and existing == "Keep":
        return
    text = {"Prepend": f"{old} {caption}", "Append": f"{caption} {old}"}.get(existing, caption) if old else caption
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text.strip() + "\n", encoding="utf-8")
    tmp.replace(path)


def _number_taken(folder: Path, number: int, basename: str = "") -> bool:
    prefix = f"{basename}-" if basename else ""
    for name in os.listdir(folder):
        if not name.startswith(prefix):
            continue
        try:
            if int(os.path.splitext(name[len(prefix):])[0].split("-")[0]) == number:
                return True
        except ValueError:
            pass
    return False


def _publish(tmp: Path, final: Path) -> bool:
    """Give the finished temp file its final name unless that name is taken. True on success."""
    try:
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
    # No hard links on this filesystem: reserve the name, then atomically replace the placeholder.
    try:
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    os.replace(tmp, final)
    return True


IGNORED_INFO_KEYS = frozenset({
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background", "timestamp",
    "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop",
})
"""PIL's own `info` entries, which are not text a program wrote (A1111's `IGNORED_INFO_KEYS`)."""


def read_image_info(image: Image.Image) -> tuple[str, dict[str, object]]:
    """(infotext, the image's other text items) as A1111's PNG Info shows them."""
    items = {key: value for key, value in (image.info or {}).items()
             if isinstance(key, str) and key != "parameters" and key not in IGNORED_INFO_KEYS
             and isinstance(value, (str, int, float))}
    return read_infotext_from_png(image) or "", items


def read_infotext_from_png(image: Image.Image | str | os.PathLike) -> str | None:
    """The infotext stored in an image, as A1111's `read_info_from_image` finds it.

    PNG: the `parameters` text chunk. JPEG / WebP / AVIF: EXIF `UserComment` (which wins when present, as in
    A1111). GIF: the `comment` extension. Returns None when there is none.
    """
    if isinstance(image, Image.Image):
        return _read_info(image)
    with Image.open(image) as img:
        return _read_info(img)


def _read_info(image: Image.Image) -> str | None:
    items = image.info or {}
    geninfo = items.get(PARAMETERS_KEY)
    if "exif" in items:
        comment = _exif_user_comment(image)
        if comment:
            geninfo = comment
    elif "comment" in items:
        comment = items["comment"]
        geninfo = comment.decode("utf8", errors="ignore") if isinstance(comment, bytes) else comment
    if geninfo is not None and not isinstance(geninfo, str):
        geninfo = str(geninfo)
    return geninfo


def _exif_user_comment(image: Image.Image) -> str | None:
    try:
        raw = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
    except Exception:  # a broken EXIF block must not break reading the rest
        return None
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    return decode_user_comment(bytes(raw))


def decode_user_comment(raw: bytes) -> str:
    """EXIF UserComment: an 8-byte character-code header, then the text (piexif.helper.UserComment.load)."""
    header, body = raw[:8], raw[8:]
    if header == b"UNICODE\x00":
        if body.startswith((b"\xfe\xff", b"\xff\xfe")):
            return body.decode("utf-16")
        # piexif (A1111) writes big-endian; some writers use little-endian: guess from the first code unit.
        encoding = "utf-16-le" if len(body) >= 2 and body[0] != 0 and body[1] == 0 else "utf-16-be"
        return body.decode(encoding, errors="ignore").rstrip("\x00")
    if header == b"ASCII\x00\x00\x00":
        return body.decode("ascii", errors="ignore").rstrip("\x00")
    if header == b"JIS\x00\x00\x00\x00\x00":
        return body.decode("shift_jis", errors="ignore").rstrip("\x00")
    return raw.decode("utf8", errors="ignore").rstrip("\x00")
