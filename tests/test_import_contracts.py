"""The layers of docs/DESIGN.md, checked on the import graph of the package (every `import` statement, at module
level or inside a function, read with `ast`):

    base (sdwebui, config, filestat) <- core <- models <- pipelines <- scripts, demo <- server <- ui <- app <- cli
                                         \\<- prompts <-/

- a module imports only from its own layer and the layers it sits on;
- the module-level imports have no cycle;
- an import of an sdwebui module inside a function is there for start-up time (the module pulls in a heavy
  library: torch, diffusers, gradio, ...), never to dodge a cycle: moving it to module level must not close one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sdwebui"

LAYERS: dict[str, set[str]] = {
    "base": {"base"},
    "core": {"base", "core"},
    "models": {"base", "core", "models"},
    "prompts": {"base", "core", "prompts"},
    "pipelines": {"base", "core", "models", "prompts", "pipelines"},
    "scripts": {"base", "core", "models", "prompts", "pipelines", "scripts"},
    "demo": {"base", "core", "models", "prompts", "pipelines", "demo"},
    "server": {"base", "core", "models", "prompts", "pipelines", "server"},
    "ui": {"base", "core", "models", "prompts", "pipelines", "server", "ui"},
    "app": {"base", "core", "models", "prompts", "pipelines", "scripts", "server", "ui", "app"},
    "cli": {"base", "core", "models", "prompts", "pipelines", "scripts", "server", "app", "cli"},
}
"""Layer -> the layers its modules may import. The server never imports a concrete script (the registry is built
in `app.py`), and nothing imports the UI but the composition root."""

HEAVY = ("torch", "diffusers", "transformers", "gradio", "spandrel", "safetensors", "torchsde", "cv2", "ray",
         "onnxruntime", "peft", "uvicorn", "scipy", "tqdm")
"""Libraries that take seconds to import: a function-local import of one keeps the server's start-up fast."""


TOP_LEVEL_MODULES = {"config": "base", "filestat": "base", "__main__": "base", "app": "app", "cli": "cli",
                     "cli_jobs": "cli", "cli_models": "cli"}
"""The layer of each module directly in `sdwebui/` (the packages below it are layers of their own)."""


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts == ["sdwebui"]:
        return "base"
    if parts[1] in TOP_LEVEL_MODULES:
        return TOP_LEVEL_MODULES[parts[1]]
    assert parts[1] in LAYERS, f"{module}: which layer is it in? (add it to LAYERS or TOP_LEVEL_MODULES)"
    return parts[1]


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _resolve(module: str, node: ast.ImportFrom | ast.Import, alias: ast.alias) -> str:
    if isinstance(node, ast.Import):
        return alias.name
    base = node.module or ""
    if node.level:
        package = module.split(".")
        if not modules()[module].name == "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    candidate = f"{base}.{alias.name}"
    return candidate if candidate in modules() else base


