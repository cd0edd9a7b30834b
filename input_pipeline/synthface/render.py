"""Procedural frontal-face renderer: identity parameters + AU intensities -> RGB image.

Everything is drawn with Pillow on a supersampled canvas and box-downsampled, so the output is
anti-aliased and a pure function of its inputs (same inputs => same pixels). Coordinates are
"normalised face coordinates": x to the right, y down, both in [0, 1] over the square image
*before* the nuisance transform (roll, scale, shift). ``AU_REGIONS`` gives, for every rendered
AU, the boxes in those coordinates where its appearance change happens; the relevance-heatmap
work and the tests reuse them.

AU intensities are floats on the FACS 0–5 scale (A=1 … E=5); each AU's change grows smoothly
with its intensity. The AUs drawn are ``AUS``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

# AUs the renderer draws, in the order of every AU vector in this package.
AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 20, 23, 24, 25, 26)
AU_INDEX: dict[int, int] = {au: i for i, au in enumerate(AUS)}

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), normalised face coordinates.

# Where each AU changes the face (normalised, un-jittered face coordinates; generous enough to
# hold for every identity the sampler draws).
AU_REGIONS: dict[int, tuple[Box, ...]] = {
  1: ((0.30, 0.20, 0.70, 0.43),),  # inner brows, mid forehead
  2: ((0.10, 0.22, 0.90, 0.44),),  # outer brows, lateral forehead
  4: ((0.14, 0.28, 0.86, 0.47),),  # brows, glabella
  5: ((0.18, 0.37, 0.82, 0.52),),  # upper lids
  6: ((0.10, 0.40, 0.90, 0.64),),  # lower lids, crow's feet, cheeks
  7: ((0.18, 0.37, 0.82, 0.52),),  # lids
  9: ((0.33, 0.40, 0.67, 0.72),),  # nose bridge, nostrils, upper lip
  10: ((0.24, 0.53, 0.76, 0.78),),  # upper lip, nasolabial furrow
  11: ((0.22, 0.53, 0.78, 0.80),),  # nasolabial furrow
  12: ((0.20, 0.58, 0.80, 0.84),),  # lip corners, cheeks beside mouth
  14: ((0.24, 0.60, 0.76, 0.82),),  # lip corners, dimples
  15: ((0.24, 0.62, 0.76, 0.86),),  # lip corners, marionette lines
  16: ((0.28, 0.64, 0.72, 0.88),),  # lower lip
  17: ((0.28, 0.64, 0.72, 0.97),),  # lower lip, chin
  20: ((0.18, 0.60, 0.82, 0.84),),  # mouth
  23: ((0.24, 0.60, 0.76, 0.84),),  # lips
  24: ((0.24, 0.60, 0.76, 0.86),),  # lips, skin bulges around them
  25: ((0.26, 0.62, 0.74, 0.86),),  # lips apart
  26: ((0.12, 0.62, 0.88, 1.00),),  # jaw, chin, lower lip
}

_SKIN = np.array(
  [
    (255, 226, 200),
    (242, 198, 170),
    (226, 174, 140),
    (198, 138, 100),
    (160, 104, 72),
    (110, 72, 50),
  ],
  np.float64,
)
_HAIR = np.array(
  [(28, 24, 22), (62, 42, 30), (108, 72, 42), (205, 170, 105), (140, 62, 32), (158, 156, 152)],
  np.float64,
)
_IRIS = np.array(
  [(90, 60, 35), (45, 30, 20), (70, 110, 165), (80, 120, 80), (125, 95, 50)], np.float64
)
HAIR_STYLES = ("bald", "short", "fringe", "side", "long", "curly", "bun")


@dataclasses.dataclass(frozen=True)
class Identity:
  """Everything that makes a person look like themselves (stable across frames)."""

  head_w: float  # half width of the head at cheekbone level
  head_top: float  # y of the top of the skull
  chin_y: float  # y of the chin
  jaw_w: float  # jaw-angle width as a fraction of head_w
  skin: tuple[int, int, int]
  hair_style: str
  hair_color: tuple[int, int, int]
  hairline: float  # y of the hairline at the centre
  eye_y: float
  eye_dx: float  # half distance between eye centres
  eye_w: float  # half width of an eye
  eye_h: float  # half opening of an eye at rest
  eye_tilt: float  # outer corner up (+) or down (-)
  iris: tuple[int, int, int]
  brow_off: float  # brow height above the eye centre
  brow_thick: float
  brow_arch: float
  brow_color: tuple[int, int, int]
  nose_y: float
  nose_w: float
  mouth_y: float
  mouth_w: float  # half width of the mouth
  lip_up: float  # upper lip thickness
  lip_lo: float  # lower lip thickness
  lip_color: tuple[int, int, int]
  glasses: int  # 0 none, 1 round, 2 rectangular
  glasses_color: tuple[int, int, int]
  bg: tuple[int, int, int]
  bg2: tuple[int, int, int]
  bg_texture: int  # 0 plain, 1 stripes, 2 diagonal, 3 checker, 4 gradient, 5 blobs
  bg_phase: float
  shirt: tuple[int, int, int]
  ear: float
  blush: float
  # In-the-wild extras, drawn only when set (SynthFace-Captions); the defaults keep every
  # BP4D-like and RAF-like image as it was.
  age: float = 0.0  # 0 young .. 1 old: faint age lines (forehead, nasolabial folds)
  earrings: int = 0  # 0 none, 1 studs, 2 hoops


@dataclasses.dataclass(frozen=True)
class Nuisance:
  """Per-image nuisance. ``noise_seed`` makes the sensor noise a function of the image."""

  roll: float = 0.0  # degrees
  scale: float = 1.0
  shift: tuple[float, float] = (0.0, 0.0)  # fraction of the image
  yaw: float = 0.0  # -1..1, a cheap out-of-plane turn
  gain: float = 1.0
  gradient: float = 0.0  # strength of a linear lighting gradient
  gradient_angle: float = 0.0
  tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
  noise: float = 0.0  # std of Gaussian pixel noise, in grey levels
  noise_seed: int = 0


NO_NUISANCE = Nuisance()


def _mix(a, b, t: float) -> tuple[int, int, int]:
  """Colour ``a`` moved a fraction ``t`` towards colour ``b``."""
  return tuple(
    min(255, max(0, int(round(float(x) + (float(y) - float(x)) * t)))) for x, y in zip(a, b)
  )


def _palette(pal: np.ndarray, t: float) -> np.ndarray:
  t = float(np.clip(t, 0, 1)) * (len(pal) - 1)
  i = min(int(t), len(pal) - 2)
  return pal[i] + (pal[i + 1] - pal[i]) * (t - i)


def _jitter(rng: np.random.Generator, col, amount: float) -> tuple[int, int, int]:
  c = np.asarray(col, np.float64) + rng.normal(0, amount, 3)
  return tuple(int(v) for v in np.clip(np.round(c), 0, 255))


def sample_identity(rng: np.random.Generator, sex: str, wild: bool = False) -> Identity:
  """Draws one identity. ``sex`` in {'F', 'M'} shifts hair and face-shape odds a little.

  ``wild`` (RAF-like) widens the background and colour variation.
  """
  if sex not in ("F", "M"):
    raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
  u = rng.uniform
  skin_t = rng.beta(1.4, 1.8)
  skin = _jitter(rng, _palette(_SKIN, skin_t), 6)
  if sex == "F":
    style = HAIR_STYLES[rng.choice(7, p=[0.02, 0.12, 0.2, 0.14, 0.32, 0.1, 0.1])]
  else:
    style = HAIR_STYLES[rng.choice(7, p=[0.14, 0.38, 0.12, 0.18, 0.06, 0.12, 0.0])]
  hair_i = rng.choice(6, p=[0.3, 0.27, 0.17, 0.1, 0.07, 0.09])
  hair = _jitter(rng, _HAIR[hair_i], 8)
  head_w = u(0.27, 0.325) - (0.01 if sex == "F" else 0.0)
  eye_y = u(0.44, 0.475)
  brow_color = _mix(hair, (30, 25, 20), 0.45 if hair_i in (3, 5) else 0.2)
  lip_base = _mix(skin, (175, 65, 80), u(0.35, 0.6))
  bg_hue = rng.uniform(0, 1)
  bg = _hsv(bg_hue, u(0.1, 0.7 if wild else 0.55), u(0.3, 0.95))
  bg2 = _hsv((bg_hue + u(-0.3, 0.3)) % 1, u(0.1, 0.8), u(0.2, 1.0))
  return Identity(
    head_w=head_w,
    head_top=u(0.11, 0.165),
    chin_y=u(0.86, 0.915),
    jaw_w=u(0.6, 0.86) + (0.04 if sex == "M" else 0.0),
    skin=skin,
    hair_style=style,
    hair_color=hair,
    hairline=u(0.23, 0.27),
    eye_y=eye_y,
    eye_dx=u(0.105, 0.135),
    eye_w=u(0.05, 0.064),
    eye_h=u(0.017, 0.024),
    eye_tilt=u(-0.006, 0.01),
    iris=_jitter(rng, _IRIS[rng.integers(len(_IRIS))], 10),
    brow_off=u(0.068, 0.085),
    brow_thick=u(0.009, 0.02) + (0.004 if sex == "M" else 0.0),
    brow_arch=u(0.0, 0.018),
    brow_color=brow_color,
    nose_y=u(0.585, 0.625),
    nose_w=u(0.036, 0.054),
    mouth_y=u(0.705, 0.735),
    mouth_w=u(0.075, 0.098),
    lip_up=u(0.011, 0.018),
    lip_lo=u(0.014, 0.024),
    lip_color=lip_base,
    glasses=int(rng.choice(3, p=[0.72, 0.14, 0.14])),
    glasses_color=_jitter(rng, [(20, 20, 20), (90, 60, 30), (150, 150, 160)][rng.integers(3)], 10),
    bg=bg,
    bg2=bg2,
    bg_texture=int(rng.integers(6)),
    bg_phase=u(0, 1),
    shirt=_hsv(u(0, 1), u(0.1, 0.8), u(0.2, 0.9)),
    ear=u(0.8, 1.15),
    blush=u(0.0, 1.0),
  )


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
  i = int(h * 6) % 6
  f = h * 6 - int(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
  return (int(r * 255), int(g * 255), int(b * 255))


def au_vector(aus: Mapping[int, float] | Sequence[float] | np.ndarray) -> np.ndarray:
  """AU intensities as a float64 vector ordered like ``AUS``; accepts a {AU: intensity} dict."""
  if isinstance(aus, Mapping):
    v = np.zeros(len(AUS))
    for au, x in aus.items():
      if au not in AU_INDEX:
        raise KeyError(f"AU{au} is not rendered; rendered AUs: {AUS}")
      v[AU_INDEX[au]] = x
  else:
    v = np.asarray(aus, np.float64)
    if v.shape != (len(AUS),):
      raise ValueError(f"AU vector must have shape ({len(AUS)},) ordered as {AUS}, got {v.shape}")
  if np.any(v < 0) or np.any(v > 5):
    raise ValueError(f"AU intensities must lie in [0, 5], got {v}")
  return v


def _curve(p0, p1, p2, n: int = 9) -> np.ndarray:
  """[n, 2] quadratic Bezier that passes through p1 at its middle."""
  p0, p1, p2 = (np.asarray(p, np.float64) for p in (p0, p1, p2))
  c = 2 * p1 - (p0 + p2) / 2
  t = np.linspace(0, 1, n)[:, None]
  return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t**2 * p2


def _catmull(points: np.ndarray, n: int = 6, closed: bool = True) -> np.ndarray:
  """Smooth closed (or open) curve through ``points`` [K, 2] -> [K*n, 2]."""
  p = np.asarray(points, np.float64)
  ext = np.concatenate([p[-1:], p, p[:2]] if closed else [p[:1], p, p[-1:]])
  k = len(ext) - 3
  seg = np.stack([ext[i : i + k] for i in range(4)], 1)  # [k, 4, 2]
  out = np.einsum("tj,kjd->ktd", _catmull_basis(n), seg).reshape(-1, 2)
  return out if closed else np.concatenate([out, p[-1:]])


@functools.lru_cache(maxsize=8)
def _catmull_basis(n: int) -> np.ndarray:
  """[n, 4] Catmull-Rom weights of the four control points at n steps."""
  t = np.linspace(0, 1, n, endpoint=False)
  return 0.5 * np.stack(
    [-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -(t**2) + t**3], 1
  )


class _Painter:
  """Scales normalised coordinates to the canvas and wraps ImageDraw calls."""

  def __init__(self, canvas: int, bg):
    self.c = canvas
    self.im = Image.new("RGB", (canvas, canvas), bg)
    self.d = ImageDraw.Draw(self.im, "RGBA")

  def pts(self, p) -> list[float]:
    return (np.asarray(p, np.float64) * self.c).ravel().tolist()

  def w(self, frac: float) -> int:
    return max(1, int(round(frac * self.c)))

  def poly(self, p, fill):
    self.d.polygon(self.pts(p), fill=fill)

  def line(self, p, fill, width: float):
    self.d.line(self.pts(p), fill=fill, width=self.w(width), joint="curve")

  def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width: float = 0.0):
    c = self.c
    self.d.ellipse(
      [(cx - rx) * c, (cy - ry) * c, (cx + rx) * c, (cy + ry) * c],
      fill=fill,
      outline=outline,
      width=self.w(width) if outline is not None else 0,
    )


def _rgba(col, alpha: float) -> tuple[int, int, int, int]:
  return (int(col[0]), int(col[1]), int(col[2]), min(255, max(0, int(alpha))))


def _background(p: _Painter, ident: Identity):
  t, b2 = ident.bg_texture, ident.bg2
  ph = ident.bg_phase
  if t == 1:
    for k in range(-1, 8):
      x = (k + ph) / 7
      p.poly([(x, 0), (x + 0.07, 0), (x + 0.07, 1), (x, 1)], _rgba(b2, 120))
  elif t == 2:
    for k in range(-8, 8):
      x = (k + ph) / 5
      p.poly([(x, 0), (x + 0.08, 0), (x + 1.08, 1), (x + 1, 1)], _rgba(b2, 110))
  elif t == 3:
    for i in range(6):
      for j in range(6):
        if (i + j) % 2:
          p.poly(
            [
              (i / 6, j / 6),
              ((i + 1) / 6, j / 6),
              ((i + 1) / 6, (j + 1) / 6),
              (i / 6, (j + 1) / 6),
            ],
            _rgba(b2, 90),
          )
  elif t == 4:
    for k in range(8):
      p.poly([(0, k / 8), (1, k / 8), (1, (k + 1) / 8), (0, (k + 1) / 8)], _rgba(b2, 20 * k))
  elif t == 5:
    rs = np.random.default_rng(int(ph * 1e6))
    for _ in range(7):
      p.ellipse(
        rs.uniform(0, 1), rs.uniform(0, 1), r := rs.uniform(0.05, 0.2), r, fill=_rgba(b2, 130)
      )


def visibility(x: float) -> float:
  """How much of an AU's full appearance change shows at intensity ``x`` (0–5) -> [0, 1].

  Continuous and increasing: linear in ``x`` plus a steep (but smooth) step around 1.5, the
  boundary between FACS trace (A) and slight (B) evidence, i.e. where occurrence starts
  (intensity code ≥ 2). Trace AUs are faint (≤ 0.12 below 1.3), an AU coded as occurring is
  clearly there (≥ 0.74 from 1.7 on), B–E differ by degree.
  """
  return 0.35 * x / 5.0 + 0.65 / (1.0 + math.exp(-(x - 1.5) / 0.06))


def _au(a: np.ndarray, au: int) -> float:
  """Visible fraction of ``au``'s change, in [0, 1]."""
  x = float(a[AU_INDEX[au]])
  return visibility(x) if x > 0 else 0.0


