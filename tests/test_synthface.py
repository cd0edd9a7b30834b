"""SynthFace: determinism, on-disk layout, AU regions, activity statistics."""

from __future__ import annotations

import collections
import csv
import json
import pathlib
import re

import numpy as np
from PIL import Image
import pytest

from clef_jax import prompts
from input_pipeline import align
from input_pipeline import synthface
from input_pipeline.readers import landmarks
from input_pipeline.synthface import population
from input_pipeline.synthface import render
from input_pipeline.synthface import writer

TINY = dict(subjects=3, frames_per_task=6, raf_train=5, raf_test=3, size=48, progress=False)


def _tree(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[pathlib.Path, dict]:
  out = tmp_path_factory.mktemp("sf") / "synth"
  summary = synthface.generate(out, seed=3, workers=1, **TINY)
  return out, summary


def test_same_seed_is_byte_identical_any_workers(tiny, tmp_path):
  out, _ = tiny
  again = synthface.generate(tmp_path / "again", seed=3, workers=2, **TINY)
  assert pathlib.Path(again["out"]).name == "again"
  a, b = _tree(out), _tree(tmp_path / "again")
  assert a.keys() == b.keys()
  assert [k for k in a if a[k] != b[k]] == []
  other = _tree(
    pathlib.Path(synthface.generate(tmp_path / "other", seed=4, workers=1, **TINY)["out"])
  )
  assert len(other) == len(a)
  jpgs_a = sorted(v for k, v in a.items() if k.endswith(".jpg"))
  jpgs_o = sorted(v for k, v in other.items() if k.endswith(".jpg"))
  assert not set(jpgs_a) & set(jpgs_o)  # no image in common
  raf = [k for k in a if k.startswith("RAF/basic/Image")]
  assert all(a[k] != other[k] for k in raf)


def test_bp4d_layout(tiny):
  out, summary = tiny
  bp = out / "BP4D"
  subjects = sorted(p.name for p in bp.iterdir() if re.fullmatch(r"[FM]\d{3}", p.name))
  assert subjects == ["F001", "F002", "M001"]
  expected_header = ["0"] + [str(au) for au in synthface.AUS]
  assert expected_header[:20] == "0,1,2,4,5,6,7,9,10,11,12,14,15,16,17,20,23,24,25,26".split(",")
  expr_rows = list(csv.DictReader(open(bp / "SynthFace_expressions.csv", newline="")))
  assert list(expr_rows[0]) == ["subject", "task", "frame", "expression"]
  assert {r["expression"] for r in expr_rows} <= set(prompts.expressions())
  n_frames = 0
  for s in subjects:
    for t in synthface.TASKS:
      jpgs = sorted(int(p.stem) for p in (bp / s / t).glob("*.jpg"))
      assert all(re.fullmatch(r"[1-9]\d*\.jpg", p.name) for p in (bp / s / t).iterdir())
      assert len(jpgs) == 6 and jpgs == list(range(jpgs[0], jpgs[0] + 6))
      occ_path = bp / "AUCoding" / "AU_OCC" / f"{s}_{t}.csv"
      raw = occ_path.read_bytes()
      assert b"\r" not in raw and raw.endswith(b"\n")
      rows = list(csv.reader(open(occ_path, newline="")))
      assert rows[0] == expected_header
      occ = np.array([[int(v) for v in r] for r in rows[1:]])
      assert occ[:, 0].tolist() == jpgs
      assert set(np.unique(occ[:, 1:])) <= {0, 1, 9}
      for au in writer.INT_AUS:
        p = bp / "AUCoding" / "AU_INT" / f"AU{au:02d}" / f"{s}_{t}_AU{au:02d}.csv"
        lines = p.read_text().splitlines()
        pairs = np.array([[int(v) for v in line.split(",")] for line in lines])
        assert pairs[:, 0].tolist() == jpgs
        assert set(pairs[:, 1]) <= {0, 1, 2, 3, 4, 5, 9}
        # Occurrence is "intensity code >= 2", unknown in both files alike.
        col = occ[:, 1 + synthface.AUS.index(au)]
        np.testing.assert_array_equal(col == 9, pairs[:, 1] == 9)
        known = pairs[:, 1] != 9
        np.testing.assert_array_equal(col[known], (pairs[known, 1] >= 2).astype(int))
      n_frames += len(jpgs)
      assert [int(r["frame"]) for r in expr_rows if r["subject"] == s and r["task"] == t] == jpgs
  assert n_frames == summary["bp4d_frames"] == 3 * 8 * 6
  img = Image.open(next(bp.glob("F001/T1/*.jpg")))
  # Full video frames (2 x 1.5 the face size), each session with its 2DFeatures file: one
  # 49-point entry per frame, inside the frame.
  assert img.format == "JPEG" and img.size == (96, 72) and img.mode == "RGB"
  meta = json.loads((out / "synthface.json").read_text())
  assert meta["seed"] == 3 and meta["size"] == 48 and meta["version"] == synthface.VERSION
  assert meta["bp4d_frame"] == [96, 72]
  jpgs = sorted(int(p.stem) for p in bp.glob("F001/T1/*.jpg"))
  points = landmarks.read_bp4d(str(bp / "2DFeatures" / "F001_T1.mat"), jpgs)
  assert sorted(points) == jpgs
  for p in points.values():
    assert p.shape == (49, 2) and np.all(p >= 1) and np.all(p <= [96, 72])


def test_raf_aligned_images_undo_roll_scale_and_shift(tiny):
  """RAF-like 'aligned' images are aligned like RAF-DB's: a rolled, scaled, shifted render of a
  face aligns to nearly the same crop as the upright one, and its eyes sit on the template."""
  out, _ = tiny
  ident = render.sample_identity(np.random.default_rng(0), "F", wild=True)
  aus = np.zeros(len(render.AUS))
  moved = render.Nuisance(roll=18.0, scale=0.9, shift=(0.05, -0.04))
  size = 64
  raw = [render.render_face(ident, aus, size, n).astype(float) for n in (render.NO_NUISANCE, moved)]
  crop = [
    writer.aligned_face(ident, aus, size, n).astype(float) for n in (render.NO_NUISANCE, moved)
  ]
  inner = (slice(12, 52), slice(12, 52))  # the face, away from the corners a roll fills black
  raw_diff = np.abs(raw[0] - raw[1])[inner].mean()
  crop_diff = np.abs(crop[0] - crop[1])[inner].mean()
  assert crop_diff < raw_diff / 4, (crop_diff, raw_diff)
  # The eyes land on the template, level and centred. Eyes and mouth are fitted together by
  # least squares, so the eye distance is the template's (0.4 / 1.4 of the side) only to within
  # this face's proportions: 0.269 here.
  big = round(size * writer.AlignedCrop().oversample)
  pts = render.face_landmarks(ident, aus, big, moved, "bp4d49") + 1.0
  m = align.alignment_matrix(pts, "bp4d49", size)
  eyes = align.transform_points(m, align.key_points(pts, "bp4d49"))[:2]
  assert abs(np.linalg.norm(eyes[1] - eyes[0]) / size - 0.4 / 1.4) < 0.03
  assert abs(eyes[1, 1] - eyes[0, 1]) < 0.5 and abs(eyes[:, 0].mean() - (size - 1) / 2) < 0.5
  # The files on disk are these crops, JPEG-coded at the image's quality.
  im = population.make_raf_image(3, 0)
  want = writer.encode_jpeg(
    writer.aligned_face(im.identity, im.aus, 48, im.nuisance), im.jpeg_quality
  )
  assert (out / "RAF/basic/Image/aligned/train_00001_aligned.jpg").read_bytes() == want


def test_raf_layout(tiny):
  out, _ = tiny
  raf = out / "RAF" / "basic"
  lines = (raf / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
  names = [f"train_{i:05d}.jpg" for i in range(1, 6)] + [f"test_{i:04d}.jpg" for i in range(1, 4)]
  assert [ln.split(" ")[0] for ln in lines] == names
  assert all(re.fullmatch(r"(train_\d{5}|test_\d{4})\.jpg [1-7]", ln) for ln in lines)
  imgs = sorted(p.name for p in (raf / "Image" / "aligned").iterdir())
  assert imgs == sorted(n.replace(".jpg", "_aligned.jpg") for n in names)
  assert Image.open(raf / "Image" / "aligned" / "test_0001_aligned.jpg").size == (48, 48)
  # RAF-DB order 1..7 = surprise, fear, disgust, happiness, sadness, anger, neutral.
  assert synthface.RAF_LABELS == (
    "surprise",
    "fear",
    "disgust",
    "happiness",
    "sadness",
    "anger",
    "neutral",
  )


def test_subject_names_follow_bp4d():
  names = population.subject_names(41)
  assert names[:23] == [f"F{i:03d}" for i in range(1, 24)]
  assert names[23:] == [f"M{i:03d}" for i in range(1, 19)]
  n = population.subject_names(100)
  assert sum(x[0] == "F" for x in n) == 56 and len(set(n)) == 100


def test_unknown_codes_at_expected_rate():
  cells = np.concatenate(
    [
      population.unknown_mask(0, s, t, (40, len(synthface.AUS))).ravel()
      for s in range(41)
      for t in synthface.TASKS
    ]
  )
  # 249,280 cells; binomial sd of the rate ~ 0.0002.
  assert 0.0085 < cells.mean() < 0.0115


def test_unknown_codes_in_files_match_summary(tiny):
  out, summary = tiny
  nines = 0
  for p in (out / "BP4D" / "AUCoding" / "AU_OCC").glob("*.csv"):
    rows = list(csv.reader(open(p, newline="")))[1:]
    nines += sum(v == "9" for r in rows for v in r[1:])
  assert nines == summary["bp4d_unknown_cells"]
  assert summary["bp4d_label_cells"] == 3 * 8 * 6 * len(synthface.AUS)


def _region_mask(boxes, size: int) -> np.ndarray:
  yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
  m = np.zeros((size, size), bool)
  for x0, y0, x1, y1 in boxes:
    m |= (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
  return m


@pytest.mark.parametrize("au", render.AUS)
def test_each_au_changes_its_region(au):
  size = 64
  mask = _region_mask(synthface.AU_REGIONS[au], size)
  for k in range(3):
    ident = render.sample_identity(population.rng_for(11, k), "FM"[k % 2])
    off = render.render_face(ident, {}, size).astype(np.float64)
    on = render.render_face(ident, {au: 5.0}, size).astype(np.float64)
    diff = np.abs(on - off).mean(-1)
    inside, outside = diff[mask].mean(), diff[~mask].mean()
    # Visible: mean grey-level change over the whole box (the change itself is a few pixels of a
    # large box, e.g. a dimple), and concentrated in the box.
    assert inside > 0.5, (au, k, inside)
    assert inside > 8 * outside + 0.05, (au, k, inside, outside)
    # Intensity scales the change: 2 changes less than 5, but already visibly.
    mid = np.abs(render.render_face(ident, {au: 2.0}, size) - off).mean(-1)[mask].mean()
    assert 0.2 * inside < mid < inside, (au, k, mid, inside)


@pytest.mark.parametrize("au", [14, 24])
def test_layered_au_change_grows_with_intensity(au):
  # AU14 (dimpler) and AU24 (lip pressor) are drawn as layers whose parts never cancel: the mean
  # change in the AU's box grows strictly with the intensity, from trace to maximum.
  size = 64
  mask = _region_mask(synthface.AU_REGIONS[au], size)
  for k in range(4):
    ident = render.sample_identity(population.rng_for(11, k), "FM"[k % 2])
    off = render.render_face(ident, {}, size).astype(np.float64)
    change = [
      np.abs(render.render_face(ident, {au: x}, size) - off).mean(-1)[mask].mean()
      for x in (0.5, 1.0, 1.6, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
    ]
    assert np.all(np.diff(change) > 0), (au, k, np.round(change, 3))


def test_aus_visible_at_32px():
  ident = render.sample_identity(population.rng_for(5, 0), "F")
  off = render.render_face(ident, {}, 32).astype(np.float64)
  for au in render.AUS:
    diff = np.abs(render.render_face(ident, {au: 5.0}, 32) - off).mean(-1)
    mask = _region_mask(synthface.AU_REGIONS[au], 32)
    assert diff[mask].mean() > 4 * diff[~mask].mean() + 0.05 and diff[mask].mean() > 0.3, au


def test_render_shapes_and_errors():
  ident = render.sample_identity(np.random.default_rng(0), "M")
  img = render.render_face(
    ident, np.zeros(len(render.AUS)), 40, render.Nuisance(roll=5, noise=3, noise_seed=1)
  )
  assert img.shape == (40, 40, 3) and img.dtype == np.uint8
  with pytest.raises(KeyError, match="AU3"):
    render.render_face(ident, {3: 1.0}, 40)
  with pytest.raises(ValueError, match=r"\[0, 5\]"):
    render.render_face(ident, {12: 6.0}, 40)
  with pytest.raises(ValueError, match="shape"):
    render.render_face(ident, np.zeros(3), 40)


def test_expressions_are_noisy_prototypes():
  rng = np.random.default_rng(0)
  for name in prompts.expressions():
    proto = [au for au in population.expression_prototype(name) if au in render.AU_INDEX]
    samples = np.stack([population.expression_aus(rng, name, 1.0) for _ in range(200)])
    on = samples >= 1.5
    for au in proto:
      assert 0.7 < on[:, render.AU_INDEX[au]].mean() < 1.0, (name, au)  # noisy, not fixed
    others = [render.AU_INDEX[au] for au in render.AUS if au not in proto and au != 25]
    assert on[:, others].mean() < 0.15, name


def test_activity_is_informative_but_weak():
  shares = {}
  for t in synthface.TASKS:
    c = collections.Counter()
    for s in range(12):
      subj = population.make_subject(0, s, f"F{s + 1:03d}")
      c.update(population.make_session(0, s, subj, t, 40).expressions)
    shares[t] = c.most_common(1)[0][1] / c.total()
    target = max(synthface.ACTIVITY_MIX[t], key=synthface.ACTIVITY_MIX[t].get)
    non_neutral = [e for e, _ in c.most_common() if e != "neutral"]
    assert non_neutral[0] == target, (t, c)
  assert all(0.2 < v < 0.8 for v in shares.values()), shares


def test_refuses_non_empty_out_dir(tmp_path, capsys):
  out = tmp_path / "busy"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty"):
    synthface.generate(out, **{**TINY, "raf_train": 0, "raf_test": 0, "subjects": 1})
  assert (out / "keep.txt").read_text() == "mine"
  assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no temporary folder left behind
  args = [
    "--out",
    str(out),
    "--subjects",
    "1",
    "--frames-per-task",
    "2",
    "--raf-train",
    "1",
    "--raf-test",
    "1",
    "--size",
    "32",
    "--quiet",
    "--workers",
    "1",
  ]
  assert writer.main(args) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert writer.main(args + ["--overwrite"]) == 0
  assert not (out / "keep.txt").exists() and (out / "synthface.json").exists()


@pytest.mark.parametrize(
  "kwargs, msg",
  [
    ({"subjects": 0}, "subjects"),
    ({"frames_per_task": 0}, "frames-per-task"),
    ({"raf_test": -1}, "raf"),
    ({"size": 8}, "size"),
    ({"raf_test": 10000}, "4 digits"),
  ],
)
def test_bad_arguments(tmp_path, kwargs, msg):
  with pytest.raises(ValueError, match=msg):
    synthface.generate(tmp_path / "x", **{**TINY, **kwargs})
  assert not (tmp_path / "x").exists()
