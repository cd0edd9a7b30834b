"""BP4D-Spontaneous: frames + AU occurrence CSVs (+ optional AU intensity), 8 tasks, 3 folds.

Layout (root = the folder holding the subject folders and `AUCoding/`):
  <root>/<subject>/<task>/<frame>.jpg                     frames, `732.jpg` or `0732.jpg`
  <root>/AUCoding/AU_OCC/<subject>_<task>.csv             header row; column `0` = frame number,
                                                          other columns named by AU number;
                                                          codes 0 absent, 1 present, 9 unknown
  <root>/AUCoding/AU_INT/AU06/<subject>_<task>_AU06.csv   optional; no header, `frame,intensity`
                                                          (0-5, 9 unknown) for AU 6, 10, 12, 14, 17

AU columns are found by header name, never by position. Code 9 (and intensity 9) becomes -1;
any other code is a DatasetError naming the file and line. A task folder without its AU_OCC file
is a DatasetError (every BP4D session is coded). Per item, counted in `Skips`: CSV rows without
an image, images without a CSV row, unreadable images, non-frame files, a frame number present
under two names (the unpadded name is kept), label files without a frame folder.

Subjects are the folders of `<root>` that hold `T<n>` task folders. `fold` = the subject's part
in the ME-GraphAU/JAA-Net 3-fold split (folds.BP4D_PARTS; 0 for a subject in no part).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from input_pipeline import activities as activities_lib
from input_pipeline.readers import common
from input_pipeline.readers import folds
from input_pipeline.readers import landmarks as landmarks_lib

NAME = "bp4d"
AUS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
INTENSITY_AUS: tuple[int, ...] = (6, 10, 12, 14, 17)
PARTS: dict[int, tuple[str, ...]] = folds.BP4D_PARTS
OCC_DIR = os.path.join("AUCoding", "AU_OCC")
INT_DIR = os.path.join("AUCoding", "AU_INT")

TASK_RE = re.compile(r"^T\d+$")
_NON_SUBJECT_DIRS = frozenset({"AUCoding", "2D+3D"})
_OCC_NAME_RE = re.compile(r"^(.+)_(T\d+)\.csv$", re.IGNORECASE)

SKIP_INTENSITY_FILE_MISSING = "AU intensity file missing (intensity left -1)"
SKIP_LABELS_WITHOUT_FRAMES = "label file without frame folder"
SKIP_LANDMARK_FILE_MISSING = "session without 2DFeatures landmark file (its frames have none)"
LANDMARK_SCHEME = "bp4d49"

# Labels of one session: frame -> (occurrence int8 [J], intensity int8 [J]).
SessionLabels = dict[int, tuple[np.ndarray, np.ndarray]]


def tasks() -> list[str]:
  """Task ids with an activity text (input_pipeline.activities), in natural order (T1..T8)."""
  return sorted(activities_lib.activities(NAME), key=common.natural_key)


def fold_of(subject: str) -> int:
  """The subject's part (1..3) in the standard BP4D split, 0 if it is in none."""
  return folds.part_of(PARTS, subject)


def occ_path(root: str, subject: str, task: str) -> str:
  return os.path.join(root, OCC_DIR, f"{subject}_{task}.csv")


def int_path(root: str, subject: str, task: str, au: int) -> str:
  return os.path.join(root, INT_DIR, f"AU{au:02d}", f"{subject}_{task}_AU{au:02d}.csv")


# ----------------------------------------------------------------------------------------------
# Label files.
# ----------------------------------------------------------------------------------------------


def read_occ(path: str, aus: Sequence[int] = AUS) -> dict[int, np.ndarray]:
  """Reads an AU_OCC CSV: frame number -> occurrence int8 [len(aus)] in {-1, 0, 1}.

  Columns are located by header name; 9 becomes -1; other codes, a missing AU column or a frame
  listed twice raise DatasetError with path and line.
  """
  rows = common.read_csv(path, header=False)
  try:
    header_line, header = next(rows)
  except StopIteration:
    raise common.DatasetError(path, "empty file (no header row)") from None
  frame_col, cols = common.au_columns(header, path, header_line, aus)
  out: dict[int, np.ndarray] = {}
  first_line: dict[int, int] = {}
  for line, row in rows:
    if len(row) != len(header):
      raise common.DatasetError(
        path, f"expected {len(header)} fields as in the header, got {len(row)}", line
      )
    frame = common.parse_int(row[frame_col], path, line, "frame number")
    if frame in out:
      raise common.DatasetError(
        path, f"frame {frame} listed twice (first on line {first_line[frame]})", line
      )
    codes = np.empty((len(aus),), np.int8)
    for j, au in enumerate(aus):
      value = common.parse_int(row[cols[au]], path, line, f"AU{au}")
      if value in (0, 1):
        codes[j] = value
      elif value == 9:
        codes[j] = -1
      else:
        raise common.DatasetError(
          path, f"AU{au} code {value} is not 0 (absent), 1 (present) or 9 (unknown)", line
        )
    out[frame] = codes
    first_line[frame] = line
  return out


