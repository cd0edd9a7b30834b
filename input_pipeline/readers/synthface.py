"""SynthFace, BP4D-like part: the BP4D reader on `<out>/BP4D`, plus expression labels.

`python -m input_pipeline.synthface --out DIR` writes `DIR/BP4D/` in exactly the BP4D layout
(see bp4d.py) and `DIR/BP4D/SynthFace_expressions.csv` (header `subject,task,frame,expression`,
canonical expression names of input_pipeline.schema.EXPRESSIONS; an empty name means none). The
RAF-like part (`DIR/RAF`) is read by raf_db.py.

`expression` is the index of the CSV's name, -1 for frames the CSV does not list. `fold` is the
subject's part in a seeded, balanced, subject-exclusive split (`folds=3, fold_seed=0`): small
generated trees (F001-F003, M001-M003) would otherwise fall mostly into BP4D's part 1 and leave a
part empty. `folds=None` uses BP4D's parts by subject name instead (0 for names not listed).
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from input_pipeline import schema
from input_pipeline.readers import bp4d
from input_pipeline.readers import common
from input_pipeline.readers import folds as folds_lib

NAME = "synthface"
AUS: tuple[int, ...] = bp4d.AUS
PARTS: dict[int, tuple[str, ...]] = bp4d.PARTS
BP4D_DIR = "BP4D"
EXPRESSIONS_FILE = "SynthFace_expressions.csv"
_COLUMNS = ("subject", "task", "frame", "expression")


def bp4d_root(root: str | os.PathLike[str]) -> str:
  """`<root>/BP4D`, or root itself if it is already that folder (holds AUCoding/)."""
  root = common.require_dir(root, "the SynthFace output folder holding BP4D/")
  inner = os.path.join(root, BP4D_DIR)
  if os.path.isdir(inner):
    return inner
  if os.path.isdir(os.path.join(root, bp4d.OCC_DIR)):
    return root
  raise common.DatasetError(
    inner,
    "folder not found; expected the SynthFace BP4D-like tree "
    "(run python -m input_pipeline.synthface --out DIR)",
  )


def tasks() -> list[str]:
  return bp4d.tasks()


def fold_of(
  subject: str, subjects: Sequence[str], *, folds: int | None = 3, fold_seed: int = 0
) -> int:
  """The subject's part among `subjects` (as read() assigns it; see the module docstring)."""
  if folds is None:
    return bp4d.fold_of(subject)
  return folds_lib.part_of(folds_lib.seeded_parts(subjects, folds, fold_seed), subject)


def subjects(root: str | os.PathLike[str]) -> list[str]:
  return bp4d.subjects(bp4d_root(root))


def read_expressions(path: str) -> dict[tuple[str, str, int], int]:
  """(subject, task, frame) -> canonical expression index (-1 for an empty name)."""
  names = schema.expressions()
  out: dict[tuple[str, str, int], int] = {}
  rows = common.read_csv(path, header=False)
  try:
    header_line, header = next(rows)
  except StopIteration:
    raise common.DatasetError(path, "empty file (no header row)") from None
  missing = [c for c in _COLUMNS if c not in header]
  if missing:
    raise common.DatasetError(
      path, f"header lacks column(s) {missing}; expected {','.join(_COLUMNS)}", header_line
    )
  col = {c: header.index(c) for c in _COLUMNS}
  for line, row in rows:
    if len(row) != len(header):
      raise common.DatasetError(
        path, f"expected {len(header)} fields as in the header, got {len(row)}", line
      )
    frame = common.parse_int(row[col["frame"]], path, line, "frame")
    name = row[col["expression"]]
    if name and name not in names:
      raise common.DatasetError(path, f"unknown expression {name!r}; expected one of {names}", line)
    key = (row[col["subject"]], row[col["task"]], frame)
    if key in out:
      raise common.DatasetError(path, f"{key} listed twice", line)
    out[key] = names.index(name) if name else -1
  return out


def read(
  root: str | os.PathLike[str],
  *,
  skips: common.Skips | None = None,
  intensity: bool = True,
  folds: int | None = 3,
  fold_seed: int = 0,
  landmarks: bool = False,
) -> Iterator[dict[str, Any]]:
  """Yields the SynthFace BP4D-like frames (bp4d.read) with `expression` filled in.

  Args:
    root: the generator's output folder (holding BP4D/), or its BP4D/ folder.
    skips: collects counted per-item skips.
    intensity: read AU_INT intensities (the generator writes them).
    folds: number of seeded subject-exclusive parts; None keeps BP4D's parts by subject name.
    fold_seed: seed of that split.
    landmarks: add the 49 tracked points of each frame (BP4D's 2DFeatures layout; bp4d.read).
  """
  inner = bp4d_root(root)
  path = os.path.join(inner, EXPRESSIONS_FILE)
  if not os.path.isfile(path):
    raise common.DatasetError(
      path,
      "expression file not found; expected a header "
      f"{','.join(_COLUMNS)} written by the SynthFace generator",
    )
  examples = bp4d.read(inner, skips=skips, intensity=intensity, landmarks=landmarks)
  split = None
  if folds is not None:
    split = folds_lib.seeded_parts(bp4d.subjects(inner), folds, fold_seed)
    folds_lib.log_parts(NAME, split)
  return _iterate(examples, read_expressions(path), split)


def _iterate(
  examples: Iterator[dict[str, Any]],
  expressions: dict[tuple[str, str, int], int],
  split: folds_lib.Parts | None,
) -> Iterator[dict[str, Any]]:
  for ex in examples:
    ex["expression"] = expressions.get((ex["subject"], ex["task"], ex["frame"]), -1)
    if split is not None:
      ex["fold"] = folds_lib.part_of(split, ex["subject"])
    yield ex
