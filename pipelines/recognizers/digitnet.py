"""DigitNet: the default keyword recognizer (raw waveform in, logits out).

A log-mel front end (torchaudio ``Spectrogram`` + ``MelScale``) inside the module, so gradients
flow from the logits back to the samples, followed by a small temporal-convolution residual
network in the spirit of TC-ResNet (Choi et al., Interspeech 2019): mel bins are channels and
convolutions run over time only, which keeps it to a few million multiply-adds per 1 s window.

The network is split into stages so randomized smoothing can add noise in any of three
representations: ``waveform`` (batch, samples), ``spectrogram`` (magnitude, (batch, freqs,
frames)) and ``logmel`` (normalized log-mel energies, (batch, mels, frames)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchaudio
from torch import nn

from avsentry.pipelines.levels import gain_normalize

REPRESENTATIONS = ("waveform", "spectrogram", "logmel")


@dataclass(frozen=True, slots=True, kw_only=True)
class DigitNetConfig:
    """Architecture hyper-parameters (stored in the model card)."""

    n_classes: int = 12
    sample_rate_hz: int = 16_000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 40
    f_min_hz: float = 20.0
    f_max_hz: float = 7_600.0
    channels: tuple[int, ...] = (64, 64, 96, 128)
    kernel_size: int = 5
    dropout: float = 0.1
    # Automatic gain control: each window is scaled to this RMS before the spectrogram (windows
    # quieter than levels.LEVEL_FLOOR are scaled by agc_rms / LEVEL_FLOOR), so the label does not
    # depend on loudness: the raw window and the level-normalized copies that waveform_rms smoothing plays
    # are heard alike. None: no AGC (models before v4).
    agc_rms: float | None = None

    def __post_init__(self) -> None:
        if self.n_classes < 2:
            raise ValueError("n_classes must be >= 2")
        if self.agc_rms is not None and not 0 < self.agc_rms <= 1:
            raise ValueError("agc_rms must be in (0, 1]")
        if len(self.channels) < 2:
            raise ValueError("channels needs a stem width and at least one block")
        if self.kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DigitNetConfig:  # cards before v4 have no agc_rms
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class _Residual1d(nn.Module):
    def __init__(self, c_in: int, c_out: int, k: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False),
            nn.BatchNorm1d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv1d(c_out, c_out, k, padding=k // 2, bias=False),
            nn.BatchNorm1d(c_out),
        )
        self.skip: nn.Module = (
            nn.Identity()
            if c_in == c_out and stride == 1
            else nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm1d(c_out))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class DigitNet(nn.Module):
    """Waveform -> logits keyword classifier with an internal log-mel front end.

    Input ``(batch, samples)`` float32 in [-1, 1] at ``sample_rate_hz``; output
    ``(batch, n_classes)`` logits.
    """

    feat_mean: torch.Tensor
    feat_std: torch.Tensor

    def __init__(self, config: DigitNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or DigitNetConfig()
        self.config = cfg
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length, power=1.0
        )
        self.mel = torchaudio.transforms.MelScale(
            n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate_hz,
            f_min=cfg.f_min_hz,
            f_max=cfg.f_max_hz,
            n_stft=cfg.n_fft // 2 + 1,
        )
        # Per-mel-bin normalisation of log energies, fitted on training data (see tools.train).
        self.register_buffer("feat_mean", torch.zeros(cfg.n_mels, 1))
        self.register_buffer("feat_std", torch.ones(cfg.n_mels, 1))
        c = cfg.channels
        self.stem = nn.Sequential(
            nn.Conv1d(cfg.n_mels, c[0], 3, padding=1, bias=False),
            nn.BatchNorm1d(c[0]),
            nn.ReLU(inplace=True),
        )
        self.blocks = nn.Sequential(
            *[_Residual1d(c[i], c[i + 1], cfg.kernel_size, stride=2) for i in range(len(c) - 1)]
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * c[-1], cfg.n_classes)

    # -- stages ---------------------------------------------------------------------------
    def magnitude(self, wave: torch.Tensor) -> torch.Tensor:
        """``(batch, samples)`` -> magnitude spectrogram ``(batch, n_fft/2+1, frames)``.

        When a gradient is wanted, ``|X|`` is computed as ``sqrt(max(re^2 + im^2, 1e-30))``:
        the same values (up to 1e-15 where a bin is exactly zero, e.g. in zero padding), but a
        gradient of 0 there instead of the NaN of ``abs`` on a complex zero, which would poison
        a white-box attack's whole clip. Without a gradient (inference, ONNX export) it is the
        plain spectrogram.

        With ``config.agc_rms`` the window is first scaled to that RMS
        (:func:`avsentry.pipelines.levels.gain_normalize`).
        """
        if self.config.agc_rms is not None:
            wave = gain_normalize(wave, self.config.agc_rms)
        if not (torch.is_grad_enabled() and wave.requires_grad):
            return self.spectrogram(wave)
        s = self.spectrogram
        spec = torchaudio.functional.spectrogram(
            wave,
            pad=s.pad,
            window=s.window,
            n_fft=s.n_fft,
            hop_length=s.hop_length,
            win_length=s.win_length,
            power=None,
            normalized=s.normalized,
            center=s.center,
            pad_mode=s.pad_mode,
            onesided=s.onesided,
        )
        return torch.view_as_real(spec).pow(2).sum(-1).clamp_min(1e-30).sqrt()

    def logmel_from_magnitude(self, mag: torch.Tensor) -> torch.Tensor:
        """Magnitude -> normalized log-mel ``(batch, n_mels, frames)`` (power mel, log, z-score)."""
        mel = self.mel(mag.clamp_min(0.0) ** 2)
        return (torch.log(mel + 1e-6) - self.feat_mean) / self.feat_std

    def logmel(self, wave: torch.Tensor) -> torch.Tensor:
        return self.logmel_from_magnitude(self.magnitude(wave))

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        """Normalized log-mel ``(batch, n_mels, frames)`` -> logits ``(batch, n_classes)``."""
        h = self.blocks(self.stem(feats))
        h = torch.cat([h.mean(dim=-1), h.amax(dim=-1)], dim=1)
        return self.head(self.dropout(h))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.classify(self.logmel(wave))

    # -- representation API used by randomized smoothing -----------------------------------
    def encode(self, wave: torch.Tensor, representation: str) -> torch.Tensor:
        """Map waveforms into ``representation`` (one of :data:`REPRESENTATIONS`)."""
        if representation == "waveform":
            return wave
        if representation == "spectrogram":
            return self.magnitude(wave)
        if representation == "logmel":
            return self.logmel(wave)
        raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")

    def logits_from(self, z: torch.Tensor, representation: str) -> torch.Tensor:
        """Logits for inputs already in ``representation``."""
        if representation == "waveform":
            return self.forward(z)
        if representation == "spectrogram":
            return self.classify(self.logmel_from_magnitude(z))
        if representation == "logmel":
            return self.classify(z)
        raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS}")
