"""The web UI in a real browser: Debian's headless Chromium driven by Playwright, against a real uvicorn server
(the same app `sdwebui serve` runs: API and Gradio UI on one port) with the tiny SD1 checkpoint.

Screenshots go to `test-artifacts/` (git-ignored) so a person can look at the layout.

Chromium: `/usr/bin/chromium` (Debian's package). When it is missing and this runs as root on a machine with
apt-get, the fixture installs it (`./webui.sh test` does the same before pytest starts); otherwise the tests
are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_api_support import LiveServer, make_data_dir, wait_for_job, wait_until

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SMALL = {"width": "64", "height": "64", "steps": "2"}

pytestmark = [
    pytest.mark.slow,
    # Gradio's queue calls pandas APIs that pandas 3 deprecates (Gradio's business, not ours).
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


def ensure_chromium() -> str | None:
    """Path of Debian's chromium, installing the package when possible; None (and why) when it cannot be had."""
    if os.access(CHROMIUM, os.X_OK):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get: apt-get install chromium)"
    lock_path = Path(tempfile.gettempdir()) / "sdwebui-chromium-install.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers: one installs, the others wait for it
        if os.access(CHROMIUM, os.X_OK):
            return None
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log = []
        for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "chromium"]):
            try:
                done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as error:
                log.append(str(error))
                continue
            log.append(done.stderr[-500:])
            if os.access(CHROMIUM, os.X_OK):
                return None
    return f"could not install chromium with apt-get: {' | '.join(part.strip() for part in log if part.strip())}"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    reason = ensure_chromium()
    if reason:
        pytest.skip(reason)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("ui"), tiny_sd1_path, "tiny-sd1.safetensors", "zz-other.safetensors")
    (data / "styles.csv").write_text("name,prompt,negative_prompt\nOil painting,\"{prompt}, oil painting\",blurry\n",
                                     encoding="utf-8")
    with LiveServer(data) as live:
        # A preview at every step, so a short job shows one.
        live.services.options.update({"show_progress_every_n_steps": 1})
        yield live


@contextlib.contextmanager
def ui_page(browser, server, height: int = 900):
    """A fresh browser context on the UI; fails the test if the page raised a JavaScript error."""
    context = browser.new_context(viewport={"width": 1280, "height": height})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    open_ui(page, server)
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


@pytest.fixture
def page(browser, server):
    with ui_page(browser, server) as page:
        yield page


def open_ui(page, server) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    # The page-load event fills the lists (samplers, checkpoints) and the model's size: wait until it has.
    page.locator("#sdw-ready").wait_for(state="attached", timeout=60_000)


def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(value)
    box.press("Enter")
    box.blur()


def number(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} input[type=number]").first.input_value()


def prompt_box(page, elem_id: str = "txt2img_prompt"):
    return page.locator(f"#{elem_id} textarea")


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"), full_page=True)


def png_parameters(data: bytes) -> str | None:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.info.get("parameters")


# ---- tests ---------------------------------------------------------------------------------------------------


