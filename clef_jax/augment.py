"""The device half of the training augmentation: colour jitter and greyscale on a batch.

With `config.data.augment.colour_on_device` the host pipeline (input_pipeline/augment.py) crops,
resizes and flips each view, draws its colour jitter and greyscale, and hands the draws on as
`batch['colour']` float32 [..., COLOUR_PARAMS]. `apply_colour` applies them inside the jitted
train step, reproducing Pillow's `ImageEnhance` arithmetic (tests/test_augment_device.py
compares it with Pillow pixel for pixel):

- Pillow's luma: L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, in integers.
- Each enhance is `Image.blend(degenerate, image, f)`: x ← trunc(d + f (x − d)) in float32,
  clipped to [0, 255], with d = 0 (brightness), the image's mean luma rounded to an integer
  (contrast) or the pixel's luma (saturation). The three run in the drawn order, each on the
  uint8 result of the one before.
- Greyscale: every channel ← L.

The output stays uint8, so normalisation and everything after it are unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from input_pipeline import augment as host_augment

COLOUR_PARAMS = host_augment.COLOUR_PARAMS


def _luma(x: jax.Array) -> jax.Array:
  """int32 [..., H, W, 3] in [0, 255] -> int32 [..., H, W, 1], Pillow's RGB -> L."""
  r, g, b = x[..., 0:1], x[..., 1:2], x[..., 2:3]
  return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16


def _blend(degenerate: jax.Array, x: jax.Array, factor: jax.Array) -> jax.Array:
  """Pillow's `Image.blend(degenerate, x, factor)` on uint8 values held as int32."""
  d = degenerate.astype(jnp.float32)
  out = d + factor * (x.astype(jnp.float32) - d)
  return jnp.clip(jnp.trunc(out), 0, 255).astype(jnp.int32)


def _one(image: jax.Array, colour: jax.Array) -> jax.Array:
  """uint8 [H, W, 3], float32 [COLOUR_PARAMS] -> uint8 [H, W, 3]."""
  x = image.astype(jnp.int32)
  for k in range(3):
    op = colour[3 + k].astype(jnp.int32)
    factor = colour[op]
    luma = _luma(x)
    mean = jnp.floor(jnp.mean(luma.astype(jnp.float32)) + 0.5).astype(jnp.int32)
    degenerate = jnp.select(
      [op == 0, op == 1], [jnp.zeros_like(luma), jnp.broadcast_to(mean, luma.shape)], luma
    )
    x = _blend(degenerate, x, factor)
  x = jnp.where(colour[6] > 0, jnp.broadcast_to(_luma(x), x.shape), x)
  return x.astype(jnp.uint8)


def apply_colour(images: jax.Array, colour: jax.Array) -> jax.Array:
  """Colour jitter and greyscale as drawn on the host.

  Args:
    images: uint8 [..., H, W, 3], e.g. [B, H, W, 3] or [B, 2, H, W, 3] (two views).
    colour: float32 [..., COLOUR_PARAMS], the same leading shape (input_pipeline.augment's
      layout: three factors, their order, greyscale).

  Returns:
    uint8 [..., H, W, 3].
  """
  images, colour = jnp.asarray(images), jnp.asarray(colour, jnp.float32)
  lead = images.shape[:-3]
  if images.dtype != jnp.uint8 or images.shape[-1] != 3:
    raise ValueError(
      f"apply_colour expects uint8 [..., H, W, 3] images, got {images.dtype} {images.shape}"
    )
  if colour.shape != (*lead, COLOUR_PARAMS):
    raise ValueError(
      f"apply_colour: colour {colour.shape} does not match images {images.shape} "
      f"(expected {(*lead, COLOUR_PARAMS)})"
    )
  flat = images.reshape(-1, *images.shape[-3:])
  out = jax.vmap(_one)(flat, colour.reshape(-1, COLOUR_PARAMS))
  return out.reshape(images.shape)


def apply_to_batch(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """`batch` with `image` jittered by `batch['colour']` (and that key dropped); unchanged
  without one."""
  if "colour" not in batch:
    return batch
  out = {k: v for k, v in batch.items() if k != "colour"}
  out["image"] = apply_colour(batch["image"], batch["colour"])
  return out
