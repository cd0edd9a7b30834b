"""type 'au_test': AU occurrence F1 of the trained AU head on the test split.

Metrics: `au_f1/mean` and `au_f1/AU<a>` per AU (logit >= 0 is 'present'), and the trivial
reference on the same frames, `reference/all_present/au_f1/mean` (every AU predicted present).

Cross-dataset (`data=dict(...)` naming another dataset, e.g. train on BP4D and test on DISFA):
the head's AUs are those of the run's training data; the evaluator scores the AUs both datasets
code (by AU number, e.g. 1, 2, 4, 6, 12 for BP4D -> DISFA: the per-AU keys name them) and
reports `examples`, the test frames scored. A dataset sharing no AU with the head is an error
naming both lists.
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
    head_aus = list(ctx.data.aus)
    self.aus = [a for a in head_aus if a in self.data.aus]
    if not self.aus:
      raise ValueError(
        f"{self.key('data')}: {self.data.name}/{self.data.builder_config} codes AUs "
        f"{self.data.aus}, none of which the head predicts ({head_aus})"
      )
    self.head_cols = [head_aus.index(a) for a in self.aus]
    self.label_cols = [list(self.data.aus).index(a) for a in self.aus]

  def run(self, params) -> dict[str, Any]:
    e = self.embed(params, self.data.test, ("au",))
    logits = common.label_logits(self.ctx.fns, params, e["z"], self.ctx.mesh)[:, self.head_cols]
    label = e["au"][:, self.label_cols]
    out = common.au_results((logits >= 0).astype(np.int8), label, self.aus)
    trivial = common.au_results(np.ones_like(label, np.int8), label, self.aus)
    out["reference/all_present/au_f1/mean"] = trivial["au_f1/mean"]
    if self.data is not self.ctx.data:
      out["examples"] = int(len(label))
    return out
