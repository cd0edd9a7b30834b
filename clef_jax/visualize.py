"""What a run learned, as figures: embedding maps (t-SNE) and text-relevance heatmaps.

  python -m clef_jax.visualize embeddings --workdir=W1 [--workdir=W2 ...] --out=map.png \
      [--split=test] [--max=2000]
  python -m clef_jax.visualize relevance --workdir=W --images=6 --out=DIR \
      [--texts=names,descriptions] [--labels=auto|au|expression]

`embeddings` embeds (a seeded sample of) the test images of each run's dataset (read from the
run's config.json), projects them to 2-D with scikit-learn's t-SNE and draws one row per
workdir: points coloured by expression (activity, or most frequent AU, where the data has no
expression) and, side by side, by subject. It prints kNN label purity and silhouette scores of
the *embeddings* (not of the projection) for both labellings: identity leakage as a number.

`relevance` overlays, for every label prompt, the image regions that drive the cosine
similarity cos(f(x), g(t)) between image and prompt: integrated gradients with respect to the
input pixels (mean-colour baseline, midpoint Riemann sum along the straight path), positive
part summed over channels, Gaussian smoothing, each map normalised to sum 1.
"""

from __future__ import annotations

import functools
import json
import os
import textwrap
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import ndimage

from clef_jax import checkpoint as ckpt_lib
from clef_jax import models
from clef_jax import prompts
from input_pipeline import paths

RELEVANCE_METHOD = (
  "integrated gradients of cos(image, prompt) w.r.t. pixels "
  "({steps} steps, mean-colour baseline), positive part summed over "
  "channels, Gaussian σ={sigma:.1f}px"
)
TEXT_KINDS = ("names", "descriptions")
LABEL_KINDS = ("auto", "au", "expression")


# ------------------------------------------------------------------------------------------
# Loading a run.
# ------------------------------------------------------------------------------------------


def load_run(
  workdir: str, data_dir: str | None = None
) -> tuple[ml_collections.ConfigDict, Any, dict[str, Any]]:
  """(config, model, params) of a finished run; params hold only the CLIP towers (numpy).

  `data_dir`, when given, replaces the run's `config.data.data_dir` (e.g. a moved dataset).
  """
  cfg, params = ckpt_lib.load_params(workdir)
  config = ml_collections.ConfigDict(cfg)
  if "model" not in config or "data" not in config:
    raise ValueError(
      f"{paths.path(workdir) / 'config.json'}: no 'model'/'data' section; "
      "is this a clef-jax workdir?"
    )
  if data_dir:
    config.data.data_dir = data_dir
  missing = [k for k in ("visual", "text") if k not in params]
  if missing:
    raise ValueError(f"{workdir}: checkpoint params lack {missing} (have {sorted(params)})")
  params = {k: params[k] for k in ("visual", "text", "logit_scale") if k in params}
  return config, models.build(config.model), params


def _open_data(config: ml_collections.ConfigDict):
  from clef_jax import datasets  # pylint: disable=g-import-not-at-top  (pulls in TFDS)

  return datasets.setup(config)


def _split_source(config, data, split: str, decode: bool):
  """The source of `split`: 'test'/'train' mean the run's own (fold) splits."""
  from input_pipeline import sources  # pylint: disable=g-import-not-at-top

  name = {"test": data.test_split, "train": data.train_split}.get(split, split)
  return name, sources.open_source(
    data.name, name, data.data_dir, config=data.builder_config or None, decode_images=decode
  )


def _sample(n: int, max_examples: int, seed: int) -> np.ndarray:
  if n == 0:
    raise ValueError("the split is empty")
  if max_examples <= 0 or n <= max_examples:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))


# ------------------------------------------------------------------------------------------
# Embedding maps.
# ------------------------------------------------------------------------------------------


