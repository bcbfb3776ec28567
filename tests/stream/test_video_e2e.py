"""StreamVideo and CheckVideo end to end: a real server on 127.0.0.1 serving the embedded action
model, real clients (the SDK and the CLI as a subprocess), real codecs, and a virtual camera
(FFmpeg's lavfi test source through the same PyAV input path a V4L2 webcam uses)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from avsentry.pipelines.video_io import read_video, write_video
from avsentry.stream._proto.avsentry.v1 import guard_pb2 as pb
from avsentry.stream.client import GuardClient, encode_frame, make_video_config
from avsentry.stream.commands import local_server
from avsentry.stream.config import ServerConfig
from avsentry.stream.convert import i420_to_rgb, rgb_to_i420
from avsentry.stream.offline import check_file
from avsentry.tools import videosynth

ACTIONS = ("move_left", "grow", "_background_")


@pytest.fixture(scope="module")
def video_server():
    """The action model as the default, the digit model beside it; a fixed noise seed (verdicts
    reproducible, equal to offline check's), small caps so limits are cheap to hit."""
    cfg = ServerConfig(
        port=0,
        device="cpu",
        model="actions",
        extra_models=("digits",),
        max_streams=8,
        max_stream_s=4.0,
        max_check_s=4.0,
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
def client(video_server):
    with GuardClient(f"127.0.0.1:{video_server.port}", timeout_s=300) as c:
        yield c


@pytest.fixture(scope="module")
def scenes() -> np.ndarray:
    """Three held-out scenes, 48 frames of 112x112 uint8 RGB at 25 fps."""
    return np.concatenate(
        [videosynth.render(a, videosynth.HELDOUT_SEED, 90 + i) for i, a in enumerate(ACTIONS)]
    )


@pytest.fixture(scope="module")
def scenes_mp4(tmp_path_factory, scenes) -> Path:
    path = tmp_path_factory.mktemp("video") / "scenes.mp4"
    write_video(path, scenes, fps=25)
    return path


def _fields(verdicts) -> list[tuple]:
    return [(v.window_index, v.start_sample, v.end_sample, v.raw_label) for v in verdicts]


def test_list_models_describes_the_video_model(client) -> None:
    (actions,) = [m for m in client.list_models() if m.name == "actions"]
    assert (actions.modality, actions.frames, actions.height, actions.width, actions.fps) == (
        "video",
        16,
        112,
        112,
        25.0,
    )
    assert actions.is_default and actions.sample_rate_hz == 0
    assert [t.split(":")[0] for t in actions.transforms] == ["h264", "jpeg"]
    assert actions.smoothing_representation == "pixels"
    assert actions.HasField("threshold")


def test_check_video_gives_the_verdicts_of_offline_check(client, scenes_mp4) -> None:
    from avsentry.pipelines.detection import Detector, DetectorConfig
    from avsentry.pipelines.recognizers import load_recognizer, read_manifest

    served = client.check_video_file(scenes_mp4)
    assert _fields(served) == [(0, 0, 16, "move_left"), (1, 16, 32, "grow"), (2, 32, 48, "_background_")]
    assert not any(v.flagged for v in served) and all(v.calibrated for v in served)
    assert {d.name for d in served[0].defended} == {"h264", "jpeg", "smoothing"}

    manifest = read_manifest("actions")
    config, calibrated = DetectorConfig.from_card(manifest.detector, seed=0)
    detector = Detector(load_recognizer("actions", device="cpu"), config)
    offline = list(check_file(detector, scenes_mp4, hop=16, calibrated=calibrated))
    assert [v.score for v in served] == pytest.approx([r.score for r in offline], abs=1e-5)
    assert [v.smoothed.counts for v in served] == [r.smoothed.counts for r in offline]


@pytest.mark.parametrize("pixel_format", ["rgb24", "i420", "jpeg"])
def test_stream_video_judges_each_clip_in_every_pixel_format(client, scenes, pixel_format) -> None:
    verdicts = list(
        client.stream_video(iter(scenes), width=112, height=112, fps=25, pixel_format=pixel_format)
    )
    assert _fields(verdicts) == [(0, 0, 16, "move_left"), (1, 16, 32, "grow"), (2, 32, 48, "_background_")]
    assert [v.start_s for v in verdicts] == pytest.approx([0.0, 0.64, 1.28])
    assert not any(v.flagged for v in verdicts), [list(v.reasons) for v in verdicts]
    assert all(v.model == "actions" and v.is_final for v in verdicts)


def test_rgb24_stream_of_a_files_frames_equals_check_video_of_the_file(client, scenes_mp4) -> None:
    frames, fps = read_video(scenes_mp4)
    streamed = list(client.stream_video(iter(frames), width=112, height=112, fps=fps, pixel_format="rgb24"))
    checked = client.check_video_file(scenes_mp4)
    assert [v.score for v in streamed] == [v.score for v in checked]
    assert [dict(v.smoothed.counts) for v in streamed] == [dict(v.smoothed.counts) for v in checked]


def test_other_sizes_rates_and_hops_are_scaled_retimed_and_cut(client, scenes) -> None:
    """224x224 frames at 50 fps (each shown twice), a hop of 8 model frames, interim verdicts."""
    big = np.repeat(np.repeat(np.repeat(scenes, 2, axis=1), 2, axis=2), 2, axis=0)
    verdicts = list(
        client.stream_video(
            iter(big), width=224, height=224, fps=50, hop_frames=8, interim_results=True, pixel_format="jpeg"
        )
    )
    final = [v for v in verdicts if v.is_final]
    assert len(verdicts) == 2 * len(final)
    # model clips start every 8 frames; the one at 40 would show nothing new, so it is not cut
    assert [(v.start_sample, v.end_sample) for v in final] == [(16 * k, 16 * k + 32) for k in range(5)]
    assert [final[k].raw_label for k in (0, 2, 4)] == list(ACTIONS)


def _stream_raw(client: GuardClient, config: pb.VideoConfig, frames: list[bytes]) -> list[pb.Verdict]:
    def requests():
        yield pb.VideoRequest(config=config)
        for k, data in enumerate(frames):
            yield pb.VideoRequest(frame=pb.VideoFrame(sequence=k, data=data))

    return list(client.stub.StreamVideo(requests(), timeout=120))


def _jpeg(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(out, format="JPEG")
    return out.getvalue()


RGB_16 = make_video_config(pixel_format=pb.PIXEL_FORMAT_RGB24, width=16, height=16, fps=25)
JPEG_16 = make_video_config(pixel_format=pb.PIXEL_FORMAT_JPEG, width=16, height=16, fps=25)
BAD_INPUT = {
    "wrong frame size": (RGB_16, [bytes(16 * 16 * 3), bytes(15 * 16 * 3)], "frame 1 is 720 bytes"),
    "truncated jpeg": (JPEG_16, [_jpeg((16, 16))[:-60]], "corrupt or truncated JPEG"),
    "jpeg of another size": (JPEG_16, [_jpeg((32, 16))], "frame 0 is a 32x16 JPEG; the stream is 16x16"),
    "not a jpeg": (JPEG_16, [b"GIF89a" + bytes(40)], "frame 0 is not a JPEG image"),
    "png for jpeg": (JPEG_16, [bytes.fromhex("89504e470d0a1a0a") + bytes(60)], "not a JPEG"),
    "no pixel format": (make_video_config(width=16, height=16, fps=25), [], "pixel_format must be"),
    "zero fps": (
        make_video_config(pixel_format=pb.PIXEL_FORMAT_RGB24, width=16, height=16),
        [],
        "fps must be",
    ),
    "huge frames": (
        make_video_config(pixel_format=pb.PIXEL_FORMAT_JPEG, width=4000, height=4000, fps=25),
        [],
        "frames of at most 2088960 pixels",
    ),
    "fast frames": (
        make_video_config(pixel_format=pb.PIXEL_FORMAT_JPEG, width=16, height=16, fps=120),
        [],
        "fps must be",
    ),
    "frames over the message limit": (
        make_video_config(pixel_format=pb.PIXEL_FORMAT_RGB24, width=800, height=600, fps=25),
        [],
        "1440000 bytes, over this server's 1048576-byte message limit",
    ),
    "wrong clip length": (
        make_video_config(pixel_format=pb.PIXEL_FORMAT_RGB24, width=16, height=16, fps=25, clip_frames=8),
        [],
        "takes clips of 16 frames",
    ),
    "audio model": (
        make_video_config(model="digits", pixel_format=pb.PIXEL_FORMAT_RGB24, width=16, height=16, fps=25),
        [],
        "takes audio: use StreamAudio",
    ),
    "audio transform": (
        make_video_config(
            pixel_format=pb.PIXEL_FORMAT_RGB24,
            width=16,
            height=16,
            fps=25,
            transforms=["h264", "jpeg", "mp3"],
        ),
        [],
        "mp3",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_video_input_gets_invalid_argument_with_a_precise_message(client, case) -> None:
    config, frames, message = BAD_INPUT[case]
    with pytest.raises(grpc.RpcError) as e:
        _stream_raw(client, config, frames)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert message in e.value.details()


def test_a_frame_sequence_gap_is_refused(client) -> None:
    def requests():
        yield pb.VideoRequest(config=RGB_16)
        yield pb.VideoRequest(frame=pb.VideoFrame(sequence=0, data=bytes(768)))
        yield pb.VideoRequest(frame=pb.VideoFrame(sequence=2, data=bytes(768)))

    with pytest.raises(grpc.RpcError) as e:
        list(client.stub.StreamVideo(requests(), timeout=120))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "frame sequence 2 where 1 was expected" in e.value.details()


def test_the_locked_defence_cannot_be_weakened(client) -> None:
    for weaker in ({"transforms": ["jpeg"]}, {"disable_smoothing": True}, {"threshold": 50.0}):
        config = make_video_config(pixel_format=pb.PIXEL_FORMAT_RGB24, width=16, height=16, fps=25, **weaker)
        with pytest.raises(grpc.RpcError) as e:
            _stream_raw(client, config, [])
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, weaker


def test_streams_and_files_past_the_cap_are_out_of_range(client, tmp_path) -> None:
    with pytest.raises(grpc.RpcError) as e:
        _stream_raw(client, RGB_16, [bytes(768)] * 101)  # 4.04 s at 25 fps
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
    long = tmp_path / "long.mp4"
    write_video(long, np.zeros((125, 16, 16, 3), np.uint8), fps=25)  # 5 s
    with pytest.raises(grpc.RpcError) as e:
        client.check_video_file(long)
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE


def test_garbage_and_audio_files_are_refused_by_check_video(client, tmp_path, digit_wav) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    for path, message in ((garbage, "not a video FFmpeg can read"), (digit_wav, "holds no video stream")):
        with pytest.raises(grpc.RpcError) as e:
            client.check_video_file(path)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        client.stub.CheckVideo(pb.CheckVideoRequest(config=make_video_config()), timeout=60)
    assert "needs a video file" in e.value.details()


def test_audio_calls_get_the_audio_model_beside_a_video_default(client, digit_wav) -> None:
    named = client.check_file(digit_wav, model="digits")
    unnamed = client.check_file(digit_wav)  # the default model takes video: the audio one judges
    assert named and [v.model for v in unnamed] == ["digits"] * len(named)
    assert [v.score for v in unnamed] == [v.score for v in named]
    with pytest.raises(grpc.RpcError) as e:
        client.check_file(digit_wav, model="actions")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes video: use StreamVideo" in e.value.details()


def test_yuv_frames_round_trip_within_chroma_rounding() -> None:
    rng = np.random.default_rng(0)
    smooth = np.clip(rng.normal(128, 20, (1, 1, 3)) + np.zeros((15, 17, 3)), 0, 255).astype(np.uint8)
    back = i420_to_rgb(np.frombuffer(rgb_to_i420(smooth), np.uint8), width=17, height=15)
    assert back.shape == (15, 17, 3)
    assert np.abs(back.astype(int) - smooth.astype(int)).max() <= 2
    assert len(encode_frame(smooth, "i420")) == 17 * 15 + 2 * 9 * 8


def avsentry(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avsentry", *args], capture_output=True, text=True, timeout=timeout
    )


def test_cli_stream_sends_a_gif_to_stream_video(video_server, scenes, tmp_path) -> None:
    gif = tmp_path / "scenes.gif"
    write_video(gif, scenes, fps=25)
    server = f"127.0.0.1:{video_server.port}"
    r = avsentry("stream", str(gif), "--rate", "0", "--server", server, "--json")
    assert r.returncode == 0, r.stderr
    verdicts = [json.loads(line) for line in r.stdout.splitlines()]
    assert [v["raw_label"] for v in verdicts] == list(ACTIONS)
    assert "3 windows, 0 flagged" in r.stderr


def test_cli_camera_streams_a_virtual_camera(video_server) -> None:
    server = f"127.0.0.1:{video_server.port}"
    r = avsentry(
        "camera",
        "--input-format",
        "lavfi",
        "--input-device",
        "testsrc2=size=160x120:rate=25",
        "--seconds",
        "1.5",
        "--server",
        server,
        "--json",
    )
    assert r.returncode == 0, r.stderr
    verdicts = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(v["start_sample"], v["end_sample"]) for v in verdicts] == [(0, 16), (16, 32), (32, 48)]
    assert all(v["model"] == "actions" and v["raw_label"] for v in verdicts)
    assert "capturing 160x120 at 25 fps" in r.stderr and "38 frame(s) captured" in r.stderr


def test_cli_camera_without_a_device_fails_in_one_line(video_server) -> None:
    r = avsentry("camera", "--input-device", "/dev/video99", "--server", f"127.0.0.1:{video_server.port}")
    assert r.returncode == 1
    assert "cannot open v4l2 device '/dev/video99'" in r.stderr and "Traceback" not in r.stderr
