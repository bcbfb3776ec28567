"""Training-time data augmentation and procedural background audio.

Turns trimmed clips into realistic 1 s windows, with maintained libraries wherever one does the
job:

- placement: the word at a random position, speed perturbation (x0.85-1.15, Ko et al.,
  Interspeech 2015), and, for connected speech, fragments of other words cut by the window edges
  (:func:`place_in_context`);
- speaker: pitch shift (audiomentations ``PitchShift``) here, vocal-tract-length warp and tempo
  change on the spectrogram in :mod:`tools.train`;
- room: impulse responses of simulated shoebox rooms (pyroomacoustics image source method,
  RT60 0.15-0.9 s, random source and microphone positions; a bank made once per process);
- background: babble of real speech (other speakers' recordings, :mod:`tools.realspeech`), and
  white/pink/brown noise at 5-30 dB SNR;
- channel: the telephone round trip (8 kHz, 300-3400 Hz band, then G.711 mu-law or A-law, G.726
  ADPCM or GSM's AMR-NB through FFmpeg's encoders via PyAV, or plain 16-bit), random low-pass, gain.

The ``_background_`` class is made here too: silence, coloured noise, mains hum, tones and clicks.
SpecAugment (Park et al., 2019) masks and Gaussian noise on the features are applied in
:mod:`tools.train`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

from avsentry.pipelines.transforms._codec import round_trip

SAMPLE_RATE_HZ = 16_000


_NOISE_BANK_ROWS = 256
_NOISE_ALPHA = {"white": 0.0, "pink": 1.0, "brown": 2.0}


@lru_cache(maxsize=8)
def _noise_bank(n: int, colour: str) -> np.ndarray:
    """``(_NOISE_BANK_ROWS, n)`` unit-RMS rows of 1/f^a noise, made once per length and colour
    from a fixed seed. Each row is one period of an inverse real FFT, so any circular shift of
    it is another draw with exactly the same spectrum."""
    alpha = _NOISE_ALPHA[colour]
    rng = np.random.default_rng([n, int(alpha)])
    spec = np.fft.rfft(rng.standard_normal((_NOISE_BANK_ROWS, n)), axis=1)
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    x = np.fft.irfft(spec / f ** (alpha / 2), n, axis=1)
    x /= np.sqrt(np.mean(x**2, axis=1, keepdims=True)) + 1e-12
    bank = x.astype(np.float32)
    bank.flags.writeable = False
    return bank


def coloured_noise(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """Unit-RMS noise with a 1/f^a spectrum: white (a=0), pink (a=1), brown (a=2).

    A random row of a per-length bank (:func:`_noise_bank`), circularly shifted and signed at
    random: no FFT per call, which made noise the largest cost of a training batch.
    """
    if colour not in _NOISE_ALPHA:
        raise ValueError(f"noise colour must be one of {sorted(_NOISE_ALPHA)}, got {colour!r}")
    row = _noise_bank(n, colour)[rng.integers(_NOISE_BANK_ROWS)]
    return np.roll(row, int(rng.integers(n))) * np.float32(rng.choice((-1.0, 1.0)))


@lru_cache(maxsize=256)
def _lowpass(cutoff_hz: int) -> np.ndarray:
    return butter(4, cutoff_hz, btype="low", fs=SAMPLE_RATE_HZ, output="sos")


def background(rng: np.random.Generator, n: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """One window of non-speech: silence, noise, hum, tones or clicks, at a random level."""
    t = np.arange(n) / SAMPLE_RATE_HZ
    kind = rng.choice(["silence", "noise", "noise", "hum", "tones", "clicks"])
    if kind == "silence":
        return (rng.standard_normal(n) * 10 ** rng.uniform(-5, -3.5)).astype(np.float32)
    if kind == "noise":
        x = coloured_noise(rng, n, str(rng.choice(["white", "pink", "brown"])))
    elif kind == "hum":
        f0 = rng.choice([50.0, 60.0]) * rng.uniform(0.98, 1.02)
        x = sum(
            rng.uniform(0.1, 1) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3))
            for k in range(1, 8)
        )
        x = np.asarray(x) + 0.05 * coloured_noise(rng, n, "pink")
    elif kind == "tones":
        x = np.zeros(n)
        for _ in range(rng.integers(1, 4)):
            f = rng.uniform(200, 4000)
            start, dur = rng.integers(0, n), rng.integers(n // 20, n)
            seg = np.sin(2 * np.pi * f * t[: max(0, min(dur, n - start))])
            x[start : start + len(seg)] += seg
        x += 0.05 * coloured_noise(rng, n, "white")
    else:  # clicks
        x = 0.02 * coloured_noise(rng, n, "pink")
        for pos in rng.integers(0, n - 200, size=rng.integers(1, 12)):
            x[pos : pos + 200] += (
                rng.uniform(0.2, 1) * np.exp(-np.arange(200) / rng.uniform(5, 40)) * rng.standard_normal(200)
            )
    x = np.asarray(x, dtype=np.float32)
    peak = float(np.max(np.abs(x))) + 1e-9
    return x / peak * 10 ** rng.uniform(-3, -0.1)


def place(
    rng: np.random.Generator, clip: np.ndarray, n: int = SAMPLE_RATE_HZ, *, speed: bool = True
) -> np.ndarray:
    """Speed-perturb ``clip`` and put it at a random position in an ``n``-sample window.

    Clips longer than the window (phrases) contribute a random ``n``-sample crop.
    """
    if speed:
        factor = rng.uniform(0.85, 1.15)
        m = max(2, int(round(len(clip) / factor)))
        clip = np.interp(np.linspace(0, len(clip) - 1, m), np.arange(len(clip)), clip).astype(np.float32)
    out = np.zeros(n, dtype=np.float32)
    if len(clip) >= n:
        start = rng.integers(0, len(clip) - n + 1)
        out[:] = clip[start : start + n]
    else:
        start = rng.integers(0, n - len(clip) + 1)
        out[start : start + len(clip)] = clip
    return out


def place_in_context(
    rng: np.random.Generator,
    clip: np.ndarray,
    neighbours: Sequence[np.ndarray],
    n: int = SAMPLE_RATE_HZ,
    *,
    gap_s: tuple[float, float] = (0.05, 0.3),
) -> np.ndarray:
    """The word of ``clip`` whole inside the window, with the end of a word before it and the start
    of a word after it cut by the window edges, as in a stream of connected words ("two nine
    three"): the window's label stays the whole word's. ``neighbours``: two clips (previous,
    next); each is left out when there is no room for a pause and some of it."""
    word = place(rng, clip, n)[:n]
    nz = np.flatnonzero(np.abs(word) > 1e-4)
    if nz.size == 0:
        return word
    lo, hi = int(nz[0]), int(nz[-1]) + 1
    out = word.copy()
    prev, nxt = neighbours
    gap = int(rng.uniform(*gap_s) * SAMPLE_RATE_HZ)
    room = lo - gap
    if room > SAMPLE_RATE_HZ // 20 and len(prev):
        tail = prev[-room:] if len(prev) >= room else prev
        out[room - len(tail) : room] += tail * rng.uniform(0.5, 1.5)
    gap = int(rng.uniform(*gap_s) * SAMPLE_RATE_HZ)
    start = hi + gap
    if n - start > SAMPLE_RATE_HZ // 20 and len(nxt):
        head = nxt[: n - start]
        out[start : start + len(head)] += head * rng.uniform(0.5, 1.5)
    return out


@lru_cache(maxsize=4)
def room_impulse_responses(count: int = 96, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``count`` room impulse responses at 16 kHz, unit energy, from shoebox rooms simulated by
    pyroomacoustics' image source method (randomised image positions against sweeping echoes):
    rooms 2.5-10 m x 2.5-8 m x 2.3-4 m, RT60 0.15-0.9 s (wall absorption by Sabine's formula),
    source and microphone at random places at least 0.5 m from the walls. Made once per process
    (about 2 ms each)."""
    import pyroomacoustics as pra

    rng = np.random.default_rng([seed, 11])
    out: list[np.ndarray] = []
    while len(out) < count:
        dims = np.array([rng.uniform(2.5, 10), rng.uniform(2.5, 8), rng.uniform(2.3, 4)])
        rt60 = rng.uniform(0.15, 0.9)
        try:
            absorption, max_order = pra.inverse_sabine(rt60, dims)
        except ValueError:  # RT60 unreachable in so small a room
            continue
        room = pra.ShoeBox(
            dims,
            fs=SAMPLE_RATE_HZ,
            materials=pra.Material(absorption),
            max_order=min(max_order, 17),
            use_rand_ism=True,
            max_rand_disp=0.05,
        )
        room.add_source(rng.uniform(0.5, dims - 0.5))
        room.add_microphone(rng.uniform(0.5, dims - 0.5))
        room.compute_rir()
        ir = np.asarray(room.rir[0][0], dtype=np.float64)
        ir = ir[int(np.argmax(np.abs(ir))) :]  # the direct path at 0: no added delay
        out.append((ir / np.sqrt(np.sum(ir**2))).astype(np.float32))
    return tuple(out)


