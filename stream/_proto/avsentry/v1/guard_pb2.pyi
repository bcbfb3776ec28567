from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM16: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_FLOAT32: _ClassVar[AudioEncoding]

class PixelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIXEL_FORMAT_UNSPECIFIED: _ClassVar[PixelFormat]
    PIXEL_FORMAT_RGB24: _ClassVar[PixelFormat]
    PIXEL_FORMAT_I420: _ClassVar[PixelFormat]
    PIXEL_FORMAT_JPEG: _ClassVar[PixelFormat]
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM16: AudioEncoding
AUDIO_ENCODING_FLOAT32: AudioEncoding
PIXEL_FORMAT_UNSPECIFIED: PixelFormat
PIXEL_FORMAT_RGB24: PixelFormat
PIXEL_FORMAT_I420: PixelFormat
PIXEL_FORMAT_JPEG: PixelFormat

class StreamConfig(_message.Message):
    __slots__ = ("model", "encoding", "sample_rate_hz", "channels", "window_ms", "hop_ms", "transforms", "smoothing_n", "smoothing_sigma", "disable_smoothing", "interim_results", "request_id", "smoothing_representation", "threshold", "resume_window")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_MS_FIELD_NUMBER: _ClassVar[int]
    HOP_MS_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_N_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_SIGMA_FIELD_NUMBER: _ClassVar[int]
    DISABLE_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_REPRESENTATION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RESUME_WINDOW_FIELD_NUMBER: _ClassVar[int]
    model: str
    encoding: AudioEncoding
    sample_rate_hz: int
    channels: int
    window_ms: int
    hop_ms: int
    transforms: _containers.RepeatedScalarFieldContainer[str]
    smoothing_n: int
    smoothing_sigma: float
    disable_smoothing: bool
    interim_results: bool
    request_id: str
    smoothing_representation: str
    threshold: float
    resume_window: int
    def __init__(self, model: _Optional[str] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ..., window_ms: _Optional[int] = ..., hop_ms: _Optional[int] = ..., transforms: _Optional[_Iterable[str]] = ..., smoothing_n: _Optional[int] = ..., smoothing_sigma: _Optional[float] = ..., disable_smoothing: _Optional[bool] = ..., interim_results: _Optional[bool] = ..., request_id: _Optional[str] = ..., smoothing_representation: _Optional[str] = ..., threshold: _Optional[float] = ..., resume_window: _Optional[int] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("sequence", "data")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    data: bytes
    def __init__(self, sequence: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class AudioRequest(_message.Message):
    __slots__ = ("config", "chunk")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    chunk: AudioChunk
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., chunk: _Optional[_Union[AudioChunk, _Mapping]] = ...) -> None: ...

class DefendedPrediction(_message.Message):
    __slots__ = ("name", "label", "confidence", "distance")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    label: str
    confidence: float
    distance: float
    def __init__(self, name: _Optional[str] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ..., distance: _Optional[float] = ...) -> None: ...

class SmoothedPrediction(_message.Message):
    __slots__ = ("label", "abstain", "counts", "p_value", "certified_label", "radius", "p_lower", "guaranteed_snr_db", "raw_p_lower")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    CERTIFIED_LABEL_FIELD_NUMBER: _ClassVar[int]
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    P_LOWER_FIELD_NUMBER: _ClassVar[int]
    GUARANTEED_SNR_DB_FIELD_NUMBER: _ClassVar[int]
    RAW_P_LOWER_FIELD_NUMBER: _ClassVar[int]
    label: str
    abstain: bool
    counts: _containers.ScalarMap[str, int]
    p_value: float
    certified_label: str
    radius: float
    p_lower: float
    guaranteed_snr_db: float
    raw_p_lower: float
    def __init__(self, label: _Optional[str] = ..., abstain: _Optional[bool] = ..., counts: _Optional[_Mapping[str, int]] = ..., p_value: _Optional[float] = ..., certified_label: _Optional[str] = ..., radius: _Optional[float] = ..., p_lower: _Optional[float] = ..., guaranteed_snr_db: _Optional[float] = ..., raw_p_lower: _Optional[float] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("request_id", "window_index", "start_sample", "end_sample", "start_s", "end_s", "model", "raw_label", "raw_confidence", "defended", "smoothed", "score", "threshold", "flagged", "reasons", "latency_ms", "is_final", "calibrated", "next_start_sample")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_INDEX_FIELD_NUMBER: _ClassVar[int]
    START_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    END_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    START_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RAW_LABEL_FIELD_NUMBER: _ClassVar[int]
    RAW_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    DEFENDED_FIELD_NUMBER: _ClassVar[int]
    SMOOTHED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    window_index: int
    start_sample: int
    end_sample: int
    start_s: float
    end_s: float
    model: str
    raw_label: str
    raw_confidence: float
    defended: _containers.RepeatedCompositeFieldContainer[DefendedPrediction]
    smoothed: SmoothedPrediction
    score: float
    threshold: float
    flagged: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    latency_ms: float
    is_final: bool
    calibrated: bool
    next_start_sample: int
    def __init__(self, request_id: _Optional[str] = ..., window_index: _Optional[int] = ..., start_sample: _Optional[int] = ..., end_sample: _Optional[int] = ..., start_s: _Optional[float] = ..., end_s: _Optional[float] = ..., model: _Optional[str] = ..., raw_label: _Optional[str] = ..., raw_confidence: _Optional[float] = ..., defended: _Optional[_Iterable[_Union[DefendedPrediction, _Mapping]]] = ..., smoothed: _Optional[_Union[SmoothedPrediction, _Mapping]] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., flagged: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ..., latency_ms: _Optional[float] = ..., is_final: _Optional[bool] = ..., calibrated: _Optional[bool] = ..., next_start_sample: _Optional[int] = ...) -> None: ...

class CheckAudioRequest(_message.Message):
    __slots__ = ("config", "file", "pcm")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    file: bytes
    pcm: bytes
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., file: _Optional[bytes] = ..., pcm: _Optional[bytes] = ...) -> None: ...

class CheckAudioResponse(_message.Message):
    __slots__ = ("verdicts",)
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    def __init__(self, verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ...) -> None: ...

class VideoConfig(_message.Message):
    __slots__ = ("model", "pixel_format", "width", "height", "fps", "clip_frames", "hop_frames", "transforms", "smoothing_n", "smoothing_sigma", "disable_smoothing", "interim_results", "request_id", "smoothing_representation", "threshold", "resume_window")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PIXEL_FORMAT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FRAMES_FIELD_NUMBER: _ClassVar[int]
    HOP_FRAMES_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_N_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_SIGMA_FIELD_NUMBER: _ClassVar[int]
    DISABLE_SMOOTHING_FIELD_NUMBER: _ClassVar[int]
    INTERIM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_REPRESENTATION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RESUME_WINDOW_FIELD_NUMBER: _ClassVar[int]
    model: str
    pixel_format: PixelFormat
    width: int
    height: int
    fps: float
    clip_frames: int
    hop_frames: int
    transforms: _containers.RepeatedScalarFieldContainer[str]
    smoothing_n: int
    smoothing_sigma: float
    disable_smoothing: bool
    interim_results: bool
    request_id: str
    smoothing_representation: str
    threshold: float
    resume_window: int
    def __init__(self, model: _Optional[str] = ..., pixel_format: _Optional[_Union[PixelFormat, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., clip_frames: _Optional[int] = ..., hop_frames: _Optional[int] = ..., transforms: _Optional[_Iterable[str]] = ..., smoothing_n: _Optional[int] = ..., smoothing_sigma: _Optional[float] = ..., disable_smoothing: _Optional[bool] = ..., interim_results: _Optional[bool] = ..., request_id: _Optional[str] = ..., smoothing_representation: _Optional[str] = ..., threshold: _Optional[float] = ..., resume_window: _Optional[int] = ...) -> None: ...

class VideoFrame(_message.Message):
    __slots__ = ("sequence", "data")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    data: bytes
    def __init__(self, sequence: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class VideoRequest(_message.Message):
    __slots__ = ("config", "frame")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    config: VideoConfig
    frame: VideoFrame
    def __init__(self, config: _Optional[_Union[VideoConfig, _Mapping]] = ..., frame: _Optional[_Union[VideoFrame, _Mapping]] = ...) -> None: ...

class CheckVideoRequest(_message.Message):
    __slots__ = ("config", "file")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    config: VideoConfig
    file: bytes
    def __init__(self, config: _Optional[_Union[VideoConfig, _Mapping]] = ..., file: _Optional[bytes] = ...) -> None: ...

class CheckVideoResponse(_message.Message):
    __slots__ = ("verdicts",)
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    verdicts: _containers.RepeatedCompositeFieldContainer[Verdict]
    def __init__(self, verdicts: _Optional[_Iterable[_Union[Verdict, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "modality", "labels", "sample_rate_hz", "window_samples", "threshold", "target_fpr", "measured_fpr", "transforms", "smoothing_n", "smoothing_sigma", "smoothing_representation", "is_default", "frames", "height", "width", "fps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPR_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FPR_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_N_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_SIGMA_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_REPRESENTATION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    modality: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    sample_rate_hz: int
    window_samples: int
    threshold: float
    target_fpr: float
    measured_fpr: float
    transforms: _containers.RepeatedScalarFieldContainer[str]
    smoothing_n: int
    smoothing_sigma: float
    smoothing_representation: str
    is_default: bool
    frames: int
    height: int
    width: int
    fps: float
    def __init__(self, name: _Optional[str] = ..., modality: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., sample_rate_hz: _Optional[int] = ..., window_samples: _Optional[int] = ..., threshold: _Optional[float] = ..., target_fpr: _Optional[float] = ..., measured_fpr: _Optional[float] = ..., transforms: _Optional[_Iterable[str]] = ..., smoothing_n: _Optional[int] = ..., smoothing_sigma: _Optional[float] = ..., smoothing_representation: _Optional[str] = ..., is_default: _Optional[bool] = ..., frames: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., fps: _Optional[float] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
