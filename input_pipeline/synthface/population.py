"""Who is filmed, doing what: subjects, activities T1–T8, episodes, RAF-like single shots.

Everything here is planning (cheap NumPy); the pixels are drawn by ``render``. All randomness
comes from ``rng_for(seed, stream, *keys)``, so every subject, session and image is a function
of the seed and its own index, independent of worker count and order.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from input_pipeline.synthface import render

TASKS: tuple[str, ...] = ("T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8")

# RAF-DB's label order (1-based in list_patition_label.txt); RAF has no contempt.
RAF_LABELS: tuple[str, ...] = (
  "surprise",
  "fear",
  "disgust",
  "happiness",
  "sadness",
  "anger",
  "neutral",
)
_RAF_PRIOR = (0.10, 0.05, 0.07, 0.35, 0.15, 0.08, 0.20)

# Probability of each expression for one episode of an activity (T1–T8 as in BP4D). The target
# emotion dominates, the rest keeps the weak label honest: activity is informative, not a label.
ACTIVITY_MIX: dict[str, dict[str, float]] = {
  "T1": {"happiness": 0.64, "surprise": 0.14, "contempt": 0.12, "disgust": 0.05, "sadness": 0.05},
  "T2": {
    "sadness": 0.55,
    "happiness": 0.12,
    "surprise": 0.1,
    "contempt": 0.08,
    "disgust": 0.08,
    "anger": 0.07,
  },
  "T3": {"surprise": 0.55, "fear": 0.25, "happiness": 0.1, "anger": 0.05, "disgust": 0.05},
  "T4": {"happiness": 0.52, "contempt": 0.2, "surprise": 0.1, "sadness": 0.1, "disgust": 0.08},
  "T5": {"fear": 0.52, "surprise": 0.23, "happiness": 0.1, "sadness": 0.1, "anger": 0.05},
  "T6": {"sadness": 0.34, "disgust": 0.26, "anger": 0.2, "fear": 0.12, "happiness": 0.08},
  "T7": {"anger": 0.52, "sadness": 0.15, "contempt": 0.15, "disgust": 0.1, "surprise": 0.08},
  "T8": {"disgust": 0.6, "anger": 0.1, "sadness": 0.1, "surprise": 0.1, "happiness": 0.1},
}
# Activity-specific AU add-ons on top of the expression (probability, AUs): pain in T6
# (brow lowerer, cheek raiser / lid tightener, nose wrinkle / upper-lip raise), the controlled
# smile of embarrassment in T4 (dimpler, chin raiser, lip pressor).
ACTIVITY_ADDONS: dict[str, tuple[float, tuple[int, ...]]] = {
  "T4": (0.5, (14, 17, 24)),
  "T6": (0.75, (4, 6, 7, 9, 10)),
}
# Talking produces lips-part blips between and during episodes.
TALKING_TASKS = ("T1", "T2", "T4", "T7")
# EMFACS prototype AUs of each expression (happiness = cheek raiser + lip corner puller); the
# generator draws noisy versions of these (expression_aus). A fact of SynthFace, not a prompt.
EXPRESSION_PROTOTYPES: dict[str, tuple[int, ...]] = {
  "neutral": (),
  "happiness": (6, 12),
  "sadness": (1, 4, 15),
  "surprise": (1, 2, 5, 26),
  "fear": (1, 2, 4, 5, 7, 20, 26),
  "disgust": (9, 15, 16),
  "anger": (4, 5, 7, 23),
  "contempt": (12, 14),
}
# Co-activations that make prototypes look like real expressions: {expr: [(p, au), ...]}.
_EXTRAS: dict[str, list[tuple[float, int]]] = {
  "happiness": [(0.5, 25), (0.3, 7), (0.15, 10)],
  "sadness": [(0.5, 17), (0.2, 14)],
  "surprise": [(0.9, 25)],
  "fear": [(0.8, 25)],
  "anger": [(0.45, 24), (0.3, 17), (0.2, 10)],
  "disgust": [(0.6, 10), (0.4, 4), (0.6, 25)],
  "contempt": [(0.35, 24)],
  "neutral": [],
}
_HABIT_AUS = (1, 2, 4, 7, 10, 14, 17, 23, 24)
_RESTING_AUS = (4, 6, 7, 17, 24)

# Random streams (first key after the seed).
_S_BP4D_SUBJECT, _S_SESSION, _S_RAF, _S_UNKNOWN = 1, 2, 3, 4

UNKNOWN_RATE = 0.01


def rng_for(seed: int, *keys: int) -> np.random.Generator:
  """Independent generator for (seed, stream, index, …)."""
  return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


@dataclasses.dataclass(frozen=True)
class Subject:
  name: str  # F001 … / M001 …
  identity: render.Identity
  expressivity: float  # scales apex intensities
  habits: tuple[tuple[int, float], ...]  # (AU, intensity) mixed into episodes now and then
  resting: tuple[int, float]  # (AU, trace intensity ≤ 1) always present


@dataclasses.dataclass(frozen=True)
class Session:
  """One subject doing one task: per-frame AU intensities, expression and nuisance."""

  subject: str
  task: str
  frames: np.ndarray  # [F] int frame numbers
  aus: np.ndarray  # [F, len(AUS)] float64 intensities in [0, 5]
  expressions: tuple[str, ...]  # [F] canonical expression names
  nuisance: tuple[render.Nuisance, ...]
  jpeg_quality: int
  # Head motion in the full frame (BP4D-like frames): per frame, the face square's centre x
  # (fraction of the frame width), how far its bottom hangs below the frame (fraction of its
  # side; negative: above the frame's bottom) and its size (fraction of FACE_SIDE x size); and
  # the lab wall's colour.
  head: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 3)))
  wall: tuple[int, int, int] = (128, 128, 128)


def subject_names(n: int) -> list[str]:
  """BP4D-style names: 41 -> F001–F023, M001–M018; otherwise about 56 % F, 44 % M."""
  if n < 1:
    raise ValueError(f"need at least one subject, got {n}")
  n_f = 23 if n == 41 else max(1, int(round(n * 23 / 41)))
  n_f = min(n_f, n)
  return [f"F{i + 1:03d}" for i in range(n_f)] + [f"M{i + 1:03d}" for i in range(n - n_f)]


def make_subject(seed: int, index: int, name: str, sex: str | None = None) -> Subject:
  """A subject with a stable identity and expressive habits (`sex` defaults to the name's
  first letter, F or M, as BP4D's subject ids say)."""
  rng = rng_for(seed, _S_BP4D_SUBJECT, index)
  ident = render.sample_identity(rng, sex or name[0])
  habits = tuple(
    (int(au), float(rng.uniform(1.5, 3.5)))
    for au in rng.choice(_HABIT_AUS, size=rng.integers(1, 3), replace=False)
  )
  resting = (int(rng.choice(_RESTING_AUS)), float(rng.uniform(0.0, 1.0)))
  return Subject(
    name=name,
    identity=ident,
    expressivity=float(rng.uniform(0.6, 1.25)),
    habits=habits,
    resting=resting,
  )


def expression_prototype(name: str) -> list[int]:
  """EMFACS prototype AU numbers of an expression (e.g. happiness -> [6, 12])."""
  if name not in EXPRESSION_PROTOTYPES:
    raise KeyError(f"no prototype for expression {name!r}; known: {list(EXPRESSION_PROTOTYPES)}")
  return list(EXPRESSION_PROTOTYPES[name])


def expression_aus(rng: np.random.Generator, expression: str, strength: float) -> np.ndarray:
  """A noisy prototype: [len(AUS)] float64 apex intensities for ``expression``.

  Each prototype AU (``expression_prototype``) survives with p=0.85 (at least
  one does), gets an apex intensity ``strength * U(2.2, 5)``; co-activations (lips part with a
  jaw drop, teeth in a smile, …) and one stray low AU (p=0.15) are added.
  """
  v = np.zeros(len(render.AUS))
  proto = [au for au in expression_prototype(expression) if au in render.AU_INDEX]
  keep = rng.random(len(proto)) < 0.85
  if proto and not keep.any():
    keep[rng.integers(len(proto))] = True
  for au, k in zip(proto, keep):
    if k:
      v[render.AU_INDEX[au]] = strength * rng.uniform(2.2, 5.0)
  for p, au in _EXTRAS.get(expression, []):
    if rng.random() < p:
      v[render.AU_INDEX[au]] = max(v[render.AU_INDEX[au]], strength * rng.uniform(1.8, 4.5))
  if v[render.AU_INDEX[26]] > 0:
    v[render.AU_INDEX[25]] = max(v[render.AU_INDEX[25]], v[render.AU_INDEX[26]])
  if v[render.AU_INDEX[16]] > 0:
    v[render.AU_INDEX[25]] = max(v[render.AU_INDEX[25]], 0.8 * v[render.AU_INDEX[16]])
  if rng.random() < 0.15:
    v[rng.integers(len(v))] += rng.uniform(0.5, 2.5)
  return np.clip(v, 0, 5)


def _envelope(length: int, rng: np.random.Generator) -> np.ndarray:
  """[length] onset–apex–offset profile in [0, 1] (smooth ramps, flat apex)."""
  on = max(1, int(round(length * rng.uniform(0.15, 0.3))))
  off = max(1, int(round(length * rng.uniform(0.15, 0.3))))
  env = np.ones(length)
  ramp_on = (np.arange(on) + 1) / (on + 1)
  ramp_off = (np.arange(off)[::-1] + 1) / (off + 1)
  env[:on] = ramp_on
  env[length - off :] = np.minimum(env[length - off :], ramp_off)
  return env * env * (3 - 2 * env)  # smoothstep


def make_session(seed: int, subj_index: int, subject: Subject, task: str, n_frames: int) -> Session:
  """Plans one task of one subject: episodes of expressions separated by neutral stretches."""
  if task not in ACTIVITY_MIX:
    raise KeyError(f"unknown task {task!r}; known: {TASKS}")
  rng = rng_for(seed, _S_SESSION, subj_index, TASKS.index(task))
  names = list(ACTIVITY_MIX[task])
  probs = np.array([ACTIVITY_MIX[task][k] for k in names])
  F = n_frames
  aus = np.zeros((F, len(render.AUS)))
  expr = ["neutral"] * F
  t = int(rng.integers(0, max(1, F // 8) + 1))
  while t < F:
    length = int(rng.integers(max(3, F // 5), max(4, F // 2) + 1))
    e = names[rng.choice(len(names), p=probs)]
    apex = expression_aus(rng, e, subject.expressivity)
    if task in ACTIVITY_ADDONS and rng.random() < ACTIVITY_ADDONS[task][0]:
      for au in ACTIVITY_ADDONS[task][1]:
        if rng.random() < 0.6:
          i = render.AU_INDEX[au]
          apex[i] = max(apex[i], subject.expressivity * rng.uniform(2.0, 4.5))
    for au, x in subject.habits:
      if rng.random() < 0.35:
        apex[render.AU_INDEX[au]] = max(apex[render.AU_INDEX[au]], x)
    env = _envelope(length, rng)[: F - t]
    aus[t : t + len(env)] = np.maximum(aus[t : t + len(env)], env[:, None] * apex[None, :])
    for k, w in enumerate(env):
      if w >= 0.4:
        expr[t + k] = e
    t += length + int(rng.integers(1, max(2, F // 6) + 1))
  if task in TALKING_TASKS:
    for _ in range(int(rng.integers(0, max(1, F // 10) + 1))):
      s = int(rng.integers(0, F))
      ln = int(rng.integers(1, 4))
      i25 = render.AU_INDEX[25]
      aus[s : s + ln, i25] = np.maximum(aus[s : s + ln, i25], rng.uniform(1.0, 3.0))
  au_r, x_r = subject.resting
  aus[:, render.AU_INDEX[au_r]] = np.maximum(aus[:, render.AU_INDEX[au_r]], x_r)
  active = aus > 0
  aus = np.where(active, aus + rng.normal(0, 0.12, aus.shape), 0.0)
  aus = np.clip(aus, 0, 5)
  start = int(rng.integers(1, 600))
  frames = np.arange(start, start + F)
  # Head motion (slow), lighting of the session, sensor noise, JPEG quality.
  r0, ra, rw, rp = (
    rng.normal(0, 1.5),
    rng.uniform(0, 2),
    rng.uniform(0.05, 0.3),
    rng.uniform(0, 6.3),
  )
  sx0, sy0 = rng.normal(0, 0.01, 2)
  sc0 = rng.uniform(0.97, 1.03)
  grad, gang, gain = rng.uniform(0, 0.2), rng.uniform(0, 6.3), rng.uniform(0.9, 1.08)
  noise = rng.uniform(1.0, 3.5)
  nuis = []
  for k in range(F):
    nuis.append(
      render.Nuisance(
        roll=float(r0 + ra * np.sin(rw * k + rp)),
        scale=float(sc0 + 0.01 * np.sin(0.7 * rw * k)),
        shift=(float(sx0 + 0.006 * np.sin(rw * k + 1)), float(sy0 + 0.006 * np.cos(rw * k))),
        gain=float(gain),
        gradient=float(grad),
        gradient_angle=float(gang),
        noise=float(noise),
        noise_seed=int(rng.integers(2**31)),
      )
    )
  quality = int(rng.integers(85, 96))
  # Mild head motion, as in the lab recordings: a per-session position and size, slow drift.
  # The square's bottom stays 0-15 % of its side above the frame's bottom, so the aligned crop
  # (down to 0.96 of the square) never reaches past the frame.
  cx0, hang0, size0 = rng.normal(0.5, 0.05), rng.uniform(-0.12, -0.03), rng.uniform(0.88, 1.06)
  w1, w2, p1, p2 = rng.uniform(0.05, 0.25), rng.uniform(0.05, 0.25), *rng.uniform(0, 6.3, 2)
  k = np.arange(F)
  head = np.stack(
    [
      np.clip(cx0 + 0.05 * np.sin(w1 * k + p1), 0.3, 0.7),
      hang0 + 0.03 * np.sin(w2 * k + p2),
      size0 * (1 + 0.04 * np.sin(0.5 * w1 * k + p2)),
    ],
    1,
  )
  wall = tuple(int(v) for v in rng.integers(90, 200, 3))
  return Session(
    subject=subject.name,
    task=task,
    frames=frames,
    aus=aus,
    expressions=tuple(expr),
    nuisance=tuple(nuis),
    jpeg_quality=quality,
    head=head,
    wall=wall,
  )


def intensity_codes(aus: np.ndarray) -> np.ndarray:
  """FACS integer intensity 0–5 of float intensities (round half up): [..] -> int64."""
  return np.clip(np.floor(aus + 0.5), 0, 5).astype(np.int64)


def occurrence_codes(aus: np.ndarray) -> np.ndarray:
  """AU occurrence as in BP4D/DISFA practice: 1 when the intensity code is ≥ 2 (B), else 0."""
  return (intensity_codes(aus) >= 2).astype(np.int64)


def unknown_mask(seed: int, subj_index: int, task: str, shape) -> np.ndarray:
  """[F, J] bool: cells coded 9 (unknown), about ``UNKNOWN_RATE`` of them."""
  rng = rng_for(seed, _S_UNKNOWN, subj_index, TASKS.index(task))
  return rng.random(shape) < UNKNOWN_RATE


@dataclasses.dataclass(frozen=True)
class RafImage:
  identity: render.Identity
  aus: np.ndarray  # [len(AUS)] float64
  label: int  # 1..7, RAF-DB order
  nuisance: render.Nuisance
  jpeg_quality: int


def make_raf_image(seed: int, index: int) -> RafImage:
  """One in-the-wild style image: a new identity, a full expression, strong nuisance."""
  rng = rng_for(seed, _S_RAF, index)
  ident = render.sample_identity(rng, "F" if rng.random() < 0.5 else "M", wild=True)
  k = int(rng.choice(len(RAF_LABELS), p=_RAF_PRIOR))
  name = RAF_LABELS[k]
  aus = expression_aus(rng, name, float(rng.uniform(0.75, 1.2)))
  if name == "neutral":
    aus = np.where(rng.random(len(aus)) < 0.1, rng.uniform(0.3, 1.3, len(aus)), 0.0)
  nuis = render.Nuisance(
    roll=float(np.clip(rng.normal(0, 7), -20, 20)),
    scale=float(rng.uniform(0.88, 1.12)),
    shift=(float(rng.uniform(-0.05, 0.05)), float(rng.uniform(-0.05, 0.05))),
    yaw=float(rng.uniform(-0.8, 0.8)),
    gain=float(rng.uniform(0.7, 1.25)),
    gradient=float(rng.uniform(0, 0.5)),
    gradient_angle=float(rng.uniform(0, 6.3)),
    tint=tuple(float(x) for x in rng.uniform(0.85, 1.15, 3)),
    noise=float(rng.uniform(1, 7)),
    noise_seed=int(rng.integers(2**31)),
  )
  return RafImage(
    identity=ident,
    aus=np.clip(aus, 0, 5),
    label=k + 1,
    nuisance=nuis,
    jpeg_quality=int(rng.integers(60, 96)),
  )


# ----------------------------------------------------------------------------------------------
# The DISFA-like part: other people, one long recording each (as DISFA's subjects watch one
# video of emotion-eliciting clips), coded for DISFA's 12 AUs.
# ----------------------------------------------------------------------------------------------

DISFA_INDEX_OFFSET = 1000  # identity streams of their own: no DISFA-like subject is a BP4D one


def disfa_subject_names(n: int, parts: dict[int, tuple[str, ...]]) -> list[str]:
  """n DISFA subject ids taken in turn from the 3 parts of the standard split (so every part
  has subjects): part1[0], part2[0], part3[0], part1[1], ..."""
  if not 1 <= n <= sum(len(v) for v in parts.values()):
    raise ValueError(f"need 1..{sum(len(v) for v in parts.values())} DISFA-like subjects, got {n}")
  order = [
    parts[k][i]
    for i in range(max(map(len, parts.values())))
    for k in sorted(parts)
    if i < len(parts[k])
  ]
  return order[:n]


def make_disfa_session(seed: int, index: int, name: str, n_frames: int) -> tuple[Subject, Session]:
  """Subject `index` of the DISFA-like part and its recording: n_frames frames made of the 8
  activities' episodes in turn (frames numbered 0..n_frames-1)."""
  if n_frames < len(TASKS):
    raise ValueError(f"need at least {len(TASKS)} frames per DISFA-like subject, got {n_frames}")
  k = DISFA_INDEX_OFFSET + index
  subj = make_subject(seed, k, name, sex="FM"[index % 2])
  sizes = [n_frames // len(TASKS) + (i < n_frames % len(TASKS)) for i in range(len(TASKS))]
  parts = [make_session(seed, k, subj, task, m) for task, m in zip(TASKS, sizes)]
  first = parts[0]
  sess = Session(
    subject=name,
    task="",
    frames=np.arange(n_frames),
    aus=np.concatenate([p.aus for p in parts]),
    expressions=tuple(e for p in parts for e in p.expressions),
    nuisance=tuple(n for p in parts for n in p.nuisance),
    jpeg_quality=first.jpeg_quality,
    head=np.concatenate([p.head for p in parts]),
    wall=first.wall,
  )
  return subj, sess