@lru_cache(maxsize=1)
def _pitch_shift():  # noqa: ANN202 - audiomentations is a training-only dependency
    from audiomentations import PitchShift

    return PitchShift(min_semitones=-3.0, max_semitones=3.0, p=1.0)


def pitch_shift(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Random pitch shift of +-3 semitones (formants move with it, like another speaker's), by
    audiomentations. Its draws come from Python's ``random``, seeded here from ``rng``."""
    random.seed(int(rng.integers(2**63)))
    return _pitch_shift()(x, sample_rate=SAMPLE_RATE_HZ).astype(np.float32)


# FFmpeg encoders of telephone codecs: (encoder, container, bit rate in bit/s), all at 8 kHz.
TELEPHONE_CODECS = {
    "g711-mulaw": ("pcm_mulaw", "wav", 64_000),
    "g711-alaw": ("pcm_alaw", "wav", 64_000),
    "g726": ("g726", "wav", 32_000),
    "amr-nb": ("libopencore_amrnb", "amr", 12_200),
    "amr-nb-4.75": ("libopencore_amrnb", "amr", 4_750),
}

_TELEPHONE_DRAW = (
    "g711-mulaw",
    "g711-alaw",
    "g711-mulaw",
    "g711-alaw",
    "g726",
    "amr-nb",
    "amr-nb-4.75",
    "pcm",
)


def telephone(rng: np.random.Generator, x: np.ndarray, codec: str | None = None) -> np.ndarray:
    """The telephone round trip of 16 kHz audio, one clip ``(samples,)`` or a batch ``(batch,
    samples)``: down to 8 kHz (polyphase anti-alias filter), a 300-3400 Hz band-pass with its
    edges drawn +-100 Hz, a telephone codec through PyAV (``codec``: a key of
    :data:`TELEPHONE_CODECS`, ``"pcm"`` for none; default drawn: G.711 mu-law or A-law half of
    the time, else G.726 ADPCM, the GSM AMR-NB codec at 12.2 or 4.75 kbit/s, or none), back to
    16 kHz. A batch shares one draw and goes through the codec as one stream (one encoder call
    instead of one a row; a codec with look-ahead lets a few ms of a row reach the next)."""
    rows = np.atleast_2d(np.asarray(x, dtype=np.float32))
    n = rows.shape[1]
    nb = resample_poly(rows, 1, 2, axis=1).astype(np.float32)
    low, high = 300 + rng.uniform(-100, 100), 3400 + rng.uniform(-100, 100)
    nb = sosfilt(_band(int(low) // 50 * 50, int(high) // 50 * 50), nb, axis=1).astype(np.float32)
    if codec is None:
        codec = str(rng.choice(_TELEPHONE_DRAW))
    if codec != "pcm":
        name, container, bit_rate = TELEPHONE_CODECS[codec]
        flat = round_trip(
            nb.reshape(-1), codec=name, container_format=container, sample_rate_hz=8000, bit_rate_bps=bit_rate
        )
        nb = flat.reshape(nb.shape)
    out = resample_poly(nb, 2, 1, axis=1)[:, :n].astype(np.float32)
    return out.reshape(np.shape(x))


@lru_cache(maxsize=64)
def _band(low_hz: int, high_hz: int) -> np.ndarray:
    return butter(4, [low_hz, high_hz], btype="band", fs=8000, output="sos")


def degrade(
    rng: np.random.Generator,
    batch: np.ndarray,
    *,
    noise_prob: float = 0.7,
    babble: Sequence[np.ndarray] = (),
    babble_prob: float = 0.25,
    telephone_prob: float = 0.35,
    pitch_prob: float = 0.2,
    reverb_prob: float = 0.35,
) -> np.ndarray:
    """Speaker, room, background and channel effects on a ``(batch, samples)`` window batch;
    returns a new array. ``babble``: real speech clips mixed in behind the word (none: no
    babble)."""
    x = batch.copy()
    b, n = x.shape
    rooms = room_impulse_responses() if reverb_prob > 0 else ()
    for i in range(b):
        if rng.random() < pitch_prob:
            x[i] = pitch_shift(rng, x[i])
        peak = np.max(np.abs(x[i])) + 1e-9
        x[i] *= 10 ** rng.uniform(-1.6, -0.05) / peak
        if rooms and rng.random() < reverb_prob:
            ir = rooms[int(rng.integers(len(rooms)))]
            wet = fftconvolve(x[i], ir)[:n]
            x[i] = wet * np.max(np.abs(x[i])) / (np.max(np.abs(wet)) + 1e-9)
        sig = np.sqrt(np.mean(x[i] ** 2)) + 1e-9
        if len(babble) and rng.random() < babble_prob:
            for _ in range(int(rng.integers(1, 4))):
                other = babble[int(rng.integers(len(babble)))]
                crop = place(rng, other, n, speed=False)
                level = np.sqrt(np.mean(crop**2)) + 1e-9
                x[i] += crop * sig / level / 10 ** (rng.uniform(8, 25) / 20)
        if rng.random() < noise_prob:
            snr_db = rng.uniform(5, 30)
            x[i] += (
                coloured_noise(rng, n, str(rng.choice(["white", "pink", "brown"])))
                * sig
                / 10 ** (snr_db / 20)
            )
    r = rng.random(b)
    phone = np.flatnonzero(r < telephone_prob)
    codecs = rng.choice(_TELEPHONE_DRAW, size=len(phone))
    for codec in np.unique(codecs):  # one codec stream for all the rows that drew it
        rows = phone[codecs == codec]
        x[rows] = telephone(rng, np.clip(x[rows], -1, 1), codec=str(codec))
    for k in np.flatnonzero((r >= telephone_prob) & (r < telephone_prob + 0.15)):
        cutoff_hz = 50 * int(rng.uniform(2000, 7000) / 50)  # designs cached on a 50 Hz grid
        x[k] = sosfilt(_lowpass(cutoff_hz), x[k])
    return np.clip(x, -1, 1, out=x)
