"""Interrogation: A1111's DeepBooru tag formatting (thresholds, order, spaces, escaping, filters, ranks) and a tiny
WD14-style tagger (an ONNX graph built here, in the tagger extension's `models/interrogators/<name>/` layout) run
through onnxruntime behind `POST /sdapi/v1/interrogate`."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from sdwebui.pipelines.interrogate import TagOptions, format_tags

PROBS = {"rating:safe": 0.99, "smile": 0.9, "blue_sky": 0.97, "1girl": 0.5, "red_(color)": 0.6, "hat": 0.49}


@pytest.mark.parametrize("options, expected", [
    (TagOptions(), "1girl, blue sky, red \\(color\\), smile"),  # A1111's defaults: >= 0.5, alphabetical
    (TagOptions(sort_alpha=False), "blue sky, smile, red \\(color\\), 1girl"),
    (TagOptions(use_spaces=False, escape=False), "1girl, blue_sky, red_(color), smile"),
    (TagOptions(threshold=0.95), "blue sky"),
    (TagOptions(filter_tags="smile, blue sky"), "1girl, red \\(color\\)"),  # a space in a filter means "_"
    (TagOptions(threshold=0.8, include_ranks=True), "(blue sky:0.970), (smile:0.900)"),
])
def test_tags_are_formatted_as_a1111s_deepbooru(options, expected):
    assert format_tags(PROBS, options) == expected


def test_tag_options_come_from_a1111s_settings():
    options = TagOptions.from_settings({"interrogate_deepbooru_score_threshold": 0.7, "deepbooru_sort_alpha": False,
                                        "deepbooru_use_spaces": False, "deepbooru_escape": False,
                                        "deepbooru_filter_tags": "hat", "interrogate_return_ranks": True})
    assert options == TagOptions(0.7, False, False, False, "hat", True)


TAGS = ["general", "sensitive", "questionable", "explicit", "blue_sky", "red_(color)", "smile"]


def write_tiny_tagger(folder, size: int = 32) -> None:
    """A WD14-shaped ONNX model: N x size x size x 3 BGR -> per-tag sigmoid of (mean B, G, R) @ W + b, so blue
    images are "blue_sky", red ones "red_(color)", and "smile" is always 0.88."""
    onnx = pytest.importorskip("onnx", reason="onnx (a test dependency) builds the tiny tagger")
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((3, len(TAGS)), np.float32)
    weights[0, 4] = weights[2, 5] = 0.05  # B -> blue_sky, R -> red_(color)
    bias = np.array([0, 0, 0, 0, -5, -5, 2], np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input_1", "axes"], ["mean"], keepdims=0),
         helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
         helper.make_node("Add", ["logits0", "b"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"])],
        "tiny-wd14",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, [None, size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [None, len(TAGS)])],
        [numpy_helper.from_array(np.array([1, 2], np.int64), "axes"), numpy_helper.from_array(weights, "W"),
         numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{9 if i < 4 else 0},1" for i, name in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n")


def _b64png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_tagger_prepares_images_as_smilingwolfs_reference(tmp_path):
    pytest.importorskip("onnxruntime", reason="WD14 taggers run on onnxruntime (an optional extra)")
    from sdwebui.models.taggers import TaggerLibrary, find_taggers, prepare

    write_tiny_tagger(tmp_path / "interrogators" / "tiny-wd14")
    assert [e.name for e in find_taggers(tmp_path)] == ["tiny-wd14"]
    # A wide image is padded to a white square, then resized; BGR order; 0..255.
    prepared = prepare(Image.new("RGB", (64, 32), (255, 0, 0)), 32)
    assert prepared.shape == (1, 32, 32, 3) and prepared.dtype == np.float32
    assert prepared[0, 16, 16].tolist() == [0, 0, 255] and prepared[0, 0, 16].tolist() == [255, 255, 255]
    ratings, tags = TaggerLibrary(tmp_path).probabilities("tiny-wd14", Image.new("RGB", (32, 32), (0, 0, 255)))
    assert list(ratings) == ["general", "sensitive", "questionable", "explicit"]
    assert tags["blue_sky"] > 0.99 and tags["red_(color)"] < 0.01 and abs(tags["smile"] - 0.8808) < 1e-3


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    pytest.importorskip("onnxruntime", reason="WD14 taggers run on onnxruntime (an optional extra)")
    from test_api_support import LiveServer, make_data_dir

    root = make_data_dir(tmp_path_factory.mktemp("interrogate-data"), tiny_sd1_path)
    write_tiny_tagger(root / "models" / "interrogators" / "tiny-wd14")
    with LiveServer(root) as live:
        yield live


def test_api_interrogate_with_a_wd14_tagger(server):
    blue, red = _b64png(Image.new("RGB", (32, 32), (0, 0, 255))), _b64png(Image.new("RGB", (32, 32), (255, 0, 0)))
    with server.client() as client:
        r = client.post("/sdapi/v1/interrogate", json={"image": blue, "model": "wd14"})
        assert r.status_code == 200, r.text
        assert r.json() == {"caption": "blue sky, smile"}
        r = client.post("/sdapi/v1/interrogate", json={"image": "data:image/png;base64," + red, "model": "tiny-wd14"})
        assert r.json() == {"caption": "red \\(color\\), smile"}
        assert client.post("/sdapi/v1/options", json={"deepbooru_sort_alpha": False, "deepbooru_escape": False,
                                                        "interrogate_return_ranks": True}).status_code == 200
        try:
            r = client.post("/sdapi/v1/interrogate", json={"image": red, "model": "wd14"})
            assert r.json() == {"caption": "(red (color):1.000), (smile:0.881)"}
        finally:
            client.post("/sdapi/v1/options", json={"deepbooru_sort_alpha": True, "deepbooru_escape": True,
                                                    "interrogate_return_ranks": False})


@pytest.mark.parametrize("body, field, message", [
    ({"model": "clip"}, "model", "models/BLIP/"),  # nothing installed: the folder to put it in, never a download
    ({"model": "deepdanbooru"}, "model", "models/torch_deepdanbooru/"),
    ({"model": "wd-v1-4-vit-tagger-v2"}, "model", "models/interrogators"),
    ({"model": "wd14", "image": "not base64!"}, "image", ""),
])
def test_api_interrogate_bad_input_is_422(server, body, field, message):
    with server.client() as client:
        r = client.post("/sdapi/v1/interrogate", json={"image": _b64png(Image.new("RGB", (8, 8))), **body})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and message in r.json()["message"]


def test_caption_a_folder_from_the_command_line(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="WD14 taggers run on onnxruntime (an optional extra)")
    from sdwebui.cli import main

    write_tiny_tagger(tmp_path / "models" / "interrogators" / "tiny-wd14")
    pictures = tmp_path / "dataset"
    pictures.mkdir()
    Image.new("RGB", (32, 32), (0, 0, 255)).save(pictures / "sky.png")
    Image.new("RGB", (48, 32), (255, 0, 0)).save(pictures / "red.jpg")
    (pictures / "notes.md").write_text("not an image")
    (pictures / "old.png").write_bytes((pictures / "sky.png").read_bytes())
    (pictures / "old.txt").write_text("my own caption\n")
    assert main(["caption", str(pictures), "--data-dir", str(tmp_path)]) == 0
    assert (pictures / "sky.txt").read_text() == "blue sky, smile\n"
    assert (pictures / "red.txt").read_text() == "red \\(color\\), smile\n"  # padded to a white square first
    assert (pictures / "old.txt").read_text() == "my own caption\n"  # kept without --overwrite
    assert not (pictures / "notes.txt").exists()
    assert "2 caption(s) written with tiny-wd14; 1 image(s) already had one" in capsys.readouterr().err
    assert main(["caption", str(pictures), "--overwrite", "--sort-by-score", "--keep-underscores", "--no-escape",
                 "--data-dir", str(tmp_path)]) == 0
    assert (pictures / "old.txt").read_text() == "blue_sky, smile\n"
    assert (pictures / "red.txt").read_text() == "red_(color), smile\n"
    capsys.readouterr()
    assert main(["caption", str(pictures), "--tagger", "nope", "--data-dir", str(tmp_path)]) == 2
    assert "--tagger nope" in capsys.readouterr().err


def test_the_img2img_tabs_interrogate_button(server, tmp_path):
    from sdwebui.ui.fields import UIError
    from sdwebui.ui.img2img import interrogated_prompt

    blue = Image.new("RGBA", (32, 32), (0, 0, 255, 255))
    assert interrogated_prompt(server.services, {"mode": "img2img", "init_image": blue}, "old prompt") == \
        "blue sky, smile"
    with pytest.raises(UIError, match="drop an image"):
        interrogated_prompt(server.services, {"mode": "img2img", "init_image": None})


def test_extras_caption_writes_a_txt_beside_each_result_under_its_original_name(server):
    """A1111's Extras "Caption" (postprocessing_caption.py) with Batch's original names: a captioned training set."""
    from test_api_support import wait_for_job

    blue, red = _b64png(Image.new("RGB", (32, 32), (0, 0, 255))), _b64png(Image.new("RGB", (32, 32), (255, 0, 0)))
    with server.client() as client:
        r = client.post("/api/v1/jobs", json={"type": "extras", "images": [blue, red], "names": ["sky.png", "../rose.jpg"],
                                              "caption": ["WD14"]})
        assert r.status_code == 202, r.text
        view = wait_for_job(client, r.json()["id"])
        assert view["status"] == "done", view
        assert view["result"]["captions"] == ["blue sky, smile", "red \\(color\\), smile"]
        saved = [server.config.paths.outputs_dir / image["path"] for image in view["result"]["images"]]
        assert [path.name for path in saved] == ["sky.png", "rose.png"]  # a name is never a path
        assert saved[1].parent == saved[0].parent
        assert saved[0].with_suffix(".txt").read_text() == "blue sky, smile\n"
        assert saved[1].with_suffix(".txt").read_text() == "red \\(color\\), smile\n"

        saved[0].with_suffix(".txt").write_text("my own words")
        for action, expected in (("Keep", "my own words"), ("Prepend", "my own words blue sky, smile"),
                                 ("Ignore", "blue sky, smile")):
            assert client.post("/sdapi/v1/options", json={"postprocessing_existing_caption_action": action}).is_success
            r = client.post("/api/v1/jobs", json={"type": "extras", "images": [blue], "names": ["sky.png"],
                                                  "caption": ["WD14"]})
            assert wait_for_job(client, r.json()["id"])["status"] == "done"
            assert saved[0].with_suffix(".txt").read_text().strip() == expected, action
            if action == "Prepend":
                saved[0].with_suffix(".txt").write_text("my own words")
        client.post("/sdapi/v1/options", json={"postprocessing_existing_caption_action": "Ignore"})


def test_extras_caption_travels_with_the_image_to_where_it_is_written(server, tmp_path, monkeypatch):
    """Under `--ray` a worker does not write its images: it sends them, with `write_image`'s arguments, to the API
    node, which calls `save_image` with them (`server.cluster`). The caption goes the same way, so its `.txt` lands
    beside the image there (it once stayed on the worker, unwritten)."""
    from test_api_support import wait_for_job

    from sdwebui.pipelines.output import save_image

    sent = []

    def send_to_api_node(image, outdir, **options):  # what a Ray worker's ImageOutbox does, minus the transport
        sent.append((image, options))
        return tmp_path / "worker-placeholder.png"

    monkeypatch.setattr(server.services, "write_image", send_to_api_node)
    blue = _b64png(Image.new("RGB", (32, 32), (0, 0, 255)))
    with server.client() as client:
        r = client.post("/api/v1/jobs", json={"type": "extras", "images": [blue], "names": ["sky.png"],
                                              "caption": ["WD14"]})
        assert wait_for_job(client, r.json()["id"])["status"] == "done"
    assert not (tmp_path / "worker-placeholder.txt").exists()
    (image, options), = sent
    written = save_image(image, tmp_path / "api-node", **options)  # the API node's side
    assert written.name == "sky.png" and written.with_suffix(".txt").read_text() == "blue sky, smile\n"


@pytest.mark.parametrize("body, field, message", [
    ({"caption": ["BLIP"]}, "caption", "models/BLIP/"),  # not installed: said before anything is queued
    ({"caption": ["Deepbooru"]}, "caption", "models/torch_deepdanbooru/"),
    ({"caption": ["GPT"]}, "caption", ""),
    ({"names": ["a.png", "b.png"]}, "names", "one name per image"),
])
def test_extras_caption_bad_input_is_422_and_queues_nothing(server, body, field, message):
    with server.client() as client:
        before = len(client.get("/api/v1/jobs").json())
        r = client.post("/api/v1/jobs", json={"type": "extras", "images": [_b64png(Image.new("RGB", (8, 8)))], **body})
        assert r.status_code == 422, r.text
        assert r.json()["field"].startswith(field) and message in r.json()["message"]
        assert len(client.get("/api/v1/jobs").json()) == before
