"""Face alignment (input_pipeline.align), landmark files in the datasets' layouts
(readers.landmarks: BP4D 2DFeatures in MATLAB v5 and v7.3, DISFA, AffectNet) and the builders'
alignment modes on SynthFace's full frames.

What was tried: eye centres land on the template (±2 px, found independently as the dark pupils
and as painted dots) across faces of different position, scale and roll; v5 and v7.3 files of
the same points read the same; a file that is not MATLAB, a frame with 48 points and a short file
name the file (and frame); a session without a landmark file and a frame that tracking lost are
skipped and counted; a BP4D copy without 2DFeatures/ is refused with the way out; config names
round-trip the alignment mode and margin; the detector finds a SynthFace face where it is and
counts an empty image instead of centre-cropping it.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from input_pipeline import align
from input_pipeline import builders
from input_pipeline import sources
from input_pipeline import synthface
from input_pipeline.readers import common
from input_pipeline.readers import landmarks
from input_pipeline.synthface import population
from input_pipeline.synthface import render
from input_pipeline.synthface import writer


# ----------------------------------------------------------------------------------------------
# The transform.
# ----------------------------------------------------------------------------------------------


def test_similarity_recovers_a_known_transform():
  rng = np.random.default_rng(0)
  src = rng.uniform(0, 100, (5, 2))
  angle, scale, t = 0.3, 1.7, np.array([12.0, -4.0])
  r = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  m = align.similarity(src, src @ r.T + t)
  np.testing.assert_allclose(m[:, :2], r, atol=1e-9)
  np.testing.assert_allclose(m[:, 2], t, atol=1e-9)
  with pytest.raises(ValueError, match="collapse"):
    align.similarity(np.ones((3, 2)), src[:3])


def test_template_margin():
  np.testing.assert_allclose(align.template(0.0), [[0.3, 0.35], [0.7, 0.35], [0.5, 0.8]])
  # Margin m shrinks the face about the centre by 1 / (1 + 2 m).
  np.testing.assert_allclose(align.template(0.2), 0.5 + (align.template(0.0) - 0.5) / 1.4)
  with pytest.raises(ValueError, match="margin"):
    align.template(-0.1)


def _centroid(mask: np.ndarray) -> np.ndarray:
  ys, xs = np.nonzero(mask)
  return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize(
  "scale,angle,center", [(0.4, 0.0, (320, 200)), (1.0, 0.25, (150, 300)), (3.0, -0.2, (400, 260))]
)
def test_painted_key_points_land_on_the_template(scale, angle, center):
  """Dots at the eyes and mouth of a 640 x 480 frame (1-based 'bp4d49' points around them):
  after alignment each dot's centroid is on its template position (±0.5 px)."""
  h, w, size = 480, 640, 112
  base = (align.template(0.0) - 0.5) * 150 * scale
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  key = base @ rot.T + np.array(center)
  img = np.zeros((h, w, 3), np.uint8)
  yy, xx = np.mgrid[:h, :w]
  for p in key:
    img[(xx - p[0]) ** 2 + (yy - p[1]) ** 2 < (4 * scale) ** 2] = 255
  pts = np.zeros((49, 2))
  pts[19:25], pts[25:31] = key[0], key[1]
  pts[31], pts[37] = key[2], key[2]
  out = align.align(img, pts + 1.0, "bp4d49", size, 0.0)[..., 0].astype(np.float64)
  yy, xx = np.mgrid[:size, :size]
  for t in align.template(0.0) * size - 0.5:
    near = ((xx - t[0]) ** 2 + (yy - t[1]) ** 2 < 8**2) & (out > 128)
    np.testing.assert_allclose(_centroid(near), t, atol=0.5)


def _pupils(aligned: np.ndarray, size: int) -> np.ndarray:
  """Centroids of the darkest pixels in a window around each template eye (the renderer's
  near-black pupils): the eye centres as the image shows them, found without landmarks."""
  grey = aligned.astype(np.float64).mean(-1)
  out = []
  for t in align.template()[:2] * size - 0.5:
    x0, y0 = int(t[0]) - 8, int(t[1]) - 8
    win = grey[y0 : y0 + 17, x0 : x0 + 17]
    dark = win <= np.percentile(win, 4)
    out.append(_centroid(dark) + [x0, y0])
  return np.array(out)


