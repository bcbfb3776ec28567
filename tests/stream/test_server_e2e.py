"""End to end: a real grpc.aio server on 127.0.0.1, real clients, the shipped model, real codecs."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from avsentry.pipelines.recognizers import read_manifest
from avsentry.pipelines.windowing import frame
from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream.client import GuardClient, make_config
from avsentry.stream.commands import local_server
from avsentry.stream.config import ServerConfig
from avsentry.tools import synth
from avsentry.tools.attacks import PGD, Budget

DIGITS = set(synth.DIGITS)


def expected_windows(n_samples: int) -> int:
    return len(frame(np.zeros(n_samples), window=16000, hop=8000)[1])


def test_clean_digits_stream_with_correct_labels_and_no_flags(chunks_of, client, digit_audio) -> None:
    verdicts = list(client.stream(chunks_of(digit_audio), sample_rate_hz=16000))
    assert len(verdicts) == expected_windows(len(digit_audio))
    assert [v.window_index for v in verdicts] == list(range(len(verdicts)))
    assert {"three", "seven", "one"} <= {v.raw_label for v in verdicts}
    assert not any(v.flagged for v in verdicts), [(v.raw_label, v.score, list(v.reasons)) for v in verdicts]
    for v in verdicts:
        assert v.is_final and v.model == "digits" and v.latency_ms > 0
        assert [d.name for d in v.defended][-1] == "smoothing"
        assert sum(v.smoothed.counts.values()) == 32
        assert v.threshold == pytest.approx(read_manifest("digits").extra["detector"]["threshold"], rel=1e-6)


def test_stream_equals_whole_clip_check(chunks_of, client, digit_audio, digit_wav) -> None:
    streamed = list(client.stream(chunks_of(digit_audio, 777), sample_rate_hz=16000))
    checked = client.check_file(digit_wav)
    assert [(v.start_sample, v.raw_label, v.flagged) for v in streamed] == [
        (v.start_sample, v.raw_label, v.flagged) for v in checked
    ]
    # batch composition changes float rounding only
    np.testing.assert_allclose([v.score for v in streamed], [v.score for v in checked], atol=2e-4)


def test_other_rates_and_channels_are_resampled(client, digit_audio) -> None:
    import av

    r = av.AudioResampler(format="flt", layout="mono", rate=44100)
    f = av.AudioFrame.from_ndarray(digit_audio[None], format="flt", layout="mono")
    f.sample_rate = 16000
    up = np.concatenate([o.to_ndarray().reshape(-1) for o in [*r.resample(f), *r.resample(None)]])
    stereo = np.stack([up, up], axis=1)
    verdicts = list(
        client.stream(
            (stereo[s : s + 4410] for s in range(0, len(stereo), 4410)),
            sample_rate_hz=44100,
            channels=2,
            encoding="float32",
        )
    )
    assert {"three", "seven", "one"} <= {v.raw_label for v in verdicts}
    assert verdicts[1].start_sample == 22050 and verdicts[1].start_s == pytest.approx(0.5)


def test_adversarial_file_is_flagged(chunks_of, client, model_torch, heldout_speech) -> None:
    """A targeted PGD example (held-out "seven" -> "two", L-inf 40 dB below the peak, as the demo's)."""
    y = heldout_speech["y"]
    i = int(np.flatnonzero(y == synth.LABELS.index("seven"))[0])
    x = heldout_speech["x"][i : i + 1] / np.abs(heldout_speech["x"][i]).max() * 0.5
    target = np.array([synth.LABELS.index("two")])
    res = PGD(budget=Budget(norm="linf", eps=0.005), steps=100).run(
        model_torch, x, y[i : i + 1], target=target, seed=0
    )
    assert res.success[0]
    adv = np.round(res.adversarial[0] * 32767) / 32767  # as a 16-bit file holds it
    (v,) = client.stream(chunks_of(adv.astype(np.float32)), sample_rate_hz=16000)
    assert v.raw_label == "two"
    assert v.flagged, (v.raw_label, v.score, v.threshold)
    assert v.reasons[0].startswith("score")


def test_interim_results_come_before_each_final(chunks_of, client, digit_audio) -> None:
    verdicts = list(client.stream(chunks_of(digit_audio[:24000]), sample_rate_hz=16000, interim_results=True))
    kinds = [(v.window_index, v.is_final) for v in verdicts]
    assert kinds == [(i, final) for i in range(len(kinds) // 2) for final in (False, True)]
    for interim, final in zip(verdicts[::2], verdicts[1::2], strict=True):
        assert interim.raw_label == final.raw_label and not interim.defended


def test_eight_concurrent_streams_get_every_window(chunks_of, server, digit_audio) -> None:
    results: dict[int, list] = {}

    def run(k: int) -> None:
        with GuardClient(f"127.0.0.1:{server.port}", timeout_s=300) as c:
            audio = digit_audio[k * 800 :]
            results[k] = [len(audio), list(c.stream(chunks_of(audio, 1600 + 160 * k), sample_rate_hz=16000))]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(8))
    for n, verdicts in results.values():
        assert [v.window_index for v in verdicts] == list(range(expected_windows(n)))


def _requests(*msgs):
    yield from msgs


def _config(**kw) -> pb.AudioRequest:
    base = {"encoding": pb.AUDIO_ENCODING_PCM16, "sample_rate_hz": 16000, **kw}
    return pb.AudioRequest(config=make_config(**base))


def _chunk(seq: int, data: bytes) -> pb.AudioRequest:
    return pb.AudioRequest(chunk=pb.AudioChunk(sequence=seq, data=data))


PCM = np.zeros(1600, "<i2").tobytes()
BAD_INPUTS = {
    "no config first": ([_chunk(0, PCM)], grpc.StatusCode.INVALID_ARGUMENT, "first message"),
    "bad rate": ([_config(sample_rate_hz=1000)], grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz"),
    "bad encoding": (
        [_config(encoding=pb.AUDIO_ENCODING_UNSPECIFIED)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "encoding",
    ),
    "nan": (
        [_config(encoding=pb.AUDIO_ENCODING_FLOAT32), _chunk(0, np.full(100, np.nan, "<f4").tobytes())],
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN",
    ),
    "inf": (
        [_config(encoding=pb.AUDIO_ENCODING_FLOAT32), _chunk(0, np.full(100, np.inf, "<f4").tobytes())],
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN or Inf",
    ),
    "odd chunk size": (
        [_config(), _chunk(0, b"\x00\x01\x02")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "whole frames",
    ),
    "chunk too long": (
        [_config(), _chunk(0, np.zeros(16000 * 11, "<i2").tobytes()[: 200 * 1024])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "exceeds the limit",
    ),
    "sequence gap": (
        [_config(), _chunk(0, PCM), _chunk(2, PCM)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "sequence",
    ),
    "second config": ([_config(), _config()], grpc.StatusCode.INVALID_ARGUMENT, "only the first"),
    "unknown model": ([_config(model="nope")], grpc.StatusCode.INVALID_ARGUMENT, "unknown model"),
    "bad transform": (
        [_config(transforms=["mp3:bitrate_kbps=1"])],
        grpc.StatusCode.INVALID_ARGUMENT,
        "bitrate",
    ),
    "oversize message": (
        [_config(), _chunk(0, np.zeros(1100 * 1024, np.uint8).tobytes())],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
    "stream too long": (
        [_config()] + [_chunk(k, np.zeros(1600, "<i2").tobytes()) for k in range(210)],
        grpc.StatusCode.OUT_OF_RANGE,
        "exceeds",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_its_status_while_a_good_stream_finishes(
    chunks_of, case, server, client, digit_audio
) -> None:
    msgs, code, text = BAD_INPUTS[case]
    good: dict = {}

    def run_good() -> None:
        with GuardClient(f"127.0.0.1:{server.port}", timeout_s=120) as c:
            good["v"] = list(c.stream(chunks_of(digit_audio), sample_rate_hz=16000))

    t = threading.Thread(target=run_good)
    t.start()
    with pytest.raises(grpc.RpcError) as e:
        list(client.stub.StreamAudio(_requests(*msgs), timeout=60))
    t.join()
    assert e.value.code() == code, e.value.details()
    assert text in (e.value.details() or "")
    assert len(good["v"]) == expected_windows(len(digit_audio))
    assert not any(v.flagged for v in good["v"])


def test_too_many_streams_is_resource_exhausted(chunks_of, digit_audio) -> None:
    with local_server(ServerConfig(port=0, device="cpu", max_streams=1)) as srv:
        gate = threading.Event()

        def slow_chunks():
            yield from chunks_of(digit_audio[:24000])
            gate.wait(30)

        with (
            GuardClient(f"127.0.0.1:{srv.port}", timeout_s=60) as c1,
            GuardClient(f"127.0.0.1:{srv.port}") as c2,
        ):
            first = c1.stream(slow_chunks(), sample_rate_hz=16000)
            assert next(first).window_index == 0  # the first stream holds the only slot
            with pytest.raises(grpc.RpcError) as e:
                list(c2.stream(chunks_of(digit_audio[:16000]), sample_rate_hz=16000))
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.set()
            assert [v.window_index for v in first] == [1]  # and it still finishes


def test_client_disconnect_leaves_server_healthy(chunks_of, server, client, digit_audio) -> None:
    gate = threading.Event()

    def endless():
        yield from chunks_of(digit_audio)
        gate.wait(30)
        yield from chunks_of(digit_audio)

    call = client.stub.StreamAudio(
        _requests(
            _config(),
            *[
                _chunk(k, c)
                for k, c in enumerate((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes() for x in endless())
            ],
        ),
        timeout=60,
    )
    assert next(call).window_index == 0
    call.cancel()
    gate.set()
    deadline = time.time() + 10
    while server.service.active and time.time() < deadline:
        time.sleep(0.05)
    assert server.service.active == 0
    health = health_pb2_grpc.HealthStub(client.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="avsentry.v1.Guard")).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    assert len(list(client.stream(chunks_of(digit_audio[:16000]), sample_rate_hz=16000))) == 1


def test_list_models_health_and_reflection(client) -> None:
    (m,) = client.list_models()
    card = read_manifest("digits").extra
    assert m.name == "digits" and m.is_default and list(m.labels) == list(synth.LABELS)
    assert m.threshold == pytest.approx(card["detector"]["threshold"], rel=1e-6)
    assert m.measured_fpr == pytest.approx(card["detector"]["measured_fpr"])
    health = health_pb2_grpc.HealthStub(client.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    (resp,) = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in resp.list_services_response.service}
    assert {"avsentry.v1.Guard", "grpc.health.v1.Health"} <= names


def test_check_audio_with_raw_pcm_and_bad_file(client, digit_audio, digit_wav) -> None:
    """Raw PCM in one call gives the windows (and labels) of the same audio sent as a file."""
    pcm = (np.clip(digit_audio, -1, 1) * 32767).astype("<i2").tobytes()
    cfg = make_config(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=16000)
    resp = client.stub.CheckAudio(pb.CheckAudioRequest(config=cfg, pcm=pcm))
    assert len(resp.verdicts) == expected_windows(len(digit_audio))
    from_file = client.check_file(digit_wav)
    assert [(v.start_sample, v.raw_label) for v in resp.verdicts] == [
        (v.start_sample, v.raw_label) for v in from_file
    ]
    with pytest.raises(grpc.RpcError) as e:
        client.stub.CheckAudio(pb.CheckAudioRequest(config=cfg, file=b"not audio at all" * 20))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metrics_endpoint_counts_windows(chunks_of, digit_audio) -> None:
    with local_server(ServerConfig(port=0, device="cpu", metrics_port=0)) as srv:
        assert srv.metrics_port is None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with local_server(ServerConfig(port=0, device="cpu", metrics_port=port)) as srv:
        with GuardClient(f"127.0.0.1:{srv.port}") as c:
            n = len(list(c.stream(chunks_of(digit_audio), sample_rate_hz=16000)))
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10).read().decode()
        )
    assert f'avsentry_windows_total{{model="digits"}} {float(n)}' in text
    assert "avsentry_verdict_latency_seconds_bucket" in text
    assert "avsentry_active_streams 0.0" in text
    assert "avsentry_queue_depth" in text


def test_tls_mtls_and_token(chunks_of, certs, digit_audio) -> None:
    audio = digit_audio[:16000]
    cfg = ServerConfig(
        port=0,
        device="cpu",
        tls_cert=certs["server.crt"],
        tls_key=certs["server.key"],
        tls_client_ca=certs["ca.crt"],
        token="s3cret",
    )
    with local_server(cfg) as srv:
        target = f"127.0.0.1:{srv.port}"
        with GuardClient(
            target,
            ca=certs["ca.crt"],
            cert=certs["client.crt"],
            key=certs["client.key"],
            token="s3cret",
            timeout_s=60,
        ) as c:
            assert len(list(c.stream(chunks_of(audio), sample_rate_hz=16000))) == 1
        with (
            GuardClient(
                target, ca=certs["ca.crt"], cert=certs["client.crt"], key=certs["client.key"], timeout_s=60
            ) as c,
            pytest.raises(grpc.RpcError) as e,
        ):
            c.list_models()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with (
            GuardClient(target, ca=certs["ca.crt"], token="s3cret", timeout_s=10) as c,
            pytest.raises(grpc.RpcError) as e,
        ):  # no client certificate: handshake refused
            c.list_models()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        with GuardClient(target, timeout_s=10) as c, pytest.raises(grpc.RpcError):  # plaintext to a TLS port
            c.list_models()


def test_plain_tls_without_client_certs(certs) -> None:
    cfg = ServerConfig(port=0, device="cpu", tls_cert=certs["server.crt"], tls_key=certs["server.key"])
    with (
        local_server(cfg) as srv,
        GuardClient(f"127.0.0.1:{srv.port}", ca=certs["ca.crt"], timeout_s=30) as c,
    ):
        assert c.list_models()[0].name == "digits"
