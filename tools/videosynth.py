"""A procedural action-recognition data set: short clips of a shape doing one of ten motions.

UCF101 and its kin cannot be downloaded here, so the default video recognizer learns from clips
this module draws. Every clip is a pure function of ``(seed, index)``: a textured, cluttered
background (low-frequency colour noise, a grating, static distractor shapes), one actor shape
(disk with a notch, square, triangle, bar, cross or L; random colour and size) doing the clip's
action, a random-walk camera shake that moves the whole scene, and sensor noise.

Classes (:data:`ACTIONS`): the actor moves left, right, up or down (1.8 to 4.5 pixels a frame);
rotates clockwise or counter-clockwise (7 to 14 degrees a frame); grows or shrinks; bounces (up
and down with at least one reversal); blinks (disappears and reappears); ``_background_`` is a
scene with its actor standing still (so the presence of a shape is never the cue: the motion is).

Clips are ``(frames, height, width, 3)`` uint8 RGB at 25 fps; :func:`render_batch` draws many at
once with numpy. Training uses seeds from :data:`TRAIN_SEED`, the held-out evaluation the
disjoint :data:`HELDOUT_SEED` stream, and calibration a third (``tools.train_video.CALIBRATION_SEED``),
so held-out clips come from generator seeds never trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ACTIONS: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "grow",
    "shrink",
    "bounce",
    "blink",
    "_background_",
)
SHAPES = ("notched_disk", "square", "triangle", "bar", "cross", "ell")
FRAMES = 16
SIZE = 112
FPS = 25
TRAIN_SEED = 0
HELDOUT_SEED = 1_000_003  # a different generator stream: held-out clips are never trained on
_MARGIN = 12  # background canvas margin for the camera shake


@dataclass(frozen=True, slots=True, kw_only=True)
class ClipSpec:
    """Geometry of the clips (defaults: the default model's input)."""

    frames: int = FRAMES
    height: int = SIZE
    width: int = SIZE

    def __post_init__(self) -> None:
        if self.frames < 4 or self.height < 32 or self.width < 32:
            raise ValueError(f"clips must be at least 4 frames of 32x32, got {self}")


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A ``(h, w, 3)`` float canvas in [0, 1]: smooth colour noise, a grating, clutter."""
    coarse = rng.uniform(0.0, 1.0, (4 + int(rng.integers(0, 5)), 4 + int(rng.integers(0, 5)), 3))
    ys = np.linspace(0, coarse.shape[0] - 1, h)
    xs = np.linspace(0, coarse.shape[1] - 1, w)
    y0 = np.floor(ys).astype(int).clip(0, coarse.shape[0] - 2)
    x0 = np.floor(xs).astype(int).clip(0, coarse.shape[1] - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    c00 = coarse[y0][:, x0]
    c01 = coarse[y0][:, x0 + 1]
    c10 = coarse[y0 + 1][:, x0]
    c11 = coarse[y0 + 1][:, x0 + 1]
    canvas = (1 - fy) * ((1 - fx) * c00 + fx * c01) + fy * ((1 - fx) * c10 + fx * c11)
    contrast = rng.uniform(0.2, 0.7)
    canvas = 0.5 + contrast * (canvas - 0.5)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(6.0, 30.0)
    grating = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    canvas = canvas + rng.uniform(0.0, 0.15) * grating[..., None]
    for _ in range(int(rng.integers(0, 5))):  # static distractors
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(3, 12)
        mask = _shape_mask(SHAPES[int(rng.integers(len(SHAPES)))], yy - cy, xx - cx, r, rng.uniform(0, 6.3))
        canvas = np.where(mask[..., None], rng.uniform(0, 1, 3), canvas)
    return np.clip(canvas, 0.0, 1.0).astype(np.float32)


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float, angle: float) -> np.ndarray:
    """Boolean mask of ``shape`` of size ``radius`` rotated by ``angle`` (radians, clockwise on
    screen) around the origin of the offsets ``dy, dx`` (any broadcastable shapes)."""
    c, s = math.cos(angle), math.sin(angle)
    u = (c * dx + s * dy) / radius  # the shape's own frame
    v = (-s * dx + c * dy) / radius
    if shape == "notched_disk":
        return (u * u + v * v <= 1.0) & ~((u > 0.1) & (np.abs(v) < 0.35 * u + 0.05))
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8) & ~((u > 0.2) & (v > 0.2))
    if shape == "triangle":
        return (v <= 0.6) & (v >= -1.2 + 1.8 * np.abs(u) * 1.0) & (np.abs(u) <= 1.0)
    if shape == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.3)
    if shape == "cross":
        return ((np.abs(u) <= 1.0) & (np.abs(v) <= 0.25)) | (
            (np.abs(v) <= 1.0) & (np.abs(u) <= 0.25) & (v < 0.6)
        )
    if shape == "ell":
        return ((np.abs(u + 0.5) <= 0.3) & (np.abs(v) <= 1.0)) | (
            (np.abs(v - 0.7) <= 0.3) & (np.abs(u) <= 0.8)
        )
    raise ValueError(f"unknown shape {shape!r}")


def _trajectory(action: str, rng: np.random.Generator, spec: ClipSpec) -> dict[str, np.ndarray]:
    """Per-frame centre, angle, radius and visibility of the actor."""
    t = np.arange(spec.frames, dtype=np.float64)
    h, w = spec.height, spec.width
    radius = np.full(spec.frames, rng.uniform(8.0, 16.0))
    angle = rng.uniform(0, 2 * math.pi) + rng.uniform(-0.01, 0.01) * t  # no more than a drift
    visible = np.ones(spec.frames, bool)
    cy0, cx0 = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    drift = rng.normal(0.0, 0.15, 2)
    cy, cx = cy0 + drift[0] * t, cx0 + drift[1] * t
    if action.startswith("move_"):
        speed = rng.uniform(1.8, 4.5)
        travel = speed * (spec.frames - 1)
        axis_y = action in ("move_up", "move_down")
        sign = -1.0 if action in ("move_left", "move_up") else 1.0
        extent = h if axis_y else w
        start = extent / 2 - sign * travel / 2 + rng.uniform(-0.15, 0.15) * extent
        path = start + sign * speed * t
        if axis_y:
            cy = path + drift[0] * t
        else:
            cx = path + drift[1] * t
    elif action.startswith("rotate_"):
        omega = rng.uniform(0.12, 0.25) * (1.0 if action == "rotate_cw" else -1.0)
        angle = angle[0] + omega * t
        radius = np.full(spec.frames, rng.uniform(10.0, 18.0))
    elif action in ("grow", "shrink"):
        rate = rng.uniform(1.045, 1.09)
        r0 = rng.uniform(5.0, 8.0) if action == "grow" else rng.uniform(18.0, 26.0)
        radius = r0 * rate ** (t if action == "grow" else -t)
    elif action == "bounce":
        period = rng.uniform(6.0, 12.0)
        height = rng.uniform(14.0, 26.0)
        phase = rng.uniform(0, period)
        floor = rng.uniform(0.6, 0.8) * h
        cy = floor - height * np.abs(np.sin(math.pi * (t + phase) / period))
    elif action == "blink":
        period = int(rng.integers(4, 9))
        phase = int(rng.integers(0, period))
        on = int(rng.integers(2, period - 1)) if period > 3 else 2
        visible = ((t.astype(int) + phase) % period) < on
    elif action != "_background_":
        raise ValueError(f"unknown action {action!r}")
    return {"cy": cy, "cx": cx, "angle": angle, "radius": radius, "visible": visible}


def render(action: str, seed: int, index: int, spec: ClipSpec | None = None) -> np.ndarray:
    """One clip, ``(frames, height, width, 3)`` uint8 RGB; the same for the same arguments."""
    spec = spec or ClipSpec()
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; known: {', '.join(ACTIONS)}")
    rng = _rng(seed, index)
    h, w, m = spec.height, spec.width, _MARGIN
    canvas = _background(rng, h + 2 * m, w + 2 * m)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = rng.uniform(0, 1, 3)
    while np.abs(colour - canvas.mean(axis=(0, 1))).max() < 0.35:
        colour = rng.uniform(0, 1, 3)
    traj = _trajectory(action, rng, spec)
    shake = np.cumsum(rng.normal(0.0, rng.uniform(0.0, 0.6), (spec.frames, 2)), axis=0)
    shake = np.clip(np.rint(shake), -m, m).astype(int)
    noise = rng.uniform(0.0, 0.04)
    yy, xx = np.mgrid[0 : h + 2 * m, 0 : w + 2 * m].astype(np.float32)
    frames = np.empty((spec.frames, h, w, 3), np.float32)
    for f in range(spec.frames):
        scene = canvas
        if traj["visible"][f]:
            mask = _shape_mask(
                shape, yy - (traj["cy"][f] + m), xx - (traj["cx"][f] + m), traj["radius"][f], traj["angle"][f]
            )
            scene = np.where(mask[..., None], colour.astype(np.float32), canvas)
        oy, ox = m + shake[f, 0], m + shake[f, 1]
        frames[f] = scene[oy : oy + h, ox : ox + w]
    if noise > 0:
        frames += rng.normal(0.0, noise, frames.shape).astype(np.float32)
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def render_batch(
    seed: int, start: int, count: int, spec: ClipSpec | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Clips ``start .. start + count - 1`` of the stream ``seed``; clip ``i`` has action
    ``ACTIONS[i % len(ACTIONS)]``, so any run of ``len(ACTIONS)`` clips is class-balanced.

    Returns:
        ``(count, frames, height, width, 3)`` uint8 clips and ``(count,)`` int64 labels.
    """
    labels = np.arange(start, start + count) % len(ACTIONS)
    clips = np.stack([render(ACTIONS[int(y)], seed, start + k, spec) for k, y in enumerate(labels)])
    return clips, labels.astype(np.int64)