def tsne_2d(z: np.ndarray, *, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
  """t-SNE (scikit-learn, cosine metric, PCA init) of `z` [N, D] → `[N, 2] float32`.

  The perplexity is capped at (N - 1) / 3 so that small sets still work; below 200 points the
  exact gradient is used (cheap there, and Barnes-Hut's OpenMP threads are slow on a busy CPU).
  """
  from sklearn import manifold  # pylint: disable=g-import-not-at-top

  z = np.asarray(z, np.float64)
  if z.ndim != 2 or len(z) < 4:
    raise ValueError(f"t-SNE needs [N >= 4, D] embeddings, got shape {z.shape}")
  perplexity = float(min(perplexity, (len(z) - 1) / 3))
  tsne = manifold.TSNE(
    2,
    perplexity=perplexity,
    metric="cosine",
    init="pca",
    random_state=seed,
    method="exact" if len(z) < 200 else "barnes_hut",
  )
  return tsne.fit_transform(z).astype(np.float32)


def label_purity(z: np.ndarray, labels: Sequence[Any], k: int = 10) -> float:
  """Mean share of each point's k nearest neighbours (Euclidean, self excluded) with its label.

  Args:
    z: `[N, D]` embeddings (L2-normalised ones rank neighbours as cosine does).
    labels: `[N]` labels of any hashable type.
    k: neighbours per point; must be < N.

  Returns:
    kNN purity in [0, 1]; its chance level is `purity_chance(labels)`.
  """
  from sklearn import neighbors  # pylint: disable=g-import-not-at-top

  z = np.asarray(z, np.float64)
  labels = np.asarray(labels)
  if z.ndim != 2 or len(z) != len(labels):
    raise ValueError(f"z {z.shape} and labels {labels.shape} must be [N, D] and [N]")
  if not 1 <= k < len(z):
    raise ValueError(f"k={k} must be in [1, N-1] with N={len(z)}")
  nn = neighbors.NearestNeighbors(n_neighbors=k + 1).fit(z)
  _, idx = nn.kneighbors(z)
  # Drop each point itself (with duplicate points it need not come first).
  keep = np.stack([r[r != i][:k] for i, r in enumerate(idx)])
  return float(np.mean(labels[keep] == labels[:, None]))


def purity_chance(labels: Sequence[Any]) -> float:
  """Expected kNN purity of randomly placed points: Σ_c p_c (n_c − 1) / (N − 1)."""
  _, counts = np.unique(np.asarray(labels), return_counts=True)
  n = counts.sum()
  return float(np.sum(counts * (counts - 1)) / (n * (n - 1))) if n > 1 else 0.0


def silhouette(z: np.ndarray, labels: Sequence[Any]) -> float:
  """Cosine silhouette score (scikit-learn); nan when there are < 2 labels."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top

  labels = np.asarray(labels)
  if len(np.unique(labels)) < 2 or len(np.unique(labels)) >= len(labels):
    return float("nan")
  return float(metrics.silhouette_score(z, labels, metric="cosine"))


def behaviour_labels(table: Mapping[str, np.ndarray], aus: Sequence[int]) -> tuple[str, np.ndarray]:
  """(what, [N] str labels) to colour by: expression, else activity, else most frequent AU.

  `table` holds label arrays as from `pipeline.label_table` (expression: canonical index, -1
  unknown; au: [N, J] in {-1, 0, 1}; task: str). "Most frequent AU" labels an image with the
  AU that is active most often in the whole set among the image's active AUs ('none' if none).
  """
  names = prompts.expressions()
  expr = table.get("expression")
  if expr is not None and len(expr) and np.mean(np.asarray(expr) >= 0) >= 0.5:
    return "expression", np.array([names[i] if i >= 0 else "unknown" for i in expr])
  task = table.get("task")
  if task is not None and len(task) and np.mean([bool(t) for t in task]) >= 0.5:
    return "activity", np.asarray(task).astype(str)
  au = table.get("au")
  if au is not None and len(au) and len(aus):
    au = np.asarray(au)
    active = au == 1
    order = np.argsort(-active.sum(0), kind="stable")
    out = []
    for row in active:
      hit = [j for j in order if row[j]]
      out.append(f"AU{aus[hit[0]]}" if hit else "none")
    return "most frequent AU", np.array(out)
  raise ValueError("the split has neither expression, activity nor AU labels to colour by")


def embed_split(
  config: ml_collections.ConfigDict,
  model,
  params,
  *,
  split: str = "test",
  max_examples: int = 2000,
  seed: int = 0,
) -> dict[str, Any]:
  """Embeds (a seeded sample of) a split of the run's dataset.

  Returns:
    {'z': [N, D] float32, 'subject': [N] str, 'behaviour': [N] str, 'behaviour_kind': str,
     'split': resolved split name}.
  """
  from clef_jax import objectives  # pylint: disable=g-import-not-at-top
  from clef_jax import sharding  # pylint: disable=g-import-not-at-top
  from clef_jax import datasets  # pylint: disable=g-import-not-at-top
  from clef_jax.evaluators import common as eval_common  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  data = _open_data(config)
  split_name, source = _split_source(config, data, split, decode=False)
  source = datasets.Subset(source, _sample(len(source), max_examples, seed))
  keys = [k for k in ("subject", "expression", "au", "task") if k in source[0]]
  table = pipeline.label_table(source, keys)
  kind, behaviour = behaviour_labels(table, data.aus)
  mesh = sharding.make_mesh(config.mesh)
  placed = sharding.reshard(params, sharding.infer_sharding(params, config.sharding_rules, mesh))
  fns = eval_common.make_predict_fns(objectives.embedding_objective(config, model))
  shards = jax.device_count()
  batch = max(shards, (64 // shards) * shards)
  e = eval_common.embed_source(fns, placed, config, data, source, mesh, (), batch)
  return {
    "z": e["z"].astype(np.float32),
    "subject": np.asarray(table["subject"]).astype(str),
    "behaviour": behaviour,
    "behaviour_kind": kind,
    "split": split_name,
  }


def run_title(config: ml_collections.ConfigDict, workdir: str) -> str:
  """A short description of what produced a workdir (mode, objective, pairing, init)."""
  parts = [paths.path(workdir).name, config.mode]
  if config.mode == "pretrain" and "pretrain" in config:
    p = config.pretrain
    parts.append(f"{p.objective}, pairing={p.pairing}, λPI={p.lambda_pi:g}, λPA={p.lambda_pa:g}")
  if config.mode in ("finetune", "linear_probe") and "finetune" in config:
    parts.append(f"task={config.finetune.task}, head={config.finetune.head}")
  if config.get("init"):
    parts.append(f"init={config.init}")
  return " · ".join(parts)


def _scatter(ax, xy: np.ndarray, labels: np.ndarray, title: str, order: Sequence[str] | None):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  values = list(order) if order else sorted(set(labels.tolist()))
  values = [v for v in values if v in set(labels.tolist())]
  cmap = plt.get_cmap("tab10" if len(values) <= 10 else "tab20")
  for i, v in enumerate(values):
    m = labels == v
    ax.scatter(xy[m, 0], xy[m, 1], s=7, color=cmap(i % cmap.N), label=v, alpha=0.8, linewidths=0)
  ax.set_title(title, fontsize=9)
  ax.set_xticks([])
  ax.set_yticks([])
  if len(values) <= 20:
    ax.legend(
      fontsize=6,
      markerscale=2,
      loc="center left",
      bbox_to_anchor=(1.0, 0.5),
      frameon=False,
      ncol=1 if len(values) <= 12 else 2,
    )


def plot_embedding_maps(rows: Sequence[Mapping[str, Any]], out: str, *, perplexity: float) -> None:
  """One row per run: [behaviour map | subject map]. rows: dicts of `embed_split` + xy, title,
  stats."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(len(rows), 2, figsize=(11, 4.2 * len(rows)), squeeze=False)
  for r, row in enumerate(rows):
    s = row["stats"]
    _scatter(
      axes[r, 0],
      row["xy"],
      row["behaviour"],
      f"{row['title']}\nby {row['behaviour_kind']}: kNN purity {s['behaviour/purity']:.2f}"
      f" (chance {s['behaviour/chance']:.2f})",
      prompts.expressions(),
    )
    _scatter(
      axes[r, 1],
      row["xy"],
      row["subject"],
      f"by subject: kNN purity {s['subject/purity']:.2f} (chance {s['subject/chance']:.2f})",
      None,
    )
  first = rows[0]
  fig.suptitle(
    textwrap.fill(
      f"t-SNE (scikit-learn, cosine, perplexity ≤ {perplexity:g}) of L2-normalised image "
      f"embeddings, split {first['split']}, n={len(first['z'])}; purity = share of the "
      f"{first['stats']['k']} nearest neighbours in embedding space with the same label",
      110,
    ),
    fontsize=9,
  )
  fig.tight_layout(rect=(0, 0, 1, 0.97))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)