def read_intensity(path: str) -> dict[int, int]:
  """Reads an AU_INT file (no header, `frame,intensity`): frame -> 0..5, or -1 for code 9."""
  out: dict[int, int] = {}
  for line, row in common.read_csv(path, header=False):
    if len(row) < 2:
      raise common.DatasetError(path, f"expected 'frame,intensity', got {','.join(row)!r}", line)
    frame = common.parse_int(row[0], path, line, "frame number")
    value = common.parse_int(row[1], path, line, "intensity")
    if value == 9:
      value = -1
    elif not 0 <= value <= 5:
      raise common.DatasetError(path, f"intensity {value} is not in 0..5 (or 9 = unknown)", line)
    if frame in out:
      raise common.DatasetError(path, f"frame {frame} listed twice", line)
    out[frame] = value
  return out


def read_session_labels(
  root: str,
  subject: str,
  task: str,
  skips: common.Skips,
  *,
  aus: Sequence[int] = AUS,
  intensity: bool = True,
) -> SessionLabels:
  """Occurrence (and, if present and asked for, intensity) of one session, by frame number."""
  occ = read_occ(occ_path(root, subject, task), aus)
  ints = np.full((len(occ), len(aus)), -1, np.int8)
  frames = list(occ)
  if intensity and os.path.isdir(os.path.join(root, INT_DIR)):
    row_of = {f: i for i, f in enumerate(frames)}
    for au in INTENSITY_AUS:
      if au not in aus:
        continue
      path = int_path(root, subject, task, au)
      if not os.path.isfile(path):
        skips.add(SKIP_INTENSITY_FILE_MISSING, path)
        continue
      j = list(aus).index(au)
      for frame, value in read_intensity(path).items():
        if frame in row_of:
          ints[row_of[frame], j] = value
  return {f: (occ[f], ints[i]) for i, f in enumerate(frames)}


# ----------------------------------------------------------------------------------------------
# Shared by the BP4D-style readers.
# ----------------------------------------------------------------------------------------------


def activity(dataset: str, task: str, where: str) -> str:
  """The activity text of a task, or a DatasetError naming the folder holding that task."""
  try:
    return activities_lib.activity_text(dataset, task)
  except KeyError as e:
    raise common.DatasetError(
      where, f"task {task!r} has no activity text in {activities_lib.DEFAULT_PATH} ({e.args[0]})"
    ) from None


def match_frames(
  labels: Mapping[int, Any],
  images: Mapping[int, Any],
  labels_where: str,
  images_where: str,
  skips: common.Skips,
  *,
  image_without_row: str = common.SKIP_IMAGE_WITHOUT_ROW,
  image_number: Callable[[int], int] = lambda f: f,
) -> list[tuple[int, Any]]:
  """Pairs label rows with images; counts rows without image and images without row.

  Args:
    labels: frame number -> labels.
    images: image number -> image reference (path or zip member).
    image_number: maps a label frame number to the number in the image name.
  Returns:
    (frame number, image reference) for frames that have both, in ascending frame order.
  """
  pairs = []
  used = set()
  for frame in sorted(labels):
    number = image_number(frame)
    if number in images:
      pairs.append((frame, images[number]))
      used.add(number)
    else:
      skips.add(common.SKIP_ROW_WITHOUT_IMAGE, f"{labels_where} frame {frame}")
  for number in images:
    if number not in used:
      skips.add(image_without_row, f"{images_where}/{number}")
  return pairs


def subject_dirs(root: str) -> list[str]:
  """Folders of `root` that hold at least one `T<n>` task folder, in natural order."""
  out = []
  for entry in os.scandir(root):
    if not entry.is_dir() or entry.name in _NON_SUBJECT_DIRS or entry.name.startswith("."):
      continue
    if any(e.is_dir() and TASK_RE.match(e.name) for e in os.scandir(entry.path)):
      out.append(entry.name)
  return sorted(out, key=common.natural_key)


def task_dirs(folder: str) -> list[str]:
  return sorted(
    (e.name for e in os.scandir(folder) if e.is_dir() and TASK_RE.match(e.name)),
    key=common.natural_key,
  )


