"""type 'au_intensity_test': AU intensity (0-5) of the trained intensity head on the test split.

Metrics per AU and their mean: `au_int/icc/*` (ICC(3,1), prediction and FACS code as the two
raters), `au_int/mae/*` and `au_int/pearson/*`, on the frames whose code is known; and the
trivial reference of the same frames, `reference/train_mean/au_int/mae/*` (every test frame
predicted at the training frames' mean code; its ICC and r are 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clef_jax import metrics as metrics_lib
from clef_jax import objectives
from clef_jax.evaluators import common


class AuIntensityTest(common.Evaluator):
  zero_shot = False
  fields: dict[str, Any] = {}

  def __init__(self, name: str, ev, ctx: common.Context):
    super().__init__(name, ev, ctx)
    self.require_head()
    self.aus, self.columns = objectives.intensity_columns(ctx.config, self.data)
    freq = objectives.intensity_level_freq(self.data, self.columns)  # [J, 6] training shares
    self.train_mean = freq @ np.arange(objectives.INTENSITY_LEVELS)

  def run(self, params) -> dict[str, Any]:
    e = self.embed(params, self.data.test, ("au_intensity",))
    label = np.asarray(e["au_intensity"])[:, self.columns]
    pred = common.label_logits(self.ctx.fns, params, e["z"], self.ctx.mesh)
    res = metrics_lib.intensity_metrics(pred, label, self.aus)
    const = np.broadcast_to(self.train_mean, label.shape)
    ref = metrics_lib.intensity_metrics(const, label, self.aus)
    res.update({f"reference/train_mean/{k}": v for k, v in ref.items() if "/mae/" in k})
    return res
