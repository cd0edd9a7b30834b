"""How a batch becomes embeddings and a loss, for each mode of the one training loop.

An objective splits the work in three, so that gradient accumulation can cache embeddings and
keep the whole negative pool (open_clip's accumulation, a.k.a. GradCache):

  images(batch)                      -> uint8 [n, H, W, 3]  the images of the step (views flattened)
  embed_images(params, images)       -> float32 [n, D]      image tower (L2-normalised)
  embed_texts(params, rng)           -> dict of [K, D]      text tower on the step's label texts
  loss(params, zimg, ztxt, batch, rng) -> (loss, aux)       everything else (heads, logit scales)

`grad_fn` composes them; with `accum_steps > 1` it embeds every micro-batch without gradients,
takes the loss gradient with respect to the embeddings once, and back-propagates it through each
micro-batch's tower in turn. That gives exactly the big-batch gradient (tested).

Params: the model's {'visual', 'text', 'logit_scale'} plus 'heads' (objective-specific: a
projection head, AU scale/bias, a linear classifier).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clef_jax import augment
from clef_jax import losses
from clef_jax import models
from clef_jax import prompts
from input_pipeline import schema

MODEL_KEYS = ("visual", "text", "logit_scale")


def model_params(params: dict[str, Any]) -> dict[str, Any]:
  return {k: params[k] for k in MODEL_KEYS if k in params}


def logit_scale(params: dict[str, Any], model_config) -> jax.Array:
  """s = exp(min(logit_scale, logit_scale_max)), CLIP's clipped temperature."""
  return models.logit_scale(params["logit_scale"], model_config.logit_scale_max)


def encode_tokens(model, params, tokens: jax.Array) -> jax.Array:
  """The text tower: [..., L] int32 -> [..., D] normalised text embeddings."""
  shape = tokens.shape
  z = model.apply(
    {"params": model_params(params)}, tokens.reshape(-1, shape[-1]), method=model.encode_text
  )
  return z.reshape(*shape[:-1], z.shape[-1])


class ProjectionHead(nn.Module):
  """SimCLR-style MLP head used only by L_II' (pretrain.proj_head)."""

  hidden: int
  out: int

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.hidden, name="fc1")(x)
    x = nn.relu(x)
    return nn.Dense(self.out, name="fc2")(x)


class MimDecoder(nn.Module):
  """SimMIM's decoder: LayerNorm + one linear layer from a patch token to its pixels."""

  out: int

  @nn.compact
  def __call__(self, tokens):
    return nn.Dense(self.out, name="dense")(nn.LayerNorm(epsilon=1e-5, name="ln")(tokens))


def patchify(images: jax.Array, patch: int) -> jax.Array:
  """`[n, H, W, C]` -> `[n, (H/p)*(W/p), p*p*C]`, patches in the tower's row-major order."""
  n, h, w, ch = images.shape
  x = images.reshape(n, h // patch, patch, w // patch, patch, ch)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // patch) * (w // patch), patch * patch * ch)


def random_patch_mask(rng: jax.Array, n: int, num_patches: int, ratio: float) -> jax.Array:
  """`[n, num_patches] bool`, exactly round(ratio * num_patches) (at least 1) True per row."""
  k = max(1, round(ratio * num_patches))
  ranks = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (n, num_patches)), axis=-1), axis=-1)
  return ranks < k


def mim_loss(pred: jax.Array, images: jax.Array, mask: jax.Array, valid: jax.Array, patch: int):
  """MAE's normalised-pixel MSE over the masked patches of the valid images.

  `pred` `[n, N, p*p*3]`, `images` `[n, H, W, 3]` float (CLIP-normalised), `mask` `[n, N]`,
  `valid` `[n]`. Each target patch is standardised by its own mean and variance (MAE's
  norm_pix_loss), so the loss is about structure, not brightness.
  """
  target = patchify(images.astype(jnp.float32), patch)
  mean = target.mean(-1, keepdims=True)
  var = target.var(-1, keepdims=True)
  target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
  weight = mask.astype(jnp.float32) * valid.astype(jnp.float32)[:, None]
  return jnp.sum(per_patch * weight) / jnp.maximum(jnp.sum(weight), 1.0)


