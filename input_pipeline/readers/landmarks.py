"""Landmark files of the datasets that ship them (used by the builders' face alignment).

  BP4D / BP4D+   <root>/2DFeatures/<subject>_<task>.mat   MATLAB, v5 or v7.3 (HDF5): a struct
                 array `fit`, one element per frame of the session, field `pred` = 49 x 2
                 (x, y), empty where the tracker lost the face; an optional field `frame` gives
                 the frame number, else element i is the session's i-th frame image in
                 frame-number order.
  DISFA          <root>/Landmark_Points/<SN>/tmp_frame_lm/<SN>_<t>_lm.mat (or l0<t>_lm.mat):
                 variable `pts` = 66 x 2 for the 0-based frame t (4 digits).
  AffectNet      the `facial_landmarks` column: 68 points as 'x1;y1;x2;y2;...' (ibug68).

v5 files are read with scipy.io.loadmat, v7.3 ones with h5py (MATLAB writes them column-major:
a 49 x 2 matrix reads as 2 x 49 and is transposed back). A file that is neither, a `fit` without
`pred`, or a frame whose points are not 49 x 2 is a DatasetError naming the file and the frame.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import numpy as np

from input_pipeline.readers import common

BP4D_DIR = "2DFeatures"
DISFA_DIR = "Landmark_Points"
SKIP_NO_LANDMARKS = "frame without landmarks (tracking failed or no landmark file)"
_DISFA_NAME_RE = re.compile(r"^(?:(?P<sn>[A-Za-z]+\d+)_|l0)(?P<t>\d+)_lm\.mat$", re.IGNORECASE)


def load_mat(path: str) -> tuple[str, Any]:
  """('v5', dict of variables) or ('v7.3', open h5py.File); DatasetError if it is neither.

  MATLAB v7.3 files are HDF5 (h5py.is_hdf5 tells), older ones are read with scipy.
  """
  import h5py  # pylint: disable=import-outside-toplevel
  import scipy.io  # pylint: disable=import-outside-toplevel

  if h5py.is_hdf5(path):
    try:
      return "v7.3", h5py.File(path, "r")
    except OSError as e:
      raise common.DatasetError(path, f"not a readable MATLAB v7.3 (HDF5) file ({e})") from None
  try:
    return "v5", scipy.io.loadmat(path, simplify_cells=True)
  except (ValueError, TypeError, OSError, EOFError, NotImplementedError) as e:
    raise common.DatasetError(path, f"not a readable MATLAB file ({e})") from None


def _points(value: Any, path: str, where: str, num_points: int) -> np.ndarray | None:
  """[K, 2] float32, None for an empty matrix; DatasetError for another shape."""
  arr = np.asarray(value, np.float64) if value is not None else np.zeros((0,))
  if arr.size == 0:
    return None
  if arr.shape == (2, num_points):
    arr = arr.T
  if arr.shape != (num_points, 2):
    raise common.DatasetError(
      path, f"{where}: landmarks of shape {arr.shape}, expected {num_points} x 2"
    )
  if not np.all(np.isfinite(arr)):
    return None  # NaN points: the tracker's way of saying 'lost'
  return arr.astype(np.float32)


def read_bp4d(
  path: str, frames: Sequence[int], num_points: int = 49
) -> dict[int, np.ndarray | None]:
  """One 2DFeatures file -> {frame number: [49, 2] float32 or None (untracked)}.

  Args:
    path: `<root>/2DFeatures/<subject>_<task>.mat`.
    frames: the session's frame numbers in ascending order (pairs element i with frames[i] when
      the file has no `frame` field).
  """
  kind, data = load_mat(path)
  if kind == "v5":
    if "fit" not in data:
      raise common.DatasetError(
        path, f"no variable 'fit' (found {sorted(k for k in data if not k.startswith('__'))})"
      )
    fit = data["fit"]
    entries = [fit] if isinstance(fit, dict) else list(fit)
    if entries and not isinstance(entries[0], dict):
      raise common.DatasetError(path, "'fit' is not a struct array with a 'pred' field")
    preds, numbers = [], []
    for i, e in enumerate(entries):
      if "pred" not in e:
        raise common.DatasetError(path, f"fit({i + 1}) has no field 'pred' (fields {sorted(e)})")
      preds.append(e["pred"])
      numbers.append(e.get("frame"))
  else:
    with data as f:
      if "fit" not in f:
        raise common.DatasetError(path, f"no variable 'fit' (found {sorted(f.keys())})")
      fit = f["fit"]
      if "pred" not in fit:
        raise common.DatasetError(path, f"'fit' has no field 'pred' (fields {sorted(fit.keys())})")
      refs = np.asarray(fit["pred"]).ravel()
      preds = [_h5_value(f, r) for r in refs]
      numbers = [None] * len(preds)
      if "frame" in fit:
        numbers = [_h5_value(f, r) for r in np.asarray(fit["frame"]).ravel()]
  out: dict[int, np.ndarray | None] = {}
  for i, (pred, number) in enumerate(zip(preds, numbers)):
    if number is None:
      if i >= len(frames):
        break  # more tracked frames than images: the extra ones have no image to align
      number = frames[i]
    else:
      number = int(np.asarray(number).ravel()[0])
    out[number] = _points(pred, path, f"fit({i + 1}) (frame {number})", num_points)
  if len(out) < len(frames) and all(n is None for n in numbers):
    raise common.DatasetError(
      path,
      f"{len(preds)} landmark entries for {len(frames)} frames (frame {frames[len(preds)]} "
      "has none): the file is short",
    )
  return out


def _h5_value(f: Any, ref: Any) -> np.ndarray | None:
  ds = f[ref]
  if ds.attrs.get("MATLAB_empty", 0):
    return None
  return np.asarray(ds[()])


def disfa_files(root: str, subject: str) -> dict[int, str]:
  """0-based frame -> landmark file of a DISFA subject (empty when it has none)."""
  folder = os.path.join(root, DISFA_DIR, subject, "tmp_frame_lm")
  if not os.path.isdir(folder):
    return {}
  out = {}
  for name in os.listdir(folder):
    m = _DISFA_NAME_RE.match(name)
    if m:
      out.setdefault(int(m.group("t")), os.path.join(folder, name))
  return out


def read_disfa(path: str, num_points: int = 66) -> np.ndarray | None:
  """One DISFA landmark file (`pts` 66 x 2) -> [66, 2] float32."""
  kind, data = load_mat(path)
  if kind == "v7.3":
    with data as f:
      if "pts" not in f:
        raise common.DatasetError(path, f"no variable 'pts' (found {sorted(f.keys())})")
      value = np.asarray(f["pts"][()])
  else:
    if "pts" not in data:
      raise common.DatasetError(
        path, f"no variable 'pts' (found {sorted(k for k in data if not k.startswith('__'))})"
      )
    value = data["pts"]
  return _points(value, path, "pts", num_points)


def parse_affectnet(text: str, path: str, line: int, num_points: int = 68) -> np.ndarray | None:
  """AffectNet's 'x1;y1;x2;y2;...' -> [68, 2] float32 (None for an empty field)."""
  text = text.strip()
  if not text:
    return None
  try:
    values = [float(v) for v in text.split(";") if v.strip()]
  except ValueError:
    raise common.DatasetError(
      path, f"facial_landmarks is not 'x1;y1;x2;y2;...': {text[:40]!r}", line
    ) from None
  if len(values) != 2 * num_points:
    raise common.DatasetError(
      path,
      f"facial_landmarks has {len(values)} numbers, expected {2 * num_points} ({num_points} points)",
      line,
    )
  return np.asarray(values, np.float32).reshape(num_points, 2)
