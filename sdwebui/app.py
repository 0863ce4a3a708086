"""The composition root: configuration in, a ready FastAPI app out.

`build_app(config)` wires everything once: paths -> store (with crash recovery) -> options -> job queue and
worker -> model manager (made on first use) -> the native and A1111 routers -> error handlers -> the web UI
(Gradio, mounted at `/` unless `--nowebui`) -> the security middleware in front of all of it. There is no
module-level state: two apps built side by side (two data folders, two ports) are independent.

Start-up is kept light on purpose: torch, diffusers and the pipelines are imported when there is work (the
worker imports the pipeline in the background as soon as the server is up), so the server answers within a
second or two of starting. Gradio (a few seconds to import) is imported only when the UI is served.
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import socket
import sys
from collections.abc import Iterable
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi.concurrency import run_in_threadpool
from fastapi_offline import FastAPIOffline

from sdwebui import __version__
from sdwebui.pipelines.scripts import Script, ScriptRegistry
from sdwebui.scripts import builtin_scripts
from sdwebui.server import a1111, autocomplete, controlnet_api, extensions, extra_networks, native
from sdwebui.server.config import ConfigError, Credentials, ServerConfig, memory_fields
from sdwebui.server.errors import install_error_handlers
from sdwebui.server.options import LIMIT_FLAGS, OPTIONS, OptionError
from sdwebui.server.security import SecurityMiddleware
from sdwebui.server.services import Services
from sdwebui.server.store import StoreError
from sdwebui.ui import mount_ui

log = logging.getLogger("sdwebui")


def build_services(config: ServerConfig, scripts: Iterable[Script] = ()) -> Services:
    """The app without HTTP: store, options, queue and worker, models, and the script registry (the built-in
    scripts plus `scripts`). The server wraps it in routes; the command line uses it as it is."""
    registry = ScriptRegistry([
        *builtin_scripts(config.paths.wildcards_folder, config.paths.controlnet_folders), *scripts])
    services = Services(config, registry)
    flags = config.flags or {}
    # `extensions/NAME/scripts/*.py` join the registry; a broken one is reported with its extension, not raised.
    # A1111's `disabled_extensions` setting (kept as sent to /options; the Extensions tab writes it) turns some off.
    disabled = services.options.unknown().get("disabled_extensions")
    loaded = extensions.load(config.paths.data_dir / "extensions",
                             disabled={name for name in disabled if isinstance(name, str)}
                             if isinstance(disabled, list) else set(),
                             disable_all=bool(flags.get("disable_all_extensions") or flags.get("disable_extra_extensions")))
    extensions.register(loaded, registry)
    services.extensions = loaded
    if config.ray_address is not None:
        from sdwebui.server.cluster import RayScheduler  # Ray: imported only with --ray

        # The jobs run on Ray actors, each with services of its own; the queue, store and routes stay here.
        services.worker = RayScheduler(
            services, functools.partial(build_worker_services, config), address=config.ray_address,
            workers=config.ray_workers, gpus_per_worker=config.ray_gpus_per_worker, threads=config.threads)
    return services


def build_worker_services(config: ServerConfig) -> Services:
    """A Ray worker actor's services (`server.cluster.ClusterWorker`): the API node's folders, scripts and device
    flags, with a store of its own in memory (the API node's store holds the jobs and the history) and none of
    the server's secrets."""
    return build_services(replace(config, in_memory_store=True, ray_address=None, ray_workers=None,
                                  ray_gpus_per_worker=None, credentials=Credentials(), flags={}, ui=False,
                                  load_model_at_start=False))


def build_app(config: ServerConfig, scripts: Iterable[Script] = ()):
    """The FastAPI app for `config`: the native and A1111 routes, the web UI, the security middleware."""
    services = build_services(config, scripts)

    @asynccontextmanager
    async def lifespan(app):
        services.start()
        try:
            yield
        finally:
            # Stops after the running job (interrupted: it keeps what it made); queued jobs stay queued.
            await run_in_threadpool(services.close)

    # FastAPI with /docs (Swagger UI) and /redoc served from the package: FastAPI's own pages load their
    # scripts from a CDN, which an offline machine cannot reach.
    app = FastAPIOffline(
        title="sdwebui",
        version=__version__,
        description="Stable Diffusion WebUI API: the native job API (`/api/v1`) and an "
        "AUTOMATIC1111-compatible API (`/sdapi/v1`).",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(native.build_router(services))
    app.include_router(a1111.build_router(services))
    app.include_router(extra_networks.build_router(services))
    app.include_router(extensions.build_router(services))
    app.include_router(autocomplete.build_router(services))
    app.include_router(controlnet_api.build_router(services))
    if config.ui:
        # The UI takes every path the API does not; the API's own prefixes keep its 404/405 answers.
        _add_api_fallbacks(app, ("/api", "/sdapi"))
        # Last, so the API routes keep their paths; inside the security middleware like everything else.
        mount_ui(app, services)
    app.add_middleware(SecurityMiddleware, config=config)
    if config.cors_allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # Outermost, so preflight requests (which carry no credentials) are answered here. Never credentials
        # with "*": Starlette would then echo any origin back as allowed, credentials included.
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_allow_origins), allow_methods=["*"],
            allow_headers=["*"], allow_credentials=config.cors_credentials,
        )
    return app


