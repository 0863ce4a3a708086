"""Writes a database with today's (pre-seam) main: finished txt2img / img2img / inpaint / extras / load_model
jobs with history, a failed and a cancelled job, settings, and two jobs left queued."""
import base64
import io
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, "/work/main/tests")
from PIL import Image
from test_api_support import LiveServer, wait_for_job

data = Path(sys.argv[1]); shutil.rmtree(data, ignore_errors=True); data.mkdir(parents=True)

def b64(image):
    buf = io.BytesIO(); image.save(buf, format="PNG"); return base64.b64encode(buf.getvalue()).decode()

init = Image.new("RGB", (64, 64), (200, 40, 40))
mask = Image.new("L", (64, 64), 0); mask.paste(255, (16, 16, 48, 48))
with LiveServer(data) as live, live.client() as c:
    r = c.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "samples_filename_pattern": "[seed]-[steps]"}); assert r.status_code == 200, r.text
    ids = []
    r = c.post("/api/v1/jobs", json={"prompt": "a red circle on the left, blue background", "negative_prompt": "green",
                                      "width": 64, "height": 64, "steps": 3, "seed": 1234, "sampler": "Euler a", "batch_size": 2})
    ids.append(wait_for_job(c, r.json()["id"], 300)["id"])
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "a blue square at the top", "steps": 3, "seed": 77, "width": 64,
                                          "height": 64, "sampler_name": "DPM++ 2M", "scheduler": "Karras", "save_images": True,
                                          "enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5, "hr_second_pass_steps": 2})
    assert r.status_code == 200, r.text
    r = c.post("/sdapi/v1/img2img", json={"prompt": "a green triangle", "init_images": [b64(init)], "steps": 4, "seed": 5,
                                          "denoising_strength": 0.6, "save_images": True, "width": 64, "height": 64})
    assert r.status_code == 200, r.text
    r = c.post("/api/v1/jobs", json={"type": "img2img", "prompt": "inpaint a yellow circle", "init_images": [b64(init)],
                                      "mask": b64(mask), "steps": 4, "seed": 9, "width": 64, "height": 64, "inpainting_fill": 2})
    ids.append(wait_for_job(c, r.json()["id"], 300)["id"])
    r = c.post("/api/v1/jobs", json={"type": "extras", "images": [b64(init)], "upscaling_resize": 2, "upscaler_1": "Lanczos"})
    ids.append(wait_for_job(c, r.json()["id"], 300)["id"])
    broken = data / "models" / "Stable-diffusion"; broken.mkdir(parents=True, exist_ok=True)
    (broken / "zz-broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    r = c.post("/api/v1/jobs", json={"prompt": "fails", "width": 64, "height": 64, "steps": 2, "model": "zz-broken.safetensors"})
    print("broken model:", wait_for_job(c, r.json()["id"], 60)["status"])
    (broken / "zz-broken.safetensors").unlink(); broken.rmdir(); broken.parent.rmdir()
    r = c.post("/sdapi/v1/reload-checkpoint"); print("reload", r.status_code)
    for view in c.get("/api/v1/jobs").json():
        print(view["kind"], view["status"], view["error"])
    print(len(c.get("/api/v1/images").json()), "images")

# Jobs left queued: build the app again but never start its worker (no lifespan): submissions stay queued.
from fastapi.testclient import TestClient

from sdwebui.app import build_app
from sdwebui.config import Paths
from sdwebui.server.config import ServerConfig

app = build_app(ServerConfig(paths=Paths.from_flags(data_dir=data)))
c = TestClient(app, base_url="http://127.0.0.1")
r = c.post("/api/v1/jobs", json={"prompt": "a queued red square", "width": 64, "height": 64, "steps": 2, "seed": 31, "sampler": "Euler"}); print(r.status_code, r.text)
r = c.post("/api/v1/jobs", json={"type": "img2img", "prompt": "a queued img2img", "init_images": [b64(init)], "width": 64, "height": 64, "steps": 2, "seed": 32, "denoising_strength": 0.5}); print(r.status_code, r.text)
r = c.post("/api/v1/jobs", json={"prompt": "cancel me", "width": 64, "height": 64, "steps": 2}); jid = r.json()["id"]
print(c.delete(f"/api/v1/jobs/{jid}").json())
app.state.services.store.close()
