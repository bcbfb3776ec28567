"""Fixtures for end-to-end tests: real servers on 127.0.0.1 (random free ports), real clients."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from avsentry.pipelines.audio_io import read_audio
from avsentry.stream.client import GuardClient
from avsentry.stream.commands import local_server
from avsentry.stream.config import ServerConfig

# Ray clusters that `ray start` makes here require its token (~/.ray/auth_token); processes that
# join one by address (the Ray pool tests, their front ends) must say they use it. Ray reads
# this when it is first imported, so it is set before any test module imports ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")


@pytest.fixture(scope="session")
def server():
    """The default server (embedded model, CPU, locked defence) with small caps so limits are cheap
    to hit, and a fixed noise seed so its verdicts are reproducible (stream == whole-file check)."""
    cfg = ServerConfig(
        port=0,
        device="cpu",
        max_streams=12,
        max_stream_s=20.0,
        max_check_s=20.0,
        max_message_bytes=1024 * 1024,
        max_chunk_ms=170,
        metrics_port=0,
        grace_s=2.0,
        noise_seed=0,
        max_load=0,
    )
    with local_server(cfg) as running:
        yield running


@pytest.fixture
def client(server):
    with GuardClient(f"127.0.0.1:{server.port}", timeout_s=120) as c:
        yield c


@pytest.fixture(scope="session")
def digit_audio(digit_wav) -> np.ndarray:
    return read_audio(digit_wav, sample_rate_hz=16000)


def _chunks_of(audio: np.ndarray, size: int = 1600):
    for s in range(0, len(audio), size):
        yield audio[s : s + size, None]


@pytest.fixture(scope="session")
def chunks_of():
    """``chunks_of(audio, size=1600)``: (frames, 1) chunks of a mono signal."""
    return _chunks_of


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl)."""
    d = tmp_path_factory.mktemp("certs")

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ossl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=avsentry-test-ca",
    )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        ossl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{who}.key",
            "-out",
            f"{who}.csr",
            "-subj",
            f"/CN=avsentry-test-{who}",
        )
        ossl(
            "x509",
            "-req",
            "-in",
            f"{who}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{who}.crt",
            "-days",
            "2",
            "-extfile",
            f"{who}.ext",
        )
    return {name: d / name for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}
