"""CLIP text tower: causal pre-LN transformer pooled at the end-of-text token.

Parameter names follow OpenAI CLIP: token_embedding, positional_embedding,
transformer/resblocks_N/..., ln_final, text_projection.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clef_jax.models import vit


def eot_positions(tokens: jax.Array, pooling: str, eos_token_id: int) -> jax.Array:
  """Index of the pooled (end-of-text) token of each sequence.

  Args:
    tokens: `[N, L] int32` token ids.
    pooling: 'argmax' → position of the largest id (OpenAI CLIP, where EOT has the
      largest id); 'eos_id' → first position whose id == eos_token_id (HF CLIP;
      0 when a row has no eos, as HF).
    eos_token_id: end-of-text id, used by 'eos_id'.

  Returns:
    `[N] int32` positions.
  """
  if pooling == "argmax":
    return jnp.argmax(tokens, axis=-1).astype(jnp.int32)
  if pooling == "eos_id":
    return jnp.argmax(tokens == eos_token_id, axis=-1).astype(jnp.int32)
  raise ValueError(f"Unknown text_pooling {pooling!r}; known: ['argmax', 'eos_id'].")


class TextTransformer(nn.Module):
  """CLIP text tower.

  Returns `(features, embedding)`: the EOT token after ln_final `[N, width] float32`
  and its projection `[N, embed_dim] float32` (not normalised).
  """

  vocab_size: int
  context_length: int
  width: int
  layers: int
  num_heads: int
  mlp_dim: int
  embed_dim: int
  act: str = "quick_gelu"
  pooling: str = "argmax"
  eos_token_id: int = 49407
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`tokens` `[N, L] int` with L <= context_length (positions 0..L-1 are used)."""
    if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
      raise ValueError(
        f"Text tower expects tokens of shape [N, L<={self.context_length}], "
        f"got {tuple(tokens.shape)}."
      )
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"Text tower expects integer tokens, got {tokens.dtype}.")
    length = tokens.shape[1]
    x = nn.Embed(
      self.vocab_size,
      self.width,
      embedding_init=nn.initializers.normal(0.02),
      dtype=self.dtype,
      name="token_embedding",
    )(tokens)
    posemb = self.param(
      "positional_embedding", nn.initializers.normal(0.01), (self.context_length, self.width)
    )
    x = x + posemb[:length].astype(self.dtype)
    mask = nn.make_causal_mask(tokens)  # [N, 1, L, L]
    x = vit.Transformer(
      self.layers,
      self.num_heads,
      self.mlp_dim,
      act=self.act,
      dtype=self.dtype,
      remat=self.remat,
      name="transformer",
    )(x, mask)
    # LayerNorm is per token, so pooling first then ln_final (in float32) equals
    # CLIP's ln_final-then-pool.
    idx = eot_positions(tokens, self.pooling, self.eos_token_id)
    pooled = jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
    features = nn.LayerNorm(epsilon=vit.LN_EPS, dtype=jnp.float32, name="ln_final")(
      pooled.astype(jnp.float32)
    )
    proj = self.param(
      "text_projection", nn.initializers.normal(self.width**-0.5), (self.width, self.embed_dim)
    )
    return features, features @ proj
