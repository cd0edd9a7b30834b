"""Writes SynthFace to disk in the BP4D and RAF-DB layouts (see DATASETS.md).

Layout under ``out``::

  BP4D/<subject>/<task>/<frame>.jpg                      full video frames (2 x 1.5 size px, the
                                                         face moving in them), unpadded numbers
  BP4D/2DFeatures/<subject>_<task>.mat                   49 tracked points per frame (MATLAB v5:
                                                         struct array fit, field pred 49 x 2,
                                                         1-based pixel coordinates)
  BP4D/AUCoding/AU_OCC/<subject>_<task>.csv              header 0,1,2,4,…; codes 0/1/9
  BP4D/AUCoding/AU_INT/AU06/<subject>_<task>_AU06.csv    lines frame,intensity (0–5, 9)
  BP4D/SynthFace_expressions.csv                         subject,task,frame,expression
  DISFA/<SN>/<t>.jpg                                     DISFA-like full frames, 0-based
  DISFA/ActionUnit_Labels/<SN>/<SN>_au<N>.txt            lines frameIdx,intensity (1-based, 0–5)
                                                         for DISFA's 12 AUs
  DISFA/Landmark_Points/<SN>/tmp_frame_lm/<SN>_<t>_lm.mat   66 points `pts` (1-based)
  RAF/basic/Image/aligned/train_00001_aligned.jpg …      test_0001_aligned.jpg …: faces aligned
                                                         to the evaluation template (2.2 on)
  RAF/basic/EmoLabel/list_patition_label.txt             "train_00001.jpg 5" (RAF order 1..7)
  synthface.json                                         version, seed, sizes, counts

AU occurrence is 1 when the FACS intensity code (round half up of the rendered intensity) is ≥ 2
(B or more), as in BP4D/DISFA practice; about 1 % of the cells are coded 9 (unknown). Every file
is a function of the seed only: same seed => byte-identical tree, whatever the worker count.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import multiprocessing
import os
import pathlib
import shutil
import sys
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image
import tqdm

from input_pipeline import align
from input_pipeline.readers import folds
from input_pipeline.synthface import population
from input_pipeline.synthface import render

# 2.x: BP4D-like full frames with 2DFeatures landmarks, a DISFA-like part; 2.2: RAF-like
# "aligned" images aligned to the template of the other sets' crops.
VERSION = "2.2"
INT_AUS: tuple[int, ...] = (6, 10, 12, 14, 17)  # BP4D's intensity-coded AUs.
DISFA_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)  # DISFA's coded AUs.


@dataclasses.dataclass(frozen=True)
class AlignedCrop:
  """A face crop aligned to the template of the evaluation crops, as RAF-DB's `aligned` images
  are: the face is rendered at `oversample` times the crop side and warped from its eyes and
  mouth (`align.align`, the same similarity transform the readers apply to BP4D frames)."""

  margin: float = align.DEFAULT_MARGIN
  oversample: float = 1.5


# One rendering job: [(relative path, identity, AU vector, nuisance, jpeg quality, placement in
# a full frame, an aligned crop, or None for the face square as rendered)].
_Item = tuple[
  str, render.Identity, np.ndarray, render.Nuisance, int, render.Placement | AlignedCrop | None
]


def aligned_face(
  ident: render.Identity,
  aus,
  size: int,
  nuisance: render.Nuisance = render.NO_NUISANCE,
  crop: AlignedCrop = AlignedCrop(),
) -> np.ndarray:
  """uint8 [size, size, 3]: the face of `render_face` aligned to the template at
  `crop.margin`, so its eyes and mouth sit where they sit in every other aligned crop."""
  big = max(size, round(size * crop.oversample))
  img = render.render_face(ident, aus, big, nuisance)
  points = render.face_landmarks(ident, aus, big, nuisance, "bp4d49")
  # face_landmarks is 0-based; the bp4d49 scheme reads MATLAB's 1-based points.
  return align.align(img, points + 1.0, "bp4d49", size, crop.margin)


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
  """[H, W, 3] uint8 -> JPEG bytes (deterministic for a given Pillow/libjpeg)."""
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
  return buf.getvalue()


def _render_job(args: tuple[str, int, list[_Item]]) -> int:
  root, size, items = args
  for rel, ident, aus, nuis, q, place in items:
    path = os.path.join(root, rel)
    if place is None:
      img = render.render_face(ident, aus, size, nuis)
    elif isinstance(place, AlignedCrop):
      img = aligned_face(ident, aus, size, nuis, place)
    else:
      img = render.render_frame(ident, aus, size, nuis, place)[0]
    with open(path, "wb") as f:
      f.write(encode_jpeg(img, q))
  return len(items)


def write_landmarks(path: pathlib.Path, points: Sequence[np.ndarray | None]):
  """BP4D's 2DFeatures file: struct array `fit` (one per frame), field `pred` 49 x 2 (1-based
  MATLAB pixel coordinates; an empty matrix for an untracked frame), MATLAB v5."""
  fit = np.empty((1, len(points)), dtype=[("pred", object)])
  for i, p in enumerate(points):
    fit["pred"][0, i] = np.zeros((0, 0)) if p is None else np.asarray(p, np.float64) + 1.0
  path.parent.mkdir(parents=True, exist_ok=True)
  _savemat(path, {"fit": fit})


def _savemat(path: pathlib.Path, variables: dict[str, Any]):
  """scipy.io.savemat (v5, compressed) with a fixed text header: savemat stamps the time into
  its 116 bytes, and the tree must stay a function of the seed."""
  import scipy.io  # pylint: disable=import-outside-toplevel

  scipy.io.savemat(path, variables, do_compression=True)
  with open(path, "r+b") as f:
    f.write(b"MATLAB 5.0 MAT-file, written by the clef-jax SynthFace generator".ljust(116))


def _write_text(path: pathlib.Path, lines: Iterable[str]):
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for line in lines:
      f.write(line + "\n")


def _check_args(
  subjects: int,
  frames_per_task: int,
  raf_train: int,
  raf_test: int,
  size: int,
  disfa_subjects: int = 0,
  disfa_frames: int = 8,
):
  if not 0 <= disfa_subjects <= sum(len(v) for v in folds.DISFA_PARTS.values()):
    raise ValueError(f"--disfa-subjects must be in 0..27 (DISFA's subjects), got {disfa_subjects}")
  if disfa_subjects and disfa_frames < len(population.TASKS):
    raise ValueError(f"--disfa-frames must be >= {len(population.TASKS)}, got {disfa_frames}")
  if subjects < 1:
    raise ValueError(f"--subjects must be ≥ 1, got {subjects}")
  if frames_per_task < 1:
    raise ValueError(f"--frames-per-task must be ≥ 1, got {frames_per_task}")
  if raf_train < 0 or raf_test < 0:
    raise ValueError(f"--raf-train/--raf-test must be ≥ 0, got {raf_train}/{raf_test}")
  if raf_train > 99999 or raf_test > 9999:
    raise ValueError(
      "RAF-DB names allow at most 99999 train (5 digits) and 9999 test "
      f"(4 digits) images, got {raf_train}/{raf_test}"
    )
  if size < 16:
    raise ValueError(f"--size must be ≥ 16 px, got {size}")


def _plan_bp4d(
  root: pathlib.Path, seed: int, n_subjects: int, frames_per_task: int, size: int
) -> tuple[list[list[_Item]], dict[str, Any]]:
  """Writes the BP4D label files; returns rendering jobs (one per session) and counts."""
  bp = root / "BP4D"
  occ_dir = bp / "AUCoding" / "AU_OCC"
  header = ",".join(["0"] + [str(au) for au in render.AUS])
  expr_lines = ["subject,task,frame,expression"]
  jobs: list[list[_Item]] = []
  n_frames = n_unknown = n_cells = 0
  for si, name in enumerate(population.subject_names(n_subjects)):
    subj = population.make_subject(seed, si, name)
    for task in population.TASKS:
      sess = population.make_session(seed, si, subj, task, frames_per_task)
      occ = population.occurrence_codes(sess.aus)
      inten = population.intensity_codes(sess.aus)
      unk = population.unknown_mask(seed, si, task, occ.shape)
      occ = np.where(unk, 9, occ)
      inten = np.where(unk, 9, inten)
      n_unknown += int(unk.sum())
      n_cells += unk.size
      _write_text(
        occ_dir / f"{name}_{task}.csv",
        [header] + [",".join(map(str, [fr, *row])) for fr, row in zip(sess.frames, occ)],
      )
      for au in INT_AUS:
        col = inten[:, render.AU_INDEX[au]]
        _write_text(
          bp / "AUCoding" / "AU_INT" / f"AU{au:02d}" / f"{name}_{task}_AU{au:02d}.csv",
          [f"{fr},{c}" for fr, c in zip(sess.frames, col)],
        )
      expr_lines += [f"{name},{task},{fr},{e}" for fr, e in zip(sess.frames, sess.expressions)]
      (bp / name / task).mkdir(parents=True, exist_ok=True)
      places = [render.frame_placement(size, h, sess.wall) for h in sess.head]
      write_landmarks(
        bp / "2DFeatures" / f"{name}_{task}.mat",
        [
          render.frame_landmarks(subj.identity, sess.aus[k], size, sess.nuisance[k], places[k])
          for k in range(len(sess.frames))
        ],
      )
      jobs.append(
        [
          (
            f"BP4D/{name}/{task}/{fr}.jpg",
            subj.identity,
            sess.aus[k],
            sess.nuisance[k],
            sess.jpeg_quality,
            places[k],
          )
          for k, fr in enumerate(sess.frames)
        ]
      )
      n_frames += len(sess.frames)
  _write_text(bp / "SynthFace_expressions.csv", expr_lines)
  return jobs, {
    "bp4d_frames": n_frames,
    "bp4d_unknown_cells": n_unknown,
    "bp4d_label_cells": n_cells,
  }


def _plan_disfa(
  root: pathlib.Path, seed: int, n_subjects: int, n_frames: int, size: int
) -> tuple[list[list[_Item]], dict[str, Any]]:
  """Writes the DISFA-like label and landmark files; returns rendering jobs and counts."""
  dis = root / "DISFA"
  jobs: list[list[_Item]] = []
  n_frames_total = 0
  if n_subjects == 0:
    return jobs, {"disfa_images": 0}
  for i, name in enumerate(population.disfa_subject_names(n_subjects, folds.DISFA_PARTS)):
    subj, sess = population.make_disfa_session(seed, i, name, n_frames)
    codes = population.intensity_codes(sess.aus)
    for au in DISFA_AUS:
      col = codes[:, render.AU_INDEX[au]]
      _write_text(
        dis / "ActionUnit_Labels" / name / f"{name}_au{au}.txt",
        [f"{t + 1},{c}" for t, c in enumerate(col)],
      )
    places = [render.frame_placement(size, h, sess.wall) for h in sess.head]
    lm_dir = dis / "Landmark_Points" / name / "tmp_frame_lm"
    lm_dir.mkdir(parents=True, exist_ok=True)
    for t in range(n_frames):
      pts = render.frame_landmarks(
        subj.identity, sess.aus[t], size, sess.nuisance[t], places[t], "disfa66"
      )
      _savemat(lm_dir / f"{name}_{t:04d}_lm.mat", {"pts": pts + 1.0})
    (dis / name).mkdir(parents=True, exist_ok=True)
    jobs.append(
      [
        (
          f"DISFA/{name}/{t}.jpg",
          subj.identity,
          sess.aus[t],
          sess.nuisance[t],
          sess.jpeg_quality,
          places[t],
        )
        for t in range(n_frames)
      ]
    )
    n_frames_total += n_frames
  return jobs, {"disfa_images": n_frames_total}


def _plan_raf(
  root: pathlib.Path, seed: int, raf_train: int, raf_test: int, chunk: int = 100
) -> tuple[list[list[_Item]], dict[str, Any]]:
  """Writes the RAF label list; returns rendering jobs and counts."""
  img_dir = root / "RAF" / "basic" / "Image" / "aligned"
  img_dir.mkdir(parents=True, exist_ok=True)
  lines, items = [], []
  names = [f"train_{i + 1:05d}" for i in range(raf_train)] + [
    f"test_{i + 1:04d}" for i in range(raf_test)
  ]
  counts = [0] * len(population.RAF_LABELS)
  for idx, stem in enumerate(names):
    im = population.make_raf_image(seed, idx)
    lines.append(f"{stem}.jpg {im.label}")
    counts[im.label - 1] += 1
    items.append(
      (
        f"RAF/basic/Image/aligned/{stem}_aligned.jpg",
        im.identity,
        im.aus,
        im.nuisance,
        im.jpeg_quality,
        AlignedCrop(),
      )
    )
  _write_text(root / "RAF" / "basic" / "EmoLabel" / "list_patition_label.txt", lines)
  jobs = [items[i : i + chunk] for i in range(0, len(items), chunk)]
  return jobs, {"raf_label_counts": dict(zip(population.RAF_LABELS, counts))}


def _prepare_target(out: pathlib.Path, overwrite: bool):
  if out.exists() and not out.is_dir():
    raise FileExistsError(f"{out} exists and is not a directory")
  if out.is_dir() and any(out.iterdir()) and not overwrite:
    raise FileExistsError(
      f"{out} exists and is not empty; pass --overwrite (overwrite=True) to replace it"
    )


def generate(
  out_dir: str | os.PathLike[str],
  *,
  seed: int = 0,
  subjects: int = 41,
  frames_per_task: int = 40,
  raf_train: int = 2400,
  raf_test: int = 600,
  size: int = 112,
  disfa_subjects: int = 12,
  disfa_frames: int = 96,
  progress: bool = True,
  overwrite: bool = False,
  workers: int | None = None,
) -> dict[str, Any]:
  """Generates SynthFace into ``out_dir`` and returns the summary (also in synthface.json).

  The tree is built in a temporary folder beside ``out_dir`` and renamed into place only when
  complete. Refuses to replace a non-empty ``out_dir`` unless ``overwrite``.

  Args:
    out_dir: target folder.
    seed: everything is a function of it.
    subjects: BP4D-like subjects (41 -> F001–F023, M001–M018).
    frames_per_task: frames of each of the 8 tasks of each subject.
    raf_train, raf_test: RAF-like images (other identities).
    disfa_subjects, disfa_frames: the DISFA-like part (other identities again, DISFA's subject
      ids and 12 AUs, one recording of `disfa_frames` frames each; 0 subjects: no DISFA/).
    size: side of a face in pixels (RAF-like images; the BP4D-like frames are 2 x 1.5 that,
      with the face square 1.05-1.4 times it, moving).
    progress: show a tqdm bar.
    overwrite: replace a non-empty ``out_dir``.
    workers: rendering processes (default min(2, CPUs)); the output does not depend on it.
  """
  _check_args(subjects, frames_per_task, raf_train, raf_test, size, disfa_subjects, disfa_frames)
  out = pathlib.Path(out_dir).absolute()
  _prepare_target(out, overwrite)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.synthface-tmp-{os.getpid()}"
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir()
  try:
    bp_jobs, bp_counts = _plan_bp4d(tmp, seed, subjects, frames_per_task, size)
    raf_jobs, raf_counts = _plan_raf(tmp, seed, raf_train, raf_test)
    dis_jobs, dis_counts = _plan_disfa(tmp, seed, disfa_subjects, disfa_frames, size)
    jobs = [(str(tmp), size, j) for j in bp_jobs + raf_jobs + dis_jobs if j]
    total = sum(len(j[2]) for j in jobs)
    workers = workers or min(2, os.cpu_count() or 1)
    with tqdm.tqdm(
      total=total, unit="img", desc="SynthFace", disable=not progress, file=sys.stderr
    ) as bar:
      if workers <= 1:
        for j in jobs:
          bar.update(_render_job(j))
      else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(workers) as pool:
          for n in pool.imap_unordered(_render_job, jobs):
            bar.update(n)
    summary = {
      "generator": "synthface",
      "version": VERSION,
      "seed": seed,
      "subjects": subjects,
      "frames_per_task": frames_per_task,
      "raf_train": raf_train,
      "raf_test": raf_test,
      "disfa_subjects": disfa_subjects,
      "disfa_frames": disfa_frames,
      "disfa_aus": list(DISFA_AUS),
      "size": size,
      "bp4d_frame": [round(render.FRAME_ASPECT[0] * size), round(render.FRAME_ASPECT[1] * size)],
      "landmarks": "BP4D/2DFeatures/<subject>_<task>.mat (49 points, 1-based)",
      "tasks": list(population.TASKS),
      "aus": list(render.AUS),
      "int_aus": list(INT_AUS),
      "occurrence": "intensity code >= 2; 9 = unknown",
      "raf_labels": list(population.RAF_LABELS),
      "images": total,
      **bp_counts,
      **raf_counts,
      **dis_counts,
    }
    with open(tmp / "synthface.json", "w", encoding="utf-8", newline="\n") as f:
      json.dump(summary, f, indent=1, sort_keys=True)
      f.write("\n")
    _prepare_target(out, overwrite)
    if out.is_dir():
      if any(out.iterdir()):
        shutil.rmtree(out)
      else:
        out.rmdir()
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {**summary, "out": str(out)}


def main(argv: Sequence[str] | None = None) -> int:
  ap = argparse.ArgumentParser(
    prog="python -m input_pipeline.synthface",
    description="Generate SynthFace (BP4D-like and RAF-DB-like trees) into --out.",
  )
  ap.add_argument("--out", required=True, help="target folder (created)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--subjects", type=int, default=41)
  ap.add_argument("--frames-per-task", type=int, default=40)
  ap.add_argument("--raf-train", type=int, default=2400)
  ap.add_argument("--raf-test", type=int, default=600)
  ap.add_argument("--size", type=int, default=112, help="image side in pixels")
  ap.add_argument("--disfa-subjects", type=int, default=12, help="DISFA-like subjects (0: none)")
  ap.add_argument("--disfa-frames", type=int, default=96, help="frames per DISFA-like subject")
  ap.add_argument("--workers", type=int, default=None, help="rendering processes (default 2)")
  ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  ap.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
  a = ap.parse_args(argv)
  try:
    s = generate(
      a.out,
      seed=a.seed,
      subjects=a.subjects,
      frames_per_task=a.frames_per_task,
      raf_train=a.raf_train,
      raf_test=a.raf_test,
      size=a.size,
      disfa_subjects=a.disfa_subjects,
      disfa_frames=a.disfa_frames,
      progress=not a.quiet,
      overwrite=a.overwrite,
      workers=a.workers,
    )
  except (ValueError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not a.quiet:
    print(
      f"SynthFace v{s['version']}: {s['bp4d_frames']} BP4D-like frames "
      f"({s['subjects']} subjects x 8 tasks), {s['raf_train']}+{s['raf_test']} RAF-like "
      f"images, {s['disfa_images']} DISFA-like frames ({s['disfa_subjects']} subjects) at "
      f"{s['size']} px -> {s['out']}"
    )
  return 0
