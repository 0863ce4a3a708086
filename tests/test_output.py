"""Saving images: A1111's layout and numbering, the `parameters` chunk, atomic and race-free writes."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import io
import multiprocessing
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from sdwebui.pipelines import output
from sdwebui.pipelines.output import (
    apply_filename_pattern,
    decode_user_comment,
    next_sequence_number,
    read_infotext_from_png,
    save_image,
)

DAY = dt.date(2024, 5, 1)
INFO = "a cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 16x16"


def _image(color=(200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (16, 16), color)


def _png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        pos += 12 + length
    return chunks


def test_layout_and_numbering(tmp_path):
    p0 = save_image(_image(), tmp_path, seed=1234, infotext=INFO, date=DAY)
    p1 = save_image(_image(), tmp_path, seed=1235, infotext=INFO, date=DAY)
    assert p0 == tmp_path / "2024-05-01" / "00000-1234.png"
    assert p1 == tmp_path / "2024-05-01" / "00001-1235.png"
    assert read_infotext_from_png(p0) == INFO
    with Image.open(p1) as im:
        assert im.size == (16, 16) and im.getpixel((0, 0)) == (200, 30, 30)


def test_date_subdir_defaults_to_today(tmp_path):
    p = save_image(_image(), tmp_path, seed=5, infotext=INFO)
    assert p.parent.name == dt.date.today().isoformat()


def test_no_date_subdir_and_patterns(tmp_path):
    assert save_image(_image(), tmp_path, seed=7, infotext=INFO, date_subdir=False).name == "00000-7.png"
    assert save_image(_image(), tmp_path, seed=7, infotext=INFO, date_subdir=False, pattern="").name == "00001.png"
    p = save_image(_image(), tmp_path, seed=8, infotext=INFO, date_subdir=False, pattern="[seed]-[date]/x:y", date=DAY)
    assert p.name == "00002-8-2024-05-01_x_y.png" and p.parent == tmp_path


def test_sequence_number_follows_a1111(tmp_path):
    assert next_sequence_number(tmp_path / "missing") == 0
    assert next_sequence_number(tmp_path) == 0
    for name in ["00041-999.png", "00007.txt", "notes.txt", "abc-00100.png", ".tmp-123.png", "00003-x-y.jpg"]:
        (tmp_path / name).write_bytes(b"")
    assert next_sequence_number(tmp_path) == 42
    assert save_image(_image(), tmp_path, seed=1, infotext=INFO, date_subdir=False).name == "00042-1.png"
    # A1111's basename variant: only names starting with "<basename>-" count.
    assert next_sequence_number(tmp_path, "abc") == 101


def test_png_text_chunk_kinds(tmp_path):
    latin = save_image(_image(), tmp_path, seed=1, infotext="café, Steps: 20", date=DAY)
    chunks = dict(_png_chunks(latin))
    assert chunks[b"tEXt"] == b"parameters\x00" + "café, Steps: 20".encode("latin-1")
    unicode_text = "日本の猫 😺\nSteps: 20, Seed: 1, Size: 16x16"
    uni = save_image(_image(), tmp_path, seed=2, infotext=unicode_text, date=DAY)
    kinds = [k for k, _ in _png_chunks(uni)]
    assert b"iTXt" in kinds and b"tEXt" not in kinds
    body = dict(_png_chunks(uni))[b"iTXt"]
    assert body.startswith(b"parameters\x00\x00\x00")  # keyword, compression flag 0 (zip=False), method 0
    assert read_infotext_from_png(uni) == unicode_text


def test_read_from_image_object_and_none(tmp_path):
    p = save_image(_image(), tmp_path, seed=1, infotext=INFO, date=DAY)
    with Image.open(p) as im:
        assert read_infotext_from_png(im) == INFO
    plain = tmp_path / "plain.png"
    _image().save(plain)
    assert read_infotext_from_png(plain) is None
    assert read_infotext_from_png(str(p)) == INFO


def _exif_bytes(comment: bytes) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = comment
    return exif.tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_read_exif_user_comment(tmp_path, fmt):
    text = "a dog, 日本\nSteps: 20, Seed: 3, Size: 16x16"
    path = tmp_path / f"x.{fmt.lower()}"
    # piexif.helper.UserComment.dump(text, encoding="unicode"), which A1111 uses.
    _image().save(path, fmt, exif=_exif_bytes(b"UNICODE\x00" + text.encode("utf-16-be")))
    assert read_infotext_from_png(path) == text


def test_decode_user_comment_variants():
    assert decode_user_comment(b"UNICODE\x00" + "hi there".encode("utf-16-le")) == "hi there"
    assert decode_user_comment(b"UNICODE\x00" + "hi there".encode("utf-16-be")) == "hi there"
    assert decode_user_comment(b"ASCII\x00\x00\x00plain\x00") == "plain"
    assert decode_user_comment(b"UNICODE\x00" + "\ufeffbom".encode("utf-16-le")) == "bom"


def test_read_gif_comment(tmp_path):
    path = tmp_path / "x.gif"
    _image().save(path, "GIF", comment=b"gif infotext\nSteps: 1, Seed: 1, Size: 1x1")
    assert read_infotext_from_png(path) == "gif infotext\nSteps: 1, Seed: 1, Size: 1x1"


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def fail(fd):
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(output.os, "fsync", fail)
    with pytest.raises(OSError, match="disk on fire"):
        save_image(_image(), tmp_path, seed=1, infotext=INFO, date=DAY)
    assert list((tmp_path / "2024-05-01").iterdir()) == []


def test_crash_mid_save_never_leaves_a_partial_png(tmp_path):
    """Kill the process after the PNG bytes are written but before they are published."""
    script = textwrap.dedent(
        f"""
        import os, datetime
        from PIL import Image
        from sdwebui.pipelines import output
        output.os.fsync = lambda fd: os._exit(3)
        output.save_image(Image.new("RGB", (16, 16)), {str(tmp_path)!r}, seed=9, infotext="x",
                          date=datetime.date(2024, 5, 1))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 3
    folder = tmp_path / "2024-05-01"
    assert [p.name for p in folder.iterdir() if not p.name.startswith(".")] == []
    # The leftover hidden temp file does not take a number.
    assert save_image(_image(), tmp_path, seed=10, infotext=INFO, date=DAY).name == "00000-10.png"


