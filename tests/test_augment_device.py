"""Colour jitter and greyscale on device (clef_jax/augment.py) against Pillow itself."""

import itertools

import jax
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from clef_jax import augment as device_augment
from input_pipeline import augment

_PIL_OPS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


def _pillow(image: np.ndarray, factors, order, grey: bool) -> np.ndarray:
  """The reference, written from Pillow's API only: enhance in `order`, then convert."""
  img = Image.fromarray(image)
  for i in order:
    img = _PIL_OPS[i](img).enhance(float(np.float32(factors[i])))
  if grey:
    img = img.convert("L").convert("RGB")
  return np.asarray(img)


def _images(rng, n, size=12):
  """Random faces-sized images, plus a saturated one and a flat one (edge cases of the clip
  and of contrast's mean)."""
  out = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  out[0] = np.where(rng.random((size, size, 1)) < 0.5, 255, 0)
  out[1] = 37
  return out


def test_apply_colour_matches_pillow_for_every_order_and_factor_range():
  """All 6 orders, factors below 1 (interpolation) and above 1 (extrapolation, Pillow's clip
  path), with and without greyscale: equal to Pillow on at least 99.5 % of the values and never
  more than one level off (float32 rounding at .0 boundaries of the truncation)."""
  rng = np.random.default_rng(0)
  cases, refs, images = [], [], []
  for order in itertools.permutations(range(3)):
    for grey in (False, True):
      img = _images(rng, 3)
      for k in range(3):
        factors = rng.uniform(0.0, 2.2, 3).astype(np.float32)
        cases.append(np.array([*factors, *order, float(grey)], np.float32))
        images.append(img[k])
        refs.append(_pillow(img[k], factors, order, grey))
  got = np.asarray(device_augment.apply_colour(np.stack(images), np.stack(cases)))
  ref = np.stack(refs)
  diff = np.abs(got.astype(int) - ref.astype(int))
  assert diff.max() <= 1, diff.max()
  assert (diff == 0).mean() >= 0.995, (diff == 0).mean()


def test_identity_draws_leave_the_image_alone_and_greyscale_is_pillows_luma():
  rng = np.random.default_rng(1)
  img = _images(rng, 4)
  identity = np.tile(np.array([1, 1, 1, 0, 1, 2, 0], np.float32), (4, 1))
  np.testing.assert_array_equal(np.asarray(device_augment.apply_colour(img, identity)), img)
  grey = identity.copy()
  grey[:, 6] = 1
  out = np.asarray(device_augment.apply_colour(img, grey))
  for k in range(4):  # Pillow's own conversion as the reference
    np.testing.assert_array_equal(
      out[k], np.asarray(Image.fromarray(img[k]).convert("L").convert("RGB"))
    )


def test_device_path_gives_the_host_paths_images_for_the_same_seed():
  """TrainAugment with colour_on_device=True then apply_colour = TrainAugment without it: the
  host draws in the same order, so the same seed gives the same training images (two views)."""
  cfg = dict(crop_scale=(0.5, 1.0), jitter_prob=0.8, greyscale_prob=0.3, flip_prob=0.5)
  host = augment.TrainAugment(cfg, 16, two_views=True)
  dev = augment.TrainAugment({**cfg, "colour_on_device": True}, 16, two_views=True)
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (24, 20, 20, 3), dtype=np.uint8)
  want, got, colours = [], [], []
  for i, image in enumerate(images):
    a = host.random_map({"image": image}, np.random.default_rng(100 + i))
    b = dev.random_map({"image": image}, np.random.default_rng(100 + i))
    assert b["colour"].shape == (2, augment.COLOUR_PARAMS) and b["colour"].dtype == np.float32
    assert "colour" not in a
    want.append(a["image"])
    got.append(b["image"])
    colours.append(b["colour"])
  colours = np.stack(colours)
  assert (colours[..., 6] == 1).any() and (colours[..., :3] != 1).any()  # the draws happened
  out = np.asarray(device_augment.apply_colour(np.stack(got), colours))
  diff = np.abs(out.astype(int) - np.stack(want).astype(int))
  assert diff.max() <= 1 and (diff == 0).mean() >= 0.995


def test_apply_colour_rejects_mismatched_shapes():
  img = np.zeros((2, 8, 8, 3), np.uint8)
  with pytest.raises(ValueError, match=r"colour \(3, 7\) does not match images \(2, 8, 8, 3\)"):
    device_augment.apply_colour(img, np.ones((3, 7), np.float32))
  with pytest.raises(ValueError, match="uint8"):
    device_augment.apply_colour(img.astype(np.float32), np.ones((2, 7), np.float32))


def test_the_train_step_applies_the_batchs_colour_draws():
  """objectives.grad_fn jitters a batch carrying `colour` before the image tower: its loss is
  the loss of the batch whose images were turned grey beforehand, and not the loss of the
  untouched images."""
  from configs import pretrain
  from clef_jax import models, objectives, tokenizer, trainer

  config = pretrain.get_config("tiny")
  config.pretrain.objective = "clip"
  tok = tokenizer.get("embedded", context_length=config.model.context_length)
  model = models.build(config.model)
  texts = [f"activity {k}" for k in range(4)]
  obj = objectives.pretrain_objective(config, model, tok, texts)
  s = config.model.image_size
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (8, s, s, 3), dtype=np.uint8)
  batch = {
    "image": images,
    "activity_id": np.arange(8, dtype=np.int32) % 4,
    "subject_id": np.arange(8, dtype=np.int32),
    "mask": np.ones(8, bool),
  }
  params = trainer.init_params(obj, jax.random.key(0))
  grey = np.tile(np.array([1, 1, 1, 0, 1, 2, 1], np.float32), (8, 1))
  key = jax.random.key(2)

  def loss(b):
    return float(objectives.grad_fn(obj, params, b, key)[0][0])

  greyed = np.stack([np.asarray(Image.fromarray(x).convert("L").convert("RGB")) for x in images])
  with_draws = loss({**batch, "colour": grey})
  np.testing.assert_allclose(with_draws, loss({**batch, "image": greyed}), rtol=1e-6)
  assert abs(with_draws - loss(batch)) > 1e-4