def test_generate_shows_the_image_and_the_png_carries_the_infotext(page, server):
    # The size defaults to the checkpoint's native size: the tiny checkpoint's metadata says 64.
    assert number(page, "txt2img_width") == "64" and number(page, "txt2img_height") == "64"
    prompt_box(page).fill("a red fox in the snow")
    # Six words, six CLIP tokens, in a 75-token chunk (A1111's counter shows "6/75").
    wait_until(lambda: page.locator("#txt2img_token_counter").inner_text().strip() == "6/75", timeout=15)
    # A style from styles.csv: counted with the prompt (", oil painting" adds 3 tokens), applied when queued.
    page.locator("#txt2img_styles input").first.click()
    page.locator("[role=option]:has-text('Oil painting')").first.click()
    wait_until(lambda: page.locator("#txt2img_token_counter").inner_text().strip() == "9/75", timeout=15)
    wait_until(lambda: page.locator("#txt2img_negative_token_counter").inner_text().strip() == "1/75", timeout=15)
    page.locator("#txt2img_seed input").click()  # close the style list
    for elem_id, value in (("txt2img_width", SMALL["width"]), ("txt2img_height", SMALL["height"]),
                           ("txt2img_steps", SMALL["steps"])):
        set_number(page, elem_id, value)
    page.locator("#txt2img_seed input").fill("1234")
    page.locator("#txt2img_generate").click()

    image = page.locator("#txt2img_gallery img").first
    image.wait_for(timeout=120_000)
    info = page.locator("#txt2img_infotext textarea")
    wait_until(lambda: "Steps: 2" in info.input_value(), timeout=30)
    text = info.input_value()
    assert text.startswith("a red fox in the snow, oil painting\nNegative prompt: blurry\n")
    assert "Seed: 1234" in text and "Size: 64x64" in text
    assert "Done" in page.locator("#txt2img_progress").inner_text()
    shot(page, "txt2img-done")

    # The image the browser got is a PNG with the infotext in its `parameters` chunk (A1111's layout).
    src = image.get_attribute("src")
    response = page.request.get(src if src.startswith("http") else server.url + src)
    assert response.ok
    assert png_parameters(response.body()) == text

    # ♻️ puts the seed of the last image back (🎲 sets -1 again).
    page.locator("#txt2img_random_seed").click()
    wait_until(lambda: page.locator("#txt2img_seed input").input_value() == "-1", timeout=10)
    page.locator("#txt2img_reuse_seed").click()
    wait_until(lambda: page.locator("#txt2img_seed input").input_value() == "1234", timeout=10)

    # The job went through the queue like an API job, and was saved and recorded for the history.
    records = server.services.store.images(limit=5)
    assert records and records[0]["prompt"] == "a red fox in the snow, oil painting" and records[0]["seed"] == 1234


def test_interrupt_stops_a_long_job_and_progress_is_shown(page, server):
    prompt_box(page).fill("a very long job")
    for elem_id, value in (("txt2img_width", "256"), ("txt2img_height", "256"), ("txt2img_steps", "150")):
        set_number(page, elem_id, value)
    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    wait_until(lambda: re.search(r"Step \d+/150", progress.inner_text()), timeout=120)
    wait_until(lambda: "ETA" in progress.inner_text(), timeout=30)
    # The live preview (the job's preview PNG) is shown while it samples.
    page.locator("#txt2img_preview img").first.wait_for(timeout=30_000)
    shot(page, "txt2img-progress")
    running = server.services.queue.running()
    assert len(running) == 1 and running[0].payload.params.steps == 150
    job = running[0]

    page.locator("#txt2img_interrupt").click()
    assert job.finished.wait(30), "the job did not stop after Interrupt"
    assert job.status == "interrupted"
    assert job.progress.step < 150
    wait_until(lambda: "Interrupted" in progress.inner_text(), timeout=30)


