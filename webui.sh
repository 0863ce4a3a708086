#!/usr/bin/env bash
# sdwebui launcher: creates .venv in the checkout on first run, installs the package, then
#   ./webui.sh            start the app: web UI and API on http://127.0.0.1:7860 (--nowebui: API only)
#   ./webui.sh test [..]  run the whole test suite (extra args go to pytest)
#   ./webui.sh ARGS...    run the sdwebui CLI, e.g. ./webui.sh txt2img "a cat"
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)
venv="$root/.venv"
python_bin=${PYTHON:-python3}
# A stamp of the dependency list: re-install only when pyproject.toml changed.
stamp="$venv/.sdwebui-installed"

setup() {
    if [ ! -x "$venv/bin/python" ]; then
        echo "sdwebui: creating $venv" >&2
        "$python_bin" -m venv "$venv"
    fi
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "sdwebui: installing dependencies into $venv (first run takes a few minutes; log: $venv/install.log)" >&2
        local log="$venv/install.log"
        : >"$log"
        # A newer pip is nice to have, not required.
        "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip >>"$log" 2>&1 || true
        # torch first and pinned: the local wheel cache holds exactly this build.
        if ! { "$venv/bin/python" -m pip install --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 &&
               "$venv/bin/python" -m pip install --disable-pip-version-check -e ".[test]"; } >>"$log" 2>&1; then
            echo "sdwebui: installation failed; the end of $log:" >&2
            tail -n 30 "$log" >&2
            exit 1
        fi
        echo "$want" >"$stamp"
    fi
}

# The web UI tests drive Debian's chromium (tests/test_ui_browser.py); install it when missing and possible,
# otherwise those tests skip and say why.
browser_setup() {
    if [ -x /usr/bin/chromium ] || ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
        return 0
    fi
    local log="$venv/chromium-install.log"
    echo "sdwebui: installing chromium for the browser tests (log: $log)" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium ||
           { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; } >"$log" 2>&1; then
        echo "sdwebui: could not install chromium (see $log); the browser tests will be skipped" >&2
    fi
}

# The server (`serve`, also the default with no command or only flags) is started again when it exits with 75:
# POST /sdapi/v1/server-restart (with --api-server-stop) asks for that, as A1111's webui.sh restarts on its
# tmp/restart file. It runs as a child so that the loop outlives it; SIGTERM / SIGHUP sent to this script are
# passed on to it (Ctrl+C reaches it directly: it is in the terminal's process group).
is_serve() { [ $# -eq 0 ] || [ "$1" = serve ] || [ "${1#-}" != "$1" ]; }

serve_loop() {
    export SDWEBUI_RESTARTABLE=1
    local child code
    while true; do
        "$venv/bin/sdwebui" "$@" &
        child=$!
        trap 'kill -TERM "$child" 2>/dev/null || true' TERM HUP
        trap ':' INT
        code=0
        wait "$child" || code=$?
        while kill -0 "$child" 2>/dev/null; do  # `wait` returns early when a trapped signal arrives
            code=0
            wait "$child" || code=$?
        done
        trap - TERM HUP INT
        if [ "$code" != 75 ]; then
            exit "$code"
        fi
        echo "sdwebui: restarting (POST /sdapi/v1/server-restart)" >&2
    done
}

setup
if [ "${1:-}" = "test" ]; then
    shift
    browser_setup
    exec "$venv/bin/python" -m pytest "$@"
fi
if is_serve "$@"; then
    serve_loop "$@"
fi
exec "$venv/bin/sdwebui" "$@"
