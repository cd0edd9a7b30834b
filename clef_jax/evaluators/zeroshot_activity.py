"""type 'zeroshot_activity': which activity (task) a test image comes from, by its texts.

Each test image is classified by its nearest activity text embedding (the dataset's activity
texts, one per task). Metrics: `activity_accuracy` and `chance` (1 / number of activities).
"""

from __future__ import annotations

from typing import Any

from clef_jax.evaluators import common


class ZeroshotActivity(common.Evaluator):
  zero_shot = True
  fields: dict[str, Any] = {}

  def __init__(self, name: str, ev, ctx: common.Context):
    super().__init__(name, ev, ctx)
    self.texts = list(self.data.activity_texts)
    if not self.texts or not all(self.texts):
      raise ValueError(
        f"{self.key('type')}='zeroshot_activity': dataset {self.data.name} has no activity texts"
      )

  def run(self, params) -> dict[str, Any]:
    ctx = self.ctx
    e = self.embed(params, self.data.test, ("activity_id",))
    zt = common.encode_texts(ctx.fns, params, ctx.tok, [self.texts], ctx.mesh)
    keep = e["activity_id"] >= 0
    pred = (e["z"][keep] @ zt.T).argmax(-1)
    acc = float((pred == e["activity_id"][keep]).mean()) if keep.any() else float("nan")
    return {"activity_accuracy": acc, "chance": 1.0 / len(self.texts)}