def _add_api_fallbacks(app, prefixes: tuple[str, ...]) -> None:
    """Answer unknown paths under the API prefixes as the API does (404, or 405 with `Allow` when the path
    exists for other methods) instead of letting the UI mounted at `/` take them."""
    from fastapi.exceptions import HTTPException
    from starlette.routing import Match

    api_routes = list(app.router.routes)  # before the fallbacks and the UI's mount
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

    def allowed_methods(path: str) -> list[str]:
        allowed = []
        for method in methods:
            scope = {"type": "http", "method": method, "path": path, "root_path": "", "path_params": {},
                     "headers": [], "query_string": b""}
            if any(route.matches(scope)[0] == Match.FULL for route in api_routes):
                allowed.append(method)
        return allowed

    def fallback_for(prefix: str):
        async def api_fallback(rest: str):
            allowed = allowed_methods(f"{prefix}/{rest}")
            if allowed:
                raise HTTPException(405, "Method Not Allowed", headers={"Allow": ", ".join(allowed)})
            raise HTTPException(404, "Not Found")

        return api_fallback

    for prefix in prefixes:
        app.add_api_route(prefix + "/{rest:path}", fallback_for(prefix), methods=methods, include_in_schema=False)


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    group.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 (needs --api-auth or --insecure)")
    group.add_argument("--port", type=int, default=7860, help="port (default 7860, as A1111)")
    group.add_argument("--api-auth", help="credentials user:password[,user2:password2] for every route")
    group.add_argument("--api-auth-file", help="file with user:password entries (one per line or comma-separated)")
    group.add_argument("--insecure", action="store_true",
                       help="allow listening beyond this machine without credentials (trusted networks only)")
    group.add_argument("--cors-allow-origins",
                       help="comma-separated origins allowed to call the API from a browser ('*': any site, "
                            "without credentials)")
    group.add_argument("--allowed-hosts", help="comma-separated extra Host names accepted without credentials")
    group.add_argument("--forwarded-allow-ips",
                       help="comma-separated addresses of reverse proxies whose X-Forwarded-For is believed "
                            "(default: none; the client address is the connection's)")
    for key, flag in LIMIT_FLAGS.items():
        group.add_argument(flag, type=int, dest=key, metavar="N",
                           help=f"{OPTIONS[key].label} (setting {key}; operator only: the API cannot change it)")
    group.add_argument("--ray", metavar="ADDRESS",
                       help="run jobs on the worker actors of a Ray cluster: auto, ray://HOST:PORT, HOST:PORT, or "
                            "local (start one in this process); needs the ray extra (pip install 'sdwebui[ray]')")
    group.add_argument("--ray-workers", type=int, metavar="N",
                       help="worker actors to start (default: one per GPU of the cluster; one per node without GPUs)")
    group.add_argument("--ray-gpus-per-worker", type=float, metavar="G",
                       help="GPUs each worker actor takes (default 1 on a cluster with GPUs, 0 without)")
    group.add_argument("--no-preload", action="store_true", help="do not import the pipeline until the first job")
    group.add_argument("--skip-load-model-at-start", action="store_true",
                       help="do not load the checkpoint at start-up (A1111's flag); the first job loads it")
    group.add_argument("--api", action="store_true",
                       help="accepted for A1111 scripts; the API is always served (A1111 needs this flag for it)")
    group.add_argument("--nowebui", "--no-ui", dest="nowebui", action="store_true",
                       help="serve the API only, without the web UI (as A1111's --nowebui)")
    group.add_argument("--disable-all-extensions", action="store_true",
                       help="load nothing from <data-dir>/extensions (A1111's flag)")
    group.add_argument("--disable-extra-extensions", action="store_true",
                       help="the same here: every extension is an extra one (A1111's flag)")
    group.add_argument("--enable-insecure-extension-access", action="store_true",
                       help="allow installing extensions while listening beyond this machine (A1111's flag)")
    group.add_argument("--api-server-stop", action="store_true",
                       help="A1111's flag: serve POST /sdapi/v1/server-stop, server-restart and server-kill")


