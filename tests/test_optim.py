"""Tests for clef_jax.optim against numpy AdamW, clipping and schedule."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from clef_jax import optim, sharding


def _params(seed=0):
  """A small tree with CLIP-layout names, float32."""
  rs = np.random.RandomState(seed)
  f = lambda *s: rs.normal(size=s).astype(np.float32)
  return {
    "visual": {
      "conv1": {"kernel": f(2, 2, 3, 4)},
      "class_embedding": f(4),
      "positional_embedding": f(5, 4),
      "ln_pre": {"scale": f(4), "bias": f(4)},
      "transformer": {
        "resblocks_0": {
          "attn": {"query": {"kernel": f(4, 2, 2), "bias": f(2, 2)}},
          "mlp": {"c_fc": {"kernel": f(4, 8), "bias": f(8)}},
        }
      },
      "proj": f(4, 3),
    },
    "text": {
      "token_embedding": {"embedding": f(10, 4)},
      "ln_final": {"scale": f(4), "bias": f(4)},
      "text_projection": f(4, 3),
    },
    "logit_scale": np.float32(2.6),
  }


# Names that get weight decay under DEFAULT_NO_DECAY (written out by hand).
DECAYED = {
  "visual/conv1/kernel",
  "visual/proj",
  "text/text_projection",
  "visual/transformer/resblocks_0/attn/query/kernel",
  "visual/transformer/resblocks_0/mlp/c_fc/kernel",
}


def _names_values(tree):
  return dict(zip(sharding.tree_paths(tree), jax.tree.leaves(tree)))


def _np_schedule(step, lr, warmup, total, end_ratio):
  if step < warmup:
    return lr * step / warmup
  frac = min(step - warmup, total - warmup) / (total - warmup)
  end = lr * end_ratio
  return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * frac))


def _np_adamw(params, grads_seq, cfg, decayed, frozen=(), mults=None):
  """Hand-written AdamW over dicts name -> array (float64)."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  train = [k for k in p if k not in frozen]
  m = {k: np.zeros_like(p[k]) for k in train}
  v = {k: np.zeros_like(p[k]) for k in train}
  b1, b2, eps, wd = cfg["b1"], cfg["b2"], cfg["eps"], cfg["weight_decay"]
  for t, grads in enumerate(grads_seq):
    g = {k: np.asarray(grads[k], np.float64) for k in train}
    clip = cfg.get("grad_clip_norm", 0)
    if clip:
      norm = math.sqrt(sum(np.sum(x**2) for x in g.values()))
      g = {k: x * min(1.0, clip / norm) for k, x in g.items()}
    lr = _np_schedule(
      t, cfg["lr"], cfg["warmup_steps"], cfg["total_steps"], cfg.get("end_lr_ratio", 0.0)
    )
    for k in train:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      u = (m[k] / (1 - b1 ** (t + 1))) / (np.sqrt(v[k] / (1 - b2 ** (t + 1))) + eps)
      if k in decayed:
        u = u + wd * p[k]
      p[k] = p[k] - lr * (mults or {}).get(k, 1.0) * u
  return p


def _run(tx, params, grads_seq):
  state = jax.jit(tx.init)(params)
  update = jax.jit(tx.update)
  for grads in grads_seq:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _first_update(tx, params, grads):
  return jax.jit(lambda p, g: tx.update(g, tx.init(p), p))(params, grads)


def _grads(n, seed=1):
  return [jax.tree.map(lambda x: x * 0.5, _params(seed + i)) for i in range(n)]


# Plain AdamW: what a test does not set explicitly (make_optimizer has no defaults of its own;
# the project's recipe lives in configs/common.py).
PLAIN = dict(
  lr=1e-3, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0
)


def _cfg(**kw):
  return {**PLAIN, **kw}


BASE = dict(
  grad_clip_norm=0.0,
  lr=0.05,
  warmup_steps=2,
  total_steps=10,
  end_lr_ratio=0.1,
  weight_decay=0.3,
  b1=0.9,
  b2=0.98,
  eps=1e-6,
)


