"""AdamW, warmup + cosine, decay masks, lr multipliers, freezing by regex.

`make_optimizer(config.optim, params)` returns a plain optax transformation
(jittable; its state is a params-shaped pytree that `clef_jax.sharding` rules
shard like the params) and the learning-rate schedule for logging.

Per parameter (names are `clef_jax.sharding.tree_paths` names, e.g.
`visual/transformer/resblocks_0/mlp/c_fc/kernel`; every regex is full-matched):
  frozen    (`freeze`)    update exactly 0 and no optimizer state at all;
  lr_mult   (`lr_mults`)  the first matching `(regex, mult)` scales its lr;
  layer     (`layer_decay`) layer-wise lr decay of the image tower (BEiT, FT-CLIP):
            `visual/transformer/resblocks_i` scales its lr by d**(L - i), the patch
            and position embeddings and ln_pre by d**(L + 1), ln_post and proj by 1
            (L = the tower's depth); it multiplies the `lr_mults` factor;
  decay     (`no_decay`)  weight decay unless a `no_decay` regex matches.

The update of a trainable parameter `p` with gradient `g` at step `t`:
  g   <- g * min(1, grad_clip_norm / ||g_trainable||)      (if grad_clip_norm>0)
  u   <- Adam(g; b1, b2, eps)                              (bias-corrected)
  u   <- u + weight_decay * p                              (if decayed)
  p   <- p - schedule(t) * lr_mult * layer_mult * u
with `schedule` linear from 0 to `lr` over `warmup_steps`, then cosine to
`lr * end_lr_ratio` at `total_steps` (and constant after). The global grad
norm is taken over the trainable parameters only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from clef_jax.sharding import compile_regexes, full_match_any, path_str, tree_paths

PyTree = Any

# Parameters without weight decay by default (CLIP layout names): LayerNorms
# (ln_pre, ln_post, ln_1, ln_2, ln_final: scale and bias), any bias, any norm
# scale, embeddings (class_embedding, positional_embedding, token_embedding
# and everything under them) and the logit scale (and a logit bias).
DEFAULT_NO_DECAY = (
  r"(.*/)?ln_[^/]*(/.*)?",
  r"(.*/)?bias",
  r"(.*/)?scale",
  r"(.*/)?[^/]*_embedding(/.*)?",
  r"(.*/)?logit_(scale|bias)",
)

# The recipe (lr, schedule, Adam's betas and eps, weight decay, clipping) has one home, the
# config (configs/common.py): every one of these keys must be given.
REQUIRED = (
  "lr",
  "warmup_steps",
  "total_steps",
  "weight_decay",
  "b1",
  "b2",
  "eps",
  "grad_clip_norm",
)
# Structural keys that are empty unless asked for.
OPTIONAL: dict[str, Any] = dict(
  end_lr_ratio=0.0,
  lr_mults=(),
  layer_decay=1.0,  # 1 = off
  freeze=(),
  no_decay=None,  # None: DEFAULT_NO_DECAY.
)
KNOWN = (*REQUIRED, *OPTIONAL)

TRAINABLE, FROZEN = "trainable", "frozen"


def _config_dict(optim_config: Any) -> dict[str, Any]:
  """Validated optimizer settings: defaults updated by `optim_config`."""
  if hasattr(optim_config, "to_dict"):
    optim_config = optim_config.to_dict()
  if not isinstance(optim_config, Mapping):
    raise ValueError(f"config.optim: expected a dict/ConfigDict, got {type(optim_config).__name__}")
  unknown = sorted(set(optim_config) - set(KNOWN))
  if unknown:
    raise ValueError(f"config.optim: unknown keys {unknown}; known keys are {sorted(KNOWN)}")
  missing = [k for k in REQUIRED if optim_config.get(k) is None]
  if missing:
    raise ValueError(
      f"config.optim: missing keys {missing} (configs/common.py sets every one of {list(REQUIRED)})"
    )
  cfg = {**OPTIONAL, **optim_config}
  for key in ("warmup_steps", "total_steps"):
    if int(cfg[key]) != cfg[key] or cfg[key] < 0:
      raise ValueError(f"config.optim.{key}: must be an integer >= 0, got {cfg[key]!r}")
  if cfg["total_steps"] and cfg["warmup_steps"] >= cfg["total_steps"]:
    raise ValueError(
      f"config.optim.warmup_steps={cfg['warmup_steps']} must be smaller than "
      f"config.optim.total_steps={cfg['total_steps']}"
    )
  for key in ("lr", "weight_decay", "grad_clip_norm", "end_lr_ratio"):
    if cfg[key] < 0:
      raise ValueError(f"config.optim.{key}: must be >= 0, got {cfg[key]!r}")
  if not 0 < cfg["layer_decay"] <= 1:
    raise ValueError(f"config.optim.layer_decay: must be in (0, 1], got {cfg['layer_decay']!r}")
  if not (0 <= cfg["b1"] < 1 and 0 <= cfg["b2"] < 1 and cfg["eps"] > 0):
    raise ValueError(
      f"config.optim: need 0 <= b1, b2 < 1 and eps > 0, got "
      f"b1={cfg['b1']}, b2={cfg['b2']}, eps={cfg['eps']}"
    )
  cfg["freeze"] = compile_regexes(cfg["freeze"], "config.optim.freeze")
  no_decay = DEFAULT_NO_DECAY if cfg["no_decay"] is None else cfg["no_decay"]
  cfg["no_decay"] = compile_regexes(no_decay, "config.optim.no_decay")
  mults = []
  for i, pair in enumerate(cfg["lr_mults"] or ()):
    if isinstance(pair, str) or len(pair) != 2:
      raise ValueError(f"config.optim.lr_mults[{i}] {pair!r}: expected a (regex, multiplier) pair")
    (pattern,) = compile_regexes([pair[0]], f"config.optim.lr_mults[{i}]")
    if not isinstance(pair[1], (int, float)) or pair[1] < 0:
      raise ValueError(f"config.optim.lr_mults[{i}] {pair!r}: the multiplier must be a number >= 0")
    mults.append((pattern, float(pair[1])))
  cfg["lr_mults"] = mults
  return cfg


def _map_names(fn: Callable[[str], Any], tree: PyTree) -> PyTree:
  """Maps `fn(name)` over the leaves of `tree` (also optax-masked trees)."""
  return jax.tree_util.tree_map_with_path(lambda k, _: fn(path_str(k)), tree)


def trainable_mask(params: PyTree, freeze: Sequence[str] | str) -> PyTree:
  """Tree of bools: False where a `freeze` regex full-matches the name."""
  patterns = compile_regexes(freeze, "freeze")
  return _map_names(lambda n: not full_match_any(patterns, n), params)


def param_labels(params: PyTree, freeze: Sequence[str] | str) -> PyTree:
  """Tree of 'trainable' / 'frozen' labels (for `optax.multi_transform`)."""
  return jax.tree.map(lambda t: TRAINABLE if t else FROZEN, trainable_mask(params, freeze))


def decay_mask(params: PyTree, no_decay: Sequence[str] | str | None = None) -> PyTree:
  """Tree of bools: True where weight decay applies (`DEFAULT_NO_DECAY`)."""
  patterns = compile_regexes(DEFAULT_NO_DECAY if no_decay is None else no_decay, "no_decay")
  return _map_names(lambda n: not full_match_any(patterns, n), params)


def make_schedule(
  lr: float, warmup_steps: int, total_steps: int, end_lr_ratio: float = 0.0
) -> optax.Schedule:
  """Linear warmup 0 → `lr`, then cosine to `lr * end_lr_ratio` at total.

  `total_steps == 0` (a run that never updates) gives a constant 0.
  """
  if total_steps == 0:
    return optax.constant_schedule(0.0)
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=lr,
    warmup_steps=int(warmup_steps),
    decay_steps=int(total_steps),
    end_value=lr * end_lr_ratio,
  )


_VISUAL_BLOCK = re.compile(r"visual/transformer/resblocks_(\d+)/.*")
_VISUAL_STEM = re.compile(r"visual/(conv1|class_embedding|positional_embedding|ln_pre)(/.*)?")


def layer_decay_mult(names: Sequence[str], decay: float) -> Callable[[str], float]:
  """`name -> decay**(depth - layer)` for the image tower's parameters, 1 elsewhere.

  The stem (patch embedding, class and position embeddings, ln_pre) is layer 0,
  `visual/transformer/resblocks_i` layer i + 1, everything after the blocks
  (ln_post, proj) and every parameter outside `visual/` layer `depth + 1` (mult 1).

  Raises:
    ValueError: `decay < 1` and no `visual/transformer/resblocks_i` parameter.
  """
  if decay == 1.0:
    return lambda name: 1.0
  blocks = {int(m.group(1)) for n in names if (m := _VISUAL_BLOCK.fullmatch(n))}
  if not blocks:
    raise ValueError(
      f"config.optim.layer_decay={decay}: no image-tower block "
      f"(visual/transformer/resblocks_i/...) among the parameters; names look like {names[:5]}"
    )
  top = max(blocks) + 2  # stem = 0, blocks 1..L, head = L + 1

  def mult(name: str) -> float:
    if m := _VISUAL_BLOCK.fullmatch(name):
      return decay ** (top - 1 - int(m.group(1)))
    if _VISUAL_STEM.fullmatch(name):
      return decay**top
    return 1.0

  return mult


def scale_by_path(mult_fn: Callable[[str], float]) -> optax.GradientTransformation:
  """Multiplies each leaf's update by `mult_fn(name)` (a static float)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params

    def scale(keypath, u):
      m = mult_fn(path_str(keypath))
      return u if m == 1.0 else u * jnp.asarray(m, u.dtype)

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(
  optim_config: Any, params_or_abstract: PyTree
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the AdamW transformation described in the module docstring.

  Args:
    optim_config: dict or ConfigDict with every key of `REQUIRED`: `lr` (peak),
      `warmup_steps`, `total_steps` (required), `end_lr_ratio`,
      `weight_decay`, `b1`, `b2`, `eps`, `grad_clip_norm` (0 = off),
      `lr_mults` [(regex, mult)], `freeze` [regex], `no_decay` [regex] (None
      = `DEFAULT_NO_DECAY`; a list replaces it).
    params_or_abstract: the params (or `jax.eval_shape` of them), used to
      check that every `freeze` / `lr_mults` regex names some parameter and
      to log the groups.

  Returns:
    `(tx, schedule)`: the optax transformation (state holds nothing for
    frozen parameters) and `step -> peak-scaled lr` (before `lr_mults`).

  Raises:
    ValueError: unknown or invalid config keys, a bad regex, or a `freeze` /
      `lr_mults` regex that matches no parameter (named, with examples).
  """
  cfg = _config_dict(optim_config)
  names = tree_paths(params_or_abstract)
  for key, patterns in (("freeze", cfg["freeze"]), ("lr_mults", [p for p, _ in cfg["lr_mults"]])):
    for p in patterns:
      if not any(p.fullmatch(n) for n in names):
        raise ValueError(
          f"config.optim.{key}: regex {p.pattern!r} matches no parameter; names look like {names[:5]}"
        )

  by_layer = layer_decay_mult(names, cfg["layer_decay"])

  def lr_mult(name: str) -> float:
    explicit = next((m for p, m in cfg["lr_mults"] if p.fullmatch(name)), 1.0)
    return explicit * by_layer(name)

  def decays(name: str) -> bool:
    return not full_match_any(cfg["no_decay"], name)

  frozen = [n for n in names if full_match_any(cfg["freeze"], n)]
  logging.info("optim: %d/%d parameter arrays frozen: %s", len(frozen), len(names), frozen[:20])
  logging.info("optim: no weight decay on %s", [n for n in names if not decays(n)][:50])
  for p, m in cfg["lr_mults"]:
    logging.info("optim: lr x%g for %r", m, p.pattern)
  if cfg["layer_decay"] != 1.0:
    blocks = [by_layer(n) for n in names if _VISUAL_BLOCK.fullmatch(n)]
    logging.info(
      "optim: layer_decay %g: image-tower lr x%.3g (stem), x%.3g (first block) ... x%.3g (last)",
      cfg["layer_decay"],
      cfg["layer_decay"] * min(blocks),
      min(blocks),
      max(blocks),
    )

  schedule = make_schedule(cfg["lr"], cfg["warmup_steps"], cfg["total_steps"], cfg["end_lr_ratio"])
  parts = []
  if cfg["grad_clip_norm"] > 0:
    parts.append(optax.clip_by_global_norm(cfg["grad_clip_norm"]))
  parts.append(optax.scale_by_adam(b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"]))
  if cfg["weight_decay"] > 0:
    parts.append(
      optax.add_decayed_weights(cfg["weight_decay"], mask=lambda p: _map_names(decays, p))
    )
  parts.append(optax.scale_by_learning_rate(schedule))
  if cfg["lr_mults"] or cfg["layer_decay"] != 1.0:
    parts.append(scale_by_path(lr_mult))
  freeze = [p.pattern for p in cfg["freeze"]]
  tx = optax.multi_transform(
    {TRAINABLE: optax.chain(*parts), FROZEN: optax.set_to_zero()},
    lambda params: param_labels(params, freeze),
  )
  return tx, schedule
