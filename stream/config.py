"""Server configuration: a TOML file plus command-line flags, loaded once at the edge.

Example ``server.toml`` (every key optional; these are the defaults)::

    [server]
    address = "127.0.0.1"      # other addresses need [tls] or insecure = true
    port = 50051
    insecure = false
    max_streams = 64
    max_stream_s = 3600        # OUT_OF_RANGE past this much audio in one stream
    max_message_bytes = 4194304
    max_chunk_ms = 10000
    grace_s = 5.0              # graceful shutdown

    [model]
    default = "digits"         # embedded name or manifest path
    extra = []                 # more manifests to serve
    backend = "torch"          # or "onnx"
    device = "auto"            # cpu, cuda, cuda:N
    torch_threads = 1          # torch intra-op threads per process; 0 = torch's default (all cores).
                               # 1 leaves the cores to the batch workers and codec threads: on
                               # 2 cores it took 16 streams from p99 538 ms to 219 ms

    [batching]
    max_batch = 64
    max_wait_ms = 10.0
    workers = 2
    queue_size = 1024

    [metrics]
    port = 0                   # Prometheus text format on http://address:port/metrics; 0 = off
    address = "127.0.0.1"

    [tls]
    cert = "server.crt"
    key = "server.key"
    client_ca = "ca.crt"       # set for mutual TLS: clients must present a cert signed by it

    [auth]
    token = "..."              # or token_file = "path"; clients send "authorization: Bearer ..."
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything ``avsentry serve`` needs; see the module docstring for the TOML layout."""

    address: str = "127.0.0.1"
    port: int = 50051
    insecure: bool = False
    max_streams: int = 64
    max_stream_s: float = 3600.0
    max_message_bytes: int = 4 * 1024 * 1024
    max_chunk_ms: int = 10_000
    grace_s: float = 5.0
    model: str = "digits"
    extra_models: tuple[str, ...] = ()
    backend: str = "torch"
    device: str = "auto"
    torch_threads: int = 1
    max_batch: int = 64
    max_wait_ms: float = 10.0
    workers: int = 2
    queue_size: int = 1024
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535 or not 0 <= self.metrics_port <= 65535:
            raise ValueError("ports must be in [0, 65535]")
        for name in (
            "max_streams",
            "max_message_bytes",
            "max_chunk_ms",
            "max_batch",
            "workers",
            "queue_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_stream_s <= 0 or self.grace_s < 0 or self.max_wait_ms < 0:
            raise ValueError("max_stream_s must be > 0, grace_s and max_wait_ms >= 0")
        if self.backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be torch or onnx, got {self.backend!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("mutual TLS (client_ca) needs a server certificate and key too")
        for p in (self.tls_cert, self.tls_key, self.tls_client_ca):
            if p is not None and not Path(p).is_file():
                raise ValueError(f"TLS file not found: {p}")
        if not self.tls and not self.insecure and self.address not in LOOPBACK:
            raise ValueError(
                f"refusing to listen on {self.address} without TLS: configure [tls] or pass --insecure"
            )
        if self.token is not None and not self.token:
            raise ValueError("auth token must not be empty")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def target(self) -> str:
        host = (
            f"[{self.address}]" if ":" in self.address and not self.address.startswith("[") else self.address
        )
        return f"{host}:{self.port}"


_TOML_KEYS = {
    "server": {
        "address": "address",
        "port": "port",
        "insecure": "insecure",
        "max_streams": "max_streams",
        "max_stream_s": "max_stream_s",
        "max_message_bytes": "max_message_bytes",
        "max_chunk_ms": "max_chunk_ms",
        "grace_s": "grace_s",
    },
    "model": {
        "default": "model",
        "extra": "extra_models",
        "backend": "backend",
        "device": "device",
        "torch_threads": "torch_threads",
    },
    "batching": {
        "max_batch": "max_batch",
        "max_wait_ms": "max_wait_ms",
        "workers": "workers",
        "queue_size": "queue_size",
    },
    "metrics": {"port": "metrics_port", "address": "metrics_address"},
    "tls": {"cert": "tls_cert", "key": "tls_key", "client_ca": "tls_client_ca"},
    "auth": {"token": "token", "token_file": "token_file"},
}


def load_config(path: Path | None, **overrides: Any) -> ServerConfig:
    """Read ``path`` (TOML, optional), apply non-``None`` ``overrides`` (CLI flags), validate.

    Relative paths in the file are resolved against the file's folder.

    Raises:
        ValueError: unreadable file, unknown section/key, or an invalid value.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ValueError(f"config file not found: {path}") from e
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: invalid TOML: {e}") from e
        base = Path(path).resolve().parent
        for section, table in data.items():
            if section not in _TOML_KEYS or not isinstance(table, dict):
                raise ValueError(f"{path}: unknown section [{section}] (known: {', '.join(_TOML_KEYS)})")
            for key, value in table.items():
                if key not in _TOML_KEYS[section]:
                    raise ValueError(f"{path}: unknown key {key!r} in [{section}]")
                name = _TOML_KEYS[section][key]
                if section == "tls" or name == "token_file":
                    value = base / value
                if name == "token_file":
                    try:
                        value = Path(value).read_text(encoding="utf-8").strip()
                    except OSError as e:
                        raise ValueError(f"{path}: cannot read token_file: {e}") from e
                    name = "token"
                if name == "extra_models":
                    value = tuple(
                        str(base / v) if not Path(v).is_absolute() and (base / v).exists() else v
                        for v in value
                    )
                values[name] = value
    values.update({k: v for k, v in overrides.items() if v is not None})
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        if values.get(name) is not None:
            values[name] = Path(values[name])
    try:
        return ServerConfig(**values)
    except TypeError as e:
        raise ValueError(f"invalid configuration: {e}") from e
