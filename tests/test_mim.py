"""Masked image modelling in the foundation objective (`config.foundation.mim_weight`)."""

import jax
import jax.numpy as jnp
import numpy as np

from clef_jax import models
from clef_jax import objectives
from configs import foundation


def _tiny(mim_weight=1.0):
  c = foundation.get_config("tiny")
  c.foundation.mim_weight = mim_weight
  c.foundation.mim_fraction = 0.5
  return c


def test_patchify_matches_hand_indexing():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 12, 3)).astype(np.float32)
  got = np.asarray(objectives.patchify(jnp.asarray(x), 4))
  assert got.shape == (2, 6, 48)
  for r in range(2):
    for c in range(3):
      np.testing.assert_array_equal(
        got[:, r * 3 + c], x[:, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].reshape(2, -1)
      )


def test_random_patch_mask_masks_exactly_k_and_varies():
  m = np.asarray(objectives.random_patch_mask(jax.random.key(0), 64, 16, 0.5))
  assert m.dtype == bool and m.shape == (64, 16)
  np.testing.assert_array_equal(m.sum(1), 8)
  assert len({row.tobytes() for row in m}) > 50  # not one pattern for every image
  assert np.asarray(objectives.random_patch_mask(jax.random.key(0), 3, 16, 0.01)).sum() == 3


def test_mim_loss_matches_numpy():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(3, 8, 8, 3)).astype(np.float32)
  pred = rng.normal(size=(3, 4, 48)).astype(np.float32)
  mask = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], bool)
  valid = np.array([True, True, False])  # the padded third image does not count
  got = float(objectives.mim_loss(pred, images, mask, valid, 4))
  total, count = 0.0, 0
  for i in range(2):
    for p in range(4):
      if mask[i, p]:
        r, c = divmod(p, 2)
        t = images[i, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].reshape(-1).astype(np.float64)
        t = (t - t.mean()) / np.sqrt(t.var() + 1e-6)
        total += np.mean((pred[i, p] - t) ** 2)
        count += 1
  np.testing.assert_allclose(got, total / count, rtol=1e-5)


def test_masked_patches_cannot_see_their_pixels():
  c = _tiny()
  model = models.build(c.model)
  s, p = c.model.image_size, c.model.patch_size
  params = models.init(model, jax.random.key(0))
  token = jnp.full((c.model.vision_width,), 0.3)
  rng = np.random.default_rng(2)
  images = rng.normal(size=(1, s, s, 3)).astype(np.float32)
  grid = s // p
  mask = np.zeros((1, grid * grid), bool)
  mask[0, 0] = True
  run = jax.jit(
    lambda x: model.apply({"params": params}, x, mask, token, method=model.image_tokens)
  )
  z, tokens = run(images)
  assert tokens.shape == (1, grid * grid, c.model.vision_width)
  changed_masked = images.copy()
  changed_masked[0, :p, :p] += 5.0  # pixels of the masked patch 0
  z2, tokens2 = run(changed_masked)
  np.testing.assert_array_equal(z, z2)
  np.testing.assert_array_equal(tokens, tokens2)
  changed_visible = images.copy()
  changed_visible[0, :p, p : 2 * p] += 5.0  # patch 1 is visible
  z3, _ = run(changed_visible)
  assert float(jnp.max(jnp.abs(z3 - z))) > 1e-3
  # Without a mask the tower's outputs are the plain encode_image ones.
  plain = model.apply({"params": params}, images, method=model.encode_image)
  z0, _ = model.apply(
    {"params": params}, images, np.zeros_like(mask), token, method=model.image_tokens
  )
  np.testing.assert_allclose(z0, plain, atol=1e-6)


def test_caption_objective_adds_mim_and_trains_its_heads():
  c = _tiny()
  model = models.build(c.model)
  obj = objectives.caption_objective(c, model)
  r1, r2 = jax.random.split(jax.random.key(0))
  params = {**models.init(model, r1), "heads": obj.init_heads(r2)}
  assert set(params["heads"]["mim"]) == {"mask_token", "decoder"}
  s, b = c.model.image_size, 8
  rng = np.random.default_rng(3)
  batch = {
    "image": jnp.asarray(rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8)),
    "tokens": jnp.asarray(rng.integers(1, 100, (b, c.model.context_length)), jnp.int32),
    "mask": jnp.ones((b,), bool),
  }
  (loss, aux), grads = jax.jit(lambda p: objectives.grad_fn(obj, p, batch, jax.random.key(1)))(
    params
  )
  np.testing.assert_allclose(loss, aux["loss_clip"] + aux["loss_mim"], rtol=1e-5)
  assert 0.5 < float(aux["loss_mim"]) < 5.0  # ~1 + |pred|^2 for standardised targets
  for leaf in jax.tree.leaves(grads["heads"]["mim"]):
    assert float(jnp.max(jnp.abs(leaf))) > 0
  # Off by default: no heads, the plain CLIP loss.
  off = objectives.caption_objective(_tiny(0.0), model)
  assert off.init_heads(r2) == {}
  (loss_off, aux_off), _ = objectives.grad_fn(off, models.init(model, r1), batch, jax.random.key(1))
  assert "loss_mim" not in aux_off
  np.testing.assert_allclose(loss_off, aux["loss_clip"], rtol=1e-5)
