"""type 'au_test': AU occurrence F1 of the trained AU head on the test split.

Metrics: `au_f1/mean` and `au_f1/AU<a>` per AU of the dataset (logit >= 0 is 'present').
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clef_jax.evaluators import common


class AuTest(common.Evaluator):
  zero_shot = False
  fields: dict[str, Any] = {}

  def __init__(self, name: str, ev, ctx: common.Context):
    super().__init__(name, ev, ctx)
    self.require_head()
    if not self.data.aus:
      raise ValueError(f"{self.key('type')}='au_test': dataset {self.data.name} has no AU labels")

  def run(self, params) -> dict[str, Any]:
    e = self.embed(params, self.data.test, ("au",))
    logits = common.label_logits(self.ctx.fns, params, e["z"], self.ctx.mesh)
    return common.au_results((logits >= 0).astype(np.int8), e["au"], self.data.aus)
