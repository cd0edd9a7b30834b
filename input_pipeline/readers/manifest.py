"""A user's own data: a CSV or JSONL manifest listing images and whatever labels they have.

Columns (CSV header / JSONL keys); only `path` is required:
  path           image path, relative to the manifest's folder or absolute
  subject        subject id
  task           activity id (e.g. T1)
  activity_text  the activity's description
  frame          int frame number (-1 if none)
  fold           subject-exclusive part, int >= 1 (0 or empty = none)
  split          train / validation / test (rows without one count as train)
  expression     canonical name (input_pipeline.schema.EXPRESSIONS) or its index 0..7
  au_<n>         occurrence of AU n: 1 present, 0 absent, -1 or empty (null) unknown
`activity` and `label` are accepted for activity_text and expression; other columns are ignored
with a warning. The AU columns define the AU order, sorted by AU number (`aus(path)`).
`read(root)` accepts the manifest file itself or a folder holding `manifest.csv` or
`manifest.jsonl`. Bad values are a DatasetError naming path and line; a missing or corrupt image
is a counted skip.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Iterator

from input_pipeline import schema
from input_pipeline.readers import common

CLASSES = schema.EXPRESSIONS
TO_CANONICAL = tuple(range(len(CLASSES)))
SPLITS = ("train", "validation", "test")
FILE_NAMES = ("manifest.csv", "manifest.jsonl")
KNOWN = ("path", "subject", "task", "activity_text", "frame", "expression", "fold", "split")
ALIASES = {"activity": "activity_text", "label": "expression"}  # DATASETS.md's names
_AU_RE = re.compile(r"^au_?(\d+)$", re.IGNORECASE)


def manifest_path(root: str | os.PathLike[str]) -> str:
  """The manifest file: root itself, or root/manifest.csv or root/manifest.jsonl."""
  root = os.fspath(root)
  if os.path.isfile(root):
    return root
  found = [os.path.join(root, n) for n in FILE_NAMES if os.path.isfile(os.path.join(root, n))]
  if len(found) == 1:
    return found[0]
  if found:
    raise common.DatasetError(root, f"both {FILE_NAMES[0]} and {FILE_NAMES[1]} present; keep one")
  raise common.DatasetError(
    root, f"no manifest: expected a .csv/.jsonl file or a folder with {' or '.join(FILE_NAMES)}"
  )


def _is_jsonl(path: str) -> bool:
  return path.lower().endswith((".jsonl", ".json", ".ndjson"))


def _rows(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line, row dict) of a CSV (header row) or JSONL manifest."""
  if not _is_jsonl(path):
    yield from common.read_csv(path)
    return
  with open(path, encoding="utf-8-sig") as f:
    for line, text in enumerate(f, 1):
      if not text.strip():
        continue
      try:
        row = json.loads(text)
      except json.JSONDecodeError as e:
        raise common.DatasetError(path, f"invalid JSON: {e.msg}", line) from None
      if not isinstance(row, dict):
        raise common.DatasetError(path, "each line must be a JSON object", line)
      yield line, row


def _canonical_keys(row: dict[str, Any]) -> dict[str, Any]:
  return {ALIASES.get(k, k): v for k, v in row.items()}


def _au_columns(path: str) -> dict[int, str]:
  """AU number -> column/key name, over the header (CSV) or all lines (JSONL)."""
  keys: list[str] = []
  if _is_jsonl(path):
    seen = set()
    for _, row in _rows(path):
      for k in row:
        if k not in seen:
          seen.add(k)
          keys.append(k)
  else:
    for _, row in _rows(path):
      keys = list(row)
      break
  out: dict[int, str] = {}
  for k in keys:
    m = _AU_RE.match(k)
    if m:
      n = int(m.group(1))
      if n in out:
        raise common.DatasetError(path, f"AU {n} given twice ({out[n]!r} and {k!r})", 1)
      out[n] = k
    elif k not in KNOWN and k not in ALIASES:
      logging.warning("%s: ignoring unknown column %r (known: %s and au_<n>)", path, k, list(KNOWN))
  if "path" not in keys:
    raise common.DatasetError(path, "no 'path' column", 1)
  return dict(sorted(out.items()))


