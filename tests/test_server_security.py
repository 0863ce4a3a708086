"""Security of the server (reliability-security research, sections 1.2 and 6B/6C), against real uvicorn servers:
listening beyond loopback needs credentials; with credentials every route is closed by default; the credential
check is constant-time; no wildcard CORS; cross-site and DNS-rebinding requests are refused; /cmd-flags shows
no secret; file routes never leave the outputs folder; bodies over the limit are refused."""

from __future__ import annotations

import base64
import http.client
import inspect
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from starlette.routing import Mount, Route, WebSocketRoute

from test_api_support import LiveServer

from sdwebui.server.config import ConfigError, Credentials, ServerConfig
from sdwebui.server.security import SecurityMiddleware, confine

USER, PASSWORD = "alice", "correct horse battery staple"


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GOOD = basic(USER, PASSWORD)


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdwebui.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ---- listening ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [["--listen"], ["--host", "0.0.0.0"], ["--host", "192.0.2.7"], ["--host", "::"]],
                         ids=["listen", "host-any", "host-lan", "host-ipv6-any"])
def test_serve_refuses_to_listen_beyond_loopback_without_credentials(tmp_path, flags):
    port = free_port()
    result = run_cli("serve", *flags, "--port", str(port), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdwebui: error: refusing to listen on"), result.stderr
    assert "--api-auth" in lines[0] and "--insecure" in lines[0]
    assert result.stdout == "" and not port_open(port)


def test_plain_sdwebui_with_a1111_server_flags_is_serve(tmp_path):
    """`./webui.sh --listen --api --port N` (A1111's way) reaches the server command and its checks."""
    port = free_port()
    result = run_cli("--listen", "--api", "--port", str(port), "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "refusing to listen on" in result.stderr, result.stderr
    assert not port_open(port)


@pytest.mark.parametrize("flags, message", [
    (["--listen", "--api-auth", "no-colon"], "expected user:password"),
    (["--listen", "--api-auth-file", "/nonexistent/credentials"], "cannot read the credentials file"),
], ids=["malformed-auth", "missing-auth-file"])
def test_serve_rejects_bad_credentials_flags_with_one_line(tmp_path, flags, message):
    result = run_cli("serve", *flags, "--port", str(free_port()), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_listen_is_allowed_with_credentials_or_insecure_and_defaults_to_loopback(tmp_path):
    from sdwebui.app import config_from_args
    from sdwebui.cli import build_parser, paths_from

    def config(*flags: str) -> ServerConfig:
        args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path), *flags])
        return config_from_args(args, paths_from(args))

    default = config()
    assert (default.host, default.port) == ("127.0.0.1", 7860) and default.loopback_only
    default.check()
    with pytest.raises(ConfigError):
        config("--listen").check()
    config("--listen", "--insecure").check()
    config("--listen", "--api-auth", f"{USER}:{PASSWORD}").check()
    credentials_file = tmp_path / "credentials"
    credentials_file.write_text(f"{USER}:{PASSWORD}\nbob:other\n")
    listening = config("--listen", "--api-auth-file", str(credentials_file))
    listening.check()
    assert listening.host == "0.0.0.0" and [u for u, _ in listening.credentials.pairs] == [USER, "bob"]
    assert PASSWORD not in repr(listening.credentials) and PASSWORD not in repr(listening)