def _yaw_map(yaw: float, cx: float = 0.5):
  """Cheap yaw: x -> x squashed towards the turned side and shifted by depth."""

  def fx(x, depth: float = 1.0):
    return cx + (np.asarray(x) - cx) * (1 - 0.12 * abs(yaw)) + 0.05 * yaw * depth

  return fx


def _draw_face(p: _Painter, f: Identity, a: np.ndarray, yaw: float):
  """Draws one face on ``p``; ``a`` is the AU vector (0–5) ordered like AUS."""
  A = {au: _au(a, au) for au in AUS}
  skin = np.asarray(f.skin, np.float64)
  # Wrinkles and furrows: dark enough to read on every skin tone.
  line_col = _mix(skin, (25, 12, 10), 0.55 + 0.25 * (sum(f.skin) < 450))
  cx = 0.5
  fx = _yaw_map(yaw)

  drop = 0.05 * A[26]  # jaw drop moves the chin and the lower lip down.
  hw, ey = f.head_w, f.eye_y

  # ---- hair behind the head, neck, shirt, ears ----
  if f.hair_style == "long":
    p.poly(
      _catmull(
        np.array(
          [
            (fx(cx - hw * 1.2, 0.2), ey - 0.05),
            (fx(cx, 0.2), f.head_top - 0.04),
            (fx(cx + hw * 1.2, 0.2), ey - 0.05),
            (fx(cx + hw * 1.25, 0.2), 0.95),
            (fx(cx - hw * 1.25, 0.2), 0.95),
          ]
        )
      ),
      f.hair_color,
    )
  elif f.hair_style == "bun":
    p.ellipse(fx(cx, 0.2), f.head_top - 0.03, 0.09, 0.07, fill=f.hair_color)
  p.poly(
    [
      (fx(cx - hw * 0.5, 0.3), 0.8),
      (fx(cx + hw * 0.5, 0.3), 0.8),
      (fx(cx + hw * 0.55, 0.3), 1.0),
      (fx(cx - hw * 0.55, 0.3), 1.0),
    ],
    _mix(skin, (0, 0, 0), 0.15),
  )
  p.poly(
    _catmull(
      np.array(
        [
          (0.0, 1.05),
          (0.05, 0.97),
          (fx(cx - hw * 0.55, 0.3), 0.94),
          (fx(cx, 0.3), 0.97),
          (fx(cx + hw * 0.55, 0.3), 0.94),
          (0.95, 0.97),
          (1.0, 1.05),
        ]
      ),
      closed=True,
    ),
    f.shirt,
  )
  for s in (-1, 1):
    p.ellipse(
      fx(cx + s * hw * 1.0, 0.3),
      ey + 0.04,
      0.03 * f.ear,
      0.055 * f.ear,
      fill=_mix(skin, (0, 0, 0), 0.07),
    )
  if f.earrings:
    gold = (212, 175, 55)
    for s in (-1, 1):
      x, y = fx(cx + s * hw * 1.0, 0.3), ey + 0.04 + 0.05 * f.ear
      if f.earrings == 1:
        p.ellipse(x, y, 0.009, 0.009, fill=gold)
      else:
        p.ellipse(x, y + 0.02, 0.016, 0.022, outline=gold, width=0.005)

  # ---- head ----
  jaw_y = f.chin_y - 0.1 + drop * 0.6
  head = np.array(
    [
      (cx - hw, ey),
      (cx - hw * 0.93, ey - 0.16),
      (cx - hw * 0.6, f.head_top + 0.035),
      (cx, f.head_top),
      (cx + hw * 0.6, f.head_top + 0.035),
      (cx + hw * 0.93, ey - 0.16),
      (cx + hw, ey),
      (cx + hw * 0.97, ey + 0.13),
      (cx + hw * f.jaw_w, jaw_y),
      (cx + hw * 0.3, f.chin_y - 0.01 + drop),
      (cx, f.chin_y + drop),
      (cx - hw * 0.3, f.chin_y - 0.01 + drop),
      (cx - hw * f.jaw_w, jaw_y),
      (cx - hw * 0.97, ey + 0.13),
    ]
  )
  head[:, 0] = fx(head[:, 0], 0.3)
  p.poly(_catmull(head), f.skin)

  # ---- hair in front ----
  _hair_front(p, f, fx)

  # ---- cheeks (blush rises with AU6) ----
  for s in (-1, 1):
    p.ellipse(
      fx(cx + s * f.eye_dx * 1.05),
      ey + 0.115 - 0.035 * A[6],
      0.05,
      0.035,
      fill=_rgba(_mix(f.lip_color, skin, 0.3), 25 + 45 * f.blush + 130 * A[6]),
    )

  # ---- forehead wrinkles: AU1 (middle), AU2 (lateral) ----
  by = ey - f.brow_off
  if f.age > 0:  # age lines: fainter than any AU's furrows, present at rest
    a_col = _rgba(line_col, 70 * f.age)
    p.line(
      _curve((fx(cx - 0.09), by - 0.075), (fx(cx), by - 0.082), (fx(cx + 0.09), by - 0.075)),
      a_col,
      0.005,
    )
    for s in (-1, 1):
      p.line(
        _curve(
          (fx(cx + s * f.nose_w * 1.3), f.nose_y + 0.02),
          (fx(cx + s * f.mouth_w * 1.05), f.mouth_y - 0.04),
          (fx(cx + s * f.mouth_w * 1.2), f.mouth_y + 0.01),
        ),
        a_col,
        0.005,
      )
  for k in range(3):
    y = by - 0.05 - 0.017 * k
    if A[1] > 0:
      p.line(
        _curve((fx(cx - 0.06), y + 0.004), (fx(cx), y - 0.004), (fx(cx + 0.06), y + 0.004)),
        _rgba(line_col, 230 * A[1]),
        0.008,
      )
    if A[2] > 0:
      for s in (-1, 1):
        x0 = cx + s * f.eye_dx
        p.line(
          _curve(
            (fx(x0 - 0.04 * s), y), (fx(x0 + 0.01 * s), y - 0.006), (fx(x0 + 0.06 * s), y + 0.006)
          ),
          _rgba(line_col, 220 * A[2]),
          0.008,
        )

  # ---- eyes ----
  for s in (-1, 1):
    _eye(p, f, A, s, fx, skin, line_col)

  # ---- brows: AU1 inner up, AU2 outer up, AU4 down and together, AU9 inner slightly down ----
  for s in (-1, 1):
    ex = cx + s * f.eye_dx
    inner = (
      ex - s * f.eye_w * 1.05 - s * 0.016 * A[4],
      by + 0.003 - 0.042 * A[1] + 0.032 * A[4] + 0.008 * A[9],
    )
    mid = (ex + s * 0.004, by - f.brow_arch - 0.014 * A[1] - 0.03 * A[2] + 0.018 * A[4])
    outer = (ex + s * f.eye_w * 1.3, by + 0.01 - f.brow_arch * 0.3 - 0.042 * A[2] + 0.012 * A[4])
    c = _curve(inner, mid, outer, 9)
    th = f.brow_thick * np.linspace(1.0, 0.55, 9)[:, None]
    poly = np.concatenate([c + [0, -1] * th / 2, (c + [0, 1] * th / 2)[::-1]])
    poly[:, 0] = fx(poly[:, 0])
    p.poly(poly, f.brow_color)
  if A[4] > 0:  # glabella lines
    for s in (-1, 1):
      p.line(
        [
          (fx(cx + s * 0.014), by - 0.01 + 0.02 * A[4]),
          (fx(cx + s * 0.009), by + 0.045 + 0.01 * A[4]),
        ],
        _rgba(line_col, 255 * A[4]),
        0.011,
      )

  # ---- nose ----
  _nose(p, f, A, fx, skin, line_col)
  # ---- mouth, chin ----
  _mouth(p, f, A, fx, skin, line_col, drop)

  # ---- glasses ----
  if f.glasses:
    for s in (-1, 1):
      ex = fx(cx + s * f.eye_dx)
      rx, ry = f.eye_w * 1.6, 0.05
      box = [(ex - rx) * p.c, (ey - ry) * p.c, (ex + rx) * p.c, (ey + ry) * p.c]
      if f.glasses == 1:
        p.d.ellipse(box, outline=f.glasses_color, width=p.w(0.0045))
      else:
        p.d.rounded_rectangle(box, radius=p.w(0.014), outline=f.glasses_color, width=p.w(0.0045))
    p.line(
      [
        (fx(cx - f.eye_dx + f.eye_w * 1.6), ey - 0.012),
        (fx(cx), ey - 0.018),
        (fx(cx + f.eye_dx - f.eye_w * 1.6), ey - 0.012),
      ],
      f.glasses_color,
      0.0045,
    )


