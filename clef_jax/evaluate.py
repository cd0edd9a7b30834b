"""Evaluators: AU F1, FER accuracy, linear probes on frozen embeddings, zero-shot by prompts.

Evaluators are config data (`config.evals.<name>.type`) and each returns a flat dict of metrics
named `<name>/<metric>`, e.g. `test/au_f1/mean`, `test/au_f1/AU12`, `test/fer/accuracy`.
Every process runs the same evaluation; embeddings are computed on the mesh and gathered to
every host, so multi-host runs agree on the numbers.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from clef_jax import datasets as data_lib
from clef_jax import metrics as metrics_lib
from clef_jax import prompts
from clef_jax import sharding

EVAL_TYPES = ("au_test", "fer_test", "linear_probe_au", "zeroshot_activity")


def canonical_names() -> list[str]:
  return prompts.expressions()


def canonical_index(name: str) -> int:
  return prompts.expression_index(name)


def _gather(x: jax.Array) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def embed_source(
  objective, params, config, data, source, mesh, keys: Sequence[str], batch_size: int | None = None
) -> dict[str, np.ndarray]:
  """Image embeddings `z` [N, D] of a source plus its label `keys`, padding removed."""
  keys = tuple(dict.fromkeys(("image", "mask", *keys)))
  embed = jax.jit(objective.embed_images)
  out: dict[str, list[np.ndarray]] = {}
  with jax.set_mesh(mesh):
    for batch in data_lib.eval_batches(config, data, source, keys, batch_size):
      batch = sharding.global_batch(
        {k: v for k, v in batch.items() if k in data_lib.NUMERIC_BATCH_KEYS}, mesh
      )
      out.setdefault("z", []).append(_gather(embed(params, batch["image"])))
      for k in keys:
        if k != "image":
          out.setdefault(k, []).append(_gather(batch[k]))
  cat = {k: np.concatenate(v) for k, v in out.items()}
  valid = cat.pop("mask").astype(bool)
  return {k: v[valid] for k, v in cat.items()}


def text_embeddings(objective, params, mesh) -> dict[str, np.ndarray]:
  with jax.set_mesh(mesh):
    z = jax.jit(objective.embed_texts)(params, jax.random.key(0))
  return {k: _gather(v) for k, v in z.items()}


def encode_texts(objective, params, tok, texts: Sequence[Sequence[str]], mesh) -> np.ndarray:
  """Prompt ensemble: texts [T][C] -> [C, D], mean over templates, renormalised."""
  tokens = np.stack([tok(list(row)) for row in texts])
  with jax.set_mesh(mesh):
    z = _gather(jax.jit(objective.encode_tokens)(params, jnp.asarray(tokens)))
  z = z.mean(0)
  return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def class_texts(classes: Sequence[str], kind: str) -> list[list[list[str]]]:
  """Per kind ('names' | 'descriptions' | 'both'): the list of [T][C] template tables."""
  names = [[t.format(c) for c in classes] for t in prompts.templates("name")]
  descs = [
    [t.format(prompts.expression_description(c)) for c in classes]
    for t in prompts.templates("description")
  ]
  if kind == "names":
    return [names]
  if kind == "descriptions":
    return [descs]
  if kind == "both":
    return [names, descs]
  raise ValueError(f"config.zeroshot.texts={kind!r}: expected 'names', 'descriptions' or 'both'")


def classify_by_text(objective, params, tok, classes, kind, mesh) -> np.ndarray:
  """[C, D] classifier: the mean of the name and/or description ensembles, renormalised."""
  zs = [encode_texts(objective, params, tok, t, mesh) for t in class_texts(classes, kind)]
  z = np.mean(zs, axis=0)
  return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def au_results(prefix: str, pred: np.ndarray, label: np.ndarray, aus: Sequence[int]) -> dict:
  per_au, mean = metrics_lib.au_f1(pred, label)
  out = {f"{prefix}au_f1/mean": float(mean)}
  out.update({f"{prefix}au_f1/AU{a}": float(f) for a, f in zip(aus, per_au)})
  return out


def fer_results(prefix: str, pred, label, classes: Sequence[str], workdir: str | None) -> dict:
  m = metrics_lib.fer_metrics(pred, label, len(classes))
  out = {
    f"{prefix}fer/accuracy": m["accuracy"],
    f"{prefix}fer/mean_class_accuracy": m["mean_class_accuracy"],
    f"{prefix}fer/num_examples": int(m["num_examples"]),
  }
  for c, a in zip(classes, m["per_class_accuracy"]):
    if np.isfinite(a):
      out[f"{prefix}fer/accuracy/{c}"] = float(a)
  out[f"{prefix}fer/confusion_matrix"] = m["confusion_matrix"].tolist()
  if workdir and jax.process_index() == 0:
    save_confusion_png(
      m["confusion_matrix"],
      classes,
      os.path.join(workdir, f"{prefix.replace('/', '_')}confusion.png"),
    )
  return out


def save_confusion_png(matrix: np.ndarray, classes: Sequence[str], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(1 + 0.6 * len(classes), 1 + 0.6 * len(classes)))
  norm = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
  ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
  ax.set_yticks(range(len(classes)), classes)
  for i in range(len(classes)):
    for j in range(len(classes)):
      ax.text(
        j,
        i,
        str(int(matrix[i, j])),
        ha="center",
        va="center",
        fontsize=7,
        color="white" if norm[i, j] > 0.5 else "black",
      )
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def logistic_probe(
  xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, *, seed: int = 0, balanced: bool = True
) -> np.ndarray:
  """sklearn logistic regression on frozen features; returns test predictions [N]."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top

  clf = LogisticRegression(
    max_iter=2000, C=1.0, random_state=seed, class_weight="balanced" if balanced else None
  )
  clf.fit(xtr, ytr)
  return clf.predict(xte)


