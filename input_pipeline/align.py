"""Face alignment: landmarks -> a similarity transform onto a fixed template -> an aligned crop.

The practice of the AU codebases (JAA-Net, ME-GraphAU, FMAE): the two eye centres and the mouth
are mapped by a least-squares similarity (rotation, uniform scale, translation; no shear) onto
fixed positions of a square crop, so every face has the same size, position and roll.

Template (`template(margin)`, fractions of the crop side S, image x to the right, y down):

  margin 0:  eye centres (0.30, 0.35), (0.70, 0.35); mouth centre (0.50, 0.80)
  margin m:  every point p -> 0.5 + (p - 0.5) / (1 + 2 m)   (m of the face box added each side)

The default margin 0.2 puts the eyes at (0.357, 0.393), (0.643, 0.393) and the mouth at
(0.5, 0.714): forehead to chin inside the crop, as the AU models' 'aligned face' crops are.

Landmark schemes (`SCHEMES`): which points are the eyes and the mouth corners in a dataset's
landmark layout, and where its coordinates start:
  bp4d49   BP4D / BP4D+ 2DFeatures (49 points: brows 0-9, nose 10-18, eyes 19-24 and 25-30,
           mouth 31-48 with corners 31 and 37); MATLAB pixel coordinates (1-based)
  disfa66  DISFA's 66-point AAM (iBUG 68 without the inner mouth corners): eyes 36-41, 42-47,
           mouth corners 48 and 54; MATLAB, 1-based
  ibug68   the iBUG/300-W 68 points (AffectNet's facial_landmarks): same indices, 0-based
  five     eyes, nose, mouth corners (a detector's keypoints): 0-based
Coordinates are pixel centres: 0-based (x, y) = (column, row); 1-based ones are shifted by one.

The detector (`Detector`) is MTCNN from the `mtcnn` package (1.0, TensorFlow, Zhang et al. 2016;
its three small networks' weights ship inside the package, so it runs offline). It gives a box
and the five keypoints, aligned with the same template as dataset landmarks.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

DEFAULT_MARGIN = 0.2
# Template at margin 0 (fractions of the crop side): left eye, right eye, mouth centre (image
# left/right: the subject's right eye is the image's left one).
_TEMPLATE0 = np.array([[0.30, 0.35], [0.70, 0.35], [0.50, 0.80]], np.float64)


@dataclasses.dataclass(frozen=True)
class Scheme:
  """Which landmark indices are the image-left eye, the image-right eye and the mouth corners."""

  name: str
  num_points: int
  left_eye: tuple[int, ...]
  right_eye: tuple[int, ...]
  mouth: tuple[int, ...]  # averaged into the mouth centre
  origin: int = 0  # 1 for MATLAB's 1-based pixel coordinates


SCHEMES: dict[str, Scheme] = {
  s.name: s
  for s in (
    Scheme("bp4d49", 49, tuple(range(19, 25)), tuple(range(25, 31)), (31, 37), origin=1),
    Scheme("disfa66", 66, tuple(range(36, 42)), tuple(range(42, 48)), (48, 54), origin=1),
    Scheme("ibug68", 68, tuple(range(36, 42)), tuple(range(42, 48)), (48, 54)),
    Scheme("five", 5, (0,), (1,), (3, 4)),
  )
}


def template(margin: float = DEFAULT_MARGIN) -> np.ndarray:
  """float64 [3, 2]: eye centres and mouth centre as fractions of the crop side."""
  if not 0.0 <= margin <= 2.0:
    raise ValueError(f"alignment margin must be in [0, 2], got {margin}")
  return 0.5 + (_TEMPLATE0 - 0.5) / (1.0 + 2.0 * margin)


def key_points(landmarks: np.ndarray, scheme: str | Scheme) -> np.ndarray:
  """[K, 2] landmarks of `scheme` -> float64 [3, 2] (left eye, right eye, mouth), 0-based px."""
  s = SCHEMES[scheme] if isinstance(scheme, str) else scheme
  pts = np.asarray(landmarks, np.float64)
  if pts.shape != (s.num_points, 2):
    raise ValueError(f"expected {s.num_points} landmarks of scheme {s.name}, got {pts.shape}")
  if not np.all(np.isfinite(pts)):
    raise ValueError("landmarks hold NaN or infinite values")
  pts = pts - s.origin
  return np.stack([pts[list(ix)].mean(0) for ix in (s.left_eye, s.right_eye, s.mouth)])


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Least-squares similarity (Umeyama, no reflection) taking src [N, 2] onto dst [N, 2].

  Returns float64 [2, 3] M with dst ≈ M[:, :2] @ src + M[:, 2].
  """
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  zs = src[:, 0] + 1j * src[:, 1]
  zd = dst[:, 0] + 1j * dst[:, 1]
  ms, md = zs.mean(), zd.mean()
  cs, cd = zs - ms, zd - md
  denom = float(np.sum(np.abs(cs) ** 2))
  if denom < 1e-12:
    raise ValueError("landmarks collapse to one point; no transform is defined")
  a = np.sum(np.conj(cs) * cd) / denom  # scale * e^{i angle}
  t = md - a * ms
  return np.array([[a.real, -a.imag, t.real], [a.imag, a.real, t.imag]])