def embedding_stats(
  z: np.ndarray, behaviour: np.ndarray, subject: np.ndarray, k: int = 10
) -> dict[str, float]:
  """kNN purity (+ chance) and cosine silhouette of behaviour and subject labels."""
  k = min(k, len(z) - 1)
  out: dict[str, float] = {"k": k}
  for name, labels in (("behaviour", behaviour), ("subject", subject)):
    out[f"{name}/purity"] = label_purity(z, labels, k)
    out[f"{name}/chance"] = purity_chance(labels)
    out[f"{name}/silhouette"] = silhouette(z, labels)
  return out


def embeddings_main(
  workdirs: Sequence[str],
  out: str,
  *,
  split: str = "test",
  max_examples: int = 2000,
  k: int = 10,
  perplexity: float = 30.0,
  seed: int = 0,
  data_dir: str | None = None,
) -> list[dict[str, Any]]:
  """The `embeddings` command; returns per-run stats (also printed and written next to out)."""
  if not workdirs:
    raise ValueError("--workdir is required (one or more)")
  rows, report = [], []
  for w in workdirs:
    config, model, params = load_run(w, data_dir)
    e = embed_split(config, model, params, split=split, max_examples=max_examples, seed=seed)
    stats = embedding_stats(e["z"], e["behaviour"], e["subject"], k)
    e.update(
      xy=tsne_2d(e["z"], perplexity=perplexity, seed=seed), stats=stats, title=run_title(config, w)
    )
    rows.append(e)
    line = {
      "workdir": paths.text(w),
      "split": e["split"],
      "n": len(e["z"]),
      "behaviour_kind": e["behaviour_kind"],
      **stats,
    }
    report.append(line)
    print(
      f"{w}: n={line['n']} split={e['split']} k={stats['k']} | "
      f"{e['behaviour_kind']}: purity {stats['behaviour/purity']:.3f} "
      f"(chance {stats['behaviour/chance']:.3f}) silhouette "
      f"{stats['behaviour/silhouette']:.3f} | subject: purity "
      f"{stats['subject/purity']:.3f} (chance {stats['subject/chance']:.3f}) silhouette "
      f"{stats['subject/silhouette']:.3f}",
      flush=True,
    )
  plot_embedding_maps(rows, out, perplexity=perplexity)
  with open(os.path.splitext(out)[0] + ".json", "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {out}")
  return report


