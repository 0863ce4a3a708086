"""Server configuration: where it listens, who may use it, and the limits of a request.

Security defaults (reliability-security research, sections 1.2 and 6B): bind to 127.0.0.1; listening on any
other address needs credentials (`--api-auth user:pass` or a credentials file), unless `--insecure` says the
network is trusted; credentials are never printed or returned (`/cmd-flags` redacts them).
"""

from __future__ import annotations

import importlib.util
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from sdwebui.config import Paths

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
"""A1111's port."""
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
"""Enough for a few base64 images (img2img, PNG info); larger bodies get 413 before they are read."""


class ConfigError(ValueError):
    """A configuration that must not start (one line for the user)."""


@dataclass(frozen=True)
class Credentials:
    """user -> password pairs. `repr` never shows the passwords."""

    pairs: tuple[tuple[str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def __repr__(self) -> str:
        return f"Credentials(users={[user for user, _ in self.pairs]!r})"

    @classmethod
    def parse(cls, text: str | None, *, source: str = "--api-auth") -> "Credentials":
        """A1111's format: `user:password[,user2:password2]` (also one pair per line in a credentials file)."""
        pairs = []
        for item in (text or "").replace("\n", ",").split(","):
            item = item.strip()
            if not item:
                continue
            user, sep, password = item.partition(":")
            if not sep or not user or not password:
                raise ConfigError(f"{source}: expected user:password, got an entry without both parts")
            pairs.append((user, password))
        return cls(tuple(pairs))

    @classmethod
    def from_file(cls, path: str | Path) -> "Credentials":
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read the credentials file {path}: {error.strerror or error}") from None
        return cls.parse(text, source=str(path))

    def __add__(self, other: "Credentials") -> "Credentials":
        return Credentials(self.pairs + other.pairs)


@dataclass(frozen=True)
class ServerConfig:
    paths: Paths
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    credentials: Credentials = field(default_factory=Credentials)
    insecure: bool = False
    """Allow listening beyond loopback without credentials (a trusted network)."""
    cors_allow_origins: tuple[str, ...] = ()
    """Origins a browser may call the API from. `*` (any site) goes without credentials, as the CORS spec
    requires: a server with credentials refuses it (`check`)."""
    allowed_hosts: tuple[str, ...] = ()
    """Extra Host header values accepted without auth (DNS-rebinding guard); loopback names always are."""
    device: str = "auto"
    precision: str = "auto"
    vae_precision: str = "auto"
    prediction_type: str | None = None
    memory_mode: str = "auto"
    """Where the model's parts live between uses: auto (chosen at load from the free VRAM), none, medvram or
    lowvram (`--medvram`, `--lowvram`, `--always-high-vram`; `models.memory`)."""
    medvram_sdxl: bool = False
    """`--medvram-sdxl`: medvram for SDXL models only."""
    vram_budget_gb: float | None = None
    """`--vram-budget GB`: plan memory modes and tiled VAE as if the device had at most this much free."""
    channels_last: bool = False
    """A1111's `--opt-channelslast`: UNet and VAE weights stored channels-last (`models.fast_paths`)."""
    compile_unet: bool = False
    """`--compile`: torch.compile the UNet when it is loaded (static shapes; `models.fast_paths`)."""
    compile_mode: str = "default"
    """`--compile-mode`: torch.compile's mode ("reduce-overhead" replays CUDA graphs; `fast_paths.COMPILE_MODES`)."""
    api_server_stop: bool = False
    """A1111's `--api-server-stop`: serve `/sdapi/v1/server-stop`, `server-restart` and `server-kill`
    (`server.lifecycle`)."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_failed_logins: int = 10
    """Wrong credentials one client address may send per minute before it must wait (429); 0 = no limit."""
    preload: bool = True
    """Import the generation pipeline in the worker as soon as the server is up, so the first job is fast."""
    load_model_at_start: bool = False
    """Load the checkpoint the settings name (else the default one) in the worker as soon as the server is up,
    as A1111 does, so the first job does not wait for it. `sdwebui serve` turns it on unless
    `--skip-load-model-at-start` (A1111's flag) is given; False here so that servers built in code (tests,
    embedding) load nothing they are not asked for."""
    threads: int | None = None
    """CPU threads torch uses for generation (`--threads`); None = torch's default (one per core)."""
    ui: bool = True
    """Serve the web UI at `/` (Gradio, mounted on the same app); False = API only (`--nowebui`)."""
    in_memory_store: bool = False
    """Keep jobs, history and settings in memory (the command line: its jobs are its own, and a server using
    the same data folder keeps its queue and history to itself)."""
    store_lock_wait: float = 30.0
    """Seconds to wait at start-up for another process's lock on the database before giving up (with a message
    naming the holder); also how long a write waits for the lock while running."""
    trust_paths: bool = False
    """Let requests name checkpoints and VAEs anywhere on disk (the command line's `--model PATH`); a server
    only chooses files its model folders list."""
    forwarded_allow_ips: tuple[str, ...] = ()
    """Proxies whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (`--forwarded-allow-ips`). Empty: none,
    so the client address (failed-login lockout, logs) is the connection's own and a client cannot choose it."""
    ray_address: str | None = None
    """`--ray ADDRESS`: run jobs on the worker actors of a Ray cluster (`auto`, `ray://host:port`, `host:port`, or
    `local` to start one in this process; `server.cluster`); None: the one worker thread of this process."""
    ray_workers: int | None = None
    """`--ray-workers N`; None: one per GPU of the cluster (one per node on a cluster without GPUs)."""
    ray_gpus_per_worker: float | None = None
    """`--ray-gpus-per-worker G`; None: 1 on a cluster with GPUs, 0 without."""
    settings: dict = field(default_factory=dict, hash=False, compare=False)
    """Operator settings from the command line (`--api-max-steps` ...), written to the settings at start-up."""
    flags: dict = field(default_factory=dict, hash=False, compare=False)
    """The command line as parsed (shown by /sdapi/v1/cmd-flags, secrets redacted)."""

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)

    def check(self) -> None:
        """Refuse configurations that would expose an unauthenticated server."""
        if not self.loopback_only and not self.credentials and not self.insecure:
            raise ConfigError(
                f"refusing to listen on {self.host} without credentials: add --api-auth user:password "
                "(or --api-auth-file FILE), or --insecure on a trusted network"
            )
        if not (0 <= self.port <= 65535):
            raise ConfigError(f"--port must be between 0 and 65535, got {self.port}")
        self.check_ray()
        if "*" in self.cors_allow_origins and self.credentials:
            raise ConfigError(
                "--cors-allow-origins '*' cannot be combined with credentials: browsers never send a password to "
                "'*' (the CORS rules), so every call would fail; list the origins instead (https://a.example,...)"
            )

    def check_ray(self) -> None:
        """`--ray` and its flags: an address Ray takes, counts that make sense, and Ray installed (looked up, not
        imported: that takes seconds and only `--ray` needs it)."""
        if self.ray_address is None:
            if self.ray_workers is not None or self.ray_gpus_per_worker is not None:
                raise ConfigError("--ray-workers and --ray-gpus-per-worker need --ray ADDRESS (or --ray local)")
            return
        address = self.ray_address.strip()
        if address not in ("local", "auto") and not address.startswith("ray://") and ":" not in address:
            raise ConfigError(f"--ray: expected auto, local, ray://HOST:PORT or HOST:PORT, got {address!r}")
        if self.ray_workers is not None and self.ray_workers < 1:
            raise ConfigError(f"--ray-workers must be at least 1, got {self.ray_workers}")
        if self.ray_gpus_per_worker is not None and self.ray_gpus_per_worker < 0:
            raise ConfigError(f"--ray-gpus-per-worker must not be negative, got {self.ray_gpus_per_worker}")
        if importlib.util.find_spec("ray") is None:
            raise ConfigError("--ray needs Ray, an optional extra: pip install 'sdwebui[ray]'")

    @property
    def cors_credentials(self) -> bool:
        """Whether CORS answers allow credentials: never for `*` (the spec forbids it, and echoing any origin
        with credentials would let every site read the API in the user's name)."""
        return "*" not in self.cors_allow_origins

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


def memory_fields(args) -> dict:
    """The memory-mode fields of `ServerConfig` from the device flags (`cli.add_device_flags`). As in A1111,
    `--lowvram` wins over `--medvram`."""
    if getattr(args, "lowvram", False):
        mode = "lowvram"
    elif getattr(args, "medvram", False):
        mode = "medvram"
    elif getattr(args, "always_high_vram", False):
        mode = "none"
    else:
        mode = "auto"
    return {"memory_mode": mode, "medvram_sdxl": bool(getattr(args, "medvram_sdxl", False)),
            "vram_budget_gb": getattr(args, "vram_budget", None),
            "channels_last": bool(getattr(args, "opt_channelslast", False)),
            "compile_unet": bool(getattr(args, "compile", False) or getattr(args, "compile_mode", None)),
            "compile_mode": getattr(args, "compile_mode", None) or "default"}


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["ServerConfig", "Credentials", "ConfigError", "is_loopback", "memory_fields", "DEFAULT_HOST", "DEFAULT_PORT"]