def test_synthface_frames_align_eyes_onto_the_template():
  """Full SynthFace frames with the face at different positions and scales (and the session's
  roll): the aligned crops show the pupils where the template puts the eye centres (±2 px)."""
  size, out_size = 112, 112
  subj = population.make_subject(0, 3, "F004")
  sess = population.make_session(0, 3, subj, "T1", 8)
  raw_eyes = []
  for k, (cx, hang, sc) in enumerate([(0.35, 0.02, 0.85), (0.5, 0.12, 1.0), (0.65, 0.06, 1.2)]):
    place = render.frame_placement(size, (cx, hang, sc), sess.wall)
    aus = np.zeros(len(render.AUS))  # eyes open: the pupils are visible
    img, pts = render.render_frame(subj.identity, aus, size, sess.nuisance[k], place)
    crop = align.align(img, pts + 1.0, "bp4d49", out_size)
    pupils = _pupils(crop, out_size)
    np.testing.assert_allclose(pupils, align.template()[:2] * out_size - 0.5, atol=2.0)
    raw_eyes.append(align.key_points(pts + 1.0, "bp4d49")[:2])
  # The three frames put the face in different places and sizes: in the raw frames the eyes
  # are tens of pixels apart, and the interocular distance varies by a third.
  raw_eyes = np.array(raw_eyes)
  assert np.ptp(raw_eyes[:, 0, 0]) > 40
  iod = np.linalg.norm(raw_eyes[:, 1] - raw_eyes[:, 0], axis=1)
  assert iod.max() / iod.min() > 1.3


# ----------------------------------------------------------------------------------------------
# Landmark files.
# ----------------------------------------------------------------------------------------------


def _points(n: int, k: int = 49) -> np.ndarray:
  return np.arange(2 * k, dtype=np.float64).reshape(k, 2) + 100.0 * n


def write_v73(path: pathlib.Path, preds: list[np.ndarray | None], frames: list[int] | None = None):
  """A MATLAB v7.3 file as MATLAB writes a struct array `fit` with fields pred (and frame):
  HDF5 with a 512-byte user block holding the MAT header, each field a dataset of object
  references into #refs#, matrices stored column-major (a 49 x 2 matrix as 2 x 49), empty
  matrices as uint64 [0 0] with the MATLAB_empty attribute."""
  with h5py.File(path, "w", userblock_size=512) as f:
    refs = f.create_group("#refs#")
    fit = f.create_group("fit")
    fit.attrs["MATLAB_class"] = np.bytes_("struct")

    def store(name: str, value: np.ndarray | None):
      if value is None:
        ds = refs.create_dataset(name, data=np.array([0, 0], np.uint64))
        ds.attrs["MATLAB_empty"] = np.uint8(1)
      else:
        ds = refs.create_dataset(name, data=np.asarray(value, np.float64).T)
      ds.attrs["MATLAB_class"] = np.bytes_("double")
      return ds.ref

    fields = {"pred": preds} | ({"frame": [np.array([[fr]]) for fr in frames]} if frames else {})
    for field, values in fields.items():
      r = [store(f"{field}{i}", v) for i, v in enumerate(values)]
      fit.create_dataset(field, data=np.array(r, dtype=h5py.ref_dtype).reshape(-1, 1))
  header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Tue Dec  1 2026 HDF5 schema 1.00 ."
  with open(path, "r+b") as f:
    f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def test_bp4d_2dfeatures_v5_and_v73_read_the_same(tmp_path):
  preds = [_points(0), None, _points(2)]
  writer.write_landmarks(tmp_path / "v5.mat", [None if p is None else p - 1 for p in preds])
  write_v73(tmp_path / "v73.mat", preds)
  assert landmarks.load_mat(str(tmp_path / "v73.mat"))[0] == "v7.3"
  frames = [10, 11, 12]
  a = landmarks.read_bp4d(str(tmp_path / "v5.mat"), frames)
  b = landmarks.read_bp4d(str(tmp_path / "v73.mat"), frames)
  assert sorted(a) == sorted(b) == frames
  assert a[11] is None and b[11] is None  # the untracked frame
  for fr, p in zip(frames, preds):
    if p is not None:
      np.testing.assert_array_equal(a[fr], p)
      np.testing.assert_array_equal(b[fr], p)
  # A `frame` field decides the frame numbers instead of the image order.
  write_v73(tmp_path / "numbered.mat", preds, frames=[7, 9, 30])
  assert sorted(landmarks.read_bp4d(str(tmp_path / "numbered.mat"), frames)) == [7, 9, 30]


