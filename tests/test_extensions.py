"""Extensions in `<data-dir>/extensions/NAME/` (A1111's folder): scripts through our plug-in protocol, a broken
extension reported and skipped while the app starts, the page loading an extension's JS and CSS, the disable flags,
and installing (refused beyond loopback without --enable-insecure-extension-access)."""

from __future__ import annotations

import json
import textwrap
import zipfile
from pathlib import Path

import pytest
from test_api_support import LiveServer, make_data_dir

from sdwebui.server.config import Credentials

FAST = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}

HELLO = textwrap.dedent('''
    from sdwebui.pipelines.scripts import Script, ScriptArg


    class Hello(Script):
        title = "Hello world"
        alwayson = True
        args = (ScriptArg("Enabled", bool, False), ScriptArg("Greeting", str, "hi"))

        def after_batch(self, batch, args):
            if args[0]:
                batch.infotext["Hello"] = args[1]


    class Shout(Script):
        title = "Shout"
        args = (ScriptArg("Times", int, 1, minimum=1, maximum=3),)

        def before_batch(self, batch, args):
            batch.prompts[:] = [prompt.upper() + "!" * args[0] for prompt in batch.prompts]
''')


def write_extensions(data: Path) -> Path:
    folder = data / "extensions"
    hello = folder / "hello"
    (hello / "scripts").mkdir(parents=True)
    (hello / "javascript").mkdir()
    (hello / "scripts" / "hello.py").write_text(HELLO)
    (hello / "javascript" / "b.js").write_text("window.sdwHelloOrder = (window.sdwHelloOrder || '') + 'b';\n")
    (hello / "javascript" / "a.js").write_text("window.sdwHello = 'loaded';\n"
                                                "window.sdwHelloOrder = (window.sdwHelloOrder || '') + 'a';\n")
    (hello / "style.css").write_text("#txt2img_prompt { outline: 3px solid rgb(1, 2, 3); }\n")
    # install.py runs once, in the extension's folder, with the app's Python
    (hello / "install.py").write_text("import pathlib, sys\n"
                                      "with open('installed.log', 'a') as log: log.write(sys.executable + '\\n')\n")
    broken = folder / "broken"
    (broken / "scripts").mkdir(parents=True)
    (broken / "scripts" / "bad.py").write_text("raise RuntimeError('boom at import')\n")
    (broken / "scripts" / "syntax.py").write_text("def (:\n")
    (broken / "install.py").write_text("raise SystemExit('no network here')\n")
    dupe = folder / "dupe"
    (dupe / "scripts").mkdir(parents=True)
    (dupe / "scripts" / "dupe.py").write_text(
        "from sdwebui.pipelines.scripts import Script\n\nclass Again(Script):\n    title = 'Prompt matrix'\n")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_sd1_path):
    data = make_data_dir(tmp_path_factory.mktemp("ext"), tiny_sd1_path, "tiny-sd1.safetensors")
    write_extensions(data)
    return data


@pytest.fixture(scope="module")
def server(data):
    with LiveServer(data) as live:
        yield live


@pytest.fixture
def client(server):
    with server.client() as client:
        yield client


def test_an_extensions_scripts_join_and_a_broken_one_is_reported(client):
    listed = client.get("/sdapi/v1/scripts").json()
    assert "hello world" in listed["txt2img"] and "shout" in listed["img2img"]
    assert listed["txt2img"].count("prompt matrix") == 1  # the duplicate title was not added
    a1111 = {item["name"]: item for item in client.get("/sdapi/v1/extensions").json()}
    assert set(a1111) == {"broken", "dupe", "hello"} and all(item["enabled"] for item in a1111.values())
    assert set(a1111["hello"]) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}
    ours = {item["name"]: item for item in client.get("/api/v1/extensions").json()}
    assert ours["hello"]["scripts"] == ["Hello world", "Shout"] and ours["hello"]["errors"] == []
    assert ours["hello"]["javascript"] == ["a.js", "b.js"] and ours["hello"]["css"] is True
    errors = " | ".join(ours["broken"]["errors"])
    assert "scripts/bad.py: RuntimeError: boom at import" in errors and "scripts/syntax.py: SyntaxError" in errors
    assert "already registered" in ours["dupe"]["errors"][0]
    assert "install.py: failed (exit 1): no network here" in errors


def test_install_py_runs_once(data, server):
    import sys

    log = data / "extensions" / "hello" / "installed.log"
    assert log.read_text().splitlines() == [sys.executable]
    from sdwebui.server import extensions

    again = extensions.load(data / "extensions")  # as the next start: not run again, nothing reported
    assert log.read_text().splitlines() == [sys.executable] and again.find("hello").errors == []


