"""type 'linear_probe_au': per-AU logistic probes on frozen image embeddings.

Fits one balanced sklearn logistic regression per AU on the embeddings of (a seeded sample of
`max_train`) training images, predicts the test split. Metrics: `au_f1/mean`, `au_f1/AU<a>`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clef_jax import datasets as data_lib
from clef_jax.evaluators import common


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
  fields: dict[str, Any] = {"max_train": 4000}

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

  def run(self, params) -> dict[str, Any]:
    seed = int(self.ctx.config.seed)
    n = len(self.data.train)
    idx = np.sort(np.random.default_rng(seed).choice(n, min(n, self.max_train), replace=False))
    tr = self.embed(params, data_lib.Subset(self.data.train, idx), ("au",))
    te = self.embed(params, self.data.test, ("au",))
    pred = au_probe(tr["z"], tr["au"], te["z"], seed=seed)
    return common.au_results(pred, te["au"], self.data.aus)