def _hair_front(p: _Painter, f: Identity, fx):
  cx, hw, top, hl = 0.5, f.head_w, f.head_top, f.hairline
  st = f.hair_style
  if st == "bald":
    return
  if st == "fringe":
    hl += 0.01
  cap_top = [
    (cx - hw * 1.04, f.eye_y - 0.1),
    (cx - hw * 0.97, f.eye_y - 0.2),
    (cx - hw * 0.62, top + 0.02),
    (cx, top - 0.018),
    (cx + hw * 0.62, top + 0.02),
    (cx + hw * 0.97, f.eye_y - 0.2),
    (cx + hw * 1.04, f.eye_y - 0.1),
  ]
  if st == "side":
    line = [
      (cx + hw * 0.9, f.eye_y - 0.12),
      (cx + hw * 0.4, hl - 0.01),
      (cx - hw * 0.2, hl + 0.01),
      (cx - hw * 0.8, hl + 0.03),
      (cx - hw * 0.95, f.eye_y - 0.12),
    ]
  elif st == "fringe":
    line = [
      (cx + hw * 0.95, f.eye_y - 0.12),
      (cx + hw * 0.6, hl + 0.005),
      (cx, hl + 0.012),
      (cx - hw * 0.6, hl + 0.005),
      (cx - hw * 0.95, f.eye_y - 0.12),
    ]
  else:
    line = [
      (cx + hw * 0.92, f.eye_y - 0.13),
      (cx + hw * 0.55, hl - 0.015),
      (cx, hl - 0.02),
      (cx - hw * 0.55, hl - 0.015),
      (cx - hw * 0.92, f.eye_y - 0.13),
    ]
  pts = np.array(cap_top + line)
  pts[:, 0] = fx(pts[:, 0], 0.25)
  p.poly(_catmull(pts, 5), f.hair_color)
  if st == "curly":
    for k in range(11):
      t = math.pi * (k / 10)
      p.ellipse(
        fx(cx - math.cos(t) * hw * 0.98, 0.25),
        f.eye_y - 0.12 - math.sin(t) * (f.eye_y - 0.12 - top + 0.01),
        0.035,
        0.035,
        fill=f.hair_color,
      )
  if st == "long":
    for s in (-1, 1):
      p.poly(
        [
          (fx(cx + s * hw * 1.04, 0.25), f.eye_y - 0.12),
          (fx(cx + s * hw * 0.96, 0.25), f.eye_y - 0.12),
          (fx(cx + s * hw * 1.02, 0.25), f.eye_y + 0.2),
          (fx(cx + s * hw * 1.12, 0.25), f.eye_y + 0.2),
        ],
        f.hair_color,
      )


