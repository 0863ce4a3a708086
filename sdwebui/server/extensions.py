"""Extensions: folders in `<data-dir>/extensions/NAME/`, as A1111's (`modules/extensions.py`, `modules/scripts.py`).

- `scripts/*.py`: each module's `pipelines.scripts.Script` subclasses (with a title) are made and registered like
  the built-in scripts, so they show in `/sdapi/v1/scripts`, take `script_name` / `alwayson_scripts`, and get
  their controls in the UI. (Scripts written for A1111's `modules.scripts` need a port to our protocol: there is
  no `modules` package here.) A module that fails to import, or a script that cannot be made or registered
  (a title already taken), is reported with the extension (`errors`; the Extensions tab and
  `/api/v1/extensions` show it) and skipped: the app still starts.
- `javascript/*.js` (sorted) and `style.css` are added to the page, in the extensions' (sorted) order, as A1111's
  `ui_gradio_extensions.py` adds them; they are served from inside the extension's folder only.
- Turned off by `--disable-all-extensions` / `--disable-extra-extensions` (we ship no built-in extensions, so
  both mean every folder here) or by the `disabled_extensions` list (A1111's setting) given to `load`.
- `install.py` is run once with the app's Python (A1111 runs it at every start; we run it again only when the
  file changes: its SHA-256 is kept in `.sdwebui-installed` beside it), in the extension's folder, before its
  scripts are imported; a failure is reported with the extension (its scripts are still tried). It is no more
  trusted than the scripts themselves, which run in the app anyway.

Installing (`install`: a git URL cloned into the folder, or a local folder or zip copied) runs someone else's
code at the next start, so the route refuses it when the server listens beyond loopback unless
`--enable-insecure-extension-access` is given (A1111's rule); with credentials configured the route needs them,
as every route does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import shutil
import subprocess
import sys
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from sdwebui.pipelines.scripts import Script, ScriptRegistry
from sdwebui.server.errors import FieldError

log = logging.getLogger("sdwebui.extensions")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""A folder name an install may create (no path separators, no leading dot)."""
GIT_TIMEOUT_S = 300


class ExtensionError(ValueError):
    """An install that cannot be done (bad name, already there, offline, not an extension)."""


@dataclass
class Extension:
    name: str
    path: Path
    enabled: bool = True
    scripts: list[Script] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    javascript: list[Path] = field(default_factory=list)
    css: Path | None = None

    def git(self) -> dict[str, str | None]:
        """remote, branch, commit hash of a git checkout, read from `.git` (no git process)."""
        git_dir = self.path / ".git"
        info: dict[str, str | None] = {"remote": None, "branch": None, "commit_hash": None}
        try:
            head = (git_dir / "HEAD").read_text().strip()
            if head.startswith("ref: "):
                ref = head[5:]
                info["branch"] = ref.rsplit("/", 1)[-1]
                ref_file = git_dir / ref
                if ref_file.is_file():
                    info["commit_hash"] = ref_file.read_text().strip()
                else:
                    packed = (git_dir / "packed-refs").read_text() if (git_dir / "packed-refs").is_file() else ""
                    info["commit_hash"] = next((line.split()[0] for line in packed.splitlines()
                                                if line.endswith(" " + ref)), None)
            else:
                info["commit_hash"] = head
            config = (git_dir / "config").read_text()
            match = re.search(r'\[remote "origin"\][^\[]*?url\s*=\s*(\S+)', config)
            info["remote"] = match.group(1) if match else None
        except OSError:
            pass
        return info

    def check_update(self, timeout: float = 30.0) -> str:
        """A1111's "Check for updates": "latest", "behind" (the remote's HEAD is another commit), "not a git
        checkout", or why it could not tell (offline: git's message). Asks the remote with `git ls-remote`."""
        git = self.git()
        if not git["remote"] or not git["commit_hash"]:
            return "not a git checkout"
        ref = f"refs/heads/{git['branch']}" if git["branch"] else "HEAD"
        try:
            done = subprocess.run(["git", "ls-remote", "--", git["remote"], ref], capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, cwd=self.path)
        except FileNotFoundError:
            return "git is not installed"
        except subprocess.TimeoutExpired:
            return f"no answer from {git['remote']} in {timeout:g} s (offline?)"
        if done.returncode != 0:
            lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
            return f"could not ask {git['remote']} (offline?): {lines[-1] if lines else done.returncode}"
        remote = (done.stdout.split() or [""])[0]
        if not remote:
            return f"{ref} not found at {git['remote']}"
        return "latest" if remote == git["commit_hash"] else "behind"

    def a1111(self) -> dict:
        """A1111's `ExtensionItem` (`/sdapi/v1/extensions`)."""
        git = self.git()
        commit = git["commit_hash"]
        return {"name": self.name, "remote": git["remote"] or "", "branch": git["branch"] or "",
                "commit_hash": commit or "", "version": commit[:8] if commit else "", "commit_date": 0,
                "enabled": self.enabled}

    def to_json(self) -> dict:
        return {**self.a1111(), "path": str(self.path), "scripts": [script.title for script in self.scripts],
                "javascript": [path.name for path in self.javascript], "css": self.css is not None,
                "errors": list(self.errors)}


