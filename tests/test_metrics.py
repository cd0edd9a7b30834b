"""Metrics against scikit-learn, and streaming accumulators against the one-shot functions."""

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from clef_jax import metrics


def _au_data(rng, n=40, j=5):
  pred = rng.integers(0, 2, size=(n, j))
  label = rng.integers(-1, 2, size=(n, j))
  label[:, 3] = np.where(label[:, 3] == 1, 0, label[:, 3])  # AU3: no positive label
  pred[:, 3] = 0  # ... and none predicted -> F1 0
  label[:, 4] = -1  # AU4: entirely unknown
  return pred, label


def test_au_f1_matches_sklearn_per_au():
  pred, label = _au_data(np.random.default_rng(0))
  per_au, mean = metrics.au_f1(pred, label)
  want = []
  for j in range(label.shape[1]):
    keep = label[:, j] >= 0
    want.append(
      skm.f1_score(label[keep, j], pred[keep, j], labels=[0, 1], pos_label=1, zero_division=0)
      if keep.any()
      else 0.0
    )
  np.testing.assert_allclose(per_au, want, rtol=1e-12)
  assert per_au[3] == 0.0 and per_au[4] == 0.0 and 0 < per_au[0] < 1
  np.testing.assert_allclose(mean, np.mean(want), rtol=1e-12)


def test_au_counts_streaming_equals_one_shot_and_ignores_padding():
  rng = np.random.default_rng(1)
  pred, label = _au_data(rng)
  counts = metrics.AUCounts(5)
  for start in range(0, 40, 16):  # batches of 16, 16, 8 padded to 16
    p, l = pred[start : start + 16], label[start : start + 16]
    valid = np.ones(16, bool)
    if len(p) < 16:
      pad = 16 - len(p)
      valid[len(p) :] = False
      p = np.concatenate([p, np.ones((pad, 5), int)])  # would add FPs if counted
      l = np.concatenate([l, np.full((pad, 5), 7)])  # invalid values, ignored
    counts.update(p.astype(bool), l, valid)
  per_au, mean = counts.f1()
  want_per_au, want_mean = metrics.au_f1(pred, label)
  np.testing.assert_array_equal(per_au, want_per_au)
  assert mean == want_mean


def test_au_f1_errors():
  with pytest.raises(ValueError, match=r"AU label has value 9 at index \(1, 2\)"):
    metrics.au_f1(np.zeros((3, 4), int), np.array([[0] * 4, [0, 0, 9, 0], [0] * 4]))
  with pytest.raises(ValueError, match="AU prediction has value 2"):
    metrics.au_f1(np.full((2, 4), 2), np.zeros((2, 4), int))
  with pytest.raises(ValueError, match=r"must both be \[N, 4\]"):
    metrics.AUCounts(4).update(np.zeros((2, 3), int), np.zeros((2, 3), int))


def test_fer_metrics_match_sklearn():
  rng = np.random.default_rng(2)
  c = 6
  label = rng.integers(0, c - 1, size=50)  # class 5 never a true label
  pred = rng.integers(0, c, size=50)
  mask = rng.random(50) < 0.8
  got = metrics.fer_metrics(pred, label, c, mask)
  y, p = label[mask], pred[mask]
  np.testing.assert_allclose(got["accuracy"], skm.accuracy_score(y, p), rtol=1e-12)
  with warnings.catch_warnings():  # sklearn may warn about the absent class 5
    warnings.simplefilter("ignore")
    want_bal = skm.balanced_accuracy_score(y, p)
  np.testing.assert_allclose(got["mean_class_accuracy"], want_bal, rtol=1e-12)
  np.testing.assert_array_equal(
    got["confusion_matrix"], skm.confusion_matrix(y, p, labels=list(range(c)))
  )
  assert np.isnan(got["per_class_accuracy"][5]) and got["num_examples"] == mask.sum()
  np.testing.assert_allclose(
    got["per_class_accuracy"][:5], skm.recall_score(y, p, labels=list(range(5)), average=None)
  )


def test_confusion_counts_streaming_equals_one_shot():
  rng = np.random.default_rng(3)
  label, pred = rng.integers(0, 4, size=30), rng.integers(0, 4, size=30)
  cm = metrics.ConfusionCounts(4)
  for start in range(0, 30, 8):
    p, l = pred[start : start + 8], label[start : start + 8]
    valid = np.arange(8) < len(p)
    pad = 8 - len(p)
    cm.update(
      np.concatenate([p, np.zeros(pad, int)]), np.concatenate([l, -np.ones(pad, int)]), valid
    )
  got, want = cm.metrics(), metrics.fer_metrics(pred, label, 4)
  np.testing.assert_array_equal(got["confusion_matrix"], want["confusion_matrix"])
  assert got["accuracy"] == want["accuracy"]
  assert got["mean_class_accuracy"] == want["mean_class_accuracy"]


def test_fer_metrics_errors():
  with pytest.raises(ValueError, match=r"FER label 7 at \(unmasked\) row 1 is outside \[0, 7\)"):
    metrics.fer_metrics(np.zeros(3, int), np.array([0, 7, 1]), 7)
  with pytest.raises(ValueError, match="evaluation split empty"):
    metrics.fer_metrics(np.zeros(3, int), np.zeros(3, int), 7, mask=np.zeros(3, bool))