def test_schedule_matches_warmup_cosine_formula():
  _, schedule = optim.make_optimizer(BASE, _params())
  for step in [0, 1, 2, 3, 5, 9, 10, 15]:
    np.testing.assert_allclose(
      float(schedule(step)), _np_schedule(step, 0.05, 2, 10, 0.1), rtol=1e-6, err_msg=f"step {step}"
    )
  # Concrete points: warmup midpoint, peak, cosine midpoint, end.
  np.testing.assert_allclose(float(schedule(1)), 0.025, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(2)), 0.05, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(6)), 0.0275, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 0.005, rtol=1e-6)


def test_default_no_decay_names():
  mask = _names_values(optim.decay_mask(_params()))
  assert {k for k, v in mask.items() if v} == DECAYED


def test_adamw_steps_match_numpy_with_decay_only_where_expected():
  params, grads = _params(), _grads(4)
  tx, _ = optim.make_optimizer(ml_collections.ConfigDict(BASE), params)
  new, _ = _run(tx, params, grads)
  ref = _np_adamw(_names_values(params), [_names_values(g) for g in grads], BASE, DECAYED)
  for name, value in _names_values(new).items():
    np.testing.assert_allclose(value, ref[name], rtol=2e-5, atol=1e-6, err_msg=name)
  # Decay mattered: with every name decayed the reference differs.
  all_decayed = _np_adamw(_names_values(params), [_names_values(g) for g in grads], BASE, set(ref))
  assert not np.allclose(all_decayed["visual/ln_pre/scale"], ref["visual/ln_pre/scale"], atol=1e-4)


def test_custom_no_decay_replaces_default():
  params, grads = _params(), _grads(2)
  cfg = {**BASE, "no_decay": ["text/.*"]}
  tx, _ = optim.make_optimizer(cfg, params)
  new, _ = _run(tx, params, grads)
  decayed = {n for n in _names_values(params) if not n.startswith("text/")}
  ref = _np_adamw(_names_values(params), [_names_values(g) for g in grads], BASE, decayed)
  for name, value in _names_values(new).items():
    np.testing.assert_allclose(value, ref[name], rtol=2e-5, atol=1e-6, err_msg=name)


def test_frozen_leaves_unchanged_and_without_state():
  params, grads = _params(), _grads(3)
  cfg = {**BASE, "freeze": ["visual/.*"], "grad_clip_norm": 1.0}
  tx, _ = optim.make_optimizer(cfg, params)
  new, state = _run(tx, params, grads)
  names = _names_values(params)
  frozen = {n for n in names if n.startswith("visual/")}
  trainable = set(names) - frozen
  for name, value in _names_values(new).items():
    if name in frozen:
      np.testing.assert_array_equal(value, names[name], err_msg=name)
    else:
      assert not np.allclose(value, names[name]), name
  # Optimizer state: mu and nu for each trainable leaf, nothing else but
  # scalar step counts.
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  inside = [sharding.param_path_str(k) for k, _ in flat]
  counts = [x for (k, x), n in zip(flat, inside) if not n]
  assert all(np.shape(c) == () and jnp.issubdtype(c.dtype, jnp.integer) for c in counts)
  assert sorted(n for n in inside if n) == sorted(list(trainable) * 2)
  frozen_size = sum(np.size(names[n]) for n in frozen)
  assert sum(np.size(x) for x in jax.tree.leaves(state)) == (
    2 * sum(np.size(names[n]) for n in trainable) + len(counts)
  )
  assert frozen_size > 0
  # Trainable leaves follow numpy AdamW whose clip norm ignores frozen grads.
  ref = _np_adamw(names, [_names_values(g) for g in grads], cfg, DECAYED, frozen=frozen)
  for name in trainable:
    np.testing.assert_allclose(
      _names_values(new)[name], ref[name], rtol=2e-5, atol=1e-6, err_msg=name
    )