@dataclass
class Extensions:
    folder: Path
    items: list[Extension] = field(default_factory=list)
    disabled_all: bool = False

    def enabled(self) -> list[Extension]:
        return [item for item in self.items if item.enabled]

    def find(self, name: str) -> Extension | None:
        return next((item for item in self.items if item.name == name), None)

    def head_html(self) -> str:
        """The `<script>` and `<link>` tags of the enabled extensions' files (A1111's order: each extension's
        javascript files, sorted, then the style sheets)."""
        tags = []
        for item in self.enabled():
            for path in item.javascript:
                tags.append(f'<script type="text/javascript" src="{asset_url(item, path)}"></script>')
        for item in self.enabled():
            if item.css is not None:
                tags.append(f'<link rel="stylesheet" property="stylesheet" href="{asset_url(item, item.css)}">')
        return "\n".join(tags)

    def asset(self, name: str, relative: str) -> Path | None:
        """An enabled extension's JS or CSS file named by the page (nothing else is served)."""
        item = self.find(name)
        if item is None or not item.enabled:
            return None
        wanted = [*item.javascript, *([item.css] if item.css is not None else [])]
        for path in wanted:
            if path.relative_to(item.path).as_posix() == relative:
                return path
        return None


def asset_url(item: Extension, path: Path) -> str:
    stamp = int(path.stat().st_mtime) if path.is_file() else 0
    return f"/extensions-assets/{item.name}/{path.relative_to(item.path).as_posix()}?v={stamp}"


def discover(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")),
                  key=lambda path: path.name.lower())


def load(folder: Path, disabled: set[str] | None = None, disable_all: bool = False) -> Extensions:
    """Every extension folder, each with its scripts made (an import error is recorded, not raised)."""
    found = Extensions(folder, disabled_all=disable_all)
    for path in discover(folder):
        item = Extension(path.name, path, enabled=not disable_all and path.name not in (disabled or set()))
        found.items.append(item)
        if not item.enabled:
            continue
        item.javascript = sorted((p for p in (path / "javascript").glob("*.js") if p.is_file()),
                                 key=lambda p: p.name.lower())
        item.css = path / "style.css" if (path / "style.css").is_file() else None
        run_installer(item)
        for script_file in sorted((path / "scripts").glob("*.py"), key=lambda p: p.name.lower()):
            item.scripts.extend(_load_scripts(item, script_file))
    return found


INSTALL_MARK = ".sdwebui-installed"
INSTALL_TIMEOUT_S = 600


