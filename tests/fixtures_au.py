"""Writers of tiny BP4D / BP4D+ / DISFA trees in their real on-disk layouts (with their quirks).

Every image is a flat 8x8 colour given by `frame_color(n)` for its frame/line number n, so a
test can check that a label was paired with the right image. Importable by other tests:

  from tests import fixtures_au
  root = fixtures_au.write_bp4d(tmp_path / "BP4D")          # a small default tree
"""

from __future__ import annotations

import io
import os
import pathlib
import zipfile
from typing import Container, Iterable, Mapping

import numpy as np
from PIL import Image

# Every AU column of a real BP4D/BP4D+ AU_OCC file (evaluated and not).
CSV_AUS = (
  1,
  2,
  4,
  5,
  6,
  7,
  9,
  10,
  11,
  12,
  13,
  14,
  15,
  16,
  17,
  18,
  19,
  20,
  22,
  23,
  24,
  25,
  26,
  27,
  32,
  38,
  39,
)
DISFA_ALL_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)

Session = tuple[str, str]  # (subject, task)
Rows = Mapping[int, Mapping[int, int]]  # frame -> {au: code}; unlisted AUs are 0


def frame_color(n: int) -> tuple[int, int, int]:
  """A flat colour; n and n +- 1..5 differ by >= 50 in some channel."""
  r = (n * 40 + 20) % 256
  return r, 255 - r, (n * 97 + 60) % 256


def image_bytes(n: int, fmt: str = "JPEG", size: int = 8) -> bytes:
  arr = np.zeros((size, size, 3), np.uint8)
  arr[:] = frame_color(n)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  return buf.getvalue()


def write_image(path: str | os.PathLike[str], n: int) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
  path.write_bytes(image_bytes(n, fmt))
  return path


