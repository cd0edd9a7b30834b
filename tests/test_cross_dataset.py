"""Cross-dataset AU evaluation (configs/cross_dataset.py) and SynthFace's DISFA-like part.

What was tried: the DISFA-like tree is read by the DISFA reader in DISFA's layout (12 AU files
per subject, 0-based frames, 66-point landmark files) with people of its own; a tiny cross run
trains on the BP4D-like part and scores the DISFA-like part on the 5 AUs both code, and its
all-present reference equals the F1 computed by hand from the label files; an evaluator pointed
at data without AU labels is refused, naming the dataset.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from absl import flags

from clef_jax import train
from configs import cross_dataset
from input_pipeline import align
from input_pipeline import synthface
from input_pipeline.readers import disfa
from input_pipeline.readers import folds
from input_pipeline.readers import landmarks
from input_pipeline.synthface import population
from input_pipeline.synthface import writer

SHARED = (1, 2, 4, 6, 12)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  out = tmp_path_factory.mktemp("sf") / "synthface"
  synthface.generate(
    out,
    subjects=3,
    frames_per_task=2,
    raf_train=4,
    raf_test=2,
    size=32,
    disfa_subjects=3,
    disfa_frames=10,
    progress=False,
    workers=1,
  )
  return out


def test_disfa_like_part_is_read_by_the_disfa_reader(tree):
  root = tree / "DISFA"
  assert writer.DISFA_AUS == disfa.ALL_AUS
  names = population.disfa_subject_names(3, folds.DISFA_PARTS)
  assert names == ["SN002", "SN013", "SN003"]  # one from each part of the standard split
  assert sorted(os.listdir(root / "ActionUnit_Labels")) == sorted(names)
  for n in names:
    files = sorted(os.listdir(root / "ActionUnit_Labels" / n))
    assert files == sorted(f"{n}_au{a}.txt" for a in disfa.ALL_AUS)
  examples = list(disfa.read(root, landmarks=True, progress=False))
  assert len(examples) == 3 * 10
  assert {e["fold"] for e in examples} == {1, 2, 3}
  for e in examples:
    assert e["landmark_scheme"] == "disfa66" and e["landmarks"].shape == (66, 2)
    assert e["image"].shape == (48, 64, 3)  # a full 2 x 1.5 x 32 px frame
  # The 66 points are the jaw line, then the 49 of BP4D's layout: the same eyes and mouth.
  lm = landmarks.read_disfa(
    str(root / "Landmark_Points" / "SN002" / "tmp_frame_lm" / "SN002_0003_lm.mat")
  )
  np.testing.assert_allclose(
    align.key_points(lm, "disfa66"), align.key_points(lm[17:], "bp4d49"), atol=1e-9
  )
  # People of their own: no DISFA-like identity is a BP4D-like one.
  bp4d_people = [
    population.make_subject(0, i, n).identity for i, n in enumerate(population.subject_names(3))
  ]
  for i, n in enumerate(names):
    subj, _ = population.make_disfa_session(0, i, n, 10)
    assert all(subj.identity != p for p in bp4d_people)


def test_cross_run_scores_the_shared_aus_against_a_hand_computed_reference(tmp_path, tiny_data_dir):
  flags.FLAGS.mark_as_parsed()
  c = cross_dataset.get_config("tiny")
  c.data.data_dir = tiny_data_dir
  c.total_steps = c.checkpoint_every_steps = 3
  workdir = tmp_path / "cross"
  train.run(c, str(workdir))
  res = json.loads((workdir / "results.json").read_text())
  cross = {k[len("cross/") :]: v for k, v in res.items() if k.startswith("cross/")}
  assert sorted(k for k in cross if k.startswith("au_f1/AU")) == sorted(
    f"au_f1/AU{a}" for a in SHARED
  )
  size = c.data.synthface
  assert cross["examples"] == size.disfa_subjects * size.disfa_frames
  assert 0.0 <= cross["au_f1/mean"] <= 1.0
  # The in-domain test keeps its 12 AUs.
  assert len([k for k in res if k.startswith("test/au_f1/AU")]) == 12
  # All-present reference by hand from the generator's DISFA-like label files.
  ddir = os.fspath(tiny_data_dir)
  (raw,) = [
    d
    for d in os.listdir(ddir)
    if d.startswith("synthface_raw") and os.path.isdir(os.path.join(ddir, d, "DISFA"))
  ]
  labels = os.path.join(ddir, raw, "DISFA", "ActionUnit_Labels")
  f1 = []
  for a in SHARED:
    occ = np.concatenate(
      [
        np.loadtxt(os.path.join(labels, s, f"{s}_au{a}.txt"), delimiter=",", ndmin=2)[:, 1] >= 2
        for s in sorted(os.listdir(labels))
      ]
    )
    p = occ.sum()
    f1.append(2 * p / (2 * p + (len(occ) - p)) if p else 0.0)
  assert cross["reference/all_present/au_f1/mean"] == pytest.approx(np.mean(f1), abs=1e-6)


def test_cross_evaluator_refuses_data_without_au_labels(tmp_path, tiny_data_dir):
  flags.FLAGS.mark_as_parsed()
  c = cross_dataset.get_config("tiny")
  c.data.data_dir = tiny_data_dir
  c.total_steps = 3
  c.evals.cross.data.config = "raf"
  c.evals.cross.data.test_split = "test"
  with pytest.raises(ValueError, match="au_test.*synthface has no AU labels"):
    train.run(c, str(tmp_path / "w"))
