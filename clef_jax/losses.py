"""CLEF losses, written on global arrays.

Every loss here is a pure ``jnp`` function of *global* arrays: under ``jax.jit`` with inputs
sharded over a mesh, XLA inserts the collectives, so negatives always span the global batch.
All math is float32 (inputs are cast). Each loss takes an optional row ``mask`` (``[N] bool``,
True = real row) so that padded rows of the last batch are neither anchors nor positives nor
negatives; anchors without any positive are left out of the mean, and a batch with nothing left
gives a loss of 0 (never NaN). Logit scales and temperatures are passed in by the caller.

Which function is which loss of docs/method.md:
  stage 0 (CLIP InfoNCE on captions)   ``clip_loss``
  stage 1  ``L = λ_PI · L_II' + λ_inst · L_inst + λ_PA · L_IA``
    L_II' (PI, image–image SupCon)     ``supcon_from_mask(z, pairing_mask(pairing, ...), τ)``
                                       (``supcon(z, labels, τ)``: the same with label equality)
    L_inst (the instance term)         ``supcon_from_mask(z, pairing_mask('instance', ...), τ)``
    collapse monitor                   ``embedding_health``
    L_IA (PA, image–activity text)     ``image_activity_loss``
  stage 2  ``L = L_IN + λ_DN · L_DN``
    L_IN, FER                          ``softmax_ce`` on the logits ``s·<f(x_i), t_c>``
    L_IN, AU                           ``au_bce`` on ``au_logits`` (per-AU bias) or
                                       ``au_prompt_pair_logits`` (au_head=prompt_pair), weighted
                                       by ``au_pos_weight``
    L_DN (description–name)            ``description_name_loss``
  linear-head baseline (I)             ``softmax_ce`` / ``au_bce`` on the head's logits
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

PAIRINGS = ("instance", "activity", "activity_cross_subject")

# Fill value for logits excluded from a softmax: finite (so nothing becomes inf - inf), and
# small enough that exp(fill - max) underflows to 0 for any real logit.
_NEG = -1e30


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


def _f32(x: ArrayLike) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def _row_mask(mask: ArrayLike | None, n: int) -> jax.Array:
  """``[n] bool``: the given mask, or all True."""
  if mask is None:
    return jnp.ones((n,), bool)
  mask = jnp.asarray(mask, bool)
  if mask.shape != (n,):
    raise ValueError(f"mask has shape {mask.shape}, expected ({n},)")
  return mask


def _check_2d(name: str, x: jax.Array) -> None:
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [rows, dim], got shape {x.shape}")


def _safe_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  """``Σ w·v / Σ w`` with unused entries zeroed first; 0 when ``Σ w = 0``."""
  weights = weights.astype(jnp.float32)
  total = jnp.sum(jnp.where(weights > 0, values * weights, 0.0))
  return total / jnp.maximum(jnp.sum(weights), 1.0)


def _multi_positive_infonce(
  logits: jax.Array, positive: jax.Array, candidate: jax.Array, anchor: jax.Array
) -> jax.Array:
  """Mean over anchors of ``-1/|P(i)| Σ_{p∈P(i)} log softmax_{a∈A(i)}(logits_i)_p``.

  Args:
    logits: ``[M, N] float32`` anchor-by-candidate logits.
    positive: ``[M, N] bool`` positives of each anchor (must be a subset of ``candidate``).
    candidate: ``[M, N] bool`` the set ``A(i)`` in each anchor's softmax denominator.
    anchor: ``[M] bool`` rows that may act as anchors; rows with no positive are dropped too.

  Returns:
    Scalar float32; 0 if no anchor has a positive.
  """
  lse = jax.nn.logsumexp(jnp.where(candidate, logits, _NEG), axis=1, keepdims=True)
  log_prob = jnp.where(positive, logits - lse, 0.0)
  num_pos = jnp.sum(positive, axis=1)
  per_anchor = -jnp.sum(log_prob, axis=1) / jnp.maximum(num_pos, 1)
  return _safe_mean(per_anchor, anchor & (num_pos > 0))


# --------------------------------------------------------------------------------------------
# Stage 1: image–image supervised contrastive loss (L_II').
# --------------------------------------------------------------------------------------------


def supcon_from_mask(
  z: ArrayLike,
  positive_mask: ArrayLike,
  temperature: float,
  mask: ArrayLike | None = None,
  negative_mask: ArrayLike | None = None,
) -> jax.Array:
  """Supervised contrastive loss (Khosla et al. 2020, "L_out") with explicit positives.

  For each anchor ``i`` with a non-empty positive set ``P(i)``::

    ℓ_i = -1/|P(i)| Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) ),

  with ``A(i)`` every valid row except ``i``; the loss is the mean of ``ℓ_i`` over anchors that
  have at least one positive.

  Args:
    z: ``[N, D]`` embeddings, L2-normalised (cast to float32).
    positive_mask: ``[N, N] bool``; ``[i, j]`` True if ``j`` is a positive of anchor ``i``. The
      diagonal and rows/columns of masked rows are ignored.
    temperature: τ > 0.
    mask: optional ``[N] bool``, False for padding rows.
    negative_mask: optional ``[N, N] bool``; when given, only these non-positive rows join
      ``A(i)`` (e.g. views of other subjects: ``pretrain.pi_negatives='other_subjects'``).

  Returns:
    Scalar float32 loss (0 if no anchor has a positive).
  """
  z = _f32(z)
  _check_2d("z", z)
  n = z.shape[0]
  positive_mask = jnp.asarray(positive_mask, bool)
  if positive_mask.shape != (n, n):
    raise ValueError(f"positive_mask has shape {positive_mask.shape}, expected ({n}, {n})")
  valid = _row_mask(mask, n)
  logits = (z @ z.T) / jnp.float32(temperature)
  candidate = valid[:, None] & valid[None, :] & ~jnp.eye(n, dtype=bool)
  if negative_mask is not None:
    negative_mask = jnp.asarray(negative_mask, bool)
    if negative_mask.shape != (n, n):
      raise ValueError(f"negative_mask has shape {negative_mask.shape}, expected ({n}, {n})")
    candidate &= positive_mask | negative_mask
  return _multi_positive_infonce(logits, positive_mask & candidate, candidate, valid)


def supcon(
  z: ArrayLike, labels: ArrayLike, temperature: float, mask: ArrayLike | None = None
) -> jax.Array:
  """Supervised contrastive loss where positives share a label.

  Args:
    z: ``[N, D]`` L2-normalised embeddings.
    labels: ``[N] int``; positives of ``i`` are all other rows with ``labels[j] == labels[i]``.
    temperature: τ > 0.
    mask: optional ``[N] bool``, False for padding rows.

  Returns:
    Scalar float32; anchors without a positive are left out of the mean (see
    ``supcon_from_mask`` for the formula).
  """
  labels = jnp.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"labels must be 1-D [N], got shape {labels.shape}")
  return supcon_from_mask(z, labels[:, None] == labels[None, :], temperature, mask)


def pairing_mask(
  pairing: str,
  *,
  instance_ids: ArrayLike,
  activity_ids: ArrayLike | None = None,
  subject_ids: ArrayLike | None = None,
) -> jax.Array:
  """Positive matrix of a two-view batch for ``supcon_from_mask``.

  Rows are the ``2B`` views; the two views of one image share an ``instance_ids`` value.

  * ``instance`` (SimCLR / NT-Xent): only the twin view.
  * ``activity`` (CLEF): every view with the same activity id — the twin and frames of other
    subjects alike.
  * ``activity_cross_subject``: same activity and a different subject, plus the twin view.

  An activity id of -1 means "no activity": such a row's only positive is its twin.

  Args:
    pairing: one of ``PAIRINGS``.
    instance_ids: ``[N] int`` source-image id of each view.
    activity_ids: ``[N] int`` activity id, -1 for none (needed unless ``pairing='instance'``).
    subject_ids: ``[N] int`` subject id (needed for ``activity_cross_subject``).

  Returns:
    ``[N, N] bool`` with a False diagonal.
  """
  if pairing not in PAIRINGS:
    raise ValueError(f"unknown pairing {pairing!r}; expected one of {PAIRINGS}")
  inst = jnp.asarray(instance_ids)
  n = inst.shape[0]
  pos = inst[:, None] == inst[None, :]
  if pairing != "instance":
    if activity_ids is None:
      raise ValueError(f"pairing={pairing!r} needs activity_ids")
    act = jnp.asarray(activity_ids)
    same = (act[:, None] == act[None, :]) & (act[:, None] >= 0)
    if pairing == "activity_cross_subject":
      if subject_ids is None:
        raise ValueError("pairing='activity_cross_subject' needs subject_ids")
      subj = jnp.asarray(subject_ids)
      same &= subj[:, None] != subj[None, :]
    pos |= same
  return pos & ~jnp.eye(n, dtype=bool)


def embedding_health(z: ArrayLike, mask: ArrayLike | None = None) -> dict[str, jax.Array]:
  """How spread out a batch of L2-normalised embeddings is: the stage-1 collapse monitor.

  Returns float32 scalars (no gradient flows through them):

  * ``effective_rank``: RankMe (Garrido et al. 2023, after Roy & Vetterli 2007),
    ``exp(H(σ / Σσ))`` over the singular values ``σ`` of the valid rows; 1 when every row is the
    same point, up to ``min(N, D)`` when they fill the space evenly.
  * ``mean_cosine``: mean cosine similarity of distinct valid rows; 1 at point collapse.

  (The value a SupCon term takes when the rows collapse, all logits equal, is
  ``supcon_from_mask`` of constant embeddings: ``log(N − 1)`` with every row a candidate.)

  Args:
    z: ``[N, D]`` embeddings (cast to float32).
    mask: optional ``[N] bool``, False for padding rows.
  """
  z = jax.lax.stop_gradient(_f32(z))
  _check_2d("z", z)
  n = z.shape[0]
  valid = _row_mask(mask, n)
  zv = jnp.where(valid[:, None], z, 0.0)
  sv = jnp.linalg.svd(zv, compute_uv=False)
  p = sv / jnp.maximum(jnp.sum(sv), 1e-12)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  pair = valid[:, None] & valid[None, :] & ~jnp.eye(n, dtype=bool)
  cos = _safe_mean(zv @ zv.T, pair)
  return {
    "effective_rank": jnp.exp(entropy),
    "mean_cosine": cos,
  }


# --------------------------------------------------------------------------------------------
# Stage 1: image–activity text (L_IA), and plain CLIP.
# --------------------------------------------------------------------------------------------


def image_activity_loss(
  zimg: ArrayLike,
  ztext_act: ArrayLike,
  activity_ids: ArrayLike,
  scale: ArrayLike,
  mask: ArrayLike | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_IA: image ↔ activity-text contrastive loss with shared texts.

  With logits ``l_ik = s·<f(x_i), g(A_k)>`` over the ``K`` distinct activity texts:

  * image→text: ``-log softmax_k(l_i)_{a(i)}``, averaged over images with an activity;
  * text→image: for each activity ``k`` present in the batch, with ``P(k)`` its images,
    ``-1/|P(k)| Σ_{p∈P(k)} log( exp(l_pk) / Σ_j exp(l_jk) )`` (the sum runs over every valid image
    of the global batch), averaged over present activities;
  * loss = mean of the two directions.

  Images with activity id -1 (or any id outside ``[0, K)``) are no anchors for image→text but
  stay negatives for text→image.

  Args:
    zimg: ``[N, D]`` L2-normalised image embeddings.
    ztext_act: ``[K, D]`` L2-normalised embeddings of the distinct activity texts.
    activity_ids: ``[N] int`` in ``[0, K)``, or -1 for no activity.
    scale: scalar logit scale ``s`` (already exponentiated / clipped by the caller).
    mask: optional ``[N] bool``, False for padding.

  Returns:
    ``(loss, aux)``: scalar float32, and ``aux`` with ``i2t_loss``, ``t2i_loss``,
    ``i2t_accuracy`` (fraction of images with an activity whose argmax text is theirs).
  """
  zimg, ztext = _f32(zimg), _f32(ztext_act)
  _check_2d("zimg", zimg)
  _check_2d("ztext_act", ztext)
  n, k = zimg.shape[0], ztext.shape[0]
  act = jnp.asarray(activity_ids)
  if act.shape != (n,):
    raise ValueError(f"activity_ids has shape {act.shape}, expected ({n},)")
  valid = _row_mask(mask, n)
  logits = _f32(scale) * (zimg @ ztext.T)  # [N, K]
  onehot = act[:, None] == jnp.arange(k)[None, :]  # [N, K]
  has_act = valid & (act >= 0)
  all_texts = jnp.ones((n, k), bool)
  i2t = _multi_positive_infonce(logits, onehot, all_texts, has_act)
  t2i = _multi_positive_infonce(
    logits.T,
    (onehot & valid[:, None]).T,
    jnp.broadcast_to(valid[None, :], (k, n)),
    jnp.ones((k,), bool),
  )
  correct = jnp.argmax(logits, axis=1) == act
  aux = {"i2t_loss": i2t, "t2i_loss": t2i, "i2t_accuracy": _safe_mean(correct, has_act)}
  return 0.5 * (i2t + t2i), aux


