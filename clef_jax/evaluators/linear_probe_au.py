"""type 'linear_probe_au': per-AU logistic probes on frozen image embeddings.

Fits one balanced sklearn logistic regression per AU on the standardised embeddings of (a seeded
sample of `max_train`) training images, predicts the test split. Metrics: `au_f1/mean`,
`au_f1/AU<a>`. With `references=True` the same probe, on the same frames, also runs on the
frames' raw pixels (`RAW_SIZE`² grey, standardised) and the all-present prediction is scored:
`reference/raw_pixels/au_f1/mean`, `reference/all_present/au_f1/mean` (computed once per run:
they do not depend on the weights).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from clef_jax import datasets as data_lib
from clef_jax.evaluators import common
from input_pipeline import pipeline


def logistic_probe(
  xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, *, seed: int = 0, balanced: bool = True
) -> np.ndarray:
  """sklearn logistic regression: xtr [N, D], ytr [N] int, xte [M, D] -> predictions [M]."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top

  clf = LogisticRegression(
    max_iter=2000, C=1.0, random_state=seed, class_weight="balanced" if balanced else None
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


def au_probe(ztr: np.ndarray, ytr: np.ndarray, zte: np.ndarray, *, seed: int = 0) -> np.ndarray:
  """Per-AU balanced probes: ztr [N, D], ytr [N, J] in {-1,0,1} (-1 skipped) -> int8 [M, J]."""
  pred = np.zeros((zte.shape[0], ytr.shape[1]), np.int8)
  for j in range(ytr.shape[1]):
    known = ytr[:, j] >= 0
    y = ytr[known, j]
    if len(np.unique(y)) < 2:  # nothing to learn: predict the only class seen
      pred[:, j] = y[0] if len(y) else 0
      continue
    pred[:, j] = logistic_probe(ztr[known], y, zte, seed=seed)
  return pred


class LinearProbeAu(common.Evaluator):
  zero_shot = False
  fields: dict[str, Any] = {"max_train": 4000, "references": False}

  def __init__(self, name: str, ev, ctx: common.Context):
    super().__init__(name, ev, ctx)
    self.max_train = self.field("max_train")
    if isinstance(self.max_train, bool) or not isinstance(self.max_train, int):
      raise ValueError(f"{self.key('max_train')}={self.max_train!r}: expected an integer > 0")
    if self.max_train <= 0:
      raise ValueError(f"{self.key('max_train')}={self.max_train!r}: expected an integer > 0")
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
    tr = self.embed(params, train, ("au",))
    te = self.embed(params, self.data.test, ("au",))
    xtr, xte = standardize(tr["z"], te["z"])
    pred = au_probe(xtr, tr["au"], xte, seed=seed)
    out = common.au_results(pred, te["au"], self.data.aus)
    if self.field("references"):
      if self._references is None:
        self._references = self.references(train, tr["au"], te["au"], seed)
      out.update(self._references)
    return out

  def references(self, train, ytr: np.ndarray, yte: np.ndarray, seed: int) -> dict[str, float]:
    """The raw-pixel probe and the all-present prediction on the same frames."""
    data = self.data
    # Read on every process, in source order (the embeddings are gathered in the same order).
    pixels = [
      raw_pixels([pipeline.decode_image(source[i]["image"]) for i in range(len(source))])
      for source in (train, data.test)
    ]
    ptr, pte = standardize(*pixels)
    pred = au_probe(ptr, ytr, pte, seed=seed)
    raw = common.au_results(pred, yte, data.aus)
    present = common.au_results(np.ones_like(yte, np.int8), yte, data.aus)
    return {
      "reference/raw_pixels/au_f1/mean": raw["au_f1/mean"],
      "reference/all_present/au_f1/mean": present["au_f1/mean"],
    }