def test_bad_landmark_files_name_the_file_and_frame(tmp_path):
  junk = tmp_path / "junk.mat"
  junk.write_bytes(b"this is no MATLAB file" * 10)
  with pytest.raises(common.DatasetError, match="junk.mat.*not a readable MATLAB"):
    landmarks.read_bp4d(str(junk), [1])
  bad = tmp_path / "F001_T1.mat"
  writer.write_landmarks(bad, [_points(0), _points(1, 48)])
  with pytest.raises(common.DatasetError, match=r"F001_T1.mat.*fit\(2\) \(frame 6\).*\(48, 2\)"):
    landmarks.read_bp4d(str(bad), [5, 6])
  short = tmp_path / "short.mat"
  writer.write_landmarks(short, [_points(0)])
  with pytest.raises(
    common.DatasetError, match="short.mat.*1 landmark entries for 3 frames.*frame 8"
  ):
    landmarks.read_bp4d(str(short), [7, 8, 9])
  novar = tmp_path / "novar.mat"
  scipy.io.savemat(novar, {"pts": _points(0)})
  with pytest.raises(common.DatasetError, match="novar.mat.*no variable 'fit'.*pts"):
    landmarks.read_bp4d(str(novar), [1])


def test_disfa_and_affectnet_landmarks(tmp_path):
  folder = tmp_path / "Landmark_Points" / "SN001" / "tmp_frame_lm"
  folder.mkdir(parents=True)
  scipy.io.savemat(folder / "SN001_0000_lm.mat", {"pts": _points(0, 66)})
  scipy.io.savemat(folder / "l00003_lm.mat", {"pts": _points(3, 66)})
  files = landmarks.disfa_files(str(tmp_path), "SN001")
  assert sorted(files) == [0, 3]
  np.testing.assert_array_equal(landmarks.read_disfa(files[3]), _points(3, 66))
  text = ";".join(f"{v:.2f}" for v in _points(1, 68).ravel())
  np.testing.assert_allclose(landmarks.parse_affectnet(text, "training.csv", 2), _points(1, 68))
  assert landmarks.parse_affectnet("", "training.csv", 2) is None
  with pytest.raises(
    common.DatasetError, match="training.csv:5: facial_landmarks has 134 numbers, expected 136"
  ):
    landmarks.parse_affectnet(text.rsplit(";", 2)[0], "training.csv", 5)


# ----------------------------------------------------------------------------------------------
# The builders.
# ----------------------------------------------------------------------------------------------


def test_config_names_carry_the_alignment():
  bp4d = builders.make_config("bp4d")
  assert (bp4d.name, bp4d.align, bp4d.align_margin) == (
    "default",
    "landmarks",
    align.DEFAULT_MARGIN,
  )
  cfg = builders.make_config("bp4d", align="none", image_size=64)
  assert (cfg.name, cfg.align) == ("default_noalign_64px", "none")
  again = builders.make_config("bp4d", cfg.name)
  assert (again.name, again.image_size, again.align) == ("default_noalign_64px", 64, "none")
  cfg = builders.make_config("synthface", "bp4d", align_margin=0.3)
  assert (cfg.name, cfg.align_margin) == ("bp4d_m30", 0.3)
  assert builders.make_config("synthface", "raf").align == "none"
  assert builders.make_config("raf_db", "original").align == "detector"
  assert builders.make_config("raf_db", "aligned").align == "none"
  assert builders.make_config("disfa", "right_lmdet").align == "landmarks_or_detector"
  with pytest.raises(ValueError, match="whole percentage"):
    builders.make_config("bp4d", align_margin=0.125)
  with pytest.raises(ValueError, match="unknown alignment mode 'eyes'"):
    builders.make_config("bp4d", align="eyes")


