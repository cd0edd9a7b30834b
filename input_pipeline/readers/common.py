"""The common example schema every dataset reader yields, and shared reading helpers.

Schema (one dict per example; readers fill every key):
  image            uint8 [H, W, 3]  (RGB; grey images are converted)
  image/path       str              path of the source image (or "<file>:<row>" for CSV pixels)
  subject          str              subject id ("" if unknown)
  task             str              task/activity id, e.g. "T1" ("" if none)
  activity_text    str              activity text (input_pipeline.activities; "" if none)
  frame            int              frame number (-1 for still images)
  au               int8 [J]         occurrence in the dataset's evaluated AU order; -1 = unknown
  au_intensity     int8 [J]         intensity 0-5 where coded, else -1
  expression       int              index into input_pipeline.schema.EXPRESSIONS, -1 if none
  expression/votes float32 [8]      FER+ vote distribution in canonical order (zeros elsewhere)
  fold             int              subject-exclusive fold id (1-based) or 0 where undefined
  caption          str              free text describing the image, e.g. web alt-text ("" if none)

Errors: structural problems (a missing label file, a header without a needed column, a label out
of range) raise `DatasetError` naming the path and line. Per-item problems (a truncated JPEG, a
CSV row without an image) are counted in a `Skips` and reported, never silently mislabelled.
Text files (CSV, JSONL) are read as bytes and decoded line by line (`text_lines`): a line that is
not UTF-8 is a DatasetError naming path and line, or, where the reader asks for it, a counted
skip (`SKIP_NON_UTF8`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import logging
import os
import re
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from input_pipeline import schema

NUM_EXPRESSIONS = schema.NUM_EXPRESSIONS

FIELDS = (
  "image",
  "image/path",
  "subject",
  "task",
  "activity_text",
  "frame",
  "au",
  "au_intensity",
  "expression",
  "expression/votes",
  "fold",
  "caption",
)


class DatasetError(ValueError):
  """A structural problem in a user's dataset folder; the message names path (and line)."""

  def __init__(self, path: str | os.PathLike[str], message: str, line: int | None = None):
    where = f"{os.fspath(path)}:{line}" if line is not None else os.fspath(path)
    super().__init__(f"{where}: {message}")
    self.path = os.fspath(path)
    self.line = line


@dataclasses.dataclass
class Skips:
  """Counts of skipped items by reason, with a few example locations per reason."""

  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  max_examples: int = 3

  def add(self, reason: str, where: str = "") -> None:
    self.counts[reason] += 1
    ex = self.examples.setdefault(reason, [])
    if where and len(ex) < self.max_examples:
      ex.append(where)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def report(self) -> str:
    if not self.counts:
      return "no items skipped"
    lines = [f"skipped {self.total} item(s):"]
    for reason, n in sorted(self.counts.items()):
      ex = ", ".join(self.examples.get(reason, []))
      lines.append(f"  {n:8d}  {reason}" + (f"  (e.g. {ex})" if ex else ""))
    return "\n".join(lines)

  def log(self, name: str) -> None:
    if self.counts:
      logging.warning("%s: %s", name, self.report())


@dataclasses.dataclass
class CaptionStats:
  """Caption counts of the examples a reader yielded: with a caption, and kept with an empty one.

  `empty` counts only rows of a source that has captions (a manifest with a caption column);
  `empty_lines` keeps the first `max_lines` of their line numbers.
  """

  captions: int = 0
  empty: int = 0
  empty_lines: list[int] = dataclasses.field(default_factory=list)
  max_lines: int = 20

  def add(self, caption: str, line: int) -> None:
    if caption:
      self.captions += 1
      return
    self.empty += 1
    if len(self.empty_lines) < self.max_lines:
      self.empty_lines.append(int(line))

  def as_dict(self) -> dict[str, Any]:
    """{'captions': n, 'empty': n, 'empty_lines': [...]}, as stored in metadata['caption_stats']."""
    return {"captions": self.captions, "empty": self.empty, "empty_lines": list(self.empty_lines)}

  def log(self, path: str) -> None:
    """One warning naming `path`, the number of empty captions and their first lines."""
    if self.empty:
      logging.warning(
        "%s: %d row(s) with an empty caption, kept without one (line %s)",
        path,
        self.empty,
        first_lines(self.empty_lines, total=self.empty),
      )