def _eye(p: _Painter, f: Identity, A, s: int, fx, skin, line_col):
  cx, ey, ew, eh = 0.5, f.eye_y, f.eye_w, f.eye_h
  ex = cx + s * f.eye_dx
  # AU7 narrows the aperture from both sides (lower lid up and straight, upper lid a little
  # down); AU6 mostly pushes the lower lid up from below (with a bag and crow's feet).
  h_up = eh * (1.0 + 1.1 * A[5] - 0.6 * A[7] - 0.15 * A[6])
  h_lo = eh * (0.85 - 0.85 * A[7] - 0.3 * A[6])
  h_lo = max(h_lo, eh * 0.06)
  inner = np.array([ex - s * ew, ey + 0.002])
  outer = np.array([ex + s * ew, ey - f.eye_tilt])
  up = _curve(inner, (ex + s * ew * 0.08, ey - h_up), outer, 11)
  lo = _curve(inner, (ex + s * ew * 0.05, ey + h_lo), outer, 11)
  up[:, 0], lo[:, 0] = fx(up[:, 0]), fx(lo[:, 0])
  r = eh * 1.35
  ix = fx(ex)
  p.poly(np.concatenate([up, lo[::-1]]), (238, 236, 230))
  p.ellipse(ix, ey + 0.001, r, r, fill=f.iris)
  p.ellipse(ix, ey + 0.001, r * 0.45, r * 0.45, fill=(15, 12, 12))
  p.ellipse(ix + 0.3 * r, ey - 0.3 * r, r * 0.2, r * 0.2, fill=(250, 250, 250))
  y_top = min(ey - r - 0.006, up[:, 1].min() - 0.004)
  y_bot = max(ey + r + 0.006, lo[:, 1].max() + 0.004)
  m = 0.004
  p.poly(np.concatenate([up, [(up[-1, 0] + s * m, y_top), (up[0, 0] - s * m, y_top)]]), f.skin)
  p.poly(np.concatenate([lo, [(lo[-1, 0] + s * m, y_bot), (lo[0, 0] - s * m, y_bot)]]), f.skin)
  # Lid crease (compressed by AU5), lash line, lower lid (tense and dark with AU7).
  crease = up + [0, -0.012 * (1 - 0.6 * A[5])]
  p.line(crease[1:-1], _rgba(line_col, 120), 0.004)
  p.line(up, (25, 18, 15), 0.007)
  p.line(lo, _rgba(line_col, 110 + 145 * A[7]), 0.004 + 0.008 * A[7])
  # AU6: bag under the eye and crow's feet.
  if A[6] > 0:
    bag = lo + [0, 0.024]
    p.line(bag[2:-1], _rgba(line_col, 240 * A[6]), 0.009)
    o = outer + [s * 0.01, 0.0]
    for ang in (-30, 0, 30):
      t = math.radians(ang)
      p.line(
        [(fx(o[0]), o[1]), (fx(o[0] + s * 0.04 * math.cos(t)), o[1] + 0.04 * math.sin(t))],
        _rgba(line_col, 250 * A[6]),
        0.009,
      )
  # AU7: the tensed lower lid bulges (bright band) over a shadow line, both straight.
  if A[7] > 0:
    band = np.stack([lo[:, 0], ey + (lo[:, 1] - ey) * 0.3], 1)
    band[0, 0] -= s * 0.006
    band[-1, 0] += s * 0.012
    p.line(band + [0, 0.013], _rgba(_mix(skin, (255, 255, 255), 0.55), 250 * A[7]), 0.018)
    p.line(band[1:-1] + [0, 0.025], _rgba(line_col, 230 * A[7]), 0.009)
    p.line(up[1:-1] + [0, -0.007], _rgba(line_col, 240 * A[7]), 0.009)