# Adam's first step with a tiny eps is -lr * sign(g): what an lr multiplier scales is plain.
SIGN_STEP = dict(lr=0.01, total_steps=100, b1=0.9, b2=0.999, eps=1e-8)


def test_lr_mults_scale_first_adam_step():
  params = _params()
  grads = jax.tree.map(lambda x: x + np.float32(0.3) * np.sign(x), _params(7))
  cfg = _cfg(
    **SIGN_STEP,
    lr_mults=[("visual/transformer/.*", 0.5), ("visual/.*", 0.1), ("logit_scale", 3.0)],
  )
  tx, _ = optim.make_optimizer(cfg, params)
  updates, _ = _first_update(tx, params, grads)
  for name, u in _names_values(updates).items():
    g = _names_values(grads)[name]
    if name.startswith("visual/transformer/"):
      mult = 0.5  # first match wins over 'visual/.*'.
    elif name.startswith("visual/"):
      mult = 0.1
    else:
      mult = 3.0 if name == "logit_scale" else 1.0
    np.testing.assert_allclose(u, -0.01 * mult * np.sign(g), rtol=1e-5, err_msg=name)


def test_layer_decay_scales_image_tower_blocks_and_composes_with_lr_mults():
  params = _params()
  blocks = params["visual"]["transformer"]
  blocks["resblocks_1"] = jax.tree.map(lambda x: x + 1.0, blocks["resblocks_0"])
  grads = jax.tree.map(lambda x: x + np.float32(0.3) * np.sign(x), params)
  cfg = _cfg(
    **SIGN_STEP,
    layer_decay=0.5,
    lr_mults=[("visual/transformer/resblocks_1/.*", 3.0)],
  )
  tx, _ = optim.make_optimizer(cfg, params)
  updates, _ = _first_update(tx, params, grads)
  # Depth L = 2: stem 0.5**3, block 0 0.5**2, block 1 0.5 (x3 from lr_mults), the rest 1.
  for name, u in _names_values(updates).items():
    stem = ("conv1/", "class_embedding", "positional_embedding", "ln_pre/")
    if name.startswith(tuple(f"visual/{p}" for p in stem)):
      mult = 0.125
    elif name.startswith("visual/transformer/resblocks_0/"):
      mult = 0.25
    elif name.startswith("visual/transformer/resblocks_1/"):
      mult = 1.5
    else:
      mult = 1.0
    g = _names_values(grads)[name]
    np.testing.assert_allclose(u, -0.01 * mult * np.sign(g), rtol=1e-5, err_msg=name)


def test_layer_decay_needs_an_image_tower():
  params = _params()
  del params["visual"]
  with pytest.raises(ValueError, match=r"layer_decay=0.7: no image-tower block"):
    optim.make_optimizer(_cfg(total_steps=10, layer_decay=0.7), params)


@pytest.mark.parametrize("clip", [0.5, 1e3])
def test_clipping_matches_numpy_global_norm(clip):
  # A large eps makes Adam's first step depend on the gradient's scale, so
  # clipping is visible: u = g' / (|g'| + 1) with g' the clipped gradient.
  params = _params()
  grads = _grads(1)[0]
  cfg = _cfg(lr=1.0, total_steps=10, eps=1.0, grad_clip_norm=clip)
  tx, _ = optim.make_optimizer(cfg, params)
  updates, _ = _first_update(tx, params, grads)
  g = {k: np.asarray(v, np.float64) for k, v in _names_values(grads).items()}
  norm = math.sqrt(sum(np.sum(x**2) for x in g.values()))
  assert norm > 0.5  # 0.5 clips, 1e3 does not.
  for name, u in _names_values(updates).items():
    gc = g[name] * min(1.0, clip / norm)
    np.testing.assert_allclose(u, -gc / (np.abs(gc) + 1.0), rtol=1e-5, atol=1e-7, err_msg=name)


