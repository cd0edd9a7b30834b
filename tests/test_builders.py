"""TFDS builders: prepare -> tfds.data_source gives the reader's examples; metadata; failures.

References are independent of the builder: labels come from the readers (tested against
hand-computed values in the reader tests) and the expected images from a PIL resize written
here, compared within a JPEG tolerance.
"""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from input_pipeline import builders
from input_pipeline import prepare
from input_pipeline import sources
from input_pipeline.readers import bp4d
from input_pipeline.readers import common
from input_pipeline.readers import raf_db
from tests import fixtures_au

SIZE = 16
BP4D_AUS = [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24]  # DATASETS.md, evaluated order


def _str(v) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


@pytest.fixture(scope="module")
def prepared_bp4d(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("bp4d")
  root = fixtures_au.write_bp4d(tmp / "BP4D")
  data_dir = tmp / "tfds"
  # Unaligned (the fixture's frames are solid colours without landmarks; alignment has its own
  # tests in test_align.py): each stored face is its frame resized.
  sources.prepare("bp4d", root, data_dir, "default_noalign", image_size=SIZE)
  return root, data_dir


def test_bp4d_round_trip_fold1(prepared_bp4d):
  root, data_dir = prepared_bp4d
  config = f"default_noalign_{SIZE}px"
  expected = list(bp4d.read(root))
  assert len(expected) == 18  # 3 subjects x 2 tasks x 3 frames
  train_split, test_split = sources.fold_splits("bp4d", 1)
  assert (train_split, test_split) == ("part1+part2", "part3")
  for split, parts in ((train_split, (1, 2)), (test_split, (3,))):
    want = [e for e in expected if e["fold"] in parts]
    src = sources.open_source("bp4d", split, data_dir, config)
    assert len(src) == len(want)
    for i, e in enumerate(want):
      got = src[i]
      assert _str(got["image/path"]) == e["image/path"]
      assert _str(got["subject"]) == e["subject"] and _str(got["task"]) == e["task"]
      assert _str(got["activity_text"]) == e["activity_text"]
      assert int(got["frame"]) == e["frame"] and int(got["fold"]) == e["fold"]
      np.testing.assert_array_equal(got["au"], e["au"])
      np.testing.assert_array_equal(got["au_intensity"], e["au_intensity"])
      assert got["au"].dtype == np.int8 and got["au"].shape == (12,)
      assert got["image"].shape == (SIZE, SIZE, 3) and got["image"].dtype == np.uint8
      # Flat-colour 8x8 frames: the stored face is that colour, up to JPEG error.
      colour = np.asarray(fixtures_au.frame_color(e["frame"]), np.float32)
      assert np.abs(got["image"].astype(np.float32) - colour).max() <= 6


def test_bp4d_metadata_and_info(prepared_bp4d):
  _, data_dir = prepared_bp4d
  meta = sources.info("bp4d", data_dir, f"default_noalign_{SIZE}px")
  assert meta["aus"] == BP4D_AUS
  assert meta["subjects"] == ["F001", "F003", "F004"]
  assert meta["tasks"] == sorted({t for _, t in fixtures_au.default_bp4d_sessions()})
  assert meta["parts"] == {"1": ["F001"], "2": ["F003"], "3": ["F004"]}
  assert meta["num_examples"] == {"part1": 6, "part2": 6, "part3": 6}
  assert meta["image_size"] == SIZE and meta["skips"] == {}
  for task in meta["tasks"]:
    assert meta["activities"][task]
  positives = sum(np.asarray(s["au_positives"]) for s in meta["stats"].values())
  labels = np.stack([e["au"] for e in bp4d.read(prepared_bp4d[0])])
  np.testing.assert_array_equal(positives, (labels == 1).sum(0))
  text = prepare.summary("bp4d", meta)
  assert "part3: 6 examples" in text and "AU1 " in text


def _raf_tree(root: pathlib.Path, lines: list[str], n_images: int) -> pathlib.Path:
  (root / "basic" / "EmoLabel").mkdir(parents=True)
  (root / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
  rng = np.random.default_rng(0)
  for line in lines[:n_images]:
    stem = line.split()[0].rsplit(".", 1)[0]
    # A smooth image (JPEG-friendly): a random low-frequency pattern, 100x100 like RAF aligned.
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    arr = np.asarray(Image.fromarray(small).resize((100, 100), Image.Resampling.BILINEAR))
    path = root / "basic" / "Image" / "aligned" / f"{stem}_aligned.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")
  return root


def test_raf_db_round_trip(tmp_path):
  lines = [
    "train_00001.jpg 5",
    "train_00002.jpg 1",
    "test_0001.jpg 7",
    "test_0002.jpg 4",
    "train_00003.jpg 2",
  ]
  root = _raf_tree(tmp_path / "RAF-DB", lines, n_images=4)  # train_00003: no image
  data_dir = tmp_path / "tfds"
  sources.prepare("raf_db", root, data_dir, "aligned", image_size=32)
  meta = sources.info("raf_db", data_dir, "aligned_32px")
  assert meta["num_examples"] == {"train": 2, "test": 2}
  assert meta["skips"] == {"image file missing": 1}
  assert meta["classes"] == [
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
  ]
  assert meta["aus"] == []
  for split in ("train", "test"):
    want = list(raf_db.read(root, split=split))
    src = sources.open_source("raf_db", split, data_dir, "aligned_32px")
    assert len(src) == len(want)
    for i, e in enumerate(want):
      got = src[i]
      assert int(got["expression"]) == e["expression"]
      assert _str(got["image/path"]) == e["image/path"]
      ref = np.asarray(Image.fromarray(e["image"]).resize((32, 32), Image.Resampling.BICUBIC))
      diff = np.abs(got["image"].astype(np.float32) - ref.astype(np.float32))
      assert diff.mean() < 3 and diff.max() < 40
  # Labels by hand: train 5 -> sadness, 1 -> surprise; test 7 -> neutral, 4 -> happiness.
  assert [
    int(x["expression"]) for x in sources.open_source("raf_db", "train", data_dir, "aligned_32px")
  ] == [2, 3]
  raw = sources.open_source("raf_db", "test", data_dir, "aligned_32px", decode_images=False)
  assert [int(x["expression"]) for x in raw] == [0, 1]
  assert Image.open(io.BytesIO(raw[0]["image"])).format == "JPEG"


def test_failing_prepare_leaves_nothing_that_looks_complete(tmp_path):
  lines = ["train_00001.jpg 5", "test_0001.jpg 7", "train_00002.jpg 9"]  # label 9: fatal
  root = _raf_tree(tmp_path / "RAF-DB", lines, n_images=2)
  data_dir = tmp_path / "tfds"
  with pytest.raises(common.DatasetError, match=r"list_patition_label.txt:3: label 9 out of"):
    sources.prepare("raf_db", root, data_dir)
  assert not sources.is_prepared("raf_db", data_dir, "aligned")
  config_dir = data_dir / "raf_db" / "aligned"
  assert not config_dir.exists() or os.listdir(config_dir) == []  # no version, no incomplete.*
  with pytest.raises(FileNotFoundError, match="not prepared"):
    sources.open_source("raf_db", "train", data_dir)
  # Fixing the file and preparing again works.
  label = root / "basic" / "EmoLabel" / "list_patition_label.txt"
  label.write_text("train_00001.jpg 5\ntest_0001.jpg 7\n")
  sources.prepare("raf_db", root, data_dir)
  assert sources.info("raf_db", data_dir)["num_examples"] == {"train": 1, "test": 1}


def test_configs_and_fold_splits():
  assert builders.make_config("affectnet", "7class").options == (("num_classes", 7), ("crop", True))
  cfg = builders.make_config("affectnet", "7class", image_size=224)
  assert (cfg.name, cfg.image_size) == ("7class_224px", 224)
  assert builders.make_config("ferplus", "votes_64px").image_size == 64
  assert dict(builders.make_config("bp4d_plus", "seed5").options)["fold_seed"] == 5
  with pytest.raises(ValueError, match="unknown config '9class' for affectnet"):
    builders.make_config("affectnet", "9class")
  assert sources.fold_splits("disfa", 2) == ("part1+part3", "part2")
  assert sources.fold_splits("bp4d", 3) == ("part2+part3", "part1")
  with pytest.raises(ValueError, match="raf_db has no subject folds"):
    sources.fold_splits("raf_db", 1)
  for name, cls in builders.BUILDERS.items():  # registered under the DESIGN.md names
    assert tfds.builder_cls(name) is cls


def test_resize_face_is_shorter_side_then_centre_crop():
  image = np.zeros((40, 80, 3), np.uint8)
  image[:, 20:60] = 255  # the centre 40x40 square is white
  out = builders.resize_face(image, 20)
  assert out.shape == (20, 20, 3)
  assert out[:, 1:-1].min() >= 250  # only the white centre survives the crop


def test_ensure_synthface_generates_once_and_prepares_both_parts(tmp_path):
  sizes = dict(subjects=3, frames_per_task=1, raf_train=7, raf_test=3, size=32)
  paths = sources.ensure_synthface(tmp_path, seed=1, workers=1, progress=False, **sizes)
  tag = "seed1_subj3_fpt1_raftrain7_raftest3_size32"  # not the default sizes: named by theirs
  assert sorted(paths) == [f"bp4d_{tag}", f"raf_{tag}"]
  assert (tmp_path / f"synthface_raw_{tag}" / "synthface.json").is_file()
  bp = sources.info("synthface", tmp_path, f"bp4d_{tag}")
  assert sum(bp["num_examples"].values()) == 3 * 8 * 1  # subjects x tasks x frames
  assert bp["aus"] == BP4D_AUS and len(bp["subjects"]) == 3
  assert sorted(bp["num_examples"]) == ["part1", "part2", "part3"]
  raf = sources.info("synthface", tmp_path, f"raf_{tag}")
  assert raf["num_examples"] == {"train": 7, "test": 3}
  # A second call reuses everything; another seed gets folders of its own, never these.
  assert sources.ensure_synthface(tmp_path, seed=1, **sizes) == paths
  assert sources.synthface_config("bp4d", seed=2, **sizes) != f"bp4d_{tag}"
