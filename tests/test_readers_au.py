"""Readers of the AU datasets (BP4D, BP4D+, DISFA, SynthFace BP4D-like) on hand-made fixtures.

Expected labels, masks, counts and folds are written out by hand from DATASETS.md.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from input_pipeline.readers import bp4d
from input_pipeline.readers import bp4d_plus
from input_pipeline.readers import common
from input_pipeline.readers import disfa
from input_pipeline.readers import folds
from input_pipeline.readers import synthface
from tests import fixtures_au


def _assert_image_is(ex, n):
  """The example's image is the flat colour fixtures_au wrote for frame/line n."""
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (8, 8, 3)
  mean = ex["image"].reshape(-1, 3).mean(0)
  np.testing.assert_allclose(mean, fixtures_au.frame_color(n), atol=6)


def _by_key(examples):
  return {(ex["subject"], ex["task"], ex["frame"]): ex for ex in examples}


# ----------------------------------------------------------------------------------------------
# Folds.
# ----------------------------------------------------------------------------------------------


def test_fold_convention():
  assert [folds.test_part(f) for f in (1, 2, 3)] == [3, 2, 1]
  assert [folds.train_parts(f) for f in (1, 2, 3)] == [(1, 2), (1, 3), (2, 3)]
  assert folds.test_part(1, num_parts=5) == 5 and folds.train_parts(5, num_parts=5) == (2, 3, 4, 5)
  with pytest.raises(ValueError, match="1..3"):
    folds.test_part(4)


def test_standard_parts():
  assert [len(folds.BP4D_PARTS[p]) for p in (1, 2, 3)] == [14, 14, 13]
  bp4d_all = sum(folds.BP4D_PARTS.values(), ())
  assert len(set(bp4d_all)) == 41
  assert set(bp4d_all) == {f"F{i:03d}" for i in range(1, 24)} | {f"M{i:03d}" for i in range(1, 19)}
  assert (bp4d.fold_of("F001"), bp4d.fold_of("M011"), bp4d.fold_of("F014")) == (1, 2, 3)
  assert bp4d.fold_of("F099") == 0
  disfa_all = sum(folds.DISFA_PARTS.values(), ())
  missing = {"SN014", "SN015", "SN019", "SN020", "SN022"}
  assert set(disfa_all) == {f"SN{i:03d}" for i in range(1, 33)} - missing
  assert (disfa.fold_of("SN032"), disfa.fold_of("SN024"), disfa.fold_of("SN004")) == (1, 2, 3)


def test_seeded_parts_deterministic_and_exclusive():
  subjects = [f"S{i:02d}" for i in range(10)]
  a = folds.seeded_parts(subjects, 3, seed=7)
  assert a == folds.seeded_parts(list(reversed(subjects)), 3, seed=7)  # order-independent
  members = [s for p in (1, 2, 3) for s in a[p]]
  assert sorted(members) == subjects  # every subject exactly once
  assert sorted(len(a[p]) for p in a) == [3, 3, 4]
  assert all(list(a[p]) == sorted(a[p]) for p in a)
  assert any(folds.seeded_parts(subjects, 3, seed=s) != a for s in range(8, 12))
  with pytest.raises(ValueError, match="2 subject"):
    folds.seeded_parts(["A", "B"], 3, seed=0)
  # BP4D+ default split: 140 released subjects in parts of 47/47/46.
  assert sorted(len(v) for v in bp4d_plus.PARTS.values()) == [46, 47, 47]
  assert len(set(sum(bp4d_plus.PARTS.values(), ()))) == 140
  assert "part1 (47): " in folds.format_parts(bp4d_plus.PARTS)


# ----------------------------------------------------------------------------------------------
# BP4D.
# ----------------------------------------------------------------------------------------------

EVAL_AND_EXTRA = list(fixtures_au.CSV_AUS)
SHUFFLED = EVAL_AND_EXTRA[:]
random.Random(3).shuffle(SHUFFLED)


