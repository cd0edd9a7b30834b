"""Faults a new user meets while preparing data (issue 14), through the prepare command itself.

--overwrite with a bad --manual_dir keeps the dataset prepared before; an empty --manual_dir is
refused with the folder and what the dataset expects, leaving nothing under data_dir; SynthFaces
of two sizes (the default job's and the tiny configs') live side by side in one data_dir.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from input_pipeline import builders
from input_pipeline import sources
from input_pipeline import synthface

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 16
CONFIG = f"default_{SIZE}px"


def _manifest(root: pathlib.Path, splits: list[str]) -> pathlib.Path:
  """A manifest folder: image i is a flat grey 10*i+20 image in split splits[i]."""
  (root / "img").mkdir(parents=True, exist_ok=True)
  lines = ["path,subject,expression,split"]
  for i, split in enumerate(splits):
    Image.fromarray(np.full((20, 20, 3), 10 * i + 20, np.uint8)).save(root / "img" / f"{i}.png")
    lines.append(f"img/{i}.png,S{i},happiness,{split}")
  (root / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return root


def _prepare_cli(manual_dir, data_dir, *extra: str) -> subprocess.CompletedProcess:
  cmd = [sys.executable, "-m", "input_pipeline.prepare", "--dataset=manifest"]
  cmd += [f"--manual_dir={manual_dir}", f"--data_dir={data_dir}", f"--config={CONFIG}", *extra]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _paths(data_dir) -> dict[str, list[str]]:
  """{split: image paths} of the prepared manifest dataset."""
  info = sources.info("manifest", data_dir, CONFIG)
  return {
    split: [
      ex["image/path"].decode()
      for ex in sources.open_source("manifest", split, data_dir, CONFIG, decode_images=False)
    ]
    for split in info["num_examples"]
  }


def _listing(data_dir: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*"))


def test_overwrite_keeps_the_old_dataset_until_the_new_one_is_complete(tmp_path):
  old_root = _manifest(tmp_path / "old", ["train", "train", "test"])
  data_dir = tmp_path / "tfds"
  sources.prepare("manifest", old_root, data_dir, CONFIG)
  before, files = _paths(data_dir), _listing(data_dir)
  assert {k: len(v) for k, v in before.items()} == {"train": 2, "test": 1}

  # A folder that does not exist: refused before anything is touched.
  proc = _prepare_cli(tmp_path / "nope", data_dir, "--overwrite")
  assert proc.returncode == 1, proc.stderr
  assert f"error: {tmp_path / 'nope'}: folder not found. Point --manual_dir at" in proc.stderr
  assert "the dataset prepared before is unchanged" in proc.stderr
  assert _listing(data_dir) == files and _paths(data_dir) == before

  # A folder without a manifest: fails inside TFDS's preparation, after the build has begun.
  broken = tmp_path / "broken"
  (broken / "img").mkdir(parents=True)
  (broken / "notes.txt").write_text("not a manifest\n")
  proc = _prepare_cli(broken, data_dir, "--overwrite")
  assert proc.returncode == 1, proc.stderr
  assert f"error: {broken}: " in proc.stderr and "manifest.csv" in proc.stderr, proc.stderr
  assert "Traceback" not in proc.stderr
  assert _listing(data_dir) == files and _paths(data_dir) == before  # no .prepare.* left

  # Without --overwrite the prepared dataset is reused, whatever the folder holds now.
  new_root = _manifest(tmp_path / "new", ["train", "test", "test", "test"])
  proc = _prepare_cli(new_root, data_dir)
  assert proc.returncode == 0, proc.stderr
  assert "already prepared: reused" in proc.stdout and _paths(data_dir) == before

  # A successful --overwrite replaces it.
  proc = _prepare_cli(new_root, data_dir, "--overwrite")
  assert proc.returncode == 0, proc.stderr
  assert "train: 1 examples" in proc.stdout and "test: 3 examples" in proc.stdout
  after = _paths(data_dir)
  assert after == {
    "train": [str(new_root / "img" / "0.png")],
    "test": [str(new_root / "img" / f"{i}.png") for i in (1, 2, 3)],
  }
  version = str(builders.VERSION)
  assert sorted(os.listdir(data_dir)) == ["manifest"]  # no .prepare.* folder, no downloads/
  assert os.listdir(data_dir / "manifest" / CONFIG) == [version]


def test_empty_manual_dir_is_refused_naming_it_and_what_is_expected(tmp_path):
  empty = tmp_path / "RAF-DB"
  empty.mkdir()
  data_dir = tmp_path / "tfds"
  cmd = [sys.executable, "-m", "input_pipeline.prepare", "--dataset=raf_db"]
  cmd += [f"--manual_dir={empty}", f"--data_dir={data_dir}"]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr
  assert proc.stderr.strip() == (
    f"error: {empty}: the folder is empty: nothing to prepare raf_db from. Point --manual_dir at "
    "the RAF-DB folder that holds basic/ (basic/EmoLabel/list_patition_label.txt and "
    "basic/Image/aligned/ or basic/Image/original/)."
  )
  assert not data_dir.exists() or _listing(data_dir) == []
  # A file given as the folder is refused the same way.
  with pytest.raises(ValueError, match=r"manifest.csv: not a folder\. Point --manual_dir at"):
    sources.prepare("manifest", _manifest(tmp_path / "m", ["train"]) / "manifest.csv", data_dir)
  assert not data_dir.exists() or _listing(data_dir) == []


DEFAULT_SIZES = dict(
  seed=0, subjects=41, frames_per_task=40, raf_train=2400, raf_test=600, size=112
)


def test_synthface_config_names_default_sizes_plainly_and_others_by_their_values():
  assert sources.synthface_config("bp4d", **DEFAULT_SIZES) == "bp4d"
  assert sources.synthface_config("raf") == "raf"
  tiny = dict(seed=0, subjects=6, frames_per_task=6, raf_train=64, raf_test=32, size=32)
  assert sources.synthface_config("raf", **tiny) == "raf_subj6_fpt6_raftrain64_raftest32_size32"
  assert sources.synthface_config("bp4d_64px", seed=3) == "bp4d_seed3_64px"
  assert sources.synthface_config("bp4d", image_size=64, seed=3) == "bp4d_seed3_64px"
  # The names are builder configs: the part decides what is read.
  cfg = builders.make_config("synthface", "raf_seed3_64px")
  assert (cfg.name, cfg.image_size) == ("raf_seed3_64px", 64)
  assert builders.Synthface.spec(cfg.name).reader == "raf_db"
  assert builders.Synthface.spec("bp4d_seed3").reader == "synthface"
  with pytest.raises(ValueError, match="unknown SynthFace part 'bp4d_seed3'"):
    sources.synthface_config("bp4d_seed3")
  with pytest.raises(ValueError, match=r"unknown SynthFace argument\(s\) \['subject'\]"):
    sources.synthface_config("bp4d", subject=3)
  with pytest.raises(ValueError, match="unknown config 'bp4dx' for synthface"):
    builders.make_config("synthface", "bp4dx")


def test_synthface_of_two_sizes_coexist_in_one_data_dir(tmp_path, monkeypatch):
  """Sizes A stand for the default job's (the generator's defaults: plain names, synthface_raw;
  patched small here, as the real ones take minutes), B for the tiny configs'."""
  a = dict(seed=0, subjects=3, frames_per_task=1, raf_train=7, raf_test=3, size=32)
  b = dict(seed=0, subjects=3, frames_per_task=2, raf_train=5, raf_test=2, size=32)
  monkeypatch.setattr(sources, "_synthface_defaults", lambda: dict(a))
  run = dict(workers=1, progress=False)
  pa = sources.ensure_synthface(tmp_path, **a, **run)
  pb = sources.ensure_synthface(tmp_path, **b, **run)  # refused before: "other arguments"
  tag = "fpt2_raftrain5_raftest2"
  assert pa == {c: str(tmp_path / "synthface" / c / str(builders.VERSION)) for c in ("bp4d", "raf")}
  assert sorted(pb) == [f"bp4d_{tag}", f"raf_{tag}"]
  for raw, sizes, (bp4d, raf) in (("synthface_raw", a, pa), (f"synthface_raw_{tag}", b, pb)):
    with open(tmp_path / raw / "synthface.json", encoding="utf-8") as f:
      assert {k: v for k, v in json.load(f).items() if k in sizes} == sizes
    bp = sources.info("synthface", tmp_path, bp4d)
    assert sum(bp["num_examples"].values()) == 3 * 8 * sizes["frames_per_task"]  # x tasks x frames
    assert sorted(bp["num_examples"]) == ["part1", "part2", "part3"] and len(bp["aus"]) == 12
    assert sources.info("synthface", tmp_path, raf)["num_examples"] == {
      "train": sizes["raf_train"],
      "test": sizes["raf_test"],
    }
    src = sources.open_source("synthface", "test", tmp_path, raf)
    assert len(src) == sizes["raf_test"] and src[0]["image"].shape == (112, 112, 3)
  # Asking again reuses both as they are.
  assert sources.ensure_synthface(tmp_path, **a) == pa
  assert sources.ensure_synthface(tmp_path, **b) == pb
  # A raw folder that holds another SynthFace (generated there by hand) is still refused.
  c = dict(b, raf_test=1)
  raw_c = tmp_path / "synthface_raw_fpt2_raftrain5_raftest1"
  raw_c.mkdir()
  (raw_c / "synthface.json").write_text(
    json.dumps({**b, "version": synthface.VERSION}), encoding="utf-8"
  )
  with pytest.raises(
    ValueError,
    match=r"synthface_raw_fpt2_raftrain5_raftest1: holds a SynthFace generated with other "
    r"arguments \(have, wanted\): \{'raf_test': \(2, 1\)\}",
  ):
    sources.ensure_synthface(tmp_path, **c)
  # One an older generator wrote (1.0: face crops, no landmark files) is ours to generate again.
  (raw_c / "synthface.json").write_text(json.dumps({**c, "version": "1.0"}), encoding="utf-8")
  pc = sources.ensure_synthface(tmp_path, **c, **run)
  assert json.loads((raw_c / "synthface.json").read_text())["version"] == synthface.VERSION
  assert (raw_c / "BP4D" / "2DFeatures").is_dir() and len(pc) == 2
  # Parts prepared from an older generator's tree are prepared again from a new tree.
  from input_pipeline.synthface import writer  # pylint: disable=g-import-not-at-top

  assert sources.info("synthface", tmp_path, "bp4d")["synthface_version"] == writer.VERSION
  monkeypatch.setattr(writer, "VERSION", "99.0")
  assert sources.ensure_synthface(tmp_path, **a, **run) == pa
  assert (
    json.loads((tmp_path / "synthface_raw" / "synthface.json").read_text())["version"] == "99.0"
  )
  for c in pa:
    assert sources.info("synthface", tmp_path, c)["synthface_version"] == "99.0"