def write_truncated_jpeg(path: str | os.PathLike[str], n: int = 0) -> pathlib.Path:
  """A JPEG cut in half (PIL fails to decode it fully)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  data = image_bytes(n, "JPEG", size=32)
  path.write_bytes(data[: len(data) // 2])
  return path


def _write_text(path: pathlib.Path, lines: Iterable[str], crlf: bool) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  eol = "\r\n" if crlf else "\n"
  path.write_bytes((eol.join(lines) + eol).encode())
  return path


def write_occ_csv(
  path: str | os.PathLike[str], rows: Rows, *, columns: Iterable[int] = CSV_AUS, crlf: bool = False
) -> pathlib.Path:
  """An AU_OCC file: header `0,<au>,<au>...` in the given column order, one row per frame."""
  columns = list(columns)
  lines = [",".join(["0"] + [str(a) for a in columns])]
  for frame, codes in rows.items():
    lines.append(",".join([str(frame)] + [str(codes.get(a, 0)) for a in columns]))
  return _write_text(pathlib.Path(path), lines, crlf)


def default_bp4d_sessions() -> dict[Session, dict[int, dict[int, int]]]:
  """Three subjects (one per BP4D part: F001, F003, F004), two tasks, three frames each."""
  out = {}
  for s, subject in enumerate(("F001", "F003", "F004")):
    for task in ("T1", "T8"):
      out[(subject, task)] = {
        f: {1: (f + s) % 2, 12: int(f == 2), 6: 9 if f == 3 else 0} for f in (1, 2, 3)
      }
  return out


def write_bp4d(
  root: str | os.PathLike[str],
  sessions: Mapping[Session, Rows] | None = None,
  *,
  images: Mapping[Session, Iterable[int]] | None = None,
  columns: Mapping[Session, Iterable[int]] | Iterable[int] = CSV_AUS,
  padded: bool | Container[int] = False,
  crlf: bool = False,
  intensity: Mapping[Session, Mapping[int, Mapping[int, int]]] | None = None,
  ext: str = "jpg",
) -> pathlib.Path:
  """Writes a BP4D tree: <root>/<subject>/<task>/<frame>.jpg + AUCoding/AU_OCC (+ AU_INT).

  Args:
    root: output folder.
    sessions: (subject, task) -> {frame: {au: code}} rows of its AU_OCC file (unlisted AUs 0);
      default `default_bp4d_sessions()`.
    images: (subject, task) -> frame numbers that get an image (default: the CSV frames).
    columns: AU column order of the header, for all sessions or per session.
    padded: True (all) or a set of frame numbers whose file name is 4-digit zero-padded.
    crlf: CRLF line endings in the CSVs.
    intensity: (subject, task) -> {au: {frame: value}} written to AU_INT/AU<au:02d>/.
    ext: image extension.
  """
  root = pathlib.Path(root)
  sessions = default_bp4d_sessions() if sessions is None else sessions
  occ_dir = root / "AUCoding" / "AU_OCC"
  occ_dir.mkdir(parents=True, exist_ok=True)
  for (subject, task), rows in sessions.items():
    cols = columns.get((subject, task), CSV_AUS) if isinstance(columns, Mapping) else columns
    write_occ_csv(occ_dir / f"{subject}_{task}.csv", rows, columns=cols, crlf=crlf)
  all_images = {k: list(v) for k, v in sessions.items()} if images is None else images
  for (subject, task), frames in all_images.items():
    for f in frames:
      pad = padded if isinstance(padded, bool) else f in padded
      name = f"{f:04d}.{ext}" if pad else f"{f}.{ext}"
      write_image(root / subject / task / name, f)
  for (subject, task), per_au in (intensity or {}).items():
    for au, values in per_au.items():
      path = root / "AUCoding" / "AU_INT" / f"AU{au:02d}" / f"{subject}_{task}_AU{au:02d}.csv"
      _write_text(path, [f"{f},{v}" for f, v in values.items()], crlf)
  return root


def write_bp4d_plus(
  root: str | os.PathLike[str],
  sessions: Mapping[Session, Rows] | None = None,
  *,
  zipped: bool = True,
  images: Mapping[Session, Iterable[int]] | None = None,
  columns: Iterable[int] = CSV_AUS,
  crlf: bool = False,
) -> pathlib.Path:
  """Writes a BP4D+ tree: 2D+3D/<subject>.zip (or <subject>/<task>/) + AUCoding/AU_OCC.

  Args:
    sessions: (subject, task) -> {1-based frame: {au: code}}, the coded segment; default two
      subjects (F001, M058) with frames 2-3 of T1 coded.
    zipped: frames as members `<subject>/<task>/<n>.jpg` of 2D+3D/<subject>.zip, else unpacked.
    images: (subject, task) -> image numbers (default: 1..max coded frame + 1 of each session).
  """
  root = pathlib.Path(root)
  if sessions is None:
    sessions = {(s, "T1"): {2: {1: 1, 24: 9}, 3: {2: 1}} for s in ("F001", "M058")}
  occ_dir = root / "AUCoding" / "AU_OCC"
  occ_dir.mkdir(parents=True, exist_ok=True)
  for (subject, task), rows in sessions.items():
    write_occ_csv(occ_dir / f"{subject}_{task}.csv", rows, columns=columns, crlf=crlf)
  if images is None:
    images = {k: range(1, max(rows) + 2) for k, rows in sessions.items()}
  by_subject: dict[str, list[tuple[str, int]]] = {}
  for (subject, task), frames in images.items():
    by_subject.setdefault(subject, []).extend((task, f) for f in frames)
  for subject, items in by_subject.items():
    if zipped:
      (root / "2D+3D").mkdir(parents=True, exist_ok=True)
      with zipfile.ZipFile(root / "2D+3D" / f"{subject}.zip", "w") as zf:
        for task, f in items:
          zf.writestr(f"{subject}/{task}/{f}.jpg", image_bytes(f))
    else:
      for task, f in items:
        write_image(root / subject / task / f"{f}.jpg", f)
  return root


def write_disfa(
  root: str | os.PathLike[str],
  labels: Mapping[str, Mapping[int, Iterable[int]]] | None = None,
  *,
  ext: str = "png",
  num_images: Mapping[str, int] | None = None,
  start_index: int = 1,
  crlf: bool = False,
) -> pathlib.Path:
  """Writes a DISFA tree: ActionUnit_Labels/<SN>/<SN>_au<N>.txt + <SN>/<t>.<ext>.

  Args:
    labels: subject -> {au: intensities by line}; the other of the 12 AUs get zeros of the same
      length. Default: SN001 and SN003 with three frames.
    ext: image extension ("png" or "jpg"), or per call a single one.
    num_images: subject -> how many images 0..n-1 to write (default: one per label line).
    start_index: frameIdx of the first line (the released files count from 1).
  """
  root = pathlib.Path(root)
  if labels is None:
    labels = {"SN001": {1: [0, 2, 5], 12: [1, 3, 0]}, "SN003": {25: [2, 1, 0]}}
  for subject, per_au in labels.items():
    per_au = {au: list(v) for au, v in per_au.items()}
    length = len(next(iter(per_au.values())))
    for au in sorted(set(DISFA_ALL_AUS) | set(per_au)):
      values = per_au.get(au, [0] * length)
      path = root / "ActionUnit_Labels" / subject / f"{subject}_au{au}.txt"
      _write_text(path, [f"{start_index + t},{v}" for t, v in enumerate(values)], crlf)
    n = length if num_images is None else num_images.get(subject, length)
    for t in range(n):
      write_image(root / subject / f"{t}.{ext}", t)
  return root


def write_synthface_expressions(
  bp4d_root: str | os.PathLike[str], rows: Iterable[tuple[str, str, int, str]]
) -> pathlib.Path:
  """SynthFace_expressions.csv (`subject,task,frame,expression`) in a BP4D-like tree."""
  lines = ["subject,task,frame,expression"] + [f"{s},{t},{f},{e}" for s, t, f, e in rows]
  return _write_text(pathlib.Path(bp4d_root) / "SynthFace_expressions.csv", lines, False)


def video_frame(t: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
  """Frame t of a fixture video: a flat grey level 20 + 15 t with a bright square (uint8 RGB)."""
  h, w = size
  frame = np.full((h, w, 3), 20 + 15 * t, np.uint8)
  frame[8:24, 8:24] = 250
  return frame


def write_video(path: str | os.PathLike[str], num_frames: int, fps: int = 25) -> pathlib.Path:
  """An MJPEG AVI of `video_frame(0..num_frames-1)`, written with PyAV (as DISFA ships AVIs)."""
  import av  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  h, w = video_frame(0).shape[:2]
  with av.open(str(path), "w") as c:
    s = c.add_stream("mjpeg", rate=fps)
    s.width, s.height, s.pix_fmt = w, h, "yuvj420p"
    for t in range(num_frames):
      for packet in s.encode(av.VideoFrame.from_ndarray(video_frame(t), format="rgb24")):
        c.mux(packet)
    for packet in s.encode():
      c.mux(packet)
  return path