@dataclasses.dataclass
class Objective:
  """See the module docstring. `tokens` holds the step's constant token arrays."""

  model: Any
  model_config: Any
  tokens: dict[str, np.ndarray]
  init_heads: Callable[[jax.Array], dict[str, Any]]
  images: Callable[[dict[str, jax.Array]], jax.Array]
  text_fn: Callable[[Callable[[jax.Array], jax.Array], dict[str, jax.Array], jax.Array], dict]
  loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  predict_fn: Callable[..., jax.Array] | None = None
  frozen_features: bool = False  # batches carry embeddings ('z') instead of images
  # The head's affine part (params, zimg, ztxt) -> [n, ...] where predict_fn is not affine in
  # the embedding (AU intensity: the level logits [n, J, K] that a softmax expectation follows).
  head_fn: Callable[..., jax.Array] | None = None

  def on_features(self) -> "Objective":
    """The same objective on precomputed image embeddings: `images(batch)` is `batch['z']`
    [n, D] and the image tower is skipped (stage-2 heads fitted on frozen features)."""
    return dataclasses.replace(self, images=lambda b: b["z"], frozen_features=True)

  def embed_images(self, params, images: jax.Array) -> jax.Array:
    if self.frozen_features:
      return images
    x = models.normalize_images(images)
    return self.model.apply({"params": model_params(params)}, x, method=self.model.encode_image)

  def encode_tokens(self, params, tokens: jax.Array) -> jax.Array:
    """[..., L] int32 -> [..., D] normalised text embeddings."""
    return encode_tokens(self.model, params, tokens)

  def embed_texts(self, params, rng) -> dict[str, jax.Array]:
    toks = {k: jnp.asarray(v) for k, v in self.tokens.items()}
    return self.text_fn(lambda t: self.encode_tokens(params, t), toks, rng)

  def loss(self, params, zimg, ztxt, batch, rng):
    return self.loss_fn(params, zimg, ztxt, batch, rng)

  def predict(self, params, zimg, ztxt):
    """Logits used by evaluators: FER [n, C] or AU [n, J]."""
    return self.predict_fn(params, zimg, ztxt)


# ------------------------------------------------------------------------------------------
# Gradients, with and without accumulation.
# ------------------------------------------------------------------------------------------