def config_from_args(args, paths) -> ServerConfig:
    credentials = Credentials.parse(args.api_auth)
    if args.api_auth_file:
        credentials = credentials + Credentials.from_file(args.api_auth_file)
    host = args.host or ("0.0.0.0" if args.listen else "127.0.0.1")
    precision = "full" if getattr(args, "no_half", False) else getattr(args, "precision", "auto")
    flags = {key: value for key, value in vars(args).items() if key != "func"}
    flags.update({"api": True, "listen": host not in ("127.0.0.1", "localhost", "::1")})
    settings = {key: getattr(args, key) for key in LIMIT_FLAGS if getattr(args, key, None) is not None}
    for key, value in settings.items():
        try:
            OPTIONS[key].check(key, value)
        except OptionError as error:
            raise ConfigError(f"{LIMIT_FLAGS[key]}: {error.message}") from None
    return ServerConfig(
        paths=paths,
        host=host,
        port=args.port,
        credentials=credentials,
        insecure=args.insecure,
        cors_allow_origins=_split(args.cors_allow_origins),
        allowed_hosts=_split(args.allowed_hosts),
        forwarded_allow_ips=_split(getattr(args, "forwarded_allow_ips", None)),
        settings=settings,
        device=getattr(args, "device", "auto"),
        precision=precision,
        vae_precision="full" if getattr(args, "no_half_vae", False) else "auto",
        prediction_type=getattr(args, "prediction_type", None),
        **memory_fields(args),
        preload=not args.no_preload,
        load_model_at_start=not getattr(args, "skip_load_model_at_start", False),
        threads=getattr(args, "threads", None),
        ui=not getattr(args, "nowebui", False),
        ray_address=getattr(args, "ray", None),
        ray_workers=getattr(args, "ray_workers", None),
        ray_gpus_per_worker=getattr(args, "ray_gpus_per_worker", None),
        api_server_stop=bool(getattr(args, "api_server_stop", False)),
        flags=flags,
    )


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def serve(config: ServerConfig) -> int:
    """Run the server until Ctrl+C / SIGTERM. Refuses to start with one line (exit 2), before anything is written:
    an unsafe configuration, a port in use, a database another process holds locked or cannot be opened."""
    try:
        config.check()
    except ConfigError as error:
        print(f"sdwebui: error: {error}", file=sys.stderr)
        return 2
    import uvicorn

    try:
        sock = bind_socket(config)
    except ConfigError as error:
        print(f"sdwebui: error: {error}", file=sys.stderr)
        return 2
    try:
        if not config.loopback_only and not config.credentials:
            print(f"sdwebui: WARNING: listening on {config.host} without credentials (--insecure)", file=sys.stderr)
        try:
            app = build_app(config)
        except (StoreError, OptionError) as error:
            print(f"sdwebui: error: {error}", file=sys.stderr)
            return 2
        if config.ray_address is not None:
            try:  # here, so that a cluster that cannot be joined is one line, not a failed start-up
                app.state.services.worker.connect()
            except ConfigError as error:
                print(f"sdwebui: error: {error}", file=sys.stderr)
                return 2
        for notice in app.state.services.notices:
            print(f"sdwebui: WARNING: {notice}", file=sys.stderr)
        ui = f"web UI: {config.url}/, " if config.ui else ""
        print(f"sdwebui: serving on {config.url} ({ui}API docs: {config.url}/docs)", file=sys.stderr)
        server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(config)))
        app.state.services.control.attach(server)
        server.run(sockets=[sock])
    finally:
        sock.close()
    return app.state.services.control.exit_code()


def uvicorn_options(config: ServerConfig) -> dict:
    """How uvicorn serves the app. Forwarded headers are believed only from `--forwarded-allow-ips` (uvicorn's
    own default believes them from loopback, so any local client, or a proxy passing them through, could choose
    the address the failed-login lockout counts)."""
    return {
        "log_level": "warning",
        "timeout_graceful_shutdown": 30,
        "proxy_headers": bool(config.forwarded_allow_ips),
        "forwarded_allow_ips": list(config.forwarded_allow_ips) or None,
    }


def bind_socket(config: ServerConfig) -> socket.socket:
    """The listening socket, bound before anything else happens (no database is created for a server that
    cannot start); ConfigError with one line when the port is taken or not ours to use."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart needs no TIME_WAIT pause
    try:
        sock.bind((config.host, config.port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {config.port} is in use (try --port N)") from None
        if error.errno == errno.EACCES:
            raise ConfigError(f"port {config.port} needs privileges on this system (try --port N above 1023)") from None
        if error.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(error, socket.gaierror):
            raise ConfigError(f"cannot listen on {config.host}: not an address of this machine") from None
        raise ConfigError(f"cannot listen on {config.host}:{config.port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


__all__ = ["build_app", "build_services", "serve", "config_from_args", "add_serve_flags", "uvicorn_options",
           "bind_socket"]
