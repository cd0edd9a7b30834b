"""type 'zeroshot_fer': expression recognition from prompts (docs/method.md "Zero-shot evaluation").

Every test image is classified by its nearest class text embedding: the prompt ensemble (mean
over templates, renormalised) of the class names, descriptions or both (`texts`). Protocols:
  prompts              a pretrained checkpoint; all the dataset's classes
  au_to_fer            an AU-fine-tuned checkpoint; all the dataset's classes
  unseen_expressions   a checkpoint fine-tuned on `seen`; accuracy on test images of `unseen`,
                       predicting over all classes and over the unseen ones only
Metrics: `protocol`, `texts`, then `fer/...` (as fer_test) and `chance`, or for
unseen_expressions `split`, `unseen_accuracy_all_classes`, `unseen_accuracy_unseen_only`,
`num_examples`, `chance_unseen_only`.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from clef_jax.evaluators import common

PROTOCOLS = ("prompts", "unseen_expressions", "au_to_fer")


def unseen_metrics(
  z: np.ndarray, names: np.ndarray, zcls: np.ndarray, classes: Sequence[str], unseen: Sequence[str]
) -> dict[str, Any]:
  """z [N, D] of unseen-class images with class `names` [N] str; zcls [C, D] -> accuracies."""
  classes = np.asarray(classes)
  uidx = np.array([list(classes).index(c) for c in unseen])
  pred_all = classes[(z @ zcls.T).argmax(-1)]
  pred_unseen = classes[uidx[(z @ zcls[uidx].T).argmax(-1)]]
  return {
    "unseen_accuracy_all_classes": float(np.mean(pred_all == names)),
    "unseen_accuracy_unseen_only": float(np.mean(pred_unseen == names)),
    "num_examples": len(names),
    "chance_unseen_only": 1.0 / len(uidx),
  }


class ZeroshotFer(common.Evaluator):
  zero_shot = True
  fields: dict[str, Any] = {"protocol": "prompts", "texts": "names", "seen": (), "unseen": ()}

  def __init__(self, name: str, ev, ctx: common.Context):
    super().__init__(name, ev, ctx)
    self.protocol = common.choice(name, "protocol", self.field("protocol"), PROTOCOLS)
    self.texts = common.choice(name, "texts", self.field("texts"), common.TEXT_KINDS)
    self.classes = list(self.data.classes)
    if not self.classes:
      raise ValueError(
        f"{self.key('type')}='zeroshot_fer': dataset {self.data.name}/"
        f"{self.data.builder_config} has no expression classes (set {self.key('data')}, "
        "e.g. dict(config='raf'))"
      )
    self.seen = self._classes("seen")
    self.unseen = self._classes("unseen")
    if self.protocol == "unseen_expressions":
      if not self.unseen:
        raise ValueError(f"{self.key('unseen')}=(): protocol 'unseen_expressions' needs classes")
      both = [c for c in self.unseen if c in self.seen]
      if both:
        raise ValueError(f"{self.key('unseen')}: {both} are also in {self.key('seen')}")

  def _classes(self, field: str) -> list[str]:
    value = self.field(field)
    value = [value] if isinstance(value, str) else list(value)
    bad = [c for c in value if c not in self.classes]
    if bad:
      raise ValueError(
        f"{self.key(field)}: {bad} are not classes of {self.data.name} ({self.classes})"
      )
    return value

  def run(self, params) -> dict[str, Any]:
    ctx = self.ctx
    zcls = common.classify_by_text(ctx.fns, params, ctx.tok, self.classes, self.texts, ctx.mesh)
    e = self.embed(params, self.data.test, ("expression",))
    names = common.expression_names(e["expression"])
    out: dict[str, Any] = {"protocol": self.protocol, "texts": self.texts}
    if self.protocol == "unseen_expressions":
      out["split"] = f"seen={self.seen} unseen={self.unseen}"
      logging.info("zero-shot split: seen %s, unseen %s", self.seen, self.unseen)
      keep = np.isin(names, self.unseen)
      if not keep.any():
        raise ValueError(
          f"{self.key('unseen')}: no test image of {self.unseen} in {self.data.name}"
        )
      out.update(unseen_metrics(e["z"][keep], names[keep], zcls, self.classes, self.unseen))
      return out
    keep = np.isin(names, self.classes)
    label = np.array([self.classes.index(c) for c in names[keep]], np.int64)
    res = common.fer_results((e["z"][keep] @ zcls.T).argmax(-1), label, self.classes)
    common.write_confusion(ctx.workdir, self.name, res, self.classes)
    return {**out, **res, "chance": 1.0 / len(self.classes)}
