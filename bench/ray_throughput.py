"""Ray scale-out (`sdwebui serve --ray`): jobs/s with 1 and 2 worker actors against the single-process worker, and the
scheduling overhead per job.

Real `sdwebui serve` processes (API only) on free ports with the embedded demo model (else the tests' tiny SD1):
- `local`: no Ray, the one worker thread;
- `ray:N`: `--ray local --ray-workers N` (a Ray cluster started in the server's process, N CPU actors).

For each: the time until every worker is ready, then
- latency: one `/sdapi/v1/txt2img` at a time (median of `--repeat`), submit to image, as the client sees it. The
  overhead per job is `ray:1`'s median less `local`'s: the lease, the polls, the images coming back.
- throughput: `--jobs` jobs from `--clients` concurrent clients; jobs/s = jobs / wall time.
- lease overhead (Ray): per job, its time on the API node (started .. finished in its record) less its run on the
  actor (`result.worker.seconds`): the lease, the polls, sending and writing the images, recording the outcome.

On a machine with fewer cores than workers x threads, 2 actors cannot be twice as fast: they share the cores
(each actor runs with `--threads`, default 1). On a cluster each actor has its own GPU.

    .venv/bin/python bench/ray_throughput.py                          # local, ray:1, ray:2; 64x64, 8 steps
    .venv/bin/python bench/ray_throughput.py --modes ray:2 --jobs 48 --steps 20
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.queue_throughput import free_port, prepare_model, run_round, txt2img  # noqa: E402


class Server:
    def __init__(self, data_dir: Path, mode: str, *, threads: int, log: Path):
        import httpx

        self.port = free_port()
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=600)
        self.log = open(log, "wb")
        flags = ["--threads", str(threads)]
        self.workers = 1
        if mode.startswith("ray:"):
            self.workers = int(mode.split(":", 1)[1])
            flags += ["--ray", "local", "--ray-workers", str(self.workers)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RAY_USAGE_STATS_ENABLED": "0"}
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sdwebui.cli", "serve", "--data-dir", str(data_dir), "--port", str(self.port),
             "--nowebui", "--skip-load-model-at-start", *flags],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 900) -> float:
        """Seconds until every worker reports ready."""
        import httpx

        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}; see {self.log.name}")
            try:
                workers = self.client.get("/api/v1/workers", timeout=5).json()["workers"]
                if sum(worker["state"] == "ready" for worker in workers) >= self.workers:
                    return time.perf_counter() - self.started
            except (httpx.TransportError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise SystemExit(f"the workers were not ready after {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


def lease_overhead(client, args) -> float | None:
    """Median over `--repeat` jobs (native API, one at a time) of the job's time on the API node (started ..
    finished in its record) less its run on the worker (`result.worker.seconds`): what leasing it cost. None
    without Ray."""
    body = {"type": "txt2img", "prompt": "lease", "steps": args.steps, "width": args.size, "height": args.size,
            "sampler": "Euler"}
    costs = []
    for seed in range(args.repeat):
        job_id = client.post("/api/v1/jobs", json={**body, "seed": seed}).json()["id"]
        while (view := client.get(f"/api/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            time.sleep(0.01)
        worker = (view.get("result") or {}).get("worker")
        if not worker or worker.get("seconds") is None:
            return None
        costs.append(view["finished"] - view["started"] - worker["seconds"])
    return statistics.median(costs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="local,ray:1,ray:2", help="local and/or ray:N (default local,ray:1,ray:2)")
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=8, help="sequential jobs for the latency")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--model", type=Path, help="a checkpoint instead of the demo / tiny model")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="sdwebui-ray-bench-"))
    model = prepare_model(data_dir, args.model)
    request = {"steps": args.steps, "width": args.size, "height": args.size, "sampler_name": "Euler",
               "send_images": True}
    print(f"model: {model}; {args.size}x{args.size}, {args.steps} steps, Euler; {os.cpu_count()} cores; "
          f"{args.threads} thread(s) per worker")
    rows = []
    for mode in [part.strip() for part in args.modes.split(",") if part.strip()]:
        server = Server(data_dir, mode, threads=args.threads, log=data_dir / f"server-{mode.replace(':', '-')}.log")
        try:
            ready = server.wait_ready()
            url = f"http://127.0.0.1:{server.port}"
            run_round(url, server.workers * 2, server.workers * 4, request)  # warm every worker (model loaded)
            latency = statistics.median(txt2img(server.client, {**request, "seed": 7}) for _ in range(args.repeat))
            overhead = lease_overhead(server.client, args)
            wall, _ = run_round(url, args.clients, args.jobs, request)
        finally:
            server.stop()
        rows.append((mode, ready, latency, args.jobs / wall))
        lease = f"   lease overhead p50 {overhead * 1000:6.1f} ms" if overhead is not None else ""
        print(f"{mode:8} ready {ready:6.1f} s   latency p50 {latency * 1000:7.1f} ms   "
              f"{args.jobs / wall:6.2f} jobs/s ({args.jobs} jobs, {args.clients} clients){lease}", flush=True)
    by_mode = {mode: (latency, rate) for mode, _, latency, rate in rows}
    if "local" in by_mode and "ray:1" in by_mode:
        print(f"scheduling overhead per job (ray:1 - local, p50 latency): "
              f"{(by_mode['ray:1'][0] - by_mode['local'][0]) * 1000:+.1f} ms")
    if "ray:1" in by_mode and "ray:2" in by_mode:
        print(f"2 actors / 1 actor: {by_mode['ray:2'][1] / by_mode['ray:1'][1]:.2f}x jobs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
