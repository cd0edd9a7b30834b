"""FER2013 images with FER+ labels (8 expression classes).

Two layouts, detected automatically (root = the folder holding them):
  csv     `fer2013.csv` (header `emotion,pixels,Usage`, 48x48 grey pixels as space-separated
          integers) + `fer2013new.csv` (row-aligned, header `Usage,Image name,neutral,happiness,
          surprise,sadness,anger,disgust,fear,contempt,unknown,NF`).
  folders the FERPlus converter's output: `FER2013Train/`, `FER2013Valid/`, `FER2013Test/`, each
          with PNGs and a header-less `label.csv` (`fer0000000.png,"(0, 0, 48, 48)",4,0,0,...`,
          the same 10 vote columns in the same order).
Usage Training / PublicTest / PrivateTest (folders Train / Valid / Test) -> train / validation /
test. `image/path` names the image as the FERPlus files do: in the csv layout
`<root>/fer2013.csv:<line>/<Image name>` (the pixels' line, then e.g. `fer0000001.png`, so its
basename is the official file name), in the folders layout the PNG's path.

Majority protocol (FERPlus `_process_target`): zero every vote count <= 1; the label is the
argmax over the 10 columns if it holds > 50 % of the remaining votes, otherwise unknown; rows
whose label is unknown or NF are dropped (counted skips), as are rows with an empty image name.

`expression/votes` is the vote distribution over the 8 emotions after zeroing counts <= 1,
normalised to sum 1, in canonical order. With `label_mode='votes'` the training split keeps
every row whose distribution is defined (some emotion has >= 2 votes) and whose plurality over
all 10 zeroed columns is an emotion, not unknown/NF (as FERPlus's probability modes drop them);
`expression` is then that plurality emotion (first in FER+ column order on ties), which equals
the majority label whenever one exists. Validation and test always use the majority protocol.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np

from input_pipeline import schema
from input_pipeline.readers import common

CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
VOTE_COLUMNS = CLASSES + ("unknown", "NF")
TO_CANONICAL = tuple(schema.expression_index(c) for c in CLASSES)
SPLITS = ("train", "validation", "test")
LABEL_MODES = ("majority", "votes")
USAGE = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
FOLDERS = {"FER2013Train": "train", "FER2013Valid": "validation", "FER2013Test": "test"}
IMAGE_SIZE = 48

UNKNOWN, NF = 8, 9
SKIP_EMPTY_NAME = "empty image name in fer2013new.csv"
SKIP_NO_MAJORITY = "no majority (no column holds > 50% of the votes): unknown"
SKIP_UNKNOWN = "majority label is 'unknown'"
SKIP_NF = "majority label is 'NF' (not a face)"
SKIP_NO_VOTES = "no emotion with >= 2 votes (votes mode)"
SKIP_PLURALITY_UNKNOWN = "plurality label is 'unknown' (votes mode)"
SKIP_PLURALITY_NF = "plurality label is 'NF' (votes mode)"


def majority_label(counts: Sequence[int]) -> int:
  """FER+ majority over the 10 vote columns: column index 0..9, or -1 if there is no majority.

  Counts <= 1 are zeroed first; the argmax wins if it holds strictly more than half of the
  remaining votes. 8 = unknown and 9 = NF are returned as such (callers drop them).
  """
  c = np.asarray(counts, np.float64)
  c = np.where(c <= 1, 0.0, c)
  total = c.sum()
  best = int(np.argmax(c))
  if total > 0 and c[best] > 0.5 * total:
    return best
  return -1


def vote_distribution(counts: Sequence[int]) -> np.ndarray | None:
  """float32 [8] distribution over the emotions in canonical order, or None if all are zero."""
  c = np.asarray(counts[: len(CLASSES)], np.float64)
  c = np.where(c <= 1, 0.0, c)
  if c.sum() <= 0:
    return None
  out = np.zeros((common.NUM_EXPRESSIONS,), np.float32)
  out[list(TO_CANONICAL)] = c / c.sum()
  return out


def _parse_counts(values: Sequence[str], path: str, line: int) -> list[int]:
  counts = []
  for name, v in zip(VOTE_COLUMNS, values):
    n = common.parse_int(v, path, line, f"vote count {name}")
    if n < 0:
      raise common.DatasetError(path, f"vote count {name} is negative ({n})", line)
    counts.append(n)
  return counts


def _label(
  counts: list[int], split: str, label_mode: str, where: str, skips: common.Skips
) -> tuple[int, np.ndarray] | None:
  """(canonical expression, votes [8]) for one row under the protocol, or None (skip counted)."""
  votes = vote_distribution(counts)
  if label_mode == "votes" and split == "train":
    zeroed = np.where(np.asarray(counts) <= 1, 0, np.asarray(counts))
    best = int(np.argmax(zeroed))  # plurality over all 10 columns, column order on ties
    if best in (UNKNOWN, NF):
      skips.add(SKIP_PLURALITY_UNKNOWN if best == UNKNOWN else SKIP_PLURALITY_NF, where)
      return None
    if votes is None:
      skips.add(SKIP_NO_VOTES, where)
      return None
    return TO_CANONICAL[best], votes
  label = majority_label(counts)
  if label < 0:
    skips.add(SKIP_NO_MAJORITY, where)
    return None
  if label == UNKNOWN:
    skips.add(SKIP_UNKNOWN, where)
    return None
  if label == NF:
    skips.add(SKIP_NF, where)
    return None
  assert votes is not None  # the winner holds >= 2 votes
  return TO_CANONICAL[label], votes


def layout(root: str | os.PathLike[str]) -> str:
  """'csv' or 'folders'; DatasetError naming root if neither layout is there."""
  root = os.fspath(root)
  if os.path.isfile(os.path.join(root, "fer2013new.csv")):
    if not os.path.isfile(os.path.join(root, "fer2013.csv")):
      raise common.DatasetError(
        os.path.join(root, "fer2013.csv"),
        "file not found (needed next to fer2013new.csv for the pixels)",
      )
    return "csv"
  if any(os.path.isfile(os.path.join(root, d, "label.csv")) for d in FOLDERS):
    return "folders"
  raise common.DatasetError(
    root,
    "no FER+ data: expected fer2013.csv + fer2013new.csv, or the FERPlus converter's "
    "FER2013Train/label.csv (+ FER2013Valid, FER2013Test)",
  )


def _pixels(value: str, path: str, line: int) -> np.ndarray:
  parts = value.split()
  if len(parts) != IMAGE_SIZE * IMAGE_SIZE:
    raise common.DatasetError(
      path, f"pixels: expected {IMAGE_SIZE * IMAGE_SIZE} values (48x48), got {len(parts)}", line
    )
  try:
    arr = np.asarray([int(p) for p in parts], np.int64)
  except ValueError:
    raise common.DatasetError(path, "pixels: non-integer value", line) from None
  if arr.min() < 0 or arr.max() > 255:
    raise common.DatasetError(path, "pixels: values must be in 0..255", line)
  return arr.astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)


def _read_csv_layout(
  root: str, split: str | None, label_mode: str, skips: common.Skips
) -> Iterator[dict[str, Any]]:
  fer_path = os.path.join(root, "fer2013.csv")
  new_path = os.path.join(root, "fer2013new.csv")
  fer_rows = common.read_csv(fer_path)
  new_rows = common.read_csv(new_path)
  for n, new in enumerate(new_rows):
    new_line, new_row = new
    fer = next(fer_rows, None)
    if fer is None:
      raise common.DatasetError(
        new_path,
        f"has more rows than {fer_path} (row {n + 1} has no "
        "pixels); the two files must be row-aligned",
        new_line,
      )
    fer_line, fer_row = fer
    if n == 0:
      for p, row, cols in (
        (fer_path, fer_row, ("pixels", "Usage")),
        (new_path, new_row, ("Usage", "Image name") + VOTE_COLUMNS),
      ):
        missing = [c for c in cols if c not in row]
        if missing:
          raise common.DatasetError(p, f"header lacks column(s) {missing}", 1)
    usage = new_row["Usage"] or fer_row["Usage"]
    if usage not in USAGE:
      raise common.DatasetError(
        new_path, f"Usage {usage!r} is not one of {sorted(USAGE)}", new_line
      )
    if fer_row["Usage"] and fer_row["Usage"] != usage:
      raise common.DatasetError(
        new_path,
        f"Usage {usage!r} differs from {fer_row['Usage']!r} at "
        f"{fer_path}:{fer_line}; the files are not row-aligned",
        new_line,
      )
    row_split = USAGE[usage]
    if split is not None and row_split != split:
      continue
    where = f"{new_path}:{new_line}"
    if not new_row["Image name"]:
      skips.add(SKIP_EMPTY_NAME, where)
      continue
    counts = _parse_counts([new_row[c] for c in VOTE_COLUMNS], new_path, new_line)
    labelled = _label(counts, row_split, label_mode, where, skips)
    if labelled is None:
      continue
    image = common.decode_image(_pixels(fer_row["pixels"], fer_path, fer_line))
    # The pixels' CSV line, then the FER+ image name: basename(path) is the official file name.
    path = f"{fer_path}:{fer_line}/{new_row['Image name']}"
    yield common.make_example(image=image, path=path, expression=labelled[0], votes=labelled[1])
  if next(fer_rows, None) is not None:
    raise common.DatasetError(
      fer_path, f"has more rows than {new_path}; the two files must be row-aligned"
    )


def _read_folder_layout(
  root: str, split: str | None, label_mode: str, skips: common.Skips
) -> Iterator[dict[str, Any]]:
  for folder, folder_split in FOLDERS.items():
    if split is not None and folder_split != split:
      continue
    path = os.path.join(root, folder, "label.csv")
    if not os.path.isfile(path):
      raise common.DatasetError(
        path, f"file not found (the {folder_split} split of the FERPlus converter layout)"
      )
    for line, row in common.read_csv(path, header=False):
      if len(row) != 2 + len(VOTE_COLUMNS):
        raise common.DatasetError(
          path,
          f"expected 12 fields (image name, face box, {len(VOTE_COLUMNS)} vote counts), "
          f"got {len(row)}",
          line,
        )
      where = f"{path}:{line}"
      if not row[0]:
        skips.add(SKIP_EMPTY_NAME, where)
        continue
      counts = _parse_counts(row[2:], path, line)
      labelled = _label(counts, folder_split, label_mode, where, skips)
      if labelled is None:
        continue
      image_path = os.path.join(root, folder, row[0])
      image = common.load_image(image_path, skips)
      if image is None:
        continue
      yield common.make_example(
        image=image, path=image_path, expression=labelled[0], votes=labelled[1]
      )


def read(
  root: str | os.PathLike[str],
  *,
  split: str | None = None,
  skips: common.Skips | None = None,
  label_mode: str = "majority",
  **unused: Any,
) -> Iterator[dict[str, Any]]:
  """Yields FER+ examples of `split` ('train'/'validation'/'test'; None = all) in file order."""
  del unused
  if split is not None and split not in SPLITS:
    raise ValueError(f"FER+ splits are {SPLITS}, got {split!r}")
  if label_mode not in LABEL_MODES:
    raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
  skips = common.Skips() if skips is None else skips
  root = os.fspath(root)
  if layout(root) == "csv":
    yield from _read_csv_layout(root, split, label_mode, skips)
  else:
    yield from _read_folder_layout(root, split, label_mode, skips)
