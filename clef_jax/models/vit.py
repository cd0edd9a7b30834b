"""CLIP image tower (ViT) and the pre-LN transformer shared with the text tower.

Parameter names follow OpenAI CLIP (conv1, class_embedding, positional_embedding, ln_pre,
transformer/resblocks_N/{ln_1, attn, ln_2, mlp/{c_fc, c_proj}}, ln_post, proj); attention
uses `flax.linen.MultiHeadDotProductAttention` (attn/{query,key,value,out}).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-5  # OpenAI CLIP / HF CLIP layer_norm_eps.


def normalize_images(images: jax.Array) -> jax.Array:
  """CLIP input normalisation.

  Args:
    images: `[..., H, W, 3] uint8` RGB.

  Returns:
    `[..., H, W, 3] float32`: (x / 255 - CLIP_MEAN) / CLIP_STD.
  """
  if images.dtype != jnp.uint8:
    raise ValueError(f"normalize_images expects uint8 RGB images, got {images.dtype}.")
  if images.ndim < 3 or images.shape[-1] != 3:
    raise ValueError(f"normalize_images expects [..., H, W, 3] images, got shape {images.shape}.")
  x = jnp.asarray(images, jnp.float32) / 255.0
  return (x - jnp.asarray(CLIP_MEAN, jnp.float32)) / jnp.asarray(CLIP_STD, jnp.float32)


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's QuickGELU: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """'quick_gelu' | 'gelu' (exact erf form, as torch/HF 'gelu')."""
  acts = {"quick_gelu": quick_gelu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}
  if name not in acts:
    raise ValueError(f"Unknown activation {name!r}; known: {sorted(acts)}.")
  return acts[name]


class Mlp(nn.Module):
  """c_fc → activation → c_proj."""

  hidden_dim: int
  act: str = "quick_gelu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="c_fc")(x)
    x = activation(self.act)(x)
    return nn.Dense(width, dtype=self.dtype, name="c_proj")(x)


class ResidualBlock(nn.Module):
  """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

  num_heads: int
  mlp_dim: int
  act: str = "quick_gelu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """`x` `[B, L, W]`; `mask` `[B, 1, L, L] bool` (True = attend) or None."""
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_1")(x)
    # bf16 compute: the attention softmax stays fp32 (LayerNorm statistics already are:
    # flax reduces in fp32), the rest of the block runs in `dtype` on fp32 params.
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dtype=self.dtype,
      deterministic=True,
      force_fp32_for_softmax=True,
      name="attn",
    )(y, y, mask=mask)
    x = x + y
    y = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_2")(x)
    y = Mlp(self.mlp_dim, act=self.act, dtype=self.dtype, name="mlp")(y)
    return x + y


class Transformer(nn.Module):
  """A stack of `ResidualBlock`s named resblocks_0 … resblocks_{layers-1}."""

  layers: int
  num_heads: int
  mlp_dim: int
  act: str = "quick_gelu"
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    block = nn.remat(ResidualBlock) if self.remat else ResidualBlock
    for i in range(self.layers):
      x = block(
        self.num_heads, self.mlp_dim, act=self.act, dtype=self.dtype, name=f"resblocks_{i}"
      )(x, mask)
    return x


class VisionTransformer(nn.Module):
  """CLIP ViT image tower.

  Returns `(features, embedding)`: the class token after ln_post `[B, width] float32`
  (linear-probe features) and its projection `[B, embed_dim] float32` (not normalised).
  """

  image_size: int
  patch_size: int
  width: int
  layers: int
  num_heads: int
  mlp_dim: int
  embed_dim: int
  act: str = "quick_gelu"
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`images` `[B, image_size, image_size, 3] float32`, CLIP-normalised."""
    expected = (self.image_size, self.image_size, 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
      raise ValueError(
        f"Image tower expects images of shape [B, {self.image_size}, "
        f"{self.image_size}, 3], got {tuple(images.shape)}."
      )
    grid = self.image_size // self.patch_size
    scale = self.width**-0.5
    x = nn.Conv(
      self.width,
      (self.patch_size, self.patch_size),
      strides=(self.patch_size, self.patch_size),
      padding="VALID",
      use_bias=False,
      dtype=self.dtype,
      name="conv1",
    )(images.astype(self.dtype))
    x = x.reshape(x.shape[0], grid * grid, self.width)
    cls = self.param("class_embedding", nn.initializers.normal(scale), (self.width,))
    posemb = self.param(
      "positional_embedding", nn.initializers.normal(scale), (grid * grid + 1, self.width)
    )
    cls = jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, self.width))
    x = jnp.concatenate([cls, x], axis=1) + posemb.astype(self.dtype)
    x = nn.LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name="ln_pre")(x)
    x = Transformer(
      self.layers,
      self.num_heads,
      self.mlp_dim,
      act=self.act,
      dtype=self.dtype,
      remat=self.remat,
      name="transformer",
    )(x)
    features = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, name="ln_post")(
      x[:, 0].astype(jnp.float32)
    )
    proj = self.param("proj", nn.initializers.normal(scale), (self.width, self.embed_dim))
    return features, features @ proj