def test_optimizer_jits_with_sharded_state():
  mesh = sharding.make_mesh([("data", 4), ("fsdp", 2)])
  params = jax.tree.map(jnp.asarray, _params())
  rules = [("visual/positional_embedding", 'shard_dim("fsdp", 0)'), (".*", "replicate")]
  with pytest.raises(ValueError):  # 5 rows do not split in 2.
    sharding.infer_sharding(params, rules, mesh)
  rules = [("text/token_embedding/.*", 'shard_dim("fsdp", 0)'), (".*", "replicate")]
  cfg = {**BASE, "freeze": ["text/ln_final/.*"]}
  tx, _ = optim.make_optimizer(cfg, params)
  p_sh = sharding.infer_sharding(params, rules, mesh)
  o_sh = sharding.infer_sharding(jax.eval_shape(tx.init, params), rules, mesh)
  params = sharding.reshard(params, p_sh)
  state = jax.jit(tx.init, out_shardings=o_sh)(params)
  specs = {
    sharding.param_path_str(k): x.sharding.spec
    for k, x in jax.tree_util.tree_flatten_with_path(state)[0]
  }
  assert specs["text/token_embedding/embedding"] == jax.P("fsdp", None)
  assert specs["visual/proj"] == jax.P()
  updates, _ = jax.jit(tx.update)(_grads(1)[0], state, params)
  emb = updates["text"]["token_embedding"]["embedding"]
  assert emb.sharding.is_equivalent_to(p_sh["text"]["token_embedding"]["embedding"], emb.ndim)
  assert emb.addressable_shards[0].data.shape == (5, 4)


def test_trainable_mask_and_labels():
  params = _params()
  mask = _names_values(optim.trainable_mask(params, ["text/.*", "logit_scale"]))
  assert {k for k, v in mask.items() if not v} == {
    "text/token_embedding/embedding",
    "text/ln_final/scale",
    "text/ln_final/bias",
    "text/text_projection",
    "logit_scale",
  }
  labels = _names_values(optim.param_labels(params, "visual/proj"))
  assert labels["visual/proj"] == "frozen"
  assert labels["visual/conv1/kernel"] == "trainable"


@pytest.mark.parametrize(
  "cfg,message",
  [
    ({"lr": 1e-3}, r"missing keys \['warmup_steps', 'total_steps', .*'grad_clip_norm'\]"),
    ({"total_steps": 10, "learning_rate": 1.0}, r"unknown keys \['learning_rate'\]"),
    ({"total_steps": 10, "warmup_steps": 10}, "must be smaller than"),
    ({"total_steps": 10, "weight_decay": -1.0}, r"optim.weight_decay: must be >= 0"),
    (
      {"total_steps": 10, "freeze": ["visaul/.*"]},
      r"optim.freeze: regex 'visaul/\.\*' matches no parameter",
    ),
    (
      {"total_steps": 10, "lr_mults": [("txt/.*", 0.1)]},
      r"optim.lr_mults: regex 'txt/\.\*' matches no parameter",
    ),
    (
      {"total_steps": 10, "lr_mults": [("visual/.*",)]},
      r"optim.lr_mults\[0\].*\(regex, multiplier\) pair",
    ),
    ({"total_steps": 10, "no_decay": ["("]}, r"optim.no_decay\[0\] '\(': bad regex"),
    ({"total_steps": 10, "b2": 1.0}, "b2"),
    ({"total_steps": 10, "layer_decay": 0.0}, r"optim.layer_decay: must be in \(0, 1\]"),
    ({"total_steps": 10, "layer_decay": 1.5}, r"optim.layer_decay: must be in \(0, 1\]"),
  ],
)
def test_config_errors(cfg, message):
  if "lr" not in cfg:
    cfg = _cfg(**cfg)
  with pytest.raises(ValueError, match=message):
    optim.make_optimizer(cfg, _params())


def test_zero_total_steps_never_updates():
  params = _params()
  tx, schedule = optim.make_optimizer(_cfg(total_steps=0, lr=1.0), params)
  assert float(schedule(0)) == 0.0
  new, _ = _run(tx, params, _grads(1))
  jax.tree.map(np.testing.assert_array_equal, new, params)
