"""What every evaluator shares: the run's Context, predict fns jitted once, and numpy helpers.

`make_predict_fns(objective)` jits the three functions evaluators need once per run, so a second
evaluation reuses the executables of the first (no retrace, no recompile). Every process runs the
same evaluation; embeddings are computed on the mesh and gathered to every host, so multi-host
runs agree on the numbers.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import io
import json
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from clef_jax import datasets as data_lib
from clef_jax import metrics as metrics_lib
from clef_jax import prompts
from clef_jax import sharding

from input_pipeline.schema import expression_index, expressions  # noqa: F401  (re-exported)

TEXT_KINDS = ("names", "descriptions", "both")
_COMMON_FIELDS = ("type", "every_steps", "data")


# ------------------------------------------------------------------------------------------
# Predict fns and the evaluation context.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PredictFns:
  """The objective's functions that evaluators call, each jitted once per run.

  embed_images(params, images uint8 [B, H, W, 3]) -> float32 [B, D] (L2-normalised)
  encode_tokens(params, tokens int32 [..., L]) -> float32 [..., D] (L2-normalised)
  label_logits(params, z float32 [N, D]) -> float32 [N, C] (FER) or [N, J] (AU); None when the
    objective has no trained head (pretrain, zero-shot).
  """

  embed_images: Callable[..., jax.Array]
  encode_tokens: Callable[..., jax.Array]
  label_logits: Callable[..., jax.Array] | None = None


def make_predict_fns(objective) -> PredictFns:
  """Jits the objective's embedding and prediction functions (build once per run)."""
  label_logits = None
  if objective.predict_fn is not None:

    def logits(params, z):
      return objective.predict(params, z, objective.embed_texts(params, jax.random.key(0)))

    label_logits = jax.jit(logits)
  return PredictFns(
    embed_images=jax.jit(lambda params, images: objective.embed_images(params, images)),
    encode_tokens=jax.jit(lambda params, tokens: objective.encode_tokens(params, tokens)),
    label_logits=label_logits,
  )


def _set_fields(node, overrides: dict[str, Any], where: str) -> None:
  for key, value in overrides.items():
    if key not in node:
      raise ValueError(f"{where}.{key}: not a field of config.data; known: {sorted(node)}")
    if isinstance(value, dict):
      _set_fields(node[key], value, f"{where}.{key}")
    else:
      try:
        node[key] = value
      except TypeError as e:
        raise ValueError(f"{where}.{key}={value!r}: {e}") from e


@dataclasses.dataclass
class Context:
  """What evaluators are built from: the run's config, data, mesh, tokenizer and predict fns."""

  config: Any
  data: data_lib.Data
  mesh: Any
  tok: Any
  fns: PredictFns
  workdir: str | None = None
  _opened: dict[str, data_lib.Data] = dataclasses.field(default_factory=dict, repr=False)

  def data_for(self, ev, name: str = "?") -> data_lib.Data:
    """The run's data, or (with `config.evals.<name>.data` overrides of config.data) that
    dataset, opened once and cached, e.g. `data=dict(config='raf')`. `name` is for messages."""
    overrides = ev.get("data", None)
    if not overrides:
      return self.data
    overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
    key = json.dumps(overrides, sort_keys=True, default=str)
    if key not in self._opened:
      config = copy.deepcopy(self.config)
      with config.unlocked():
        _set_fields(config.data, overrides, f"config.evals.{name}.data")
      self._opened[key] = data_lib.setup(config)
    return self._opened[key]


# ------------------------------------------------------------------------------------------
# Config checks shared by the evaluator constructors.
# ------------------------------------------------------------------------------------------


def check_fields(name: str, ev, known: Sequence[str]) -> None:
  """Unknown fields of `config.evals.<name>` are errors (known: `known` + type/every_steps/data)."""
  allowed = (*_COMMON_FIELDS, *known)
  for key in ev:
    if key not in allowed:
      raise ValueError(f"config.evals.{name}.{key}: unknown field; known: {sorted(allowed)}")


