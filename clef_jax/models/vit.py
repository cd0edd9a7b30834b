"""CLIP image tower (ViT) and the pre-LN transformer shared with the text tower.

Parameter names follow OpenAI CLIP (conv1, class_embedding, positional_embedding, ln_pre,
transformer/resblocks_N/{ln_1, attn, ln_2, mlp/{c_fc, c_proj}}, ln_post, proj); attention
uses `flax.linen.MultiHeadDotProductAttention` (attn/{query,key,value,out}).
"""

from __future__ import annotations

import math
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


@jax.custom_vjp
def _matmul_f32_acc(x: jax.Array, w: jax.Array) -> jax.Array:
  """[M, K] @ [K, N] in the inputs' dtype, accumulated in fp32 (backward likewise)."""
  return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _matmul_fwd(x, w):
  return _matmul_f32_acc(x, w), (x, w)


def _matmul_bwd(res, g):
  x, w = res
  g = g.astype(x.dtype)
  # dx = g @ w.T as a dot contracting dim 1 of both operands: XLA:CPU keeps that one on the
  # bf16 matrix units. dw = x.T @ g contracts dim 0 of x, which XLA:CPU only runs in fp32
  # (it upcasts the operands itself; we do it explicitly).
  dx = jax.lax.dot_general(g, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
  dw = jnp.matmul(x.T.astype(jnp.float32), g.astype(jnp.float32))
  return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul_f32_acc.defvjp(_matmul_fwd, _matmul_bwd)


def dot_general_f32_acc(
  lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw
):
  """`lax.dot_general` for the towers' Dense layers: bf16 inputs are multiplied in bf16 and
  accumulated in fp32, in the forward *and* the backward pass; fp32 inputs as usual.

  Why: XLA:CPU runs a bf16 x bf16 -> f32 dot on the matrix units (AMX) but upcasts a
  bf16 -> bf16 dot, or a mixed f32 x bf16 one (what autodiff of a plain bf16 Dense produces for
  the weight gradient), to fp32 (measured on the 2-core Xeon: 2048^2 at 327 vs 77 GFLOP/s). A
  custom VJP keeps every matmul of the step bf16 x bf16 -> f32. Dense / DenseGeneral contractions
  (trailing lhs axes with leading rhs axes, no batch axes) go through one 2-D matmul; anything
  else is a plain dot_general with fp32 accumulation. (The attention einsums keep Flax's own:
  at 17-65 tokens they are a few percent of the FLOPs.)
  """
  del preferred_element_type
  (lc, rc), (lb, rb) = dimension_numbers
  dtype = jnp.result_type(lhs.dtype, rhs.dtype)
  if dtype == jnp.float32:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kw)
  n = len(lc)
  simple = (
    not lb
    and not rb
    and tuple(lc) == tuple(range(lhs.ndim - n, lhs.ndim))
    and tuple(rc) == tuple(range(n))
  )
  if not simple:
    out = jax.lax.dot_general(
      lhs, rhs, dimension_numbers, precision=precision, preferred_element_type=jnp.float32, **kw
    )
    return out.astype(dtype)
  k = math.prod(lhs.shape[lhs.ndim - n :])
  out = _matmul_f32_acc(lhs.reshape(-1, k).astype(dtype), rhs.reshape(k, -1).astype(dtype))
  return out.reshape(*lhs.shape[: lhs.ndim - n], *rhs.shape[n:])


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
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, dot_general=dot_general_f32_acc, name="c_fc")(x)
    x = activation(self.act)(x)
    return nn.Dense(width, dtype=self.dtype, dot_general=dot_general_f32_acc, name="c_proj")(x)


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
      qkv_dot_general=dot_general_f32_acc,
      out_dot_general=dot_general_f32_acc,
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
  def __call__(
    self,
    images: jax.Array,
    mask: jax.Array | None = None,
    mask_token: jax.Array | None = None,
    return_tokens: bool = False,
  ) -> tuple[jax.Array, ...]:
    """`images` `[B, image_size, image_size, 3] float32`, CLIP-normalised.

    Masked image modelling (the foundation's `mim_weight`): `mask` `[B, grid**2] bool` replaces
    those patch embeddings by `mask_token` `[width]` (a parameter of the objective, not of the
    tower, so exported towers stay CLIP-shaped) before the position embeddings are added, and
    `return_tokens=True` also returns the last block's patch tokens `[B, grid**2, width]`.
    """
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
    if mask is not None:
      if mask_token is None or mask.shape != x.shape[:2]:
        raise ValueError(
          f"mask: expected a [B, {grid * grid}] mask and a mask_token, got a mask of shape "
          f"{tuple(mask.shape)} and {'a' if mask_token is not None else 'no'} mask_token"
        )
      x = jnp.where(mask[..., None], mask_token.astype(self.dtype), x)
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
    if return_tokens:
      return features, features @ proj, x[:, 1:]
    return features, features @ proj