def _nose(p: _Painter, f: Identity, A, fx, skin, line_col):
  cx, ny, nw, ey = 0.5, f.nose_y, f.nose_w, f.eye_y
  lift = 0.012 * A[9] + 0.006 * A[10]
  wide = nw * (1 + 0.22 * A[9] + 0.08 * A[10])
  for s in (-1, 1):
    p.line(
      [(fx(cx + s * 0.016, 1.2), ey + 0.02), (fx(cx + s * wide * 0.72, 1.4), ny - 0.03 - lift)],
      _rgba(line_col, 70),
      0.005,
    )
  p.ellipse(
    fx(cx, 1.6),
    ny - 0.006 - lift * 0.5,
    wide * 0.55,
    0.02,
    fill=_rgba(_mix(skin, (255, 255, 255), 0.25), 120),
  )
  for s in (-1, 1):
    p.ellipse(
      fx(cx + s * wide * 0.72, 1.4),
      ny - 0.004 - lift,
      wide * 0.32,
      0.016,
      outline=_rgba(line_col, 150),
      width=0.004,
    )
    p.ellipse(
      fx(cx + s * wide * 0.42, 1.5),
      ny + 0.006 - lift,
      wide * 0.19,
      0.0065,
      fill=_mix(skin, (30, 15, 12), 0.75),
    )
  # AU9: wrinkles across the bridge, shadow along the nose sides.
  if A[9] > 0:
    for k in range(3):
      y = ey + 0.035 + 0.017 * k
      p.line(
        _curve(
          (fx(cx - 0.03, 1.2), y + 0.006), (fx(cx, 1.2), y - 0.004), (fx(cx + 0.03, 1.2), y + 0.006)
        ),
        _rgba(line_col, 255 * A[9]),
        0.008,
      )
    for s in (-1, 1):
      p.poly(
        [
          (fx(cx + s * 0.02, 1.2), ey + 0.03),
          (fx(cx + s * 0.035, 1.2), ey + 0.03),
          (fx(cx + s * wide * 0.95, 1.4), ny - 0.02 - lift),
          (fx(cx + s * wide * 0.6, 1.4), ny - 0.025 - lift),
        ],
        _rgba(line_col, 110 * A[9]),
      )


def _lip_shape(f: Identity, A, fx, drop: float) -> tuple:
  """The lip lines of ``_mouth`` (15 samples from corner to corner): corner_y, gap, lo_extra,
  thin, x, line_y, ui (upper inner), li (lower inner), uo (upper outer), lo (lower outer), xs."""
  cx, my = 0.5, f.mouth_y
  # AU14 and AU24 leave the lip outline alone: they are drawn as layers over it, each on its own
  # pixels with an opacity proportional to the AU, so their pixel change grows with intensity.
  cw = f.mouth_w * (1 + 0.22 * A[12] + 0.32 * A[20] - 0.3 * A[23])
  corner_y = my - 0.04 * A[12] + 0.04 * A[15] + 0.006 * A[20] + drop * 0.25 + 0.008 * A[17]
  center_y = my + 0.004 * A[12] - 0.026 * A[17] - 0.003 * A[10]
  s25 = min(1.0, 3 * A[25])
  gap = (0.02 * A[25] + 0.05 * A[26] * s25) * (1 - A[24]) * (1 - 0.6 * A[23]) * (1 - 0.5 * A[17])
  lo_extra = 0.016 * A[16]
  up_raise = 0.03 * A[10] + 0.004 * A[9]
  thin = max(0.12, 1 - 0.45 * A[23] - 0.3 * A[20])
  ut, lt = f.lip_up * thin, f.lip_lo * thin * (1 + 0.6 * A[17])
  x = np.linspace(-1, 1, 15)
  prof = 1 - x**2
  line_y = corner_y + (center_y - corner_y) * prof
  ui = line_y - (gap / 2 + 0.012 * A[10]) * prof**0.7
  li = line_y + (gap / 2 + lo_extra) * prof**0.7
  bow = 0.004 * np.exp(-(((np.abs(x) - 0.35) / 0.2) ** 2))
  uo = ui - ut * (0.3 + 0.7 * np.sqrt(prof)) - bow - up_raise * prof**0.5
  lo = li + lt * (0.3 + 0.7 * np.sqrt(prof)) + 0.5 * lo_extra * prof
  xs = fx(cx + cw * x, 1.1)
  return corner_y, gap, lo_extra, thin, x, line_y, ui, li, uo, lo, xs


