"""AU intensity (the poster's extension): metrics, intensity-aware texts, and tiny runs.

ICC(3,1) is checked on Shrout & Fleiss's (1979) worked example (6 targets x 4 judges, ICC(3,1)
= .71 in their Table 4) and, for two raters, against its closed form 2·cov / (var + var);
Pearson against scipy, MAE against sklearn. The tiny runs (text head and regression head)
check the evaluator's train-mean reference against the prepared dataset read with numpy.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from absl import flags

from clef_jax import metrics
from clef_jax import objectives
from clef_jax import train
from configs import finetune_intensity
from input_pipeline import sources
from tests.conftest import TINY_SYNTHFACE

BP4D_INTENSITY_AUS = [6, 10, 12, 14, 17]


def test_icc31_matches_shrout_fleiss():
  ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
  assert metrics.icc31(ratings) == pytest.approx(0.7148, abs=1e-4)  # their Table 4: .71


def test_icc31_two_raters_closed_form_and_edge_cases():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 6, 200).astype(float)
  p = 0.6 * y + rng.normal(0, 1, 200)
  cov = np.cov(p, y, ddof=1)
  want = 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1])
  assert metrics.icc31(np.stack([p, y], 1)) == pytest.approx(want, abs=1e-12)
  assert metrics.icc31(np.stack([y, y], 1)) == pytest.approx(1.0)
  assert metrics.icc31(np.stack([np.full(200, 2.0), y], 1)) == pytest.approx(0.0, abs=1e-12)
  assert metrics.icc31(np.ones((5, 2))) == 0.0  # no variance at all
  assert np.isnan(metrics.icc31([[1.0, 2.0]]))


def test_intensity_metrics_against_scipy_and_sklearn():
  rng = np.random.default_rng(1)
  label = rng.integers(0, 6, (300, 2))
  label[:40, 1] = -1  # unknown codes are masked
  pred = np.clip(label + rng.normal(0, 0.8, label.shape), 0, 5)
  m = metrics.intensity_metrics(pred, label, [12, 6])
  known = label[:, 1] >= 0
  assert m["au_int/mae/AU12"] == pytest.approx(
    sklearn.metrics.mean_absolute_error(label[:, 0], pred[:, 0])
  )
  assert m["au_int/mae/AU6"] == pytest.approx(
    sklearn.metrics.mean_absolute_error(label[known, 1], pred[known, 1])
  )
  assert m["au_int/pearson/AU6"] == pytest.approx(
    scipy.stats.pearsonr(pred[known, 1], label[known, 1])[0]
  )
  assert m["au_int/icc/mean"] == pytest.approx((m["au_int/icc/AU12"] + m["au_int/icc/AU6"]) / 2)
  const = metrics.intensity_metrics(np.full(label.shape, 1.5), label, [12, 6])
  assert (
    const["au_int/icc/AU12"] == pytest.approx(0.0, abs=1e-12)
    and const["au_int/pearson/AU12"] == 0.0
  )
  with pytest.raises(ValueError, match="3 AUs"):
    metrics.intensity_metrics(pred, label, [1, 2, 3])


def test_intensity_texts_are_the_facs_levels():
  t = objectives.intensity_texts([12])
  assert t["absent"] == [["a photo of a person without lip corner puller."]]
  assert t["levels"] == [
    [
      "a photo of a person with lip corner puller with trace intensity.",
      "a photo of a person with lip corner puller with slight intensity.",
      "a photo of a person with lip corner puller with marked intensity.",
      "a photo of a person with lip corner puller with severe intensity.",
      "a photo of a person with lip corner puller with maximum intensity.",
    ]
  ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data_dir):
  flags.FLAGS.mark_as_parsed()
  root = tmp_path_factory.mktemp("intensity")
  out = {}
  for head in ("text", "linear"):
    c = finetune_intensity.get_config("tiny")
    c.data.data_dir = tiny_data_dir
    c.total_steps = c.checkpoint_every_steps = 3
    c.finetune.head = head
    out[head] = (str(root / head), train.run(c, str(root / head)))
  return out


def _codes(data_dir: str, split: str) -> np.ndarray:
  cfg = sources.synthface_config("bp4d", **TINY_SYNTHFACE)
  src = sources.open_source("synthface", split, data_dir, config=cfg, decode_images=False)
  aus = sources.info("synthface", data_dir, cfg)["aus"]
  cols = [aus.index(a) for a in BP4D_INTENSITY_AUS]
  return np.stack([np.asarray(src[i]["au_intensity"])[cols] for i in range(len(src))])


def test_tiny_runs_report_intensity_metrics_and_reference(runs, tiny_data_dir):
  train_codes = np.concatenate([_codes(tiny_data_dir, "part1"), _codes(tiny_data_dir, "part2")])
  test_codes = _codes(tiny_data_dir, "part3")
  for head, (workdir, results) in runs.items():
    labels = json.load(open(os.path.join(workdir, "labels.json")))
    assert labels == {"task": "au_intensity", "labels": BP4D_INTENSITY_AUS}
    for a in BP4D_INTENSITY_AUS:
      for k in ("icc", "mae", "pearson"):
        assert np.isfinite(results[f"test/au_int/{k}/AU{a}"]), (head, a, k)
      assert 0 <= results[f"test/au_int/mae/AU{a}"] <= 5
    # The reference: every test frame at the training frames' mean code, per AU.
    for j, a in enumerate(BP4D_INTENSITY_AUS):
      tr, te = train_codes[:, j], test_codes[:, j]
      want = np.mean(np.abs(te[te >= 0] - tr[tr >= 0].mean()))
      assert results[f"test/reference/train_mean/au_int/mae/AU{a}"] == pytest.approx(want, rel=1e-9)


def test_bad_intensity_aus(tiny_data_dir, tmp_path):
  flags.FLAGS.mark_as_parsed()
  c = finetune_intensity.get_config("tiny")
  c.data.data_dir = tiny_data_dir
  c.finetune.intensity_aus = (1, 12)  # BP4D codes no intensity for AU1
  with pytest.raises(ValueError, match=r"intensity_aus: \[1\] have no intensity codes"):
    train.run(c, str(tmp_path / "w"))


def test_intensity_heads_export_and_predict(runs, tiny_data_dir, tmp_path):
  """Both intensity heads leave the run: linearised into clef_heads (text: the 5 x 6 level
  logits, AU-major; linear: 5 regressed codes), they give the run's own predictions (its
  objective's predict function, a softmax expectation or a clip, ≤ 1e-4); exported, a
  transformers CLIPModel plus the side file, computed in torch, give the same; predict writes
  AU<a>_intensity columns."""
  import glob  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  from clef_jax import export  # pylint: disable=g-import-not-at-top
  from clef_jax import heads as heads_lib  # pylint: disable=g-import-not-at-top
  from clef_jax import models  # pylint: disable=g-import-not-at-top
  from clef_jax import predict  # pylint: disable=g-import-not-at-top
  from tests.test_predict import _torch_embed  # pylint: disable=g-import-not-at-top

  paths = sorted(glob.glob(os.path.join(tiny_data_dir, "**", "*_aligned.jpg"), recursive=True))[:6]
  images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
  for head, (workdir, _) in runs.items():
    run = heads_lib.load_run(workdir)
    h = run.head
    assert h.task == "au_intensity" and h.labels == tuple(BP4D_INTENSITY_AUS) and h.levels == 6
    assert h.weight.shape[0] == (30 if head == "text" else 5)
    assert h.output == ("expected_level" if head == "text" else "clip")
    p = predict.Predictor(f"clef:{workdir}")
    z = p.embed(np.stack([predict.to_input(im, p.image_size)[0] for im in images]))
    # The run's own prediction, not linearised.
    obj = objectives.intensity_objective(
      run.config, models.build(run.config.model), run.tokenizer, h.labels, range(5)
    )
    own = jax.device_get(obj.predict(run.params, z, obj.embed_texts(run.params, jax.random.key(0))))
    np.testing.assert_allclose(p.from_embeddings(z).au_intensity, own, atol=1e-4)
    # Exported: torch CLIPModel + the side file, as a PyTorch user would.
    folder = export.export_run(workdir, tmp_path / head)
    meta = json.loads((folder / heads_lib.JSON_NAME).read_text())["heads"][0]
    assert meta["task"] == "au_intensity" and meta["levels"] == 6
    t = load_file(str(folder / heads_lib.TENSORS_NAME))
    _, zt = _torch_embed(folder, np.stack([predict.to_input(im, p.image_size)[0] for im in images]))
    logits = torch.nn.functional.linear(
      torch.tensor(zt, dtype=torch.float32),
      torch.tensor(t[meta["weight"]]),
      torch.tensor(t[meta["bias"]]),
    )
    if meta["output"] == "expected_level":
      ref = logits.view(len(images), 5, 6).softmax(-1) @ torch.arange(6, dtype=torch.float32)
    else:
      ref = logits.clamp(0, 5)
    np.testing.assert_allclose(ref.numpy(), own, atol=1e-4)
  # predict's outputs.
  workdir = runs["text"][0]
  d = tmp_path / "faces"
  d.mkdir()
  for i, im in enumerate(images[:2]):
    Image.fromarray(im).save(d / f"f{i}.png")
  summary = predict.run(
    predict.Predictor(f"clef:{workdir}"),
    str(d),
    str(tmp_path / "out"),
    progress=False,
    detect=False,
  )
  assert summary["faces"] == 2
  header = (tmp_path / "out" / "predictions.csv").read_text().splitlines()[0].split(",")
  assert [c for c in header if c.endswith("_intensity")] == [
    f"AU{a}_intensity" for a in BP4D_INTENSITY_AUS
  ]
  row = json.loads((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[0])
  assert all(0 <= v <= 5 for v in row["au_intensity"].values())