def aus(root: str | os.PathLike[str]) -> list[int]:
  """The manifest's AU numbers in the order of the `au` vector (sorted by AU number)."""
  return list(_au_columns(manifest_path(root)))


def _text(row: dict[str, Any], key: str) -> str:
  v = row.get(key)
  return "" if v is None else str(v).strip()


def _int(row: dict[str, Any], key: str, default: int, path: str, line: int) -> int:
  v = row.get(key)
  if v is None or (isinstance(v, str) and not v.strip()):
    return default
  if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
    raise common.DatasetError(path, f"{key}: expected an integer, got {v!r}", line)
  if isinstance(v, (int, float)):
    return int(v)
  return common.parse_int(str(v), path, line, key)


def _expression(row: dict[str, Any], path: str, line: int) -> int:
  v = row.get("expression")
  if v is None or (isinstance(v, str) and not v.strip()):
    return -1
  s = str(v).strip()
  if s.lower() in CLASSES:
    return CLASSES.index(s.lower())
  if s.lstrip("-").isdigit():
    i = int(s)
    if i == -1 or 0 <= i < len(CLASSES):
      return i
  raise common.DatasetError(
    path,
    f"expression: {v!r} is neither a name in {list(CLASSES)} nor an index 0..{len(CLASSES) - 1}",
    line,
  )


def _au_value(row: dict[str, Any], key: str, path: str, line: int) -> int:
  v = row.get(key)
  if v is None or (isinstance(v, str) and not v.strip()):
    return -1
  try:
    f = float(v)
  except (TypeError, ValueError):
    f = float("nan")
  if f in (-1.0, 0.0, 1.0) and not isinstance(v, bool):
    return int(f)
  raise common.DatasetError(path, f"{key}: expected 1, 0, -1 or empty, got {v!r}", line)


def read(
  root: str | os.PathLike[str],
  *,
  split: str | None = None,
  skips: common.Skips | None = None,
  **unused: Any,
) -> Iterator[dict[str, Any]]:
  """Yields the manifest's examples (common schema) in file order; `split` filters the rows."""
  del unused
  if split is not None and split not in SPLITS:
    raise ValueError(f"manifest splits are {SPLITS}, got {split!r}")
  skips = common.Skips() if skips is None else skips
  path = manifest_path(root)
  au_cols = _au_columns(path)
  base = os.path.dirname(os.path.abspath(path))
  n = 0
  for line, row in _rows(path):
    n += 1
    row = _canonical_keys(row)
    rel = _text(row, "path")
    if not rel:
      raise common.DatasetError(path, "path is empty", line)
    row_split = _text(row, "split") or "train"
    if row_split not in SPLITS:
      raise common.DatasetError(path, f"split {row_split!r} is not one of {SPLITS}", line)
    frame = _int(row, "frame", -1, path, line)
    fold = _int(row, "fold", 0, path, line)
    if fold < 0:
      raise common.DatasetError(path, f"fold must be >= 0, got {fold}", line)
    expression = _expression(row, path, line)
    au = [_au_value(row, k, path, line) for k in au_cols.values()]
    if split is not None and row_split != split:
      continue
    image_path = rel if os.path.isabs(rel) else os.path.join(base, rel)
    image = common.load_image(image_path, skips)
    if image is None:
      continue
    yield common.make_example(
      image=image,
      path=image_path,
      num_aus=len(au_cols),
      subject=_text(row, "subject"),
      task=_text(row, "task"),
      activity_text=_text(row, "activity_text"),
      frame=frame,
      au=au,
      expression=expression,
      fold=fold,
    )
  if n == 0:
    raise common.DatasetError(path, "manifest has no rows")


def splits(root: str | os.PathLike[str]) -> list[str]:
  """The splits present in the manifest (rows without a split are 'train'), in SPLITS order."""
  path = manifest_path(root)
  present = {(_text(row, "split") or "train") for _, row in _rows(path)}
  return [s for s in SPLITS if s in present]


def folds(root: str | os.PathLike[str]) -> list[int]:
  """The nonzero fold ids present in the manifest, ascending."""
  path = manifest_path(root)
  return sorted({_int(row, "fold", 0, path, line) for line, row in _rows(path)} - {0})
