"""RAF-DB, basic subset (7 expression classes), and SynthFace's RAF-like tree.

Layout (root = the folder holding `basic/`, or `basic/` itself):
  basic/EmoLabel/list_patition_label.txt   no header; lines `train_00001.jpg 5`
  basic/Image/aligned/<stem>_aligned.jpg   100x100 aligned faces   (variant='aligned')
  basic/Image/original/<name>              original images          (variant='original')

The split comes from the name prefix only: `train_` + 5 digits or `test_` + 4 digits; any other
name is a DatasetError (path:line). Labels 1..7 = surprise, fear, disgust, happiness, sadness,
anger, neutral; anything else is a DatasetError. A missing or corrupt image is a counted skip.
RAF-DB has no validation split.
"""

from __future__ import annotations

import os
import re
from typing import Any, Iterator

from input_pipeline import schema
from input_pipeline.readers import common

CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
# Index i of CLASSES (label i + 1 in the file) -> index in input_pipeline.schema.EXPRESSIONS.
TO_CANONICAL = tuple(schema.expression_index(c) for c in CLASSES)
SPLITS = ("train", "test")
VARIANTS = ("aligned", "original")
LABEL_FILE = os.path.join("EmoLabel", "list_patition_label.txt")

_NAME_RE = re.compile(r"^(?:(train)_\d{5}|(test)_\d{4})\.(?:jpg|jpeg|png)$", re.IGNORECASE)


def basic_dir(root: str | os.PathLike[str]) -> str:
  """The `basic/` folder under root (or root itself); DatasetError if it has no label file."""
  root = os.fspath(root)
  for cand in (os.path.join(root, "basic"), root):
    for name in ("list_patition_label.txt", "list_partition_label.txt"):
      if os.path.isfile(os.path.join(cand, "EmoLabel", name)):
        return cand
  raise _missing_label_error(root)


def _missing_label_error(root: str) -> common.DatasetError:
  return common.DatasetError(
    os.path.join(root, "basic", LABEL_FILE),
    "RAF-DB label file not found; point at the folder that holds basic/ "
    "(basic/EmoLabel/list_patition_label.txt and basic/Image/aligned/)",
  )


def label_file(root: str | os.PathLike[str]) -> str:
  base = basic_dir(root)
  for name in ("list_patition_label.txt", "list_partition_label.txt"):
    path = os.path.join(base, "EmoLabel", name)
    if os.path.isfile(path):
      return path
  raise _missing_label_error(os.fspath(root))


def read_labels(root: str | os.PathLike[str]) -> list[tuple[int, str, str, int]]:
  """Parses the label file into (line, name, split, canonical expression) in file order."""
  path = label_file(root)
  out = []
  for line, row in common.read_csv(path, header=False, delimiter=" "):
    row = " ".join(row).split()
    if len(row) != 2:
      raise common.DatasetError(path, f"expected '<name> <label>', got {' '.join(row)!r}", line)
    name, label = row
    m = _NAME_RE.match(name)
    if m is None:
      raise common.DatasetError(
        path, f"image name {name!r} is neither train_<5 digits> nor test_<4 digits>", line
      )
    split = m.group(1) or m.group(2)
    value = common.parse_int(label, path, line, "label")
    if not 1 <= value <= len(CLASSES):
      raise common.DatasetError(path, f"label {value} out of range 1..{len(CLASSES)}", line)
    out.append((line, name, split.lower(), TO_CANONICAL[value - 1]))
  if not out:
    raise common.DatasetError(path, "label file has no entries")
  return out


def image_path(root: str | os.PathLike[str], name: str, variant: str = "aligned") -> str:
  base = basic_dir(root)
  if variant == "aligned":
    stem = os.path.splitext(name)[0]
    return os.path.join(base, "Image", "aligned", f"{stem}_aligned.jpg")
  if variant == "original":
    return os.path.join(base, "Image", "original", name)
  raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def read(
  root: str | os.PathLike[str],
  *,
  split: str | None = None,
  skips: common.Skips | None = None,
  variant: str = "aligned",
  **unused: Any,
) -> Iterator[dict[str, Any]]:
  """Yields RAF-DB examples (common schema) of `split` ('train'/'test'; None = both) in file order."""
  del unused
  if split is not None and split not in SPLITS:
    raise ValueError(f"RAF-DB splits are {SPLITS} (no validation set), got {split!r}")
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
  skips = common.Skips() if skips is None else skips
  for _, name, name_split, expression in read_labels(root):
    if split is not None and name_split != split:
      continue
    path = image_path(root, name, variant)
    image = common.load_image(path, skips)
    if image is None:
      continue
    yield common.make_example(image=image, path=path, expression=expression)