def _mouth(p: _Painter, f: Identity, A, fx, skin, line_col, drop: float):
  """Lips, mouth interior, chin and the skin around the mouth.

  Each lower-face AU gets its own geometric signature: AU12 corners up and out, AU15 corners
  down with marionette lines, AU14 corners in with deep dimples, AU17 lower lip pushed up into
  an inverted U over a bright chin boss, AU23 a narrow, thin-lipped mouth with vertical purse
  lines, AU24 the lips pressed flat (red almost gone) between bright bulges, AU10 the upper lip
  lifted off the teeth.
  """
  cx = 0.5
  corner_y, gap, lo_extra, thin, x, line_y, ui, li, uo, lo, xs = _lip_shape(f, A, fx, drop)

  def P(y):
    return np.stack([xs, y], 1)

  # Chin: AU17 pushes the chin boss up (bright bulge, shadow under it, dimpled texture, deep
  # crease under the lower lip).
  chin_y = f.chin_y + drop
  if A[17] > 0:
    boss_y = chin_y - 0.05 - 0.012 * A[17]
    p.ellipse(
      fx(cx), boss_y, 0.058, 0.034, fill=_rgba(_mix(skin, (255, 255, 255), 0.45), 210 * A[17])
    )
    p.line(
      _curve(
        (fx(cx - 0.06), boss_y + 0.012), (fx(cx), boss_y + 0.04), (fx(cx + 0.06), boss_y + 0.012)
      ),
      _rgba(line_col, 200 * A[17]),
      0.012,
    )
    rs = np.random.default_rng(7)
    for _ in range(9):
      p.ellipse(
        fx(cx + rs.uniform(-0.035, 0.035)),
        boss_y + rs.uniform(-0.012, 0.012),
        0.006,
        0.005,
        fill=_rgba(line_col, 200 * A[17]),
      )
    p.line(
      _curve(
        (fx(cx - 0.055), lo.max() + 0.016),
        (fx(cx), lo.max() + 0.008),
        (fx(cx + 0.055), lo.max() + 0.016),
      ),
      _rgba(line_col, 255 * A[17]),
      0.013,
    )
  # Nasolabial furrows: deepened by AU11 and AU10, a little by AU12 and AU9.
  fold = min(1.0, A[11] + 0.8 * A[10] + 0.5 * A[12] + 0.3 * A[9])
  for s in (-1, 1):
    p.line(
      _curve(
        (fx(cx + s * (f.nose_w + 0.014), 1.3), f.nose_y - 0.01),
        (fx(cx + s * (f.nose_w + 0.035)), (f.nose_y + corner_y) / 2 + 0.005),
        (fx(cx + s * (f.mouth_w + 0.018)), corner_y + 0.025),
      ),
      _rgba(line_col, 35 + 200 * fold),
      0.005 + 0.003 * fold,
    )
  # AU24: bright skin bulges above and below the pressed lips, each with a shadow beyond it (on
  # skin, clear of the lips and of each other).
  if A[24] > 0:
    hi = _rgba(_mix(skin, (255, 255, 255), 0.5), 230 * A[24])
    sh = _rgba(line_col, 255 * A[24])
    p.line(P(uo - 0.016)[1:-1], hi, 0.022)
    p.line(P(lo + 0.016)[1:-1], hi, 0.022)
    p.line(P(uo - 0.037)[2:-2], sh, 0.012)
    p.line(P(lo + 0.037)[2:-2], sh, 0.012)
  # Mouth interior and teeth.
  if gap + lo_extra + 0.012 * A[10] > 1e-4:
    p.poly(np.concatenate([P(ui), P(li)[::-1]]), (70, 28, 32))
    tooth = np.minimum(ui + 0.014, li)
    p.poly(np.concatenate([P(ui)[2:-2], P(tooth)[2:-2][::-1]]), (236, 232, 222))
    if A[16] > 0 or A[26] > 0.4:
      ltooth = np.maximum(li - 0.006 - 0.006 * A[16], tooth)
      p.poly(np.concatenate([P(ltooth)[3:-3], P(li)[3:-3][::-1]]), (226, 222, 212))
  # AU23 darkens the (thin) red of the lips.
  lip = _mix(f.lip_color, (60, 10, 20), 0.45 * A[23])
  p.poly(np.concatenate([P(uo), P(ui)[::-1]]), _mix(lip, (0, 0, 0), 0.08))
  p.poly(np.concatenate([P(li), P(lo)[::-1]]), lip)
  p.line(P(ui), _rgba(_mix(lip, (20, 5, 5), 0.6), 200), 0.004)
  # AU24 presses the lips together: the outer two thirds of their red turn to skin, the inner
  # third (with the mouth line) to a dark pressed band.
  if A[24] > 0:
    us, ls = ui + 0.35 * (uo - ui), li + 0.35 * (lo - li)
    fade = _rgba(skin, 240 * A[24])
    p.poly(np.concatenate([P(uo), P(us)[::-1]]), fade)
    p.poly(np.concatenate([P(ls), P(lo)[::-1]]), fade)
    p.poly(np.concatenate([P(us), P(ls)[::-1]]), _rgba(_mix(lip, (20, 5, 5), 0.85), 255 * A[24]))
  # AU23: crisp dark lip borders and vertical purse lines above and below the lips.
  if A[23] > 0:
    border = _rgba(_mix(lip, (20, 5, 5), 0.65), 255 * A[23])
    p.line(P(uo), border, 0.008)
    p.line(P(lo), border, 0.008)
    for k in (2, 4, 7, 10, 12):
      for y0, dy in ((uo[k] - 0.004, -0.024), (lo[k] + 0.004, 0.024)):
        p.line(
          [(xs[k], y0), (xs[k] + 0.1 * x[k] * abs(dy), y0 + dy)],
          _rgba(line_col, 240 * A[23]),
          0.008,
        )
  # Corners: AU14 dimples, AU15 marionette lines, AU12 cheek creases, AU20 stretch lines.
  for s, i in ((-1, 0), (1, -1)):
    c = (xs[i], line_y[i])
    if A[14] > 0:
      # A dark pit tucking the corner in, a crease arcing round it and a bright bulge beyond the
      # crease (dark and bright parts do not overlap, so they never cancel).
      p.ellipse(c[0] + s * 0.006, c[1], 0.013, 0.014, fill=_rgba(line_col, 250 * A[14]))
      p.line(
        _curve(
          (c[0] + s * 0.014, c[1] - 0.03), (c[0] + s * 0.04, c[1]), (c[0] + s * 0.014, c[1] + 0.03)
        ),
        _rgba(line_col, 255 * A[14]),
        0.012,
      )
      p.ellipse(
        c[0] + s * 0.052,
        c[1],
        0.012,
        0.024,
        fill=_rgba(_mix(skin, (255, 255, 255), 0.45), 230 * A[14]),
      )
    if A[15] > 0:
      p.line(
        [(c[0] + s * 0.002, c[1] + 0.002), (c[0] + s * 0.012, c[1] + 0.05)],
        _rgba(line_col, 250 * A[15]),
        0.009,
      )
    if A[12] > 0:
      p.line(
        _curve(
          (c[0] + s * 0.006, c[1] - 0.016),
          (c[0] + s * 0.02, c[1] - 0.002),
          (c[0] + s * 0.012, c[1] + 0.012),
        ),
        _rgba(line_col, 220 * A[12]),
        0.007,
      )
    if A[20] > 0:
      p.line(
        [(c[0] + s * 0.004, c[1]), (c[0] + s * 0.03, c[1] + 0.004)],
        _rgba(line_col, 200 * A[20]),
        0.005,
      )