def test_a_port_in_use_is_one_line_exit_2_and_nothing_is_created(tmp_path):
    """Issue 15: the port is checked before anything else: no "serving on", no traceback, no database."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_cli("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--nowebui")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"sdwebui: error: port {port} is in use (try --port N)"]
    assert result.stdout == "" and not (tmp_path / "data" / "sdwebui.db").exists()


def test_forwarded_headers_are_believed_only_from_listed_proxies(tmp_path):
    """uvicorn believes X-Forwarded-For from loopback by default: a client rotating it got a fresh address,
    and a fresh failed-login allowance, for every guess. Here the connection's own address counts unless
    `--forwarded-allow-ips` names the proxy."""
    from sdwebui.app import uvicorn_options

    assert uvicorn_options(ServerConfig(paths=None))["proxy_headers"] is False
    with LiveServer(tmp_path / "direct", credentials=Credentials(((USER, PASSWORD),)), max_failed_logins=3,
                    preload=False) as live, live.client() as client:
        for n in range(3):
            forged = {**basic(USER, "guess"), "X-Forwarded-For": f"203.0.113.{n}"}
            assert client.get("/sdapi/v1/options", headers=forged).status_code == 401
        rotated = client.get("/sdapi/v1/options", headers={**basic(USER, "guess"), "X-Forwarded-For": "203.0.113.99"})
        assert rotated.status_code == 429, "a new X-Forwarded-For is not a new client"
    with LiveServer(tmp_path / "proxied", credentials=Credentials(((USER, PASSWORD),)), max_failed_logins=3,
                    forwarded_allow_ips=("127.0.0.1",), preload=False) as live, live.client() as client:
        for _ in range(3):
            headers = {**basic(USER, "guess"), "X-Forwarded-For": "203.0.113.7"}
            assert client.get("/sdapi/v1/options", headers=headers).status_code == 401
        assert client.get("/sdapi/v1/options", headers={**GOOD, "X-Forwarded-For": "203.0.113.7"}).status_code == 429
        # Behind the listed proxy, another client (its forwarded address) is not held back by that one.
        assert client.get("/sdapi/v1/options", headers={**GOOD, "X-Forwarded-For": "203.0.113.8"}).status_code == 200


def test_forwarded_allow_ips_flag(tmp_path):
    from sdwebui.app import config_from_args, uvicorn_options
    from sdwebui.cli import build_parser, paths_from

    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path), "--forwarded-allow-ips", "10.0.0.2, ::1"])
    config = config_from_args(args, paths_from(args))
    assert config.forwarded_allow_ips == ("10.0.0.2", "::1")
    options = uvicorn_options(config)
    assert options["proxy_headers"] is True and options["forwarded_allow_ips"] == ["10.0.0.2", "::1"]


# ---- authentication: every route, default deny --------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("auth")
    (data / "outputs").mkdir()
    Image.new("RGB", (8, 8)).save(data / "outputs" / "a.png")
    # Configured as `--listen --api-auth` (host 0.0.0.0); the test socket itself stays on 127.0.0.1. The tests
    # here send hundreds of wrong passwords on purpose: no limit (it has its own test).
    with LiveServer(data, host="0.0.0.0", credentials=Credentials(((USER, PASSWORD),)), max_failed_logins=0,
                    preload=False) as live:
        assert not live.config.loopback_only
        yield live


def all_routes(routes, prefix: str = "") -> list[tuple[str, object]]:
    """(prefix, route) for every HTTP and WebSocket route, looking into included routers (FastAPI keeps one
    entry of `app.routes` per `include_router`) and mounted apps (the web UI)."""
    found = []
    for route in routes:
        if hasattr(route, "original_router"):  # fastapi.routing._IncludedRouter
            found += all_routes(route.original_router.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Mount):
            found.append((prefix, route))
            found += all_routes(route.routes, prefix + route.path)
        else:
            assert isinstance(route, (Route, WebSocketRoute)), f"unexpected route type {type(route).__name__}"
            found.append((prefix, route))
    return found


def concrete_requests(app) -> list[tuple[str, str]]:
    """(method, path) for every route the app serves, path parameters filled in; method "WEBSOCKET" for a
    WebSocket route, "GET" for a mount's own path."""
    requests = []
    for prefix, route in all_routes(app.routes):
        path = re.sub(r"\{[^}:]+:path\}", "a.png", prefix + route.path)
        path = re.sub(r"\{[^}]+\}", "1", path) or "/"
        if isinstance(route, WebSocketRoute):
            requests.append(("WEBSOCKET", path))
        elif isinstance(route, Mount):
            requests.append(("GET", path.rstrip("/") + "/"))
        else:
            requests += [(method, path) for method in sorted(route.methods or {"GET"})]
    return requests