@lru_cache(maxsize=None)
def imports(module: str) -> tuple[tuple[str, bool, int], ...]:
    """(imported module, at module level?, line) for every import in `module`, except `if TYPE_CHECKING:` ones."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for alias in child.names:
                    found.append((_resolve(module, child, alias), not in_function, child.lineno))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return tuple(found)


def internal(imported: str) -> str | None:
    """The sdwebui module an import names (a package's `__init__` for `from sdwebui.x import y`), else None."""
    if not imported.startswith("sdwebui"):
        return None
    while imported not in modules() and "." in imported:
        imported = imported.rsplit(".", 1)[0]
    return imported if imported in modules() else None


@lru_cache(maxsize=None)
def module_level_graph() -> dict[str, set[str]]:
    graph = {}
    for module in modules():
        targets = {internal(name) for name, top, _ in imports(module) if top}
        # `import sdwebui.a.b` runs the packages on the way (sdwebui.a's __init__) too, unless they contain the
        # importing module (then they are being initialised already: a package importing its own parts).
        for target in list(targets):
            while target and "." in target:
                target = target.rsplit(".", 1)[0]
                if target in modules() and not module.startswith(target + "."):
                    targets.add(target)
        graph[module] = {target for target in targets
                         if target and target != module and not module.startswith(target + ".")}
    return graph


@lru_cache(maxsize=None)
def full_graph() -> dict[str, set[str]]:
    """Every sdwebui import, at module level or in a function."""
    graph = {module: set(targets) for module, targets in module_level_graph().items()}
    for module in modules():
        graph[module] |= {t for name, _, _ in imports(module) if (t := internal(name)) and t != module}
    return graph


def reaches(start: str, goal: str, graph: dict[str, set[str]]) -> bool:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(graph.get(node, ()))
    return False


@lru_cache(maxsize=None)
def is_heavy(module: str) -> bool:
    """An sdwebui module whose import (at module level, transitively) loads a heavy library."""
    seen, stack = set(), [module]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for name, top, _ in imports(node):
            if not top:
                continue
            if name.split(".")[0] in HEAVY:
                return True
            target = internal(name)
            if target:
                stack.append(target)
    return False


def test_every_import_respects_the_layers():
    wrong = []
    for module in sorted(modules()):
        allowed = LAYERS[layer_of(module)]
        for name, _, line in imports(module):
            target = internal(name)
            if target and layer_of(target) not in allowed:
                wrong.append(f"{module}:{line} imports {target} ({layer_of(module)} -> {layer_of(target)})")
    assert not wrong, "\n".join(wrong)


def test_module_level_imports_have_no_cycle():
    graph = module_level_graph()
    state: dict[str, int] = {}
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                walk(target, [*path, target])
        state[node] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not cycles, "\n".join(cycles)


def test_function_local_imports_are_for_start_up_time_not_cycles():
    wrong = []
    for module in sorted(modules()):
        for name, top, line in imports(module):
            if top:
                continue
            target = internal(name)
            if target is None:
                continue  # another library: no cycle to dodge; keeping a rarely used one lazy is fine
            # Were this import at module level, would `target` (with every import of its own, which could move up
            # just the same) lead back here?
            if reaches(target, module, full_graph()):
                wrong.append(f"{module}:{line} imports {target} inside a function to dodge a cycle")
            elif not is_heavy(target):
                wrong.append(f"{module}:{line} imports {target} inside a function, though it is light")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["sdwebui.app", "sdwebui.server.service", "sdwebui.server.a1111"])
def test_the_server_starts_without_torch(module):
    """`build_app` must not import torch, diffusers or gradio: the server answers within a second or two of
    starting, and the worker imports the pipeline in the background (the UI imports gradio when it is served)."""
    assert not is_heavy(module), f"{module} imports a heavy library at module level"


def test_ray_is_imported_only_by_the_cluster_module_and_that_only_with_the_ray_flag():
    """Ray is an optional extra (`pip install .[ray]`): `server.cluster` is the one module that imports it, and
    only `app.build_services` imports that module, inside the function, when `--ray` is given."""
    importers = {module for module in modules() for name, _, _ in imports(module) if name.split(".")[0] == "ray"}
    assert importers == {"sdwebui.server.cluster"}
    users = [(module, top) for module in modules() for name, top, _ in imports(module)
             if internal(name) == "sdwebui.server.cluster"]
    assert users == [("sdwebui.app", False)]


def test_a_server_without_the_ray_flag_never_imports_ray(tmp_path):
    """The app built, started and stopped without `--ray`: Ray is not imported (even where it is installed)."""
    code = (
        "import sys\n"
        "from sdwebui.app import build_services\n"
        "import sdwebui.cli\n"
        "from sdwebui.config import Paths\n"
        "from sdwebui.server.config import ServerConfig\n"
        f"services = build_services(ServerConfig(paths=Paths.from_flags(data_dir={str(tmp_path)!r}), preload=False))\n"
        "services.start(); services.close()\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "print('no ray')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no ray" in done.stdout, done.stderr[-2000:]
