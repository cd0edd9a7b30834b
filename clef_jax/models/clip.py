"""CLIP: image tower + text tower + learnable logit scale (Flax linen).

Param tree: `{'visual': {...}, 'text': {...}, 'logit_scale': () float32}`.

  model = clef_jax.models.build(model_config('tiny'))
  params = model.init(rng, images, tokens)['params']
  zimg, ztxt, scale = model.apply({'params': params}, images, tokens)
  zimg = model.apply({'params': params}, images, method='encode_image')
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from clef_jax.models import precision
from clef_jax.models import text as text_lib
from clef_jax.models import variants
from clef_jax.models import vit


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """Normalises the last axis to unit L2 norm (`[..., D] float32`)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / jnp.maximum(norm, eps)


class CLIP(nn.Module):
  """Two-tower CLIP model configured by a `variants.model_config` ConfigDict."""

  config: Any  # ml_collections.ConfigDict / FrozenConfigDict (see variants.py).

  def __post_init__(self):
    # Freeze so the module stays hashable; validate once, loudly.
    if not isinstance(self.config, ml_collections.FrozenConfigDict):
      object.__setattr__(self, "config", ml_collections.FrozenConfigDict(self.config))
    variants.check_config(self.config)
    super().__post_init__()

  def setup(self):
    c = self.config
    dtype = jnp.dtype(precision.resolve(c.dtype))
    self.visual = vit.VisionTransformer(
      image_size=c.image_size,
      patch_size=c.patch_size,
      width=c.vision_width,
      layers=c.vision_layers,
      num_heads=c.vision_heads,
      mlp_dim=variants.mlp_dim(c, c.vision_width),
      embed_dim=c.embed_dim,
      act=c.act,
      dtype=dtype,
      remat=c.remat,
    )
    self.text = text_lib.TextTransformer(
      vocab_size=c.vocab_size,
      context_length=c.context_length,
      width=c.text_width,
      layers=c.text_layers,
      num_heads=c.text_heads,
      mlp_dim=variants.mlp_dim(c, c.text_width),
      embed_dim=c.embed_dim,
      act=c.act,
      pooling=c.text_pooling,
      eos_token_id=c.eos_token_id,
      dtype=dtype,
      remat=c.remat,
    )
    self.logit_scale = self.param(
      "logit_scale", nn.initializers.constant(c.logit_scale_init), (), jnp.float32
    )

  def encode_image(self, images: jax.Array, normalize: bool = True) -> jax.Array:
    """`[B, H, W, 3] float32` CLIP-normalised images → `[B, embed_dim] float32`."""
    _, z = self.visual(images)
    return l2_normalize(z) if normalize else z

  def image_tokens(
    self, images: jax.Array, mask: jax.Array, mask_token: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """Masked images → (L2-normalised embeddings `[B, E]`, patch tokens `[B, N, width]`)."""
    _, z, tokens = self.visual(images, mask, mask_token, return_tokens=True)
    return l2_normalize(z), tokens

  def encode_text(self, tokens: jax.Array, normalize: bool = True) -> jax.Array:
    """`[N, L] int32` tokens → `[N, embed_dim] float32`."""
    _, z = self.text(tokens)
    return l2_normalize(z) if normalize else z

  def image_features(self, images: jax.Array) -> jax.Array:
    """Pre-projection class-token features after ln_post, `[B, vision_width] float32`."""
    features, _ = self.visual(images)
    return features

  def text_features(self, tokens: jax.Array) -> jax.Array:
    """Pre-projection EOT features after ln_final, `[N, text_width] float32`."""
    features, _ = self.text(tokens)
    return features

  def logit_scale_value(self) -> jax.Array:
    """exp(min(logit_scale, logit_scale_max)), a `[] float32` scalar."""
    return logit_scale(self.logit_scale, self.config.logit_scale_max)

  def __call__(
    self, images: jax.Array, tokens: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (zimg `[B, E]`, ztxt `[N, E]`, scale `[]`), embeddings L2-normalised."""
    return (self.encode_image(images), self.encode_text(tokens), self.logit_scale_value())


def build(model_config: ml_collections.ConfigDict) -> CLIP:
  """Returns the (unbound) CLIP module for a model config."""
  return CLIP(model_config)


def init(model: CLIP, rng: jax.Array) -> dict[str, Any]:
  """Fresh params of `model` (the one place that builds its dummy inputs); jit or eval_shape it."""
  c = model.config
  images = jnp.zeros((1, c.image_size, c.image_size, 3), jnp.float32)
  tokens = jnp.zeros((1, c.context_length), jnp.int32)
  return model.init(rng, images, tokens)["params"]


def logit_scale(raw: jax.Array, logit_scale_max: float) -> jax.Array:
  """s = exp(min(raw, logit_scale_max)): CLIP's clipped learnable temperature, `[] float32`."""
  return jnp.exp(jnp.minimum(raw, logit_scale_max))
