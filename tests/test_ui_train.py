"""The Train tab (without a browser): it is in the UI in A1111's place, its fields make A1111's training
requests (checked as the API checks them)."""

from __future__ import annotations

import pytest
from test_api_support import make_data_dir

from sdwebui.config import Paths
from sdwebui.server.config import ServerConfig


@pytest.fixture(scope="module")
def services(tmp_path_factory, tiny_sd1_path):
    from sdwebui.server.services import Services

    data = make_data_dir(tmp_path_factory.mktemp("ui-train"), tiny_sd1_path, "tiny-sd1.safetensors")
    services = Services(ServerConfig(paths=Paths.from_flags(data_dir=data), preload=False))
    yield services
    services.close()


def test_train_tab_is_after_the_merger_and_makes_a1111_requests(services):
    import gradio as gr

    from sdwebui.server.training import TrainEmbeddingJob, TrainHypernetworkJob
    from sdwebui.ui.fields import UIError
    from sdwebui.ui.layout import build_ui
    from sdwebui.ui.train import TRAIN_FIELDS, template_names, train_job

    demo = build_ui(services)
    tabs = [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    top = [block.elem_id for block in demo.blocks.values()
           if isinstance(block, gr.Tab) and str(block.elem_id).startswith("tab_")]
    assert top.index("tab_train") == top.index("tab_modelmerger") + 1  # A1111's order
    assert {"Create embedding", "Create hypernetwork"} <= set(tabs)
    assert {"none.txt", "subject_filewords.txt", "hypernetwork.txt"} <= set(template_names(services))

    values = {"embedding_name": "word", "hypernetwork_name": "net", "hypernetwork_learn_rate": "0.00001",
              "save_every": 10, "learn_rate": "0.005:100, 1e-4", "batch_size": 2.0, "gradient_step": 1.0,
              "data_root": "images", "log_directory": "textual_inversion", "template_filename": "none.txt",
              "training_width": 64, "training_height": 64, "varsize": False, "steps": 20.0,
              "clip_grad_mode": "norm", "clip_grad_value": "1", "shuffle_tags": True, "tag_drop_out": 0.1,
              "latent_sampling_method": "random", "create_image_every": 0.0, "use_weight": True}
    assert set(TRAIN_FIELDS) < set(values)
    embedding = train_job("embedding", values)
    assert isinstance(embedding, TrainEmbeddingJob)
    assert (embedding.embedding_name, embedding.save_embedding_every, embedding.batch_size, embedding.steps) == (
        "word", 10, 2, 20)
    assert embedding.use_weight  # "Use PNG alpha channel as loss weight"
    hyper = train_job("hypernetwork", values)
    assert isinstance(hyper, TrainHypernetworkJob) and hyper.learn_rate == "0.00001"
    assert hyper.save_hypernetwork_every == 10
    with pytest.raises(UIError, match="tag_drop_out"):
        train_job("embedding", {**values, "tag_drop_out": 2.0})



def test_lora_sub_tab_makes_train_lora_jobs(services):
    import gradio as gr

    from sdwebui.server.training import TrainLoraJob
    from sdwebui.ui.fields import UIError
    from sdwebui.ui.layout import build_ui
    from sdwebui.ui.train import LORA_FIELDS, lora_job

    demo = build_ui(services)
    assert "LoRA" in [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]
    values = {"lora_name": "mylora", "lora_data_root": "images", "lora_rank": 4.0, "lora_alpha": 2.0,
              "lora_learn_rate": "1e-4:100, 5e-5", "lora_steps": 200.0, "lora_batch_size": 2.0,
              "lora_resolution": 512, "lora_buckets": True, "lora_resume": True, "lora_overwrite_old": False,
              "lora_shuffle_tags": False, "lora_tag_drop_out": 0.0, "lora_log_directory": "textual_inversion",
              "lora_save_every": 50.0, "lora_create_image_every": 0.0, "lora_preview_prompt": "a zork"}
    assert set(LORA_FIELDS) == set(values)
    job = lora_job(values)
    assert isinstance(job, TrainLoraJob) and job.type == "train_lora"
    assert (job.rank, job.alpha, job.steps, job.batch_size, job.save_every) == (4, 2.0, 200, 2, 50)
    assert job.preview_from_txt2img and job.preview_prompt == "a zork" and job.preview_width == 512
    assert not lora_job({**values, "lora_preview_prompt": ""}).preview_from_txt2img
    with pytest.raises(UIError, match="tag_drop_out"):
        lora_job({**values, "lora_tag_drop_out": 3.0})
