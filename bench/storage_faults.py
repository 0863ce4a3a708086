"""Storage faults against a real `sdwebui serve` process (issue 24): the fault table, and the time of a long job
while another process holds the database's write lock.

Each fault is injected for real, from outside the server, as an unlucky operator would meet it:

- full disk: the data folder (database and outputs) is on a small tmpfs that is filled to the last byte (needs
  root to mount it; skipped otherwise), while idle and while a job runs, then freed;
- locked database: a second process holds SQLite's write lock (`BEGIN IMMEDIATE`), for less than the server's
  30 s wait and for longer; a second sdwebui is started on the same data folder meanwhile;
- damaged database: pages of `sdwebui.db` overwritten with garbage before a start;
- kill -9 while a 6-image job runs, then a restart;
- a huge image id.

For each: what the client saw, what the store held afterwards (read from `sdwebui.db` directly, read-only), and
whether the worker was alive (`/api/v1/health`). The table is printed as Markdown.

The lock benchmark runs the same N-step txt2img (the embedded demo model, 64x64, one image) three times: alone;
with another process holding the write lock for L seconds from the moment the job runs (A1111's route, which
saves nothing by default); and the same with `save_images` (the job records its image, so it waits for the lock
before it can end). It reports each job's wall time as its client saw it, when its last step was sampled, and
the slowest `/api/v1/health` answer during the lock.

    .venv/bin/python bench/storage_faults.py                                   # everything (about 4 minutes)
    .venv/bin/python bench/storage_faults.py --only lock --steps 400 --lock-seconds 30
    .venv/bin/python bench/storage_faults.py --only faults --skip-long        # no 35 s lock
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.queue_throughput import free_port, prepare_model

DB = "sdwebui.db"
STORE_LOCK_WAIT = 30.0  # ServerConfig.store_lock_wait's default: how long a write waits for another's lock

LOCKER = textwrap.dedent("""
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
    db.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    sys.stdin.readline()  # held until told, or until the time is up (the parent closes stdin)
    db.execute("COMMIT")
""")


class Locker:
    """Another process holding the database's write lock until `release()` (or `seconds` after it took it)."""

    def __init__(self, db_path: Path, seconds: float | None = None):
        self.process = subprocess.Popen([sys.executable, "-c", LOCKER, str(db_path)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().strip()
        if line != "locked":
            raise SystemExit(f"the locker could not take the lock ({line!r})")
        self.taken = time.perf_counter()
        self.released: float | None = None
        self._timer = threading.Timer(seconds, self.release) if seconds is not None else None
        if self._timer is not None:
            self._timer.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def held(self) -> bool:
        return self.process.poll() is None

    def release(self) -> float:
        """Release the lock (once); seconds it was held."""
        if self._timer is not None and threading.current_thread() is not self._timer:
            self._timer.cancel()
        if self.released is None:
            self.released = time.perf_counter()
        if self.process.poll() is None:
            try:
                self.process.stdin.write("\n")
                self.process.stdin.close()
            except (BrokenPipeError, ValueError):
                pass
            self.process.wait(30)
        return self.released - self.taken


class Serve:
    """A `sdwebui serve` process (API only) on a free port."""

    def __init__(self, data_dir: Path, models_dir: Path, log: Path, *, threads: int | None = None,
                 extra: tuple[str, ...] = ()):
        import httpx

        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=600)
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115 - the server writes it until stop()
        command = [sys.executable, "-m", "sdwebui.cli", "serve", "--data-dir", str(data_dir), "--models-dir",
                   str(models_dir), "--port", str(self.port), "--nowebui", *extra]
        if threads:
            command += ["--threads", str(threads)]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float = 300) -> Serve:
        import httpx

        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.client.get("/api/v1/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"the server was not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def health(self) -> tuple[dict, float]:
        started = time.perf_counter()
        body = self.client.get("/api/v1/health", timeout=120).json()
        return body, time.perf_counter() - started

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()

    def kill9(self) -> None:
        self.process.kill()
        self.process.wait(30)
        self.client.close()
        self.log.close()


def query(data_dir: Path, sql: str, args=()) -> list[tuple]:
    """Rows of the server's database, read as a separate read-only connection (what is on disk now)."""
    db = sqlite3.connect(f"file:{data_dir / DB}?mode=ro", uri=True, timeout=60)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def job_row(data_dir: Path, job_id: str) -> str:
    rows = query(data_dir, "SELECT status, error FROM jobs WHERE id=?", (job_id,))
    if not rows:
        return "no row"
    status, error = rows[0]
    return f"`{status}`" + (f" ({_short(error)})" if error else "")


def job_count(data_dir: Path) -> int:
    return query(data_dir, "SELECT COUNT(*) FROM jobs")[0][0]


def _short(text: str | None, limit: int = 110) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def answer(response) -> str:
    try:
        body = response.json()
        detail = body.get("detail") or body.get("message") or body.get("error") or ""
    except ValueError:
        detail = response.text
    return f"{response.status_code}" + (f" \"{_short(detail, 140)}\"" if detail else "")


def wait_until(predicate, timeout: float, interval: float = 0.05):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout} s")


