"""Image augmentations as grain transforms (numpy + Pillow; host side, uint8 in and out).

Training: random resized crop (torchvision's algorithm) → horizontal flip → colour jitter
(brightness / contrast / saturation in random order, applied with probability `jitter_prob`) →
random greyscale; the crop is resized straight to `image_size` in one Pillow call. Evaluation:
a centred square crop (side = `crop_fraction` × the shorter side) resized to `image_size`.

Outputs stay uint8; normalisation to the CLIP mean/std happens on device. In two-views mode the
train transform returns two independent augmentations stacked as `image` uint8 [2, S, S, 3].

With `colour_on_device` the host stops after the crop and the flip: it draws the colour jitter
and greyscale exactly as it would apply them (same random stream, so the same seed gives the
same images) and hands them on as `colour` float32 [COLOUR_PARAMS] per view (layout below);
`clef_jax.augment.apply_colour` then applies them to the batch inside the jitted train step,
Pillow's arithmetic reproduced in integers and float32. The host's augmentation time falls from
0.46 to 0.26 ms per example (two 64 px views of a 112 px face, one core; benchmarks/host_cost.py),
which matters on small CPUs where the input pipeline and the step share the cores.

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
    colour_on_device: leave the colour jitter and greyscale to the device: the transform emits
      `colour` float32 [COLOUR_PARAMS] per view next to the cropped, flipped `image`, and the
      trainer applies it (`clef_jax.augment.apply_colour`).
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
  colour_on_device: bool = False

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


# The colour draws of one view, as `colour_on_device` hands them on: float32 [COLOUR_PARAMS]
#   [0:3]  brightness, contrast and saturation factors (1 = unchanged; 1 when no jitter),
#   [3:6]  the order the three run in (op indices 0, 1, 2: a permutation),
#   [6]    1 if the view is turned grey afterwards, else 0.
COLOUR_PARAMS = 7
_IDENTITY_COLOUR = np.array([1, 1, 1, 0, 1, 2, 0], np.float32)
_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


def draw_colour(rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
  """The colour jitter and greyscale of one view: float32 [COLOUR_PARAMS] (layout above).

  Draws from `rng` in the order the host path always has (apply?, order, one factor per enabled
  op in that order, greyscale?), so host and device augmentations agree draw for draw.
  """
  p = _IDENTITY_COLOUR.copy()
  if rng.random() < config.jitter_prob:
    order = rng.permutation(3)
    p[3:6] = order
    strengths = (config.brightness, config.contrast, config.saturation)
    for i in order:
      if strengths[i] > 0:
        p[i] = rng.uniform(max(0.0, 1.0 - strengths[i]), 1.0 + strengths[i])
  if rng.random() < config.greyscale_prob:
    p[6] = 1.0
  return p


def apply_colour(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
  """Pillow's colour jitter then greyscale, as drawn by `draw_colour`: uint8 [H, W, 3]."""
  img = Image.fromarray(image)
  for i in colour[3:6].astype(int):
    if colour[i] != 1.0:  # enhance(1) is the identity
      img = _ENHANCERS[i](img).enhance(float(colour[i]))
  if colour[6]:
    img = img.convert("L").convert("RGB")
  return np.asarray(img, dtype=np.uint8)


def augment_image(
  image: np.ndarray, rng: np.random.Generator, config: AugmentConfig, image_size: int
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """One random training augmentation.

  Args:
    image: uint8 [H, W, 3].
    rng: random generator (all randomness comes from it).
    config: augmentation settings.
    image_size: output side S.

  Returns:
    uint8 [S, S, 3]; with `config.colour_on_device`, the cropped and flipped image and its
    colour draws, (uint8 [S, S, 3], float32 [COLOUR_PARAMS]).
  """
  _check_image(image)
  height, width = image.shape[:2]
  box = random_resized_crop_box(height, width, rng, config.crop_scale, config.crop_ratio)
  img = Image.fromarray(image).resize(
    (image_size, image_size), _INTERPOLATIONS[config.interpolation], box=box
  )
  if rng.random() < config.flip_prob:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  colour = draw_colour(rng, config)
  out = np.asarray(img, dtype=np.uint8)
  if config.colour_on_device:
    return out, colour
  return apply_colour(out, colour)


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
  With `config.colour_on_device`, also `colour`: float32 [COLOUR_PARAMS] (or [2, COLOUR_PARAMS]),
  the colour draws still to be applied (`clef_jax.augment.apply_colour`).
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

  def _one(self, image: np.ndarray, rng: np.random.Generator):
    if self.config is None:
      return eval_image(image, self.image_size)
    return augment_image(image, rng, self.config, self.image_size)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = element[self.key]
    out = dict(element)
    views = [self._one(image, rng) for _ in range(2 if self.two_views else 1)]
    if self.config is not None and self.config.colour_on_device:
      views, colours = zip(*views)
      out["colour"] = np.stack(colours) if self.two_views else colours[0]
    out[self.key] = np.stack(views) if self.two_views else views[0]
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
