"""The committed gRPC stubs match the .proto, and server configuration is validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from avsentry.stream import protogen
from avsentry.stream.config import ServerConfig, load_config


def test_committed_stubs_are_fresh(tmp_path) -> None:
    generated = protogen.generate(tmp_path)
    assert generated, "protoc produced nothing"
    for path in generated:
        rel = path.relative_to(tmp_path)
        committed = protogen.STUBS / rel
        assert committed.exists(), f"{rel} is not committed: run python -m avsentry.stream.protogen"
        assert committed.read_text() == path.read_text(), (
            f"{rel} is stale: run python -m avsentry.stream.protogen"
        )


def test_defaults_serve_loopback_plaintext() -> None:
    cfg = load_config(None)
    assert (cfg.address, cfg.port, cfg.tls, cfg.token, cfg.model) == (
        "127.0.0.1",
        50051,
        False,
        None,
        "digits",
    )


def test_other_addresses_need_tls_or_insecure(certs) -> None:
    with pytest.raises(ValueError, match="without TLS"):
        ServerConfig(address="0.0.0.0")
    assert ServerConfig(address="0.0.0.0", insecure=True).address == "0.0.0.0"
    assert ServerConfig(address="0.0.0.0", tls_cert=certs["server.crt"], tls_key=certs["server.key"]).tls


def test_toml_file_and_flag_overrides(tmp_path: Path, certs) -> None:
    (tmp_path / "token").write_text("abc\n")
    (tmp_path / "s.toml").write_text(
        "[server]\nport = 6000\nmax_streams = 3\n[batching]\nmax_batch = 16\n"
        f'[tls]\ncert = "{certs["server.crt"]}"\nkey = "{certs["server.key"]}"\n'
        '[auth]\ntoken_file = "token"\n'
    )
    cfg = load_config(tmp_path / "s.toml", port=7000)
    assert (cfg.port, cfg.max_streams, cfg.max_batch, cfg.token, cfg.tls) == (7000, 3, 16, "abc", True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 1\n", "unknown key"),
        ("[nope]\nx = 1\n", "unknown section"),
        ("[server\n", "invalid TOML"),
        ("[server]\nmax_streams = 0\n", "max_streams"),
        ('[tls]\ncert = "missing.crt"\nkey = "missing.key"\n', "not found"),
        ('[tls]\ncert = "missing.crt"\n', "both"),
    ],
)
def test_bad_config_files_get_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(tmp_path / "s.toml")
