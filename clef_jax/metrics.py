"""Evaluation metrics (numpy, host side): AU F1 and FER accuracy / confusion matrix.

The one-shot functions (``au_f1``, ``fer_metrics``) and the streaming accumulators
(``AUCounts``, ``ConfusionCounts``) share their arithmetic, so accumulating a test fold batch by
batch gives exactly the one-shot result. Protocol (docs/method.md): AU F1 is the F1 of the positive
class with TP/FP/FN summed over the whole test fold and unknown labels (-1) masked; FER reports
accuracy, mean class accuracy and the confusion matrix (rows = true class).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _rows(mask: Any, n: int) -> np.ndarray:
  if mask is None:
    return np.ones((n,), bool)
  mask = np.asarray(mask, bool)
  if mask.shape != (n,):
    raise ValueError(f"mask has shape {mask.shape}, expected ({n},)")
  return mask


def _check_values(name: str, x: np.ndarray, allowed: tuple[int, ...]) -> None:
  bad = ~np.isin(x, allowed)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(
      f"{name} has value {x[where].item()!r} at index {where}; expected one of {allowed}"
    )


def _f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
  """``2TP / (2TP + FP + FN)``, 0 where the denominator is 0 (sklearn's ``zero_division=0``)."""
  denom = 2 * tp + fp + fn
  return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape, np.float64), where=denom > 0)


