"""DISFA: per-AU intensity files + extracted frames, 8 evaluated AUs, 3 folds, no activities.

Layout (root = the folder holding `ActionUnit_Labels/` and the frames or the videos):
  <root>/ActionUnit_Labels/<SN>/<SN>_au<N>.txt   one `frameIdx,intensity` line per frame, 0-5
  <root>/<SN>/<t>.png (or .jpg)                   frames extracted from the videos, 0-based
  <root>/Videos_LeftCamera/LeftVideo<SN>_comp.avi  or the videos as DISFA ships them
  <root>/Videos_RightCamera/RightVideo<SN>_comp.avi   (camera='right'; names matched without case)

Videos: a subject without a frame folder (or any subject, with camera='right') is read from its
video. The frames are decoded with PyAV (it bundles ffmpeg) and written once as
`<frames_dir>/<SN>/<t>.jpg` (quality 95; `frames_dir` defaults to `<root>/Frames_<Camera>Camera`,
the builder passes a folder under the data dir); a subject whose extraction finished (its
`.complete` file) is not decoded again, and an interrupted one resumes where its frames stop.
A video whose frame count differs from the label lines is reported with both numbers (a counted
skip; the frames beyond the shorter of the two are skipped and counted as usual).

As in ME-GraphAU, the t-th line (0-based) of every label file is paired with image t, whatever
number its frameIdx column carries (the files count from 1). Occurrence = intensity >= 2 (the
`occurrence_threshold`); `au_intensity` keeps the 0-5 value. Only the evaluated AUs' files are
read; each must exist and all must have the same number of lines. An intensity outside 0..5 is a
DatasetError naming file and line. Per item, counted in `Skips`: label lines without image,
images beyond the label lines, unreadable images, non-frame files, a subject without frames.

Landmarks (`landmarks=True`, for the builders' face alignment): the 66 AAM points DISFA ships for
the left camera, `Landmark_Points/<SN>/tmp_frame_lm/<SN>_<t>_lm.mat` (or `l0<t>_lm.mat`),
variable `pts`, t the 0-based frame (readers.landmarks); a frame without a file gets None.

Subjects are the folders of ActionUnit_Labels/. `fold` = the subject's part in the ME-GraphAU
3-fold split (folds.DISFA_PARTS; 0 for a subject in no part).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Iterator, Sequence

import numpy as np

from input_pipeline.readers import common
from input_pipeline.readers import folds
from input_pipeline.readers import landmarks as landmarks_lib

NAME = "disfa"
LANDMARK_SCHEME = "disfa66"
AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)
ALL_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
PARTS: dict[int, tuple[str, ...]] = folds.DISFA_PARTS
LABEL_DIR = "ActionUnit_Labels"
CAMERAS = ("left", "right")
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv")
COMPLETE = ".complete"  # written into a subject's extracted-frames folder when it is whole

SKIP_SUBJECT_WITHOUT_FRAMES = "subject without frame folder or video"
SKIP_VIDEO_FRAME_COUNT = "video frame count differs from the label lines"


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


def video_dir(root: str, camera: str) -> str:
  return os.path.join(root, f"Videos_{camera.capitalize()}Camera")


def find_video(root: str, subject: str, camera: str) -> str | None:
  """`Videos_<Camera>Camera/<Camera>Video<SN>[_comp].<ext>` (case-insensitive), or None."""
  folder = video_dir(root, camera)
  if not os.path.isdir(folder):
    return None
  pattern = re.compile(rf"{camera}video{subject.lower()}(_comp)?$")
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() in VIDEO_EXTS and pattern.match(stem.lower()):
      return os.path.join(folder, name)
  return None


def extract_frames(video: str, out_dir: str, *, progress: bool = True) -> int:
  """Decodes `video` into `out_dir/<t>.jpg` (0-based, JPEG quality 95); returns the frame count.

  Resumable: a finished folder (its `.complete` file, holding the count) is not decoded again;
  after an interruption, frames already written are kept and the rest are added. Each frame is
  written under a temporary name and renamed, so a frame file is never half-written.
  """
  import av  # pylint: disable=g-import-not-at-top  (only DISFA's videos need it)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top

  done = os.path.join(out_dir, COMPLETE)
  if os.path.isfile(done):
    with open(done, encoding="utf-8") as f:
      return int(json.load(f)["frames"])
  os.makedirs(out_dir, exist_ok=True)
  n = 0
  try:
    with av.open(video) as container:
      if not container.streams.video:
        raise common.DatasetError(video, "has no video stream")
      total = container.streams.video[0].frames or None
      bar = tqdm(
        total=total,
        unit=" frames",
        desc=f"Extracting {os.path.basename(video)}",
        disable=not progress,
        leave=False,
      )
      for frame in container.decode(video=0):
        path = os.path.join(out_dir, f"{n}.jpg")
        if not os.path.isfile(path):
          tmp = path + ".tmp"
          Image.fromarray(frame.to_ndarray(format="rgb24")).save(tmp, format="JPEG", quality=95)
          os.replace(tmp, path)
        n += 1
        bar.update(1)
      bar.close()
  except common.DatasetError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (av raises its own error kinds)
    raise common.DatasetError(
      video, f"cannot decode the video after {n} frames ({type(e).__name__}: {e})"
    ) from None
  if n == 0:
    raise common.DatasetError(video, "the video has no frames")
  with open(done + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"frames": n, "video": os.path.abspath(video)}, f)
  os.replace(done + ".tmp", done)
  return n


def read(
  root: str | os.PathLike[str],
  *,
  skips: common.Skips | None = None,
  image_ext: str | None = None,
  occurrence_threshold: int = 2,
  camera: str = "left",
  frames_dir: str | os.PathLike[str] | None = None,
  progress: bool = True,
  landmarks: bool = False,
) -> Iterator[dict[str, Any]]:
  """Yields every labelled DISFA frame in the common schema (subjects, frames sorted).

  Args:
    root: the DISFA folder (see the module docstring).
    skips: collects counted per-item skips (a fresh one, logged at the end, if None).
    image_ext: "png" or "jpg" to accept only that extension; None accepts png/jpg/jpeg.
    occurrence_threshold: an AU occurs when its intensity is >= this (1..5).
    camera: 'left' (frame folders, else Videos_LeftCamera) or 'right' (Videos_RightCamera).
    frames_dir: where frames extracted from videos go (default <root>/Frames_<Camera>Camera).
    progress: a progress bar per extracted video.
    landmarks: add each frame's 66 points from Landmark_Points/ (left camera only).
  """
  if camera not in CAMERAS:
    raise ValueError(f"camera must be one of {CAMERAS}, got {camera!r}")
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
  if landmarks:
    if camera != "left":
      raise ValueError(
        "DISFA's Landmark_Points are of the left camera; align the right camera's frames "
        "with the detector (prepare --align=detector) or not at all (--align=none)"
      )
    common.require_dir(
      os.path.join(root, landmarks_lib.DISFA_DIR),
      "DISFA's landmark files <SN>/tmp_frame_lm/<SN>_<t>_lm.mat (for face alignment; without "
      "them, prepare with --align=detector or --align=none)",
    )
  if frames_dir is None:
    frames_dir = os.path.join(root, f"Frames_{camera.capitalize()}Camera")
  videos = _Videos(root, camera, os.fspath(frames_dir), progress)
  return _iterate(
    root, common.Skips() if skips is None else skips, exts, occurrence_threshold, videos, landmarks
  )


@dataclasses.dataclass(frozen=True)
class _Videos:
  root: str
  camera: str
  frames_dir: str
  progress: bool

  def frame_folder(self, subject: str, num_labels: int, skips: common.Skips) -> str | None:
    """The subject's frame folder: extracted frames, else (from its video) extracted now."""
    folder = os.path.join(self.root, subject)
    if self.camera == "left" and os.path.isdir(folder):
      return folder
    video = find_video(self.root, subject, self.camera)
    if video is None:
      where = f"{folder} (or {video_dir(self.root, self.camera)}/{self.camera.capitalize()}Video{subject}_comp.avi)"
      skips.add(SKIP_SUBJECT_WITHOUT_FRAMES, where)
      return None
    out = os.path.join(self.frames_dir, subject)
    n = extract_frames(video, out, progress=self.progress)
    if n != num_labels:
      msg = f"{video}: {n} video frames, {num_labels} label lines in {LABEL_DIR}/{subject}"
      logging.warning("DISFA %s", msg)
      skips.add(SKIP_VIDEO_FRAME_COUNT, msg)
    return out