def _write_bp4d_main(root):
  sessions = {
    ("F001", "T1"): {
      10: {1: 1, 12: 9, 24: 1, 5: 1, 27: 1},  # AU5/AU27 are not evaluated: ignored
      11: {6: 1, 10: 1, 12: 1, 14: 9},
      12: {},  # no image for this row
      13: {23: 1, 4: 9},
    },
    ("F003", "T8"): {1: {2: 1}, 2: {17: 9, 15: 1}},
    ("F004", "T2"): {5: {7: 1, 9: 1}},
  }
  images = {("F001", "T1"): [10, 11, 13, 14], ("F003", "T8"): [1, 2], ("F004", "T2"): [5]}
  intensity = {
    ("F001", "T1"): {
      6: {10: 0, 11: 3, 13: 9},
      10: {10: 1, 11: 5, 13: 0},
      12: {10: 9, 11: 4, 13: 2},
      14: {10: 0, 11: 2, 13: 0},
      17: {10: 0, 11: 0, 13: 1},
    }
  }
  root = fixtures_au.write_bp4d(
    root,
    sessions,
    images=images,
    columns=SHUFFLED,
    padded={11, 13, 2},
    crlf=True,
    intensity=intensity,
  )
  # Same frame 10 also under its padded name: the unpadded one is kept, one duplicate counted.
  fixtures_au.write_image(root / "F001" / "T1" / "0010.jpg", 99)
  return root


