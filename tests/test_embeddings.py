"""Textual-inversion embeddings: file formats, the restricted loader, width checks, and where the vectors enter.

The reference for "where" is independent of our hook: a copy of the text encoder whose vocabulary is extended
with the embedding's vectors as new tokens (what diffusers' `load_textual_inversion` does), fed the new token
ids at the same positions. Equal hidden states prove the vectors enter exactly at the embedding's positions,
before the position embeddings, and nowhere else.
"""

from __future__ import annotations

import copy
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import TEXT_WIDTH, tiny_clip_g, tiny_clip_l

from sdwebui.models.embeddings import EmbeddingDatabase, load_embedding, ti_hashes
from sdwebui.models.family import ModelFamily
from sdwebui.models.files import ModelFileError
from sdwebui.models.hashing import sha256_file
from sdwebui.models.text_encoding import CHUNK_LENGTH, TextEncoderStack


def _vectors(n: int, width: int = TEXT_WIDTH, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def write_a1111_pt(path, vec, **extra):
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": path.stem, "step": 1200,
                "sd_checkpoint": "abcdef01", "sd_checkpoint_name": "v1-5", **extra}, path)
    return path


@pytest.fixture(scope="module")
def clip_l():
    return tiny_clip_l(seed=11)


@pytest.fixture(scope="module")
def sd1(clip_l):
    return TextEncoderStack(ModelFamily.SD1, clip_l=clip_l)


@pytest.fixture(scope="module")
def sdxl(clip_l):
    return TextEncoderStack(ModelFamily.SDXL, clip_l=clip_l, clip_g=tiny_clip_g(seed=12))


# ------------------------------------------------------------------------------------------------ formats


def test_each_file_format_loads_its_vectors(tmp_path):
    vec3, vec1 = _vectors(3, seed=1), _vectors(1, seed=2)
    pt = write_a1111_pt(tmp_path / "a1111style.pt", torch.nn.Parameter(vec3.clone()))
    torch.save({"<my-concept>": vec1[0].clone()}, tmp_path / "concept.bin")  # diffusers learned_embeds.bin
    save_file({"emb_params": vec3.clone()}, tmp_path / "st.safetensors")
    save_file({"clip_l": _vectors(2, 768), "clip_g": _vectors(2, 1280)}, tmp_path / "xl.safetensors")

    a = load_embedding(pt)
    assert a.name == "a1111style" and a.vector_count == 3 and a.step == 1200
    assert a.sd_checkpoint_name == "v1-5"
    assert torch.equal(a.vectors[""], vec3)
    b = load_embedding(tmp_path / "concept.bin")
    assert b.vector_count == 1 and torch.equal(b.vectors[""], vec1)
    c = load_embedding(tmp_path / "st.safetensors")
    assert torch.equal(c.vectors[""], vec3) and c.shape == TEXT_WIDTH
    xl = load_embedding(tmp_path / "xl.safetensors")
    assert xl.vector_count == 2 and xl.shape == 768 + 1280
    assert a.sha256 == sha256_file(pt) and a.shorthash == a.sha256[:12]


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as file:
        pickle.dump({"string_to_param": {"*": Evil()}}, file, protocol=2)
    with pytest.raises(ModelFileError, match="refused"):
        load_embedding(path)
    db = EmbeddingDatabase(tmp_path)
    assert "evil" not in db.embeddings and "refused" in db.errors["evil"]
    assert not marker.exists()