def test_two_tabs_each_follow_their_own_job(browser, server):
    """Tab A runs a long job; tab B's job waits behind it and B shows its queue position, then its own image;
    Interrupt in A stops A's job only."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        a, b = context.new_page(), context.new_page()
        for tab, prompt, steps, size in ((a, "tab a long", "150", "256"), (b, "tab b short", "2", "64")):
            open_ui(tab, server)
            prompt_box(tab).fill(prompt)
            for elem_id, value in (("txt2img_width", size), ("txt2img_height", size), ("txt2img_steps", steps)):
                set_number(tab, elem_id, value)
        a.locator("#txt2img_generate").click()
        wait_until(lambda: "Step" in a.locator("#txt2img_progress").inner_text(), timeout=120)
        prompt_box(b).press("Control+Enter")  # A1111's hotkey for Generate
        wait_until(lambda: "In queue" in b.locator("#txt2img_progress").inner_text(), timeout=30)
        shot(b, "second-tab-queued")
        assert "Step" in a.locator("#txt2img_progress").inner_text()

        a.locator("#txt2img_interrupt").click()
        wait_until(lambda: "Interrupted" in a.locator("#txt2img_progress").inner_text(), timeout=60)
        b.locator("#txt2img_gallery img").first.wait_for(timeout=120_000)
        wait_until(lambda: b.locator("#txt2img_infotext textarea").input_value().startswith("tab b short\n"),
                   timeout=30)
        assert "Done" in b.locator("#txt2img_progress").inner_text()
        assert a.locator("#txt2img_infotext textarea").input_value().startswith("tab a long\n")
    finally:
        context.close()


def test_png_info_round_trip_into_txt2img(page, server, tmp_path):
    from PIL import Image, PngImagePlugin

    # What A1111 1.5 wrote: a legacy sampler name with the schedule in it.
    infotext = (
        "a castle on a hill, (masterpiece:1.2)\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 7, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 987654, Size: 64x128, "
        "Model hash: 0123456789, Variation seed: 42, Variation seed strength: 0.25, Seed resize from: 32x48, "
        "Clip skip: 2, Version: v1.5.1"
    )
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    path = tmp_path / "a1111.png"
    Image.new("RGB", (64, 128), (30, 60, 90)).save(path, pnginfo=info)

    page.locator("#tab_pnginfo-button, button[role=tab]:has-text('PNG Info')").first.click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    parameters = page.locator("#pnginfo_parameters textarea")
    wait_until(lambda: parameters.input_value() == infotext, timeout=30)
    shot(page, "pnginfo")
    page.locator("#pnginfo_send_txt2img").click()

    prompt = prompt_box(page)
    prompt.wait_for(state="visible", timeout=15_000)
    wait_until(lambda: prompt.input_value() == "a castle on a hill, (masterpiece:1.2)", timeout=15)
    assert prompt_box(page, "txt2img_neg_prompt").input_value() == "blurry, lowres"
    assert page.locator("#txt2img_sampling input").input_value() == "DPM++ 2M"
    assert page.locator("#txt2img_scheduler input").input_value() == "Karras"
    assert number(page, "txt2img_steps") == "7"
    assert float(number(page, "txt2img_cfg_scale")) == 6.5
    assert number(page, "txt2img_width") == "64" and number(page, "txt2img_height") == "128"
    assert page.locator("#txt2img_seed input").input_value() == "987654"
    assert page.locator("#txt2img_subseed input").input_value() == "42"
    assert float(number(page, "txt2img_subseed_strength")) == 0.25
    assert number(page, "txt2img_seed_resize_from_w") == "32"
    assert number(page, "txt2img_seed_resize_from_h") == "48"
    # Settings the infotext names that differ from the current ones become A1111's "Override settings".
    overrides = page.locator("#txt2img_override_settings")
    wait_until(lambda: overrides.is_visible() and "Clip skip: 2" in overrides.inner_text(), timeout=15)
    # The checkpoint that made it is not installed here: said under the gallery, the current one stays.
    note = page.locator("#txt2img_html_info")
    wait_until(lambda: "Checkpoint '0123456789' is not installed" in note.inner_text(), timeout=15)
    shot(page, "pnginfo-sent-to-txt2img")


def test_history_after_reload_search_reuse_delete(page, server):
    with server.client() as client:
        created = client.post("/api/v1/jobs", json={"prompt": "a lighthouse at dusk", "seed": 77, "width": 64,
                                                    "height": 64, "steps": 2})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert wait_for_job(client, job_id, timeout=120)["status"] == "done"
    # This job's image (other tests' jobs on the shared server may have saved images too).
    record = server.services.store.images(job_id=job_id, limit=1)[0]
    assert record["prompt"] == "a lighthouse at dusk"
    file = server.services.paths.outputs_dir / record["path"]
    assert file.is_file()

    page.reload()
    open_ui(page, server)
    page.locator("button[role=tab]:has-text('History')").first.click()
    gallery = page.locator("#history_gallery")
    gallery.locator("img").first.wait_for(timeout=30_000)

    search = page.locator("#history_search textarea, #history_search input").first
    search.fill("lighthouse")
    search.press("Enter")
    wait_until(lambda: gallery.locator("img").count() == 1, timeout=30)
    shot(page, "history")
    gallery.locator("img").first.click()
    parameters = page.locator("#history_parameters textarea")
    wait_until(lambda: parameters.input_value().startswith("a lighthouse at dusk\n"), timeout=15)
    assert "Seed: 77" in parameters.input_value()

    page.locator("#history_reuse").click()
    wait_until(lambda: prompt_box(page).is_visible() and prompt_box(page).input_value() == "a lighthouse at dusk",
               timeout=15)
    assert page.locator("#txt2img_seed input").input_value() == "77"

    # Back on the tab, it reloads with the search still in the box; the reload clears the selection, so wait
    # for it before selecting (a click during the reload is undone by it).
    page.locator("button[role=tab]:has-text('History')").first.click()
    wait_until(lambda: parameters.input_value() == "" and gallery.locator("img").count() == 1, timeout=30)
    gallery.locator("img").first.click()
    wait_until(lambda: parameters.input_value() != "", timeout=15)
    page.locator("#history_delete").click()
    wait_until(lambda: gallery.locator("img").count() == 0, timeout=30)
    assert server.services.store.image(record["id"]) is None
    assert not file.exists()

    search.fill("no such prompt anywhere")
    search.press("Enter")
    page.wait_for_timeout(500)
    assert gallery.locator("img").count() == 0


def test_settings_apply_without_restart(page, server):
    page.locator("button[role=tab]:has-text('Settings')").first.click()
    box = page.locator("#setting_show_progress_every_n_steps input").first
    box.wait_for(timeout=15_000)
    # Shows the current value (set by the fixture after the UI was built): read when the tab opens.
    wait_until(lambda: box.input_value() == "1", timeout=15)
    box.fill("3")
    page.locator("#setting_CLIP_stop_at_last_layers input").first.fill("2")
    page.locator("#settings_submit").click()
    wait_until(lambda: "2 settings changed" in page.locator("#settings_result").inner_text(), timeout=15)
    assert server.services.options.get("show_progress_every_n_steps") == 3
    assert server.services.options.get("CLIP_stop_at_last_layers") == 2
    shot(page, "settings")
    # The next job picks them up (jobs read the options when they are queued).
    from sdwebui.ui.fields import submit_txt2img

    job = submit_txt2img(server.services, {"prompt": "x", "width": 64, "height": 64, "steps": 1})
    assert job.payload.preview_every == 3 and job.payload.params.clip_skip == 2
    job.wait_sync(60)
    server.services.options.update({"show_progress_every_n_steps": 1, "CLIP_stop_at_last_layers": 1})


def test_checkpoint_switch_goes_through_the_options(page, server):
    box = page.locator("#setting_sd_model_checkpoint input").first
    assert box.input_value().startswith("tiny-sd1.safetensors")
    box.click()
    page.locator("[role=option]:has-text('zz-other.safetensors')").first.click()
    # The same path as POST /sdapi/v1/options: the setting is written and the model loads in queue order.
    wait_until(lambda: (server.services.options.get("sd_model_checkpoint") or "").startswith("zz-other"), timeout=30)
    wait_until(lambda: server.services.store.jobs(limit=1)[0]["kind"] == "load_model", timeout=30)
    page.reload()
    open_ui(page, server)
    assert page.locator("#setting_sd_model_checkpoint input").first.input_value().startswith("zz-other")
    server.services.options.update({"sd_model_checkpoint": "tiny-sd1.safetensors"})


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_phone_width_has_no_horizontal_scroll_and_follows_the_color_scheme(browser, server, scheme):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True, color_scheme=scheme)
    page = context.new_page()
    try:
        open_ui(page, server)
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"page is {widths[0]}px wide on a {widths[1]}px screen"
        assert page.locator("#txt2img_generate").is_visible()
        dark = page.evaluate("document.body.classList.contains('dark') || "
                             "document.documentElement.classList.contains('dark')")
        assert dark is (scheme == "dark")
        shot(page, f"phone-{scheme}")
    finally:
        context.close()