def every_steps(name: str, ev, config) -> int:
  """`ev.every_steps` if set, else `config.eval_every_steps`; 0 = only at the end."""
  value = ev.get("every_steps", None)
  value = config.get("eval_every_steps", 0) if value is None else value
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f"config.evals.{name}.every_steps={value!r}: expected an integer >= 0")
  return value


def choice(name: str, field: str, value: Any, allowed: Sequence[str]) -> Any:
  if value not in allowed:
    raise ValueError(f"config.evals.{name}.{field}={value!r}: expected one of {list(allowed)}")
  return value


# ------------------------------------------------------------------------------------------
# Embeddings.
# ------------------------------------------------------------------------------------------


def gather(x: jax.Array) -> np.ndarray:
  """A global jax.Array as one numpy array on every host."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def embed_source(
  fns: PredictFns,
  params,
  config,
  data: data_lib.Data,
  source,
  mesh,
  keys: Sequence[str],
  batch_size: int | None = None,
) -> dict[str, np.ndarray]:
  """Image embeddings `z` float32 [N, D] of a source plus its label `keys` [N, ...], padding
  removed (batches of `batch_size`, default config.batch_size, padded to a static shape)."""
  keys = tuple(dict.fromkeys(("image", "mask", *keys)))
  out: dict[str, list[np.ndarray]] = {}
  with jax.set_mesh(mesh):
    for batch in data_lib.eval_batches(config, data, source, keys, batch_size):
      batch = sharding.global_batch(
        {k: v for k, v in batch.items() if k in data_lib.NUMERIC_BATCH_KEYS}, mesh
      )
      out.setdefault("z", []).append(gather(fns.embed_images(params, batch["image"])))
      for k in keys:
        if k != "image":
          out.setdefault(k, []).append(gather(batch[k]))
  cat = {k: np.concatenate(v) for k, v in out.items()}
  valid = cat.pop("mask").astype(bool)
  return {k: v[valid] for k, v in cat.items()}


def label_logits(fns: PredictFns, params, z: np.ndarray, mesh) -> np.ndarray:
  """The trained head's logits of embeddings z [N, D] -> float32 [N, C or J]."""
  with jax.set_mesh(mesh):
    return gather(fns.label_logits(params, z))


# ------------------------------------------------------------------------------------------
# Prompt ensembles.
# ------------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
  """numpy `models.clip.l2_normalize`: the last axis to unit L2 norm (eps 1e-12)."""
  return x / np.maximum(np.sqrt(np.sum(np.square(x), axis=-1, keepdims=True)), 1e-12)


def encode_texts(fns: PredictFns, params, tok, texts: Sequence[Sequence[str]], mesh) -> np.ndarray:
  """Prompt ensemble: texts [T][C] -> float32 [C, D], the mean over templates, renormalised."""
  tokens = np.stack([tok(list(row)) for row in texts])
  with jax.set_mesh(mesh):
    z = gather(fns.encode_tokens(params, jnp.asarray(tokens)))
  return _unit(z.mean(0))


def class_texts(classes: Sequence[str], kind: str) -> list[list[list[str]]]:
  """Per kind ('names' | 'descriptions' | 'both'): the list of [T][C] template tables."""
  names = [[t.format(c) for c in classes] for t in prompts.templates("name")]
  descs = [
    [t.format(prompts.expression_description(c)) for c in classes]
    for t in prompts.templates("description")
  ]
  tables = {"names": [names], "descriptions": [descs], "both": [names, descs]}
  if kind not in tables:
    raise ValueError(f"texts={kind!r}: expected one of {list(TEXT_KINDS)}")
  return tables[kind]


def classify_by_text(fns: PredictFns, params, tok, classes, kind: str, mesh) -> np.ndarray:
  """float32 [C, D] classifier: the mean of the name and/or description ensembles, renormalised."""
  zs = [encode_texts(fns, params, tok, t, mesh) for t in class_texts(classes, kind)]
  return _unit(np.mean(zs, axis=0))