def test_extension_scripts_run_in_jobs(client):
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cube", "seed": 1, "script_name": "shout",
                                                  "script_args": [2], "alwayson_scripts": {
                                                      "Hello world": {"args": [True, "hey there"]}}}).json()
    info = json.loads(body["info"])
    assert info["all_prompts"] == ["A CUBE!!"] and "Hello: hey there" in info["infotexts"][0]
    response = client.post("/sdapi/v1/txt2img", json={**FAST, "script_name": "shout", "script_args": [9]})
    assert response.status_code == 422 and response.json()["field"] == "script_args.0"


def test_only_an_extensions_page_files_are_served(client, data):
    response = client.get("/extensions-assets/hello/javascript/a.js")
    assert response.status_code == 200 and "sdwHello" in response.text
    assert response.headers["content-type"].startswith("text/javascript")
    assert client.get("/extensions-assets/hello/style.css").status_code == 200
    for path in ("hello/scripts/hello.py", "hello/install.py", "hello/javascript/../scripts/hello.py",
                 "hello/../broken/scripts/bad.py", "nope/javascript/a.js", "hello/javascript/missing.js"):
        assert client.get(f"/extensions-assets/{path}").status_code == 404, path


def test_the_page_loads_the_extensions_js_and_css(server):
    from test_ui_browser import ensure_chromium

    reason = ensure_chromium()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--headless"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            page.wait_for_function("() => window.sdwHello === 'loaded'", timeout=30_000)
            assert page.evaluate("() => window.sdwHelloOrder") == "ab"  # sorted, as A1111
            outline = page.evaluate("() => getComputedStyle(document.querySelector('#txt2img_prompt')).outlineColor")
            assert outline == "rgb(1, 2, 3)"
            # the Extensions tab reports the broken one and what the others added
            page.get_by_role("tab", name="Extensions").first.click()
            table = page.locator("#extensions_table")
            table.wait_for(state="visible", timeout=15_000)
            assert "boom at import" in table.locator("tr[data-extension=broken]").inner_text()
            assert "Hello world" in table.locator("tr[data-extension=hello]").inner_text()
        finally:
            browser.close()


def test_disable_all_extensions_loads_none(data):
    with LiveServer(data, ui=False, flags={"disable_all_extensions": True}) as live, live.client() as client:
        assert "hello world" not in client.get("/sdapi/v1/scripts").json()["txt2img"]
        listed = client.get("/sdapi/v1/extensions").json()
        assert {item["name"] for item in listed} == {"broken", "dupe", "hello"}
        assert not any(item["enabled"] for item in listed)
        assert client.get("/extensions-assets/hello/javascript/a.js").status_code == 404


def test_install_from_a_folder_a_zip_and_git(tmp_path, tiny_sd1_path):
    data = make_data_dir(tmp_path / "data", tiny_sd1_path, "tiny-sd1.safetensors")
    with LiveServer(data, ui=False) as live, live.client() as client:
        check_installs(client, data, tmp_path)


def check_installs(client, data, tmp_path):
    source = tmp_path / "painter"
    (source / "scripts").mkdir(parents=True)
    (source / "scripts" / "paint.py").write_text("x = 1\n")
    response = client.post("/api/v1/extensions/install", json={"path": str(source)})
    assert response.status_code == 200, response.text
    assert (data / "extensions" / "painter" / "scripts" / "paint.py").is_file()
    response = client.post("/api/v1/extensions/install", json={"path": str(source)})
    assert response.status_code == 422 and response.json()["field"] == "name"  # already installed

    archive = tmp_path / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("zipped-main/scripts/z.py", "y = 2\n")
        zipped.writestr("zipped-main/style.css", "")
    assert client.post("/api/v1/extensions/install", json={"path": str(archive)}).status_code == 200
    assert (data / "extensions" / "zipped" / "scripts" / "z.py").is_file()  # its one top folder taken off

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zipped:
        zipped.writestr("../../escaped.txt", "no")
    response = client.post("/api/v1/extensions/install", json={"path": str(evil)})
    assert response.status_code == 422 and response.json()["field"] == "path"
    assert not (data / "escaped.txt").exists() and not (data / "extensions" / "evil").exists()

    # nothing listens there: git fails at once, and says so (as it would offline)
    response = client.post("/api/v1/extensions/install", json={"url": "git://127.0.0.1:9/nothing.git"})
    assert response.status_code == 422 and response.json()["field"] == "url"
    assert "git clone failed" in response.text and not (data / "extensions" / "nothing").exists()
    for body, field in [({"url": "file:///etc"}, "url"), ({"path": str(source), "name": "../up"}, "name"),
                        ({"url": "git://127.0.0.1:9/x.git", "path": str(source)}, "url")]:
        response = client.post("/api/v1/extensions/install", json=body)
        assert response.status_code == 422 and response.json()["field"] == field, response.text


