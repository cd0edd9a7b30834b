"""type 'fer_test': expression recognition accuracy of the trained FER head on the test split.

The classes are `config.finetune.classes` (or all the dataset's); test images of other classes
are left out. Metrics: `fer/accuracy`, `fer/mean_class_accuracy`, `fer/num_examples`,
`fer/accuracy/<class>`, `fer/confusion_matrix` (also `<workdir>/<name>_confusion.png`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clef_jax.evaluators import common


class FerTest(common.Evaluator):
  zero_shot = False
  fields: dict[str, Any] = {}

  def __init__(self, name: str, ev, ctx: common.Context):
    super().__init__(name, ev, ctx)
    self.require_head()
    finetune = ctx.config.get("finetune", None)
    trained = list(finetune.classes) if finetune is not None and "classes" in finetune else []
    self.classes = trained or list(self.data.classes)
    if not self.classes:
      raise ValueError(
        f"{self.key('type')}='fer_test': dataset {self.data.name} has no expression classes"
      )

  def run(self, params) -> dict[str, Any]:
    e = self.embed(params, self.data.test, ("expression",))
    names = common.expression_names(e["expression"])
    keep = np.isin(names, self.classes)
    label = np.array([self.classes.index(c) for c in names[keep]], np.int64)
    logits = common.label_logits(self.ctx.fns, params, e["z"][keep], self.ctx.mesh)
    res = common.fer_results(logits.argmax(-1), label, self.classes)
    common.write_confusion(self.ctx.workdir, self.name, res, self.classes)
    return res
