"""Tests for clef_jax.sharding on 8 simulated CPU devices (see conftest.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from clef_jax import sharding

MESHES = {
  "8x1": (("data", 8), ("fsdp", 1)),
  "4x2": (("data", 4), ("fsdp", 2)),
  "1x1": (("data", 1), ("fsdp", 1)),
}
# 0.001 MiB = 1048 B: the [12, 32] kernel (1536 B) shards, the rest does not.
RULES = [(".*/kernel", "fsdp(min_size_mb=0.001)"), (".*", "replicate")]


def _mesh(name):
  n = 1 if name == "1x1" else 8
  return sharding.make_mesh(MESHES[name], devices=jax.devices()[:n])


def _init_mlp(rng):
  """Two dense layers: [12 -> 32 -> 4]."""
  k0, k1, k2 = jax.random.split(rng, 3)
  return {
    "dense_0": {
      "kernel": jax.random.normal(k0, (12, 32)) / np.sqrt(12),
      "bias": 0.1 * jax.random.normal(k2, (32,)),
    },
    "dense_1": {"kernel": jax.random.normal(k1, (32, 4)) / np.sqrt(32), "bias": jnp.zeros((4,))},
  }


def _loss(params, batch):
  h = jnp.tanh(batch["x"] @ params["dense_0"]["kernel"] + params["dense_0"]["bias"])
  y = h @ params["dense_1"]["kernel"] + params["dense_1"]["bias"]
  return jnp.mean((y - batch["y"]) ** 2)


# ----------------------------------------------------------------------------
# Mesh.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "spec,shape",
  [
    ((("data", -1), ("fsdp", 1)), {"data": 8, "fsdp": 1}),
    ([["data", -1], ["fsdp", 2]], {"data": 4, "fsdp": 2}),
    ([("data", 2), ("fsdp", -1)], {"data": 2, "fsdp": 4}),
    ([("data", 8)], {"data": 8}),
  ],
)
def test_make_mesh_resolves_sizes_with_auto_axes(spec, shape):
  mesh = sharding.make_mesh(spec)
  assert dict(mesh.shape) == shape
  assert mesh.axis_types == (AxisType.Auto,) * len(shape)
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_make_mesh_default_and_devices():
  mesh = sharding.make_mesh(devices=jax.devices()[:2])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1}


@pytest.mark.parametrize(
  "spec,message",
  [
    ([("data", -1), ("fsdp", -1)], "at most one size may be -1"),
    ([("data", 3), ("fsdp", -1)], "do not divide the device count 8"),
    ([("data", 4), ("fsdp", 1)], "multiply to 4 but there are 8 devices"),
    ([("data", 0), ("fsdp", -1)], "must be positive or -1"),
    ([("data", -1), ("data", 1)], "axis names repeat"),
    ([("data",)], "pairs"),
    ("data", "pairs"),
    ([("data", "8")], "pairs"),
    ([], "pairs"),
  ],
)
def test_make_mesh_errors_name_the_spec(spec, message):
  with pytest.raises(ValueError, match=message) as e:
    sharding.make_mesh(spec)
  assert repr(spec) in str(e.value)


# ----------------------------------------------------------------------------
# Names, rules, tactics.
# ----------------------------------------------------------------------------


def test_tree_paths_and_param_path_inside_optax_state():
  params = {
    "visual": {"transformer": {"resblocks_0": {"attn": {"kernel": np.zeros((2, 2))}}}},
    "layers": [np.zeros(3)],
  }
  assert sharding.tree_paths(params) == ["layers/0", "visual/transformer/resblocks_0/attn/kernel"]
  state = optax.adam(1e-3).init(params)
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  names = sorted((sharding.path_str(k), sharding.param_path_str(k)) for k, _ in flat)
  assert names == [
    ("0/count", ""),
    ("0/mu/layers/0", "layers/0"),
    (
      "0/mu/visual/transformer/resblocks_0/attn/kernel",
      "visual/transformer/resblocks_0/attn/kernel",
    ),
    ("0/nu/layers/0", "layers/0"),
    (
      "0/nu/visual/transformer/resblocks_0/attn/kernel",
      "visual/transformer/resblocks_0/attn/kernel",
    ),
  ]


@pytest.mark.parametrize(
  "text,expected",
  [
    ("replicate", sharding.Replicate()),
    ("fsdp", sharding.Fsdp("fsdp", 4.0)),
    ("fsdp()", sharding.Fsdp("fsdp", 4.0)),
    ('fsdp(axis="data", min_size_mb=0.5)', sharding.Fsdp("data", 0.5)),
    ("fsdp(axis=['data', 'fsdp'])", sharding.Fsdp(("data", "fsdp"), 4.0)),
    ('shard_dim("fsdp", -1)', sharding.ShardDim("fsdp", -1)),
    ('shard_dim(axis="data", dim=0)', sharding.ShardDim("data", 0)),
  ],
)
def test_parse_tactic(text, expected):
  assert sharding.parse_tactic(text) == expected


@pytest.mark.parametrize(
  "text,message",
  [
    ("shard", "unknown tactic 'shard'"),
    ("fsdp(axis=data)", "must be literals"),
    ('__import__("os").system("true")', "expected NAME or NAME"),
    ("fsdp(size=3)", "unexpected keyword"),
    ("fsdp(", "not parseable"),
    (3, "expected a string"),
  ],
)
def test_parse_tactic_errors(text, message):
  with pytest.raises(ValueError, match=message):
    sharding.parse_tactic(text)


def _abstract(**shapes):
  return {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}


def test_fsdp_picks_largest_divisible_dim_and_respects_min_size():
  mesh = _mesh("4x2")
  tree = _abstract(
    square=(24, 20), largest_indivisible=(30, 12), none_divisible=(6, 10), vec=(32,), scalar=()
  )
  specs = {
    k: s.spec
    for k, s in sharding.infer_sharding(
      tree, [(".*", 'fsdp(axis="data", min_size_mb=0)')], mesh
    ).items()
  }
  assert specs == {
    "square": P("data", None),  # both divisible by 4: largest.
    "largest_indivisible": P(None, "data"),  # 30 % 4 != 0 -> next, 12.
    "none_divisible": P(),
    "vec": P("data"),
    "scalar": P(),
  }
  # 24 * 20 * 4 bytes = 1920 B: below 0.002 MiB (2097 B) -> replicated.
  small = sharding.infer_sharding(tree, [(".*", 'fsdp(axis="data", min_size_mb=0.002)')], mesh)
  assert small["square"].spec == P()
  assert small["largest_indivisible"].spec == P()  # 1440 B
  big = sharding.infer_sharding(tree, [(".*", 'fsdp(axis="data", min_size_mb=0.0018)')], mesh)
  assert big["square"].spec == P("data", None)  # 1920 B >= 1887 B
  assert big["largest_indivisible"].spec == P()  # 1440 B < 1887 B
  # Two axes together (size 8), and an axis of size 1 replicates.
  both = sharding.infer_sharding(_abstract(w=(12, 16)), [(".*", "fsdp(('data', 'fsdp'), 0)")], mesh)
  assert both["w"].spec == P(None, ("data", "fsdp"))
  one = sharding.infer_sharding(
    _abstract(w=(12, 16)), [(".*", "fsdp(min_size_mb=0)")], _mesh("8x1")
  )
  assert one["w"].spec == P()


def test_shard_dim_and_first_match_wins():
  mesh = _mesh("4x2")
  tree = {"visual": _abstract(proj=(8, 6), pos=(3, 8)), "text": _abstract(proj=(8, 6))}
  rules = [
    ("visual/proj", 'shard_dim("data", 0)'),
    ("visual/.*", 'shard_dim(axis="fsdp", dim=-1)'),
    (".*", "replicate"),
    ("text/.*", 'shard_dim("data", 0)'),
  ]  # never reached.
  sh = sharding.infer_sharding(tree, rules, mesh)
  assert sh["visual"]["proj"].spec == P("data", None)
  assert sh["visual"]["pos"].spec == P(None, "fsdp")
  assert sh["text"]["proj"].spec == P()
  assert all(isinstance(s, NamedSharding) and s.mesh == mesh for s in jax.tree.leaves(sh))


def test_infer_sharding_errors_name_leaf_and_rule():
  mesh = _mesh("4x2")
  tree = {"visual": _abstract(proj=(6, 8)), "text": _abstract(proj=(8, 8))}
  with pytest.raises(ValueError, match="no sharding rule matches leaf 'text/proj'"):
    sharding.infer_sharding(tree, [("visual/.*", "replicate")], mesh)
  with pytest.raises(
    ValueError,
    match=r"'visual/proj' \(shape \(6, 8\)\), "
    r"rule 'visual/.\*'.*not divisible by the size 4",
  ):
    sharding.infer_sharding(
      tree, [("visual/.*", 'shard_dim("data", 0)'), (".*", "replicate")], mesh
    )
  with pytest.raises(ValueError, match="mesh axis 'model' not in mesh axes"):
    sharding.infer_sharding(tree, [(".*", 'fsdp(axis="model")')], mesh)
  with pytest.raises(ValueError, match=r"sharding rule #1 .*bad regex"):
    sharding.infer_sharding(tree, [(".*", "replicate"), ("(", "replicate")], mesh)
  with pytest.raises(ValueError, match=r"sharding rule #0: .*unknown tactic"):
    sharding.infer_sharding(tree, [(".*", "sharded")], mesh)
  with pytest.raises(ValueError, match=r"rule #0 .*\(regex, tactic\) pair"):
    sharding.infer_sharding(tree, [".*"], mesh)


def test_optimizer_state_follows_param_rules():
  mesh = _mesh("4x2")
  params = {"visual": _abstract(w=(8, 16)), "text": _abstract(w=(8, 16))}
  rules = [("visual/.*", 'shard_dim("data", 0)'), (".*", "replicate")]
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  opt_sh = sharding.infer_sharding(jax.eval_shape(tx.init, params), rules, mesh)
  specs = {sharding.path_str(k): s.spec for k, s in jax.tree_util.tree_flatten_with_path(opt_sh)[0]}
  assert specs == {
    "1/0/count": P(),
    "1/0/mu/text/w": P(),
    "1/0/mu/visual/w": P("data", None),
    "1/0/nu/text/w": P(),
    "1/0/nu/visual/w": P("data", None),
  }


# ----------------------------------------------------------------------------
# Init, batches, a training step.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("mesh_name", ["8x1", "4x2"])
def test_sharded_init_follows_rules(mesh_name):
  mesh = _mesh(mesh_name)
  rng = jax.random.key(0)
  params, shardings = sharding.sharded_init(_init_mlp, rng, RULES, mesh)
  fsdp = "fsdp" if mesh_name == "4x2" else None
  expected = {
    "dense_0": {"kernel": P(None, fsdp) if fsdp else P(), "bias": P()},
    # [32, 4] float32 = 512 B < 0.001 MiB: replicated.
    "dense_1": {"kernel": P(), "bias": P()},
  }
  got = jax.tree.map(lambda x: x.sharding.spec, params)
  assert got == jax.tree.map(lambda s: s.spec, shardings) == expected
  # Same values as a plain, unsharded init (up to float rounding of fusion).
  ref = jax.device_get(_init_mlp(rng))
  jax.tree.map(
    functools.partial(np.testing.assert_allclose, rtol=1e-6), jax.device_get(params), ref
  )
  if fsdp:  # Each device really holds only half of the dense_0 kernel.
    shard = params["dense_0"]["kernel"].addressable_shards[0]
    assert shard.data.shape == (12, 16)


def test_global_batch_places_rows_by_mesh_position():
  mesh = _mesh("4x2")
  local = {
    "x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3),
    "label": np.arange(16, dtype=np.int32),
  }
  batch = sharding.global_batch(local, mesh)
  for key, x in batch.items():
    assert x.shape == local[key].shape and x.dtype == local[key].dtype
    assert x.sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(x), local[key])
  # Device at mesh position (i, j) holds rows [(2i + j) * 2, +2).
  position = {d: idx for idx, d in np.ndenumerate(mesh.devices)}
  for shard in batch["label"].addressable_shards:
    i, j = position[shard.device]
    np.testing.assert_array_equal(np.asarray(shard.data), np.arange(2) + (2 * i + j) * 2)
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
  assert sharding.replicated(mesh).spec == P()


def test_global_batch_errors_name_the_key():
  with pytest.raises(
    ValueError,
    match=r"batch entry 'image' of shape "
    r"\(6, 2\).*divisible by the 8 batch shards",
  ):
    sharding.global_batch({"image": np.zeros((6, 2)), "y": np.zeros(8)}, _mesh("4x2"))


def test_reshard_host_tree_and_mismatch():
  mesh = _mesh("4x2")
  _, shardings = sharding.sharded_init(_init_mlp, jax.random.key(1), RULES, mesh)
  host = jax.tree.map(np.asarray, jax.device_get(_init_mlp(jax.random.key(2))))
  placed = sharding.reshard(host, shardings)
  for x, s, h in zip(jax.tree.leaves(placed), jax.tree.leaves(shardings), jax.tree.leaves(host)):
    assert x.sharding == s
    np.testing.assert_array_equal(np.asarray(x), h)
  del host["dense_1"]["bias"]
  with pytest.raises(ValueError, match=r"only in shardings: \['dense_1/bias'\]"):
    sharding.reshard(host, shardings)


def _train(mesh_name, steps=3):
  """Runs `steps` jitted AdamW steps; returns (losses, host params)."""
  mesh = _mesh(mesh_name)
  tx = optax.adamw(1e-2, weight_decay=1e-2)
  params, params_sh = sharding.sharded_init(_init_mlp, jax.random.key(0), RULES, mesh)
  opt_sh = sharding.infer_sharding(jax.eval_shape(tx.init, params), RULES, mesh)
  opt = jax.jit(tx.init, out_shardings=opt_sh)(params)
  state_sh = {"params": params_sh, "opt": opt_sh}

  @functools.partial(
    jax.jit, donate_argnums=(0,), out_shardings=(state_sh, sharding.replicated(mesh))
  )
  def step(state, batch):
    loss, grads = jax.value_and_grad(_loss)(state["params"], batch)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

  rs = np.random.RandomState(0)
  state, losses = {"params": params, "opt": opt}, []
  for _ in range(steps):
    local = {
      "x": rs.normal(size=(16, 12)).astype(np.float32),
      "y": rs.normal(size=(16, 4)).astype(np.float32),
    }
    state, loss = step(state, sharding.global_batch(local, mesh))
    losses.append(float(loss))
  assert jax.tree.map(lambda x: x.sharding, state) == state_sh
  return np.array(losses), jax.device_get(state["params"])


def test_training_step_same_on_all_meshes():
  ref_losses, ref_params = _train("1x1")
  assert ref_losses[-1] < ref_losses[0]  # it does train.
  for name in ("8x1", "4x2"):
    losses, params = _train(name)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7), params, ref_params
    )