def run_installer(item: Extension) -> None:
    """Run the extension's `install.py` when it is new or changed since it last succeeded."""
    installer = item.path / "install.py"
    if not installer.is_file():
        return
    digest = hashlib.sha256(installer.read_bytes()).hexdigest()
    mark = item.path / INSTALL_MARK
    if mark.is_file() and mark.read_text().strip() == digest:
        return
    log.info("extension %s: running install.py", item.name)
    try:
        done = subprocess.run([sys.executable, str(installer)], cwd=item.path, capture_output=True, text=True,
                              timeout=INSTALL_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        item.errors.append(f"install.py: still running after {INSTALL_TIMEOUT_S} s; stopped")
        return
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        item.errors.append(f"install.py: failed (exit {done.returncode}): {lines[-1] if lines else ''}".rstrip(": "))
        log.warning("extension %s: %s", item.name, item.errors[-1])
        return
    mark.write_text(digest + "\n")


def _load_scripts(item: Extension, script_file: Path) -> list[Script]:
    module_name = f"sdwebui_extensions.{re.sub(r'[^A-Za-z0-9_]', '_', item.name)}.{script_file.stem}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, script_file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
        spec.loader.exec_module(module)
    except BaseException as error:  # noqa: BLE001 - an extension's import may raise anything, SystemExit too
        sys.modules.pop(module_name, None)
        _report(item, f"scripts/{script_file.name}: {type(error).__name__}: {error}", error)
        return []
    made = []
    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, Script) and value is not Script and \
                value.__module__ == module_name and value.title:
            try:
                made.append(value())
            except Exception as error:  # noqa: BLE001
                _report(item, f"scripts/{script_file.name}: {value.__name__}(): {type(error).__name__}: {error}",
                        error)
    return made


def _report(item: Extension, message: str, error: BaseException) -> None:
    item.errors.append(message)
    log.warning("extension %s: %s", item.name, message)
    log.debug("%s", "".join(traceback.format_exception(error)))


def register(extensions: Extensions, registry: ScriptRegistry) -> None:
    """Add the enabled extensions' scripts to `registry`; one that cannot be added is reported and skipped."""
    for item in extensions.enabled():
        kept = []
        for script in item.scripts:
            try:
                registry.register(script)
            except ValueError as error:
                item.errors.append(f"{script.title}: not added: {error}")
                log.warning("extension %s: %s", item.name, item.errors[-1])
            else:
                kept.append(script)
        item.scripts = kept


# ---- installing -------------------------------------------------------------------------------------------------


def install(folder: Path, *, url: str | None = None, source: Path | None = None, name: str | None = None) -> Path:
    """Put an extension into `folder`: `url` cloned with git, or `source` (a folder or a .zip) copied. Returns
    its folder; ExtensionError with one line when it cannot. It is loaded at the next start."""
    if bool(url) == bool(source):
        raise ExtensionError("give either a git URL or a local folder or zip")
    guessed = (url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") if url
               else Path(source).name.removesuffix(".zip"))
    name = name or guessed
    if not NAME.match(name):
        raise ExtensionError(f"{name!r} is not a usable folder name (letters, digits, '.', '_', '-')")
    target = folder / name
    if target.exists():
        raise ExtensionError(f"an extension named {name} is already installed ({target})")
    folder.mkdir(parents=True, exist_ok=True)
    if url:
        if not re.match(r"^(https?|git|ssh)://|^git@", url):
            raise ExtensionError("the URL must be a git URL (https://, git://, ssh:// or git@host:path)")
        try:
            done = subprocess.run(["git", "clone", "--depth", "1", "--", url, str(target)], capture_output=True,
                                  text=True, timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ExtensionError("git is not installed on this machine") from None
        except subprocess.TimeoutExpired:
            shutil.rmtree(target, ignore_errors=True)
            raise ExtensionError(f"git clone took more than {GIT_TIMEOUT_S} s (offline?)") from None
        if done.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            lines = [line for line in (done.stderr or "").splitlines() if line.strip()]
            raise ExtensionError(f"git clone failed (offline?): {lines[-1] if lines else done.returncode}")
        return target
    source = Path(source)
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True)
        return target
    if source.is_file() and zipfile.is_zipfile(source):
        _extract(source, target)
        return target
    raise ExtensionError(f"{source} is neither a folder nor a zip file")