def _nuisance_coeffs(n: Nuisance, size: int) -> tuple[float, ...] | None:
  """Pillow AFFINE coefficients (output pixel -> input pixel) of the nuisance's roll, scale and
  shift about the centre of a ``size`` image; None when it has none."""
  if not (n.roll or n.scale != 1.0 or n.shift != (0.0, 0.0)):
    return None
  c = size
  t = math.radians(n.roll)
  cos, sin = math.cos(t) / n.scale, math.sin(t) / n.scale
  ox, oy = c / 2 + n.shift[0] * c, c / 2 + n.shift[1] * c
  return (cos, sin, c / 2 - cos * ox - sin * oy, -sin, cos, c / 2 + sin * ox - cos * oy)


def canvas_scale(size: int) -> int:
  """Supersampling factor used for an output of ``size`` pixels."""
  return max(2, math.ceil(192 / size))


def render_face(
  ident: Identity, aus, size: int = 112, nuisance: Nuisance = NO_NUISANCE
) -> np.ndarray:
  """Renders one face.

  Args:
    ident: who.
    aus: AU intensities 0–5, a {AU: value} dict or a vector ordered like ``AUS``.
    size: output side in pixels.
    nuisance: pose, lighting and noise; ``NO_NUISANCE`` gives the canonical face.

  Returns:
    [size, size, 3] uint8 RGB image.
  """
  if size < 16:
    raise ValueError(f"size must be at least 16 px, got {size}")
  a = au_vector(aus)
  ss = canvas_scale(size)
  p = _Painter(size * ss, ident.bg)
  _background(p, ident)
  _draw_face(p, ident, a, nuisance.yaw)
  im = p.im.reduce(ss)
  n = nuisance
  coeffs = _nuisance_coeffs(n, size)
  if coeffs is not None:
    im = im.transform(
      im.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=ident.bg
    )
  return _photometric(np.asarray(im, np.uint8), n)