class AUCounts:
  """Streaming TP/FP/FN per AU over many batches.

  Usage: ``counts = AUCounts(J)``; ``counts.update(pred, label, mask)`` per batch;
  ``per_au, mean = counts.f1()``.
  """

  def __init__(self, num_aus: int):
    if num_aus <= 0:
      raise ValueError(f"num_aus must be positive, got {num_aus}")
    self.num_aus = num_aus
    self.tp = np.zeros((num_aus,), np.int64)
    self.fp = np.zeros((num_aus,), np.int64)
    self.fn = np.zeros((num_aus,), np.int64)

  def update(self, pred: Any, label: Any, mask: Any = None) -> "AUCounts":
    """Adds one batch.

    Args:
      pred: ``[N, J]`` in {0, 1} (bool accepted), e.g. ``sigmoid(logits) >= 0.5``.
      label: ``[N, J]`` in {-1, 0, 1}; -1 = unknown, ignored.
      mask: optional ``[N] bool``, False for padding rows (their values are not checked).

    Returns:
      self.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.ndim != 2 or pred.shape != label.shape or pred.shape[1] != self.num_aus:
      raise ValueError(
        f"pred {pred.shape} and label {label.shape} must both be [N, {self.num_aus}]"
      )
    rows = _rows(mask, pred.shape[0])
    pred, label = pred[rows].astype(np.int64), label[rows]
    _check_values("AU prediction", pred, (0, 1))
    _check_values("AU label", label, (-1, 0, 1))
    known = label >= 0
    positive = label == 1
    predicted = (pred == 1) & known
    self.tp += (predicted & positive).sum(0)
    self.fp += (predicted & ~positive).sum(0)
    self.fn += (~predicted & positive).sum(0)
    return self

  def f1(self) -> tuple[np.ndarray, float]:
    """``(per-AU F1 [J] float64, mean over the J AUs)``; an AU with no positive label and no
    positive prediction has F1 0 (as sklearn with ``zero_division=0``) and counts in the mean."""
    per_au = _f1_from_counts(self.tp, self.fp, self.fn)
    return per_au, float(per_au.mean())


def au_f1(pred: Any, label: Any) -> tuple[np.ndarray, float]:
  """Per-AU F1 of the positive class with TP/FP/FN summed over all rows, and their mean.

  Args:
    pred: ``[N, J]`` in {0, 1}.
    label: ``[N, J]`` in {-1, 0, 1}; -1 = unknown, masked.

  Returns:
    ``(per_au_f1 [J] float64, mean_f1 float)``; see ``AUCounts.f1`` for the zero-division rule.
  """
  pred = np.asarray(pred)
  if pred.ndim != 2:
    raise ValueError(f"pred must be [N, J], got shape {pred.shape}")
  return AUCounts(pred.shape[1]).update(pred, label).f1()


class ConfusionCounts:
  """Streaming confusion matrix ``[C, C]`` (rows = true class, columns = predicted class).

  Usage: ``cm = ConfusionCounts(C)``; ``cm.update(pred, label, mask)`` per batch;
  ``cm.metrics()``.
  """

  def __init__(self, num_classes: int):
    if num_classes <= 0:
      raise ValueError(f"num_classes must be positive, got {num_classes}")
    self.num_classes = num_classes
    self.matrix = np.zeros((num_classes, num_classes), np.int64)

  def update(self, pred: Any, label: Any, mask: Any = None) -> "ConfusionCounts":
    """Adds one batch.

    Args:
      pred: ``[N] int`` predicted class ids in ``[0, C)``.
      label: ``[N] int`` true class ids in ``[0, C)``.
      mask: optional ``[N] bool``, False for padding rows (their values are not checked).

    Returns:
      self.
    """
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.ndim != 1 or pred.shape != label.shape:
      raise ValueError(f"pred {pred.shape} and label {label.shape} must both be [N]")
    rows = _rows(mask, pred.shape[0])
    pred, label = pred[rows].astype(np.int64), label[rows].astype(np.int64)
    c = self.num_classes
    for name, x in (("FER prediction", pred), ("FER label", label)):
      bad = (x < 0) | (x >= c)
      if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} {x[i]} at (unmasked) row {i} is outside [0, {c})")
    np.add.at(self.matrix, (label, pred), 1)
    return self

  def metrics(self) -> dict[str, Any]:
    """Accuracy, mean class accuracy and the confusion matrix.

    Returns:
      ``accuracy`` (float), ``mean_class_accuracy`` (float; mean recall over the classes present
      among the true labels, as sklearn's ``balanced_accuracy_score``), ``per_class_accuracy``
      (``[C] float64``, NaN for classes absent from the true labels), ``confusion_matrix``
      (``[C, C] int64``, a copy), ``num_examples`` (int).

    Raises:
      ValueError: if nothing was counted (an empty evaluation set).
    """
    total = int(self.matrix.sum())
    if total == 0:
      raise ValueError("no labelled examples were counted; is the evaluation split empty?")
    support = self.matrix.sum(1)
    correct = np.diag(self.matrix)
    present = support > 0
    per_class = np.full((self.num_classes,), np.nan)
    per_class[present] = correct[present] / support[present]
    return {
      "accuracy": float(correct.sum() / total),
      "mean_class_accuracy": float(per_class[present].mean()),
      "per_class_accuracy": per_class,
      "confusion_matrix": self.matrix.copy(),
      "num_examples": total,
    }


def fer_metrics(pred: Any, label: Any, num_classes: int, mask: Any = None) -> dict[str, Any]:
  """FER accuracy, mean class accuracy and confusion matrix of one prediction set.

  Args:
    pred: ``[N] int`` predicted classes (argmax of the logits).
    label: ``[N] int`` true classes in ``[0, num_classes)``.
    num_classes: C.
    mask: optional ``[N] bool``, False for rows to ignore.

  Returns:
    The dict of ``ConfusionCounts.metrics``.
  """
  return ConfusionCounts(num_classes).update(pred, label, mask).metrics()


# ------------------------------------------------------------------------------------------
# AU intensity: ICC(3,1), MAE, Pearson per AU (the field's metrics, e.g. DISFA / FERA 2015).
# ------------------------------------------------------------------------------------------


def icc31(ratings: Any) -> float:
  """ICC(3,1) (Shrout & Fleiss 1979: two-way mixed, consistency, single rater) of `ratings`
  [n targets, k raters]: (BMS - EMS) / (BMS + (k - 1) EMS). NaN for fewer than 2 targets; 0
  where there is no variance at all (every rating equal)."""
  x = np.asarray(ratings, np.float64)
  n, k = x.shape
  if n < 2 or k < 2:
    return float("nan")
  grand = x.mean()
  ss_rows = k * np.sum(np.square(x.mean(1) - grand))
  ss_cols = n * np.sum(np.square(x.mean(0) - grand))
  ss_err = np.sum(np.square(x - grand)) - ss_rows - ss_cols
  bms = ss_rows / (n - 1)
  ems = ss_err / ((n - 1) * (k - 1))
  denom = bms + (k - 1) * ems
  return float((bms - ems) / denom) if denom > 0 else 0.0


def intensity_metrics(pred: Any, label: Any, aus: Sequence[int]) -> dict[str, float]:
  """pred [N, J] float, label [N, J] int (-1 unknown, masked) -> per-AU and mean ICC(3,1)
  (prediction and label as the two raters), MAE and Pearson r ('au_int/icc/AU12', ...,
  'au_int/icc/mean'). A constant prediction has ICC 0 and r 0 (not NaN)."""
  pred = np.asarray(pred, np.float64)
  label = np.asarray(label)
  if pred.shape != label.shape or pred.ndim != 2 or pred.shape[1] != len(aus):
    raise ValueError(f"intensity_metrics: pred {pred.shape}, label {label.shape}, {len(aus)} AUs")
  out: dict[str, float] = {}
  per = {"icc": [], "mae": [], "pearson": []}
  for j, a in enumerate(aus):
    known = label[:, j] >= 0
    p, y = pred[known, j], label[known, j].astype(np.float64)
    icc = icc31(np.stack([p, y], 1))
    mae = float(np.mean(np.abs(p - y))) if len(y) else float("nan")
    sp, sy = (float(np.std(p)), float(np.std(y))) if len(y) else (0.0, 0.0)
    r = float(np.mean((p - p.mean()) * (y - y.mean())) / (sp * sy)) if sp > 0 and sy > 0 else 0.0
    for key, v in (("icc", icc), ("mae", mae), ("pearson", r)):
      out[f"au_int/{key}/AU{a}"] = v
      per[key].append(v)
  for key, values in per.items():
    out[f"au_int/{key}/mean"] = float(np.nanmean(values)) if values else float("nan")
  return out
