"""Objectives: accumulation keeps the negative pool (equals one big batch), and sharding is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clef_jax import losses
from clef_jax import models
from clef_jax import objectives
from clef_jax import sharding
from clef_jax import tokenizer
from configs import finetune_au, finetune_fer, pretrain


def _setup(config):
  model = models.build(config.model)
  tok = tokenizer.get("embedded", context_length=config.model.context_length)
  return model, tok


def _init(model, obj, config, seed=0):
  s = config.model.image_size
  r1, r2 = jax.random.split(jax.random.key(seed))
  p = model.init(
    r1, jnp.zeros((1, s, s, 3)), jnp.zeros((1, config.model.context_length), jnp.int32)
  )["params"]
  return {**p, "heads": obj.init_heads(r2)}


def _pretrain_batch(b, s, rng):
  return {
    "image": rng.integers(0, 256, (b, 2, s, s, 3), dtype=np.uint8),
    "activity_id": rng.integers(0, 3, (b,)).astype(np.int32),
    "subject_id": rng.integers(0, 4, (b,)).astype(np.int32),
    "index": np.arange(b, dtype=np.int64),
    "mask": np.array([True] * (b - 1) + [False]),
  }


@pytest.mark.parametrize("pairing,proj", [("activity", False), ("activity_cross_subject", True)])
def test_accumulation_equals_big_batch_pretrain(pairing, proj):
  c = pretrain.get_config("tiny")
  c.pretrain.pairing = pairing
  c.pretrain.proj_head = proj
  model, tok = _setup(c)
  obj = objectives.pretrain_objective(c, model, tok, ["a joke.", "a documentary.", "a smell."])
  params = _init(model, obj, c)
  batch = jax.tree.map(jnp.asarray, _pretrain_batch(8, 32, np.random.default_rng(0)))
  rng = jax.random.key(1)
  (l1, _), g1 = jax.jit(lambda p, b: objectives.grad_fn(obj, p, b, rng, 1))(params, batch)
  (l4, _), g4 = jax.jit(lambda p, b: objectives.grad_fn(obj, p, b, rng, 4))(params, batch)
  np.testing.assert_allclose(l1, l4, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-6)
  # and the loss is CLEF's formula on the embeddings
  z = obj.embed_images(params, obj.images(batch))
  zt = obj.embed_texts(params, rng)["activities"]
  rep = lambda x: jnp.repeat(x, 2)
  z_pi = z
  if proj:
    z_pi = models.l2_normalize(
      objectives.ProjectionHead(c.model.embed_dim, c.pretrain.proj_dim).apply(
        {"params": params["heads"]["pi_proj"]}, z
      )
    )
  pos = losses.pairing_mask(
    pairing,
    instance_ids=rep(batch["index"]),
    activity_ids=rep(batch["activity_id"]),
    subject_ids=rep(batch["subject_id"]),
  )
  want = (
    losses.supcon_from_mask(z_pi, pos, 0.1, rep(batch["mask"]))
    + losses.image_activity_loss(
      z, zt, rep(batch["activity_id"]), objectives.logit_scale(params, c.model), rep(batch["mask"])
    )[0]
  )
  np.testing.assert_allclose(l1, want, rtol=1e-5)


@pytest.mark.parametrize("task", ["au", "fer"])
def test_accumulation_equals_big_batch_finetune(task):
  c = (finetune_au if task == "au" else finetune_fer).get_config("tiny")
  model, tok = _setup(c)
  rng = np.random.default_rng(0)
  if task == "au":
    labels = [1, 2, 4, 6, 12]
    obj = objectives.finetune_objective(c, model, tok, labels, pos_weight=np.full(5, 2.0))
    batch = {
      "image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
      "au": rng.integers(-1, 2, (8, 5)).astype(np.int8),
      "mask": np.ones(8, bool),
    }
  else:
    labels = ["neutral", "happiness", "sadness"]
    obj = objectives.finetune_objective(c, model, tok, labels)
    batch = {
      "image": rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8),
      "label": rng.integers(0, 3, (8,)).astype(np.int32),
      "mask": np.ones(8, bool),
    }
  params = _init(model, obj, c)
  batch = jax.tree.map(jnp.asarray, batch)
  key = jax.random.key(3)
  (l1, a1), g1 = jax.jit(lambda p, b: objectives.grad_fn(obj, p, b, key, 1))(params, batch)
  (l2, _), g2 = jax.jit(lambda p, b: objectives.grad_fn(obj, p, b, key, 2))(params, batch)
  np.testing.assert_allclose(l1, l2, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-6)
  assert "loss_dn" in a1 and np.isfinite(a1["loss_dn"])


def test_sharded_step_equals_single_device():
  c = pretrain.get_config("tiny")
  model, tok = _setup(c)
  obj = objectives.pretrain_objective(c, model, tok, ["a joke.", "a documentary.", "a smell."])
  params = _init(model, obj, c)
  host = _pretrain_batch(16, 32, np.random.default_rng(1))
  key = jax.random.key(0)
  f = lambda p, b: objectives.grad_fn(obj, p, b, key, 1)
  single = jax.devices()[:1]
  (l1, _), g1 = jax.jit(f)(
    jax.device_put(params, single[0]), jax.device_put(jax.tree.map(jnp.asarray, host), single[0])
  )
  for spec in ([("data", 8), ("fsdp", 1)], [("data", 4), ("fsdp", 2)]):
    mesh = sharding.make_mesh(spec)
    with jax.set_mesh(mesh):
      batch = sharding.global_batch(host, mesh)
      sh = sharding.infer_sharding(params, [(".*", "fsdp(axis='fsdp', min_size_mb=0)")], mesh)
      p = sharding.reshard(jax.device_get(params), sh)
      (l8, _), g8 = jax.jit(f)(p, batch)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g8)):
      np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-6)
