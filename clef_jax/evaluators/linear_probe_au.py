"""type 'linear_probe_au': per-AU logistic probes on frozen image embeddings, CLIP's protocol.

Fits one balanced sklearn L-BFGS logistic regression per AU on the standardised embeddings of
(a seeded sample of `max_train`) training images and predicts the test split. The inverse L2
strength `C` is chosen as in the CLIP paper's linear probes, never on the test fold: a seeded
`val_fraction` of the *training subjects* is held out, every `C` of `Cs` is fitted on the other
training subjects and scored by mean AU F1 on the held-out ones, and the best `C` (the smaller on
a tie) is refitted on all the training images. Metrics: `au_f1/mean`, `au_f1/AU<a>` (test),
`val/au_f1/mean` (the validation score of the chosen C: what recipes are compared on) and `C`.
With `references=True` the same probe, on the same frames and split, also runs on the frames'
raw pixels (`RAW_SIZE`² grey, standardised, its own C) and the all-present prediction is
scored: `reference/raw_pixels/au_f1/mean` (+ `/val/…`, `/C`), `reference/all_present/au_f1/mean`
(computed once per run: they do not depend on the weights).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image

from clef_jax import datasets as data_lib
from clef_jax.evaluators import common
from input_pipeline import pipeline


# The C grid of the validation sweep: decades up to sklearn's default 1.0 (the probe's fixed C
# before the sweep). An 11-value half-decade grid (1e-4 ... 10) took 257-346 s of the default
# job's probe, mostly the 1024-dim raw-pixel reference, and chose C in 0.1 ... 1.0 in all 4 runs.
CS = (1e-3, 1e-2, 0.1, 1.0)


def logistic_probe(
  xtr: np.ndarray,
  ytr: np.ndarray,
  xte: np.ndarray,
  *,
  seed: int = 0,
  balanced: bool = True,
  C: float = 1.0,  # pylint: disable=invalid-name
) -> np.ndarray:
  """sklearn logistic regression: xtr [N, D], ytr [N] int, xte [M, D] -> predictions [M]."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top

  clf = LogisticRegression(
    max_iter=2000, C=C, random_state=seed, class_weight="balanced" if balanced else None
  )
  clf.fit(xtr, ytr)
  return clf.predict(xte)


RAW_SIZE = 32  # side of the grey raw-pixel reference features