def test_unreadable_files_are_reported_not_fatal(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    save_file({"a": torch.zeros(2, 4), "b": torch.zeros(2, 4)}, tmp_path / "twoterms.safetensors")
    write_a1111_pt(tmp_path / "good.pt", _vectors(1))
    db = EmbeddingDatabase(tmp_path)
    assert list(db.embeddings) == ["good"]
    assert set(db.errors) == {"empty", "twoterms"}


def test_only_embeddings_of_the_encoders_width_are_usable(tmp_path, sd1, sdxl):
    write_a1111_pt(tmp_path / "fits.pt", _vectors(2))
    write_a1111_pt(tmp_path / "sd2only.pt", _vectors(2, 1024))
    save_file({"clip_l": _vectors(1), "clip_g": _vectors(1)}, tmp_path / "xlonly.safetensors")
    db = EmbeddingDatabase(tmp_path)
    listing = db.a1111_listing(sd1.tower_widths)
    assert set(listing["loaded"]) == {"fits"} and set(listing["skipped"]) == {"sd2only", "xlonly"}
    assert listing["loaded"]["fits"] == {"step": 1200, "sd_checkpoint": "abcdef01", "sd_checkpoint_name": "v1-5",
                                         "shape": TEXT_WIDTH, "vectors": 2}
    listing = db.a1111_listing(sdxl.tower_widths)
    assert set(listing["loaded"]) == {"xlonly"}
    # A name that is not usable stays plain text.
    chunks, _ = sd1.tokenize_weighted([("xlonly", 1.0)], embeddings=db)
    assert not chunks[0].fixes


def test_refresh_picks_up_new_and_changed_files(tmp_path):
    db = EmbeddingDatabase(tmp_path)
    assert db.embeddings == {}
    write_a1111_pt(tmp_path / "late.pt", _vectors(1))
    db.refresh()  # reads check the folder at most once a second; refresh() checks now
    assert set(db.embeddings) == {"late"}
    first = db.get("late")
    db.refresh()
    assert db.get("late") is first  # unchanged file: not re-read
    (tmp_path / "late.pt").unlink()
    db.refresh()
    assert db.embeddings == {}


# ----------------------------------------------------------------------------------------- tokenization


def test_name_becomes_placeholder_tokens_with_the_span_weight(tmp_path, sd1):
    write_a1111_pt(tmp_path / "mystyle.pt", _vectors(3))
    db = EmbeddingDatabase(tmp_path)
    chunks, count = sd1.tokenize_weighted([("a photo of ", 1.0), ("mystyle", 1.3), (" dog", 1.0)], embeddings=db)
    plain, plain_count = sd1.tokenize_weighted([("a photo of ", 1.0), ("mystyle", 1.3), (" dog", 1.0)])
    name_tokens = len(sd1._tokenize_texts(["mystyle"])[0])
    assert count == plain_count - name_tokens + 3
    chunk = chunks[0]
    (fix,) = chunk.fixes
    assert fix.offset == 4 and fix.embedding.name == "mystyle"  # BOS, a, photo, of
    assert chunk.tokens[4:7] == (0, 0, 0)
    assert chunk.multipliers[4:7] == pytest.approx((1.3, 1.3, 1.3))
    assert chunk.tokens[7] == plain[0].tokens[4 + name_tokens]  # "dog" follows the vectors


def test_longest_name_wins(tmp_path, sd1):
    write_a1111_pt(tmp_path / "style.pt", _vectors(1, seed=1))
    write_a1111_pt(tmp_path / "style two.pt", _vectors(2, seed=2))  # file names with spaces work as in A1111
    db = EmbeddingDatabase(tmp_path)
    chunks, _ = sd1.tokenize_weighted([("style two", 1.0)], embeddings=db)
    assert [f.embedding.name for f in chunks[0].fixes] == ["style two"]
    chunks, _ = sd1.tokenize_weighted([("style three", 1.0)], embeddings=db)
    assert [f.embedding.name for f in chunks[0].fixes] == ["style"]


def test_embedding_is_never_split_across_chunks(tmp_path, sd1):
    write_a1111_pt(tmp_path / "wide.pt", _vectors(5))
    db = EmbeddingDatabase(tmp_path)
    filler = " ".join(["cat"] * (CHUNK_LENGTH - 2))  # 73 tokens: 2 places left, the embedding needs 5
    chunks, _ = sd1.tokenize_weighted([(filler + " wide", 1.0)], embeddings=db)
    assert len(chunks) == 2
    assert not chunks[0].fixes and chunks[0].tokens[74:] == (sd1.eos_id,) * 3  # padded, not split
    (fix,) = chunks[1].fixes
    assert fix.offset == 1 and chunks[1].tokens[1:6] == (0,) * 5


def test_comma_word_wrap_carries_the_embedding_with_its_vectors(tmp_path, sd1):
    write_a1111_pt(tmp_path / "wrapme.pt", _vectors(2))
    db = EmbeddingDatabase(tmp_path)
    text = " ".join(["cat"] * 70) + ", wrapme dog dog dog dog"  # 70 + comma + 2 + 4 = 77 > 75
    chunks, _ = sd1.tokenize_weighted([(text, 1.0)], embeddings=db)
    assert len(chunks) == 2 and not chunks[0].fixes
    assert chunks[1].fixes[0].offset == 1 and chunks[1].tokens[1:3] == (0, 0)


# ---------------------------------------------------------------------------------------- conditioning


def _extended_copy(module, new_rows: torch.Tensor):
    """The encoder with `new_rows` appended to its vocabulary (the diffusers textual-inversion way)."""
    clone = copy.deepcopy(module)
    old = clone.get_input_embeddings()
    table = torch.nn.Embedding(old.num_embeddings + new_rows.shape[0], old.embedding_dim)
    with torch.no_grad():
        table.weight.copy_(torch.cat([old.weight, new_rows]))
    clone.set_input_embeddings(table)
    return clone, old.num_embeddings


def test_vectors_enter_exactly_at_their_positions_sd1(tmp_path, sd1, clip_l):
    vec = _vectors(2, seed=7)
    write_a1111_pt(tmp_path / "mystyle.pt", vec)
    db = EmbeddingDatabase(tmp_path)
    prompt = "a photo of mystyle on a beach"
    ours = sd1.encode([prompt], embeddings=db).cross_attn
    plain = sd1.encode([prompt]).cross_attn

    chunks, _ = sd1.tokenize_weighted([(prompt, 1.0)], embeddings=db)
    (fix,) = chunks[0].fixes
    ids = list(chunks[0].tokens)
    extended, first_new = _extended_copy(clip_l, vec)
    ids[fix.offset : fix.offset + 2] = [first_new, first_new + 1]
    with torch.no_grad():
        reference = extended(input_ids=torch.tensor([ids])).last_hidden_state
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    # CLIP is causal: everything before the embedding is untouched, everything from it on changes.
    assert torch.equal(ours[0, : fix.offset], plain[0, : fix.offset])
    assert (ours[0, fix.offset :] - plain[0, fix.offset :]).abs().amax(dim=-1).min() > 0


def test_sdxl_embedding_uses_each_encoders_own_vectors(tmp_path, sdxl):
    vec_l, vec_g = _vectors(2, seed=8), _vectors(2, seed=9)
    save_file({"clip_l": vec_l, "clip_g": vec_g}, tmp_path / "xlstyle.safetensors")
    db = EmbeddingDatabase(tmp_path)
    prompt = "xlstyle, a castle"
    ours = sdxl.encode([prompt], embeddings=db)
    chunks, _ = sdxl.tokenize_weighted([(prompt, 1.0)], embeddings=db)
    (fix,) = chunks[0].fixes
    ids = torch.tensor([chunks[0].tokens])
    outs = []
    for tower, vec in zip(sdxl.towers, (vec_l, vec_g)):
        extended, first_new = _extended_copy(tower.module, vec)
        patched = ids.clone()
        patched[0, fix.offset : fix.offset + 2] = torch.tensor([first_new, first_new + 1])
        if tower.pad_id != sdxl.eos_id:
            first_eos = int((patched[0] == sdxl.eos_id).nonzero()[0])
            patched[0, first_eos + 1 :] = tower.pad_id
        with torch.no_grad():
            out = extended(input_ids=patched, output_hidden_states=True)
        outs.append(out.hidden_states[-2])
        if hasattr(out, "text_embeds"):
            # Pooled = projection of the first EOS (the extended ids are above EOS, so no argmax here).
            first_eos = int((ids[0] == sdxl.eos_id).nonzero()[0])
            with torch.no_grad():
                pooled = extended.text_projection(out.last_hidden_state[:, first_eos])
    torch.testing.assert_close(ours.cross_attn, torch.cat(outs, dim=-1), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=1e-6)


def test_used_embeddings_and_ti_hashes(tmp_path, sd1):
    write_a1111_pt(tmp_path / "good,one.pt", _vectors(1, seed=1))
    write_a1111_pt(tmp_path / "other.pt", _vectors(1, seed=2))
    db = EmbeddingDatabase(tmp_path)
    used = sd1.used_embeddings([[("other and good,one", 1.0)], [("other", 1.0)]], db)
    assert [e.name for e in used] == ["other", "good,one"]
    text = ti_hashes(used)
    assert text == f"other: {db.get('other').shorthash}, goodone: {db.get('good,one').shorthash}"
    assert ti_hashes([]) is None


def test_cli_lists_embeddings(tmp_path, capsys):
    from sdwebui.cli import main

    folder = tmp_path / "emb"
    folder.mkdir()
    write_a1111_pt(folder / "negstyle.pt", _vectors(2, 768))
    (folder / "broken.pt").write_bytes(b"not a pickle")
    assert main(["embeddings", "--embeddings-dir", str(folder), "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    short = sha256_file(folder / "negstyle.pt")[:12]
    assert lines[0] == f"negstyle [{short}]\t2 vectors\tsd1 (CLIP-L)\t{folder / 'negstyle.pt'}"
    assert lines[1].startswith("broken\tunreadable: ")


def test_txt2img_uses_embeddings_and_writes_ti_hashes(tmp_path):
    from tiny_models import build_tiny, write_single_file

    from sdwebui.models.loader import load_checkpoint
    from sdwebui.pipelines.context import GenerationContext
    from sdwebui.pipelines.params import Txt2ImgParams
    from sdwebui.pipelines.txt2img import txt2img

    path = write_single_file(build_tiny(ModelFamily.SD1, seed=4), tmp_path / "tiny.safetensors")
    model = load_checkpoint(path, device="cpu", dtype=torch.float32, vae_dtype=torch.float32)
    folder = tmp_path / "embeddings"
    folder.mkdir()
    write_a1111_pt(folder / "shinystyle.pt", _vectors(2, seed=5) * 5)
    write_a1111_pt(folder / "badhands.pt", _vectors(1, seed=6) * 5)
    db = EmbeddingDatabase(folder)

    def run(prompt, embeddings):
        params = Txt2ImgParams(prompt=prompt, negative_prompt="badhands", width=64, height=64, steps=2, seed=3,
                               sampler="Euler", rng="cpu")
        return txt2img(GenerationContext(model=model, embeddings=embeddings), params)

    with_db = run("a shinystyle house", db)
    without = run("a shinystyle house", None)
    assert not torch.equal(with_db.latents, without.latents)
    expected = f'TI hashes: "shinystyle: {db.get("shinystyle").shorthash}, badhands: {db.get("badhands").shorthash}"'
    assert expected in with_db.infotexts[0]
    assert "TI hashes" not in without.infotexts[0]


def test_original_textual_inversion_parameterdict_loads(tmp_path):
    vec = _vectors(2, seed=4)
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())})
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": params}, tmp_path / "old.pt")
    assert torch.equal(load_embedding(tmp_path / "old.pt").vectors[""], vec)
