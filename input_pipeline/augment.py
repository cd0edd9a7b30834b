"""Image augmentations as grain transforms (numpy + Pillow; host side, uint8 in and out).

Training: random resized crop (torchvision's algorithm) → horizontal flip → colour jitter
(brightness / contrast / saturation in random order, applied with probability `jitter_prob`) →
random greyscale; the crop is resized straight to `image_size` in one Pillow call. Evaluation:
a centred square crop (side = `crop_fraction` × the shorter side) resized to `image_size`.

Outputs stay uint8; normalisation to the CLIP mean/std happens on device. In two-views mode the
train transform returns two independent augmentations stacked as `image` uint8 [2, S, S, 3].

Everything random draws from the `np.random.Generator` grain hands to `RandomMap.random_map`, so a
pipeline is deterministic given its seed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import grain
import numpy as np
from PIL import Image, ImageEnhance

_INTERPOLATIONS = {
  "nearest": Image.Resampling.NEAREST,
  "bilinear": Image.Resampling.BILINEAR,
  "bicubic": Image.Resampling.BICUBIC,
  "lanczos": Image.Resampling.LANCZOS,
}


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Training augmentation settings (build from a dict / ConfigDict with `from_config`).

  Attributes:
    crop_scale: (min, max) fraction of the image area kept by the random resized crop.
    crop_ratio: (min, max) aspect ratio (width / height) of the crop, sampled log-uniformly.
    flip_prob: probability of a horizontal flip.
    jitter_prob: probability of applying colour jitter at all (SimCLR's RandomApply).
    brightness: brightness factor drawn from [max(0, 1 - b), 1 + b] (0 disables).
    contrast: contrast factor drawn from [max(0, 1 - c), 1 + c] (0 disables).
    saturation: saturation factor drawn from [max(0, 1 - s), 1 + s] (0 disables).
    greyscale_prob: probability of converting to greyscale (kept as 3 equal channels).
    interpolation: resampling filter for the final resize: nearest|bilinear|bicubic|lanczos.
  """

  crop_scale: tuple[float, float] = (0.6, 1.0)
  crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
  flip_prob: float = 0.5
  jitter_prob: float = 0.8
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  greyscale_prob: float = 0.2
  interpolation: str = "bilinear"

  def __post_init__(self):
    for name in ("crop_scale", "crop_ratio"):
      value = getattr(self, name)
      try:
        lo, hi = (float(v) for v in value)
      except (TypeError, ValueError):
        raise ValueError(f"augment.{name} must be a pair (min, max), got {value!r}") from None
      if not 0 < lo <= hi:
        raise ValueError(f"augment.{name} must satisfy 0 < min <= max, got {value!r}")
      if name == "crop_scale" and hi > 1:
        raise ValueError(f"augment.crop_scale max must be <= 1, got {value!r}")
      object.__setattr__(self, name, (lo, hi))
    for name in ("flip_prob", "jitter_prob", "greyscale_prob"):
      p = getattr(self, name)
      if not 0 <= p <= 1:
        raise ValueError(f"augment.{name} must be a probability in [0, 1], got {p!r}")
    for name in ("brightness", "contrast", "saturation"):
      if getattr(self, name) < 0:
        raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)!r}")
    if self.interpolation not in _INTERPOLATIONS:
      raise ValueError(
        f"augment.interpolation must be one of {sorted(_INTERPOLATIONS)}, "
        f"got {self.interpolation!r}"
      )

  @classmethod
  def from_config(cls, config: "AugmentConfig | Mapping[str, Any] | Any") -> "AugmentConfig":
    """Builds from an `AugmentConfig`, a dict or a ConfigDict; unknown keys are errors."""
    if isinstance(config, cls):
      return config
    if hasattr(config, "to_dict"):
      config = config.to_dict()
    if not isinstance(config, Mapping):
      raise TypeError(
        f"augment config must be a dict/ConfigDict/AugmentConfig, got {type(config).__name__}"
      )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
      raise KeyError(f"unknown augment config key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def _check_image(image: np.ndarray) -> None:
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")


def random_resized_crop_box(
  height: int,
  width: int,
  rng: np.random.Generator,
  scale: tuple[float, float],
  ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
  """Samples a crop box (left, top, right, bottom), as torchvision's RandomResizedCrop.

  Up to 10 tries of (area fraction ~ U(scale), log aspect ratio ~ U(log ratio)); if none fits,
  falls back to the largest centred crop whose ratio is clamped to `ratio`.
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, left + w, top + h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return left, top, left + w, top + h


def _jitter(img: Image.Image, rng: np.random.Generator, config: AugmentConfig) -> Image.Image:
  ops = [
    (ImageEnhance.Brightness, config.brightness),
    (ImageEnhance.Contrast, config.contrast),
    (ImageEnhance.Color, config.saturation),
  ]
  for i in rng.permutation(len(ops)):
    enhancer, strength = ops[i]
    if strength > 0:
      factor = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
      img = enhancer(img).enhance(factor)
  return img


def augment_image(
  image: np.ndarray, rng: np.random.Generator, config: AugmentConfig, image_size: int
) -> np.ndarray:
  """One random training augmentation.

  Args:
    image: uint8 [H, W, 3].
    rng: random generator (all randomness comes from it).
    config: augmentation settings.
    image_size: output side S.

  Returns:
    uint8 [S, S, 3].
  """
  _check_image(image)
  height, width = image.shape[:2]
  box = random_resized_crop_box(height, width, rng, config.crop_scale, config.crop_ratio)
  img = Image.fromarray(image).resize(
    (image_size, image_size), _INTERPOLATIONS[config.interpolation], box=box
  )
  if rng.random() < config.flip_prob:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  if rng.random() < config.jitter_prob:
    img = _jitter(img, rng, config)
  if rng.random() < config.greyscale_prob:
    img = img.convert("L").convert("RGB")
  return np.asarray(img, dtype=np.uint8)


def eval_image(
  image: np.ndarray, image_size: int, crop_fraction: float = 1.0, interpolation: str = "bicubic"
) -> np.ndarray:
  """Deterministic eval transform: centred square crop of the shorter side, resized.

  Args:
    image: uint8 [H, W, 3].
    image_size: output side S.
    crop_fraction: side of the centred crop as a fraction of the shorter side (0, 1].
    interpolation: nearest|bilinear|bicubic|lanczos.

  Returns:
    uint8 [S, S, 3].
  """
  _check_image(image)
  if not 0 < crop_fraction <= 1:
    raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
  if interpolation not in _INTERPOLATIONS:
    raise ValueError(
      f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}"
    )
  height, width = image.shape[:2]
  side = min(height, width) * crop_fraction
  top, left = (height - side) / 2, (width - side) / 2
  if (height, width) == (image_size, image_size) and crop_fraction == 1:
    return np.ascontiguousarray(image)
  img = Image.fromarray(image).resize(
    (image_size, image_size),
    _INTERPOLATIONS[interpolation],
    box=(left, top, left + side, top + side),
  )
  return np.asarray(img, dtype=np.uint8)


class TrainAugment(grain.transforms.RandomMap):
  """Replaces `element[key]` (uint8 [H, W, 3]) by its augmentation.

  Output `key`: uint8 [S, S, 3], or [2, S, S, 3] with `two_views` (independent draws). With
  `config=None` no random augmentation is applied: the eval transform (views then identical).
  """

  def __init__(
    self,
    config: AugmentConfig | Mapping[str, Any] | None,
    image_size: int,
    *,
    two_views: bool = False,
    key: str = "image",
  ):
    if image_size <= 0:
      raise ValueError(f"image_size must be positive, got {image_size!r}")
    self.config = None if config is None else AugmentConfig.from_config(config)
    self.image_size = int(image_size)
    self.two_views = bool(two_views)
    self.key = key

  def _one(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if self.config is None:
      return eval_image(image, self.image_size)
    return augment_image(image, rng, self.config, self.image_size)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = element[self.key]
    out = dict(element)
    if self.two_views:
      out[self.key] = np.stack([self._one(image, rng), self._one(image, rng)])
    else:
      out[self.key] = self._one(image, rng)
    return out


class EvalTransform(grain.transforms.Map):
  """Replaces `element[key]` (uint8 [H, W, 3]) by `eval_image(...)`: uint8 [S, S, 3]."""

  def __init__(
    self,
    image_size: int,
    *,
    crop_fraction: float = 1.0,
    interpolation: str = "bicubic",
    key: str = "image",
  ):
    if image_size <= 0:
      raise ValueError(f"image_size must be positive, got {image_size!r}")
    self.image_size = int(image_size)
    self.crop_fraction = float(crop_fraction)
    self.interpolation = interpolation
    self.key = key

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    out = dict(element)
    out[self.key] = eval_image(
      element[self.key], self.image_size, self.crop_fraction, self.interpolation
    )
    return out