def alignment_matrix(
  landmarks: np.ndarray, scheme: str | Scheme, size: int, margin: float = DEFAULT_MARGIN
) -> np.ndarray:
  """float64 [2, 3]: source pixel (0-based centres) -> pixel of the aligned S x S crop."""
  return similarity(key_points(landmarks, scheme), template(margin) * size - 0.5)


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, 3] -> uint8 [S, S, 3]: output pixel q shows source pixel M^-1 q (bicubic).

  A face much larger than the crop is first reduced by an integer box filter (no aliasing on a
  1392 x 1040 BP4D frame); outside the frame is black.
  """
  m = np.asarray(matrix, np.float64)
  scale = math.hypot(m[0, 0], m[1, 0])
  im = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
  factor = max(1, int(1.0 / scale)) if scale > 0 else 1
  if factor > 1:
    im = im.reduce(factor)
    # A reduced pixel k covers source pixels [k f, (k + 1) f): its centre is k f + (f - 1) / 2.
    m = m @ np.array([[factor, 0, (factor - 1) / 2], [0, factor, (factor - 1) / 2], [0, 0, 1]])
  # PIL maps output to input in continuous coordinates (pixel centres at +0.5).
  full = np.vstack([m, [0.0, 0.0, 1.0]])
  shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
  inv = shift @ np.linalg.inv(full) @ np.linalg.inv(shift)
  out = im.transform(
    (size, size), Image.Transform.AFFINE, tuple(inv[:2].ravel()), Image.Resampling.BICUBIC
  )
  return np.asarray(out, np.uint8)


def align(
  image: np.ndarray,
  landmarks: np.ndarray,
  scheme: str | Scheme,
  size: int,
  margin: float = DEFAULT_MARGIN,
) -> np.ndarray:
  """uint8 [H, W, 3] + [K, 2] landmarks -> the aligned uint8 [S, S, 3] crop."""
  return warp(image, alignment_matrix(landmarks, scheme, size, margin), size)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Applies a [2, 3] affine matrix to float [N, 2] points."""
  p = np.asarray(points, np.float64)
  return p @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


# ----------------------------------------------------------------------------------------------
# Detector.
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Face:
  """One detected face: box (x, y, w, h) in pixels, score, five keypoints float [5, 2]."""

  box: tuple[int, int, int, int]
  score: float
  keypoints: np.ndarray


class Detector:
  """MTCNN (the `mtcnn` package, weights inside it; TensorFlow on the CPU).

  Faces smaller than `min_face_px` or scored below `min_score` are not reported. Images are
  upscaled to at least `min_side` px before detection (MTCNN's smallest window is 12 px at its
  finest scale; small crops such as FER2013's 48 px faces need it) and the results mapped back.
  """

  KEYS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

  def __init__(self, *, min_score: float = 0.8, min_face_px: int = 20, min_side: int = 160):
    try:
      from mtcnn import MTCNN  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
        "face detection needs the mtcnn package (pip install 'mtcnn==1.0.0' lz4)"
      ) from e
    self._mtcnn = MTCNN(device="CPU:0")
    self.min_score, self.min_face_px, self.min_side = min_score, min_face_px, min_side

  def __call__(self, image: np.ndarray) -> list[Face]:
    """uint8 [H, W, 3] -> faces, the most confident first."""
    img = np.asarray(image, np.uint8)
    h, w = img.shape[:2]
    up = max(1.0, self.min_side / min(h, w))
    if up > 1.0:
      img = np.asarray(Image.fromarray(img).resize((round(w * up), round(h * up)), Image.BICUBIC))
    faces = []
    for r in self._mtcnn.detect_faces(img) or []:
      x, y, bw, bh = (v / up for v in r["box"])
      if r["confidence"] < self.min_score or min(bw, bh) < self.min_face_px:
        continue
      kp = np.array([r["keypoints"][k] for k in self.KEYS], np.float64)
      # MTCNN's keypoints are in scaled continuous pixels; back to 0-based original centres.
      kp = (kp + 0.5) / up - 0.5
      faces.append(Face((round(x), round(y), round(bw), round(bh)), float(r["confidence"]), kp))
    return sorted(faces, key=lambda f: -f.score)

  def align(
    self, image: np.ndarray, size: int, margin: float = DEFAULT_MARGIN
  ) -> tuple[np.ndarray, Face] | None:
    """The aligned crop of the most confident face and that face, or None if none is found."""
    faces = self(image)
    if not faces:
      return None
    return align(image, faces[0].keypoints, "five", size, margin), faces[0]