def standardize(xtr: np.ndarray, xte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Zero mean, unit variance per feature, with the training statistics (sklearn)."""
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top

  scaler = StandardScaler().fit(xtr)
  return scaler.transform(xtr), scaler.transform(xte)


def raw_pixels(images, size: int = RAW_SIZE) -> np.ndarray:
  """N uint8 [H, W, 3] images -> float32 [N, size * size]: grey (Pillow's ITU-R 601-2 luma),
  then the mean of each (H/size)² block (Pillow's box filter when H is not a multiple)."""
  out = []
  for im in images:
    grey = Image.fromarray(np.asarray(im, np.uint8)).convert("L")
    h, w = grey.size
    if h % size == 0 and w % size == 0:
      g = np.asarray(grey, np.float32)
      out.append(g.reshape(size, h // size, size, w // size).mean((1, 3)))
    else:
      out.append(np.asarray(grey.resize((size, size), Image.Resampling.BOX), np.float32))
  return np.stack(out).reshape(len(out), -1)


def au_probe(
  ztr: np.ndarray,
  ytr: np.ndarray,
  zte: np.ndarray,
  *,
  seed: int = 0,
  C: float = 1.0,  # pylint: disable=invalid-name
) -> np.ndarray:
  """Per-AU balanced probes: ztr [N, D], ytr [N, J] in {-1,0,1} (-1 skipped) -> int8 [M, J]."""
  pred = np.zeros((zte.shape[0], ytr.shape[1]), np.int8)
  for j in range(ytr.shape[1]):
    known = ytr[:, j] >= 0
    y = ytr[known, j]
    if len(np.unique(y)) < 2:  # nothing to learn: predict the only class seen
      pred[:, j] = y[0] if len(y) else 0
      continue
    pred[:, j] = logistic_probe(ztr[known], y, zte, seed=seed, C=C)
  return pred


def validation_subjects(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """The held-out rows [N] bool: a seeded `fraction` of the distinct `groups` (at least one,
  and at least one left to fit on)."""
  subjects = np.unique(groups)
  if len(subjects) < 2:
    raise ValueError(
      f"choosing the probe's C needs a validation split of the training subjects, but the "
      f"training images come from {len(subjects)} subject(s)"
    )
  k = min(max(1, round(fraction * len(subjects))), len(subjects) - 1)
  held = np.random.default_rng(seed).choice(subjects, k, replace=False)
  return np.isin(groups, held)


def select_c(
  xtr: np.ndarray,
  ytr: np.ndarray,
  groups: np.ndarray,
  *,
  cs: Sequence[float] = CS,
  val_fraction: float = 0.25,
  seed: int = 0,
  aus: Sequence[int] | None = None,
) -> tuple[float, float, dict[float, float]]:
  """CLIP's protocol: the C of `cs` with the best mean AU F1 on held-out training subjects.

  xtr [N, D] features (standardised here on the fitting rows), ytr [N, J] labels, groups [N]
  subject ids. Returns
  (C, its validation mean F1, {C: validation mean F1}); ties go to the smaller C.
  """
  val = validation_subjects(groups, val_fraction, seed)
  a, b = standardize(xtr[~val], xtr[val])
  aus = aus if aus is not None else list(range(ytr.shape[1]))
  scores = {}
  for c in sorted(cs):
    pred = au_probe(a, ytr[~val], b, seed=seed, C=c)
    scores[c] = common.au_results(pred, ytr[val], aus)["au_f1/mean"]
  best = max(scores, key=lambda c: (scores[c], -c))
  return best, scores[best], scores


def probe_with_validation(
  xtr: np.ndarray,
  ytr: np.ndarray,
  groups: np.ndarray,
  xte: np.ndarray,
  yte: np.ndarray,
  aus: Sequence[int],
  *,
  cs: Sequence[float] = CS,
  val_fraction: float = 0.25,
  seed: int = 0,
) -> dict[str, float]:
  """Raw features in, results out: C chosen on held-out training subjects (`select_c`), then
  the probe refitted on all of xtr (standardised on it) and scored on the test rows."""
  c, val_f1, _ = select_c(xtr, ytr, groups, cs=cs, val_fraction=val_fraction, seed=seed, aus=aus)
  a, b = standardize(xtr, xte)
  out = common.au_results(au_probe(a, ytr, b, seed=seed, C=c), yte, aus)
  out.update({"val/au_f1/mean": val_f1, "C": c})
  return out


class LinearProbeAu(common.Evaluator):
  zero_shot = False
  fields: dict[str, Any] = {
    "max_train": 4000,
    "references": False,
    "val_fraction": 0.25,  # of the training subjects, held out to choose C
    "Cs": CS,
  }

  def __init__(self, name: str, ev, ctx: common.Context):
    super().__init__(name, ev, ctx)
    self.max_train = self.field("max_train")
    if isinstance(self.max_train, bool) or not isinstance(self.max_train, int):
      raise ValueError(f"{self.key('max_train')}={self.max_train!r}: expected an integer > 0")
    if self.max_train <= 0:
      raise ValueError(f"{self.key('max_train')}={self.max_train!r}: expected an integer > 0")
    frac = self.field("val_fraction")
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
      raise ValueError(f"{self.key('val_fraction')}={frac!r}: expected a number in (0, 1)")
    self.cs = tuple(self.field("Cs"))
    if not self.cs or any(isinstance(c, bool) or not float(c) > 0 for c in self.cs):
      raise ValueError(f"{self.key('Cs')}={self.cs!r}: expected positive numbers")
    if not self.data.aus:
      raise ValueError(
        f"{self.key('type')}='linear_probe_au': dataset {self.data.name} has no AU labels"
      )
    self._references: dict[str, float] | None = None

  def run(self, params) -> dict[str, Any]:
    seed = int(self.ctx.config.seed)
    n = len(self.data.train)
    idx = np.sort(np.random.default_rng(seed).choice(n, min(n, self.max_train), replace=False))
    train = data_lib.Subset(self.data.train, idx)
    tr = self.embed(params, train, ("au", "subject_id"))
    te = self.embed(params, self.data.test, ("au",))
    out = self.probe(tr["z"], tr["au"], tr["subject_id"], te["z"], te["au"], seed)
    if self.field("references"):
      if self._references is None:
        self._references = self.references(train, tr, te["au"], seed)
      out.update(self._references)
    return out

  def probe(self, xtr, ytr, groups, xte, yte, seed: int) -> dict[str, float]:
    return probe_with_validation(
      xtr,
      ytr,
      groups,
      xte,
      yte,
      self.data.aus,
      cs=self.cs,
      val_fraction=float(self.field("val_fraction")),
      seed=seed,
    )

  def references(self, train, tr: dict[str, np.ndarray], yte: np.ndarray, seed: int):
    """The raw-pixel probe (same frames, same validation split) and the all-present prediction."""
    data = self.data
    # Read on every process, in source order (the embeddings are gathered in the same order).
    ptr, pte = [
      raw_pixels([pipeline.decode_image(source[i]["image"]) for i in range(len(source))])
      for source in (train, data.test)
    ]
    raw = self.probe(ptr, tr["au"], tr["subject_id"], pte, yte, seed)
    present = common.au_results(np.ones_like(yte, np.int8), yte, data.aus)
    return {
      "reference/raw_pixels/au_f1/mean": raw["au_f1/mean"],
      "reference/raw_pixels/val/au_f1/mean": raw["val/au_f1/mean"],
      "reference/raw_pixels/C": raw["C"],
      "reference/all_present/au_f1/mean": present["au_f1/mean"],
    }
