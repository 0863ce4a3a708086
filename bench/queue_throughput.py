"""Queue throughput of a real server: jobs/s and p50/p95 latency with 1, 4 and 16 concurrent clients, and the
start-up time to ready.

A real `sdwebui serve` process (API only unless --ui) is started on a free port with a small model: the one given
with --model, else the embedded demo model when it is there, else the tiny SD1 model the tests use (random
weights, the real architecture at small widths). Clients are threads posting `/sdapi/v1/txt2img` (each request
waits for its image, as A1111 clients do) until the round's jobs are done.

- start-up: process start until `/sdapi/v1/progress` answers ("ready"), and until the first job's image comes
  back (includes importing the pipeline and loading the model).
- per round: jobs/s = jobs / wall time; latency = one request, submit to image, as its client saw it (so with
  16 clients it includes the time spent waiting behind the other clients' jobs: one worker runs jobs in order).
- "HTTP floor": the median of a trivial GET, the cost of a request with no work in it on this machine.

    .venv/bin/python bench/queue_throughput.py                      # 1, 4, 16 clients, 64x64, 4 steps
    .venv/bin/python bench/queue_throughput.py --jobs 64 --steps 10 --size 128 --ui
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_model(data_dir: Path, model: Path | None) -> str:
    """Put a checkpoint in `data_dir/models/Stable-diffusion`; returns a description."""
    ckpt_dir = data_dir / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if model is not None:
        shutil.copyfile(model, ckpt_dir / model.name)
        return f"{model.name} (--model)"
    from sdwebui.models.manager import DEMO_CHECKPOINT

    if DEMO_CHECKPOINT.is_file():
        return f"{DEMO_CHECKPOINT.name} (embedded demo model)"
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    import tiny_models

    from sdwebui.models.family import ModelFamily
    from sdwebui.models.loader import default_alphas_cumprod

    tiny = tiny_models.build_tiny(ModelFamily.SD1)
    extra = {
        "alphas_cumprod": default_alphas_cumprod(),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
    }
    tiny_models.write_single_file(tiny, ckpt_dir / "tiny-sd1.safetensors", extra=extra)
    return "tiny-sd1.safetensors (the tests' tiny SD1 model, random weights)"


def ui_flags(ui: bool) -> list[str]:
    from sdwebui.cli import build_parser

    _, unknown = build_parser().parse_known_args(["serve", "--nowebui"])
    return [] if ui or unknown else ["--nowebui"]


class Server:
    def __init__(self, data_dir: Path, *, ui: bool, log: Path, threads: int | None):
        import httpx

        self.port = free_port()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=600)
        self.log = open(log, "wb")
        env = dict(os.environ)
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sdwebui.cli", "serve", "--data-dir", str(data_dir), "--port", str(self.port),
             *ui_flags(ui)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )

    def wait_ready(self, timeout: float = 600) -> float:
        import httpx

        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}; see {self.log.name}")
            try:
                if self.client.get("/sdapi/v1/progress", timeout=5).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        raise SystemExit(f"the server was not ready after {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def txt2img(client, request: dict) -> float:
    started = time.perf_counter()
    response = client.post("/sdapi/v1/txt2img", json=request)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"txt2img failed: {response.status_code} {response.text[:300]}")
    return elapsed


def run_round(url: str, clients: int, jobs: int, request: dict) -> tuple[float, list[float]]:
    import httpx

    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(jobs))
    errors: list[BaseException] = []

    def client_loop() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            while True:
                with lock:
                    number = next(counter, None)
                if number is None:
                    return
                try:
                    latency = txt2img(client, {**request, "seed": 1000 + number, "prompt": f"job {number}"})
                except BaseException as error:  # noqa: BLE001 - reported after the round
                    errors.append(error)
                    return
                with lock:
                    latencies.append(latency)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise SystemExit(f"a client failed: {errors[0]}")
    return wall, latencies


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels (default 1,4,16)")
    parser.add_argument("--jobs", type=int, default=32, help="jobs per round (at least the number of clients)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64, help="width and height")
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--model", type=Path, help="a checkpoint to use instead of the demo / tiny model")
    parser.add_argument("--ui", action="store_true", help="serve the web UI too (start-up includes Gradio)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the server (default: torch's, one per "
                        "core; on a CPU shared with other work, 1 can be many times faster)")
    parser.add_argument("--keep", action="store_true", help="keep the data folder (printed)")
    args = parser.parse_args()
    levels = [int(part) for part in args.clients.split(",") if part.strip()]

    data_dir = Path(tempfile.mkdtemp(prefix="sdwebui-bench-"))
    model = prepare_model(data_dir, args.model)
    request = {"steps": args.steps, "width": args.size, "height": args.size, "sampler_name": args.sampler,
               "send_images": True}
    server = Server(data_dir, ui=args.ui, log=data_dir / "server.log", threads=args.threads)
    try:
        ready = server.wait_ready()
        first = txt2img(server.client, {**request, "seed": 1})
        first_done = time.perf_counter() - server.started
        floor = statistics.median(_timed_get(server.client, "/sdapi/v1/progress") for _ in range(20))
        for _ in range(3):  # warm caches before measuring
            txt2img(server.client, {**request, "seed": 2})
        alone = statistics.median(txt2img(server.client, {**request, "seed": 3}) for _ in range(5))

        print(f"model: {model}")
        print(f"request: {args.size}x{args.size}, {args.steps} steps, {args.sampler}, 1 image, base64 PNG returned")
        threads = args.threads or os.environ.get("OMP_NUM_THREADS") or "torch default"
        print(f"machine: {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), {_device()}; "
              f"server: {'API + UI' if args.ui else 'API only'}, threads: {threads}")
        print()
        print(f"start-up to ready (process start -> /sdapi/v1/progress answers): {ready:8.2f} s")
        print(f"start-up to first image (incl. pipeline import and model load):  {first_done:8.2f} s "
              f"(the first request itself: {first:.2f} s)")
        print(f"HTTP floor (median GET /sdapi/v1/progress):                      {floor * 1000:8.1f} ms")
        print(f"one job alone (median of 5, submit -> image):                    {alone * 1000:8.1f} ms")
        print()
        print(f"{'clients':>7} {'jobs':>5} {'wall s':>8} {'jobs/s':>8} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
        for clients in levels:
            jobs = max(args.jobs, clients)
            wall, latencies = run_round(str(server.client.base_url).rstrip("/"), clients, jobs, request)
            print(f"{clients:>7} {jobs:>5} {wall:>8.2f} {jobs / wall:>8.2f} {percentile(latencies, 50) * 1000:>9.1f} "
                  f"{percentile(latencies, 95) * 1000:>9.1f} {max(latencies) * 1000:>9.1f}", flush=True)
    finally:
        server.stop()
        if args.keep:
            print(f"data folder: {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0


def _timed_get(client, path: str) -> float:
    started = time.perf_counter()
    client.get(path)
    return time.perf_counter() - started


def _device() -> str:
    try:
        import torch

        return f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU (CPU)"
    except Exception:  # noqa: BLE001
        return "device unknown"


if __name__ == "__main__":
    sys.exit(main())