def _extract(archive: Path, target: Path) -> None:
    """A zip's files into `target` (one top folder in the zip is taken as the extension's own); a member that
    would land outside `target` refuses the whole zip."""
    with zipfile.ZipFile(archive) as zipped:
        names = [info.filename for info in zipped.infolist() if info.filename and not info.filename.endswith("/")]
        tops = {name.split("/", 1)[0] for name in names}
        strip = len(tops) == 1 and all("/" in name for name in names)
        base = target.resolve()
        planned = []
        for info in zipped.infolist():
            if info.filename.endswith("/"):
                continue
            relative = info.filename.split("/", 1)[1] if strip else info.filename
            destination = (base / relative).resolve()
            if not destination.is_relative_to(base) or destination == base:
                raise ExtensionError(f"the zip has a file outside its folder: {info.filename}")
            planned.append((info, destination))
        for info, destination in planned:
            destination.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(info) as src, open(destination, "wb") as out:
                shutil.copyfileobj(src, out)


def install_allowed(config) -> tuple[bool, str]:
    """A1111's rule: installing is refused when listening beyond loopback without
    `--enable-insecure-extension-access`."""
    if config.loopback_only or (config.flags or {}).get("enable_insecure_extension_access"):
        return True, ""
    return False, ("installing extensions is turned off when the server listens beyond this machine; "
                   "start it with --enable-insecure-extension-access to allow it")




# ---- routes -----------------------------------------------------------------------------------------------------


class InstallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, max_length=2000, description="a git URL to clone")
    path: str | None = Field(None, max_length=4096, description="a folder or .zip on the server's disk")
    name: str | None = Field(None, max_length=100, description="the folder name (default: from the URL)")


def build_router(services):
    """`/extensions-assets/NAME/FILE` (the page's JS and CSS of enabled extensions), `GET /api/v1/extensions`,
    `POST /api/v1/extensions/install`."""
    router = APIRouter()

    def loaded() -> Extensions:
        return getattr(services, "extensions", None) or Extensions(services.paths.data_dir / "extensions")

    @router.get("/extensions-assets/{name}/{relative:path}", include_in_schema=False)
    def asset(name: str, relative: str):
        path = loaded().asset(name, relative)
        if path is None:
            raise HTTPException(404, "Not Found")
        media = "text/javascript" if path.suffix == ".js" else "text/css"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

    @router.get("/api/v1/extensions", tags=["Extensions"])
    def list_extensions():
        """Installed extensions: git version, what each added (scripts, JS, CSS) and why any part was skipped."""
        return [item.to_json() for item in loaded().items]

    @router.post("/api/v1/extensions/install", tags=["Extensions"])
    def install_extension(body: InstallRequest):
        """Install into `<data-dir>/extensions` (loaded at the next start). Refused (403) when the server listens
        beyond this machine unless it was started with `--enable-insecure-extension-access`."""
        allowed, reason = install_allowed(services.config)
        if not allowed:
            raise HTTPException(403, reason)
        try:
            target = install(loaded().folder, url=body.url, source=Path(body.path) if body.path else None,
                             name=body.name)
        except ExtensionError as error:
            field_name = "name" if "folder name" in str(error) or "already installed" in str(error) else \
                ("url" if body.url else "path")
            raise FieldError((field_name,), str(error)) from None
        return {"name": target.name, "path": str(target), "note": "restart the server to load it"}

    return router


__all__ = ["Extension", "Extensions", "ExtensionError", "load", "register", "install", "install_allowed", "build_router",
           "discover", "asset_url"]