def first_lines(lines: Sequence[int], shown: int = 5, total: int | None = None) -> str:
  """'3, 7, 9' or '3, 7, 9, 12, 15, ...': the first `shown` line numbers, for a message."""
  total = len(lines) if total is None else total
  text = ", ".join(str(n) for n in list(lines)[:shown])
  return text + (", ..." if total > shown else "")


def make_example(
  *,
  image: np.ndarray,
  path: str,
  num_aus: int = 0,
  subject: str = "",
  task: str = "",
  activity_text: str = "",
  frame: int = -1,
  au: Sequence[int] | np.ndarray | None = None,
  au_intensity: Sequence[int] | np.ndarray | None = None,
  expression: int = -1,
  votes: Sequence[float] | np.ndarray | None = None,
  fold: int = 0,
  caption: str = "",
  landmarks: np.ndarray | None = None,
  landmark_scheme: str = "",
) -> dict[str, Any]:
  """Builds one example in the common schema, with defaults for what a dataset lacks.

  `landmarks` (float32 [K, 2] or None where the dataset has none for this image) and
  `landmark_scheme` (input_pipeline.align.SCHEMES) are added only when a scheme is given: a
  reader asked for landmarks passes them to the builder's face alignment (not stored).
  """
  au_arr = np.full((num_aus,), -1, np.int8) if au is None else np.asarray(au, np.int8)
  int_arr = (
    np.full((len(au_arr),), -1, np.int8)
    if au_intensity is None
    else np.asarray(au_intensity, np.int8)
  )
  votes_arr = (
    np.zeros((NUM_EXPRESSIONS,), np.float32) if votes is None else np.asarray(votes, np.float32)
  )
  return {
    "image": image,
    "image/path": str(path),
    "subject": subject,
    "task": task,
    "activity_text": activity_text,
    "frame": int(frame),
    "au": au_arr,
    "au_intensity": int_arr,
    "expression": int(expression),
    "expression/votes": votes_arr,
    "fold": int(fold),
    "caption": str(caption),
  } | ({"landmarks": landmarks, "landmark_scheme": landmark_scheme} if landmark_scheme else {})


def decode_image(data: bytes | np.ndarray | str | os.PathLike[str]) -> np.ndarray:
  """Decodes an image file/bytes to uint8 [H, W, 3] RGB. Raises OSError/ValueError if corrupt."""
  if isinstance(data, np.ndarray):
    arr = data
  else:
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    with Image.open(src) as im:
      im.load()  # forces a full decode, so truncated files fail here
      arr = np.asarray(im.convert("RGB"))
  if arr.ndim == 2:
    arr = np.repeat(arr[..., None], 3, axis=-1)
  if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
    raise ValueError(f"unexpected image shape {arr.shape}")
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  return np.ascontiguousarray(arr[..., :3].astype(np.uint8))


def load_image(
  path: str | os.PathLike[str] | bytes, skips: Skips | None = None, *, where: str | None = None
) -> np.ndarray | None:
  """Reads an image; on a missing/corrupt/non-image file counts a skip and returns None.

  `path` may also be the encoded bytes of an image (e.g. a zip member); `where` then names it
  in skips and errors.
  """
  where = (
    where
    if where is not None
    else ("<bytes>" if isinstance(path, (bytes, bytearray)) else os.fspath(path))
  )
  try:
    return decode_image(path)
  except FileNotFoundError:
    if skips is None:
      raise
    skips.add("image file missing", where)
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    if skips is None:
      raise DatasetError(where, f"cannot decode image: {e}") from None
    skips.add("unreadable or non-image file", where)
  return None