# ------------------------------------------------------------------------------------------
# Relevance maps.
# ------------------------------------------------------------------------------------------


def gaussian_blur(maps: np.ndarray | jax.Array, sigma: float) -> np.ndarray:
  """Gaussian smoothing of `[..., H, W]` maps over H and W, on the host: `float32` numpy.

  `scipy.ndimage.gaussian_filter` with mode='reflect' (half-sample symmetric borders) and
  truncate=4 (radius round(4 sigma)); sigma <= 0 leaves the maps as they are.
  """
  a = np.asarray(maps, np.float32)
  if a.ndim < 2:
    raise ValueError(f"maps must be [..., H, W], got shape {a.shape}")
  if sigma <= 0:
    return a
  sigmas = (0.0,) * (a.ndim - 2) + (float(sigma), float(sigma))
  return ndimage.gaussian_filter(a, sigma=sigmas, mode="reflect", truncate=4.0)


def _cosines(model, params, x: jax.Array, ztxt: jax.Array) -> jax.Array:
  """cos(f(x), t) for one CLIP-normalised image x `[H, W, 3]` and prompts ztxt `[T, D]` → [T]."""
  z = models.l2_normalize(model.apply({"params": params}, x[None], method="encode_image")[0])
  return ztxt @ z


@functools.partial(jax.jit, static_argnames=("model", "steps"))
def _integrated_gradients(
  model, params, images: jax.Array, ztxt: jax.Array, steps: int
) -> jax.Array:
  """`[n, H, W, 3]` uint8, ztxt `[T, D]` (unit) → signed attributions `[n, T, H, W]` float32."""
  x = models.normalize_images(images)  # baseline 0 = the CLIP mean colour
  alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps  # midpoint rule
  jac = jax.jacrev(lambda xi: _cosines(model, params, xi, ztxt))  # [H,W,3] → [T,H,W,3]

  def one(xi):
    grads = jax.lax.map(lambda a: jac(a * xi), alphas)  # [steps, T, H, W, 3]
    return jnp.sum(grads.mean(0) * xi[None], axis=-1)  # [T, H, W]

  return jax.lax.map(one, x)


