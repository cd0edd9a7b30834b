"""CLIP-style two-tower models (Flax linen) and their named variants."""

from clef_jax.models import precision
from clef_jax.models.clip import build
from clef_jax.models.clip import CLIP
from clef_jax.models.clip import init
from clef_jax.models.clip import logit_scale
from clef_jax.models.clip import l2_normalize
from clef_jax.models.variants import check_config
from clef_jax.models.variants import model_config
from clef_jax.models.variants import VARIANTS
from clef_jax.models.vit import CLIP_MEAN
from clef_jax.models.vit import CLIP_STD
from clef_jax.models.vit import normalize_images

__all__ = [
  "build",
  "precision",
  "CLIP",
  "init",
  "logit_scale",
  "l2_normalize",
  "check_config",
  "model_config",
  "VARIANTS",
  "CLIP_MEAN",
  "CLIP_STD",
  "normalize_images",
]
