"""Opus compression as a defence (Opus codec, IETF RFC 6716; Ogg encapsulation, RFC 7845).

At low bit rates Opus codes speech with SILK (linear prediction) or its hybrid SILK/CELT mode,
re-synthesising rather than preserving the waveform, which removes much of an adversarial
perturbation while keeping speech intelligible (Das et al., ADAGIO, ECML-PKDD 2018, for the codec
defence idea).

The round trip uses ``libopus`` in an in-memory Ogg container. The decoder runs at 48 kHz and
drops the ``pre-skip`` samples recorded in the Ogg header; the result is resampled back to the
input rate by a linear-phase polyphase filter with its delay removed, so it stays aligned
(see :mod:`._codec`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from avsentry.pipelines.transforms._codec import CodecRoundTrip
from avsentry.pipelines.transforms.base import check_int


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OpusRoundTrip(CodecRoundTrip):
    """Encode each part of each clip to Opus with ``libopus`` and decode it back.

    Aligned to within a fraction of a sample at 12, 16, 24 and 48 kHz. At 8 kHz the output is
    one sample late: libopus's narrowband path delays one sample more than the look-ahead it
    reports for ``pre-skip`` (measured with the libopus in the PyAV 18 wheels).

    Attributes:
        sample_rate_hz: Input rate in Hz: 8000, 12000, 16000, 24000 or 48000. Default 16000.
        bitrate_kbps: Target bit rate in kbit/s, in [6, 256]. Default 16.
        segments: Parts each clip is cut into and round tripped on its own, in [1, 8].
            Default 2 (see :class:`~._codec.CodecRoundTrip`).
        complexity: libopus encoder complexity, 0 (fastest) to 10 (libopus's default). Default 5:
            20 % less CPU, with the same calibrated threshold and the same detection rate under
            PGD on the digits model (README, "Throughput").

    Example:
        >>> opus = OpusRoundTrip(sample_rate_hz=16000, bitrate_kbps=16)
        >>> out = opus.apply(batch, rng)  # (batch, samples) -> (batch, samples), aligned
    """

    name = "opus"
    codec = "libopus"
    container_format = "ogg"  # pre-skip in the OpusHead header
    min_bitrate_kbps = 6
    max_bitrate_kbps = 256

    bitrate_kbps: int = 16
    complexity: int = 5

    def _check_preset(self) -> None:
        check_int(self.name, "complexity", self.complexity, low=0, high=10)

    def encoder_settings(self) -> Mapping[str, str]:
        return {"compression_level": str(self.complexity)}