def _micro(x: jax.Array, k: int) -> jax.Array:
  """[n, ...] -> [k, n/k, ...] taking every k-th row, so each micro-batch spans all devices."""
  n = x.shape[0]
  return jnp.swapaxes(x.reshape(n // k, k, *x.shape[1:]), 0, 1)


def _unmicro(x: jax.Array) -> jax.Array:
  """Inverse of `_micro`: [k, n/k, ...] -> [n, ...]."""
  k, m = x.shape[:2]
  return jnp.swapaxes(x, 0, 1).reshape(k * m, *x.shape[2:])


def grad_fn(objective: Objective, params, batch, rng, accum_steps: int = 1):
  """(loss, aux), grads of the objective on one global batch.

  accum_steps > 1 embeds `accum_steps` interleaved micro-batches without gradients, takes
  d loss / d embeddings on the whole batch, then back-propagates each micro-batch's share
  through the image tower (a `lax.scan`, so peak activation memory is one micro-batch).
  A batch with `colour` draws (`data.augment.colour_on_device`) is colour-jittered first.
  """
  batch = augment.apply_to_batch(batch)
  images = objective.images(batch)
  if accum_steps <= 1:

    def full(p):
      zimg = objective.embed_images(p, images)
      ztxt = objective.embed_texts(p, rng)
      return objective.loss(p, zimg, ztxt, batch, rng)

    (loss, aux), grads = jax.value_and_grad(full, has_aux=True)(params)
    return (loss, aux), grads

  n = images.shape[0]
  if n % accum_steps:
    raise ValueError(f"{n} images per step do not split into accum_steps={accum_steps}")
  chunks = _micro(images, accum_steps)
  zimg = _unmicro(jax.lax.map(lambda c: objective.embed_images(params, c), chunks))
  zimg = jax.lax.stop_gradient(zimg)
  ztxt, text_vjp = jax.vjp(lambda p: objective.embed_texts(p, rng), params)
  (loss, aux), (g_params, g_zimg, g_ztxt) = jax.value_and_grad(
    lambda p, zi, zt: objective.loss(p, zi, zt, batch, rng), argnums=(0, 1, 2), has_aux=True
  )(params, zimg, ztxt)
  grads = jax.tree.map(jnp.add, g_params, text_vjp(g_ztxt)[0])

  def body(acc, xs):
    chunk, g_chunk = xs
    _, vjp = jax.vjp(lambda p: objective.embed_images(p, chunk), params)
    return jax.tree.map(jnp.add, acc, vjp(g_chunk)[0]), None

  grads, _ = jax.lax.scan(body, grads, (chunks, _micro(g_zimg, accum_steps)))
  return (loss, aux), grads


# ------------------------------------------------------------------------------------------
# Stage 0: the foundation model (CLIP on image-caption pairs, the FaRL analog).
# ------------------------------------------------------------------------------------------


def caption_objective(config, model) -> Objective:
  """CLIP's symmetric InfoNCE between each image and its own caption (`batch['tokens']`).

  Both towers train. The captions change every step, so the text tower runs inside the loss
  on the batch's tokens (with accumulation the images are micro-batched, the captions are not;
  the gradient is still exactly the big-batch one).
  """
  mc = config.model
  fd = config.get("foundation")  # configs/foundation.py: mim_weight, mim_mask_ratio, mim_fraction
  mim_weight = float(fd.mim_weight) if fd else 0.0
  patch, width, grid = mc.patch_size, mc.vision_width, mc.image_size // mc.patch_size
  decoder = MimDecoder(patch * patch * 3)

  def init_heads(rng):
    if not mim_weight:
      return {}
    k_tok, k_dec = jax.random.split(rng)
    return {
      "mim": {
        "mask_token": 0.02 * jax.random.normal(k_tok, (width,), jnp.float32),
        "decoder": decoder.init(k_dec, jnp.zeros((1, 1, width), jnp.float32))["params"],
      }
    }

  def mim_term(params, batch, rng):
    """Masked image modelling on the first `mim_fraction` of the batch (FaRL's second loss)."""
    n = max(1, round(fd.mim_fraction * batch["image"].shape[0]))
    images = models.normalize_images(batch["image"][:n])
    mask = random_patch_mask(rng, n, grid * grid, fd.mim_mask_ratio)
    heads = params["heads"]["mim"]
    _, tokens = model.apply(
      {"params": model_params(params)}, images, mask, heads["mask_token"], method=model.image_tokens
    )
    pred = decoder.apply({"params": heads["decoder"]}, tokens)
    return mim_loss(pred, images, mask, batch["mask"][:n], patch)

  def loss_fn(params, zimg, ztxt, batch, rng):
    del ztxt
    scale = logit_scale(params, mc)
    zcap = encode_tokens(model, params, batch["tokens"])
    loss, aux = losses.clip_loss(zimg, zcap, scale, batch["mask"])
    aux = {**aux, "logit_scale": scale}
    if mim_weight:
      l_mim = mim_term(params, batch, jax.random.fold_in(rng, 7))
      aux = {**aux, "loss_clip": loss, "loss_mim": l_mim}
      loss = loss + mim_weight * l_mim
    return loss, aux

  return Objective(
    model=model,
    model_config=mc,
    tokens={},
    init_heads=init_heads,
    images=lambda b: b["image"],
    text_fn=lambda encode, toks, rng: {},
    loss_fn=loss_fn,
  )


# ------------------------------------------------------------------------------------------
# Stage 1: pretraining (CLEF or plain CLIP).
# ------------------------------------------------------------------------------------------


def _two_view_images(batch):
  x = batch["image"]
  if x.ndim == 5:  # [b, 2, H, W, 3] -> [2b, H, W, 3], the views of one image adjacent
    return x.reshape(-1, *x.shape[2:])
  return x


def _repeat_views(x, batch):
  views = batch["image"].shape[1] if batch["image"].ndim == 5 else 1
  return jnp.repeat(x, views, axis=0)


def pretrain_objective(config, model, tokenizer, activity_texts: Sequence[str]) -> Objective:
  """L = λ_PI · L_II' + λ_inst · L_inst + λ_PA · L_IA (objective='clef'), or CLIP InfoNCE
  (objective='clip'). Every step also reports `health/*` (losses.embedding_health of the image
  embeddings): the collapse monitor.

  activity_texts: the K distinct activity texts, index k = activity id k.
  """
  pc = config.pretrain
  mc = config.model
  if pc.objective not in ("clef", "clip"):
    raise ValueError(f"config.pretrain.objective={pc.objective!r}: expected 'clef' or 'clip'")
  if pc.pairing not in losses.PAIRINGS:
    raise ValueError(f"config.pretrain.pairing={pc.pairing!r}: expected one of {losses.PAIRINGS}")
  if pc.pi_negatives not in ("all", "other_subjects"):
    raise ValueError(
      f"config.pretrain.pi_negatives={pc.pi_negatives!r}: expected 'all' or 'other_subjects'"
    )
  if not activity_texts:
    raise ValueError("pretraining needs activity texts, but the dataset defines no activities")
  tokens = {"activities": tokenizer(list(activity_texts))}
  head = ProjectionHead(hidden=mc.embed_dim, out=pc.proj_dim) if pc.proj_head else None

  def init_heads(rng):
    if head is None:
      return {}
    return {"pi_proj": head.init(rng, jnp.zeros((1, mc.embed_dim)))["params"]}

  def text_fn(encode, toks, rng):
    del rng
    return {"activities": encode(toks["activities"])}

  def loss_fn(params, zimg, ztxt, batch, rng):
    del rng  # the loss is deterministic given the batch
    scale = logit_scale(params, mc)
    mask = _repeat_views(batch["mask"], batch)
    act = _repeat_views(batch["activity_id"], batch)
    zact = ztxt["activities"]
    if pc.objective == "clip":
      # Each image against its own activity text (duplicates in a batch are negatives).
      zt = zact[jnp.clip(act, 0, zact.shape[0] - 1)]
      loss, aux = losses.clip_loss(zimg, zt, scale, mask & (act >= 0))
      return loss, {**aux, "logit_scale": scale}
    aux = {"logit_scale": scale}
    aux.update({f"health/{k}": v for k, v in losses.embedding_health(zimg, mask).items()})
    loss = jnp.float32(0.0)
    if pc.lambda_pi or pc.lambda_inst:
      z = zimg
      if head is not None:
        z = models.l2_normalize(head.apply({"params": params["heads"]["pi_proj"]}, zimg))
      inst = _repeat_views(batch["index"], batch)
      subj = _repeat_views(batch["subject_id"], batch)
      # pi_negatives='other_subjects': a subject's own frames of other activities are no
      # negatives (they are the identity shortcut the activity term would otherwise fight).
      neg = None if pc.pi_negatives == "all" else subj[:, None] != subj[None, :]
    if pc.lambda_pi:
      pos = losses.pairing_mask(pc.pairing, instance_ids=inst, activity_ids=act, subject_ids=subj)
      l_pi = losses.supcon_from_mask(z, pos, pc.temperature, mask, neg)
      loss += pc.lambda_pi * l_pi
      aux["loss_pi"] = l_pi
      # The value L_II' takes when every view is at one point (all logits equal): log(2B - 1)
      # with every view a candidate, less with pi_negatives='other_subjects'.
      flat = jnp.ones((z.shape[0], 1), jnp.float32)
      aux["health/loss_pi_at_collapse"] = losses.supcon_from_mask(flat, pos, 1.0, mask, neg)
    if pc.lambda_inst:
      # The instance term next to the activity term: only the twin view is a positive, so the
      # within-activity detail that the activity term alone may erase keeps a gradient.
      pos = losses.pairing_mask("instance", instance_ids=inst)
      l_inst = losses.supcon_from_mask(z, pos, pc.temperature, mask, neg)
      loss += pc.lambda_inst * l_inst
      aux["loss_inst"] = l_inst
    if pc.lambda_pa:
      l_pa, pa_aux = losses.image_activity_loss(zimg, zact, act, scale, mask)
      loss += pc.lambda_pa * l_pa
      aux["loss_pa"] = l_pa
      aux.update({f"pa_{k}": v for k, v in pa_aux.items()})
    return loss, aux

  def predict_fn(params, zimg, ztxt):
    return logit_scale(params, mc) * zimg @ ztxt["activities"].T

  return Objective(
    model=model,
    model_config=mc,
    tokens=tokens,
    init_heads=init_heads,
    images=_two_view_images,
    text_fn=text_fn,
    loss_fn=loss_fn,
    predict_fn=predict_fn,
  )


# ------------------------------------------------------------------------------------------
# Stage 2: text-driven fine-tuning (FER / AU), the linear baseline and the linear probe.
# ------------------------------------------------------------------------------------------


def label_texts(task: str, labels: Sequence) -> dict[str, list[list[str]]]:
  """Template-expanded texts: {'names': [T][C], 'descriptions': [T'][C], 'negatives': [T''][C]}.

  labels: FER class names (canonical names) or AU numbers.
  """
  if task == "fer":
    names = list(labels)
    descs = [prompts.expression_description(c) for c in labels]
  elif task == "au":
    names = [prompts.au_name(a) for a in labels]
    descs = [prompts.au_description(a) for a in labels]
  else:
    raise ValueError(f"config.finetune.task={task!r}: expected 'fer' or 'au'")
  return {
    "names": [[t.format(x) for x in names] for t in prompts.templates("name")],
    "descriptions": [[t.format(x) for x in descs] for t in prompts.templates("description")],
    "negatives": [[t.format(x) for x in names] for t in prompts.templates("au_negative")],
  }


def _template_mean(z: jax.Array) -> jax.Array:
  """[T, C, D] -> [C, D]: mean over templates, renormalised (prompt ensembling)."""
  return models.l2_normalize(z.mean(axis=0))


def finetune_objective(
  config, model, tokenizer, labels: Sequence, *, pos_weight: np.ndarray | None = None
) -> Objective:
  """L = L_IN + λ_DN · L_DN for task 'fer' (labels = class names) or 'au' (labels = AU numbers).

  head='text': classify by label-text embeddings (CLEF); head='linear': a linear classifier on
  the image embedding (the poster's "I"). For AU, pos_weight [J] balances the BCE.
  """
  fc = config.finetune
  mc = config.model
  task = fc.task
  if fc.head not in ("text", "linear"):
    raise ValueError(f"config.finetune.head={fc.head!r}: expected 'text' or 'linear'")
  if fc.au_head not in ("bias", "prompt_pair"):
    raise ValueError(f"config.finetune.au_head={fc.au_head!r}: expected 'bias' or 'prompt_pair'")
  texts = label_texts(task, labels)
  num = len(labels)
  tokens = {k: np.stack([tokenizer(row) for row in v]) for k, v in texts.items()}
  use_text_head = fc.head == "text"
  # L_DN shapes the label texts the text head classifies with; with head='linear' it would only
  # train an unused text tower (and dominate the clipped global gradient: norm 15 vs 0.15).
  use_dn = bool(fc.use_descriptions and fc.lambda_dn) and use_text_head
  if not (use_text_head or use_dn):
    tokens = {}
  pw = None if pos_weight is None else jnp.asarray(pos_weight, jnp.float32)

  def init_heads(rng):
    heads = {}
    if fc.head == "linear":
      heads["linear"] = nn.Dense(num).init(rng, jnp.zeros((1, mc.embed_dim)))["params"]
    elif task == "au":
      heads["au_logit_scale"] = jnp.asarray(math.log(10.0), jnp.float32)
      heads["au_bias"] = jnp.zeros((num,), jnp.float32)
    return heads

  def text_fn(encode, toks, rng):
    out = {}
    if not toks:
      return out
    out["names"] = _template_mean(encode(toks["names"]))
    desc = toks["descriptions"]
    t = jax.random.randint(rng, (), 0, desc.shape[0])
    out["descriptions"] = encode(desc[t])  # a random description template each step
    out["descriptions_mean"] = jax.lax.stop_gradient(_template_mean(encode(desc)))
    if task == "au" and fc.au_head == "prompt_pair":
      out["negatives"] = _template_mean(encode(toks["negatives"]))
    return out

  def classifier(ztxt, train):
    """The label-text embeddings that classify: names (N), else descriptions (D)."""
    if fc.use_names:
      return ztxt["names"]
    return ztxt["descriptions"] if train else ztxt["descriptions_mean"]

  def logits_fn(params, zimg, ztxt, train):
    if fc.head == "linear":
      # zimg is unit-norm; sqrt(D)·zimg has unit-variance components, so the default Dense init
      # gives O(1) logits and O(1) gradients into the tower (on zimg itself the logits start
      # at std ~0.07 and a from-scratch tower never leaves the constant prediction).
      scale = math.sqrt(zimg.shape[-1]) if fc.linear_rescale else 1.0
      return nn.Dense(num).apply({"params": params["heads"]["linear"]}, zimg * scale)
    cls = classifier(ztxt, train)
    if task == "fer":
      return logit_scale(params, mc) * zimg @ cls.T
    if fc.au_head == "prompt_pair":
      return losses.au_prompt_pair_logits(zimg, cls, ztxt["negatives"], logit_scale(params, mc))
    s_au = jnp.exp(params["heads"]["au_logit_scale"])
    return losses.au_logits(zimg, cls, s_au, params["heads"]["au_bias"])

  def loss_fn(params, zimg, ztxt, batch, rng):
    del rng  # the description template is drawn in text_fn
    logits = logits_fn(params, zimg, ztxt, train=True)
    mask = batch["mask"]
    if task == "fer":
      labels_ = batch["label"]
      l_in = losses.softmax_ce(logits, labels_, mask, label_smoothing=fc.label_smoothing)
      acc = jnp.sum((jnp.argmax(logits, -1) == labels_) & mask & (labels_ >= 0)) / jnp.maximum(
        jnp.sum(mask & (labels_ >= 0)), 1
      )
      aux = {"loss_in": l_in, "accuracy": acc}
    else:
      # A batch may carry its own `au_pos_weight` [J] (heads refitted on many label sets
      # under one compiled step); otherwise the weights of the training labels.
      l_in = losses.au_bce(logits, batch["au"], batch.get("au_pos_weight", pw), mask)
      aux = {"loss_in": l_in}
    loss = l_in
    if use_dn and "names" in ztxt:
      l_dn = losses.description_name_loss(
        ztxt["descriptions"], ztxt["names"], logit_scale(params, mc)
      )
      loss = loss + fc.lambda_dn * l_dn
      aux["loss_dn"] = l_dn
    aux["logit_scale"] = logit_scale(params, mc)
    return loss, aux

  def predict_fn(params, zimg, ztxt):
    return logits_fn(params, zimg, ztxt, train=False)

  return Objective(
    model=model,
    model_config=mc,
    tokens=tokens,
    init_heads=init_heads,
    images=lambda b: b["image"],
    text_fn=text_fn,
    loss_fn=loss_fn,
    predict_fn=predict_fn,
  )


INTENSITY_LEVELS = 6  # FACS intensity codes: 0 (absent) and A-E (1-5)


def intensity_texts(labels: Sequence) -> dict[str, list[list[str]]]:
  """Intensity-aware label texts of AUs `labels` (the poster's extension):
  {'absent': [T0][J] (the "without" prompts: level 0), 'levels': [T][J * 5] (level k of AU j
  at j * 5 + k - 1: the name prompt of "<name> <intensity word k>", the words from the
  prompts file's `intensity_levels`, e.g. "lip corner puller with marked intensity")}."""
  words = prompts.data().get("intensity_levels")
  if words is None:
    raise KeyError("the prompts file has no 'intensity_levels' (six texts: level 0, then A-E)")
  if len(words) != INTENSITY_LEVELS or len(set(words[1:])) != INTENSITY_LEVELS - 1:
    raise ValueError(
      f"prompts intensity_levels must hold {INTENSITY_LEVELS} entries (level 0, then a distinct "
      f"text for each of the FACS levels A-E), got {words!r}"
    )
  names = [prompts.au_name(a) for a in labels]
  present = [f"{n} {w}" for n in names for w in words[1:]]
  return {
    "absent": [[t.format(n) for n in names] for t in prompts.templates("au_negative")],
    "levels": [[t.format(x) for x in present] for t in prompts.templates("name")],
  }


def intensity_objective(
  config,
  model,
  tokenizer,
  labels: Sequence,
  columns: Sequence[int],
  *,
  level_freq: np.ndarray | None = None,
) -> Objective:
  """AU intensity (0-5) of the AUs `labels` (their positions `columns` in the batch's
  `au_intensity`): head='text' classifies each AU over its six intensity-aware texts (softmax of
  s·cos + b over the levels, cross-entropy), head='linear' regresses the codes (MSE). Both
  predict a continuous intensity: the expectation over the levels (text) or the clipped output
  (linear). Frames whose code is unknown (-1) are masked. `level_freq` [J, 6], the training
  frames' share of each level, initialises the heads at the prior (text: level biases at its log;
  linear: the bias at the mean code), as a classifier's bias is initialised at the class prior.
  """
  fc = config.finetune
  mc = config.model
  if fc.head not in ("text", "linear"):
    raise ValueError(f"config.finetune.head={fc.head!r}: expected 'text' or 'linear'")
  num = len(labels)
  cols = np.asarray(columns, np.int32)
  tokens = {}
  if fc.head == "text":
    tokens = {
      k: np.stack([tokenizer(row) for row in v]) for k, v in intensity_texts(labels).items()
    }
  levels = jnp.arange(INTENSITY_LEVELS, dtype=jnp.float32)

  freq = None if level_freq is None else np.asarray(level_freq, np.float64)

  def init_heads(rng):
    if fc.head == "linear":
      head = nn.Dense(num).init(rng, jnp.zeros((1, mc.embed_dim)))["params"]
      if freq is not None:
        head["bias"] = jnp.asarray(freq @ np.arange(INTENSITY_LEVELS), jnp.float32)
      return {"linear": head}
    bias = np.zeros((num, INTENSITY_LEVELS))
    if freq is not None:
      bias = np.log(np.maximum(freq, 1e-4))
      bias -= bias.mean(-1, keepdims=True)
    return {"level_bias": jnp.asarray(bias, jnp.float32)}

  def text_fn(encode, toks, rng):
    del rng
    if not toks:
      return {}
    absent = _template_mean(encode(toks["absent"]))  # [J, D]
    present = _template_mean(encode(toks["levels"])).reshape(num, INTENSITY_LEVELS - 1, -1)
    return {"levels": jnp.concatenate([absent[:, None], present], axis=1)}  # [J, K, D]

  def outputs(params, zimg, ztxt):
    """text: level logits [n, J, K]; linear: intensities [n, J]."""
    if fc.head == "linear":
      scale = math.sqrt(zimg.shape[-1]) if fc.linear_rescale else 1.0
      return nn.Dense(num).apply({"params": params["heads"]["linear"]}, zimg * scale)
    cos = jnp.einsum("nd,jkd->njk", zimg.astype(jnp.float32), ztxt["levels"].astype(jnp.float32))
    return logit_scale(params, mc) * cos + params["heads"]["level_bias"]

  def loss_fn(params, zimg, ztxt, batch, rng):
    del rng
    y = batch["au_intensity"][:, cols].astype(jnp.int32)  # [n, J], -1 unknown
    known = (y >= 0) & batch["mask"][:, None]
    count = jnp.maximum(jnp.sum(known), 1)
    out = outputs(params, zimg, ztxt)
    if fc.head == "linear":
      err = jnp.square(out - y.astype(jnp.float32))
      loss = jnp.sum(jnp.where(known, err, 0.0)) / count
      pred = jnp.clip(out, 0, INTENSITY_LEVELS - 1)
    else:
      logp = jax.nn.log_softmax(out, axis=-1)
      nll = -jnp.take_along_axis(logp, jnp.clip(y, 0)[..., None], axis=-1)[..., 0]
      loss = jnp.sum(jnp.where(known, nll, 0.0)) / count
      pred = jnp.sum(jnp.exp(logp) * levels, axis=-1)
    mae = jnp.sum(jnp.where(known, jnp.abs(pred - y), 0.0)) / count
    return loss, {"loss_in": loss, "mae": mae}

  def predict_fn(params, zimg, ztxt):
    """Continuous intensities [n, J] in [0, 5]."""
    out = outputs(params, zimg, ztxt)
    if fc.head == "linear":
      return jnp.clip(out, 0, INTENSITY_LEVELS - 1)
    return jnp.sum(jax.nn.softmax(out, axis=-1) * levels, axis=-1)

  return Objective(
    model=model,
    model_config=mc,
    tokens=tokens,
    init_heads=init_heads,
    images=lambda b: b["image"],
    text_fn=text_fn,
    loss_fn=loss_fn,
    predict_fn=predict_fn,
    head_fn=outputs,
  )


def intensity_level_freq(data, columns: Sequence[int]) -> np.ndarray:
  """[J, 6]: each level's share of the training frames with a known code, per AU."""
  codes = np.asarray(data.train_table["au_intensity"])[:, list(columns)]
  out = np.zeros((len(columns), INTENSITY_LEVELS))
  for j in range(len(columns)):
    known = codes[:, j][codes[:, j] >= 0]
    out[j] = np.bincount(known, minlength=INTENSITY_LEVELS)[:INTENSITY_LEVELS] / max(len(known), 1)
  return out


def intensity_columns(config, data) -> tuple[list[int], list[int]]:
  """(AUs, their positions in `au_intensity`) that the training split codes with intensity (some
  known code), e.g. BP4D's 6, 10, 12, 14, 17; `finetune.intensity_aus` restricts them."""
  if not data.aus:
    raise ValueError(f"dataset {data.name}/{data.builder_config} has no AU labels")
  table = np.asarray(data.train_table["au_intensity"])
  coded = [a for j, a in enumerate(data.aus) if np.any(table[:, j] >= 0)]
  wanted = list(config.finetune.get("intensity_aus", ()) or coded)
  missing = [a for a in wanted if a not in coded]
  if missing:
    raise ValueError(
      f"config.finetune.intensity_aus: {missing} have no intensity codes in {data.name}/"
      f"{data.builder_config} (coded: {coded})"
    )
  if not wanted:
    raise ValueError(f"dataset {data.name}/{data.builder_config} codes no AU with intensity")
  return wanted, [list(data.aus).index(a) for a in wanted]


def embedding_objective(config, model) -> Objective:
  """An objective that only embeds (for zero-shot evaluation): no label texts, no loss."""

  def no_loss(params, zimg, ztxt, batch, rng):
    raise ValueError("the embedding objective has no loss; it is for evaluation only")

  return Objective(
    model=model,
    model_config=config.model,
    tokens={},
    init_heads=lambda rng: {},
    images=lambda b: b["image"],
    text_fn=lambda encode, toks, rng: {},
    loss_fn=no_loss,
  )


# ------------------------------------------------------------------------------------------
# Per mode: which objective, which batch keys, which labels.
# ------------------------------------------------------------------------------------------

PRETRAIN_KEYS = ("image", "activity_id", "subject_id", "index", "mask")
FOUNDATION_KEYS = ("image", "tokens", "mask")
INTENSITY_KEYS = ("image", "au_intensity", "mask")


def trained_labels(config, data) -> list:
  """The labels a fine-tuning run classifies: FER class names (`finetune.classes` or all the
  dataset's) or the dataset's AU numbers."""
  fc = config.finetune
  if fc.task == "fer":
    classes = list(fc.classes) or list(data.classes)
    unknown = [c for c in classes if c not in data.classes]
    if unknown:
      raise ValueError(
        f"config.finetune.classes {unknown} are not classes of {data.name} ({data.classes})"
      )
    return classes
  if fc.task == "au":
    if not data.aus:
      raise ValueError(f"dataset {data.name}/{data.builder_config} has no AU labels")
    return list(data.aus)
  if fc.task == "au_intensity":
    return intensity_columns(config, data)[0]
  raise ValueError(f"config.finetune.task={fc.task!r}: expected 'fer', 'au' or 'au_intensity'")


def build(config, model, tokenizer, data) -> tuple[Objective, tuple[str, ...]]:
  """(objective, batch keys) of `config.mode` on `data` (already restricted for fine-tuning)."""
  if config.mode == "foundation":
    return caption_objective(config, model), FOUNDATION_KEYS
  if config.mode == "pretrain":
    return pretrain_objective(config, model, tokenizer, data.activity_texts), PRETRAIN_KEYS
  if config.mode == "zeroshot":
    return embedding_objective(config, model), ("image", "mask")
  if config.finetune.task == "au_intensity":
    labels, columns = intensity_columns(config, data)
    freq = intensity_level_freq(data, columns)
    obj = intensity_objective(config, model, tokenizer, labels, columns, level_freq=freq)
    return obj, INTENSITY_KEYS
  labels = trained_labels(config, data)
  pos_weight = None
  if config.finetune.task == "au":
    pos_weight = losses.au_pos_weight(data.train_table["au"])
    keys = ("image", "au", "mask")
  else:
    keys = ("image", "expression", "mask")
  obj = finetune_objective(config, model, tokenizer, labels, pos_weight=pos_weight)
  return obj, keys


def label_map(config, data) -> np.ndarray | None:
  """The canonical -> trained-class map of a FER fine-tuning run (None for other runs)."""
  if config.mode not in ("finetune", "linear_probe") or config.finetune.task != "fer":
    return None
  return class_label_map(trained_labels(config, data), schema.expressions())


def class_label_map(classes: Sequence[str], canonical: Sequence[str]) -> np.ndarray:
  """[len(canonical)] int32: canonical expression id -> index in `classes` (-1 if absent)."""
  lut = np.full((len(canonical),), -1, np.int32)
  for i, c in enumerate(classes):
    lut[list(canonical).index(c)] = i
  return lut


def with_class_labels(batch: dict[str, jax.Array], label_map) -> dict[str, jax.Array]:
  """Adds `label` (trained-class id, -1 if none) from the canonical `expression` of a batch."""
  if label_map is None or "expression" not in batch:
    return batch
  e = batch["expression"]
  return {**batch, "label": jnp.where(e >= 0, jnp.asarray(label_map)[jnp.clip(e, 0)], -1)}
