"""Prompt styles from A1111's `styles.csv`: reading, `{prompt}` placeholder, ", " merging, unknown names."""

from __future__ import annotations

import pytest

from sdwebui.config import Paths
from sdwebui.prompts.styles import (
    PromptStyle,
    StyleDatabase,
    StyleFileError,
    UnknownStyleError,
    apply_styles_to_prompt,
    merge_prompts,
    read_styles_csv,
)

STYLES_CSV = (
    "name,prompt,negative_prompt\n"
    'cinematic,"{prompt}, cinematic still, film grain","cartoon, drawing"\n'
    "sharp,highly detailed,blurry\n"
    '"quoted, name","a ""quoted"" style",\n'
    "empty,,\n"
)


@pytest.mark.parametrize(
    "style,prompt,expected",
    [
        ("{prompt}, film grain", "a cat", "a cat, film grain"),
        ("photo of {prompt}", "a cat", "photo of a cat"),
        ("{prompt} and {prompt}", "x", "x and x"),
        ("film grain", "a cat", "a cat, film grain"),
        ("  film grain ", " a cat  ", "a cat, film grain"),  # both stripped
        ("film grain", "", "film grain"),
        ("", "a cat", "a cat"),
        ("", "", ""),
        ("{prompt}", "", ""),
    ],
)
def test_merge_prompts(style, prompt, expected):
    assert merge_prompts(style, prompt) == expected


def test_styles_apply_in_order():
    assert apply_styles_to_prompt("cat", ["{prompt}, a", "b", "[{prompt}]"]) == "[cat, a, b]"


def test_read_a1111_styles_csv(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text("\ufeff" + STYLES_CSV, encoding="utf-8")  # A1111 writes a BOM (utf-8-sig)
    styles = read_styles_csv(path)
    assert [s.name for s in styles] == ["cinematic", "sharp", "quoted, name", "empty"]
    assert styles[0] == PromptStyle("cinematic", "{prompt}, cinematic still, film grain", "cartoon, drawing", path)
    assert styles[2].prompt == 'a "quoted" style'
    assert styles[3] == PromptStyle("empty", "", "", path)


def test_old_text_column_and_missing_negative(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("name,text\nold,vintage photo\n")
    assert read_styles_csv(path) == [PromptStyle("old", "vintage photo", "", path)]


def test_file_without_name_column_is_an_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("title,prompt\nx,y\n")
    with pytest.raises(StyleFileError, match="name"):
        read_styles_csv(path)


def test_database_applies_styles_by_name(tmp_path):
    (tmp_path / "styles.csv").write_text(STYLES_CSV)
    db = StyleDatabase([tmp_path / "styles.csv"])
    assert db.names() == ["cinematic", "sharp", "quoted, name", "empty"]
    assert db.apply("a cat", "ugly", ["cinematic", "sharp"]) == (
        "a cat, cinematic still, film grain, highly detailed",
        "ugly, cartoon, drawing, blurry",
    )
    assert db.apply("a cat", "", []) == ("a cat", "")
    assert db.apply_to_prompt("a cat", ["empty"]) == "a cat"
    assert db.apply_to_negative_prompt("", ["sharp"]) == "blurry"


def test_unknown_style_is_a_clear_error(tmp_path):
    (tmp_path / "styles.csv").write_text(STYLES_CSV)
    db = StyleDatabase([tmp_path / "styles.csv"])
    with pytest.raises(UnknownStyleError) as raised:
        db.apply("a cat", "", ["sharp", "nope", "Cinematic"])
    assert raised.value.names == ("nope", "Cinematic")  # names are case-sensitive, as in A1111
    message = str(raised.value)
    assert "'nope'" in message and "'Cinematic'" in message and "cinematic" in message
    assert "\n" not in message
    with pytest.raises(UnknownStyleError, match="no styles are defined"):
        StyleDatabase([tmp_path / "missing.csv"]).apply("x", "", ["a"])


def test_several_files_wildcards_and_later_files_win(tmp_path):
    (tmp_path / "a.csv").write_text("name,prompt,negative_prompt\nx,from a,\ny,only a,\n")
    (tmp_path / "b.csv").write_text("name,prompt,negative_prompt\nx,from b,\n")
    db = StyleDatabase([tmp_path / "*.csv", tmp_path / "missing.csv"])
    assert db.apply_to_prompt("p", ["x", "y"]) == "p, from b, only a"
    (tmp_path / "a.csv").write_text("name,prompt,negative_prompt\nz,new,\n")
    db.reload()
    assert set(db.names()) == {"x", "z"}


def test_default_styles_file_is_beside_the_data_dir(tmp_path):
    assert Paths.from_flags(data_dir=tmp_path).styles_files == (tmp_path.resolve() / "styles.csv",)
    given = Paths.from_flags(data_dir=tmp_path, styles_file=[tmp_path / "a.csv", str(tmp_path / "s*.csv")])
    assert given.styles_files == (tmp_path / "a.csv", tmp_path / "s*.csv")