def _photometric(img: np.ndarray, n: Nuisance) -> np.ndarray:
  """Lighting gain and gradient, tint and sensor noise of ``n`` on uint8 [H, W, 3]."""
  if n.gain == 1.0 and n.gradient == 0.0 and n.tint == (1.0, 1.0, 1.0) and n.noise == 0.0:
    return img
  h, w = img.shape[:2]
  x = img.astype(np.float32)
  gx = np.linspace(-1, 1, w, dtype=np.float32)
  gy = np.linspace(-1, 1, h, dtype=np.float32)
  ramp = math.cos(n.gradient_angle) * gx[None, :] + math.sin(n.gradient_angle) * gy[:, None]
  light = n.gain * (1 + n.gradient * ramp)
  x = x * light[..., None] * np.asarray(n.tint, np.float32)
  if n.noise > 0:
    x += n.noise * np.random.default_rng(n.noise_seed).standard_normal(x.shape, np.float32)
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Full video frames with tracked landmarks (the BP4D-like part; BP4D's 2DFeatures layout).
# ----------------------------------------------------------------------------------------------


def landmarks49_unit(ident: Identity, aus, yaw: float = 0.0) -> np.ndarray:
  """float64 [49, 2]: the face's 49 points (BP4D 2DFeatures order) in the unit face square.

  Brows 0-9, nose 10-18, eyes 19-24 / 25-30 (outer corner, two upper-lid, inner corner, two
  lower-lid points), mouth 31-48 (corners 31 and 37, outer lips, inner lips), read off the same
  geometry the renderer draws: eyes from ``_eye``'s lids, lips from ``_lip_shape``.
  """
  f, a = ident, au_vector(aus)
  A = {au: _au(a, au) for au in AUS}
  fx = _yaw_map(yaw)
  pts = []
  by = f.eye_y - f.brow_off
  for s in (-1, 1):  # brows, image-left first, each left to right
    ex = 0.5 + s * f.eye_dx
    t = np.linspace(-1, 1, 5)
    pts += [(fx(ex + t_ * f.eye_w * 1.2), by - f.brow_arch * (1 - t_**2)) for t_ in t]
  for k in range(4):  # nose bridge, top to bottom
    pts.append((fx(0.5, 1.2), f.eye_y + (f.nose_y - f.eye_y) * (k + 0.5) / 4.5))
  for t_ in (-1.0, -0.5, 0.0, 0.5, 1.0):  # nose base, left to right
    pts.append((fx(0.5 + t_ * f.nose_w, 1.3), f.nose_y + 0.01 * (1 - abs(t_))))
  for s in (-1, 1):
    ex, ey, ew, eh = 0.5 + s * f.eye_dx, f.eye_y, f.eye_w, f.eye_h
    h_up = eh * (1.0 + 1.1 * A[5] - 0.6 * A[7] - 0.15 * A[6])
    h_lo = max(eh * (0.85 - 0.85 * A[7] - 0.3 * A[6]), eh * 0.06)
    inner = np.array([ex - s * ew, ey + 0.002])
    outer = np.array([ex + s * ew, ey - f.eye_tilt])
    up = _curve(inner, (ex + s * ew * 0.08, ey - h_up), outer, 11)
    lo = _curve(inner, (ex + s * ew * 0.05, ey + h_lo), outer, 11)
    up[:, 0], lo[:, 0] = fx(up[:, 0]), fx(lo[:, 0])
    if s < 0:  # image-left eye: outer corner, upper lid left to right, inner, lower lid back
      pts += [up[10], up[7], up[3], up[0], lo[3], lo[7]]
    else:
      pts += [up[0], up[3], up[7], up[10], lo[7], lo[3]]
  drop = 0.05 * A[26]
  _, _, _, _, _, line_y, ui, li, uo, lo, xs = _lip_shape(f, A, fx, drop)
  pts.append((xs[0], line_y[0]))
  pts += [(xs[i], uo[i]) for i in (2, 4, 7, 10, 12)]
  pts.append((xs[14], line_y[14]))
  pts += [(xs[i], lo[i]) for i in (12, 10, 7, 4, 2)]
  pts += [(xs[i], ui[i]) for i in (4, 7, 10)]
  pts += [(xs[i], li[i]) for i in (10, 7, 4)]
  out = np.array([(float(x), float(y)) for x, y in pts], np.float64)
  assert out.shape == (49, 2), out.shape
  return out


def jaw17_unit(ident: Identity, aus, yaw: float = 0.0) -> np.ndarray:
  """float64 [17, 2]: the jaw line of the 68/66-point layouts (iBUG points 0-16, from the
  image-left ear level over the chin to the right), along the head outline ``_draw_face``
  draws, evenly spaced by arc length."""
  f, a = ident, au_vector(aus)
  drop = 0.05 * _au(a, 26)
  hw, ey, cx = f.head_w, f.eye_y, 0.5
  jaw_y = f.chin_y - 0.1 + drop * 0.6
  half = [
    (hw, ey),
    (hw * 0.97, ey + 0.13),
    (hw * f.jaw_w, jaw_y),
    (hw * 0.3, f.chin_y - 0.01 + drop),
  ]
  ctrl = np.array(
    [(cx - x, y) for x, y in half] + [(cx, f.chin_y + drop)] + [(cx + x, y) for x, y in half[::-1]]
  )
  seg = np.linalg.norm(np.diff(ctrl, axis=0), axis=1)
  t = np.concatenate([[0.0], np.cumsum(seg)])
  at = np.linspace(0.0, t[-1], 17)
  pts = np.stack([np.interp(at, t, ctrl[:, 0]), np.interp(at, t, ctrl[:, 1])], 1)
  pts[:, 0] = _yaw_map(yaw)(pts[:, 0], 0.3)
  return pts


def landmarks_unit(ident: Identity, aus, yaw: float = 0.0, scheme: str = "bp4d49") -> np.ndarray:
  """The face's landmarks in the unit face square: 'bp4d49' (BP4D 2DFeatures) or 'disfa66'
  (DISFA's 66-point AAM: the jaw line 0-16, then the same 49 points in the same order)."""
  pts = landmarks49_unit(ident, aus, yaw)
  if scheme == "bp4d49":
    return pts
  if scheme == "disfa66":
    return np.concatenate([jaw17_unit(ident, aus, yaw), pts])
  raise ValueError(f"unknown landmark scheme {scheme!r}; known: bp4d49, disfa66")


def face_landmarks(
  ident: Identity,
  aus,
  size: int,
  nuisance: Nuisance = NO_NUISANCE,
  scheme: str = "bp4d49",
) -> np.ndarray:
  """float64 [K, 2]: where ``render_face(ident, aus, size, nuisance)`` shows the points of
  `scheme`, in 0-based pixel centres of that image (the nuisance's roll, scale and shift
  applied)."""
  p = landmarks_unit(ident, aus, nuisance.yaw, scheme) * size  # continuous pixel coordinates
  coeffs = _nuisance_coeffs(nuisance, size)
  if coeffs is not None:
    # render_face samples input = M @ output + t; a landmark's output is M^-1 (input - t).
    a, b, tx, c, d, ty = coeffs
    p = (p - np.array([tx, ty])) @ np.linalg.inv(np.array([[a, b], [c, d]])).T
  return p - 0.5


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where the rendered face square sits in a full video frame."""

  frame: tuple[int, int]  # frame (width, height) in pixels
  center: tuple[float, float]  # centre of the face square, fractions of the frame
  side: int  # side of the face square in the frame, pixels
  wall: tuple[int, int, int] = (128, 128, 128)  # the lab wall behind the person


@functools.lru_cache(maxsize=16)
def _blend_mask(side: int) -> np.ndarray:
  """float32 [side, side, 1]: opaque over head, neck and shoulders, fading to 0 at the sides
  and top of the face square (the bottom, the shirt, stays opaque)."""
  g = (np.arange(side, dtype=np.float32) + 0.5) / side
  x, y = g[None, :] - 0.5, g[:, None]
  top = np.clip((y - 0.02) / 0.12, 0, 1)
  sides = np.clip((0.48 - np.abs(x)) / 0.1, 0, 1)
  return (top * sides)[..., None]


def render_frame(
  ident: Identity, aus, size: int, nuisance: Nuisance, placement: Placement
) -> tuple[np.ndarray, np.ndarray]:
  """A full video frame: the face rendered at ``size`` px, resized to ``placement.side`` and
  blended over a lab wall at ``placement.center`` (the shirt continuing down to the frame's
  bottom); lighting and sensor noise over the whole frame. Returns (uint8 [H, W, 3], float64 [49, 2] landmarks in 0-based frame pixels)."""
  geometric = dataclasses.replace(nuisance, gain=1.0, gradient=0.0, tint=(1.0, 1.0, 1.0), noise=0.0)
  face = render_face(ident, aus, size, geometric)
  pts = frame_landmarks(ident, aus, size, nuisance, placement)
  w, h = placement.frame
  side = placement.side
  im = Image.fromarray(face)
  if side != size:
    im = im.resize((side, side), Image.Resampling.BICUBIC)
  x0, y0 = _origin(placement)
  gy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
  wall = np.asarray(placement.wall, np.float32) * (1.05 - 0.15 * gy)
  frame = np.broadcast_to(wall, (h, w, 3)).copy()
  # The face square clipped to the frame.
  fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
  if fx1 > fx0 and fy1 > fy0:
    sq = np.asarray(im, np.float32)[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    m = _blend_mask(side)[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    frame[fy0:fy1, fx0:fx1] = m * sq + (1 - m) * frame[fy0:fy1, fx0:fx1]
    if fy1 < h:  # the torso goes on below the square: its last row (the shirt) continues
      frame[fy1:h, fx0:fx1] = m[-1:] * sq[-1:] + (1 - m[-1:]) * frame[fy1:h, fx0:fx1]
  frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
  return _photometric(frame, nuisance), pts


def _origin(placement: Placement) -> tuple[int, int]:
  w, h = placement.frame
  side = placement.side
  return round(placement.center[0] * w - side / 2), round(placement.center[1] * h - side / 2)


def frame_landmarks(
  ident: Identity,
  aus,
  size: int,
  nuisance: Nuisance,
  placement: Placement,
  scheme: str = "bp4d49",
) -> np.ndarray:
  """float64 [K, 2]: the points of ``render_frame``'s face, 0-based frame pixel centres."""
  pts = face_landmarks(ident, aus, size, nuisance, scheme)
  x0, y0 = _origin(placement)
  return (pts + 0.5) * (placement.side / size) + np.array([x0, y0]) - 0.5


# A BP4D-like frame is FRAME_ASPECT x size pixels (4:3, as BP4D's 1392 x 1040) and the face
# square in it FACE_SIDE x size at scale 1.
FRAME_ASPECT = (2.0, 1.5)
FACE_SIDE = 1.25


def frame_placement(size: int, head: Sequence[float], wall=(128, 128, 128)) -> Placement:
  """The Placement of one frame from a session's head-motion row (centre x, overhang of the
  square below the frame as a fraction of its side, negative when it ends above the frame's
  bottom; scale); see population.Session.head."""
  w, h = round(FRAME_ASPECT[0] * size), round(FRAME_ASPECT[1] * size)
  cx, hang, scale = (float(v) for v in head)
  side = max(8, round(FACE_SIDE * size * scale))
  cy = (h + hang * side - side / 2) / h
  return Placement((w, h), (cx, cy), side, tuple(int(v) for v in wall))