def au_probe(ztr, ytr, zte, *, seed: int = 0) -> np.ndarray:
  """Per-AU balanced logistic probes on frozen embeddings; masked (-1) training labels skipped."""
  pred = np.zeros((zte.shape[0], ytr.shape[1]), np.int8)
  for j in range(ytr.shape[1]):
    known = ytr[:, j] >= 0
    y = ytr[known, j]
    if len(np.unique(y)) < 2:  # nothing to learn: predict the only class seen
      pred[:, j] = y[0] if len(y) else 0
      continue
    pred[:, j] = logistic_probe(ztr[known], y, zte, seed=seed)
  return pred


class Evaluators:
  """Runs `config.evals` on the current params; `run(params) -> {metric: value}`."""

  def __init__(self, config, model, objective, data, mesh, tok, workdir: str | None = None):
    self.config, self.model, self.objective = config, model, objective
    self.data, self.mesh, self.tok, self.workdir = data, mesh, tok, workdir
    for name, ev in config.evals.items():
      if ev.type not in EVAL_TYPES:
        raise ValueError(f"config.evals.{name}.type={ev.type!r}: expected one of {EVAL_TYPES}")

  def run(self, params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, ev in self.config.evals.items():
      fn = getattr(self, f"_{ev.type}")
      res = fn(params, ev, f"{name}/")
      logging.info(
        "eval %s: %s", name, {k: round(v, 4) for k, v in res.items() if isinstance(v, float)}
      )
      out.update(res)
    return out

  def _embed(self, params, source, keys):
    return embed_source(self.objective, params, self.config, self.data, source, self.mesh, keys)

  def _au_test(self, params, ev, prefix):
    e = self._embed(params, self.data.test, ("au",))
    zt = text_embeddings(self.objective, params, self.mesh)
    logits = np.asarray(jax.jit(self.objective.predict)(params, e["z"], zt))
    return au_results(prefix, (logits >= 0).astype(np.int8), e["au"], self.data.aus)

  def _fer_test(self, params, ev, prefix):
    classes = list(self.config.finetune.classes) or list(self.data.classes)
    e = self._embed(params, self.data.test, ("expression",))
    keep = np.isin(e["expression"], [canonical_index(c) for c in classes])
    label = np.array([classes.index(canonical_names()[i]) for i in e["expression"][keep]], np.int64)
    zt = text_embeddings(self.objective, params, self.mesh)
    logits = np.asarray(jax.jit(self.objective.predict)(params, e["z"][keep], zt))
    return fer_results(prefix, logits.argmax(-1), label, classes, self.workdir)

  def _linear_probe_au(self, params, ev, prefix):
    if not self.data.aus:
      raise ValueError(f"evaluator {prefix[:-1]}: dataset {self.data.name} has no AU labels")
    n = len(self.data.train)
    rng = np.random.default_rng(self.config.seed)
    idx = np.sort(rng.choice(n, min(n, int(ev.max_train)), replace=False))
    tr = self._embed(params, data_lib.Subset(self.data.train, idx), ("au",))
    te = self._embed(params, self.data.test, ("au",))
    pred = au_probe(tr["z"], tr["au"], te["z"], seed=self.config.seed)
    return au_results(prefix, pred, te["au"], self.data.aus)

  def _zeroshot_activity(self, params, ev, prefix):
    texts = self.data.activity_texts
    if not texts or not all(texts):
      raise ValueError(f"evaluator {prefix[:-1]}: dataset {self.data.name} has no activity texts")
    e = self._embed(params, self.data.test, ("activity_id",))
    zt = encode_texts(self.objective, params, self.tok, [texts], self.mesh)
    keep = e["activity_id"] >= 0
    pred = (e["z"][keep] @ zt.T).argmax(-1)
    acc = float(np.mean(pred == e["activity_id"][keep])) if keep.any() else float("nan")
    return {f"{prefix}activity_accuracy": acc, f"{prefix}chance": 1.0 / len(texts)}
