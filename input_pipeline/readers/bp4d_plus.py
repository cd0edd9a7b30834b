"""BP4D+ (MMSE): AU-coded segments of tasks T1, T6, T7, T8; frames zipped or unpacked.

Layout (root = the folder holding `2D+3D/` and `AUCoding/`):
  <root>/2D+3D/<subject>.zip                 members <subject>/<task>/<frame>.jpg
  <root>/<subject>/<task>/<frame>.jpg        the same frames unpacked (used when both exist)
  <root>/AUCoding/AU_OCC/<subject>_<task>.csv   as BP4D: header, column `0` = frame number
                                                (1-based), AU columns by header name
  <root>/AUCoding/AU_INT/AU06/<subject>_<task>_AU06.csv   optional, as BP4D

Only frames listed in an AU_OCC file are yielded (the coded segment); the other frames of a
coded task are counted as uncoded, and uncoded tasks (T2-T5, T9, T10) are not read at all.
The CSV numbers frames from 1. Image names are matched to it directly, unless the session's
images start at 0 (`0.jpg` exists), in which case CSV frame n is image n-1 (`frame_offset`
overrides the detection). A coded task whose AU_OCC file is missing is counted, not fatal.

No community fold list exists, so subjects are split by `folds.seeded_parts` (seeded,
subject-exclusive) over the 140 released subject ids plus any other found subject; with the
defaults (3 parts, seed 0) and the released ids that is `PARTS`. The split is logged.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import zipfile
from typing import Any, Iterator

from input_pipeline import activities as activities_lib
from input_pipeline.readers import bp4d
from input_pipeline.readers import common
from input_pipeline.readers import folds as folds_lib
from input_pipeline.readers import landmarks as landmarks_lib

NAME = "bp4d_plus"
AUS: tuple[int, ...] = bp4d.AUS
CODED_TASKS: tuple[str, ...] = ("T1", "T6", "T7", "T8")
ALL_SUBJECTS: tuple[str, ...] = tuple(f"F{i:03d}" for i in range(1, 83)) + tuple(
  f"M{i:03d}" for i in range(1, 59)
)
ZIP_DIR = "2D+3D"
OCC_DIR = bp4d.OCC_DIR

SKIP_UNCODED_FRAME = "frame outside the AU-coded segment"
SKIP_CODED_TASK_WITHOUT_LABELS = "coded task without AU_OCC file"
_ZIP_NAME_RE = re.compile(r"^(.+)\.zip$", re.IGNORECASE)


@functools.lru_cache(maxsize=16)
def _parts(subjects: tuple[str, ...], k: int, seed: int) -> folds_lib.Parts:
  return folds_lib.seeded_parts(subjects, k, seed)


def parts(found: tuple[str, ...] = (), *, folds: int = 3, fold_seed: int = 0) -> folds_lib.Parts:
  """Seeded subject-exclusive parts over the released subjects plus `found` ones."""
  return _parts(tuple(sorted(set(ALL_SUBJECTS) | set(found))), folds, fold_seed)


PARTS: dict[int, tuple[str, ...]] = parts()


def tasks() -> list[str]:
  """All task ids with an activity text (T1..T10); only CODED_TASKS carry AU codes."""
  return sorted(activities_lib.activities(NAME), key=common.natural_key)


def fold_of(subject: str, *, folds: int = 3, fold_seed: int = 0) -> int:
  """The subject's part (1..folds) in the seeded split (the subject is added if not released)."""
  return folds_lib.part_of(parts((subject,), folds=folds, fold_seed=fold_seed), subject)


def _sources(root: str) -> dict[str, tuple[str, str]]:
  """subject -> ("dir", folder) or ("zip", archive); an unpacked folder wins over a zip."""
  out: dict[str, tuple[str, str]] = {}
  zip_dir = os.path.join(root, ZIP_DIR)
  if os.path.isdir(zip_dir):
    for entry in os.scandir(zip_dir):
      m = _ZIP_NAME_RE.match(entry.name)
      if m and entry.is_file():
        out[m.group(1)] = ("zip", entry.path)
  for subject in bp4d.subject_dirs(root):
    out[subject] = ("dir", os.path.join(root, subject))
  return dict(sorted(out.items(), key=lambda kv: common.natural_key(kv[0])))


def _check_root(root: str | os.PathLike[str]) -> tuple[str, dict[str, tuple[str, str]]]:
  root = common.require_dir(
    root, "the BP4D+ folder holding 2D+3D/<subject>.zip (or <subject>/<task>/) and AUCoding/AU_OCC/"
  )
  common.require_dir(os.path.join(root, OCC_DIR), "AU occurrence files <subject>_<task>.csv")
  sources = _sources(root)
  if not sources:
    raise common.DatasetError(
      root, "no subjects found; expected 2D+3D/<subject>.zip or <subject>/<task>/<frame>.jpg"
    )
  return root, sources


def subjects(root: str | os.PathLike[str]) -> list[str]:
  """Subject ids found under root (zips or folders), in natural order."""
  return list(_check_root(root)[1])