def _check_root(root: str | os.PathLike[str]) -> str:
  root = common.require_dir(
    root, "the BP4D folder holding <subject>/<task>/<frame>.jpg and AUCoding/AU_OCC/"
  )
  common.require_dir(os.path.join(root, OCC_DIR), "AU occurrence files <subject>_<task>.csv")
  if not subject_dirs(root):
    raise common.DatasetError(
      root, "no subject folders found; expected <subject>/<task>/<frame>.jpg (e.g. F001/T1/)"
    )
  return root


def subjects(root: str | os.PathLike[str]) -> list[str]:
  """Subject ids found under root (folders holding task folders), in natural order."""
  return subject_dirs(_check_root(root))


# ----------------------------------------------------------------------------------------------
# Reader.
# ----------------------------------------------------------------------------------------------


def read(
  root: str | os.PathLike[str],
  *,
  skips: common.Skips | None = None,
  intensity: bool = True,
  landmarks: bool = False,
) -> Iterator[dict[str, Any]]:
  """Yields every labelled BP4D frame in the common schema (subjects, tasks, frames sorted).

  Args:
    root: the BP4D folder (see the module docstring).
    skips: collects counted per-item skips (a fresh one, logged at the end, if None).
    intensity: fill `au_intensity` for AU 6, 10, 12, 14, 17 from AUCoding/AU_INT if present.
    landmarks: add each frame's 49 tracked points from `2DFeatures/<subject>_<task>.mat`
      (readers.landmarks; `landmarks` None where tracking failed or the session has no file).
  Raises:
    DatasetError for a missing/empty root, a missing label file, a missing AU column or a code
    out of range (structural problems; raised when iteration reaches them), and for a missing
    2DFeatures/ folder when landmarks are asked for.
  """
  root = _check_root(root)
  if landmarks:
    common.require_dir(
      os.path.join(root, landmarks_lib.BP4D_DIR),
      "BP4D's tracked landmarks <subject>_<task>.mat (for face alignment; without them, "
      "prepare with --align=detector or --align=none)",
    )
  return _iterate(root, common.Skips() if skips is None else skips, intensity, landmarks)


def session_landmarks(
  root: str, subject: str, task: str, frames: Sequence[int], skips: common.Skips
) -> dict[int, np.ndarray | None]:
  """Frame number -> [49, 2] points of a session's 2DFeatures file ({} if it has none)."""
  path = os.path.join(root, landmarks_lib.BP4D_DIR, f"{subject}_{task}.mat")
  if not os.path.isfile(path):
    skips.add(SKIP_LANDMARK_FILE_MISSING, path)
    return {}
  return landmarks_lib.read_bp4d(path, sorted(frames))


def _iterate(
  root: str, skips: common.Skips, intensity: bool, landmarks: bool
) -> Iterator[dict[str, Any]]:
  count = 0
  seen_sessions = set()
  for subject in subject_dirs(root):
    fold = fold_of(subject)
    for task in task_dirs(os.path.join(root, subject)):
      seen_sessions.add((subject, task))
      frame_dir = os.path.join(root, subject, task)
      label_file = occ_path(root, subject, task)
      if not os.path.isfile(label_file):
        raise common.DatasetError(
          label_file,
          f"AU occurrence file missing for frames in {frame_dir}; restore it or "
          "move that task folder away",
        )
      text = activity(NAME, task, frame_dir)
      labels = read_session_labels(root, subject, task, skips, intensity=intensity)
      images = common.list_frames(frame_dir, skips)
      points = session_landmarks(root, subject, task, images, skips) if landmarks else {}
      for frame, path in match_frames(labels, images, label_file, frame_dir, skips):
        image = common.load_image(path, skips)
        if image is None:
          continue
        au, au_int = labels[frame]
        count += 1
        lm = (
          {"landmarks": points.get(frame), "landmark_scheme": LANDMARK_SCHEME} if landmarks else {}
        )
        yield common.make_example(
          image=image,
          path=path,
          subject=subject,
          task=task,
          activity_text=text,
          frame=frame,
          au=au,
          au_intensity=au_int,
          fold=fold,
          **lm,
        )
  for name in sorted(os.listdir(os.path.join(root, OCC_DIR))):
    m = _OCC_NAME_RE.match(name)
    if m and (m.group(1), m.group(2)) not in seen_sessions:
      skips.add(SKIP_LABELS_WITHOUT_FRAMES, os.path.join(root, OCC_DIR, name))
  common.finish(
    NAME,
    skips,
    count,
    root,
    "<subject>/<task>/<frame>.jpg frames matching rows of AUCoding/AU_OCC CSVs",
  )
