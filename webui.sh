#!/usr/bin/env bash
# sdwebui launcher: creates .venv in the checkout on first run, installs the package, then
#   ./webui.sh            start the app (UI + API once they exist; the CLI help until then)
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
        echo "sdwebui: installing dependencies (first run takes a few minutes)" >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >&2 || true
        # torch first and pinned: the local wheel cache holds exactly this build.
        "$venv/bin/python" -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" >&2
        echo "$want" >"$stamp"
    fi
}

setup
if [ "${1:-}" = "test" ]; then
    shift
    exec "$venv/bin/python" -m pytest "$@"
fi
exec "$venv/bin/sdwebui" "$@"
