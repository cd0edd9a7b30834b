"""AffectNet (manually annotated part; 7 or 8 expression classes).

Two layouts, detected automatically (root = the folder holding them):
  csv   `Manually_Annotated_file_lists/{training,validation}.csv` with columns
        `subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks,
        expression, valence, arousal`; images under `Manually_Annotated_Images/`.
  npy   `train_set/images/<i>.jpg` + `train_set/annotations/<i>_exp.npy` (and `val_set/`).
The validation set is the test set: split 'test' (alias 'validation') reads validation.csv or
val_set. Codes 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt map
to the canonical expressions; 8 none, 9 uncertain, 10 non-face are dropped (counted), and so is 7
with `num_classes=7`. Any other code is a DatasetError (path:line).

Landmarks (`landmarks=True`, for the builders' face alignment): the csv layout's
`facial_landmarks` column ('x1;y1;...', 68 iBUG points in the full image), or the npy layout's
`<i>_lnd.npy` (68 x 2, or 136 values, in the crop). Aligned images are not box-cropped first.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator

import numpy as np

from input_pipeline import schema
from input_pipeline.readers import common
from input_pipeline.readers import landmarks as landmarks_lib

CLASSES = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
TO_CANONICAL = tuple(schema.expression_index(c) for c in CLASSES)
SPLITS = ("train", "test")
DROPPED = {8: "code 8 (none)", 9: "code 9 (uncertain)", 10: "code 10 (non-face)"}
SKIP_CONTEMPT = "code 7 (contempt) dropped by the 7-class protocol"
SKIP_BOX = "face box empty or outside the image"
CSV_FILES = {"train": "training.csv", "test": "validation.csv"}
NPY_DIRS = {"train": "train_set", "test": "val_set"}
CSV_COLUMNS = ("subDirectory_filePath", "expression")
BOX_COLUMNS = ("face_x", "face_y", "face_width", "face_height")
LANDMARK_COLUMN = "facial_landmarks"
LANDMARK_SCHEME = "ibug68"


def layout(root: str | os.PathLike[str]) -> str:
  """'csv' or 'npy'; DatasetError naming root if neither layout is there."""
  root = os.fspath(root)
  if os.path.isdir(os.path.join(root, "Manually_Annotated_file_lists")):
    return "csv"
  if any(os.path.isdir(os.path.join(root, d)) for d in NPY_DIRS.values()):
    return "npy"
  raise common.DatasetError(
    root,
    "no AffectNet data: expected Manually_Annotated_file_lists/ + "
    "Manually_Annotated_Images/, or train_set/ and val_set/ with images/ and annotations/",
  )


def _label(
  code: int, num_classes: int, path: str, line: int | None, where: str, skips: common.Skips
) -> int | None:
  """Canonical expression for an AffectNet code, None if dropped (counted)."""
  if code in DROPPED:
    skips.add(DROPPED[code], where)
    return None
  if not 0 <= code <= 7:
    raise common.DatasetError(path, f"expression code {code} out of range 0..10", line)
  if code == 7 and num_classes == 7:
    skips.add(SKIP_CONTEMPT, where)
    return None
  return TO_CANONICAL[code]


def crop_box(image: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray | None:
  """image[y:y+h, x:x+w] clipped to the image; None if nothing is left. [H, W, 3] uint8."""
  height, width = image.shape[:2]
  x0, y0 = max(x, 0), max(y, 0)
  x1, y1 = min(x + w, width), min(y + h, height)
  if x1 <= x0 or y1 <= y0:
    return None
  return np.ascontiguousarray(image[y0:y1, x0:x1])


def _read_csv_layout(
  root: str, split: str, num_classes: int, crop: bool, skips: common.Skips, landmarks: bool
) -> Iterator[dict[str, Any]]:
  path = os.path.join(root, "Manually_Annotated_file_lists", CSV_FILES[split])
  image_dir = os.path.join(root, "Manually_Annotated_Images")
  crop = crop and not landmarks
  needed = CSV_COLUMNS + (BOX_COLUMNS if crop else ()) + ((LANDMARK_COLUMN,) if landmarks else ())
  for line, row in common.read_csv(path):
    missing = [c for c in needed if c not in row]
    if missing:
      raise common.DatasetError(path, f"header lacks column(s) {missing}", 1)
    where = f"{path}:{line}"
    code = common.parse_int(row["expression"], path, line, "expression")
    expression = _label(code, num_classes, path, line, where, skips)
    if expression is None:
      continue
    image_path = os.path.join(image_dir, row["subDirectory_filePath"])
    image = common.load_image(image_path, skips)
    if image is None:
      continue
    if crop:
      box = [common.parse_int(row[c], path, line, c) for c in BOX_COLUMNS]
      image = crop_box(image, *box)
      if image is None:
        skips.add(SKIP_BOX, where)
        continue
    lm = {}
    if landmarks:
      points = landmarks_lib.parse_affectnet(row[LANDMARK_COLUMN], path, line)
      lm = {"landmarks": points, "landmark_scheme": LANDMARK_SCHEME}
    yield common.make_example(image=image, path=image_path, expression=expression, **lm)


def _npy_code(path: str) -> int:
  try:
    value = np.load(path, allow_pickle=False)
    return int(str(np.asarray(value).reshape(-1)[0]).strip())
  except (OSError, ValueError, IndexError) as e:
    raise common.DatasetError(path, f"cannot read an expression code: {e}") from None


def _npy_landmarks(path: str) -> np.ndarray | None:
  if not os.path.isfile(path):
    return None
  try:
    value = np.asarray(np.load(path, allow_pickle=False), np.float64).reshape(-1)
  except (OSError, ValueError) as e:
    raise common.DatasetError(path, f"cannot read landmarks: {e}") from None
  if value.size != 136:
    raise common.DatasetError(path, f"{value.size} landmark values, expected 136 (68 x 2)")
  return value.reshape(68, 2).astype(np.float32)


def _read_npy_layout(
  root: str, split: str, num_classes: int, skips: common.Skips, landmarks: bool
) -> Iterator[dict[str, Any]]:
  base = os.path.join(root, NPY_DIRS[split])
  image_dir, ann_dir = os.path.join(base, "images"), os.path.join(base, "annotations")
  for d in (image_dir, ann_dir):
    if not os.path.isdir(d):
      raise common.DatasetError(d, "folder not found (AffectNet npy layout)")
  images = {}
  for name in os.listdir(image_dir):
    stem, ext = os.path.splitext(name)
    if ext.lower() in (".jpg", ".jpeg", ".png"):
      images[stem] = name
  codes = {}
  for name in os.listdir(ann_dir):
    m = re.fullmatch(r"(.+)_exp\.npy", name)
    if m:
      codes[m.group(1)] = os.path.join(ann_dir, name)
  key = lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s)
  for stem in sorted(set(images) | set(codes), key=key):
    if stem not in codes:
      skips.add("image without an _exp.npy annotation", os.path.join(image_dir, images[stem]))
      continue
    if stem not in images:
      skips.add("annotation without an image", codes[stem])
      continue
    code = _npy_code(codes[stem])
    expression = _label(code, num_classes, codes[stem], None, codes[stem], skips)
    if expression is None:
      continue
    image_path = os.path.join(image_dir, images[stem])
    image = common.load_image(image_path, skips)
    if image is None:
      continue
    lm = {}
    if landmarks:
      points = _npy_landmarks(os.path.join(ann_dir, f"{stem}_lnd.npy"))
      lm = {"landmarks": points, "landmark_scheme": LANDMARK_SCHEME}
    yield common.make_example(image=image, path=image_path, expression=expression, **lm)


def read(
  root: str | os.PathLike[str],
  *,
  split: str | None = None,
  skips: common.Skips | None = None,
  num_classes: int = 8,
  crop: bool = False,
  landmarks: bool = False,
  **unused: Any,
) -> Iterator[dict[str, Any]]:
  """Yields AffectNet examples of `split` ('train'/'test', 'validation' = 'test'; None = both).

  crop: cut the face box (face_x/y/width/height) out of the image (csv layout only; the npy
  layout's images are already face crops); not done when `landmarks` are asked for.
  landmarks: add the 68 points of each image (see the module docstring).
  """
  del unused
  if split == "validation":
    split = "test"
  if split is not None and split not in SPLITS:
    raise ValueError(f"AffectNet splits are {SPLITS} ('validation' = 'test'), got {split!r}")
  if num_classes not in (7, 8):
    raise ValueError(f"num_classes must be 7 or 8, got {num_classes!r}")
  skips = common.Skips() if skips is None else skips
  root = os.fspath(root)
  kind = layout(root)
  for s in SPLITS if split is None else (split,):
    if kind == "csv":
      yield from _read_csv_layout(root, s, num_classes, crop, skips, landmarks)
    else:
      yield from _read_npy_layout(root, s, num_classes, skips, landmarks)
