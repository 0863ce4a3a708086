"""Stopping, restarting and killing the server from the API: A1111's `--api-server-stop` routes.

    POST /sdapi/v1/server-stop      a graceful stop: no new requests, the running job ends (interrupted, keeping
                                    what it made), queued jobs stay queued for the next start; exit code 0
    POST /sdapi/v1/server-restart   the same stop, then exit code 75 (`RESTART_EXIT_CODE`), which `./webui.sh`
                                    takes as "start me again"; 501 when nothing would start it again (A1111's
                                    answer when it was not launched by its restarting script)
    POST /sdapi/v1/server-kill      the process exits at once (A1111's `os._exit(0)`), after the answer is sent;
                                    the database is crash-safe and re-queues what was waiting

They exist only with `--api-server-stop` (A1111's flag): anyone who can reach the API could otherwise end it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from starlette.background import BackgroundTask

log = logging.getLogger(__name__)

RESTART_EXIT_CODE = 75
"""`sdwebui serve`'s exit code after `/server-restart` (EX_TEMPFAIL): `./webui.sh` starts the server again."""

RESTARTABLE_ENV = "SDWEBUI_RESTARTABLE"
"""Set to 1 by whatever starts the server again on `RESTART_EXIT_CODE` (`./webui.sh`; a systemd unit with
`RestartForceExitStatus=75` may set it too)."""


class ServerControl:
    """How the API ends the server it runs in: `sdwebui serve` (and the tests' live servers) attach the uvicorn
    server they run; a server that is not attached (an app built in code) cannot be stopped from the API."""

    def __init__(self, exit_process: Callable[[int], None] = os._exit):
        self._server = None
        self.exit_process = exit_process
        """Ends the process for `/server-kill` (A1111's `os._exit`; tests put a recorder here)."""
        self.restart_requested = False

    def attach(self, server) -> None:
        """`server`: the `uvicorn.Server` serving this app (it stops when `should_exit` is set)."""
        self._server = server

    @property
    def attached(self) -> bool:
        return self._server is not None

    @staticmethod
    def restartable() -> bool:
        return os.environ.get(RESTARTABLE_ENV) == "1"

    def stop(self, *, restart: bool = False) -> None:
        log.warning("the server is stopping: %s requested through the API", "a restart" if restart else "a stop")
        self.restart_requested = restart
        self._server.should_exit = True

    def kill(self) -> None:
        log.warning("the server is killed through the API")
        self.exit_process(0)

    def exit_code(self) -> int:
        """What `sdwebui serve` exits with once the server has stopped."""
        return RESTART_EXIT_CODE if self.restart_requested else 0


def build_router(control: ServerControl) -> APIRouter:
    router = APIRouter()

    def not_available() -> Response:
        return PlainTextResponse("this server was not started by `sdwebui serve`: it cannot be stopped from the "
                                 "API", status_code=501)

    @router.post("/server-stop")
    def server_stop():
        if not control.attached:
            return not_available()
        control.stop()
        return PlainTextResponse("Stopping.")

    @router.post("/server-restart")
    def server_restart():
        if not control.attached or not control.restartable():
            return Response(status_code=501)  # A1111's answer when nothing would start it again
        control.stop(restart=True)
        return PlainTextResponse("Restarting.")

    @router.post("/server-kill")
    def server_kill():
        return PlainTextResponse("Killing.", background=BackgroundTask(control.kill))

    return router


__all__ = ["RESTART_EXIT_CODE", "RESTARTABLE_ENV", "ServerControl", "build_router"]
