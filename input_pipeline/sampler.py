"""Batch composition for activity-aware contrastive pretraining.

Neighbouring video frames are near-duplicates, so a uniformly shuffled batch of BP4D-like data
holds few useful positives and many trivial ones. `ActivityBatchSampler` instead fills every
global batch with `A` activities × `S` subjects per activity × `F` frames per (activity, subject)
group, with the frames of a group spread apart in time.

The sampler is random-access: `indices(step)` is a pure function of `(seed, step)`, so grain can
index it by position (and checkpoint it by position), and every process computes the same global
list and takes its own slice.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np


class ActivityBatchSampler:
  """Global example indices of each step's batch: activities × subjects × spaced frames.

  For step `s` (rng seeded by `(seed, s)`):
    1. draw `activities_per_batch` distinct activities (if fewer exist: every activity once, the
       rest drawn again with replacement);
    2. for each, draw `subjects_per_activity` distinct subjects having frames of it (if fewer
       exist: each once, the rest with replacement, so an (activity, subject) group may repeat);
    3. for each (activity, subject) group draw `frames_per_group` frames whose frame numbers are
       pairwise at least `min_frame_gap` apart. The draw always succeeds when such a set exists;
       when the group is too short for it, it takes as many spaced frames as fit, fills up with
       other frames of the group, and only if the group has fewer than `frames_per_group`
       examples repeats examples (replacement).

  Examples with activity id -1 (no activity) or subject id -1 (unknown subject) are never drawn.

  `indices(step)` is int64 [A * S * F] laid out as `[A, S, F]` (C order); frames of a group are in
  increasing frame order.
  """

  def __init__(
    self,
    subject_ids: Sequence[int] | np.ndarray,
    activity_ids: Sequence[int] | np.ndarray,
    frames: Sequence[int] | np.ndarray,
    *,
    activities_per_batch: int,
    subjects_per_activity: int,
    frames_per_group: int,
    min_frame_gap: int,
    seed: int,
  ):
    subject_ids = _int_array(subject_ids, "subject_ids")
    activity_ids = _int_array(activity_ids, "activity_ids")
    frames = _int_array(frames, "frames")
    if not len(subject_ids) == len(activity_ids) == len(frames):
      raise ValueError(
        f"subject_ids, activity_ids and frames must have equal lengths, got "
        f"{len(subject_ids)}, {len(activity_ids)}, {len(frames)}"
      )
    for name, value in (
      ("activities_per_batch", activities_per_batch),
      ("subjects_per_activity", subjects_per_activity),
      ("frames_per_group", frames_per_group),
    ):
      if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if int(min_frame_gap) != min_frame_gap or min_frame_gap < 0:
      raise ValueError(f"min_frame_gap must be a non-negative integer, got {min_frame_gap!r}")
    if int(seed) != seed or seed < 0:
      raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    self.activities_per_batch = int(activities_per_batch)
    self.subjects_per_activity = int(subjects_per_activity)
    self.frames_per_group = int(frames_per_group)
    self.min_frame_gap = int(min_frame_gap)
    self.seed = int(seed)
    self.num_examples = len(frames)

    drawable = np.flatnonzero((activity_ids >= 0) & (subject_ids >= 0))
    if drawable.size == 0:
      raise ValueError(
        "ActivityBatchSampler: no example has both an activity and a subject "
        "(all activity_ids or subject_ids are -1)"
      )
    order = drawable[np.lexsort((frames[drawable], subject_ids[drawable], activity_ids[drawable]))]
    keys = np.stack([activity_ids[order], subject_ids[order]], axis=1)
    starts = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1
    bounds = np.concatenate([[0], starts, [len(order)]])
    self._groups: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    subjects_of: dict[int, list[int]] = {}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
      activity, subject = int(keys[lo, 0]), int(keys[lo, 1])
      idx = order[lo:hi]
      self._groups[(activity, subject)] = (idx, *_chain_tables(frames[idx], self.min_frame_gap))
      subjects_of.setdefault(activity, []).append(subject)
    self.activities = np.array(sorted(subjects_of), dtype=np.int64)
    self._subjects_of = {a: np.array(s, dtype=np.int64) for a, s in subjects_of.items()}

  @property
  def batch_size(self) -> int:
    """Global batch size A × S × F."""
    return self.activities_per_batch * self.subjects_per_activity * self.frames_per_group

  def indices(self, step: int) -> np.ndarray:
    """Example indices of step `step`'s global batch: int64 [A * S * F] (layout [A, S, F])."""
    if int(step) != step or step < 0:
      raise ValueError(f"step must be a non-negative integer, got {step!r}")
    return self._indices(int(step)).copy()

  @functools.lru_cache(maxsize=32)
  def _indices(self, step: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, step])
    out = []
    for activity in _draw(rng, self.activities, self.activities_per_batch):
      for subject in _draw(rng, self._subjects_of[int(activity)], self.subjects_per_activity):
        out.append(self._frames(self._groups[(int(activity), int(subject))], rng))
    return np.concatenate(out).astype(np.int64)

  def _frames(
    self, group: tuple[np.ndarray, np.ndarray, np.ndarray], rng: np.random.Generator
  ) -> np.ndarray:
    idx, next_pos, chain = group
    n, want = len(idx), self.frames_per_group
    take = min(want, int(chain[0]))
    picked = []
    lo = 0
    # `chain` is non-increasing, so positions that can still start a chain of the `r` frames
    # left form the range [lo, hi).
    neg_chain = -chain
    for r in range(take, 0, -1):
      hi = int(np.searchsorted(neg_chain, -r, side="right"))
      p = int(rng.integers(lo, hi))
      picked.append(p)
      lo = int(next_pos[p])
    if take < want:
      rest = np.setdiff1d(np.arange(n), picked)
      if n >= want:
        picked.extend(rng.choice(rest, want - take, replace=False).tolist())
      else:
        picked.extend(rng.choice(n, want - take, replace=True).tolist())
    return idx[np.sort(np.array(picked, dtype=np.int64))]


def _int_array(values: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
  array = np.asarray(values)
  if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
    raise ValueError(f"{name} must be a 1-D integer array, got {array.dtype} {array.shape}")
  return array.astype(np.int64)


def _chain_tables(group_frames: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray]:
  """For frames sorted ascending: next position ≥ gap later, and longest spaced chain from each.

  Returns:
    next_pos: int64 [n], first position j > i with frame[j] - frame[i] >= gap (n if none).
    chain: int64 [n], the most frames pairwise ≥ gap apart in a set starting at position i
      (greedy is optimal for this), non-increasing in i.
  """
  n = len(group_frames)
  next_pos = np.maximum(
    np.searchsorted(group_frames, group_frames + gap, side="left"), np.arange(1, n + 1)
  )
  chain = np.ones(n + 1, dtype=np.int64)
  chain[n] = 0
  for i in range(n - 1, -1, -1):
    chain[i] = 1 + chain[next_pos[i]]
  return next_pos.astype(np.int64), chain[:n]


def _draw(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
  """k items of `pool`: distinct when possible, else all once plus draws with replacement."""
  if len(pool) >= k:
    return rng.choice(pool, k, replace=False)
  extra = rng.choice(pool, k - len(pool), replace=True)
  return np.concatenate([rng.permutation(pool), extra])
