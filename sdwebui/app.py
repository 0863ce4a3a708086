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
import logging
import sys
from collections.abc import Iterable
from contextlib import asynccontextmanager

from fastapi.concurrency import run_in_threadpool
from fastapi_offline import FastAPIOffline

from sdwebui import __version__
from sdwebui.pipelines.scripts import Script, ScriptRegistry
from sdwebui.scripts import builtin_scripts
from sdwebui.server import a1111, native
from sdwebui.server.config import ConfigError, Credentials, ServerConfig
from sdwebui.server.errors import install_error_handlers
from sdwebui.server.security import SecurityMiddleware
from sdwebui.server.services import Services
from sdwebui.ui import mount_ui

log = logging.getLogger("sdwebui")


def build_services(config: ServerConfig, scripts: Iterable[Script] = ()) -> Services:
    """The app without HTTP: store, options, queue and worker, models, and the script registry (the built-in
    scripts plus `scripts`). The server wraps it in routes; the command line uses it as it is."""
    return Services(config, ScriptRegistry([*builtin_scripts(), *scripts]))


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
    if config.ui:
        # The UI takes every path the API does not; the API's own prefixes keep its 404/405 answers.
        _add_api_fallbacks(app, ("/api", "/sdapi"))
        # Last, so the API routes keep their paths; inside the security middleware like everything else.
        mount_ui(app, services)
    app.add_middleware(SecurityMiddleware, config=config)
    if config.cors_allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # Outermost, so preflight requests (which carry no credentials) are answered here.
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_allow_origins), allow_methods=["*"],
            allow_headers=["*"], allow_credentials=True,
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
    group.add_argument("--cors-allow-origins", help="comma-separated origins allowed to call the API from a browser")
    group.add_argument("--allowed-hosts", help="comma-separated extra Host names accepted without credentials")
    group.add_argument("--no-preload", action="store_true", help="do not import the pipeline until the first job")
    group.add_argument("--api", action="store_true",
                       help="accepted for A1111 scripts; the API is always served (A1111 needs this flag for it)")
    group.add_argument("--nowebui", "--no-ui", dest="nowebui", action="store_true",
                       help="serve the API only, without the web UI (as A1111's --nowebui)")


def config_from_args(args, paths) -> ServerConfig:
    credentials = Credentials.parse(args.api_auth)
    if args.api_auth_file:
        credentials = credentials + Credentials.from_file(args.api_auth_file)
    host = args.host or ("0.0.0.0" if args.listen else "127.0.0.1")
    precision = "full" if getattr(args, "no_half", False) else getattr(args, "precision", "auto")
    flags = {key: value for key, value in vars(args).items() if key != "func"}
    flags.update({"api": True, "listen": host not in ("127.0.0.1", "localhost", "::1")})
    return ServerConfig(
        paths=paths,
        host=host,
        port=args.port,
        credentials=credentials,
        insecure=args.insecure,
        cors_allow_origins=_split(args.cors_allow_origins),
        allowed_hosts=_split(args.allowed_hosts),
        device=getattr(args, "device", "auto"),
        precision=precision,
        vae_precision="full" if getattr(args, "no_half_vae", False) else "auto",
        prediction_type=getattr(args, "prediction_type", None),
        preload=not args.no_preload,
        threads=getattr(args, "threads", None),
        ui=not getattr(args, "nowebui", False),
        flags=flags,
    )


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def serve(config: ServerConfig) -> int:
    """Run the server until Ctrl+C / SIGTERM. Refuses unsafe configurations with one line (exit 2)."""
    try:
        config.check()
    except ConfigError as error:
        print(f"sdwebui: error: {error}", file=sys.stderr)
        return 2
    import uvicorn

    if not config.loopback_only and not config.credentials:
        print(f"sdwebui: WARNING: listening on {config.host} without credentials (--insecure)", file=sys.stderr)
    app = build_app(config)
    ui = f"web UI: {config.url}/, " if config.ui else ""
    print(f"sdwebui: serving on {config.url} ({ui}API docs: {config.url}/docs)", file=sys.stderr)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0


__all__ = ["build_app", "build_services", "serve", "config_from_args", "add_serve_flags"]