SKIP_NON_UTF8 = "non-UTF-8 line"
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def text_lines(
  path: str | os.PathLike[str], bad_lines: list[int] | None = None
) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, decoded line with its ending) of a UTF-8 text file.

  The file is read as bytes and decoded one line at a time, so one bad line costs only that
  line. Lines end at \\n, \\r\\n or \\r (as with Python's universal newlines); a UTF-8 BOM at
  the start is dropped. A line that is not valid UTF-8 raises DatasetError naming path and line,
  or, where `bad_lines` is a list, is skipped and its line number appended to it. A file that
  starts with a UTF-16 BOM is a DatasetError (save it as UTF-8).
  """
  path = os.fspath(path)
  line = 0
  first = True
  with open(path, "rb") as f:
    for chunk in f:  # split at b"\n" only; \r and \r\n below
      if first:
        first = False
        if chunk.startswith(_UTF16_BOMS):
          raise DatasetError(path, "file is UTF-16 text; save it as UTF-8", 1)
        if chunk.startswith(_UTF8_BOM):
          chunk = chunk[len(_UTF8_BOM) :]
      for raw in chunk.splitlines(keepends=True):
        line += 1
        try:
          text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          if bad_lines is None:
            raise DatasetError(
              path,
              f"not UTF-8 text (byte {raw[e.start]:#04x} at byte {e.start + 1} of the line); "
              "save the file as UTF-8",
              line,
            ) from None
          bad_lines.append(line)
          continue
        yield line, text


def read_csv(
  path: str | os.PathLike[str],
  *,
  header: bool = True,
  delimiter: str = ",",
  bad_lines: list[int] | None = None,
) -> Iterator[tuple[int, list[str] | dict[str, str]]]:
  """Yields (1-based line number, row) from a CSV file; CRLF, a UTF-8 BOM and blank lines are fine.

  With header=True rows are dicts keyed by the stripped header names; a row with a different
  number of fields than the header raises DatasetError naming the line. The line number is that
  of the row's last line (a quoted field may span lines). A line that is not UTF-8 is a
  DatasetError, or, where `bad_lines` is a list, skipped with its number appended to it (see
  `text_lines`); a header that is not UTF-8 is always a DatasetError.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DatasetError(path, "file not found")
  current = [0]
  names: list[str] | None = None
  n_bad = len(bad_lines) if bad_lines is not None else 0  # the caller's list may hold others

  def header_is_bad() -> bool:
    return header and names is None and bad_lines is not None and len(bad_lines) > n_bad

  def header_not_utf8() -> DatasetError:
    return DatasetError(
      path, "header row is not UTF-8 text; save the file as UTF-8", bad_lines[n_bad]
    )

  def lines() -> Iterator[str]:
    for line, text in text_lines(path, bad_lines):
      if header_is_bad():
        raise header_not_utf8()
      current[0] = line
      yield text

  reader = csv.reader(lines(), delimiter=delimiter)
  for row in reader:
    lineno = current[0]
    if not row or all(not c.strip() for c in row):
      continue
    row = [c.strip() for c in row]
    if header and names is None:
      names = row
      continue
    if header:
      if len(row) != len(names):
        raise DatasetError(
          path, f"expected {len(names)} fields as in the header, got {len(row)}", lineno
        )
      yield lineno, dict(zip(names, row))
    else:
      yield lineno, row
  if header and names is None:
    if header_is_bad():
      raise header_not_utf8()
    raise DatasetError(path, "empty file (no header row)")


def parse_int(value: str, path: str, line: int, what: str) -> int:
  """int(value) or a DatasetError naming path, line and what the field was."""
  try:
    return int(value)
  except ValueError:
    pass
  try:
    number = float(value)  # "1.0" as written by some spreadsheet exports
  except ValueError:
    number = float("nan")
  if number.is_integer():
    return int(number)
  raise DatasetError(path, f"{what}: expected an integer, got {value!r}", line)


# ----------------------------------------------------------------------------------------------
# Folder and frame helpers shared by the video (AU) readers.
# ----------------------------------------------------------------------------------------------

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_FRAME_NAME_RE = re.compile(r"^(\d+)(\.[A-Za-z]+)$")
_AU_HEADER_RE = re.compile(r"^(?:au)?0*(\d+)$", re.IGNORECASE)

# Skip reasons used by several readers (one spelling, so reports add up).
SKIP_ROW_WITHOUT_IMAGE = "label row without image"
SKIP_IMAGE_WITHOUT_ROW = "image without label row"
SKIP_NON_FRAME_FILE = "non-frame file in frame folder"
SKIP_DUPLICATE_FRAME = "duplicate frame (same number under two names)"


def natural_key(name: str) -> tuple[Any, ...]:
  """Sort key ordering embedded numbers numerically: T2 < T10, SN2 < SN10."""
  return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def require_dir(path: str | os.PathLike[str], expected: str) -> str:
  """Returns `path` if it is a folder, else a DatasetError saying what was expected there."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    what = "is not a folder" if os.path.exists(path) else "folder not found"
    raise DatasetError(path, f"{what}; expected {expected}")
  return path


def index_frames(
  names: Iterable[str], where: str, skips: Skips, exts: Sequence[str] = IMAGE_EXTS
) -> dict[int, str]:
  """Maps frame number -> file name for names `<digits><ext>` (zero-padded or not).

  Hidden files (".DS_Store") are ignored; any other name is counted as a non-frame file. When
  one number appears under two names (`732.jpg` and `0732.jpg`), the shortest name wins (then
  the alphabetically first) and the other is counted as a duplicate frame.

  Args:
    names: file names (no folders) found in one frame folder.
    where: the folder (or "archive.zip:folder/"), used in skip examples.
    skips: where problems are counted.
    exts: accepted extensions, lower case with the dot.
  """
  by_number: dict[int, list[str]] = {}
  exts = tuple(e.lower() for e in exts)
  for name in names:
    if name.startswith("."):
      continue
    m = _FRAME_NAME_RE.match(name)
    if not m or m.group(2).lower() not in exts:
      skips.add(SKIP_NON_FRAME_FILE, f"{where.rstrip('/')}/{name}")
      continue
    by_number.setdefault(int(m.group(1)), []).append(name)
  out = {}
  for number, cands in by_number.items():
    cands.sort(key=lambda n: (len(n), n))
    out[number] = cands[0]
    for extra in cands[1:]:
      skips.add(SKIP_DUPLICATE_FRAME, f"{where.rstrip('/')}/{extra}")
  return dict(sorted(out.items()))


def list_frames(
  folder: str | os.PathLike[str], skips: Skips, exts: Sequence[str] = IMAGE_EXTS
) -> dict[int, str]:
  """Frame number -> full path of the images `<n>.<ext>` in `folder` (see `index_frames`)."""
  folder = os.fspath(folder)
  names = [e.name for e in os.scandir(folder) if not e.is_dir()]
  return {
    n: os.path.join(folder, name) for n, name in index_frames(names, folder, skips, exts).items()
  }


def au_columns(
  header: Sequence[str], path: str, line: int, aus: Sequence[int], *, frame_column: str = "0"
) -> tuple[int, dict[int, int]]:
  """Locates the frame column and each needed AU column of an AU-coding CSV by header name.

  Header names may be `12`, `AU12` or `AU012` (any case); unknown names are ignored.

  Returns:
    (index of the frame column, {au: column index} for every AU in `aus`).
  Raises:
    DatasetError naming path, line and the missing/duplicated column.
  """
  frame_col = None
  cols: dict[int, int] = {}
  for i, name in enumerate(header):
    if name == frame_column and frame_col is None:
      frame_col = i
      continue
    m = _AU_HEADER_RE.match(name)
    if not m:
      continue
    au = int(m.group(1))
    if au in cols:
      raise DatasetError(
        path, f"AU{au} appears twice in the header ({header[cols[au]]!r} and {name!r})", line
      )
    cols[au] = i
  if frame_col is None:
    raise DatasetError(path, f"header has no frame-number column {frame_column!r}", line)
  missing = [au for au in aus if au not in cols]
  if missing:
    raise DatasetError(
      path, "header lacks the column(s) of evaluated " + ", ".join(f"AU{a}" for a in missing), line
    )
  return frame_col, {au: cols[au] for au in aus}


def finish(name: str, skips: Skips, count: int, root: str, expected: str) -> None:
  """Logs skips at the end of a reader; DatasetError if nothing at all was yielded."""
  skips.log(name)
  if count == 0:
    raise DatasetError(root, f"no usable examples found; expected {expected}. " + skips.report())