def wait_job(server: Serve, job_id: str, timeout: float = 600) -> dict:
    return wait_until(lambda: (v := server.client.get(f"/api/v1/jobs/{job_id}").json())["status"]
                      not in ("queued", "running") and v, timeout, 0.1)


def alive(server: Serve) -> str:
    body, seconds = server.health()
    reasons = "; ".join(body.get("reasons") or [])
    state = f"{body['status']}" + (f": {_short(reasons, 90)}" if reasons else "")
    return f"{'yes' if body['worker_alive'] else 'NO'} (health {state}, {seconds * 1000:.0f} ms)"


def fill(folder: Path) -> Path:
    """Fill the file system that holds `folder` to the last byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 65536, 4096, 1):
            try:
                while os.write(fd, b"\0" * size) == size:
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


FAST = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 4, "sampler_name": "Euler"}
NATIVE_FAST = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 4, "sampler": "Euler"}


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, fault: str, client: str, store: str, worker: str) -> None:
        self.rows.append((fault, client, store, worker))
        print(f"- {fault}\n    client: {client}\n    store:  {store}\n    worker: {worker}", flush=True)

    def markdown(self) -> str:
        lines = ["| fault injected | what the client saw | what the store held afterwards | worker alive |",
                 "|---|---|---|---|"]
        for row in self.rows:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        return "\n".join(lines)


# ---- faults ---------------------------------------------------------------------------------------------------


def full_disk(table: Table, work: Path, models: Path, threads: int | None) -> None:
    if os.geteuid() != 0:
        table.add("full disk", "skipped: mounting a tmpfs needs root", "", "")
        return
    mount = work / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          check=False)
    if done.returncode != 0:
        table.add("full disk", f"skipped: cannot mount a tmpfs ({done.stderr.decode().strip()})", "", "")
        return
    data = mount / "data"
    server = Serve(data, models, work / "full-disk.log", threads=threads).wait_ready()
    try:
        warm = server.client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1})
        assert warm.status_code == 200, warm.text
        before = job_count(data)
        filler = fill(mount)
        a1111 = server.client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 2})
        native = server.client.post("/api/v1/jobs", json={**NATIVE_FAST, "seed": 3})
        worker = alive(server)
        filler.unlink()
        stored = f"{job_count(data) - before} new job rows (before {before})"
        table.add("disk full (tmpfs filled) while idle; `POST /sdapi/v1/txt2img`, `POST /api/v1/jobs`",
                  f"txt2img {answer(a1111)}, Retry-After {a1111.headers.get('retry-after')}; jobs {answer(native)}",
                  stored, worker)
        freed = time.perf_counter()
        wait_until(lambda: server.health()[0]["status"] == "ok", 30)
        recovered = time.perf_counter() - freed
        after = server.client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 4})
        table.add("... the filler deleted (space returns)",
                  f"health `ok` again {recovered:.1f} s after, without any request; next txt2img {after.status_code}",
                  f"{job_count(data) - before} new job row(s): {job_row(data, query(data, 'SELECT id FROM jobs ORDER BY seq DESC LIMIT 1')[0][0])}",
                  alive(server))

        # The disk fills while a 3-image job that saves its images runs.
        job = server.client.post("/api/v1/jobs", json={**NATIVE_FAST, "steps": 40, "batch_count": 3, "seed": 5,
                                                       "save_images": True}).json()["id"]
        wait_until(lambda: server.client.get(f"/api/v1/jobs/{job}").json()["status"] == "running", 120)
        filler = fill(mount)
        view = wait_job(server, job)
        seen = (f"job view `{view['status']}` ({_short(view['error'], 100)}), "
                f"`recorded: {json.dumps(view.get('recorded', True))}`")
        during = job_row(data, job)
        time.sleep(0.5)  # the outcome's first write has failed by now: health counts it as waiting
        worker = alive(server)
        next_job = server.client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 6})
        filler.unlink()
        wait_until(lambda: server.health()[0]["status"] == "ok", 30)
        images = query(data, "SELECT COUNT(*) FROM images WHERE job_id=?", (job,))[0][0]
        table.add("disk fills while a 3-image job (save_images) runs; freed afterwards",
                  f"{seen}; a txt2img meanwhile {answer(next_job)}",
                  f"while full: {during}; once freed: {job_row(data, job)}, {images} image record(s) of it",
                  worker)
        last = server.client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 7})
        table.add("... after that", f"next txt2img {last.status_code}", "", alive(server))
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def locked(table: Table, work: Path, models: Path, threads: int | None, skip_long: bool) -> None:
    data = work / "locked"
    server = Serve(data, models, work / "locked.log", threads=threads).wait_ready()
    try:
        assert server.client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1}).status_code == 200
        before = job_count(data)
        # Held for less than the server's wait: a submission waits for it, health does not.
        seconds = 5.0
        locker = Locker(data / DB, seconds)
        started = time.perf_counter()
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault(
            "r", server.client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 2})))
        thread.start()
        slowest, polls = 0.0, 0
        while locker.held():
            _, took = server.health()
            slowest, polls = max(slowest, took), polls + 1
            time.sleep(0.1)
        thread.join(120)
        waited = time.perf_counter() - started
        table.add(f"another process holds the write lock {seconds:g} s (less than the {STORE_LOCK_WAIT:g} s wait); "
                  "`POST /sdapi/v1/txt2img` meanwhile",
                  f"txt2img {result['r'].status_code} after {waited:.1f} s (waited for the lock); health answered "
                  f"{polls} times during the lock, slowest {slowest * 1000:.0f} ms",
                  f"{job_count(data) - before} new job: {job_row(data, query(data, 'SELECT id FROM jobs ORDER BY seq DESC LIMIT 1')[0][0])}",
                  alive(server))
        if skip_long:
            return
        # Held past the wait: the submission gets 503; a second server on the same folder exits with a message.
        before = job_count(data)
        hold = STORE_LOCK_WAIT + 5
        locker = Locker(data / DB, hold)
        second_log = work / "locked-second.log"
        result = {}

        def submit():
            t = time.perf_counter()
            result["r"] = server.client.post("/api/v1/jobs", json={**NATIVE_FAST, "seed": 3})
            result["t"] = time.perf_counter() - t

        thread = threading.Thread(target=submit)
        thread.start()
        with open(second_log, "wb") as second_out:
            second = subprocess.Popen(
                [sys.executable, "-m", "sdwebui.cli", "serve", "--data-dir", str(data), "--models-dir", str(models),
                 "--port", str(free_port()), "--nowebui"], stdout=second_out, stderr=subprocess.STDOUT, cwd=ROOT)
            thread.join(120)
            degraded = alive(server)
            second.wait(120)
        wait_until(lambda: not locker.held(), hold + 30, 0.1)  # held its full time
        held = locker.release()
        corrupt = sorted(p.name for p in data.glob(f"{DB}.corrupt-*"))
        table.add(f"another process holds the write lock {hold:g} s (past the {STORE_LOCK_WAIT:g} s wait); "
                  "`POST /api/v1/jobs` meanwhile",
                  f"{answer(result['r'])} after {result['t']:.1f} s",
                  f"{job_count(data) - before} new job rows; lock held {held:.0f} s", degraded)
        second_out = second_log.read_text(errors="replace").strip().splitlines()
        table.add("... and a second `sdwebui serve` started on the same data folder meanwhile",
                  f"exit status {second.returncode}: \"{_short(second_out[-1] if second_out else '', 200)}\"",
                  f"nothing moved aside ({len(corrupt)} `*.corrupt-*` files); {job_count(data)} job rows kept",
                  "(the first server) " + alive(server))
        wait_until(lambda: server.health()[0]["status"] == "ok", 30)
        after = server.client.post("/api/v1/jobs", json={**NATIVE_FAST, "seed": 4}).json()["id"]
        table.add("... lock released", f"health `ok` again; next job {wait_job(server, after)['status']}",
                  job_row(data, after), alive(server))
    finally:
        server.stop()


def damaged(table: Table, work: Path, models: Path, threads: int | None) -> None:
    data = work / "damaged"
    server = Serve(data, models, work / "damaged-1.log", threads=threads).wait_ready()
    for n in range(200):
        server.client.post("/api/v1/jobs", json={**NATIVE_FAST, "prompt": f"job {n} " + "x" * 500, "seed": n,
                                                  "steps": 1})
    wait_until(lambda: not server.client.get("/api/v1/jobs", params={"status": "queued"}).json(), 600, 0.5)
    server.stop()
    path = data / DB
    raw = bytearray(path.read_bytes())
    for offset in range(2 * 4096, len(raw), 4096):
        raw[offset:offset + 16] = b"\xff" * 16
    path.write_bytes(bytes(raw))
    log = work / "damaged-2.log"
    server = Serve(data, models, log, threads=threads).wait_ready()
    try:
        warning = next((line for line in server.output().splitlines() if "WARNING" in line and "damaged" in line),
                       "(no warning)")
        aside = sorted(p.name for p in data.glob(f"{DB}.corrupt-*"))
        response = server.client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1})
        table.add("damaged database (page headers overwritten) at start",
                  f"server starts; stderr: \"{_short(warning, 160)}\"; txt2img {response.status_code}",
                  f"old file kept as {', '.join(aside) or 'nothing'} ({len(raw)} bytes); the new store has "
                  f"{job_count(data)} job(s)", alive(server))
    finally:
        server.stop()


def killed(table: Table, work: Path, models: Path, threads: int | None) -> None:
    data = work / "killed"
    server = Serve(data, models, work / "killed-1.log", threads=threads).wait_ready()
    job = server.client.post("/api/v1/jobs", json={**NATIVE_FAST, "steps": 30, "batch_count": 6, "seed": 10,
                                                   "save_images": True}).json()["id"]
    wait_until(lambda: (server.client.get(f"/api/v1/jobs/{job}").json().get("progress") or {})
               .get("batch_index", 0) >= 2, 300, 0.05)
    server.kill9()
    files = sorted(p.name for p in (data / "outputs").rglob("*.png"))
    server = Serve(data, models, work / "killed-2.log", threads=threads).wait_ready()
    try:
        view = server.client.get(f"/api/v1/jobs/{job}").json()
        images = server.client.get("/api/v1/images", params={"job_id": job}).json()
        marks = sorted({(i["job_status"], i["interrupted"]) for i in images})
        table.add("`kill -9` while a 6-image job (save_images) runs, after 2 batches; restart",
                  f"job view `{view['status']}` ({_short(view['error'], 90)}); `/api/v1/images?job_id=` lists "
                  f"{len(images)} with (job_status, interrupted) = {marks}",
                  f"{job_row(data, job)}; {len(files)} PNG(s) in outputs, "
                  f"{query(data, 'SELECT COUNT(*) FROM images WHERE job_id=?', (job,))[0][0]} image record(s)",
                  alive(server))
        response = server.client.get("/api/v1/images/99999999999999999999999")
        table.add("`GET /api/v1/images/99999999999999999999999`", answer(response), "unchanged", alive(server))
    finally:
        server.stop()


# ---- the lock benchmark -------------------------------------------------------------------------------------------


def lock_benchmark(work: Path, models: Path, threads: int | None, steps: int, lock_seconds: float,
                   repeat: int = 1) -> list[str]:
    data = work / "bench"
    server = Serve(data, models, work / "bench.log", threads=threads,
                   extra=("--api-max-steps", str(max(steps, 150)))).wait_ready()
    lines = []
    try:
        request = {**FAST, "steps": steps}
        warm = server.client.post("/sdapi/v1/txt2img", json={**request, "steps": 4, "seed": 1})
        assert warm.status_code == 200, warm.text

        def run(label: str, body: dict, lock: bool) -> None:
            result, samples = {}, []

            def post():
                result["start"] = time.perf_counter()
                result["r"] = server.client.post("/sdapi/v1/txt2img", json=body)
                result["end"] = time.perf_counter()

            thread = threading.Thread(target=post)
            thread.start()
            # The job is running once /sdapi/v1/progress shows a step.
            wait_until(lambda: server.client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] > 0, 300, 0.01)
            locker = Locker(data / DB, lock_seconds) if lock else None
            locked_at = time.perf_counter() - result["start"]
            job_id = query(data, "SELECT id FROM jobs ORDER BY seq DESC LIMIT 1")[0][0]
            last_step_at, slowest, last_step, recorded_at = None, 0.0, 0, None

            def recorded() -> bool:  # seen in the file by another connection: the write has landed
                return query(data, "SELECT status FROM jobs WHERE id=?", (job_id,))[0][0] == "done"

            while thread.is_alive() or (locker is not None and locker.held()) or recorded_at is None:
                _, took = server.health()
                slowest = max(slowest, took)
                if recorded_at is None and recorded():
                    recorded_at = time.perf_counter() - result["start"]
                if thread.is_alive():
                    state = server.client.get("/sdapi/v1/progress").json()["state"]
                    step = state["sampling_step"] if state["job_count"] else last_step
                    now = time.perf_counter()
                    if step != last_step:
                        last_step, last_step_at = step, now
                    samples.append((now, step, locker.held() if locker else False))
                time.sleep(0.05)
            thread.join()
            held = locker.release() if locker is not None else 0.0
            response = result["r"]
            assert response.status_code == 200, response.text
            total = result["end"] - result["start"]
            sampled = (last_step_at or result["end"]) - result["start"]
            during = [s for _, s, h in samples if h]
            text = (f"{label}: answered in {total:.1f} s (last step seen at {sampled:.1f} s); record `done` in "
                    f"the file at {recorded_at:.1f} s")
            if lock:
                text += (f"; lock taken at {locked_at:.1f} s, held {held:.1f} s (released at {locked_at + held:.1f} s)"
                         + (f"; steps {min(during)} -> {max(during)} sampled while locked" if during else ""))
            lines.append(text + f"; slowest /api/v1/health {slowest * 1000:.0f} ms")
            print(f"- {lines[-1]}", flush=True)

        for n in range(1, repeat + 1):  # alternated, so a busy machine weighs on both alike
            tag = f" (round {n})" if repeat > 1 else ""
            run(f"{steps} steps, no lock{tag}", {**request, "seed": 11}, False)
            run(f"{steps} steps, lock held {lock_seconds:g} s from the first step (A1111 default: nothing saved)"
                f"{tag}", {**request, "seed": 11}, True)
            run(f"{steps} steps, no lock, save_images{tag}", {**request, "seed": 12, "save_images": True}, False)
            run(f"{steps} steps, lock held {lock_seconds:g} s from the first step, save_images (records its image)"
                f"{tag}", {**request, "seed": 12, "save_images": True}, True)
    finally:
        server.stop()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("faults", "lock"), help="run one part")
    parser.add_argument("--steps", type=int, default=400, help="steps of the lock benchmark's job (default 400)")
    parser.add_argument("--lock-seconds", type=float, default=30.0, help="how long the lock is held (default 30)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the lock benchmark (default 1)")
    parser.add_argument("--skip-long", action="store_true", help="skip the lock held past the server's 30 s wait")
    parser.add_argument("--threads", type=int, default=1, help="the server's --threads (default 1)")
    parser.add_argument("--model", type=Path, help="a checkpoint to use instead of the demo / tiny model")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (printed)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sdwebui-faults-"))
    models_root = work / "models-root"
    model = prepare_model(models_root, args.model)
    models = models_root / "models"
    print(f"model: {model}; work folder: {work}", flush=True)
    try:
        if args.only in (None, "faults"):
            table = Table()
            full_disk(table, work, models, args.threads)
            locked(table, work, models, args.threads, args.skip_long)
            damaged(table, work, models, args.threads)
            killed(table, work, models, args.threads)
            print("\n" + table.markdown(), flush=True)
        if args.only in (None, "lock"):
            print("\nlock benchmark (txt2img 64x64, Euler, one image, as its client saw it):", flush=True)
            lock_benchmark(work, models, args.threads, args.steps, args.lock_seconds, args.repeat)  # printed as it goes
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