def test_install_is_refused_beyond_loopback_without_the_flag(tmp_path, tiny_sd1_path):
    data = make_data_dir(tmp_path / "data", tiny_sd1_path, "tiny-sd1.safetensors")
    source = tmp_path / "remote-ext"
    source.mkdir()
    auth = ("user", "secret-pass")
    common = {"ui": False, "host": "0.0.0.0", "credentials": Credentials.parse("user:secret-pass")}
    with LiveServer(data, **common) as live, live.client(auth=auth) as client:
        response = client.post("/api/v1/extensions/install", json={"path": str(source)})
        assert response.status_code == 403 and "--enable-insecure-extension-access" in response.text
        assert not (data / "extensions" / "remote-ext").exists()
    with LiveServer(data, flags={"enable_insecure_extension_access": True}, **common) as live:
        with live.client() as anonymous:  # credentials are still needed
            assert anonymous.post("/api/v1/extensions/install", json={"path": str(source)}).status_code == 401
        with live.client(auth=auth) as client:
            response = client.post("/api/v1/extensions/install", json={"path": str(source)})
            assert response.status_code == 200, response.text
    assert (data / "extensions" / "remote-ext").is_dir()


def test_disabled_extensions_setting_turns_one_off_at_the_next_start(tmp_path, tiny_sd1_path):
    from sdwebui.ui.extensions import installed_html

    data = make_data_dir(tmp_path / "data", tiny_sd1_path, "tiny-sd1.safetensors")
    write_extensions(data)
    with LiveServer(data, ui=False) as live, live.client() as client:
        table = installed_html(live.services)
        assert "boom at import" in table and "Hello world, Shout, a.js, b.js, style.css" in table
        # as an A1111 client (or the Extensions tab) sets it: kept, applied at the next start
        assert client.post("/sdapi/v1/options", json={"disabled_extensions": ["hello"]}).status_code == 200
        assert "hello world" in client.get("/sdapi/v1/scripts").json()["txt2img"]
    with LiveServer(data, ui=False) as live, live.client() as client:
        assert "hello world" not in client.get("/sdapi/v1/scripts").json()["txt2img"]
        enabled = {item["name"]: item["enabled"] for item in client.get("/sdapi/v1/extensions").json()}
        assert enabled == {"broken": True, "dupe": True, "hello": False}
        assert "enabled</td>" in installed_html(live.services) and "disabled</td>" in installed_html(live.services)


def test_check_for_updates_asks_the_remote(tmp_path):
    import subprocess

    from sdwebui.server import extensions

    def git(*args, cwd):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main",
                        *args], cwd=cwd, check=True, capture_output=True)

    source, bare = tmp_path / "source", tmp_path / "remote.git"
    (source / "scripts").mkdir(parents=True)
    (source / "scripts" / "a.py").write_text("x = 1\n")
    git("init", cwd=tmp_path / "source")
    git("add", ".", cwd=source)
    git("commit", "-m", "one", cwd=source)
    git("clone", "--bare", str(source), str(bare), cwd=tmp_path)
    folder = tmp_path / "extensions"
    folder.mkdir()
    git("clone", str(bare), str(folder / "gitext"), cwd=tmp_path)
    (folder / "plain").mkdir()
    loaded = extensions.load(folder)
    item = loaded.find("gitext")
    assert item.a1111()["remote"] == str(bare) and item.a1111()["branch"] == "main"
    assert len(item.a1111()["commit_hash"]) == 40 and item.check_update() == "latest"
    (source / "scripts" / "a.py").write_text("x = 2\n")
    git("commit", "-am", "two", cwd=source)
    git("push", str(bare), "HEAD:main", cwd=source)
    assert item.check_update() == "behind"
    assert loaded.find("plain").check_update() == "not a git checkout"
    (folder / "gitext" / ".git" / "config").write_text(
        '[remote "origin"]\n\turl = git://127.0.0.1:9/gone.git\n')  # nothing listens: as offline
    assert loaded.find("gitext").check_update().startswith("could not ask git://127.0.0.1:9/gone.git (offline?)")