def expression_names(expression: np.ndarray) -> np.ndarray:
  """Canonical expression indices [N] int (-1 = unknown) -> names [N] str ('' = unknown)."""
  names = expressions()
  return np.array([names[i] if i >= 0 else "" for i in expression])


# ------------------------------------------------------------------------------------------
# Metrics.
# ------------------------------------------------------------------------------------------


def au_results(pred: np.ndarray, label: np.ndarray, aus: Sequence[int]) -> dict[str, float]:
  """pred [N, J] in {0,1}, label [N, J] in {-1,0,1} -> {'au_f1/mean', 'au_f1/AU<a>'...}."""
  per_au, mean = metrics_lib.au_f1(pred, label)
  out = {"au_f1/mean": float(mean)}
  out.update({f"au_f1/AU{a}": float(f) for a, f in zip(aus, per_au)})
  return out


def fer_results(pred: np.ndarray, label: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
  """pred, label [N] int class positions -> 'fer/accuracy', per-class and confusion matrix."""
  m = metrics_lib.fer_metrics(pred, label, len(classes))
  out = {
    "fer/accuracy": m["accuracy"],
    "fer/mean_class_accuracy": m["mean_class_accuracy"],
    "fer/num_examples": int(m["num_examples"]),
  }
  for c, a in zip(classes, m["per_class_accuracy"]):
    if np.isfinite(a):
      out[f"fer/accuracy/{c}"] = float(a)
  out["fer/confusion_matrix"] = m["confusion_matrix"].tolist()
  return out


def write_confusion(workdir: str | None, name: str, res: dict, classes: Sequence[str]) -> None:
  """Saves `<workdir>/<name>_confusion.png` of `res['fer/confusion_matrix']` (process 0 only)."""
  if workdir and jax.process_index() == 0:
    matrix = np.asarray(res["fer/confusion_matrix"])
    save_confusion_png(matrix, classes, str(epath.Path(workdir) / f"{name}_confusion.png"))


def save_confusion_png(matrix: np.ndarray, classes: Sequence[str], path: str) -> None:
  """A row-normalised confusion matrix [C, C] (true x predicted) with counts, as a PNG."""
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
      color = "white" if norm[i, j] > 0.5 else "black"
      ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7, color=color)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  epath.Path(path).write_bytes(buf.getvalue())


# ------------------------------------------------------------------------------------------
# The evaluator base class.
# ------------------------------------------------------------------------------------------


class Evaluator(abc.ABC):
  """One `config.evals.<name>` entry. Subclasses set `zero_shot`, `fields` ({field: default})
  and `run(params) -> {metric: value}` (names without the `<name>/` prefix)."""

  zero_shot: bool = False  # True: needs no trained head (what mode=zeroshot runs)
  fields: dict[str, Any] = {}

  def __init__(self, name: str, ev, ctx: Context):
    check_fields(name, ev, tuple(self.fields))
    self.name, self.ev, self.ctx = name, ev, ctx
    self.every_steps = every_steps(name, ev, ctx.config)
    self.data = ctx.data_for(ev, name)

  def key(self, field: str) -> str:
    """The config path of one of this evaluator's fields, for messages."""
    return f"config.evals.{self.name}.{field}"

  def field(self, field: str) -> Any:
    value = self.ev.get(field, None)
    return self.fields[field] if value is None else value

  def require_head(self) -> None:
    if self.ctx.fns.label_logits is None:
      raise ValueError(
        f"{self.key('type')}={self.ev.type!r} predicts with a trained head, but this run's "
        "objective has none (it is for mode=finetune)"
      )

  def embed(self, params, source, keys: Sequence[str]) -> dict[str, np.ndarray]:
    ctx = self.ctx
    return embed_source(ctx.fns, params, ctx.config, self.data, source, ctx.mesh, keys)

  @abc.abstractmethod
  def run(self, params) -> dict[str, Any]:
    """This evaluator's metrics on `params`, without the `<name>/` prefix."""