def text_embeddings(model, params, tokens: np.ndarray) -> jax.Array:
  """`[T, L]` or `[T, K, L]` int32 tokens → `[T, D]` unit prompt embeddings.

  With K templates per prompt the K embeddings are averaged and renormalised (the prompt
  ensemble the classifiers use).
  """
  tokens = np.asarray(tokens, np.int32)
  if tokens.ndim not in (2, 3) or not tokens.shape[0]:
    raise ValueError(f"tokens must be int [T, L] or [T, K, L] with T >= 1, got {tokens.shape}")
  flat = tokens.reshape(-1, tokens.shape[-1])
  z = jax.jit(lambda p, t: model.apply({"params": p}, t, method="encode_text"))(params, flat)
  z = models.l2_normalize(z).reshape(*tokens.shape[:-1], -1)
  return models.l2_normalize(z.mean(1)) if tokens.ndim == 3 else z


def integrated_gradients(
  model,
  params,
  images_uint8: np.ndarray,
  tokens: np.ndarray,
  *,
  steps: int = 16,
  batch_size: int = 4,
) -> np.ndarray:
  """Signed per-pixel attributions of cos(f(x), g(t)), summed over channels.

  Completeness: for each image and prompt, the attributions sum to
  cos(f(x), g(t)) − cos(f(x0), g(t)) up to the Riemann error, x0 the mean-colour image.

  Args:
    model: a linen module with `encode_image(images [B, H, W, 3] float32 CLIP-normalised)` and
      `encode_text(tokens [T, L] int32)` methods (e.g. `clef_jax.models.CLIP`).
    params: its params (the `'params'` collection).
    images_uint8: `[N, H, W, 3] uint8` images at the model's input size.
    tokens: `[T, L] int32` prompt tokens, or `[T, K, L]`: K templates averaged per prompt.
    steps: midpoint-rule steps along the straight path from x0 to x (1: the gradient at
      (x0 + x) / 2 times x − x0).
    batch_size: images per jitted call (memory ~ batch · steps · T · H · W · 3 floats).

  Returns:
    `[N, T, H, W] float32`.
  """
  images_uint8 = np.asarray(images_uint8)
  if images_uint8.ndim != 4 or images_uint8.shape[-1] != 3 or images_uint8.dtype != np.uint8:
    raise ValueError(
      f"images must be uint8 [N, H, W, 3], got {images_uint8.dtype} {images_uint8.shape}"
    )
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  ztxt = text_embeddings(model, params, tokens)
  n = len(images_uint8)
  b = max(1, min(batch_size, n))
  out = []
  for start in range(0, n, b):
    chunk = images_uint8[start : start + b]
    pad = b - len(chunk)
    if pad:  # a static shape: one compilation for every chunk
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    out.append(
      np.asarray(_integrated_gradients(model, params, jnp.asarray(chunk), ztxt, steps))[: b - pad]
    )
  return np.concatenate(out).astype(np.float32)


def default_sigma(image_size: int) -> float:
  """Smoothing width: 1/28 of the image side (4 px at 112 px)."""
  return image_size / 28.0


def to_relevance(attributions: np.ndarray, sigma: float) -> np.ndarray:
  """Signed `[..., H, W]` attributions → non-negative maps that sum to 1 (positive part,
  Gaussian blur; an all-zero map becomes uniform)."""
  a = gaussian_blur(np.maximum(np.asarray(attributions, np.float32), 0.0), sigma)
  total = a.sum(axis=(-2, -1), keepdims=True)
  uniform = np.full_like(a, 1.0 / (a.shape[-1] * a.shape[-2]))
  return np.where(total > 0, a / np.where(total > 0, total, 1.0), uniform).astype(np.float32)


def relevance_maps(
  model,
  params,
  images_uint8: np.ndarray,
  tokens: np.ndarray,
  *,
  steps: int = 16,
  sigma: float | None = None,
  batch_size: int = 4,
) -> np.ndarray:
  """Where each prompt's similarity comes from: `[N, T, H, W] float32`, ≥ 0, each map sums to 1.

  Integrated gradients of cos(f(x), g(t)) (see `integrated_gradients`), positive part, summed
  over channels, Gaussian-smoothed with `sigma` px (default `default_sigma(H)`; 0 = none).
  One jitted call computes all T prompts of a chunk of images.
  """
  attr = integrated_gradients(
    model, params, images_uint8, tokens, steps=steps, batch_size=batch_size
  )
  sigma = default_sigma(attr.shape[-2]) if sigma is None else sigma
  return to_relevance(attr, sigma)


