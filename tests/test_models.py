"""CLIP towers: variants, shapes, dtypes, remat, input checks.

Numerical equivalence with transformers' CLIPModel is in test_pretrained.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clef_jax import models
from clef_jax.models import text as text_lib
from clef_jax.models import vit


def _inputs(config, batch=2, texts=3):
  shape = (batch, config.image_size, config.image_size, 3)
  return (jnp.zeros(shape, jnp.float32), jnp.zeros((texts, config.context_length), jnp.int32))


def _shapes(config):
  model = models.build(config)
  return jax.eval_shape(model.init, jax.random.key(0), *_inputs(config, 1, 1))["params"]


def _random_params(config, seed=0):
  """Params with the model's shapes (float32): LayerNorm scales ≈ 1, others ≈ N(0, .1²).

  Avoids compiling `model.init` (slow on CPU) for forward-property tests.
  """
  rng = np.random.default_rng(seed)
  flat = jax.tree.flatten_with_path(_shapes(config))
  leaves = []
  for path, s in flat[0]:
    noise = 0.1 * rng.normal(size=s.shape).astype(np.float32)
    leaves.append(1.0 + noise if path[-1].key == "scale" else noise)
  return jax.tree.unflatten(flat[1], leaves)


def _data(config, seed=1):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(2, config.image_size, config.image_size, 3))
  tokens = rng.integers(1, config.vocab_size - 1, size=(3, config.context_length))
  tokens[:, -1] = config.vocab_size - 1  # EOT (largest id)
  return jnp.asarray(images, jnp.float32), jnp.asarray(tokens, jnp.int32)


# Parameter counts printed by OpenAI's CLIP notebook ("Model parameters: ...").
_OPENAI_PARAM_COUNTS = {"B/32": 151_277_313, "B/16": 149_620_737, "L/14": 427_616_513}


@pytest.mark.parametrize("variant", sorted(models.VARIANTS))
def test_variant_param_shapes(variant):
  c = models.model_config(variant)
  shapes = _shapes(c)
  assert set(shapes) == {"visual", "text", "logit_scale"}
  assert shapes["logit_scale"].shape == ()
  grid = c.image_size // c.patch_size
  v, t = shapes["visual"], shapes["text"]
  assert v["conv1"]["kernel"].shape == (c.patch_size, c.patch_size, 3, c.vision_width)
  assert v["positional_embedding"].shape == (1 + grid * grid, c.vision_width)
  assert v["proj"].shape == (c.vision_width, c.embed_dim)
  assert len(v["transformer"]) == c.vision_layers
  last = v["transformer"][f"resblocks_{c.vision_layers - 1}"]
  assert last["attn"]["query"]["kernel"].shape == (
    c.vision_width,
    c.vision_heads,
    c.vision_width // c.vision_heads,
  )
  assert last["mlp"]["c_fc"]["kernel"].shape == (c.vision_width, 4 * c.vision_width)
  assert t["token_embedding"]["embedding"].shape == (c.vocab_size, c.text_width)
  assert t["positional_embedding"].shape == (c.context_length, c.text_width)
  assert t["text_projection"].shape == (c.text_width, c.embed_dim)
  assert len(t["transformer"]) == c.text_layers
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
  if variant in _OPENAI_PARAM_COUNTS:
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    assert count == _OPENAI_PARAM_COUNTS[variant]
  if variant != "tiny":
    assert (c.image_size, c.vocab_size, c.context_length) == (224, 49408, 77)
    assert (c.act, c.text_pooling) == ("quick_gelu", "argmax")


def test_free_image_and_patch_size():
  c = models.model_config("tiny", image_size=40, patch_size=10)
  assert _shapes(c)["visual"]["positional_embedding"].shape == (17, 32)
  with pytest.raises(ValueError, match="image_size=40 is not a multiple of patch_size=12"):
    models.model_config("tiny", image_size=40, patch_size=12)


def test_config_errors():
  with pytest.raises(ValueError, match="'B/17'"):
    models.model_config("B/17")
  with pytest.raises(ValueError, match=r"\['visoin_width'\]"):
    models.model_config("tiny", visoin_width=64)
  with pytest.raises(ValueError, match="vision_width=30 is not divisible by vision_heads=4"):
    models.model_config("tiny", vision_width=30, vision_heads=4)
  with pytest.raises(ValueError, match="act='relu'"):
    models.model_config("tiny", act="relu")
  c = models.model_config("tiny")
  c.dtype = "float16"
  with pytest.raises(ValueError, match="dtype='float16'"):
    models.build(c)


def test_forward_properties_and_single_towers():
  c = models.model_config("tiny")
  model = models.build(c)
  params = _random_params(c)
  images, tokens = _data(c)

  @jax.jit
  def run(params):
    v = {"params": params}
    return (
      model.apply(v, images, tokens),
      model.apply(v, images, method="encode_image"),
      model.apply(v, tokens, method=models.CLIP.encode_text),
      model.apply(v, images, method="image_features"),
      model.apply(v, tokens, normalize=False, method="encode_text"),
    )

  (zimg, ztxt, scale), zimg2, ztxt2, feats, raw = run(params)
  assert zimg.shape == (2, 32) and ztxt.shape == (3, 32) and feats.shape == (2, 32)
  assert zimg.dtype == ztxt.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(ztxt, axis=-1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(zimg, zimg2)
  np.testing.assert_array_equal(ztxt, ztxt2)
  np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=-1, keepdims=True), ztxt, atol=1e-6)
  # Pre-projection features project onto the (unnormalised) embedding.
  proj = np.asarray(params["visual"]["proj"])
  np.testing.assert_allclose(
    feats @ proj / np.linalg.norm(feats @ proj, axis=-1, keepdims=True), zimg, atol=1e-5
  )
  assert float(scale) == pytest.approx(math.exp(float(params["logit_scale"])), rel=1e-6)


def test_logit_scale_init_and_clamp():
  c = models.model_config("tiny")
  model = models.build(c)
  init = model.init(jax.random.key(0), method="logit_scale_value")["params"]
  assert set(init) == {"logit_scale"}
  assert float(init["logit_scale"]) == pytest.approx(math.log(1 / 0.07), rel=1e-6)
  value = model.apply({"params": {"logit_scale": jnp.float32(10.0)}}, method="logit_scale_value")
  assert float(value) == pytest.approx(100.0, rel=1e-5)


def test_bfloat16_compute_matches_float32():
  c32 = models.model_config("tiny", vision_layers=1, text_layers=1)
  c16 = models.model_config("tiny", vision_layers=1, text_layers=1, dtype="bfloat16")
  params = _random_params(c32)
  assert jax.tree.map(lambda s: s.dtype, _shapes(c16)) == jax.tree.map(
    lambda s: s.dtype, _shapes(c32)
  )  # params stay float32
  images, tokens = _data(c32)
  z32 = jax.jit(models.build(c32).apply)({"params": params}, images, tokens)
  z16 = jax.jit(models.build(c16).apply)({"params": params}, images, tokens)
  for a, b in zip(z32[:2], z16[:2]):
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=5e-2)
    assert np.abs(a - b).max() > 0  # bf16 compute really happened


def test_remat_gives_identical_outputs_and_grads():
  # Same param tree through the config flag ...
  c = models.model_config("tiny")
  assert jax.tree.structure(_shapes(c)) == jax.tree.structure(
    _shapes(models.model_config("tiny", remat=True))
  )
  # ... and identical values/grads of the transformer stack it switches (a small
  # stack keeps the CPU-expensive gradient compiles short).
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 32)), jnp.float32)
  mask = jnp.tril(jnp.ones((1, 1, 5, 5), bool))
  plain = vit.Transformer(layers=2, num_heads=2, mlp_dim=64)
  shapes = jax.eval_shape(plain.init, jax.random.key(0), x, mask)["params"]
  params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.normal(size=s.shape), jnp.float32), shapes)

  def value_and_grad(module):
    loss = lambda p, x: jnp.sum(jnp.sin(module.apply({"params": p}, x, mask)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

  l1, g1 = value_and_grad(plain)(params, x)
  l2, g2 = value_and_grad(plain.clone(remat=True))(params, x)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def test_input_shape_errors():
  c = models.model_config("tiny")
  model = models.build(c)
  params = _random_params(c)
  with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\].*\(1, 48, 48, 3\)"):
    model.apply({"params": params}, jnp.zeros((1, 48, 48, 3)), method="encode_image")
  with pytest.raises(ValueError, match="L<=16"):
    model.apply({"params": params}, jnp.zeros((1, 17), jnp.int32), method="encode_text")


def test_eot_positions():
  tokens = jnp.array([[5, 9, 3, 0, 0], [5, 3, 9, 9, 3]], jnp.int32)
  np.testing.assert_array_equal(text_lib.eot_positions(tokens, "argmax", 3), [1, 2])
  np.testing.assert_array_equal(text_lib.eot_positions(tokens, "eos_id", 3), [2, 1])


def test_normalize_images():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
  mean = np.array([0.48145466, 0.4578275, 0.40821073])
  std = np.array([0.26862954, 0.26130258, 0.27577711])
  ref = (x / 255.0 - mean) / std
  out = models.normalize_images(x)
  assert out.dtype == jnp.float32 and out.shape == x.shape
  np.testing.assert_allclose(out, ref, atol=1e-5)
  with pytest.raises(ValueError, match="uint8"):
    models.normalize_images(x.astype(np.float32))