def _symmetric_infonce(
  za: jax.Array, zb: jax.Array, scale: ArrayLike, mask: ArrayLike | None
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Symmetric InfoNCE with row ``i`` of ``za`` paired with row ``i`` of ``zb``."""
  za, zb = _f32(za), _f32(zb)
  _check_2d("embeddings", za)
  if za.shape != zb.shape:
    raise ValueError(f"paired embeddings differ in shape: {za.shape} vs {zb.shape}")
  n = za.shape[0]
  valid = _row_mask(mask, n)
  logits = _f32(scale) * (za @ zb.T)  # [N, N]
  eye = jnp.eye(n, dtype=bool)
  candidate = valid[:, None] & valid[None, :]
  a2b = _multi_positive_infonce(logits, eye & candidate, candidate, valid)
  b2a = _multi_positive_infonce(logits.T, eye & candidate, candidate, valid)
  arange = jnp.arange(n)
  a2b_acc = jnp.argmax(jnp.where(candidate, logits, _NEG), axis=1) == arange
  b2a_acc = jnp.argmax(jnp.where(candidate, logits.T, _NEG), axis=1) == arange
  aux = {"a2b_accuracy": _safe_mean(a2b_acc, valid), "b2a_accuracy": _safe_mean(b2a_acc, valid)}
  return 0.5 * (a2b + b2a), aux


def clip_loss(
  zimg: ArrayLike, ztxt: ArrayLike, scale: ArrayLike, mask: ArrayLike | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """CLIP's symmetric InfoNCE with diagonal positives (Radford et al. 2021).

  ``L = ½ (CE_rows(s·Z_img Z_txtᵀ, diag) + CE_cols(s·Z_img Z_txtᵀ, diag))`` over valid rows.

  Args:
    zimg, ztxt: ``[N, D]`` L2-normalised, row ``i`` of each forms a pair.
    scale: scalar logit scale ``s``.
    mask: optional ``[N] bool``, False for padding pairs.

  Returns:
    ``(loss, aux)`` with ``aux['i2t_accuracy']`` and ``aux['t2i_accuracy']``.
  """
  loss, aux = _symmetric_infonce(zimg, ztxt, scale, mask)
  return loss, {"i2t_accuracy": aux["a2b_accuracy"], "t2i_accuracy": aux["b2a_accuracy"]}


# --------------------------------------------------------------------------------------------
# Stage 2: text-driven fine-tuning (L_IN, L_DN) and the linear-head baseline.
# --------------------------------------------------------------------------------------------


def softmax_ce(
  logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None, label_smoothing: float = 0.0
) -> jax.Array:
  """Mean cross-entropy ``-Σ_c q_ic log softmax(logits_i)_c`` over valid rows.

  Args:
    logits: ``[N, C]``.
    labels: ``[N] int`` class ids (a negative id marks an unknown label, left out), or
      ``[N, C] float`` soft targets (e.g. FER+ vote distributions; rows are renormalised to sum
      to 1, an all-zero row is left out).
    mask: optional ``[N] bool``, False for padding.
    label_smoothing: α; targets become ``(1-α)·q + α/C``.

  Returns:
    Scalar float32 (0 if no row is left).
  """
  logits = _f32(logits)
  _check_2d("logits", logits)
  n, c = logits.shape
  valid = _row_mask(mask, n)
  labels = jnp.asarray(labels)
  if labels.shape == (n,):
    targets = jax.nn.one_hot(labels, c, dtype=jnp.float32)  # negative ids -> all-zero row
    known = labels >= 0
  elif labels.shape == (n, c):
    targets = _f32(labels)
    total = jnp.sum(targets, axis=1, keepdims=True)
    known = total[:, 0] > 0
    targets = targets / jnp.where(total > 0, total, 1.0)
  else:
    raise ValueError(f"labels must have shape ({n},) or ({n}, {c}), got {labels.shape}")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  targets = (1.0 - label_smoothing) * targets + label_smoothing / c
  per_row = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)
  return _safe_mean(per_row, valid & known)


def description_name_loss(
  zdesc: ArrayLike, zname: ArrayLike, scale: ArrayLike, mask: ArrayLike | None = None
) -> jax.Array:
  """L_DN: symmetric InfoNCE over the ``C×C`` description–name similarity matrix.

  Description ``D_c`` and name ``N_c`` of the same class are the positive pair; the other
  classes' names (resp. descriptions) are the negatives.

  Args:
    zdesc: ``[C, D]`` L2-normalised description embeddings ``g(D_c)``.
    zname: ``[C, D]`` L2-normalised name embeddings ``g(N_c)``.
    scale: scalar logit scale.
    mask: optional ``[C] bool`` to leave classes out.

  Returns:
    Scalar float32.
  """
  return _symmetric_infonce(zdesc, zname, scale, mask)[0]


def au_logits(zimg: ArrayLike, zau: ArrayLike, scale: ArrayLike, bias: ArrayLike) -> jax.Array:
  """Per-AU logits ``z_ij = s·<f(x_i), t_j> + b_j``.

  Args:
    zimg: ``[N, D]`` L2-normalised image embeddings.
    zau: ``[J, D]`` L2-normalised AU-name text embeddings.
    scale: scalar ``s_au``.
    bias: ``[J]`` (or scalar) learnable bias.

  Returns:
    ``[N, J] float32``.
  """
  return _f32(scale) * (_f32(zimg) @ _f32(zau).T) + _f32(bias)


def au_prompt_pair_logits(
  zimg: ArrayLike, zpos: ArrayLike, zneg: ArrayLike, scale: ArrayLike
) -> jax.Array:
  """Per-AU log-odds of a two-way softmax between "with AU" and "without AU" prompts.

  ``softmax([s·cos_pos, s·cos_neg])_0 = sigmoid(s·(cos_pos − cos_neg))``, so the returned logit
  ``s·(cos_pos − cos_neg)`` plugs into ``au_bce`` and a threshold of 0 (probability 0.5).

  Args:
    zimg: ``[N, D]``; zpos, zneg: ``[J, D]`` L2-normalised embeddings.
    scale: scalar logit scale.

  Returns:
    ``[N, J] float32``.
  """
  zimg = _f32(zimg)
  return _f32(scale) * (zimg @ _f32(zpos).T - zimg @ _f32(zneg).T)


def au_bce(
  logits: ArrayLike,
  labels: ArrayLike,
  pos_weight: ArrayLike | None = None,
  mask: ArrayLike | None = None,
) -> jax.Array:
  """Class-balanced binary cross-entropy for AU detection.

  ``ℓ_ij = -( w_j · y_ij · log σ(z_ij) + (1 − y_ij) · log(1 − σ(z_ij)) )``, averaged over the known
  entries (label ≠ -1, row not masked) — as ``torch.nn.BCEWithLogitsLoss(pos_weight=w)`` with
  unknown entries removed.

  Args:
    logits: ``[N, J]``.
    labels: ``[N, J]`` in {-1, 0, 1}; -1 = unknown (masked).
    pos_weight: ``[J]`` positive weights ``w_j`` (see ``au_pos_weight``); None = all 1.
    mask: optional ``[N] bool``, False for padding rows.

  Returns:
    Scalar float32 (0 if no entry is known).
  """
  logits = _f32(logits)
  _check_2d("logits", logits)
  labels = jnp.asarray(labels)
  if labels.shape != logits.shape:
    raise ValueError(f"labels shape {labels.shape} != logits shape {logits.shape}")
  n, j = logits.shape
  w = jnp.ones((j,), jnp.float32) if pos_weight is None else _f32(pos_weight)
  if w.shape != (j,):
    raise ValueError(f"pos_weight has shape {w.shape}, expected ({j},)")
  known = (labels >= 0) & _row_mask(mask, n)[:, None]
  y = (labels > 0).astype(jnp.float32)
  per = -(w * y * jax.nn.log_sigmoid(logits) + (1.0 - y) * jax.nn.log_sigmoid(-logits))
  return _safe_mean(per, known)


def au_pos_weight(
  label_matrix: Any, min_weight: float = 0.1, max_weight: float = 100.0
) -> np.ndarray:
  """Per-AU positive weights ``#neg / #pos`` from training labels (host side, numpy).

  Unknown entries (-1) are ignored. An AU with negatives but no positive gets ``max_weight``; an
  AU with no known entry at all gets 1. Weights are clipped to ``[min_weight, max_weight]`` so a
  very rare AU cannot dominate the loss (the defaults cover BP4D/DISFA base rates of 2–90 %).

  Args:
    label_matrix: ``[N, J]`` in {-1, 0, 1}.
    min_weight, max_weight: clipping range, ``0 < min_weight <= max_weight``.

  Returns:
    ``[J] float32``.
  """
  labels = np.asarray(label_matrix)
  if labels.ndim != 2:
    raise ValueError(f"AU label matrix must be 2-D [N, J], got shape {labels.shape}")
  bad = ~np.isin(labels, (-1, 0, 1))
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise ValueError(
      f"AU label matrix has value {labels[row, col].item()!r} at row {row}, "
      f"column {col}; expected -1 (unknown), 0 or 1"
    )
  if not 0 < min_weight <= max_weight:
    raise ValueError(f"need 0 < min_weight <= max_weight, got {min_weight}, {max_weight}")
  pos = (labels == 1).sum(0).astype(np.float64)
  neg = (labels == 0).sum(0).astype(np.float64)
  ratio = np.divide(neg, pos, out=np.full_like(pos, max_weight), where=pos > 0)
  ratio = np.where(pos + neg == 0, 1.0, ratio)
  return np.clip(ratio, min_weight, max_weight).astype(np.float32)