def _iterate(
  root: str,
  skips: common.Skips,
  exts: tuple[str, ...],
  threshold: int,
  videos: _Videos,
  landmarks: bool,
) -> Iterator[dict[str, Any]]:
  count = 0
  for subject in subjects(root):
    intensity = read_subject_labels(root, subject)
    occurrence = (intensity >= threshold).astype(np.int8)
    frame_dir = videos.frame_folder(subject, len(intensity), skips)
    if frame_dir is None:
      continue
    images = common.list_frames(frame_dir, skips, exts)
    fold = fold_of(subject)
    where = os.path.join(root, LABEL_DIR, subject)
    lm_files = landmarks_lib.disfa_files(root, subject) if landmarks else {}
    for t in range(len(intensity)):
      if t not in images:
        skips.add(common.SKIP_ROW_WITHOUT_IMAGE, f"{where} line {t + 1}")
        continue
      image = common.load_image(images[t], skips)
      if image is None:
        continue
      count += 1
      lm = {}
      if landmarks:
        points = landmarks_lib.read_disfa(lm_files[t]) if t in lm_files else None
        lm = {"landmarks": points, "landmark_scheme": LANDMARK_SCHEME}
      yield common.make_example(
        image=image,
        path=images[t],
        subject=subject,
        frame=t,
        au=occurrence[t],
        au_intensity=intensity[t],
        fold=fold,
        **lm,
      )
    for t in images:
      if t >= len(intensity):
        skips.add(common.SKIP_IMAGE_WITHOUT_ROW, images[t])
  common.finish(
    NAME,
    skips,
    count,
    root,
    "<SN>/<t>.png frames or Videos_LeftCamera/LeftVideo<SN>_comp.avi for the lines of "
    "ActionUnit_Labels/<SN>/<SN>_au<N>.txt",
  )
