"""A run's trained label heads as one linear layer on the image embedding, and their side file.

Every stage-2 head clef-jax trains is affine in the L2-normalised image embedding z:
  linear          W (sqrt(D)·z) + b
  text, FER       s · z Cᵀ                  (C: the label-text embeddings, s: the logit scale)
  text, AU        s_au · z Cᵀ + b
  text, AU pairs  s · (z Cᵀ − z Nᵀ)         (N: the "without AU" prompts)
  intensity, text  s · z Lᵀ + b_jk          (L: the AU-level texts, J AUs x K = 6 levels)
  intensity, linear W (sqrt(D)·z) + b       (one regressed code per AU)
so a head is stored as `weight [C, D]` and `bias [C]` with `logits = z @ weight.T + bias`, read
off the run's own predict function (`from_run`; for intensity, off its level logits). Anyone
with the image tower (a transformers `CLIPModel`, after `export.save_hf`) gets the run's
outputs without our code or label texts:

  z = model.get_image_features(pixel_values).pooler_output; z = z / z.norm(dim=-1, keepdim=True)
  logits = torch.nn.functional.linear(z, weight, bias)
  AU: sigmoid(logits) >= 0.5 is "present"; FER: softmax over `labels`, argmax.
  AU intensity, output "expected_level": logits.view(N, J, levels).softmax(-1) @ arange(levels)
  (levels 6: FACS 0 and A-E); output "clip": logits.clamp(0, levels - 1).

Side file (`save` / `load`), beside the CLIP folder's files:
  clef_heads.json         {"format": "clef-heads", "version": 1, "input": ..., "heads": [
                            {"task": "au"|"fer"|"au_intensity", "labels": [...],
                             "label_names": [...],
                             "trained_head": "linear"|"text"|"text_prompt_pair",
                             "output": "sigmoid"|"softmax"|"expected_level"|"clip",
                             "threshold": 0.5 | null, "levels": 6 (au_intensity only),
                             "weight": "<task>.weight", "bias": "<task>.bias"}]}
  clef_heads.safetensors  the named float32 tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from input_pipeline import paths

FORMAT = "clef-heads"
VERSION = 1
JSON_NAME = "clef_heads.json"
TENSORS_NAME = "clef_heads.safetensors"
LABELS_NAME = "labels.json"  # what a fine-tuning run classifies, written into its workdir
INPUT = (
  "the L2-normalised image embedding: transformers CLIPModel.get_image_features(pixel_values)"
  " (its .pooler_output in transformers >= 5) divided by its L2 norm; logits = z @ weight.T + bias"
)


@dataclasses.dataclass(frozen=True)
class Head:
  """One task's head: `logits = z @ weight.T + bias` on unit-norm image embeddings z."""

  task: str  # 'au' | 'fer' | 'au_intensity'
  labels: tuple  # AU numbers (int) or expression names (str), in logit order
  weight: np.ndarray  # float32 [C, D] (au_intensity text head: C = J x levels, AU-major)
  bias: np.ndarray  # float32 [C]
  trained_head: str = "linear"  # what the run trained: 'linear' | 'text' | 'text_prompt_pair'
  levels: int = 0  # au_intensity: the intensity levels (6: 0-5)

  def __post_init__(self):
    if self.task not in ("au", "fer", "au_intensity"):
      raise ValueError(f"Head.task={self.task!r}: expected 'au', 'fer' or 'au_intensity'")
    if (self.task == "au_intensity") != (self.levels > 1):
      raise ValueError(f"Head {self.task}: levels={self.levels} (> 1 exactly for au_intensity)")
    w, b = np.asarray(self.weight), np.asarray(self.bias)
    rows = len(self.labels) * (self.levels if self.output == "expected_level" else 1)
    if w.ndim != 2 or b.shape != (w.shape[0],) or w.shape[0] != rows:
      raise ValueError(
        f"Head {self.task}: weight {w.shape}, bias {b.shape} and {len(self.labels)} labels "
        f"do not agree (expected weight [{rows}, D], bias [{rows}])"
      )

  @property
  def output(self) -> str:
    if self.task == "au_intensity":
      return "expected_level" if self.trained_head == "text" else "clip"
    return "sigmoid" if self.task == "au" else "softmax"

  def intensities(self, z: np.ndarray) -> np.ndarray:
    """au_intensity: [N, D] unit-norm embeddings -> float32 [N, J] intensities in [0, levels-1]."""
    logits = self.logits(z).astype(np.float64)
    if self.output == "clip":
      return np.clip(logits, 0, self.levels - 1).astype(np.float32)
    x = logits.reshape(len(logits), len(self.labels), self.levels)
    e = np.exp(x - x.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return (p @ np.arange(self.levels)).astype(np.float32)

  def logits(self, z: np.ndarray) -> np.ndarray:
    """float32 [N, D] unit-norm embeddings -> [N, C] logits."""
    return np.asarray(z, np.float32) @ self.weight.T + self.bias

  def probabilities(self, z: np.ndarray) -> np.ndarray:
    """[N, C]: per-AU sigmoid (AU) or the softmax over the classes (FER)."""
    logits = self.logits(z).astype(np.float64)
    if self.task == "au":
      return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


# ------------------------------------------------------------------------------------------
# From a run.
# ------------------------------------------------------------------------------------------


def write_labels(workdir: str, task: str, labels: Sequence) -> None:
  """Records in a fine-tuning run's workdir what its head classifies (read by `from_run`)."""
  labels = [int(x) if task in ("au", "au_intensity") else str(x) for x in labels]
  text = json.dumps({"task": task, "labels": labels}, indent=2) + "\n"
  paths.write_text(paths.path(workdir) / LABELS_NAME, text)


def read_labels(workdir: str) -> tuple[str, list] | None:
  """(task, labels) of a fine-tuning run's workdir, or None when it has no labels.json."""
  path = paths.path(workdir) / LABELS_NAME
  if not path.is_file():
    return None
  try:
    d = json.loads(path.read_text(encoding="utf-8"))
    task, labels = d["task"], list(d["labels"])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not a clef-jax labels file ({type(e).__name__}: {e})") from None
  return task, labels


@dataclasses.dataclass
class Run:
  """What a finished workdir holds for inference: config, towers + heads, tokenizer, head."""

  workdir: str
  config: Any  # ml_collections.ConfigDict of config.json
  params: dict[str, Any]  # numpy; 'visual', 'text', 'logit_scale' (+ 'heads')
  tokenizer: Any  # clef_jax.tokenizer.Tokenizer
  step: int
  head: Head | None  # None for runs without a trained head (pretrain, foundation)


def load_run(workdir: str, step: int | None = None) -> Run:
  """Reads a clef-jax workdir: its config.json, a checkpoint (latest or `step`), tokenizer,
  and (fine-tuning runs) the trained head as weight/bias."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from clef_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from clef_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top

  raw, params, step = checkpoint.load_run_state(workdir, step)
  if "model" not in raw or "mode" not in raw:
    raise ValueError(f"{workdir}/config.json has no model/mode; not a clef-jax run")
  config = ml_collections.ConfigDict(raw)
  tok = tokenizer_lib.get(config.tokenizer, context_length=config.model.context_length)
  head = None
  if config.mode in ("finetune", "linear_probe") and "heads" in params:
    recorded = read_labels(workdir)
    if recorded is None:
      labels = _labels_from_data(config, workdir)
    else:
      task, labels = recorded
      if task != config.finetune.task:
        raise ValueError(
          f"{paths.path(workdir) / LABELS_NAME} says task {task!r}, config.json says "
          f"{config.finetune.task!r}"
        )
    head = from_run(config, params, tok, labels)
  return Run(workdir, config, params, tok, step, head)


def _labels_from_data(config, workdir: str) -> list:
  """Labels of a run that predates labels.json: from its dataset, if it can be opened."""
  from clef_jax import datasets as data_lib  # pylint: disable=g-import-not-at-top
  from clef_jax import objectives  # pylint: disable=g-import-not-at-top

  try:
    data = data_lib.for_finetune(config, data_lib.setup(config))
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
      f"{paths.path(workdir) / LABELS_NAME} is missing (a run from before it was written) and "
      f"the run's dataset {config.data.name}/{config.data.config} cannot be opened to name the "
      f"head's labels: {type(e).__name__}: {e}"
    ) from None
  return objectives.trained_labels(config, data)


def from_run(run_config, params, tokenizer, labels: Sequence) -> Head:
  """The run's head as weight/bias, read off its own (jitted) predict function.

  The head's logits are affine in z, so `bias = f(0)` and `weight[:, d] = f(e_d) - f(0)`;
  a check on random unit vectors makes sure the run's head really is affine.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from clef_jax import models  # pylint: disable=g-import-not-at-top
  from clef_jax import objectives  # pylint: disable=g-import-not-at-top
  from clef_jax.evaluators import common  # pylint: disable=g-import-not-at-top

  fc = run_config.finetune
  model = models.build(run_config.model)
  levels = 0
  if fc.task == "au_intensity":
    objective = objectives.intensity_objective(
      run_config, model, tokenizer, labels, columns=range(len(labels))
    )
    levels = objectives.INTENSITY_LEVELS

    def affine(p, z):  # the level logits [n, J, K] (text) / regressed codes [n, J] (linear)
      out = objective.head_fn(p, z, objective.embed_texts(p, jax.random.key(0)))
      return out.reshape(out.shape[0], -1)

    head_fn = jax.jit(affine)
  else:
    objective = objectives.finetune_objective(run_config, model, tokenizer, labels)
    head_fn = common.make_predict_fns(objective).label_logits
  dim = int(run_config.model.embed_dim)
  basis = np.concatenate([np.zeros((1, dim), np.float32), np.eye(dim, dtype=np.float32)])
  out = np.asarray(jax.device_get(head_fn(params, jnp.asarray(basis))), np.float64)
  bias = out[0]
  weight = (out[1:] - bias).T  # [C, D]
  z = np.random.default_rng(0).normal(size=(8, dim))
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  want = np.asarray(jax.device_get(head_fn(params, jnp.asarray(z, jnp.float32))))
  got = z @ weight.T + bias
  if not np.allclose(got, want, atol=1e-4, rtol=1e-4):
    raise ValueError(
      f"the run's {fc.task} head is not affine in the embedding (max error "
      f"{np.abs(got - want).max():.3g}); it cannot be exported as weight/bias"
    )
  trained = fc.head
  if fc.head == "text" and fc.task == "au" and fc.au_head == "prompt_pair":
    trained = "text_prompt_pair"
  is_au = fc.task in ("au", "au_intensity")
  labels = tuple(int(x) for x in labels) if is_au else tuple(str(x) for x in labels)
  return Head(
    task=fc.task,
    labels=labels,
    weight=weight.astype(np.float32),
    bias=bias.astype(np.float32),
    trained_head=trained,
    levels=levels,
  )


# ------------------------------------------------------------------------------------------
# The side file.
# ------------------------------------------------------------------------------------------


def save(folder: str | os.PathLike, heads: Sequence[Head]) -> list[pathlib.Path]:
  """Writes clef_heads.json + clef_heads.safetensors into `folder`; returns their paths."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  folder = pathlib.Path(folder)
  tasks = [h.task for h in heads]
  if len(set(tasks)) != len(tasks):
    raise ValueError(f"heads.save: one head per task, got tasks {tasks}")
  tensors, entries = {}, []
  for h in heads:
    tensors[f"{h.task}.weight"] = np.ascontiguousarray(h.weight, np.float32)
    tensors[f"{h.task}.bias"] = np.ascontiguousarray(h.bias, np.float32)
    entries.append(
      {
        "task": h.task,
        "labels": list(h.labels),
        "label_names": _readable_names(h),
        "trained_head": h.trained_head,
        "output": h.output,
        "threshold": 0.5 if h.task == "au" else None,
        **({"levels": h.levels} if h.task == "au_intensity" else {}),
        "weight": f"{h.task}.weight",
        "bias": f"{h.task}.bias",
      }
    )
  meta = {"format": FORMAT, "version": VERSION, "input": INPUT, "heads": entries}
  json_path, tensors_path = folder / JSON_NAME, folder / TENSORS_NAME
  json_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
  safetensors.numpy.save_file(tensors, str(tensors_path), metadata={"format": FORMAT})
  return [json_path, tensors_path]


def load(folder: str | os.PathLike) -> list[Head]:
  """The heads of an exported folder ([] when it has no clef_heads.json)."""
  folder = pathlib.Path(folder)
  json_path, tensors_path = folder / JSON_NAME, folder / TENSORS_NAME
  if not json_path.is_file():
    return []
  try:
    meta = json.loads(json_path.read_text(encoding="utf-8"))
  except ValueError as e:
    raise ValueError(f"{json_path}: not valid JSON ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise ValueError(f"{json_path}: not a {FORMAT} file (format={meta.get('format')!r})")
  if meta.get("version") != VERSION:
    raise ValueError(
      f"{json_path}: {FORMAT} version {meta.get('version')!r}; this clef-jax reads {VERSION}"
    )
  if not tensors_path.is_file():
    raise FileNotFoundError(f"{json_path} names tensors, but {tensors_path} is missing")
  import safetensors  # pylint: disable=g-import-not-at-top
  import safetensors.numpy  # pylint: disable=g-import-not-at-top

  try:
    tensors = safetensors.numpy.load_file(str(tensors_path))
  except (safetensors.SafetensorError, OSError) as e:
    raise ValueError(f"{tensors_path}: unreadable safetensors file ({e})") from None
  heads = []
  for i, entry in enumerate(meta.get("heads", [])):
    where = f"{json_path}: heads[{i}]"
    try:
      w, b = tensors[entry["weight"]], tensors[entry["bias"]]
      heads.append(
        Head(
          task=entry["task"],
          labels=tuple(entry["labels"]),
          weight=np.asarray(w, np.float32),
          bias=np.asarray(b, np.float32),
          trained_head=entry.get("trained_head", "linear"),
          levels=int(entry.get("levels", 0)),
        )
      )
    except KeyError as e:
      raise ValueError(f"{where}: missing key or tensor {e}") from None
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
  return heads


def _readable_names(h: Head) -> list[str]:
  if h.task == "fer":
    return [str(x) for x in h.labels]
  from clef_jax import prompts  # pylint: disable=g-import-not-at-top

  out = []
  for a in h.labels:
    try:
      out.append(f"AU{a} {prompts.au_name(a)}")
    except KeyError:
      out.append(f"AU{a}")
  return out