@pytest.fixture(scope="module")
def synth_tree(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("sf") / "synthface"
  synthface.generate(
    out, subjects=3, frames_per_task=3, raf_train=6, raf_test=3, size=32, progress=False, workers=1
  )
  return out


def test_prepared_synthface_is_aligned_and_counts_frames_without_landmarks(synth_tree, tmp_path):
  tree = tmp_path / "tree"
  shutil.copytree(synth_tree, tree)
  bp = tree / "BP4D"
  # Lose one session's landmark file, and the tracking of one frame of another.
  os.remove(bp / "2DFeatures" / "F001_T2.mat")
  frames = sorted(int(p.stem) for p in (bp / "M001" / "T1").glob("*.jpg"))
  pts = landmarks.read_bp4d(str(bp / "2DFeatures" / "M001_T1.mat"), frames)
  writer.write_landmarks(
    bp / "2DFeatures" / "M001_T1.mat", [None] + [pts[f] - 1 for f in frames[1:]]
  )
  data = tmp_path / "data"
  sources.prepare("synthface", str(tree), str(data), "bp4d")
  md = sources.info("synthface", str(data), "bp4d")
  assert md["align"]["mode"] == "landmarks"
  assert md["skips"][landmarks.SKIP_NO_LANDMARKS] == 3 + 1
  total = sum(s["examples"] for s in md["stats"].values())
  assert total == 3 * 8 * 3 - 4
  # The stored face is the 112 px crop of a full frame.
  src = sources.open_source("synthface", "part1+part2+part3", str(data), "bp4d")
  ex = next(src[i] for i in range(len(src)) if src[i]["subject"] == b"F002")
  assert ex["image"].shape == (112, 112, 3)
  frame = np.asarray(Image.open(ex["image/path"].decode()))
  assert frame.shape[:2] == (48, 64)  # the full 2 x 1.5 x 32 px frame
  # The unaligned variant keeps the whole frame (resized, centre crop).
  sources.prepare("synthface", str(tree), str(data), "bp4d_noalign")
  md = sources.info("synthface", str(data), "bp4d_noalign")
  assert md["align"]["mode"] == "none" and landmarks.SKIP_NO_LANDMARKS not in md["skips"]


def test_bp4d_without_2dfeatures_is_refused_with_the_way_out(synth_tree, tmp_path):
  from input_pipeline.readers import bp4d

  tree = tmp_path / "bp4d"
  shutil.copytree(synth_tree / "BP4D", tree, ignore=shutil.ignore_patterns("2DFeatures"))
  with pytest.raises(common.DatasetError, match=r"2DFeatures.*--align=detector or --align=none"):
    list(bp4d.read(tree, landmarks=True))
  assert len(list(bp4d.read(tree))) == 3 * 8 * 3  # without alignment it reads as before


def test_detector_finds_a_synthface_face_and_counts_an_empty_image():
  pytest.importorskip("mtcnn")
  det = align.Detector()
  subj = population.make_subject(0, 0, "F001")
  size = 112
  place = render.frame_placement(size, (0.4, 0.05, 1.0), (120, 120, 120))
  img, pts = render.render_frame(
    subj.identity, np.zeros(len(render.AUS)), size, render.NO_NUISANCE, place
  )
  faces = det(img)
  assert faces, "no face found in a frontal SynthFace frame"
  x, y, w, h = faces[0].box
  eyes = align.key_points(pts + 1.0, "bp4d49")[:2]
  assert np.all((eyes[:, 0] > x) & (eyes[:, 0] < x + w) & (eyes[:, 1] > y) & (eyes[:, 1] < y + h))
  iod = np.linalg.norm(eyes[1] - eyes[0])
  assert np.linalg.norm(faces[0].keypoints[:2] - eyes, axis=1).max() < 0.35 * iod
  assert det(np.full((120, 160, 3), 128, np.uint8)) == []
  assert det.align(np.full((120, 160, 3), 128, np.uint8), 64) is None


def _ibug68_from_bp4d49(pts49: np.ndarray) -> np.ndarray:
  """68 iBUG points (0-based) holding a 49-point face's eyes and mouth at iBUG's indices (the
  jaw, brows and nose left at the face's centre: alignment reads only eyes and mouth)."""
  out = np.tile(pts49.mean(0), (68, 1))
  out[36:48] = pts49[19:31]
  out[48:60] = pts49[31:43]
  out[60:68] = np.concatenate([pts49[43:46], pts49[46:49], pts49[43:45]])
  return out


def test_affectnet_faces_are_aligned_from_facial_landmarks(tmp_path):
  """AffectNet's csv layout: a SynthFace frame with its 68 points in `facial_landmarks` is
  stored aligned (pupils on the template, ±2 px); a row without landmarks is skipped and
  counted; a malformed one names the csv line."""
  root = tmp_path / "AffectNet"
  lists = root / "Manually_Annotated_file_lists"
  lists.mkdir(parents=True)
  header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
  subj = population.make_subject(0, 5, "F006")
  rows = {}
  for split, file in (("train", "training.csv"), ("test", "validation.csv")):
    lines = [header]
    for i, cx in enumerate((0.4, 0.6)):
      place = render.frame_placement(112, (cx, 0.05, 1.0), (110, 120, 130))
      img, pts = render.render_frame(
        subj.identity, np.zeros(len(render.AUS)), 112, render.NO_NUISANCE, place
      )
      rel = f"{split}/{i}.png"
      (root / "Manually_Annotated_Images" / split).mkdir(parents=True, exist_ok=True)
      Image.fromarray(img).save(root / "Manually_Annotated_Images" / rel)
      lm = ";".join(f"{v:.3f}" for v in _ibug68_from_bp4d49(pts).ravel()) if i == 0 else ""
      lines.append(f'{rel},0,0,224,168,"{lm}",1,0.5,0.1')
    rows[split] = lines
    (lists / file).write_text("\n".join(lines) + "\n")
  data = tmp_path / "data"
  sources.prepare("affectnet", str(root), str(data), "8class")
  md = sources.info("affectnet", str(data), "8class")
  assert md["align"]["mode"] == "landmarks" and md["num_examples"] == {"train": 1, "test": 1}
  assert md["skips"][landmarks.SKIP_NO_LANDMARKS] == 2
  face = sources.open_source("affectnet", "train", str(data), "8class")[0]["image"]
  np.testing.assert_allclose(_pupils(face, 112), align.template()[:2] * 112 - 0.5, atol=2.0)
  bad = rows["train"][:2] + [rows["train"][2].replace('""', '"1;2;3"')]
  (lists / "training.csv").write_text("\n".join(bad) + "\n")
  with pytest.raises(common.DatasetError, match=r"training.csv:3: facial_landmarks has 3 numbers"):
    sources.prepare("affectnet", str(root), str(tmp_path / "data2"), "8class")


# ----------------------------------------------------------------------------------------------
# A user's manifest with a landmarks column (SynthFace-Captions writes five points per photo).
# ----------------------------------------------------------------------------------------------


def _dots_image(path: pathlib.Path, key: np.ndarray, h: int = 90, w: int = 120) -> None:
  """White dots on black at the [3, 2] 0-based key points (eyes, mouth)."""
  img = np.zeros((h, w, 3), np.uint8)
  yy, xx = np.mgrid[:h, :w]
  for p in key:
    img[(xx - p[0]) ** 2 + (yy - p[1]) ** 2 < 3.0**2] = 255
  Image.fromarray(img).save(path)


def test_manifest_landmarks_align_faces_and_bad_rows_name_their_line(tmp_path, caplog):
  """Five points as JSON pairs, 68 (iBUG) points as a flat list and 49 (BP4D order) points as a
  CSV string of numbers, all 0-based: with `_lm` each prepared face has its painted eyes and
  mouth on the template (±1 px at 32 px); a row without landmarks is a counted skip. Without
  `_lm` the faces are stored as given, with a warning that the column went unused. A wrong
  number of points and a non-number are DatasetErrors naming the manifest line."""
  import json  # pylint: disable=import-outside-toplevel

  from input_pipeline.readers import manifest  # pylint: disable=import-outside-toplevel

  root, size = tmp_path / "m", 32
  root.mkdir()
  keys = [
    np.array([[40.0, 30.0], [70.0, 32.0], [56.0, 65.0]]),
    np.array([[30.0, 40.0], [62.0, 36.0], [50.0, 72.0]]),
    np.array([[50.0, 20.0], [80.0, 20.0], [65.0, 50.0]]),
  ]
  for i, k in enumerate(keys):
    _dots_image(root / f"{i}.png", k)
  _dots_image(root / "3.png", keys[0])
  k = keys[0]
  five = [
    k[0].tolist(),
    k[1].tolist(),
    [55.0, 48.0],
    (k[2] - [6, 0]).tolist(),
    (k[2] + [6, 0]).tolist(),
  ]
  ibug = np.zeros((68, 2))
  ibug[36:42], ibug[42:48], ibug[48], ibug[54] = keys[1][0], keys[1][1], keys[1][2], keys[1][2]
  pts49 = np.zeros((49, 2))
  pts49[19:25], pts49[25:31], pts49[31], pts49[37] = keys[2][0], keys[2][1], keys[2][2], keys[2][2]
  rows = [
    {"path": "0.png", "caption": "five points", "landmarks": five},
    {"path": "1.png", "caption": "68 points", "landmarks": ibug.reshape(-1).tolist()},
    {"path": "2.png", "caption": "49 points", "landmarks": " ".join(map(str, pts49.reshape(-1)))},
    {"path": "3.png", "caption": "no landmarks"},
  ]
  (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert manifest.has_landmarks(root)
  data_dir = tmp_path / "tfds"
  sources.prepare("manifest", root, data_dir, "default_lm", image_size=size)
  meta = sources.info("manifest", data_dir, f"default_lm_{size}px")
  assert meta["align"]["mode"] == "landmarks"
  assert meta["num_examples"] == {"train": 3}
  assert meta["skips"] == {landmarks.SKIP_NO_LANDMARKS: 1}
  ds = sources.open_source("manifest", "train", data_dir, f"default_lm_{size}px")
  yy, xx = np.mgrid[:size, :size]
  for i in range(3):
    out = ds[i]["image"][..., 0].astype(np.float64)
    for t in align.template() * size - 0.5:
      near = ((xx - t[0]) ** 2 + (yy - t[1]) ** 2 < 4**2) & (out > 100)
      np.testing.assert_allclose(_centroid(near), t, atol=1.0)

  caplog.clear()
  with caplog.at_level("WARNING"):
    plain = list(manifest.read(root))
  assert len(plain) == 4 and "landmarks" not in plain[0]
  assert any("landmarks column" in r.getMessage() for r in caplog.records)

  for bad, message in (
    (
      [[1.0, 2.0]] * 7,
      r"manifest.jsonl:2: landmarks: expected 5, 49, 66, 68 \(x, y\) points, got 14",
    ),
    ("1 2 x 4", r"manifest.jsonl:2: landmarks: expected numbers"),
    ([[1.0, float("nan")]] * 5, r"manifest.jsonl:2: landmarks: NaN"),
  ):
    rows[1]["landmarks"] = bad
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(common.DatasetError, match=message):
      list(manifest.read(root, landmarks=True))