def _zip_frames(
  archive: zipfile.ZipFile, where: str, skips: common.Skips
) -> dict[str, dict[int, str]]:
  """task -> {frame number -> member name} for members `[...]/<task>/<frame>.<ext>`."""
  by_task: dict[str, dict[str, str]] = {}
  for info in archive.infolist():
    if info.is_dir():
      continue
    parts_ = info.filename.split("/")
    if len(parts_) >= 2 and bp4d.TASK_RE.match(parts_[-2]) and parts_[-2] in CODED_TASKS:
      by_task.setdefault(parts_[-2], {})[parts_[-1]] = info.filename
  out = {}
  for task, members in by_task.items():
    numbers = common.index_frames(members, f"{where}:{task}", skips)
    out[task] = {n: members[name] for n, name in numbers.items()}
  return out


def read(
  root: str | os.PathLike[str],
  *,
  skips: common.Skips | None = None,
  folds: int = 3,
  fold_seed: int = 0,
  intensity: bool = True,
  frame_offset: int | None = None,
  landmarks: bool = False,
) -> Iterator[dict[str, Any]]:
  """Yields the AU-coded BP4D+ frames in the common schema (subjects, tasks, frames sorted).

  Args:
    root: the BP4D+ folder (see the module docstring).
    skips: collects counted per-item skips (a fresh one, logged at the end, if None).
    folds: number of seeded subject-exclusive parts; `fold` holds the part (1..folds).
    fold_seed: seed of that split.
    intensity: fill `au_intensity` for AU 6, 10, 12, 14, 17 from AUCoding/AU_INT if present.
    frame_offset: image number = CSV frame + offset; None detects it per session (-1 when a
      `0.jpg` image exists, else 0).
    landmarks: add each frame's 49 tracked points from `2DFeatures/<subject>_<task>.mat`, as
      in BP4D (element i of `fit` is the session's i-th image; None where tracking failed).
  """
  root, sources = _check_root(root)
  if landmarks:
    common.require_dir(
      os.path.join(root, landmarks_lib.BP4D_DIR),
      "BP4D+'s tracked landmarks <subject>_<task>.mat (for face alignment; without them, "
      "prepare with --align=detector or --align=none)",
    )
  split = parts(tuple(sources), folds=folds, fold_seed=fold_seed)
  folds_lib.log_parts(NAME, split)
  return _iterate(
    root,
    sources,
    split,
    common.Skips() if skips is None else skips,
    intensity,
    frame_offset,
    landmarks,
  )


def _iterate(
  root: str,
  sources: dict[str, tuple[str, str]],
  split: folds_lib.Parts,
  skips: common.Skips,
  intensity: bool,
  frame_offset: int | None,
  landmarks: bool,
) -> Iterator[dict[str, Any]]:
  count = 0
  for subject, (kind, src) in sources.items():
    fold = folds_lib.part_of(split, subject)
    archive = None
    try:
      archive = zipfile.ZipFile(src) if kind == "zip" else None
      if archive is not None:
        frames_by_task = _zip_frames(archive, src, skips)
      else:
        frames_by_task = {
          t: common.list_frames(os.path.join(src, t), skips)
          for t in bp4d.task_dirs(src)
          if t in CODED_TASKS
        }
      for task in CODED_TASKS:
        images = frames_by_task.get(task, {})
        label_file = bp4d.occ_path(root, subject, task)
        where = f"{src}:{subject}/{task}" if archive is not None else os.path.join(src, task)
        if not os.path.isfile(label_file):
          if images:
            skips.add(SKIP_CODED_TASK_WITHOUT_LABELS, label_file)
          continue
        text = bp4d.activity(NAME, task, where)
        labels = bp4d.read_session_labels(root, subject, task, skips, intensity=intensity)
        offset = frame_offset if frame_offset is not None else (-1 if 0 in images else 0)
        points = {}
        if landmarks:  # keyed by image number; labels by CSV frame (= image number - offset)
          points = bp4d.session_landmarks(root, subject, task, images, skips)
        pairs = bp4d.match_frames(
          labels,
          images,
          label_file,
          where,
          skips,
          image_without_row=SKIP_UNCODED_FRAME,
          image_number=lambda f, o=offset: f + o,
        )
        for frame, ref in pairs:
          if archive is not None:
            path = f"{src}:{ref}"
            image = common.load_image(archive.read(ref), skips, where=path)
          else:
            path = ref
            image = common.load_image(ref, skips)
          if image is None:
            continue
          au, au_int = labels[frame]
          count += 1
          lm = {}
          if landmarks:
            lm = {"landmarks": points.get(frame + offset), "landmark_scheme": "bp4d49"}
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
    except zipfile.BadZipFile as e:
      raise common.DatasetError(src, f"not a readable zip archive: {e}") from None
    finally:
      if archive is not None:
        archive.close()
  logging.info("%s: %d coded frames", NAME, count)
  common.finish(
    NAME, skips, count, root, "frames of T1/T6/T7/T8 listed in AUCoding/AU_OCC/<subject>_<task>.csv"
  )