def test_bp4d_labels_masks_counts_folds(tmp_path):
  root = _write_bp4d_main(tmp_path / "BP4D")
  with open(root / "AUCoding" / "AU_OCC" / "F001_T1.csv", "rb") as f:
    assert b"\r\n" in f.read()
  skips = common.Skips()
  examples = list(bp4d.read(root, skips=skips))
  keys = [(e["subject"], e["task"], e["frame"]) for e in examples]
  assert keys == [
    ("F001", "T1", 10),
    ("F001", "T1", 11),
    ("F001", "T1", 13),
    ("F003", "T8", 1),
    ("F003", "T8", 2),
    ("F004", "T2", 5),
  ]
  ex = _by_key(examples)
  # AUS order: 1 2 4 6 7 10 12 14 15 17 23 24
  expected_au = {
    ("F001", "T1", 10): [1, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1],
    ("F001", "T1", 11): [0, 0, 0, 1, 0, 1, 1, -1, 0, 0, 0, 0],
    ("F001", "T1", 13): [0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 1, 0],
    ("F003", "T8", 1): [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ("F003", "T8", 2): [0, 0, 0, 0, 0, 0, 0, 0, 1, -1, 0, 0],
    ("F004", "T2", 5): [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],
  }
  # Intensity only for AU 6, 10, 12, 14, 17 (positions 3, 5, 6, 7, 9), F001/T1 only.
  n = -1
  expected_int = {
    ("F001", "T1", 10): [n, n, n, 0, n, 1, -1, 0, n, 0, n, n],
    ("F001", "T1", 11): [n, n, n, 3, n, 5, 4, 2, n, 0, n, n],
    ("F001", "T1", 13): [n, n, n, -1, n, 0, 2, 0, n, 1, n, n],
  }
  for key, want in expected_au.items():
    assert ex[key]["au"].dtype == np.int8
    np.testing.assert_array_equal(ex[key]["au"], want, err_msg=str(key))
    np.testing.assert_array_equal(
      ex[key]["au_intensity"], expected_int.get(key, [n] * 12), err_msg=str(key)
    )
    _assert_image_is(ex[key], key[2])
  assert [ex[k]["fold"] for k in keys] == [1, 1, 1, 2, 2, 3]
  assert ex[("F001", "T1", 10)]["image/path"] == os.path.join(root, "F001", "T1", "10.jpg")
  assert ex[("F001", "T1", 11)]["image/path"].endswith(os.path.join("T1", "0011.jpg"))
  assert "joke" in ex[("F001", "T1", 10)]["activity_text"]
  assert "smell" in ex[("F003", "T8", 1)]["activity_text"]
  assert all(e["expression"] == -1 and e["expression/votes"].sum() == 0 for e in examples)
  assert skips.counts == {
    common.SKIP_ROW_WITHOUT_IMAGE: 1,  # F001/T1 frame 12
    common.SKIP_IMAGE_WITHOUT_ROW: 1,  # F001/T1 14.jpg
    common.SKIP_DUPLICATE_FRAME: 1,  # 0010.jpg next to 10.jpg
    bp4d.SKIP_INTENSITY_FILE_MISSING: 10,  # 5 AUs x (F003/T8, F004/T2)
  }
  assert skips.examples[common.SKIP_DUPLICATE_FRAME][0].endswith("0010.jpg")
  assert bp4d.subjects(root) == ["F001", "F003", "F004"]
  assert bp4d.tasks() == [f"T{i}" for i in range(1, 9)]


def test_bp4d_without_intensity_and_default_fixture(tmp_path):
  root = _write_bp4d_main(tmp_path / "a")
  examples = list(bp4d.read(root, intensity=False, skips=common.Skips()))
  assert all((e["au_intensity"] == -1).all() for e in examples)
  # The default fixture: 3 subjects x 2 tasks x 3 frames, AU1 = (f + s) % 2, AU12 = [f == 2],
  # AU6 code 9 at frame 3.
  root = fixtures_au.write_bp4d(tmp_path / "b")
  skips = common.Skips()
  examples = list(bp4d.read(root, skips=skips))
  assert len(examples) == 18 and skips.total == 0
  for e in examples:
    s = ("F001", "F003", "F004").index(e["subject"])
    assert e["au"][0] == (e["frame"] + s) % 2
    assert e["au"][6] == int(e["frame"] == 2)
    assert e["au"][3] == (-1 if e["frame"] == 3 else 0)
    assert e["fold"] == s + 1


# ----------------------------------------------------------------------------------------------
# BP4D+.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zipped", [True, False])
def test_bp4d_plus_coded_frames_only(tmp_path, zipped):
  sessions = {
    ("F001", "T1"): {2: {1: 1, 24: 9}, 3: {2: 1, 12: 1}},
    ("M058", "T8"): {1: {4: 1}, 2: {}, 3: {23: 9}},
  }
  images = {
    ("F001", "T1"): [1, 2, 3, 4],  # 1-based names; 1 and 4 lie outside the coded segment
    ("F001", "T2"): [1, 2],  # uncoded task: never read
    ("F001", "T6"): [1],  # coded task whose AU_OCC file is missing
    ("M058", "T8"): [0, 1, 2],  # 0-based names: CSV frame n is image n - 1
  }
  root = fixtures_au.write_bp4d_plus(
    tmp_path / "BP4D+", sessions, zipped=zipped, images=images, columns=SHUFFLED
  )
  assert (root / "2D+3D" / "F001.zip").exists() == zipped
  skips = common.Skips()
  examples = list(bp4d_plus.read(root, skips=skips))
  keys = [(e["subject"], e["task"], e["frame"]) for e in examples]
  assert keys == [
    ("F001", "T1", 2),
    ("F001", "T1", 3),
    ("M058", "T8", 1),
    ("M058", "T8", 2),
    ("M058", "T8", 3),
  ]
  ex = _by_key(examples)
  np.testing.assert_array_equal(ex[("F001", "T1", 2)]["au"], [1] + [0] * 10 + [-1])
  np.testing.assert_array_equal(ex[("F001", "T1", 3)]["au"], [0, 1] + [0] * 4 + [1] + [0] * 5)
  np.testing.assert_array_equal(ex[("M058", "T8", 1)]["au"], [0, 0, 1] + [0] * 9)
  np.testing.assert_array_equal(ex[("M058", "T8", 3)]["au"], [0] * 10 + [-1, 0])
  _assert_image_is(ex[("F001", "T1", 2)], 2)
  _assert_image_is(ex[("F001", "T1", 3)], 3)
  for f in (1, 2, 3):
    _assert_image_is(ex[("M058", "T8", f)], f - 1)
  assert skips.counts == {
    bp4d_plus.SKIP_UNCODED_FRAME: 2,
    bp4d_plus.SKIP_CODED_TASK_WITHOUT_LABELS: 1,
  }
  part = {s: p for p, members in bp4d_plus.PARTS.items() for s in members}
  assert [e["fold"] for e in examples] == [part["F001"]] * 2 + [part["M058"]] * 3
  assert "pain" in ex[("M058", "T8", 1)]["activity_text"]  # BP4D+ T8: ice water
  path = ex[("F001", "T1", 2)]["image/path"]
  if zipped:
    assert path == f"{root / '2D+3D' / 'F001.zip'}:F001/T1/2.jpg"
  else:
    assert path == os.path.join(root, "F001", "T1", "2.jpg")
  assert bp4d_plus.subjects(root) == ["F001", "M058"]
  # A different seed and k: fold is the subject's part in that split, and stays subject-exclusive.
  split = folds.seeded_parts(bp4d_plus.ALL_SUBJECTS, 2, seed=5)
  got = {(e["subject"], e["fold"]) for e in bp4d_plus.read(root, folds=2, fold_seed=5)}
  assert got == {("F001", folds.part_of(split, "F001")), ("M058", folds.part_of(split, "M058"))}
  assert bp4d_plus.fold_of("F001", folds=2, fold_seed=5) == folds.part_of(split, "F001")


def test_bp4d_plus_bad_zip(tmp_path):
  root = fixtures_au.write_bp4d_plus(tmp_path / "BP4D+")
  (root / "2D+3D" / "F001.zip").write_bytes(b"not a zip")
  with pytest.raises(common.DatasetError, match=r"F001\.zip: not a readable zip"):
    list(bp4d_plus.read(root))


# ----------------------------------------------------------------------------------------------
# DISFA.
# ----------------------------------------------------------------------------------------------


def _write_disfa_main(root):
  labels = {
    # AUs in DISFA order of AUS: 1 2 4 6 9 12 25 26; AU5 is not evaluated.
    "SN001": {1: [0, 1, 2, 3], 2: [5, 0, 0, 2], 25: [2, 2, 1, 0], 5: [4, 4, 4, 4]},
    "SN003": {26: [1, 2]},
  }
  root = fixtures_au.write_disfa(root, labels, num_images={"SN001": 5, "SN003": 1})
  for t in range(1):  # SN003 frames as JPEG instead of PNG
    os.remove(root / "SN003" / f"{t}.png")
    fixtures_au.write_image(root / "SN003" / f"{t}.jpg", t)
  return root


def test_disfa_threshold_pairing_folds(tmp_path):
  root = _write_disfa_main(tmp_path / "DISFA")
  first = (root / "ActionUnit_Labels" / "SN001" / "SN001_au1.txt").read_text().splitlines()[0]
  assert first == "1,0"  # label files count from 1; line 0 still pairs with image 0
  skips = common.Skips()
  examples = list(disfa.read(root, skips=skips))
  keys = [(e["subject"], e["frame"]) for e in examples]
  assert keys == [("SN001", 0), ("SN001", 1), ("SN001", 2), ("SN001", 3), ("SN003", 0)]
  want_au = [
    [0, 1, 0, 0, 0, 0, 1, 0],
    [0, 0, 0, 0, 0, 0, 1, 0],
    [1, 0, 0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 0],
  ]
  want_int = [
    [0, 5, 0, 0, 0, 0, 2, 0],
    [1, 0, 0, 0, 0, 0, 2, 0],
    [2, 0, 0, 0, 0, 0, 1, 0],
    [3, 2, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, 0, 1],
  ]
  for e, au, inten in zip(examples, want_au, want_int):
    assert e["au"].shape == (8,) and e["au"].dtype == np.int8
    np.testing.assert_array_equal(e["au"], au)
    np.testing.assert_array_equal(e["au_intensity"], inten)
    _assert_image_is(e, e["frame"])
    assert e["task"] == "" and e["activity_text"] == ""
  assert [e["fold"] for e in examples] == [1, 1, 1, 1, 3]
  assert examples[4]["image/path"].endswith(os.path.join("SN003", "0.jpg"))
  assert skips.counts == {
    common.SKIP_IMAGE_WITHOUT_ROW: 1,  # SN001/4.png
    common.SKIP_ROW_WITHOUT_IMAGE: 1,
  }  # SN003 line 2
  assert disfa.subjects(root) == ["SN001", "SN003"] and disfa.tasks() == []
  # A stricter threshold and PNG only.
  strict = list(disfa.read(root, occurrence_threshold=3, image_ext="png", skips=common.Skips()))
  assert [(e["subject"], e["frame"]) for e in strict] == keys[:4]
  np.testing.assert_array_equal(strict[2]["au"], [0] * 8)  # AU1 = 2 < 3
  np.testing.assert_array_equal(strict[3]["au"], [1, 0, 0, 0, 0, 0, 0, 0])


# ----------------------------------------------------------------------------------------------
# SynthFace BP4D-like tree.
# ----------------------------------------------------------------------------------------------


def test_synthface_expressions(tmp_path):
  inner = fixtures_au.write_bp4d(tmp_path / "out" / "BP4D")
  fixtures_au.write_synthface_expressions(
    inner, [("F001", "T1", 1, "happiness"), ("F003", "T8", 2, "contempt"), ("F004", "T1", 3, "")]
  )
  examples = _by_key(synthface.read(tmp_path / "out"))
  assert len(examples) == 18
  # Canonical order: neutral, happiness, sadness, surprise, fear, disgust, anger, contempt.
  assert examples[("F001", "T1", 1)]["expression"] == 1
  assert examples[("F003", "T8", 2)]["expression"] == 7
  assert examples[("F004", "T1", 3)]["expression"] == -1
  assert examples[("F001", "T8", 1)]["expression"] == -1
  # Default: a seeded balanced split, one subject per part here.
  parts = folds.seeded_parts(["F001", "F003", "F004"], 3, 0)
  assert sorted(len(v) for v in parts.values()) == [1, 1, 1]
  assert {(s, e["fold"]) for (s, _, _), e in examples.items()} == {
    (s, folds.part_of(parts, s)) for s in ("F001", "F003", "F004")
  }
  assert synthface.fold_of("F004", ["F001", "F003", "F004"]) == folds.part_of(parts, "F004")
  seeded = list(synthface.read(inner, folds=3, fold_seed=1))
  assert sorted(e["fold"] for e in seeded)[::6] == [1, 2, 3]
  # folds=None: BP4D's parts by name (F001 part1, F003 part2, F004 part3).
  by_name = {(e["subject"], e["fold"]) for e in synthface.read(inner, folds=None)}
  assert by_name == {("F001", 1), ("F003", 2), ("F004", 3)}
  fixtures_au.write_synthface_expressions(inner, [("F001", "T1", 1, "glee")])
  with pytest.raises(
    common.DatasetError, match=r"SynthFace_expressions\.csv:2: unknown expression"
  ):
    list(synthface.read(tmp_path / "out"))


# ----------------------------------------------------------------------------------------------
# Bad inputs.
# ----------------------------------------------------------------------------------------------


def test_missing_label_files(tmp_path):
  root = fixtures_au.write_bp4d(tmp_path / "BP4D")
  missing = root / "AUCoding" / "AU_OCC" / "F003_T8.csv"
  os.remove(missing)
  with pytest.raises(common.DatasetError, match="AU occurrence file missing") as e:
    list(bp4d.read(root))
  assert str(missing) in str(e.value)

  root = fixtures_au.write_disfa(tmp_path / "DISFA")
  missing = root / "ActionUnit_Labels" / "SN003" / "SN003_au9.txt"
  os.remove(missing)
  with pytest.raises(common.DatasetError, match="AU9") as e:
    list(disfa.read(root))
  assert str(missing) in str(e.value)


def test_label_file_without_frames_is_counted(tmp_path):
  root = fixtures_au.write_bp4d(tmp_path / "BP4D")
  fixtures_au.write_occ_csv(root / "AUCoding" / "AU_OCC" / "M001_T3.csv", {1: {}})
  skips = common.Skips()
  assert len(list(bp4d.read(root, skips=skips))) == 18
  assert skips.counts == {bp4d.SKIP_LABELS_WITHOUT_FRAMES: 1}


def test_csv_missing_au_column(tmp_path):
  cols = [a for a in fixtures_au.CSV_AUS if a != 23]
  root = fixtures_au.write_bp4d(tmp_path / "BP4D", columns={("F003", "T1"): cols})
  with pytest.raises(common.DatasetError, match=r"F003_T1\.csv:1: .*AU23"):
    list(bp4d.read(root))
  root = fixtures_au.write_bp4d_plus(tmp_path / "BP4D+", columns=cols)
  with pytest.raises(common.DatasetError, match=r"F001_T1\.csv:1: .*AU23"):
    list(bp4d_plus.read(root))


def test_non_image_and_truncated_frames_are_skipped(tmp_path):
  root = fixtures_au.write_bp4d(tmp_path / "BP4D")
  folder = root / "F001" / "T1"
  (folder / "notes.txt").write_text("not a frame")
  fixtures_au.write_truncated_jpeg(folder / "2.jpg")
  (folder / "3.jpg").write_text("a text file named like a frame")
  skips = common.Skips()
  examples = list(bp4d.read(root, skips=skips))
  assert len(examples) == 16
  assert ("F001", "T1", 2) not in _by_key(examples) and ("F001", "T1", 1) in _by_key(examples)
  assert skips.counts == {common.SKIP_NON_FRAME_FILE: 1, "unreadable or non-image file": 2}

  root = fixtures_au.write_disfa(tmp_path / "DISFA")
  fixtures_au.write_truncated_jpeg(root / "SN001" / "1.jpg")
  os.remove(root / "SN001" / "1.png")
  (root / "SN001" / "Thumbs.db").write_bytes(b"\0\1")
  skips = common.Skips()
  examples = list(disfa.read(root, skips=skips))
  assert [(e["subject"], e["frame"]) for e in examples] == [
    ("SN001", 0),
    ("SN001", 2),
    ("SN003", 0),
    ("SN003", 1),
    ("SN003", 2),
  ]
  assert skips.counts == {common.SKIP_NON_FRAME_FILE: 1, "unreadable or non-image file": 1}


@pytest.mark.parametrize("reader", [bp4d, bp4d_plus, disfa, synthface])
def test_missing_or_empty_root(tmp_path, reader):
  with pytest.raises(common.DatasetError, match="folder not found") as e:
    reader.read(tmp_path / "nope")
  assert str(tmp_path / "nope") in str(e.value)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(common.DatasetError, match="expected") as e:
    reader.read(empty)
  assert str(empty) in str(e.value)


def test_no_subjects_found(tmp_path):
  (tmp_path / "AUCoding" / "AU_OCC").mkdir(parents=True)
  with pytest.raises(common.DatasetError, match="no subject folders found"):
    bp4d.read(tmp_path)
  with pytest.raises(common.DatasetError, match="no subjects found"):
    bp4d_plus.read(tmp_path)
  (tmp_path / "ActionUnit_Labels").mkdir()
  with pytest.raises(common.DatasetError, match="no subject folders found"):
    disfa.read(tmp_path)
  # Subjects exist but no frame matches a label row: nothing to yield is an error too.
  root = fixtures_au.write_bp4d(tmp_path / "BP4D", images={("F001", "T1"): [7]})
  with pytest.raises(common.DatasetError, match="no usable examples") as e:
    list(bp4d.read(root))
  assert "label row without image" in str(e.value)


def test_labels_out_of_range(tmp_path):
  sessions = fixtures_au.default_bp4d_sessions()
  sessions[("F004", "T8")][2][15] = 7
  root = fixtures_au.write_bp4d(tmp_path / "BP4D", sessions, crlf=True)
  with pytest.raises(common.DatasetError, match=r"F004_T8\.csv:3: AU15 code 7"):
    list(bp4d.read(root))

  root = fixtures_au.write_bp4d(
    tmp_path / "BP4D_int", intensity={("F001", "T1"): {12: {1: 0, 2: 6}}}
  )
  with pytest.raises(common.DatasetError, match=r"F001_T1_AU12\.csv:2: intensity 6"):
    list(bp4d.read(root))

  root = fixtures_au.write_disfa(tmp_path / "DISFA", {"SN002": {4: [0, 5, 6]}})
  with pytest.raises(common.DatasetError, match=r"SN002_au4\.txt:3: intensity 6 is not in 0\.\.5"):
    list(disfa.read(root))


def test_disfa_line_count_mismatch(tmp_path):
  root = fixtures_au.write_disfa(tmp_path / "DISFA")
  path = root / "ActionUnit_Labels" / "SN001" / "SN001_au12.txt"
  path.write_text("1,0\n2,0\n")
  with pytest.raises(common.DatasetError, match=r"SN001_au12\.txt: has 2 label lines but .*has 3"):
    list(disfa.read(root))


def test_bp4d_malformed_rows(tmp_path):
  root = fixtures_au.write_bp4d(tmp_path / "BP4D")
  csv = root / "AUCoding" / "AU_OCC" / "F001_T1.csv"
  lines = csv.read_text().splitlines()
  csv.write_text("\n".join(lines + [lines[1]]) + "\n")  # frame 1 again
  with pytest.raises(common.DatasetError, match=r"F001_T1\.csv:5: frame 1 listed twice"):
    list(bp4d.read(root))
  csv.write_text("\n".join(lines[:2] + ["x" + lines[2]]) + "\n")
  with pytest.raises(common.DatasetError, match=r"F001_T1\.csv:3: frame number"):
    list(bp4d.read(root))


def test_parse_int():
  assert common.parse_int("7", "f", 1, "x") == 7 and common.parse_int(" 1.0", "f", 1, "x") == 1
  assert common.parse_int("-1", "f", 1, "x") == -1
  for bad in ("1.5", "", "nan", "one"):
    with pytest.raises(common.DatasetError, match=r"f:3: AU1: expected an integer"):
      common.parse_int(bad, "f", 3, "AU1")
