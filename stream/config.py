"""Server configuration: a TOML file plus command-line flags, loaded once at the edge.

Example ``server.toml`` (every key optional; these are the defaults)::

    [server]
    address = "127.0.0.1"      # other addresses need [tls] or insecure = true
    port = 50051
    insecure = false
    max_streams = 64           # open StreamAudio + CheckAudio calls; RESOURCE_EXHAUSTED past it
    max_stream_s = 3600        # OUT_OF_RANGE past this much audio in one stream
    max_check_s = 600          # ... or in one CheckAudio file
    max_message_bytes = 8388608  # RESOURCE_EXHAUSTED past it; bounds a CheckAudio file too
    max_chunk_ms = 1000        # INVALID_ARGUMENT for a longer chunk (1 s at 192 kHz x 8 ch x
                               # float32 is 6.1 MB: it must fit in max_message_bytes)
    in_flight_windows = 4      # per call: windows queued or being judged (fairness, memory)
    config_timeout_s = 10      # DEADLINE_EXCEEDED when no StreamConfig arrives in time
    idle_timeout_s = 30        # ... when a stream sends no chunk for this long
    write_timeout_s = 30       # RESOURCE_EXHAUSTED when a client does not read its verdicts
    keepalive_s = 60           # HTTP/2 pings on idle connections; dead peers are dropped
    max_connection_age_s = 3600  # connections are asked to reconnect (GOAWAY) after this...
                               # ...and open calls get max_stream_s more to finish
    grace_s = 10.0             # drain: health NOT_SERVING, open calls get this long to finish

    [model]
    default = "digits"         # embedded name or manifest path
    extra = []                 # more manifests to serve
    backend = "torch"          # or "onnx"
    device = "auto"            # cpu, cuda, cuda:N
    torch_threads = 1          # torch intra-op threads per process; 0 = torch's default (all cores).
                               # 1 leaves the cores to the batch workers and codec threads
    allow_uncalibrated = false # serve a model with no calibrated threshold (it flags nothing;
                               # every verdict says so); refused by default (avsentry calibrate)

    [batching]
    max_batch = 64
    max_wait_ms = 0.0          # wait for company once a worker is free (CPU: 0; a GPU may gain from a few ms)
    workers = 2
    queue_size = 1024
    codec_processes = -1       # codec round trips in this many worker processes (-1: one per CPU;
                               # 0: threads in the server process, where the GIL caps them)

    [inference]
    engine = "local"           # local: detectors run in this process. ray: batches go to a Ray
                               # Serve inference pool (avsentry.stream.pool; the ray extra)
    address = ""               # ray: "" starts a local Ray instance and deploys the pool in it;
                               # else a cluster ("auto", "HOST:6379", "ray://HOST:10001") where
                               # the pool app already runs (serve run --non-blocking deploy/ray-serve.yaml)
    app = "avsentry"           # the pool's Serve application name
    replicas = 1               # pool replicas of a local Ray instance this server starts
    timeout_s = 60             # longest wait for one batch's verdicts
    retries = 3                # times a batch is sent again when its replica dies

    [capacity]
    max_load = 0.85            # admit a call only while the committed detector work stays under
                               # this share of the server's measured throughput; 0 = no admission
                               # control
    window_cost_ms = 0         # detector wall time per window of the default defence; 0 = measured
                               # at start (other configurations are measured when first used)

    [defence]
    lock = true                # clients may only strengthen the calibrated defence
    noise_seed = -1            # -1: a secret random seed per server start and fresh noise per
                               # stream; >= 0: reproducible noise (same audio, same verdict)
    allowed_transforms = ["aac", "h264", "jpeg", "lowpass", "median", "mel_inversion", "mp3", "noise", "opus",
                          "quantize", "resample", "rescale"]  # audio and video; a stream may use
                               # only its model's modality
    max_transforms = 6
    min_smoothing_n = 8
    max_smoothing_n = 128
    min_sigma = 0.001
    max_sigma = 2.0
    min_hop_ms = 100
    max_detectors = 16         # distinct defence configurations kept built (LRU)
    hop_ms = 500               # the server's default defence for audio models (defaults: the
                               # model card's; video models run their card's, one clip per hop):
    # transforms = ["mp3", "opus", "aac", "noise"]
    # smoothing_n = 32
    # sigma = 0.25
    # representation = "logmel"
    # smoothing = true
    # threshold = 1.8

    [logging]
    level = "info"             # debug, info, warning, error
    format = "text"            # text (key=value) or json, one line per event

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

from avsentry.pipelines.audio_io import MAX_CHANNELS, MAX_RATE_HZ
from avsentry.pipelines.transforms import TRANSFORM_NAMES

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
INFERENCE_ENGINES = ("local", "ray")
# Bytes of a message around its audio payload (field tags, sequence number); generous.
MESSAGE_OVERHEAD_BYTES = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything ``avsentry serve`` needs; see the module docstring for the TOML layout."""

    address: str = "127.0.0.1"
    port: int = 50051
    insecure: bool = False
    max_streams: int = 64
    max_stream_s: float = 3600.0
    max_check_s: float = 600.0
    max_message_bytes: int = 8 * 1024 * 1024
    max_chunk_ms: int = 1000
    in_flight_windows: int = 4
    config_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    write_timeout_s: float = 30.0
    keepalive_s: float = 60.0
    max_connection_age_s: float = 3600.0
    grace_s: float = 10.0
    model: str = "digits"
    extra_models: tuple[str, ...] = ()
    backend: str = "torch"
    device: str = "auto"
    torch_threads: int = 1
    allow_uncalibrated: bool = False
    max_batch: int = 64
    max_wait_ms: float = 0.0
    workers: int = 2
    queue_size: int = 1024
    codec_processes: int = -1
    inference: str = "local"
    ray_address: str = ""
    pool_app: str = "avsentry"
    pool_replicas: int = 1
    pool_timeout_s: float = 60.0
    pool_retries: int = 3
    max_load: float = 0.85
    window_cost_ms: float = 0.0
    lock: bool = True
    noise_seed: int = -1
    allowed_transforms: tuple[str, ...] = TRANSFORM_NAMES
    max_transforms: int = 6
    min_smoothing_n: int = 8
    max_smoothing_n: int = 128
    min_sigma: float = 0.001
    max_sigma: float = 2.0
    min_hop_ms: int = 100
    max_detectors: int = 16
    hop_ms: int = 500
    transforms: tuple[str, ...] | None = None
    smoothing_n: int | None = None
    sigma: float | None = None
    representation: str | None = None
    smoothing: bool | None = None
    threshold: float | None = None
    log_level: str = "info"
    log_format: str = "text"
    metrics_port: int = 0
    metrics_address: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("allow_uncalibrated", "insecure", "lock"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not 0 <= self.port <= 65535 or not 0 <= self.metrics_port <= 65535:
            raise ValueError("ports must be in [0, 65535]")
        for name in (
            "max_streams",
            "max_message_bytes",
            "max_chunk_ms",
            "in_flight_windows",
            "max_batch",
            "workers",
            "queue_size",
            "max_detectors",
            "min_hop_ms",
            "hop_ms",
            "pool_replicas",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in (
            "max_stream_s",
            "max_check_s",
            "config_timeout_s",
            "idle_timeout_s",
            "write_timeout_s",
            "keepalive_s",
            "max_connection_age_s",
            "pool_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.grace_s < 0 or self.max_wait_ms < 0 or self.window_cost_ms < 0:
            raise ValueError("grace_s, max_wait_ms and window_cost_ms must be >= 0")
        if not 0 <= self.max_load <= 1:
            raise ValueError(f"max_load must be in [0, 1] (0 = no admission control), got {self.max_load}")
        largest = self.max_chunk_ms * MAX_RATE_HZ * MAX_CHANNELS * 4 // 1000 + MESSAGE_OVERHEAD_BYTES
        if largest > self.max_message_bytes:
            raise ValueError(
                f"max_chunk_ms = {self.max_chunk_ms} allows chunks of {largest} bytes (at {MAX_RATE_HZ} Hz, "
                f"{MAX_CHANNELS} channels, float32), more than max_message_bytes = {self.max_message_bytes}: "
                "raise max_message_bytes or lower max_chunk_ms"
            )
        if self.inference not in INFERENCE_ENGINES:
            raise ValueError(f"inference must be one of {INFERENCE_ENGINES}, got {self.inference!r}")
        if self.ray_address and self.inference != "ray":
            raise ValueError("a Ray address needs inference = ray")
        if self.pool_retries < 0:
            raise ValueError(f"pool retries must be >= 0, got {self.pool_retries}")
        if self.backend not in ("torch", "onnx"):
            raise ValueError(f"backend must be torch or onnx, got {self.backend!r}")
        if self.log_level not in LOG_LEVELS or self.log_format not in LOG_FORMATS:
            raise ValueError(f"log level must be one of {LOG_LEVELS} and format one of {LOG_FORMATS}")
        unknown = sorted(set(self.allowed_transforms) - set(TRANSFORM_NAMES))
        if unknown:
            raise ValueError(f"allowed_transforms: unknown {unknown}; known: {', '.join(TRANSFORM_NAMES)}")
        if self.codec_processes < -1:
            raise ValueError("codec_processes must be -1 (one per CPU), 0 (threads) or a count")
        if self.noise_seed < -1:
            raise ValueError("noise_seed must be -1 (secret, random) or >= 0")
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

    def defence_overrides(self) -> dict[str, Any]:
        """The ``[defence]`` defaults as ``DetectorConfig.from_card`` overrides (None = the card's)."""
        return {
            "transforms": self.transforms,
            "n": self.smoothing_n,
            "sigma": self.sigma,
            "representation": self.representation,
            "smoothing": self.smoothing,
            "threshold": self.threshold,
        }


_TOML_KEYS = {
    "server": {
        k: k
        for k in (
            "address",
            "port",
            "insecure",
            "max_streams",
            "max_stream_s",
            "max_check_s",
            "max_message_bytes",
            "max_chunk_ms",
            "in_flight_windows",
            "config_timeout_s",
            "idle_timeout_s",
            "write_timeout_s",
            "keepalive_s",
            "max_connection_age_s",
            "grace_s",
        )
    },
    "model": {
        "default": "model",
        "extra": "extra_models",
        "backend": "backend",
        "device": "device",
        "torch_threads": "torch_threads",
        "allow_uncalibrated": "allow_uncalibrated",
    },
    "batching": {k: k for k in ("max_batch", "max_wait_ms", "workers", "queue_size", "codec_processes")},
    "inference": {
        "engine": "inference",
        "address": "ray_address",
        "app": "pool_app",
        "replicas": "pool_replicas",
        "timeout_s": "pool_timeout_s",
        "retries": "pool_retries",
    },
    "capacity": {k: k for k in ("max_load", "window_cost_ms")},
    "defence": {
        k: k
        for k in (
            "lock",
            "noise_seed",
            "allowed_transforms",
            "max_transforms",
            "min_smoothing_n",
            "max_smoothing_n",
            "min_sigma",
            "max_sigma",
            "min_hop_ms",
            "max_detectors",
            "hop_ms",
            "transforms",
            "smoothing_n",
            "sigma",
            "representation",
            "smoothing",
            "threshold",
        )
    },
    "logging": {"level": "log_level", "format": "log_format"},
    "metrics": {"port": "metrics_port", "address": "metrics_address"},
    "tls": {"cert": "tls_cert", "key": "tls_key", "client_ca": "tls_client_ca"},
    "auth": {"token": "token", "token_file": "token_file"},
}
_TUPLES = ("extra_models", "allowed_transforms", "transforms")


def parse_inference(value: str) -> tuple[str, str]:
    """``local``, ``ray`` or ``ray=ADDRESS`` (the ``--inference`` flag) -> (engine, address).

    Raises:
        ValueError: anything else.
    """
    engine, _, address = value.partition("=")
    if engine not in INFERENCE_ENGINES or (address and engine != "ray") or ("=" in value and not address):
        raise ValueError(f"expected local, ray or ray=ADDRESS, got {value!r}")
    return engine, address


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
                    known = ", ".join(_TOML_KEYS[section])
                    raise ValueError(f"{path}: unknown key {key!r} in [{section}] (known: {known})")
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
    for name in _TUPLES:
        if values.get(name) is not None:
            if isinstance(values[name], str) or not all(isinstance(v, str) for v in values[name]):
                raise ValueError(f"{name} must be a list of strings")
            values[name] = tuple(values[name])
    try:
        return ServerConfig(**values)
    except TypeError as e:
        raise ValueError(f"invalid configuration: {e}") from e
