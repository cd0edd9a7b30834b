"""Named CLIP-style model variants and the model config they produce.

Pure Python (ml_collections + math only) so configs can import it without JAX.

A model config is an `ml_collections.ConfigDict` with the fields of `_DEFAULTS`:
  variant          name the config was built from ('B/16', ...), informational.
  image_size       input side in pixels; any multiple of patch_size.
  patch_size       ViT patch side in pixels.
  vision_width / vision_layers / vision_heads   image tower transformer.
  mlp_ratio        MLP hidden size = int(width * mlp_ratio), both towers.
  text_width / text_layers / text_heads         text tower transformer.
  vocab_size       token vocabulary size of the text tower.
  context_length   number of learned text positions (max tokens per text).
  embed_dim        shared embedding size (both projections).
  act              'quick_gelu' (OpenAI CLIP) or 'gelu' (exact, erf).
  text_pooling     'argmax': pool at argmax(token id) (OpenAI: EOT has the largest id);
                   'eos_id': pool at the first position whose token == eos_token_id (HF).
  eos_token_id     end-of-text token id (used by 'eos_id' pooling).
  dtype            compute dtype 'float32' | 'bfloat16' | 'auto' (bf16 where the backend has
                   fast bf16 matmuls, see precision.py); params are always float32 and
                   the output embeddings are float32.
  remat            rematerialise (nn.remat) every residual block.
  logit_scale_init initial value of the learnable log temperature (log(1/0.07)).
  logit_scale_max  the forward uses exp(min(logit_scale, logit_scale_max)) (log(100)).
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

ACTIVATIONS = ("quick_gelu", "gelu")
TEXT_POOLINGS = ("argmax", "eos_id")
DTYPES = ("float32", "bfloat16", "auto")  # "auto": see clef_jax/models/precision.py

# OpenAI CLIP defaults shared by every named variant except 'tiny'.
_DEFAULTS: dict[str, Any] = dict(
  variant="B/16",
  image_size=224,
  patch_size=16,
  vision_width=768,
  vision_layers=12,
  vision_heads=12,
  mlp_ratio=4.0,
  text_width=512,
  text_layers=12,
  text_heads=8,
  vocab_size=49408,
  context_length=77,
  embed_dim=512,
  act="quick_gelu",
  text_pooling="argmax",
  eos_token_id=49407,
  dtype="float32",
  remat=False,
  logit_scale_init=math.log(1 / 0.07),
  logit_scale_max=math.log(100.0),
)

# Architecture of each named variant (overrides of _DEFAULTS).
VARIANTS: dict[str, dict[str, Any]] = {
  "tiny": dict(
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=2,
    vision_heads=2,
    text_width=32,
    text_layers=2,
    text_heads=2,
    vocab_size=1000,
    context_length=16,
    eos_token_id=999,
    embed_dim=32,
  ),
  "Ti/16": dict(
    patch_size=16,
    vision_width=192,
    vision_layers=12,
    vision_heads=3,
    text_width=192,
    text_layers=12,
    text_heads=3,
    embed_dim=192,
  ),
  "S/16": dict(
    patch_size=16,
    vision_width=384,
    vision_layers=12,
    vision_heads=6,
    text_width=384,
    text_layers=12,
    text_heads=6,
    embed_dim=384,
  ),
  "B/16": dict(
    patch_size=16,
    vision_width=768,
    vision_layers=12,
    vision_heads=12,
    text_width=512,
    text_layers=12,
    text_heads=8,
    embed_dim=512,
  ),
  "B/32": dict(
    patch_size=32,
    vision_width=768,
    vision_layers=12,
    vision_heads=12,
    text_width=512,
    text_layers=12,
    text_heads=8,
    embed_dim=512,
  ),
  "L/14": dict(
    patch_size=14,
    vision_width=1024,
    vision_layers=24,
    vision_heads=16,
    text_width=768,
    text_layers=12,
    text_heads=12,
    embed_dim=768,
  ),
}

FIELDS = tuple(_DEFAULTS)


def model_config(variant: str = "B/16", **overrides: Any) -> ml_collections.ConfigDict:
  """Returns the model config of a named variant, with `overrides` applied.

  Args:
    variant: one of `VARIANTS` ('tiny', 'Ti/16', 'S/16', 'B/16', 'B/32', 'L/14').
    **overrides: any config field (see module docstring), e.g. image_size=112.

  Raises:
    ValueError: unknown variant, unknown override key, or an inconsistent config.
  """
  if variant not in VARIANTS:
    raise ValueError(f"Unknown model variant {variant!r}; known variants: {sorted(VARIANTS)}.")
  unknown = sorted(set(overrides) - set(FIELDS))
  if unknown:
    raise ValueError(f"Unknown model config key(s) {unknown}; known keys: {list(FIELDS)}.")
  values = {**_DEFAULTS, **VARIANTS[variant], "variant": variant, **overrides}
  config = ml_collections.ConfigDict(values)
  check_config(config)
  return config


def check_config(config: Any) -> None:
  """Raises ValueError naming the field when a model config is inconsistent."""
  missing = [k for k in FIELDS if k not in config]
  if missing:
    raise ValueError(f"Model config lacks field(s) {missing}.")
  unknown = sorted(set(config.keys()) - set(FIELDS))
  if unknown:
    raise ValueError(f"Unknown model config key(s) {unknown}; known keys: {list(FIELDS)}.")
  for key in (
    "image_size",
    "patch_size",
    "vision_width",
    "vision_layers",
    "vision_heads",
    "text_width",
    "text_layers",
    "text_heads",
    "vocab_size",
    "context_length",
    "embed_dim",
  ):
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"Model config {key}={value!r}: expected a positive int.")
  if config.image_size % config.patch_size:
    raise ValueError(
      f"Model config image_size={config.image_size} is not a multiple of "
      f"patch_size={config.patch_size}."
    )
  for tower in ("vision", "text"):
    width, heads = config[f"{tower}_width"], config[f"{tower}_heads"]
    if width % heads:
      raise ValueError(
        f"Model config {tower}_width={width} is not divisible by {tower}_heads={heads}."
      )
  if not config.mlp_ratio > 0:
    raise ValueError(f"Model config mlp_ratio={config.mlp_ratio!r}: expected > 0.")
  choices = {"act": ACTIVATIONS, "text_pooling": TEXT_POOLINGS, "dtype": DTYPES}
  for key, allowed in choices.items():
    if config[key] not in allowed:
      raise ValueError(f"Model config {key}={config[key]!r}: expected one of {list(allowed)}.")
  if not 0 <= config.eos_token_id < config.vocab_size:
    raise ValueError(
      f"Model config eos_token_id={config.eos_token_id} is outside the "
      f"vocabulary [0, {config.vocab_size})."
    )
  if not isinstance(config.remat, bool):
    raise ValueError(f"Model config remat={config.remat!r}: expected a bool.")


def mlp_dim(config: Any, width: int) -> int:
  """MLP hidden size for a tower of the given width."""
  return int(round(width * config.mlp_ratio))
