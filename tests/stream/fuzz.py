"""A seeded fuzzer for the avsentry gRPC service: random and mutated requests against a real server.

Each case is a pure function of ``(seed, index)``: a StreamAudio call (random or mutated
``StreamConfig`` fields and transform specs, chunks of the wrong size, encoding, sequence, NaN,
Inf and huge samples, messages out of order, raw bytes that are not protobuf, bit-flipped and
truncated messages), a CheckAudio call (WAV headers with random rates, channel counts and sizes,
truncated and random files, raw PCM), a StreamVideo call (random ``VideoConfig`` fields, pixel
formats, sizes and rates; RGB/I420 frames of right and wrong sizes, whole, truncated and foreign
JPEGs, sequence gaps), a CheckVideo call (random and mutated containers), or a ListModels call
with garbage bytes. :func:`run`
sends the cases from several threads at once and records the status of each call.

A client mistake must get a precise status: never UNKNOWN or INTERNAL, never a hang (the client's
own deadline), and the server must keep serving. ``tests/stream/test_fuzz.py`` runs it (a short
run by default, 100k+ messages with ``-m slow``) against ``avsentry serve`` in a subprocess and
checks that, the health status, a normal stream's labels and the server's memory.
"""

from __future__ import annotations

import collections
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import numpy as np

from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb

SR = 16000
# What a client mistake may get. DEADLINE_EXCEEDED only as the server's own idle timeout.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
TRANSFORM_WORDS = [
    "mp3",
    "opus",
    "aac",
    "noise",
    "quantize",
    "resample",
    "lowpass",
    "mel_inversion",
    "none",
    "MP3",
    "",
    " mp3 ",
    "mp3:",
    "mp3:bitrate_kbps",
    "mp3:=3",
    "x" * 300,
]
PARAM_WORDS = [
    "bitrate_kbps",
    "workers",
    "sample_rate_hz",
    "snr_db",
    "bits",
    "cutoff_hz",
    "order",
    "n_fft",
    "hop_length",
    "n_iter",
    "n_mels",
    "intermediate_rate_hz",
    "floor",
    "segments",
    "bogus",
]
VALUE_WORDS = [
    "0",
    "-1",
    "1",
    "8",
    "16",
    "32",
    "1e-300",
    "1e300",
    "nan",
    "inf",
    "-inf",
    "true",
    "abc",
    "8001",
    "99999999999999999999",
]


@dataclass
class Case:
    """One call: ``kind`` (stream, stream_raw, check, check_raw, models_raw) and its payload."""

    kind: str
    payload: object
    messages: int = 1


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    case: int
    kind: str
    seconds: float