def _save_many(args):
    folder, start, count = args
    return [str(save_image(_image(), Path(folder), seed=start + i, infotext=f"seed {start + i}", date=DAY))
            for i in range(count)]


def _check_unique_and_readable(paths: list[str], total: int):
    names = sorted(Path(p).name for p in paths)
    assert len(set(names)) == total
    assert sorted(int(n.split("-")[0]) for n in names) == list(range(total))
    for p in paths:
        seed = Path(p).stem.split("-")[1]
        assert read_infotext_from_png(p) == f"seed {seed}"


def test_concurrent_threads_get_distinct_numbers(tmp_path):
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_save_many, [(str(tmp_path), 1000 * k, 10) for k in range(4)]))
    _check_unique_and_readable([p for r in results for p in r], 40)


def test_concurrent_processes_get_distinct_numbers(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_save_many, [(str(tmp_path), 1000 * k, 8) for k in range(2)])
    _check_unique_and_readable([p for r in results for p in r], 16)


def test_fallback_without_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(output.os, "link", no_links)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(_save_many, [(str(tmp_path), 1000 * k, 6) for k in range(3)]))
    _check_unique_and_readable([p for r in results for p in r], 18)
    assert not [p for p in (tmp_path / "2024-05-01").iterdir() if p.name.startswith(".")]


def test_existing_final_name_is_never_overwritten(tmp_path, monkeypatch):
    folder = tmp_path / "2024-05-01"
    folder.mkdir()
    (folder / "00000-1.png").write_bytes(b"precious")
    # Make the scan miss the existing file, as a racing saver would see it.
    monkeypatch.setattr(output, "next_sequence_number", lambda f, basename="": 0)
    p = save_image(_image(), tmp_path, seed=1, infotext=INFO, date=DAY)
    assert p.name == "00001-1.png"
    assert (folder / "00000-1.png").read_bytes() == b"precious"
    assert isinstance(Image.open(io.BytesIO(p.read_bytes())), Image.Image)


def test_filename_pattern_fills_a1111_tags():
    fields = {"prompt": "a red/circle, on the left: blue background", "steps": 20, "cfg_scale": 7.0,
              "width": 64, "height": 48, "sampler": "Euler a", "model_name": "demo", "batch_number": 1}
    name = apply_filename_pattern(
        "[seed]-[steps]-[cfg]-[width]x[height]-[sampler]-[model_name]-[prompt_words]", seed=3, date=DAY,
        fields=fields)
    assert name == "3-20-7-64x48-Euler a-demo-a red circle on the left blue background"
    assert apply_filename_pattern("[prompt]", seed=3, date=DAY, fields=fields) == "a_red_circle,_on_the_left__blue_background"
    assert apply_filename_pattern("[prompt_hash]", seed=3, date=DAY, fields=fields) == \
        hashlib.sha256(fields["prompt"].encode()).hexdigest()[:8]
    # A tag without a value stays as written (A1111); [none] is nothing; a long prompt is cut at 128 chars.
    assert apply_filename_pattern("[seed]-[unknown_tag][none]", seed=3, date=DAY) == "3-[unknown_tag]"
    assert len(apply_filename_pattern("[prompt]", seed=3, date=DAY, fields={"prompt": "x " * 200})) <= 128
    assert apply_filename_pattern("[datetime<%Y>]", seed=3, date=DAY) == str(dt.datetime.now().year)