def websocket_handshake(server, path: str, headers: dict | None) -> int:
    """The HTTP status of a WebSocket opening handshake (101 = accepted)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.putrequest("GET", path)
        for key, value in {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                           "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
                           **(headers or {})}.items():
            connection.putheader(key, value)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


WRONG_CREDENTIALS = [
    None,
    basic(USER, "wrong"),
    basic("mallory", PASSWORD),
    basic(USER, PASSWORD[:-1]),
    basic(USER, PASSWORD + "x"),
    basic(USER.upper(), PASSWORD),
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Basic " + base64.b64encode(USER.encode()).decode()},  # no colon
    {"Authorization": "Bearer " + PASSWORD},
    {"Authorization": f"{USER}:{PASSWORD}"},  # not encoded
]


def test_every_route_needs_credentials(auth_server):
    requests = concrete_requests(auth_server.app)
    paths = {path for _, path in requests}
    # The enumeration really covers the three APIs and the documentation.
    assert {"/api/v1/jobs", "/sdapi/v1/txt2img", "/sdapi/v1/cmd-flags", "/docs", "/openapi.json", "/redoc",
            "/api/v1/outputs/a.png", "/api/v1/images/1/file"} <= paths
    requests += [("GET", "/"), ("GET", "/no/such/route"), ("GET", "/api/v1/health/../jobs"), ("POST", "/sdapi/v1/")]
    with auth_server.client() as client:
        for number, (method, path) in enumerate(requests):
            if path == "/api/v1/health":
                continue  # the one public route, checked below
            # Every way of getting it wrong on a few routes, the two commonest on all (each request costs time).
            for headers in WRONG_CREDENTIALS if number % 10 == 0 else WRONG_CREDENTIALS[:2]:
                if method == "WEBSOCKET":
                    assert websocket_handshake(auth_server, path, headers) != 101, path
                    continue
                response = client.request(method, path, headers=headers or {})
                assert response.status_code == 401, (method, path, headers, response.status_code)
                assert response.headers["www-authenticate"] == 'Basic realm="sdwebui"'
                if method != "HEAD":
                    assert response.json()["error"] == "unauthorized"
        # The one public route (a liveness probe) says nothing beyond "ok".
        assert client.get("/api/v1/health").status_code == 200
        # The right credentials open the routes.
        assert client.get("/sdapi/v1/options", headers=GOOD).status_code == 200
        assert client.get("/api/v1/jobs", headers=GOOD).status_code == 200
        assert client.get("/openapi.json", headers=GOOD).status_code == 200
        assert client.get("/docs", headers=GOOD).status_code == 200
        response = client.get("/api/v1/outputs/a.png", headers=GOOD)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert client.get("/api/v1/outputs/a.png", headers=basic(USER, "wrong")).status_code == 401


def test_wrong_passwords_are_limited_per_address(tmp_path):
    with LiveServer(tmp_path, credentials=Credentials(((USER, PASSWORD),)), max_failed_logins=3,
                    preload=False) as live, live.client() as client:
        for _ in range(5):  # no credentials at all: the browser asking how to log in, not a guess
            assert client.get("/sdapi/v1/options").status_code == 401
        assert client.get("/sdapi/v1/options", headers=GOOD).status_code == 200
        for _ in range(3):
            assert client.get("/sdapi/v1/options", headers=basic(USER, "guess")).status_code == 401
        refused = client.get("/sdapi/v1/options", headers=GOOD)  # even the right password waits
        assert refused.status_code == 429 and refused.json()["error"] == "too_many_requests"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert client.get("/api/v1/health").status_code == 200


def test_failed_login_window_ends_and_is_per_address():
    from sdwebui.server.security import FailedLogins

    now = [1000.0]
    limiter = FailedLogins(2, window=60, clock=lambda: now[0])
    limiter.record("10.0.0.1")
    now[0] += 10
    limiter.record("10.0.0.1")
    assert limiter.wait_seconds("10.0.0.1") == pytest.approx(50)
    assert limiter.wait_seconds("10.0.0.2") == 0
    now[0] += 50
    assert limiter.wait_seconds("10.0.0.1") == 0  # the first failure is a minute old
    limiter.record("10.0.0.1")
    assert limiter.wait_seconds("10.0.0.1") == pytest.approx(10)
    assert FailedLogins(0).wait_seconds("10.0.0.1") == 0


def test_public_paths_are_only_the_health_probe():
    from sdwebui.server.security import PUBLIC_PATHS

    assert PUBLIC_PATHS == frozenset({"/api/v1/health"})


def test_credential_check_is_constant_time():
    source = inspect.getsource(SecurityMiddleware._authorized)
    assert "compare_digest" in source
    # No ordinary comparison of secrets: `==` / `!=` / `in` on the user or password would leak timing.
    assert not re.search(r"(user|password)\w*\s*(==|!=)|(==|!=)\s*(want_)?(user|password)", source)
    module_source = inspect.getsource(sys.modules[SecurityMiddleware.__module__])
    assert "import hmac" in module_source or "import secrets" in module_source


def test_cmd_flags_and_options_never_show_secrets(tmp_path):
    from sdwebui.app import config_from_args
    from sdwebui.cli import build_parser, paths_from

    file_secret = "file-password-7f3a"
    credentials_file = tmp_path / "credentials"
    credentials_file.write_text(f"bob:{file_secret}\n")
    args = build_parser().parse_args(["serve", "--data-dir", str(tmp_path), "--api-auth", f"{USER}:{PASSWORD}",
                                      "--api-auth-file", str(credentials_file)])
    config = config_from_args(args, paths_from(args))
    with LiveServer(tmp_path, credentials=config.credentials, flags=config.flags, preload=False) as live:
        with live.client() as client:
            response = client.get("/sdapi/v1/cmd-flags", headers=GOOD)
            assert response.status_code == 200
            flags = response.json()
            assert flags["api_auth"] == "<redacted>" and flags["api_auth_file"] == "<redacted>"
            assert flags["api"] is True and flags["port"] == 7860
            for path in ("/sdapi/v1/cmd-flags", "/sdapi/v1/options", "/openapi.json", "/api/v1/health"):
                text = client.get(path, headers=basic("bob", file_secret)).text
                assert PASSWORD not in text and file_secret not in text, path
            unauthorized = client.get("/sdapi/v1/cmd-flags", headers=basic(USER, "guess"))
            assert unauthorized.status_code == 401 and PASSWORD not in unauthorized.text


# ---- CORS, cross-site requests, DNS rebinding ---------------------------------------------------------------


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """A loopback server without credentials (the default set-up)."""
    data = tmp_path_factory.mktemp("open")
    with LiveServer(data, preload=False) as live:
        yield live


def test_no_cors_headers_unless_origins_are_allowed(open_server, tmp_path):
    evil = {"Origin": "https://evil.example"}
    preflight = {**evil, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    with open_server.client() as client:
        # Another program's page on this machine is a foreign origin too (Gradio's own CORS would admit it).
        for origin in ("https://evil.example", "null", "http://localhost:1234", "http://127.0.0.1:1"):
            for path in ("/sdapi/v1/options", "/sdapi/v1/txt2img", "/api/v1/jobs", "/", "/config", "/openapi.json"):
                for response in (client.get(path, headers={"Origin": origin}),
                                 client.options(path, headers={**preflight, "Origin": origin})):
                    assert not any(key.lower().startswith("access-control-") for key in response.headers), \
                        (origin, path, response.headers)
    allowed = "http://ok.example"
    with LiveServer(tmp_path, cors_allow_origins=(allowed,), preload=False) as live, live.client() as client:
        response = client.options("/sdapi/v1/txt2img", headers={**preflight, "Origin": allowed})
        assert response.status_code == 200 and response.headers["access-control-allow-origin"] == allowed
        response = client.get("/sdapi/v1/options", headers={"Origin": allowed})
        assert response.headers["access-control-allow-origin"] == allowed
        response = client.options("/sdapi/v1/txt2img", headers=preflight)
        assert response.headers.get("access-control-allow-origin") is None
        response = client.get("/sdapi/v1/options", headers=evil)
        assert response.headers.get("access-control-allow-origin") is None
        # The allowed origin may post; another may not.
        assert client.post("/sdapi/v1/options", json={}, headers={"Origin": allowed}).status_code == 200
        assert client.post("/sdapi/v1/options", json={}, headers=evil).status_code == 403


def test_wildcard_cors_never_goes_with_credentials(tmp_path):
    """`*` with credentials made Starlette echo any origin back, credentials allowed: every site could read the
    API in the user's name. The CORS spec forbids the pair: with credentials configured it is refused at start;
    without, `*` is answered as `*`, never with credentials."""
    with pytest.raises(ConfigError, match=r"'\*' cannot be combined with credentials"):
        ServerConfig(paths=None, cors_allow_origins=("*",), credentials=Credentials(((USER, PASSWORD),))).check()
    with LiveServer(tmp_path, cors_allow_origins=("*",), preload=False) as live, live.client() as client:
        headers = {"Origin": "https://evil.example", "Cookie": "session=1"}
        for response in (client.get("/sdapi/v1/options", headers=headers),
                         client.options("/sdapi/v1/txt2img", headers={**headers,
                                                                      "Access-Control-Request-Method": "POST"})):
            assert response.headers.get("access-control-allow-credentials") is None, response.headers
            assert response.headers.get("access-control-allow-origin") in ("*", None), response.headers
        assert client.get("/sdapi/v1/options", headers=headers).headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example"])
def test_cross_site_state_changes_are_refused(open_server, origin):
    services = open_server.services
    jobs_before = services.store.jobs(limit=100)
    with open_server.client() as client:
        for method, path, body in (("POST", "/api/v1/jobs", {"steps": 2}), ("POST", "/sdapi/v1/txt2img", {}),
                                   ("POST", "/sdapi/v1/options", {"sd_vae": "None"}),
                                   ("POST", "/sdapi/v1/interrupt", None), ("DELETE", "/api/v1/jobs/1", None)):
            response = client.request(method, path, json=body, headers={"Origin": origin})
            assert response.status_code == 403, (method, path, response.text)
        # Same-origin requests (the server's own page) and requests without Origin (scripts) are fine.
        own = f"http://127.0.0.1:{open_server.port}"
        assert client.post("/sdapi/v1/options", json={}, headers={"Origin": own}).status_code == 200
    assert services.store.jobs(limit=100) == jobs_before
    assert services.options.get("sd_vae") == "Automatic"


def test_dns_rebinding_is_refused_on_an_open_loopback_server(open_server):
    with open_server.client() as client:
        for host in ("evil.example", "evil.example:80", f"attacker.test:{open_server.port}"):
            response = client.get("/sdapi/v1/options", headers={"Host": host})
            assert response.status_code == 403, host
        for host in (f"localhost:{open_server.port}", f"127.0.0.1:{open_server.port}", "localhost"):
            assert client.get("/sdapi/v1/options", headers={"Host": host}).status_code == 200, host


# ---- files never leave the outputs folder -------------------------------------------------------------------


@pytest.fixture(scope="module")
def files_server(tmp_path_factory):
    """outputs/ holds ok.png; secret.png lies beside outputs/ and in another folder; symlinks inside outputs/
    point at them."""
    root = tmp_path_factory.mktemp("files")
    data, elsewhere = root / "data", root / "elsewhere"
    outputs = data / "outputs"
    outputs.mkdir(parents=True)
    elsewhere.mkdir()
    Image.new("RGB", (8, 8), "green").save(outputs / "ok.png")
    (outputs / "sub").mkdir()
    Image.new("RGB", (8, 8), "green").save(outputs / "sub" / "ok.png")
    secret = Image.new("RGB", (8, 8), "red")
    secret.info["parameters"] = "SECRET-MARKER"
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "SECRET-MARKER")
    for path in (data / "secret.png", elsewhere / "secret.png"):
        secret.save(path, pnginfo=info)
    (data / "notes.txt").write_text("SECRET-MARKER")
    (outputs / "link.png").symlink_to(elsewhere / "secret.png")
    (outputs / "uplink.png").symlink_to(Path("..") / "secret.png")
    (outputs / "linkdir").symlink_to(elsewhere, target_is_directory=True)
    (outputs / "inside-link.png").symlink_to(outputs / "ok.png")  # a link that stays inside is fine
    with LiveServer(data, preload=False) as live:
        live.root = root
        yield live


def raw_get(server, path: str) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (httpx would normalise `..` segments away)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", f"127.0.0.1:{server.port}")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def traversal_paths(root: Path) -> list[str]:
    absolute = str(root / "data" / "secret.png")
    return [
        "../secret.png",
        "sub/../../secret.png",
        "..%2fsecret.png",
        "%2e%2e/secret.png",
        "%2e%2e%2fsecret.png",
        "%2E%2E%2Fsecret.png",
        "%252e%252e%252fsecret.png",  # double-encoded
        "..%252fsecret.png",
        "....//secret.png",
        "..%5csecret.png",
        "..\\secret.png",
        "/" + absolute.lstrip("/"),  # //abs/path: an absolute path in the parameter
        "%2f" + absolute.lstrip("/").replace("/", "%2f"),
        absolute.lstrip("/"),  # relative to the outputs folder, so it is not the secret
        "../notes.txt",
        "link.png",
        "uplink.png",
        "linkdir/secret.png",
        "ok.png%00.png",
        "a" * 5000 + ".png",
        "C:%5cWindows%5cwin.ini",
    ]


def test_outputs_route_refuses_path_traversal(files_server):
    status, body = raw_get(files_server, "/api/v1/outputs/ok.png")
    assert status == 200 and body.startswith(b"\x89PNG")  # the route works
    assert raw_get(files_server, "/api/v1/outputs/sub/ok.png")[0] == 200
    assert raw_get(files_server, "/api/v1/outputs/inside-link.png")[0] == 200
    for path in traversal_paths(files_server.root):
        for prefix in ("/api/v1/outputs/", "/api/v1/outputs/sub/"):
            status, body = raw_get(files_server, prefix + path)
            assert status in (400, 404), (prefix + path, status)
            assert b"SECRET-MARKER" not in body, prefix + path


def test_image_records_pointing_outside_are_neither_served_nor_deleted(files_server):
    store = files_server.services.store
    secret = files_server.root / "data" / "secret.png"
    linked = files_server.root / "elsewhere" / "secret.png"
    with files_server.client() as client:
        for path in ("../secret.png", str(secret), "link.png", "linkdir/secret.png"):
            image_id = store.add_image(job_id=None, path=path, seed=1, prompt="tampered")
            response = client.get(f"/api/v1/images/{image_id}/file")
            assert response.status_code == 404 and b"SECRET-MARKER" not in response.content, path
            assert client.delete(f"/api/v1/images/{image_id}").status_code == 200
            assert secret.is_file() and linked.is_file(), f"deleting record {path!r} removed a file outside"
    assert (files_server.config.paths.outputs_dir / "link.png").is_symlink()


@pytest.mark.parametrize("relative", [
    "../x.png", "a/../../x.png", "/etc/passwd", "\\etc\\passwd", "C:\\Windows\\win.ini", "C:/x.png", "x\x00.png",
    "a" * 5000, "", ".", "sub/..", "link.png", "linkdir/secret.png", "uplink.png",
])
def test_confine_refuses(files_server, relative):
    assert confine(files_server.config.paths.outputs_dir, relative) is None


def test_confine_accepts_files_inside(files_server):
    outputs = files_server.config.paths.outputs_dir
    assert confine(outputs, "sub/ok.png") == (outputs / "sub" / "ok.png").resolve()
    assert confine(outputs, "sub/../ok.png") == (outputs / "ok.png").resolve()
    assert confine(outputs, "inside-link.png") == (outputs / "ok.png").resolve()


# ---- request size -------------------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_and_the_server_goes_on(tmp_path):
    with LiveServer(tmp_path, max_body_bytes=4096, preload=False) as live, live.client() as client:
        big = {"prompt": "x" * 10_000, "steps": 2}
        response = client.post("/sdapi/v1/txt2img", json=big)
        assert response.status_code == 413 and response.json()["error"] == "payload_too_large"
        response = client.post("/api/v1/jobs", json=big)
        assert response.status_code == 413

        def chunks():  # no Content-Length: counted as it arrives
            for _ in range(10):
                yield b" " * 1000

        response = client.post("/sdapi/v1/png-info", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413, response.text
        response = client.post("/sdapi/v1/png-info", json={"image": "A" * 100})
        assert response.status_code == 422 and response.json()["field"] == "image"  # under the limit: read
        assert client.get("/sdapi/v1/progress").status_code == 200
        assert live.services.store.jobs(limit=10) == []


def test_an_image_bomb_is_refused_before_it_is_decoded(open_server):
    """A few hundred bytes of PNG that claim 100000 x 100000 pixels (40 GB decoded): refused from the header."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    with open_server.client() as client:
        response = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(png).decode()})
        assert response.status_code == 413 and response.json()["field"] == "image", response.text
        assert client.get("/sdapi/v1/progress").status_code == 200


def test_invalid_content_length_is_400(open_server):
    connection = http.client.HTTPConnection("127.0.0.1", open_server.port, timeout=60)
    try:
        connection.putrequest("POST", "/sdapi/v1/png-info")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", "lots")
        connection.endheaders()
        status = connection.getresponse().status
    finally:
        connection.close()
    assert status == 400