@dataclass
class Report:
    """What a run saw: status counts, the bad outcomes, messages sent, wall time."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    bad: list[Outcome] = field(default_factory=list)
    messages: int = 0
    calls: int = 0
    seconds: float = 0.0


def _speech_like(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 220)
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8))
    return (0.2 * x * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _random_string(rng: np.random.Generator, max_len: int = 40) -> str:
    n = int(rng.integers(0, max_len))
    return "".join(chr(int(c)) for c in rng.integers(1, 0x2FF, n))


def _transform_spec(rng: np.random.Generator) -> str:
    name = str(rng.choice(TRANSFORM_WORDS))
    if rng.random() < 0.5:
        return name
    params = [f"{rng.choice(PARAM_WORDS)}={rng.choice(VALUE_WORDS)}" for _ in range(int(rng.integers(1, 4)))]
    return f"{name}:{','.join(params)}"


def random_config(rng: np.random.Generator) -> pb.StreamConfig:
    """A StreamConfig with each field valid, plausible-but-wrong or garbage."""
    pick = rng.random
    cfg = pb.StreamConfig(
        model=str(rng.choice(["", "digits", "nope", "x" * 5000, _random_string(rng)]))
        if pick() < 0.4
        else "",
        encoding=int(rng.choice([0, 1, 2, 3, 99])) if pick() < 0.3 else 1,
        sample_rate_hz=int(rng.choice([0, 1, 7999, 8000, 16000, 44100, 192000, 192001, 2**32 - 1]))
        if pick() < 0.4
        else SR,
        channels=int(rng.choice([0, 1, 2, 8, 9, 62, 2**32 - 1])) if pick() < 0.3 else 1,
        window_ms=int(rng.choice([0, 1, 999, 1000, 1001, 2**32 - 1])) if pick() < 0.2 else 0,
        hop_ms=int(rng.choice([0, 1, 10, 99, 100, 250, 500, 1000, 1001, 2**32 - 1])) if pick() < 0.3 else 0,
        smoothing_n=int(rng.choice([0, 1, 7, 8, 32, 64, 128, 129, 10_000, 2**32 - 1])) if pick() < 0.3 else 0,
        smoothing_sigma=float(rng.choice([0.0, -1.0, 1e-9, 0.25, 0.5, 3.0, np.nan, np.inf, 3e38]))
        if pick() < 0.3
        else 0.0,
        disable_smoothing=bool(pick() < 0.1),
        interim_results=bool(pick() < 0.2),
        request_id=str(rng.choice(["", "abc", "x" * 200, "\x00\n", _random_string(rng)]))
        if pick() < 0.2
        else "",
        smoothing_representation=str(rng.choice(["", "logmel", "waveform", "spectrogram", "bogus"]))
        if pick() < 0.2
        else "",
    )
    if pick() < 0.3:
        cfg.transforms.extend(_transform_spec(rng) for _ in range(int(rng.integers(0, 8))))
    if pick() < 0.15:
        cfg.threshold = float(rng.choice([-1.0, 0.0, 0.5, 1.8, 2.5, np.nan, np.inf]))
    return cfg


def _chunks(rng: np.random.Generator, cfg: pb.StreamConfig) -> list[pb.AudioRequest]:
    """Chunks for ``cfg``: mostly well-formed, sometimes wrong in one way."""
    channels = max(1, min(cfg.channels or 1, 8))
    width = 4 if cfg.encoding == 2 else 2
    seconds = float(rng.uniform(0.05, 1.6))
    n = int(seconds * SR)
    x = _speech_like(rng, n)
    frames = np.repeat(x[:, None], channels, axis=1)
    mode = rng.random()
    if cfg.encoding == 2:
        if mode < 0.1:
            frames[int(rng.integers(0, n))] = float(rng.choice([np.nan, np.inf, -np.inf]))
        elif mode < 0.2:
            frames *= np.float32(rng.choice([1e10, 3.4e38, -3.4e38]))
        data = frames.astype("<f4").tobytes()
    else:
        data = (np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(rng.choice([1600, 1600, 3200, 799, 1])) * channels * width
    pieces = [data[s : s + step] for s in range(0, len(data), step)][:60]
    reqs = []
    for seq, piece in enumerate(pieces):
        r = rng.random()
        if r < 0.02:
            piece = piece[:-1]  # not whole frames
        elif r < 0.03:
            seq += 5  # a gap
        elif r < 0.04:
            reqs.append(pb.AudioRequest(config=cfg))  # a second config
        reqs.append(pb.AudioRequest(chunk=pb.AudioChunk(sequence=seq, data=piece)))
    return reqs


def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    b = bytearray(data)
    r = rng.random()
    if not b or r < 0.3:
        return bytes(rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8))
    if r < 0.6:
        for _ in range(int(rng.integers(1, 8))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        return bytes(b)
    return bytes(b[: int(rng.integers(0, len(b)))])


def _wav(rng: np.random.Generator) -> bytes:
    rate = int(rng.choice([1, 8000, 16000, 44100, 192000, 192001, 687_873_856, 2**32 - 1]))
    channels = int(rng.choice([0, 1, 2, 8, 9, 29, 62, 65535]))
    bits = int(rng.choice([8, 16, 24, 32, 0, 7]))
    fmt = int(rng.choice([1, 1, 3, 0, 0xFFFE]))
    frames = int(rng.integers(0, 20000))
    block = max(1, channels * max(bits, 8) // 8)
    data = rng.integers(0, 256, min(frames * block, 400_000), dtype=np.uint8).tobytes()
    declared = int(rng.choice([len(data), 0, 2**32 - 1, len(data) * 1000 % 2**32]))
    header = (
        b"RIFF"
        + struct.pack("<I", (36 + declared) % 2**32)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH", 16, fmt, channels % 65536, rate, (rate * block) % 2**32, block % 65536, bits
        )
        + b"data"
        + struct.pack("<I", declared)
    )
    out = header + data
    if rng.random() < 0.2:
        out = out[: int(rng.integers(0, len(out) + 1))]
    return out


VIDEO_TRANSFORM_WORDS = [
    "h264",
    "jpeg",
    "median",
    "rescale",
    "h264:crf=99",
    "h264:preset=placebo",
    "jpeg:quality=0",
    "median:frames=4",
    "rescale:factor=2",
    "mp3",
    "none",
    "",
]


def _pick(rng: np.random.Generator, *values):  # type: ignore[no-untyped-def]
    return values[int(rng.integers(0, len(values)))]


def random_video_config(rng: np.random.Generator) -> pb.VideoConfig:
    cfg = pb.VideoConfig(
        model=_pick(rng, "", "", "actions", "digits", _random_string(rng)),
        pixel_format=int(rng.integers(0, 5)),
        width=_pick(rng, 0, 1, 16, 33, 112, 5000, 2**31),
        height=_pick(rng, 0, 1, 16, 31, 112, 5000),
        fps=_pick(rng, 0.0, -1.0, float("nan"), float("inf"), 25.0, 25.0, 7.5, 60.0, 61.0, 1e9),
        clip_frames=_pick(rng, 0, 0, 16, 8, 2**31),
        hop_frames=_pick(rng, 0, 0, 1, 3, 16, 17, 2**31),
    )
    if rng.random() < 0.4:
        cfg.transforms.extend(_pick(rng, *VIDEO_TRANSFORM_WORDS) for _ in range(int(rng.integers(0, 4))))
    if rng.random() < 0.3:
        cfg.smoothing_n = _pick(rng, 0, 1, 16, 64, 10**6)
        cfg.smoothing_sigma = _pick(rng, 0.0, 0.1, -1.0, float("nan"), 1e9)
    if rng.random() < 0.1:
        cfg.disable_smoothing = True
    if rng.random() < 0.1:
        cfg.threshold = _pick(rng, 0.0, 0.5, 5.0, float("nan"))
    return cfg


def _jpeg(rng: np.random.Generator, w: int, h: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(out, format="JPEG")
    data = out.getvalue()
    return data[: int(rng.integers(0, len(data)))] if rng.random() < 0.3 else data


def _frames(rng: np.random.Generator, cfg: pb.VideoConfig) -> list[pb.VideoRequest]:
    w, h = max(1, min(cfg.width, 48)), max(1, min(cfg.height, 48))  # the fuzzer's own memory
    out = []
    for k in range(int(rng.integers(0, 24))):
        kind = rng.random()
        if kind < 0.4:
            data = rng.integers(0, 256, w * h * 3, dtype=np.uint8).tobytes()
        elif kind < 0.55:
            data = rng.integers(0, 256, w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2), dtype=np.uint8).tobytes()
        elif kind < 0.8:
            data = _jpeg(rng, _pick(rng, w, w + 1, 8), h)
        else:
            data = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        seq = k if rng.random() < 0.97 else max(0, k + int(rng.integers(-2, 3)))
        out.append(pb.VideoRequest(frame=pb.VideoFrame(sequence=seq, data=data)))
    return out


def _video_case(rng: np.random.Generator) -> Case:
    r = rng.random()
    if r < 0.6:
        cfg = random_video_config(rng)
        if rng.random() < 0.3:  # a well-formed config, so frames get as far as the detector
            cfg = pb.VideoConfig(pixel_format=int(rng.integers(1, 4)), width=16, height=16, fps=25)
        reqs = [pb.VideoRequest(config=cfg), *_frames(rng, cfg)]
        if rng.random() < 0.05:
            reqs = reqs[1:]
        return Case("video", reqs, messages=max(1, len(reqs)))
    if r < 0.8:
        raw = [pb.VideoRequest(config=random_video_config(rng)).SerializeToString()]
        raw += [
            _mutate(rng, m.SerializeToString()) for m in _frames(rng, pb.VideoConfig(width=16, height=16))
        ]
        return Case("video_raw", raw, messages=len(raw))
    data = rng.integers(0, 256, int(rng.integers(0, 4000)), dtype=np.uint8).tobytes()
    if rng.random() < 0.5:
        data = b"\x00\x00\x00\x18ftypmp42" + data
    return Case("check_video", pb.CheckVideoRequest(config=random_video_config(rng), file=data))


def make_case(seed: int, index: int) -> Case:
    """The ``index``-th case of the run seeded ``seed``."""
    rng = np.random.default_rng([seed, index])
    if rng.random() < 0.2:
        return _video_case(rng)
    r = rng.random()
    if r < 0.45:
        cfg = random_config(rng) if rng.random() < 0.8 else pb.StreamConfig(encoding=1, sample_rate_hz=SR)
        order = rng.random()
        reqs = [pb.AudioRequest(config=cfg), *_chunks(rng, cfg)]
        if order < 0.05:
            reqs = reqs[1:]  # no config first
        elif order < 0.08:
            reqs = []
        return Case("stream", reqs, messages=max(1, len(reqs)))
    if r < 0.65:
        cfg = pb.StreamConfig(encoding=1, sample_rate_hz=SR)
        reqs = [pb.AudioRequest(config=cfg), *_chunks(rng, cfg)]
        raw = [m.SerializeToString() for m in reqs]
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(0, len(raw)))
            raw[k] = _mutate(rng, raw[k])
        return Case("stream_raw", raw, messages=len(raw))
    if r < 0.9:
        kind = rng.random()
        if kind < 0.6:
            req = pb.CheckAudioRequest(file=_wav(rng))
        elif kind < 0.75:
            req = pb.CheckAudioRequest(
                file=bytes(rng.integers(0, 256, int(rng.integers(0, 5000)), dtype=np.uint8))
            )
        elif kind < 0.9:
            cfg = random_config(rng)
            data = (_speech_like(rng, int(rng.integers(0, 3 * SR))) * 32767).astype("<i2").tobytes()
            req = pb.CheckAudioRequest(config=cfg, pcm=data[: len(data) - int(rng.integers(0, 2))])
        else:
            req = pb.CheckAudioRequest()
        return Case("check", req)
    if r < 0.97:
        return Case("check_raw", _mutate(rng, pb.CheckAudioRequest(file=_wav(rng)).SerializeToString()))
    return Case("models_raw", _mutate(rng, b"\x0a\x03abc"))


def _identity(b: bytes) -> bytes:
    return b


def send(channel: grpc.Channel, case: Case, *, deadline_s: float) -> tuple[grpc.StatusCode, str]:
    """Send one case; returns the call's status and details."""
    try:
        if case.kind == "stream":
            call = channel.stream_stream(
                "/avsentry.v1.Guard/StreamAudio",
                request_serializer=pb.AudioRequest.SerializeToString,
                response_deserializer=pb.Verdict.FromString,
            )
            for _ in call(iter(case.payload), timeout=deadline_s):  # type: ignore[arg-type]
                pass
        elif case.kind == "stream_raw":
            call = channel.stream_stream("/avsentry.v1.Guard/StreamAudio", _identity, _identity)
            for _ in call(iter(case.payload), timeout=deadline_s):  # type: ignore[arg-type]
                pass
        elif case.kind == "check":
            channel.unary_unary(
                "/avsentry.v1.Guard/CheckAudio",
                request_serializer=pb.CheckAudioRequest.SerializeToString,
                response_deserializer=pb.CheckAudioResponse.FromString,
            )(case.payload, timeout=deadline_s)
        elif case.kind in ("video", "video_raw"):
            raw = case.kind == "video_raw"
            call = channel.stream_stream(
                "/avsentry.v1.Guard/StreamVideo",
                _identity if raw else pb.VideoRequest.SerializeToString,
                _identity if raw else pb.Verdict.FromString,
            )
            for _ in call(iter(case.payload), timeout=deadline_s):  # type: ignore[arg-type]
                pass
        elif case.kind == "check_video":
            channel.unary_unary(
                "/avsentry.v1.Guard/CheckVideo",
                request_serializer=pb.CheckVideoRequest.SerializeToString,
                response_deserializer=pb.CheckVideoResponse.FromString,
            )(case.payload, timeout=deadline_s)
        elif case.kind == "check_raw":
            channel.unary_unary("/avsentry.v1.Guard/CheckAudio", _identity, _identity)(
                case.payload, timeout=deadline_s
            )
        else:
            channel.unary_unary("/avsentry.v1.Guard/ListModels", _identity, _identity)(
                case.payload, timeout=deadline_s
            )
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def is_bad(code: grpc.StatusCode, details: str) -> bool:
    """A status a client mistake must never get (or the client's own deadline: a hang)."""
    if code not in ALLOWED:
        return True
    return code == grpc.StatusCode.DEADLINE_EXCEEDED and details.strip().lower() == "deadline exceeded"


def run(
    target: str,
    *,
    seed: int,
    cases: int,
    threads: int = 8,
    deadline_s: float = 60.0,
    progress: Callable[[int, Report], None] | None = None,
) -> Report:
    """Send ``cases`` cases from ``threads`` threads over one channel to ``target``."""
    report = Report()
    lock = threading.Lock()
    t0 = time.perf_counter()
    with grpc.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:

        def one(i: int) -> None:
            case = make_case(seed, i)
            start = time.perf_counter()
            code, details = send(channel, case, deadline_s=deadline_s)
            with lock:
                report.counts[code.name] += 1
                report.messages += case.messages
                report.calls += 1
                if is_bad(code, details):
                    report.bad.append(Outcome(code, details[:300], i, case.kind, time.perf_counter() - start))
                if progress is not None:
                    progress(i, report)

        with ThreadPoolExecutor(threads) as pool:
            for fut in [pool.submit(one, i) for i in range(cases)]:
                fut.result()
    report.seconds = time.perf_counter() - t0
    return report


def cases_for_messages(seed: int, messages: int) -> Iterator[int]:
    """Case indices until their messages add up to at least ``messages``."""
    total = i = 0
    while total < messages:
        total += make_case(seed, i).messages
        i += 1
        yield i
