"""DISFA: per-AU intensity files + extracted frames, 8 evaluated AUs, 3 folds, no activities.

Layout (root = the folder holding `ActionUnit_Labels/` and the per-subject frame folders):
  <root>/ActionUnit_Labels/<SN>/<SN>_au<N>.txt   one `frameIdx,intensity` line per frame, 0-5
  <root>/<SN>/<t>.png (or .jpg)                   frames extracted from the videos, 0-based

As in ME-GraphAU, the t-th line (0-based) of every label file is paired with image t, whatever
number its frameIdx column carries (the files count from 1). Occurrence = intensity >= 2 (the
`occurrence_threshold`); `au_intensity` keeps the 0-5 value. Only the evaluated AUs' files are
read; each must exist and all must have the same number of lines. An intensity outside 0..5 is a
DatasetError naming file and line. Per item, counted in `Skips`: label lines without image,
images beyond the label lines, unreadable images, non-frame files, a subject without frames.

Subjects are the folders of ActionUnit_Labels/. `fold` = the subject's part in the ME-GraphAU
3-fold split (folds.DISFA_PARTS; 0 for a subject in no part).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np

from input_pipeline.readers import common
from input_pipeline.readers import folds

NAME = "disfa"
AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
ALL_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
PARTS: dict[int, tuple[str, ...]] = folds.DISFA_PARTS
LABEL_DIR = "ActionUnit_Labels"

SKIP_SUBJECT_WITHOUT_FRAMES = "subject without frame folder"


def tasks() -> list[str]:
  """DISFA has no tasks/activities."""
  return []


def fold_of(subject: str) -> int:
  """The subject's part (1..3) in the standard DISFA split, 0 if it is in none."""
  return folds.part_of(PARTS, subject)


def label_path(root: str, subject: str, au: int) -> str:
  return os.path.join(root, LABEL_DIR, subject, f"{subject}_au{au}.txt")


def read_au_file(path: str) -> np.ndarray:
  """Intensities of one label file in line order: int8 [T] in 0..5."""
  values = []
  for line, row in common.read_csv(path, header=False):
    if len(row) < 2:
      raise common.DatasetError(path, f"expected 'frameIdx,intensity', got {','.join(row)!r}", line)
    common.parse_int(row[0], path, line, "frameIdx")
    value = common.parse_int(row[1], path, line, "intensity")
    if not 0 <= value <= 5:
      raise common.DatasetError(path, f"intensity {value} is not in 0..5", line)
    values.append(value)
  return np.asarray(values, np.int8)


def read_subject_labels(root: str, subject: str, aus: Sequence[int] = AUS) -> np.ndarray:
  """Intensities of one subject: int8 [T, len(aus)], row t = line t of every AU file."""
  columns = []
  first = None
  for au in aus:
    path = label_path(root, subject, au)
    if not os.path.isfile(path):
      raise common.DatasetError(
        path,
        f"label file of AU{au} not found (expected "
        f"{LABEL_DIR}/{subject}/{subject}_au<N>.txt for AUs {list(aus)})",
      )
    values = read_au_file(path)
    if first is None:
      first = (path, len(values))
    elif len(values) != first[1]:
      raise common.DatasetError(
        path,
        f"has {len(values)} label lines but {first[0]} has {first[1]}; every AU file "
        "of a subject must cover the same frames",
      )
    columns.append(values)
  return np.stack(columns, axis=1)


def _check_root(root: str | os.PathLike[str]) -> str:
  root = common.require_dir(
    root, "the DISFA folder holding ActionUnit_Labels/<SN>/ and <SN>/<t>.png frame folders"
  )
  label_dir = common.require_dir(
    os.path.join(root, LABEL_DIR), "per-subject label folders <SN>/<SN>_au<N>.txt"
  )
  if not any(e.is_dir() for e in os.scandir(label_dir)):
    raise common.DatasetError(label_dir, "no subject folders found; expected <SN>/<SN>_au<N>.txt")
  return root


def subjects(root: str | os.PathLike[str]) -> list[str]:
  """Subject ids (folders of ActionUnit_Labels/), in natural order."""
  label_dir = os.path.join(_check_root(root), LABEL_DIR)
  return sorted(
    (e.name for e in os.scandir(label_dir) if e.is_dir() and not e.name.startswith(".")),
    key=common.natural_key,
  )


def read(
  root: str | os.PathLike[str],
  *,
  skips: common.Skips | None = None,
  image_ext: str | None = None,
  occurrence_threshold: int = 2,
) -> Iterator[dict[str, Any]]:
  """Yields every labelled DISFA frame in the common schema (subjects, frames sorted).

  Args:
    root: the DISFA folder (see the module docstring).
    skips: collects counted per-item skips (a fresh one, logged at the end, if None).
    image_ext: "png" or "jpg" to accept only that extension; None accepts png/jpg/jpeg.
    occurrence_threshold: an AU occurs when its intensity is >= this (1..5).
  """
  if not 1 <= occurrence_threshold <= 5:
    raise ValueError(f"occurrence_threshold must be in 1..5, got {occurrence_threshold}")
  if image_ext is None:
    exts = common.IMAGE_EXTS
  else:
    ext = "." + image_ext.lower().lstrip(".")
    if ext not in common.IMAGE_EXTS:
      raise ValueError(f"image_ext must be one of {common.IMAGE_EXTS} or None, got {image_ext!r}")
    exts = (ext,)
  root = _check_root(root)
  return _iterate(root, common.Skips() if skips is None else skips, exts, occurrence_threshold)


def _iterate(
  root: str, skips: common.Skips, exts: tuple[str, ...], threshold: int
) -> Iterator[dict[str, Any]]:
  count = 0
  for subject in subjects(root):
    intensity = read_subject_labels(root, subject)
    occurrence = (intensity >= threshold).astype(np.int8)
    frame_dir = os.path.join(root, subject)
    if not os.path.isdir(frame_dir):
      skips.add(SKIP_SUBJECT_WITHOUT_FRAMES, frame_dir)
      continue
    images = common.list_frames(frame_dir, skips, exts)
    fold = fold_of(subject)
    where = os.path.join(root, LABEL_DIR, subject)
    for t in range(len(intensity)):
      if t not in images:
        skips.add(common.SKIP_ROW_WITHOUT_IMAGE, f"{where} line {t + 1}")
        continue
      image = common.load_image(images[t], skips)
      if image is None:
        continue
      count += 1
      yield common.make_example(
        image=image,
        path=images[t],
        subject=subject,
        frame=t,
        au=occurrence[t],
        au_intensity=intensity[t],
        fold=fold,
      )
    for t in images:
      if t >= len(intensity):
        skips.add(common.SKIP_IMAGE_WITHOUT_ROW, images[t])
  common.finish(
    NAME,
    skips,
    count,
    root,
    "<SN>/<t>.png frames for the lines of ActionUnit_Labels/<SN>/<SN>_au<N>.txt",
  )
