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
  caption        free text about the image (e.g. web alt-text, as in LAION-Face); stripped
  landmarks      face landmarks in 0-based pixel coordinates of the image, x then y: JSONL a
                 list of [x, y] pairs (or a flat list), CSV the numbers separated by spaces;
                 5 points (a detector's: eyes, nose, mouth corners), 49 (BP4D), 66 (DISFA) or
                 68 (iBUG) pick the scheme (input_pipeline.align.SCHEMES; all 0-based here);
                 empty = none. Read only when asked (`read(..., landmarks=True)`: the builder's
                 `_lm` / `_lmdet` configs, `prepare --align=landmarks`) to align the faces.
`activity`, `label` and `text` are accepted for activity_text, expression and caption (one name
per field in a row); other columns are ignored with a warning. The AU columns define the AU
order, sorted by AU number (`aus(path)`).
`read(root)` accepts the manifest file itself or a folder holding `manifest.csv` or
`manifest.jsonl`; the file must be UTF-8 (a BOM is fine). Bad values are a DatasetError naming
path and line. Per-row problems are counted skips, reported in one warning and in `skips`: a
missing or corrupt image, a line that is not UTF-8 (`common.SKIP_NON_UTF8`, where = path:line).
In a manifest with a caption column, a row with an empty caption is kept (it may carry labels)
but counted: `read(..., captions=common.CaptionStats())` gets the counts and first line numbers
of the yielded examples, and one warning names the path, the count and the first lines.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Iterator

import numpy as np

from input_pipeline import align as align_lib
from input_pipeline import schema
from input_pipeline.readers import common

CLASSES = schema.EXPRESSIONS
TO_CANONICAL = tuple(range(len(CLASSES)))
SPLITS = ("train", "validation", "test")
FILE_NAMES = ("manifest.csv", "manifest.jsonl")
KNOWN = (
  "path",
  "subject",
  "task",
  "activity_text",
  "frame",
  "expression",
  "fold",
  "split",
  "caption",
  "landmarks",
)
ALIASES = {"activity": "activity_text", "label": "expression", "text": "caption"}
_AU_RE = re.compile(r"^au_?(\d+)$", re.IGNORECASE)
# Landmark schemes (input_pipeline.align.SCHEMES) by number of points. A manifest's coordinates
# are 0-based; the schemes of 1-based files (bp4d49, disfa66) get them shifted by their origin.
_LANDMARK_SCHEMES = {s.num_points: s.name for s in align_lib.SCHEMES.values()}


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


def _rows(path: str, bad_lines: list[int] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line, row dict) of a CSV (header row) or JSONL manifest.

  Lines that are not UTF-8 are skipped, their numbers appended to `bad_lines` if given.
  """
  bad_lines = [] if bad_lines is None else bad_lines
  if not _is_jsonl(path):
    yield from common.read_csv(path, bad_lines=bad_lines)
    return
  if not os.path.isfile(path):
    raise common.DatasetError(path, "file not found")
  for line, text in common.text_lines(path, bad_lines):
    if not text.strip():
      continue
    try:
      row = json.loads(text)
    except json.JSONDecodeError as e:
      raise common.DatasetError(path, f"invalid JSON: {e.msg}", line) from None
    if not isinstance(row, dict):
      raise common.DatasetError(path, "each line must be a JSON object", line)
    yield line, row


def _canonical_keys(row: dict[str, Any], path: str, line: int) -> dict[str, Any]:
  out: dict[str, Any] = {}
  given: dict[str, str] = {}
  for k, v in row.items():
    name = ALIASES.get(k, k)
    if name in given:
      raise common.DatasetError(path, f"{name} given twice ({given[name]!r} and {k!r})", line)
    given[name] = k
    out[name] = v
  return out


def _columns(path: str, warn: bool = True) -> tuple[dict[int, str], set[str]]:
  """(AU number -> column/key name, canonical names of the other known columns present), over
  the header (CSV) or all lines (JSONL); unknown columns are warned about if `warn`."""
  keys: list[str] = []
  bad_lines: list[int] = []
  rows = 0
  if _is_jsonl(path):
    seen = set()
    for _, row in _rows(path, bad_lines):
      rows += 1
      for k in row:
        if k not in seen:
          seen.add(k)
          keys.append(k)
  else:
    for _, row in _rows(path, bad_lines):
      rows += 1
      keys = list(row)
      break
  if not rows:
    raise common.DatasetError(path, _no_rows(bad_lines))
  out: dict[int, str] = {}
  for k in keys:
    m = _AU_RE.match(k)
    if m:
      n = int(m.group(1))
      if n in out:
        raise common.DatasetError(path, f"AU {n} given twice ({out[n]!r} and {k!r})", 1)
      out[n] = k
    elif k not in KNOWN and k not in ALIASES and warn:
      logging.warning("%s: ignoring unknown column %r (known: %s and au_<n>)", path, k, list(KNOWN))
  if "path" not in keys:
    raise common.DatasetError(path, "no 'path' column", 1)
  known = {ALIASES.get(k, k) for k in keys} & set(KNOWN)
  return dict(sorted(out.items())), known


def _no_rows(bad_lines: list[int]) -> str:
  if not bad_lines:
    return "manifest has no rows"
  return (
    f"manifest has no rows ({len(bad_lines)} line(s) not UTF-8: {common.first_lines(bad_lines)})"
  )


def _au_columns(path: str) -> dict[int, str]:
  """AU number -> column/key name, over the header (CSV) or all lines (JSONL)."""
  return _columns(path)[0]


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


def _landmarks(row: dict[str, Any], path: str, line: int) -> tuple[np.ndarray, str] | None:
  """(float32 [K, 2] points in the scheme's own coordinates, scheme name) or None if empty."""
  v = row.get("landmarks")
  if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
    return None
  try:
    if isinstance(v, str):
      nums = [float(x) for x in re.split(r"[\s,;]+", v.strip())]
    else:
      nums = np.asarray(v, np.float64).reshape(-1).tolist()
  except (TypeError, ValueError):
    raise common.DatasetError(
      path, f"landmarks: expected numbers x1 y1 x2 y2 ..., got {str(v)[:80]!r}", line
    ) from None
  known = sorted(_LANDMARK_SCHEMES)
  if len(nums) % 2 or len(nums) // 2 not in _LANDMARK_SCHEMES:
    raise common.DatasetError(
      path,
      f"landmarks: expected {', '.join(map(str, known))} (x, y) points, got {len(nums)} numbers",
      line,
    )
  pts = np.asarray(nums, np.float64).reshape(-1, 2)
  if not np.all(np.isfinite(pts)):
    raise common.DatasetError(path, "landmarks: NaN or infinite coordinates", line)
  scheme = align_lib.SCHEMES[_LANDMARK_SCHEMES[len(pts)]]
  return (pts + scheme.origin).astype(np.float32), scheme.name


def has_landmarks(root: str | os.PathLike[str]) -> bool:
  """True if the manifest has a landmarks column (for JSONL: on any line)."""
  return "landmarks" in _columns(manifest_path(root), warn=False)[1]


def read(
  root: str | os.PathLike[str],
  *,
  split: str | None = None,
  skips: common.Skips | None = None,
  captions: common.CaptionStats | None = None,
  landmarks: bool = False,
  **unused: Any,
) -> Iterator[dict[str, Any]]:
  """Yields the manifest's examples (common schema) in file order; `split` filters the rows.

  Skipped rows are counted in `skips`. In a manifest with a caption column, the yielded
  examples' captions are counted in `captions` and empty ones reported in one warning. With
  `landmarks`, each example carries its row's `landmarks` and `landmark_scheme` (none where the
  row has none), for the builder's face alignment.
  """
  del unused
  if split is not None and split not in SPLITS:
    raise ValueError(f"manifest splits are {SPLITS}, got {split!r}")
  path = manifest_path(root)
  au_cols, present = _columns(path)
  counted = "caption" in present
  captions = common.CaptionStats() if captions is None else captions
  for line, _, ex in _examples(path, au_cols, present, skips, split, landmarks):
    if counted:
      captions.add(ex["caption"], line)
    yield ex
  if counted:
    captions.log(path)


def read_splits(
  root: str | os.PathLike[str],
  *,
  skips: common.Skips | None = None,
  only: str | None = None,
  landmarks: bool = False,
) -> Iterator[tuple[int, str, dict[str, Any]]]:
  """(line, split, example) for every usable row in one pass (rows of split `only`, if given).

  One pass counts each skipped line once in `skips`, whatever the number of splits. `landmarks`
  as in `read`.
  """
  path = manifest_path(root)
  au_cols, present = _columns(path)
  yield from _examples(path, au_cols, present, skips, only, landmarks)


def _examples(
  path: str,
  au_cols: dict[int, str],
  present: set[str],
  skips: common.Skips | None,
  only: str | None,
  landmarks: bool = False,
) -> Iterator[tuple[int, str, dict[str, Any]]]:
  """`au_cols` and `present` as `_columns(path)` gives them."""
  skips = common.Skips() if skips is None else skips
  if not landmarks and "landmarks" in present:
    logging.warning(
      "%s has a landmarks column, but the faces are not aligned from it: prepare with "
      "--align=landmarks (config suffix _lm) to align them",
      path,
    )
  base = os.path.dirname(os.path.abspath(path))
  bad_lines: list[int] = []
  n = 0
  for line, row in _rows(path, bad_lines):
    n += 1
    row = _canonical_keys(row, path, line)
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
    points = _landmarks(row, path, line) if landmarks else None
    if only is not None and row_split != only:
      continue
    image_path = rel if os.path.isabs(rel) else os.path.join(base, rel)
    image = common.load_image(image_path, skips, where=f"{path}:{line}: {image_path}")
    if image is None:
      continue
    yield (
      line,
      row_split,
      common.make_example(
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
        caption=_text(row, "caption"),
        **({"landmarks": points[0], "landmark_scheme": points[1]} if points else {}),
      ),
    )
  for line in bad_lines:
    skips.add(common.SKIP_NON_UTF8, f"{path}:{line}")
  if bad_lines:
    logging.warning(
      "%s: skipped %d line(s) that are not UTF-8 text (line %s); save the file as UTF-8",
      path,
      len(bad_lines),
      common.first_lines(bad_lines),
    )
  if n == 0:
    raise common.DatasetError(path, _no_rows(bad_lines))


def has_captions(root: str | os.PathLike[str]) -> bool:
  """True if the manifest has a caption column (or `text`; for JSONL: on any line)."""
  return "caption" in _columns(manifest_path(root), warn=False)[1]


def splits(root: str | os.PathLike[str]) -> list[str]:
  """The splits present in the manifest (rows without a split are 'train'), in SPLITS order."""
  path = manifest_path(root)
  present = {(_text(row, "split") or "train") for _, row in _rows(path)}
  return [s for s in SPLITS if s in present]


def folds(root: str | os.PathLike[str]) -> list[int]:
  """The nonzero fold ids present in the manifest, ascending."""
  path = manifest_path(root)
  return sorted({_int(row, "fold", 0, path, line) for line, row in _rows(path)} - {0})
