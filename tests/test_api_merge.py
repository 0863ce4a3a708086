"""The Checkpoint Merger as a native job against a real uvicorn server: queued like generation, progress, shown in
the job history; the new checkpoint is in the model lists at once and generates; bad input is a 422 naming the
field before anything is queued or written."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_api_support import LiveServer, make_data_dir, wait_for_job
from tiny_models import build_tiny, write_single_file

from sdwebui.models.family import ModelFamily


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("merge-api"), tiny_sd1_path, "alpha.safetensors")
    ckpt = data / "models" / "Stable-diffusion"
    write_single_file(build_tiny(ModelFamily.SD1, seed=1), ckpt / "beta.safetensors")
    write_single_file(build_tiny(ModelFamily.SDXL, seed=0), ckpt / "xl.safetensors")
    with LiveServer(data) as live:
        yield live


def files(server):
    return sorted(p.name for p in server.config.paths.ckpt_dir.iterdir())


def test_merge_job_runs_in_the_queue_and_the_model_appears(server):
    with server.client() as client:
        response = client.post("/api/v1/jobs", json={
            "type": "merge", "primary_model_name": "alpha", "secondary_model_name": "beta.safetensors",
            "interp_method": "Weighted sum", "multiplier": 0.5, "custom_name": "api-mix", "save_as_half": True})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        view = wait_for_job(client, job_id, timeout=120)
        assert view["status"] == "done", view["error"]
        assert view["kind"] == "merge"
        assert view["progress"]["step"] == view["progress"]["total_steps"] > 100
        result = view["result"]
        assert result["checkpoint"]["name"] == "api-mix.safetensors" and len(result["checkpoint"]["hash"]) == 10
        assert result["info"] == "Checkpoint saved to api-mix.safetensors"
        # in the job history
        assert job_id in [job["id"] for job in client.get("/api/v1/jobs").json()]
        # in both model lists at once, with its hash
        native = {m["name"]: m for m in client.get("/api/v1/models").json()}
        assert native["api-mix.safetensors"]["hash"] == result["checkpoint"]["hash"]
        titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert result["checkpoint"]["title"] in titles
        merged = load_file(server.config.paths.ckpt_dir / "api-mix.safetensors")
        assert merged["model.diffusion_model.out.2.weight"].dtype == torch.float16
        # and it generates
        gen = client.post("/sdapi/v1/txt2img", json={
            "prompt": "a cat", "steps": 2, "width": 64, "height": 64,
            "override_settings": {"sd_model_checkpoint": result["checkpoint"]["title"]}})
        assert gen.status_code == 200, gen.text
        assert "api-mix" in gen.json()["info"]


@pytest.mark.parametrize("body, field", [
    ({"primary_model_name": "nosuch", "secondary_model_name": "beta"}, "primary_model_name"),
    ({"primary_model_name": "alpha", "secondary_model_name": "xl"}, "secondary_model_name"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "interp_method": "Add difference"},
     "tertiary_model_name"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "custom_name": "../../escape"}, "custom_name"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "custom_name": "alpha"}, "custom_name"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "discard_weights": "(["}, "discard_weights"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "bake_in_vae": "nosuch.pt"}, "bake_in_vae"),
    ({"primary_model_name": "alpha", "secondary_model_name": "beta", "config_source": 7}, "config_source"),
    ({"primary_model_name": "alpha", "interp_method": "Blend"}, "interp_method"),
])
def test_bad_input_is_a_422_naming_the_field(server, body, field):
    before = files(server)
    with server.client() as client:
        response = client.post("/api/v1/jobs", json={"type": "merge", **body})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail[0]["loc"][-1] == field, detail
        assert "/tmp" not in response.text  # no server path leaks to the client
    assert files(server) == before


def test_model_tool_jobs(server):
    ckpt, loras = server.config.paths.ckpt_dir, server.config.paths.lora_dir
    with server.client() as client:
        def run(body):
            response = client.post("/api/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            view = wait_for_job(client, response.json()["id"], timeout=120)
            assert view["status"] == "done", view["error"]
            assert view["kind"] == body["type"]
            return view["result"]

        result = run({"type": "extract_lora", "tuned": "beta", "base": "alpha", "rank": 4, "name": "delta"})
        assert result["file"] == "delta.safetensors" and (loras / "delta.safetensors").is_file()
        result = run({"type": "bake_lora", "checkpoint": "alpha", "loras": [{"name": "delta", "weight": 0.5}],
                      "name": "baked"})
        assert result["checkpoint"]["name"] == "baked.safetensors" and result["checkpoint"]["hash"]
        result = run({"type": "convert", "checkpoint": "alpha", "precision": "fp16", "name": "alpha-half"})
        assert load_file(ckpt / "alpha-half.safetensors")["model.diffusion_model.out.2.weight"].dtype == torch.float16
        names = [m["name"] for m in client.get("/api/v1/models").json()]
        assert {"baked.safetensors", "alpha-half.safetensors"} <= set(names)
        before = files(server)
        for body, loc in (
            ({"type": "extract_lora", "tuned": "xl", "base": "alpha", "name": "x"}, ["base"]),
            ({"type": "bake_lora", "checkpoint": "alpha", "loras": [{"name": "nolora"}], "name": "x"},
             ["loras", 0, "name"]),
            ({"type": "convert", "checkpoint": "alpha", "name": "alpha-half"}, ["name"]),
            ({"type": "convert", "checkpoint": "alpha", "name": "../up"}, ["name"]),
            ({"type": "extract_lora", "tuned": "beta", "base": "alpha", "rank": 0, "name": "x"}, ["rank"]),
        ):
            response = client.post("/api/v1/jobs", json=body)
            assert response.status_code == 422, response.text
            assert response.json()["detail"][0]["loc"][-len(loc):] == loc, response.text
        assert files(server) == before


def test_merge_and_tool_payloads_survive_the_store():
    """A queued merge / tool job is stored as JSON and read back as the same payload (a restart re-queues it)."""
    import json

    from sdwebui.server.payloads import MergePayload, ModelToolPayload, load_payload

    merge = MergePayload(options={"interp_method": "Add difference", "multiplier": 0.5, "bake_in_vae": "/v.pt"},
                         models=(("/m/a.safetensors", "a.safetensors"), ("/m/b.safetensors", "b.safetensors"), None),
                         vae_name="v.pt", target="/m/out.safetensors")
    assert load_payload("merge", json.loads(json.dumps(merge.to_json()))) == merge
    tool = ModelToolPayload(tool="bake_lora", args={"source": "/m/a.safetensors", "loras": [["/l/x.safetensors", 0.5]]},
                            target="/m/baked.safetensors")
    again = load_payload("bake_lora", json.loads(json.dumps(tool.to_json())))
    assert again == tool and again.kind == "bake_lora" and again.recovered() == tool
