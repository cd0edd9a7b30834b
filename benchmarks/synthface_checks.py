"""SynthFace "it must hold" checks (issue 3); prints the numbers.

  python benchmarks/synthface_checks.py [--data DIR] [--seed 0] [--workers 2]

Without ``--data`` it generates the default dataset (41 subjects x 8 tasks x 40 frames +
2400/600 RAF-like images at 112 px) into a temporary folder and times it. Then:

1. Generation speed: images/s (and total seconds) of the default size.
2. AUs are learnable on held-out subjects, mean F1 over BP4D's 12 evaluated AUs (TP/FP/FN summed
   over the fold, 9 = unknown masked), target >= 0.85: (a) a fast linear baseline, subject-
   normalised HOG (NumPy) + one ridge classifier per AU, BP4D's 3 subject-exclusive folds
   (``--skip-hog`` skips it); (b) a small Flax CNN on [frame, frame - subject median] of the
   aligned face crop (from the frame's 2DFeatures landmarks, at ``CNN_SIZE`` = 80 px),
   trained ``--cnn-steps`` steps on fold 1 (parts 1+2), tested on the held-out part 3.
3. Identity is the easy shortcut: a linear classifier on raw pixels (24x24 RGB), trained on 4 of
   the 8 tasks of every subject and tested on the other 4: subject accuracy vs expression accuracy.
4. Activity is a weak label: the share of each task's frames showing its majority expression.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import pathlib
import resource
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from sklearn import linear_model, preprocessing

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from input_pipeline import align  # pylint: disable=g-import-not-at-top
from input_pipeline import synthface  # pylint: disable=g-import-not-at-top
from input_pipeline.readers import landmarks  # pylint: disable=g-import-not-at-top

EVAL_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
# BP4D 3-fold subject-exclusive split (DATASETS.md).
PARTS = (
  "F001 M007 F018 F008 F002 M004 F010 F009 M012 M001 F016 M014 F023 M008".split(),
  "M011 F003 M010 M002 F005 F022 M018 M017 F013 M016 F020 F011 M013 M005".split(),
  "F007 F015 F006 F019 M006 M009 F012 M003 F004 F021 F017 M015 F014".split(),
)
# The checks see the aligned face crop (ALIGNED_SIZE px, as prepared); the CNN at CNN_SIZE px.
ALIGNED_SIZE = 112
CNN_SIZE = 80


def hog(gray: np.ndarray, cell: int = 8, bins: int = 9) -> np.ndarray:
  """[N, H, W] float32 -> [N, D] HOG (unsigned orientations, 2x2-cell L2-Hys blocks)."""
  gy, gx = np.gradient(gray, axis=(1, 2))
  mag = np.hypot(gx, gy)
  ang = np.mod(np.arctan2(gy, gx), np.pi) / np.pi * bins
  b = np.minimum(ang.astype(np.int64), bins - 1)
  n, h, w = gray.shape
  ch, cw = h // cell, w // cell
  hist = np.zeros((n, ch, cw, bins), np.float32)
  for k in range(bins):
    m = (mag * (b == k))[:, : ch * cell, : cw * cell]
    hist[..., k] = m.reshape(n, ch, cell, cw, cell).sum((2, 4))
  blocks = np.concatenate(
    [hist[:, :-1, :-1], hist[:, 1:, :-1], hist[:, :-1, 1:], hist[:, 1:, 1:]], -1
  )
  blocks /= np.linalg.norm(blocks, axis=-1, keepdims=True) + 1e-6
  blocks = np.minimum(blocks, 0.2)
  blocks /= np.linalg.norm(blocks, axis=-1, keepdims=True) + 1e-6
  return blocks.reshape(n, -1)


def load_bp4d(root: pathlib.Path):
  """Reads frames and labels back from the written BP4D-like layout; every frame is aligned
  from its 2DFeatures landmarks (input_pipeline.align, the builders' default margin) at 112 px,
  as `prepare` stores it, and the checks below see that crop."""
  bp = root / "BP4D"
  expr = {}
  with open(bp / "SynthFace_expressions.csv", newline="") as f:
    for r in csv.DictReader(f):
      expr[(r["subject"], r["task"], int(r["frame"]))] = r["expression"]
  subj, task, labels, exprs, gray64, rgb24, face = [], [], [], [], [], [], []
  for occ in sorted((bp / "AUCoding" / "AU_OCC").glob("*.csv")):
    s, t = occ.stem.split("_")
    with open(occ, newline="") as f:
      rows = list(csv.reader(f))
    header = rows[0]
    cols = [header.index(str(au)) for au in EVAL_AUS]
    frames = sorted(int(p.stem) for p in (bp / s / t).glob("*.jpg"))
    points = landmarks.read_bp4d(str(bp / "2DFeatures" / f"{s}_{t}.mat"), frames)
    for r in rows[1:]:
      fr = int(r[0])
      frame = np.asarray(Image.open(bp / s / t / f"{fr}.jpg").convert("RGB"))
      im = Image.fromarray(align.align(frame, points[fr], "bp4d49", ALIGNED_SIZE))
      gray64.append(
        np.asarray(im.convert("L").resize((64, 64), Image.Resampling.BILINEAR), np.float32) / 255
      )
      face.append(
        np.asarray(im.resize((CNN_SIZE, CNN_SIZE), Image.Resampling.BOX), np.float32) / 255
      )
      rgb24.append(np.asarray(im.resize((24, 24), Image.Resampling.BOX), np.float32).ravel() / 255)
      lab = np.array([int(r[c]) for c in cols])
      labels.append(np.where(lab == 9, -1, lab))
      subj.append(s)
      task.append(t)
      exprs.append(expr[(s, t, fr)])
  return (
    np.array(subj),
    np.array(task),
    np.stack(labels),
    np.array(exprs),
    np.stack(gray64),
    np.stack(rgb24),
    np.stack(face),
  )


def au_f1(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
  """[N, J] {0,1} predictions, [N, J] {-1,0,1} labels -> [J] F1 of the positive class."""
  valid = label >= 0
  tp = ((pred == 1) & (label == 1) & valid).sum(0)
  fp = ((pred == 1) & (label == 0) & valid).sum(0)
  fn = ((pred == 0) & (label == 1) & valid).sum(0)
  return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def subject_normalise(subj: np.ndarray, feats: np.ndarray) -> np.ndarray:
  """Subtracts each subject's median feature (person-specific normalisation, as in OpenFace)."""
  out = np.empty_like(feats)
  for s in np.unique(subj):
    m = subj == s
    out[m] = feats[m] - np.median(feats[m], 0)
  return out


def au_check(subj, labels, feats) -> tuple[float, np.ndarray]:
  """Per-AU linear classifiers (ridge, balanced), 3-fold subject-exclusive -> mean F1, [J]."""
  f1s = []
  for k in range(3):
    test = np.isin(subj, PARTS[2 - k])
    scaler = preprocessing.StandardScaler().fit(feats[~test])
    xtr, xte = scaler.transform(feats[~test]), scaler.transform(feats[test])
    pred = np.zeros((test.sum(), len(EVAL_AUS)), np.int64)
    for j in range(len(EVAL_AUS)):
      ok = labels[~test, j] >= 0
      clf = linear_model.RidgeClassifier(alpha=100.0, class_weight="balanced")
      clf.fit(xtr[ok], labels[~test, j][ok])
      pred[:, j] = clf.predict(xte)
    f1 = au_f1(pred, labels[test])
    f1s.append(f1)
    print(f"  fold{k + 1} (test part{3 - k}): mean F1 {f1.mean():.3f}", flush=True)
  per_au = np.mean(f1s, 0)
  return float(per_au.mean()), per_au


def shortcut_check(subj, task, exprs, rgb, seed: int) -> tuple[float, float, float]:
  """Linear classifier on raw pixels; same split for both targets (4 tasks/subject held out)."""
  rng = np.random.default_rng(seed)
  train = np.zeros(len(subj), bool)
  for s in np.unique(subj):
    tr_tasks = rng.permutation(synthface.TASKS)[:4]
    train |= (subj == s) & np.isin(task, tr_tasks)
  scaler = preprocessing.StandardScaler().fit(rgb[train])
  xtr, xte = scaler.transform(rgb[train]), scaler.transform(rgb[~train])
  accs = []
  for y in (subj, exprs):
    clf = linear_model.LogisticRegression(C=0.01, max_iter=300).fit(xtr, y[train])
    accs.append(float((clf.predict(xte) == y[~train]).mean()))
  majority = collections.Counter(exprs[~train]).most_common(1)[0][1] / (~train).sum()
  return accs[0], accs[1], float(majority)


def cnn_check(subj, labels, face, steps: int, seed: int, fold: int = 1):
  """Small Flax CNN on [frame, frame - subject median] (6 x CNN_SIZE x CNN_SIZE face crop), one subject-exclusive fold.

  Returns (mean F1, [J] per-AU F1, seconds). Weighted BCE, unknown labels masked, threshold 0.5.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  x = np.concatenate([face, subject_normalise(subj, face)], -1).astype(np.float32)
  test = np.isin(subj, PARTS[3 - fold])
  xtr, ytr, xte, yte = x[~test], labels[~test], x[test], labels[test]
  pos = np.maximum((ytr == 1).sum(0), 1)
  neg = np.maximum((ytr == 0).sum(0), 1)
  pos_w = jnp.asarray(np.sqrt(neg / pos), jnp.float32)

  class Net(nn.Module):
    @nn.compact
    def __call__(self, h):
      for ch in (16, 32, 64):  # 80 -> 40 -> 20 -> 10
        h = nn.relu(nn.Conv(ch, (3, 3), strides=2)(h))
      h = nn.relu(nn.Conv(64, (3, 3))(h))
      h = h.reshape(h.shape[0], -1)
      return nn.Dense(len(EVAL_AUS))(nn.relu(nn.Dense(128)(h)))

  net = Net()
  params = net.init(jax.random.key(seed), jnp.zeros((1,) + x.shape[1:]))
  tx = optax.adamw(optax.cosine_decay_schedule(2e-3, steps), weight_decay=1e-4)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, xb, yb):
    def loss_fn(p):
      z = net.apply(p, xb)
      m = (yb >= 0).astype(jnp.float32)
      y = (yb == 1).astype(jnp.float32)
      l = -(pos_w * y * jax.nn.log_sigmoid(z) + (1 - y) * jax.nn.log_sigmoid(-z))
      return (l * m).sum() / m.sum()

    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  predict = jax.jit(lambda p, xb: net.apply(p, xb) > 0)
  rng = np.random.default_rng(seed)
  t0 = time.perf_counter()
  for i in range(steps):
    idx = rng.integers(0, len(xtr), 32)
    xb = xtr[idx]
    sh = rng.integers(-2, 3, 2)  # a little shift augmentation
    xb = np.roll(xb, tuple(sh), axis=(1, 2))
    params, opt, loss = step(params, opt, xb, ytr[idx])
    if (i + 1) % max(1, steps // 5) == 0:
      print(
        f"  cnn step {i + 1}/{steps} loss {float(loss):.3f} ({time.perf_counter() - t0:.0f} s)",
        flush=True,
      )
  pred = np.concatenate(
    [np.asarray(predict(params, xte[i : i + 256])) for i in range(0, len(xte), 256)]
  ).astype(np.int64)
  f1 = au_f1(pred, yte)
  return float(f1.mean()), f1, time.perf_counter() - t0


def _cpu_seconds() -> float:
  """User + system CPU time of this process and its finished children."""
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--data", help="an existing SynthFace folder (default: generate one)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--workers", type=int, default=2)
  ap.add_argument("--cnn-steps", type=int, default=2000)
  ap.add_argument("--skip-hog", action="store_true")
  a = ap.parse_args(argv)
  tmp = None
  if a.data:
    root = pathlib.Path(a.data)
  else:
    tmp = tempfile.TemporaryDirectory(prefix="synthface_bench_")
    root = pathlib.Path(tmp.name) / "synthface"
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    s = synthface.generate(root, seed=a.seed, workers=a.workers, progress=False)
    dt, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    print(
      f"[speed] default SynthFace ({s['images']} images at {s['size']} px, "
      f"{a.workers} workers, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}): "
      f"wall {dt:.1f} s = {s['images'] / dt:.0f} images/s; CPU {cpu:.1f} s = "
      f"{s['images'] / cpu:.0f} images per CPU-second (=> {cpu / a.workers:.0f} s wall on "
      f"{a.workers} idle cores)",
      flush=True,
    )
  subj, task, labels, exprs, gray, rgb, face = load_bp4d(root)
  print(
    f"[data] {len(subj)} BP4D-like frames, {len(np.unique(subj))} subjects; AU base rates: "
    + " ".join(
      f"AU{au}={labels[labels[:, j] >= 0, j].mean():.2f}" for j, au in enumerate(EVAL_AUS)
    ),
    flush=True,
  )

  print("[activity] majority-expression share per task:")
  for t in synthface.TASKS:
    c = collections.Counter(exprs[task == t])
    e, n = c.most_common(1)[0]
    print(
      f"  {t}: {e} {n / c.total():.2f}  ("
      + ", ".join(f"{k} {v / c.total():.2f}" for k, v in c.most_common()[1:4])
      + ")"
    )

  t0 = time.perf_counter()
  if not a.skip_hog:
    feats = subject_normalise(subj, hog(gray))
    mean_f1, per_au = au_check(subj, labels, feats)
    print(
      f"[AU] subject-normalised HOG + ridge, 3-fold held-out subjects: mean F1 {mean_f1:.3f} "
      f"({time.perf_counter() - t0:.0f} s); per AU: "
      + " ".join(f"AU{au}={f:.2f}" for au, f in zip(EVAL_AUS, per_au))
    )

  mean_f1, per_au, dt = cnn_check(subj, labels, face, a.cnn_steps, a.seed)
  print(
    f"[AU] small CNN ({a.cnn_steps} steps of 32, {dt:.0f} s), fold1 (train part1+2, test "
    f"held-out part3): mean F1 {mean_f1:.3f}; per AU: "
    + " ".join(f"AU{au}={f:.2f}" for au, f in zip(EVAL_AUS, per_au))
  )
  print(f"  -> {'PASS' if mean_f1 >= 0.85 else 'FAIL'} (need >= 0.85)", flush=True)

  ida, exa, maj = shortcut_check(subj, task, exprs, rgb, a.seed)
  n_subj = len(np.unique(subj))
  print(
    f"[shortcut] linear classifier on raw 24x24 RGB pixels, 4 tasks/subject held out: "
    f"subject accuracy {ida:.3f} (chance {1 / n_subj:.3f}) vs expression accuracy {exa:.3f} "
    f"(majority class {maj:.3f})"
  )
  if tmp is not None:
    tmp.cleanup()
  return 0


if __name__ == "__main__":
  sys.exit(main())
