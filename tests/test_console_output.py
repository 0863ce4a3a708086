"""What the server prints while it works: one tqdm bar per generation job over all of its steps (A1111's console),
and one line, not a traceback, when a UI control refuses a value."""

from __future__ import annotations

import io
from dataclasses import dataclass

import httpx
import pytest
from test_api_support import LiveServer, make_data_dir

from sdwebui.server.console import JobConsoleBar


@dataclass
class Step:
    step: int
    total_steps: int
    batch_index: int = 0
    batch_count: int = 1

    @property
    def global_step(self) -> int:
        return self.batch_index * self.total_steps + self.step


def bar_text(stream: io.StringIO) -> str:
    """The bar as the terminal shows it last (tqdm rewrites the line with carriage returns)."""
    return stream.getvalue().replace("\n", "\r").split("\r")[-2 if stream.getvalue().endswith("\n") else -1]


def test_the_bar_counts_every_pass_of_every_batch():
    """Two batches of 3 steps, each with a hires pass of 3 steps (the step count restarts with every pass):
    the bar ends at 12/12, never going back."""
    stream = io.StringIO()
    bar = JobConsoleBar("txt2img 3f2a1c9e", stream=stream, disable=False)
    shown = []
    for batch in range(2):
        for _ in ("first pass", "hires pass"):
            for step in range(1, 4):
                bar.show(Step(step, 3, batch, 2))
                shown.append(bar._bar.n)
    assert shown == sorted(shown) and shown[-1] == 12 and bar._bar.total == 12
    bar.close()
    line = bar_text(stream)
    assert line.startswith("txt2img 3f2a1c9e: 100%") and "12/12" in line and "batch 2/2" in line


def test_a_skipped_pass_counts_the_steps_it_made():
    stream = io.StringIO()
    bar = JobConsoleBar("txt2img x", stream=stream, disable=False)
    for step in (1, 2):
        bar.show(Step(step, 10, 0, 2))  # skipped after 2 of 10 steps
    for step in range(1, 11):
        bar.show(Step(step, 10, 1, 2))
    assert bar._bar.n == 12
    bar.close()


def test_no_bar_for_a_job_that_never_reached_a_step():
    stream = io.StringIO()
    JobConsoleBar("txt2img x", stream=stream, disable=False).close()
    assert stream.getvalue() == ""


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("console"), tiny_sd1_path, "tiny-sd1.safetensors")
    with LiveServer(data) as live:
        yield live


def test_a_job_over_the_api_draws_its_bar(server, monkeypatch):
    import sdwebui.server.runners as runners

    stream = io.StringIO()
    monkeypatch.setattr(runners, "JobConsoleBar",
                        lambda label: JobConsoleBar(label, stream=stream, disable=False))
    with httpx.Client(base_url=server.url, timeout=120) as client:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 3, "width": 64, "height": 64,
                                                          "n_iter": 2, "save_images": False})
        assert response.status_code == 200, response.text
    line = bar_text(stream)
    assert line.startswith("txt2img ") and "100%" in line and "6/6" in line, stream.getvalue()


def test_a_refused_ui_value_is_one_log_line_not_a_traceback(capsys, caplog):
    import gradio
    import gradio.queueing

    from sdwebui.ui.layout import one_line_gradio_errors

    one_line_gradio_errors()
    try:
        raise gradio.Error("Value 4000 is greater than maximum value 2048.")
    except gradio.Error:
        gradio.queueing.traceback.print_exc()
    assert "Traceback" not in capsys.readouterr().err
    assert [record.getMessage() for record in caplog.records] == [
        "UI: Value 4000 is greater than maximum value 2048."]
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        gradio.queueing.traceback.print_exc()
    assert "Traceback" in capsys.readouterr().err  # anything else keeps its traceback


def test_live_previews_are_smooth_at_the_image_size_and_the_last_is_the_decoded_image(server):
    """The cheap preview has one pixel per latent pixel: it is scaled (bicubic) to the image's size, not drawn as
    8x8 blocks; once a batch is decoded, the job's preview is that image (the full decode)."""
    import numpy as np
    import torch
    from PIL import Image

    from sdwebui.server.runners import PREVIEW_MAX_SIDE, preview_png

    latent = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    preview = np.asarray(Image.open(io.BytesIO(preview_png(latent, "sd1"))))
    assert preview.shape == (64, 96, 3)
    block = preview[8:16, 8:16].reshape(-1, 3)
    assert len(np.unique(block, axis=0)) > 8  # not one colour per 8x8 block
    big = torch.randn(1, 4, 128, 96)
    assert Image.open(io.BytesIO(preview_png(big, "sdxl"))).size == (PREVIEW_MAX_SIDE * 3 // 4, PREVIEW_MAX_SIDE)

    services = server.services
    job = services.generation.submit(_request(prompt="a cat", steps=2, width=64, height=64, seed=5))
    assert job.finished.wait(120) and job.images, job.status
    final = Image.open(io.BytesIO(job.progress.preview_png))
    assert final.size == (64, 64)
    assert np.array_equal(np.asarray(final), np.asarray(job.images[0].convert("RGB")))


def _request(**values):
    from sdwebui.server.service import GenerationRequest

    return GenerationRequest(kind="txt2img", values=values, save_images=False)