def region_mask(boxes: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
  """`[H, W] bool`: pixels whose centres lie in any (x0, y0, x1, y1) box (normalised coords)."""
  ys = (np.arange(height) + 0.5) / height
  xs = (np.arange(width) + 0.5) / width
  m = np.zeros((height, width), bool)
  for x0, y0, x1, y1 in boxes:
    m |= (ys[:, None] >= y0) & (ys[:, None] <= y1) & (xs[None] >= x0) & (xs[None] <= x1)
  return m


def region_share(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Share of each `[..., H, W]` map's mass inside `mask` `[H, W]` → `[...]`."""
  maps = np.asarray(maps, np.float64)
  return (maps * mask).sum((-2, -1)) / np.maximum(maps.sum((-2, -1)), 1e-30)


def label_prompts(
  kind: str, labels: Sequence[Any], texts: Sequence[str]
) -> list[tuple[str, str, str, list[str]]]:
  """[(label tag, text kind, text, prompts)]: the text in every template of its kind.

  kind: 'au' (labels = AU numbers) or 'expression' (canonical names); texts ⊆ TEXT_KINDS.
  Names use prompts.json's name templates ("a photo of a person with {}."), descriptions its
  description templates; relevance uses the prompt ensemble (mean embedding) of each text.
  """
  bad = [t for t in texts if t not in TEXT_KINDS]
  if bad or not texts:
    raise ValueError(f"--texts: {list(texts)}; expected a subset of {TEXT_KINDS}")
  templates = {"names": prompts.templates("name"), "descriptions": prompts.templates("description")}
  out = []
  for label in labels:
    if kind == "au":
      tag, name, desc = f"AU{label}", prompts.au_name(label), prompts.au_description(label)
    elif kind == "expression":
      tag, name, desc = str(label), str(label), prompts.expression_description(label)
    else:
      raise ValueError(f"label kind {kind!r}: expected 'au' or 'expression'")
    for t in texts:
      text = name if t == "names" else desc
      out.append((tag, t, text, prompts.fill(templates[t], text)))
  return out


def prompt_tokens(tok, prompt_list: Sequence[tuple[str, str, str, list[str]]]) -> np.ndarray:
  """`[T, K, L] int32`: each prompt's templates, cycled to the largest template count K."""
  k = max(len(p[3]) for p in prompt_list)
  return np.stack([tok([p[3][i % len(p[3])] for i in range(k)]) for p in prompt_list])


def _display_size(image: np.ndarray, size: int) -> int:
  return int(max(size, min(min(image.shape[:2]), 224)))


def _load_image_files(paths: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
  """(`[n, S, S, 3] uint8` model inputs, `[n, S', S', 3] uint8` display copies) of files."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from input_pipeline import augment  # pylint: disable=g-import-not-at-top

  out = []
  for p in paths:
    if not os.path.isfile(p):
      raise FileNotFoundError(f"--images: {p} is not a file")
    try:
      with Image.open(p) as im:
        arr = np.asarray(im.convert("RGB"), np.uint8)
    except OSError as e:
      raise ValueError(f"--images: cannot read {p} as an image: {e}") from None
    out.append(arr)
  shown = min(_display_size(a, size) for a in out)
  return (
    np.stack([augment.eval_image(a, size) for a in out]),
    np.stack([augment.eval_image(a, shown) for a in out]),
  )


def pick_test_images(
  config, data, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """`n` test images, one per expression (else activity, else AU) in turn.

  Returns (`[n, S, S, 3] uint8` at the model size, `[n, S', S', 3] uint8` display copies at
  the stored size up to 224 px, captions).
  """
  from input_pipeline import augment  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  split, source = _split_source(config, data, "test", decode=True)
  if len(source) == 0:
    raise ValueError(f"test split {split} of {data.name} is empty")
  keys = [k for k in ("subject", "expression", "task", "au") if k in source[0]]
  table = pipeline.label_table(source, keys)
  _, groups = behaviour_labels(table, data.aus)
  rng = np.random.default_rng(seed)
  buckets = {
    g: list(rng.permutation(np.flatnonzero(groups == g)))
    for g in sorted(set(groups.tolist()), key=lambda g: (g in ("neutral", "none"), g))
  }
  chosen: list[int] = []
  while len(chosen) < min(n, len(source)):
    for g in buckets:
      if buckets[g] and len(chosen) < n:
        chosen.append(int(buckets[g].pop()))
  size = config.model.image_size
  raw = [np.asarray(source[i]["image"]) for i in chosen]
  shown = min(_display_size(a, size) for a in raw)
  images = np.stack([augment.eval_image(a, size) for a in raw])
  display = np.stack([augment.eval_image(a, shown) for a in raw])
  captions = []
  for i in chosen:
    subj = table["subject"][i] if "subject" in table else ""
    captions.append(f"{subj} {groups[i]}".strip())
  return images, display, captions


def plot_relevance(
  images: np.ndarray,
  maps: np.ndarray,
  prompt_list: Sequence[tuple],
  captions: Sequence[str],
  out_dir: str,
  method: str,
) -> list[str]:
  """images `[N, S', S', 3] uint8` (any size; maps `[N, T, H, W]` are stretched onto them).

  Writes relevance_grid.png (rows = labels, columns = faces × text kinds) and one
  <label>.png per label with the prompts written out. Returns the paths written."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  os.makedirs(out_dir, exist_ok=True)
  labels = list(dict.fromkeys(p[0] for p in prompt_list))
  kinds = list(dict.fromkeys(p[1] for p in prompt_list))
  index = {(p[0], p[1]): t for t, p in enumerate(prompt_list)}
  n = len(images)
  extent = (0, images.shape[2], images.shape[1], 0)

  def overlay(ax, i, t):
    ax.imshow(images[i], extent=extent)
    m = maps[i, t]
    ax.imshow(
      m / max(m.max(), 1e-12),
      cmap="jet",
      alpha=0.5,
      vmin=0,
      vmax=1,
      extent=extent,
      interpolation="bilinear",
    )
    ax.set_axis_off()

  paths = []
  cols = n * len(kinds)
  fig, axes = plt.subplots(
    len(labels) + 1,
    cols,
    figsize=(1.35 * cols + 1.2, 1.35 * (len(labels) + 1) + 0.6),
    squeeze=False,
  )
  for i in range(n):
    for c, kind in enumerate(kinds):
      ax = axes[0, i * len(kinds) + c]
      ax.imshow(images[i])
      ax.set_axis_off()
      ax.set_title(f"{captions[i]}\n({kind})", fontsize=6)
  for r, label in enumerate(labels, start=1):
    for i in range(n):
      for c, kind in enumerate(kinds):
        overlay(axes[r, i * len(kinds) + c], i, index[(label, kind)])
    name = next(p[2] for p in prompt_list if p[0] == label)
    axes[r, 0].text(
      -0.08,
      0.5,
      textwrap.fill(f"{label}: {name}", 22),
      fontsize=6,
      transform=axes[r, 0].transAxes,
      ha="right",
      va="center",
    )
  fig.suptitle(f"Relevance of each prompt: {method}", fontsize=8)
  fig.tight_layout(rect=(0.06, 0, 1, 0.98))
  path = os.path.join(out_dir, "relevance_grid.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  paths.append(path)

  for label in labels:
    fig, axes = plt.subplots(
      len(kinds),
      n + 1,
      figsize=(1.6 * n + 3.2, 1.8 * len(kinds) + 0.5),
      squeeze=False,
      gridspec_kw={"width_ratios": [1.0] * n + [2.2]},
    )
    for k, kind in enumerate(kinds):
      t = index[(label, kind)]
      for i in range(n):
        overlay(axes[k, i], i, t)
        if k == 0:
          axes[k, i].set_title(captions[i], fontsize=6)
      axes[k, n].set_axis_off()
      axes[k, n].text(
        0.0,
        0.5,
        textwrap.fill(f"{kind[:-1]}: {prompt_list[t][2]}", 44),
        fontsize=7,
        va="center",
        ha="left",
        transform=axes[k, n].transAxes,
      )
    fig.suptitle(f"{label} — {method}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path = os.path.join(out_dir, f"{label.replace(' ', '_')}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
  return paths


def _label_kind(config, data, requested: str) -> tuple[str, list]:
  if requested not in LABEL_KINDS:
    raise ValueError(f"--labels={requested!r}: expected one of {LABEL_KINDS}")
  kind = requested
  if kind == "auto":
    task = config.get("finetune", {}).get("task") if "finetune" in config else None
    kind = {"au": "au", "fer": "expression"}.get(task, "au" if data.aus else "expression")
  if kind == "au":
    names = prompts.data()["au_names"]
    labels = [a for a in data.aus if str(a) in names]
    if not labels:
      raise ValueError(f"dataset {data.name}/{data.builder_config} has no AUs with prompts")
  else:
    labels = list(data.classes) or prompts.expressions()
  return kind, labels


def relevance_main(
  workdir: str,
  images: str,
  out_dir: str,
  *,
  texts: Sequence[str] = TEXT_KINDS,
  labels: str = "auto",
  steps: int = 16,
  sigma: float | None = None,
  seed: int = 0,
  data_dir: str | None = None,
) -> dict[str, Any]:
  """The `relevance` command: `images` is a count of test images or comma-separated paths."""
  from clef_jax import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top

  config, model, params = load_run(workdir, data_dir)
  data = _open_data(config)
  size = config.model.image_size
  if images.strip().isdigit():
    if int(images) < 1:
      raise ValueError(f"--images={images!r}: need at least one image")
    imgs, shown, captions = pick_test_images(config, data, int(images), seed)
  else:
    paths = [p for p in images.split(",") if p]
    if not paths:
      raise ValueError(f"--images={images!r}: expected a count or comma-separated image paths")
    imgs, shown = _load_image_files(paths, size)
    captions = [os.path.basename(p) for p in paths]
  kind, label_list = _label_kind(config, data, labels)
  plist = label_prompts(kind, label_list, texts)
  tok = tok_lib.get(config.tokenizer, context_length=config.model.context_length)
  tokens = prompt_tokens(tok, plist)
  sigma = default_sigma(size) if sigma is None else sigma
  maps = relevance_maps(model, params, imgs, tokens, steps=steps, sigma=sigma)
  method = RELEVANCE_METHOD.format(steps=steps, sigma=sigma)
  paths = plot_relevance(shown, maps, plist, captions, out_dir, method)
  np.savez_compressed(
    os.path.join(out_dir, "relevance.npz"),
    maps=maps,
    images=imgs,
    prompts=np.array([p[2] for p in plist]),
    labels=np.array([p[0] for p in plist]),
    kinds=np.array([p[1] for p in plist]),
  )
  print(
    f"{method}\nwrote {len(paths)} figures to {out_dir}: {', '.join(map(os.path.basename, paths))}"
  )
  return {"maps": maps, "prompts": plist, "paths": paths}


# ------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------

COMMANDS = ("embeddings", "relevance")


def define_flags() -> None:
  """The command's flags; defined only when run as a script (importing never clashes)."""
  flags.DEFINE_multi_string("workdir", [], "run folder(s); embeddings: one row each")
  flags.DEFINE_string("out", None, "embeddings: output PNG; relevance: output folder")
  flags.DEFINE_string(
    "split", "test", "embeddings: 'test', 'train' (the run's fold) or a TFDS split"
  )
  flags.DEFINE_integer("max", 2000, "embeddings: at most this many images (seeded sample)")
  flags.DEFINE_integer("k", 10, "embeddings: neighbours for the kNN purity")
  flags.DEFINE_float("perplexity", 30.0, "embeddings: t-SNE perplexity (capped at (N-1)/3)")
  flags.DEFINE_string("images", "6", "relevance: number of test images, or comma-separated paths")
  flags.DEFINE_list("texts", list(TEXT_KINDS), "relevance: prompt kinds (names, descriptions)")
  flags.DEFINE_enum("labels", "auto", LABEL_KINDS, "relevance: label set (auto: from the run)")
  flags.DEFINE_integer("steps", 16, "relevance: integrated-gradients steps (midpoint rule)")
  flags.DEFINE_float("sigma", None, "relevance: smoothing in px (default image_size / 28)")
  flags.DEFINE_integer("seed", 0, "sampling / t-SNE seed")
  flags.DEFINE_string("data_dir", None, "override the run's config.data.data_dir")


def main(argv: Sequence[str]) -> None:
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(
      f"usage: python -m clef_jax.visualize {{{'|'.join(COMMANDS)}}} "
      f"--workdir=... --out=...; got {list(argv[1:])}"
    )
  if not f.out:
    raise app.UsageError("--out is required")
  if argv[1] == "embeddings":
    embeddings_main(
      f.workdir,
      f.out,
      split=f.split,
      max_examples=f.max,
      k=f.k,
      perplexity=f.perplexity,
      seed=f.seed,
      data_dir=f.data_dir,
    )
  else:
    if len(f.workdir) != 1:
      raise app.UsageError(f"relevance takes exactly one --workdir, got {f.workdir}")
    relevance_main(
      f.workdir[0],
      f.images,
      f.out,
      texts=f.texts,
      labels=f.labels,
      steps=f.steps,
      sigma=f.sigma,
      seed=f.seed,
      data_dir=f.data_dir,
    )


if __name__ == "__main__":
  define_flags()
  app.run(main)
