r"""Reproduces the poster's tables on SynthFace and writes docs/results.md (issue 7).

  python benchmarks/reproduce.py                       # the full run (about 1–2 h on 2 CPU cores)
  python benchmarks/reproduce.py --quick --workdir=W   # minutes: tiny models, tiny data
  python benchmarks/reproduce.py --init=hf:/ckpt/clip-vit-base-patch16 --config_arg=variant=B/16

--init names the vision-language model every row starts from, like the paper's CLIP/FaRL: by
default the shipped SynthFace-CLIP (models/synthface-clip, the FaRL analog); `none` trains from
random weights (the --quick default). The `init` row is that model without stage 1 (the
poster's "CLIP"/"FaRL" rows); `random` is the architecture's random initialisation.

Stages (each resumable: a rerun skips what is on disk under --workdir):
 1. Pretraining, per subject-exclusive fold k (the leakage guard keeps fold k's test subjects
    out): `instance` (SimCLR pairing, the paper's "problem"), `clef_pi` (L_II' with activity
    pairing), `clef_pa` (L_IA only), `clef_pa_pi` (both, CLEF). Each is the real
    `main.py --config=configs/pretrain.py ...` run, called in-process; `random` is the model's
    initialisation (seed k) without pretraining.
 2. Frozen image embeddings of every (row, fold): BP4D-like train/test of the fold and the
    RAF-like train/test split.
 3. Stage-2 heads on the frozen embeddings. I = the linear head, fitted to convergence as in
    CLIP's linear probes (L-BFGS logistic regression on standardised features, C chosen on 25 %
    of the training subjects held out whole; `linear_probe_au`). I+N = text head over label
    names, I+D = over descriptions (+ L_DN), I+N+D = names + L_DN, with the project's own
    fine-tuning objectives (`objectives.finetune_objective`) and optimizer at a constant lr:
    one run on the other 75 % of the subjects scores every step count of --head_steps on the
    held-out ones, the best is refitted on all training frames (`fit_selected`). The schedule is
    chosen on the first fold and reused for the row's other folds and the 10 % column; the
    RAF-like split has no subjects, so its validation images are a random 25 %. The image tower
    stays frozen (full fine-tuning of 5 × 4 × 3 models does not fit the CPU budget); the text
    tower, the logit scales and the heads train.
 4. References on the same frames: every AU present / the majority class, and head I on the
    frames' 32×32 grey raw pixels (`pixel_references`). Probes and zero-shot: subject identity
    from frozen embeddings (held-out tasks of the training subjects); unseen expressions (FER
    head fitted on the seen classes of the RAF-like train split, tested on unseen-class test
    images over all classes); AU → FER (the fold's AU I+N+D text tower classifies RAF-like test
    images from expression names).
 5. Stage 2 end to end, the paper's protocol (`configs/finetune_au.py` /
    `configs/finetune_fer.py`, image tower trained), on the first fold: the lr is chosen from
    --e2e_lrs by AU I+N+D fine-tunes from the baseline trained on one training part and scored
    on the other (`full_finetunes`); then AU I+N+D from every row of --e2e_rows, AU I and FER
    I+N+D from the baseline and CLEF PA+PI. From the init they are the frozen tables'
    supervised upper bounds. Then the stage-1 loss curves, embedding maps and relevance
    heatmaps.
The tables (mean ± std over folds) go to --results (default docs/results.md); raw numbers to
W/results.json. The file's "Reading" section is kept between runs (it is written by a person).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import logging
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Sequence

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from clef_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
from clef_jax import datasets as data_lib  # pylint: disable=g-import-not-at-top
from clef_jax import evaluators  # pylint: disable=g-import-not-at-top
from clef_jax import losses  # pylint: disable=g-import-not-at-top
from clef_jax import models  # pylint: disable=g-import-not-at-top
from clef_jax import objectives  # pylint: disable=g-import-not-at-top
from clef_jax import pretrained  # pylint: disable=g-import-not-at-top
from clef_jax import sharding  # pylint: disable=g-import-not-at-top
from clef_jax import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
from clef_jax import train  # pylint: disable=g-import-not-at-top
from clef_jax.evaluators import common as eval_common  # pylint: disable=g-import-not-at-top
from clef_jax.evaluators import linear_probe_au  # pylint: disable=g-import-not-at-top
from clef_jax import trainer  # pylint: disable=g-import-not-at-top
from configs import common  # pylint: disable=g-import-not-at-top
from configs import finetune_au  # pylint: disable=g-import-not-at-top
from configs import finetune_fer  # pylint: disable=g-import-not-at-top
from configs import pretrain as pretrain_config  # pylint: disable=g-import-not-at-top
from input_pipeline.readers import folds as folds_lib  # pylint: disable=g-import-not-at-top

# Rows of the ablation table: pretraining overrides (None: no pretraining).
PRETRAIN_ROWS = {
  "init": None,
  "random": None,
  "instance": {"pretrain.pairing": "instance", "pretrain.lambda_pa": 0.0},
  "clef_pi": {"pretrain.pairing": "activity", "pretrain.lambda_pa": 0.0},
  "clef_pa": {"pretrain.lambda_pi": 0.0},
  "clef_pa_pi": {"pretrain.pairing": "activity"},
}
ROW_TITLES = {
  "init": "foundation init, no stage 1 (the poster's CLIP/FaRL row)",
  "random": "random init (no pretraining)",
  "instance": "instance pairing (SimCLR, the problem)",
  "clef_pi": "CLEF PI (L_II', activity pairing)",
  "clef_pa": "CLEF PA (L_IA, activity texts)",
  "clef_pa_pi": "CLEF PA+PI",
}
# Columns: stage-2 head variants (config.finetune fields).
HEADS = {
  "I": {"head": "linear", "use_names": False, "use_descriptions": False},
  "I+N": {"head": "text", "use_names": True, "use_descriptions": False},
  "I+D": {"head": "text", "use_names": False, "use_descriptions": True},
  "I+N+D": {"head": "text", "use_names": True, "use_descriptions": True},
}
SCARCE_FRACTION = 0.1


# ------------------------------------------------------------------------------------------
# Settings.
# ------------------------------------------------------------------------------------------


def settings(args) -> dict[str, Any]:
  """Everything that defines the run; written into results.json and docs/results.md."""
  if args.quick:
    s = dict(
      config_arg="tiny",
      pretrain_steps=args.pretrain_steps or 4,
      head_steps=args.head_steps or "5,10",
      head_batch=32,
      folds=args.folds or "1,2",
      finetune_steps=args.finetune_steps or 3,
      e2e_lrs=args.e2e_lrs or "1e-4,1e-3",
    )
  else:
    s = dict(
      config_arg="",
      pretrain_steps=args.pretrain_steps or 100,
      head_steps=args.head_steps or "50,100,200",
      head_batch=1024,
      folds=args.folds or "1,2,3",
      finetune_steps=args.finetune_steps or 1000,
      e2e_lrs=args.e2e_lrs or "2e-4,5e-4,1e-3",
    )
  init = args.init or ("none" if args.quick else "foundation")
  if init == "foundation":
    # The pretrain config's own default (Ti/16 at 64 px starts from the shipped foundation).
    init, init_arg = f"hf:{pretrain_config.FOUNDATION}", ""
  elif init == "none":
    init, init_arg = "", "init=none"
  else:
    init_arg = f"init={init}"
  s["config_arg"] = ",".join(a for a in (s["config_arg"], init_arg, args.config_arg) if a)
  # An hf: folder carries its own tokenizer files.
  tokenizer = init.split(":", 1)[1] if init.startswith("hf:") else "embedded"
  s.update(
    init=init,
    tokenizer=args.tokenizer or tokenizer,
    seed=args.seed,
    head_lr=args.head_lr,
    quick=args.quick,
    zeroshot_seen=("happiness", "sadness", "surprise", "neutral"),
    zeroshot_unseen=("fear", "disgust", "anger"),
  )
  s["folds"] = [int(f) for f in str(s["folds"]).split(",") if f]
  bad_lrs = SystemExit(f"--e2e_lrs={args.e2e_lrs!r}: expected learning rates > 0, e.g. 2e-4,5e-4")
  try:
    s["e2e_lrs"] = sorted({float(x) for x in str(s["e2e_lrs"]).split(",") if x})
  except ValueError:
    raise bad_lrs from None
  if not s["e2e_lrs"] or min(s["e2e_lrs"]) <= 0:
    raise bad_lrs
  s["head_steps"] = sorted({int(n) for n in str(s["head_steps"]).split(",") if n})
  if not s["head_steps"] or min(s["head_steps"]) < 1:
    raise SystemExit(f"--head_steps={args.head_steps!r}: expected step counts > 0, e.g. 50,100,200")
  return s


def base_overrides(s, data_dir: str, fold: int) -> dict[str, Any]:
  return {
    "fold": fold,
    "seed": s["seed"],
    "data.data_dir": data_dir,
    "tokenizer": s["tokenizer"],
  }


def cli(config_file: str, s, workdir: str, overrides: dict[str, Any]) -> str:
  """The main.py command line equivalent to an in-process run (for docs/results.md)."""
  arg = f":{s['config_arg']}" if s["config_arg"] else ""
  parts = [f"python main.py --config={config_file}{arg}", f"--workdir={workdir}"]
  for k, v in overrides.items():
    if k == "data.data_dir":
      continue
    parts.append(f"--config.{k}={v!r}" if isinstance(v, str) else f"--config.{k}={v}")
  return " ".join(parts)


# ------------------------------------------------------------------------------------------
# Stage 1: pretraining.
# ------------------------------------------------------------------------------------------


def pretrain_workdir(root: str, row: str, fold: int) -> str:
  return os.path.join(root, "pretrain", row, f"fold{fold}")


def pretrain(s, root: str, data_dir: str, row: str, fold: int, log: list) -> dict[str, Any]:
  """Runs (or resumes, or skips when finished) one pretraining; returns its results.json."""
  wd = pretrain_workdir(root, row, fold)
  over = {
    **base_overrides(s, data_dir, fold),
    "total_steps": s["pretrain_steps"],
    "checkpoint_every_steps": s["pretrain_steps"],
    **PRETRAIN_ROWS[row],
  }
  log.append(cli("configs/pretrain.py", s, wd, over))
  done = os.path.join(wd, "results.json")
  if os.path.isfile(done):
    with open(done, encoding="utf-8") as f:
      return json.load(f)
  config = pretrain_config.get_config(s["config_arg"])
  common.set_fields(config, over)
  del config.evals["au_probe"]  # stage 3 probes every row the same way
  t0 = time.time()
  res = train.run(config, wd)
  print(
    f"[pretrain] {row} fold {fold}: {time.time() - t0:.0f} s  "
    f"activity zero-shot {res.get('activity/activity_accuracy', float('nan')):.3f}",
    flush=True,
  )
  return res


# ------------------------------------------------------------------------------------------
# Stage 2: frozen embeddings.
# ------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _init_model(spec: str, image_size: int, dtype: str, remat: bool) -> tuple[dict, Any]:
  """(model config, params) of --init, read once per process (a real CLIP is hundreds of MB)."""
  mc, params = pretrained.load(spec, image_size=image_size, dtype=dtype, remat=remat)
  return mc.to_dict(), params


def au_config(s, data_dir: str, fold: int):
  """configs/finetune_au.py for the fold; with --init, the model is the checkpoint's
  architecture (as `train.resolve_init` makes it for the stage-1 runs)."""
  config = finetune_au.get_config(s["config_arg"])
  common.set_fields(config, base_overrides(s, data_dir, fold))
  if s.get("init"):
    mc = config.model
    model, _ = _init_model(s["init"], mc.image_size, mc.dtype, mc.remat)
    with config.unlocked():
      config.init = s["init"]
      config.model = ml_collections.ConfigDict(model)
  return config


def row_params(s, root: str, row: str, fold: int, config) -> dict[str, Any]:
  """The CLIP towers of a row: a finished pretraining, --init itself, or the model's random
  init (seed = fold)."""
  if row == "init":
    mc = config.model
    _, p = _init_model(s["init"], mc.image_size, mc.dtype, mc.remat)
    return {k: p[k] for k in objectives.MODEL_KEYS if k in p}
  if PRETRAIN_ROWS[row] is None:
    model = models.build(config.model)
    p = jax.jit(models.init, static_argnums=0)(model, jax.random.key(1000 + fold))
    return jax.tree.map(np.asarray, p)
  _, p = ckpt_lib.load_params(pretrain_workdir(root, row, fold))
  return {k: p[k] for k in objectives.MODEL_KEYS}


def embed_row(s, root: str, data_dir: str, row: str, fold: int) -> dict[str, np.ndarray]:
  """Frozen image embeddings of the fold's BP4D-like train/test and the RAF-like splits."""
  path = os.path.join(root, "embeddings", row, f"fold{fold}.npz")
  if os.path.isfile(path):
    with np.load(path) as f:
      return dict(f)
  config = au_config(s, data_dir, fold)
  params = row_params(s, root, row, fold, config)
  mesh = sharding.make_mesh(config.mesh)
  params = sharding.reshard(params, sharding.infer_sharding(params, config.sharding_rules, mesh))
  model = models.build(config.model)
  fns = eval_common.make_predict_fns(objectives.embedding_objective(config, model))
  out = {}
  data = data_lib.setup(config)
  for split, src in (("au_train", data.train), ("au_test", data.test)):
    e = eval_common.embed_source(
      fns, params, config, data, src, mesh, ("au", "subject_id", "activity_id", "expression")
    )
    out.update({f"{split}/{k}": v for k, v in e.items()})
  rconfig = au_config(s, data_dir, fold)
  rconfig.data.config = "raf"
  rdata = data_lib.setup(rconfig)
  for split, src in (("raf_train", rdata.train), ("raf_test", rdata.test)):
    e = eval_common.embed_source(fns, params, rconfig, rdata, src, mesh, ("expression",))
    out.update({f"{split}/{k}": v for k, v in e.items()})
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path + ".tmp.npz", **out)
  os.replace(path + ".tmp.npz", path)
  return out


# ------------------------------------------------------------------------------------------
# Stage 3: heads on frozen embeddings.
# ------------------------------------------------------------------------------------------


class HeadFitter:
  """Fits one stage-2 text head on frozen image embeddings with the trainer's own step (the
  logit-scale clamp included), compiled once per head variant: the image tower is skipped
  (`Objective.on_features`), the text tower, logit scales and heads train. The AU
  class-balancing weights travel in the batch (`au_pos_weight`), so every fold and label
  fraction reuses the same compiled step. The lr is constant after a short warmup, so the
  params after n steps of one fit are those of an n-step fit: one run scores every step count
  of the schedule grid on the validation split (`fit_selected`).
  """

  def __init__(self, s, config, tok, labels: Sequence):
    self.s, self.tok, self.labels = s, tok, list(labels)
    self.config = config = copy.deepcopy(config)
    with config.unlocked():
      config.batch_size = s["head_batch"]
      config.accum_steps = 1
      config.optim.lr = s["head_lr"]
      config.optim.total_steps = max(s["head_steps"])
      config.optim.warmup_steps = max(1, min(s["head_steps"]) // 5)
      config.optim.end_lr_ratio = 1.0  # constant after warmup
      config.optim.freeze = ("visual/.*",)
    self.model = models.build(config.model)
    self.obj = objectives.finetune_objective(config, self.model, tok, labels).on_features()
    self.fns = evaluators.make_predict_fns(self.obj)
    # One device: the head fit is tiny (embeddings are precomputed), and eight simulated CPU
    # devices on two cores would spend its steps in collectives.
    self.mesh = sharding.make_mesh((("data", 1), ("fsdp", 1)), devices=jax.local_devices()[:1])
    self.spec = trainer.state_spec(config, self.obj, self.mesh)
    self._step = trainer.jit_train_step(config, self.obj, self.spec, self.mesh)

  def fit(
    self,
    params: dict[str, Any],
    z: np.ndarray,
    labels: dict[str, np.ndarray],
    seed: int,
    steps: int,
    pos_weight: np.ndarray | None = None,
    snapshots: Sequence[int] = (),
  ) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """params: CLIP towers; z [N, D]; labels {'au': [N, J]} or {'label': [N]}.

    Returns the params after `steps` steps and {n: params after n steps} for n in snapshots.
    """
    if steps > max(self.s["head_steps"]):
      raise ValueError(f"{steps} head steps: the schedule ends at {max(self.s['head_steps'])}")
    snaps = {}
    with jax.set_mesh(self.mesh):
      state = trainer.init_state(self.spec, self.config, init=params)
      order = np.random.default_rng(seed)
      bs = min(self.s["head_batch"], len(z))
      metrics = {"loss": np.float32(0)}
      for i in range(1, steps + 1):
        idx = order.choice(len(z), bs, replace=False)
        batch = {k: v[idx] for k, v in labels.items()}
        batch.update(z=z[idx].astype(np.float32), mask=np.ones((bs,), bool))
        batch = sharding.global_batch(batch, self.mesh)
        if pos_weight is not None:
          batch["au_pos_weight"] = jax.device_put(
            np.asarray(pos_weight, np.float32), sharding.replicated(self.mesh)
          )
        state, metrics = self._step(state, batch)
        if i in snapshots:
          snaps[i] = jax.device_get(state["params"])
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
      raise FloatingPointError(f"stage-2 head fit diverged (loss {loss})")
    return jax.device_get(state["params"]), snaps

  def predict(self, params, z: np.ndarray) -> np.ndarray:
    return np.asarray(self.fns.label_logits(params, jnp.asarray(z, jnp.float32)))


VAL_FRACTION = 0.25  # of the training subjects (BP4D-like) or images (RAF-like), as in the probes


def au_score(logits: np.ndarray, y: np.ndarray) -> float:
  return mean_f1((logits >= 0).astype(np.int8), y, list(range(y.shape[1])))[0]


def fer_score(logits: np.ndarray, y: np.ndarray) -> float:
  return float(np.mean(logits.argmax(-1) == y))


def fit_selected(
  fitter: HeadFitter,
  params,
  z: np.ndarray,
  labels: dict[str, np.ndarray],
  groups: np.ndarray,
  seed: int,
  steps: int | None = None,
) -> tuple[dict[str, Any], int, float | None]:
  """A head trained for the step count of the grid (`s['head_steps']`) that scores best on a
  held-out `VAL_FRACTION` of the training `groups` (subjects), then refitted on all of z for
  that many steps; `steps` given: no selection. -> (params, steps, validation score or None).
  """
  task = "au" if "au" in labels else "label"
  score = au_score if task == "au" else fer_score
  weight = (lambda y: losses.au_pos_weight(y["au"])) if task == "au" else (lambda y: None)
  val_score = None
  if steps is None:
    grid = fitter.s["head_steps"]
    val = linear_probe_au.validation_subjects(groups, VAL_FRACTION, seed)
    fit_labels = {k: v[~val] for k, v in labels.items()}
    _, snaps = fitter.fit(
      params, z[~val], fit_labels, seed, max(grid), weight(fit_labels), snapshots=grid
    )
    scores = {n: score(fitter.predict(p, z[val]), labels[task][val]) for n, p in snaps.items()}
    steps = min(scores, key=lambda n: (-scores[n], n))  # ties: the shorter schedule
    val_score = scores[steps]
  fitted, _ = fitter.fit(params, z, labels, seed, steps, weight(labels))
  return fitted, steps, val_score


def fer_probe(
  xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, seed: int
) -> tuple[np.ndarray, float, float]:
  """Head I for expressions, CLIP's protocol: multinomial L-BFGS logistic regression on the
  standardised features, C from `linear_probe_au.CS` by accuracy on a held-out
  `VAL_FRACTION` of the training images, refitted on all. -> (test predictions, C, val acc)."""
  val = linear_probe_au.validation_subjects(np.arange(len(xtr)), VAL_FRACTION, seed)
  a, b = linear_probe_au.standardize(xtr[~val], xtr[val])
  scores = {}
  for c in sorted(linear_probe_au.CS):
    pred = linear_probe_au.logistic_probe(a, ytr[~val], b, seed=seed, balanced=False, C=c)
    scores[c] = float(np.mean(pred == ytr[val]))
  best = max(scores, key=lambda c: (scores[c], -c))
  a, b = linear_probe_au.standardize(xtr, xte)
  pred = linear_probe_au.logistic_probe(a, ytr, b, seed=seed, balanced=False, C=best)
  return pred, best, scores[best]


def mean_f1(pred: np.ndarray, label: np.ndarray, aus: Sequence[int]) -> tuple[float, dict]:
  res = eval_common.au_results(pred, label, aus)
  return res["au_f1/mean"], {k.split("/")[-1]: v for k, v in res.items() if "AU" in k}


def identity_probe(e: dict[str, np.ndarray], s) -> float:
  """Subject identity from frozen embeddings: train on odd tasks, test on even tasks."""
  act, subj, z = e["au_train/activity_id"], e["au_train/subject_id"], e["au_train/z"]
  tr, te = act % 2 == 0, act % 2 == 1
  rng = np.random.default_rng(s["seed"])
  tr_idx = np.flatnonzero(tr)
  if len(tr_idx) > 3000:
    tr_idx = np.sort(rng.choice(tr_idx, 3000, replace=False))
  pred = linear_probe_au.logistic_probe(
    z[tr_idx], subj[tr_idx], z[te], seed=s["seed"], balanced=False
  )
  return float(np.mean(pred == subj[te]))


def scarce_index(n: int, seed: int) -> np.ndarray:
  """The label-scarce column's training frames: a seeded SCARCE_FRACTION of n, sorted."""
  k = max(1, int(round(n * SCARCE_FRACTION)))
  return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def fer_labels(expr: np.ndarray, classes: Sequence[str]) -> np.ndarray:
  names = eval_common.expressions()
  return np.array(
    [classes.index(names[i]) if i >= 0 and names[i] in classes else -1 for i in expr], np.int64
  )


# ------------------------------------------------------------------------------------------
# The whole run.
# ------------------------------------------------------------------------------------------


def cached_fitter(
  fitters: dict, key: tuple, s, data_dir, fold, tok, labels, fields, task="au", classes=()
) -> HeadFitter:
  """The HeadFitter of a head variant (`fields`: config.finetune overrides), built once per
  process so its step compiles once; task 'fer' fits on the RAF-like split (`classes`: the
  class subset to train on, () = all)."""
  if key not in fitters:
    c = au_config(s, data_dir, fold)
    over = {f"finetune.{k}": v for k, v in fields.items()}
    if task == "fer":
      c.data.config = "raf"
      over.update({"finetune.task": "fer", "finetune.classes": tuple(classes)})
    common.set_fields(c, over)
    fitters[key] = HeadFitter(s, c, tok, labels)
  return fitters[key]


def run_cells(
  s, root: str, data_dir: str, rows: Sequence[str], folds: Sequence[int], commands: list
) -> dict:
  """Every number of the tables: {row: {fold: {metric: value}}}.

  Each finished (row, fold) is kept in WORKDIR/cells/ROW/foldK.json and not recomputed.
  """
  tok = tok_lib.get(s["tokenizer"], context_length=au_config(s, data_dir, 1).model.context_length)
  cells: dict[str, dict[int, dict[str, Any]]] = {r: {} for r in rows}
  fitters: dict[tuple, HeadFitter] = {}
  for fold in folds:
    config = au_config(s, data_dir, fold)
    data = data_lib.setup(config)
    aus = data.aus
    rconfig = au_config(s, data_dir, fold)
    rconfig.data.config = "raf"
    rdata = data_lib.setup(rconfig)
    classes = list(rdata.classes)
    for row in rows:
      pre = {}
      if PRETRAIN_ROWS[row] is not None:
        pre = pretrain(s, root, data_dir, row, fold, commands)
      cell_path = os.path.join(root, "cells", row, f"fold{fold}.json")
      if os.path.isfile(cell_path):
        with open(cell_path, encoding="utf-8") as f:
          cells[row][fold] = json.load(f)
        continue
      t0 = time.time()
      e = embed_row(s, root, data_dir, row, fold)
      params = row_params(s, root, row, fold, config)
      t_embed = time.time() - t0
      out: dict[str, Any] = {"activity_zeroshot": pre.get("activity/activity_accuracy")}
      ytr, yte = e["au_train/au"], e["au_test/au"]
      n = len(ytr)
      scarce = scarce_index(n, s["seed"])
      ftr = fer_labels(e["raf_train/expression"], classes)
      fte = fer_labels(e["raf_test/expression"], classes)
      fkeep = ftr >= 0
      groups = e["au_train/subject_id"]
      vseed = s["seed"]  # the same validation subjects for every row
      # Text-head schedules are chosen on fold `folds[0]` and reused for the row's other folds.
      first = os.path.join(root, "cells", row, f"fold{s['folds'][0]}.json")
      prior: dict[str, int] = {}
      if fold != s["folds"][0] and os.path.isfile(first):
        with open(first, encoding="utf-8") as f:
          prior = json.load(f).get("schedule", {})
      schedule: dict[str, int] = {}
      for head, fields in HEADS.items():
        for part, idx in (("", np.arange(n)), ("scarce_", scarce)):
          if head == "I":  # the linear head: L-BFGS to convergence, C chosen on validation
            res = linear_probe_au.probe_with_validation(
              e["au_train/z"][idx], ytr[idx], groups[idx], e["au_test/z"], yte, aus, seed=vseed
            )
            out[f"{part}au_f1/I"] = res["au_f1/mean"]
            out[f"{part}val/au_f1/I"], out[f"{part}C/au/I"] = res["val/au_f1/mean"], res["C"]
            continue
          fitter = cached_fitter(fitters, ("au", head), s, data_dir, fold, tok, aus, fields)
          # The 10 % column reuses the step count chosen with all labels.
          fitted, steps, val = fit_selected(
            fitter,
            params,
            e["au_train/z"][idx],
            {"au": ytr[idx]},
            groups[idx],
            s["seed"] + fold,
            steps=schedule.get(f"au/{head}", prior.get(f"au/{head}")),
          )
          if not part:
            schedule[f"au/{head}"] = steps
            if val is not None:
              out[f"val/au_f1/{head}"] = val
          pred = (fitter.predict(fitted, e["au_test/z"]) >= 0).astype(np.int8)
          out[f"{part}au_f1/{head}"], per_au = mean_f1(pred, yte, aus)
          if head == "I+N+D" and not part:
            out["au_f1_per_au"] = per_au
            # AU -> FER: the AU-fine-tuned text tower names the expressions of RAF-like faces.
            zc = eval_common.classify_by_text(
              fitter.fns, fitted, tok, classes, "names", sharding.make_mesh(fitter.config.mesh)
            )
            keep = fte >= 0
            out["zeroshot/au_to_fer"] = float(
              np.mean((e["raf_test/z"][keep] @ zc.T).argmax(-1) == fte[keep])
            )
        if head == "I":
          pred, out["C/fer/I"], out["val/fer_acc/I"] = fer_probe(
            e["raf_train/z"][fkeep], ftr[fkeep], e["raf_test/z"], vseed
          )
        else:
          fitter = cached_fitter(
            fitters, ("fer", head), s, data_dir, fold, tok, classes, fields, task="fer"
          )
          fitted, steps, val = fit_selected(
            fitter,
            params,
            e["raf_train/z"][fkeep],
            {"label": ftr[fkeep]},
            np.arange(int(fkeep.sum())),  # no subjects in the RAF-like split: held-out images
            s["seed"] + fold,
            steps=prior.get(f"fer/{head}"),
          )
          schedule[f"fer/{head}"] = steps
          if val is not None:
            out[f"val/fer_acc/{head}"] = val
          pred = fitter.predict(fitted, e["raf_test/z"]).argmax(-1)
        out[f"fer_acc/{head}"] = float(np.mean(pred[fte >= 0] == fte[fte >= 0]))
      out["schedule"] = schedule
      out.update(
        unseen_expressions(
          s, e, params, classes, tok, data_dir, fold, fitters, schedule["fer/I+N+D"]
        )
      )
      out["identity_acc"] = identity_probe(e, s)
      out["identity_chance"] = 1.0 / len(np.unique(e["au_train/subject_id"]))
      cells[row][fold] = out
      os.makedirs(os.path.dirname(cell_path), exist_ok=True)
      with open(cell_path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
      os.replace(cell_path + ".tmp", cell_path)
      print(
        f"[cells] {row} fold {fold} (embeddings {t_embed:.0f} s, heads "
        f"{time.time() - t0 - t_embed:.0f} s): "
        + ", ".join(f"{k}={v:.3f}" for k, v in out.items() if isinstance(v, float)),
        flush=True,
      )
  return cells


def unseen_expressions(
  s, e, params, classes, tok, data_dir, fold, fitters, steps: int
) -> dict[str, float]:
  """FER I+N+D head fitted on the seen classes (for the steps chosen for the 7-class I+N+D head);
  accuracy on unseen-class test images."""
  seen, unseen = list(s["zeroshot_seen"]), list(s["zeroshot_unseen"])
  fitter = cached_fitter(
    fitters, ("fer_seen",), s, data_dir, fold, tok, seen, HEADS["I+N+D"], task="fer", classes=seen
  )
  ytr = fer_labels(e["raf_train/expression"], seen)
  keep = ytr >= 0
  fitted, _ = fitter.fit(
    params, e["raf_train/z"][keep], {"label": ytr[keep]}, s["seed"] + fold, steps
  )
  zc = eval_common.classify_by_text(
    fitter.fns, fitted, tok, classes, "names", sharding.make_mesh(fitter.config.mesh)
  )
  names = eval_common.expressions()
  y = np.array([names[i] if i >= 0 else "" for i in e["raf_test/expression"]])
  test = np.isin(y, unseen)
  z, y = e["raf_test/z"][test], y[test]
  pred_all = np.asarray(classes)[(z @ zc.T).argmax(-1)]
  uidx = [classes.index(c) for c in unseen]
  pred_unseen = np.asarray(classes)[np.asarray(uidx)[(z @ zc[uidx].T).argmax(-1)]]
  return {
    "zeroshot/unseen_all_classes": float(np.mean(pred_all == y)),
    "zeroshot/unseen_only": float(np.mean(pred_unseen == y)),
  }


def references(root: str, rows: Sequence[str], folds: Sequence[int], finetunes: dict) -> dict:
  """Per fold, on the tables' test sets: mean AU F1 of predicting every AU present and FER
  accuracy of the majority class (from the labels saved with the embeddings, the same for every
  row), the raw-pixel probes (`pixel_references`, when on disk), and the supervised upper
  bounds (end-to-end fine-tunes from the init, fold `folds[0]` only)."""
  out: dict[str, list] = {
    "au_all_positive": [],
    "fer_majority": [],
    "raw_pixels/au_f1": [],
    "raw_pixels/scarce_au_f1": [],
    "raw_pixels/fer_acc": [],
  }
  for fold in folds:
    path = next(
      (
        os.path.join(root, "embeddings", r, f"fold{fold}.npz")
        for r in rows
        if os.path.isfile(os.path.join(root, "embeddings", r, f"fold{fold}.npz"))
      ),
      None,
    )
    if path is None:
      continue
    with np.load(path) as f:
      y, expr = f["au_test/au"], f["raf_test/expression"]
    f1, _ = mean_f1(np.ones_like(y, np.int8), y, list(range(y.shape[1])))
    out["au_all_positive"].append(f1)
    _, counts = np.unique(expr[expr >= 0], return_counts=True)
    out["fer_majority"].append(float(counts.max() / counts.sum()))
    ref = os.path.join(root, "references", f"fold{fold}.json")
    if os.path.isfile(ref):
      with open(ref, encoding="utf-8") as f:
        r = json.load(f)
      for k in ("au_f1", "scarce_au_f1", "fer_acc"):
        out[f"raw_pixels/{k}"].append(r[f"raw_pixels/{k}"])
  au, fer = finetunes.get("au/init", {}), finetunes.get("fer/init", {})
  out["supervised/au_f1"] = [au["test/au_f1/mean"]] if "test/au_f1/mean" in au else []
  out["supervised/fer_acc"] = [fer["test/fer/accuracy"]] if "test/fer/accuracy" in fer else []
  return out


def pixel_references(s, root: str, data_dir: str, fold: int) -> dict[str, float]:
  """The raw-pixel references of a fold, same frames and protocol as head I: the AU probe
  (`linear_probe_au.probe_with_validation`) and the expression probe (`fer_probe`) on 32×32
  grey pixels. Kept in WORKDIR/references/foldK.json."""
  path = os.path.join(root, "references", f"fold{fold}.json")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  def pixels(source):
    return linear_probe_au.raw_pixels(
      [pipeline.decode_image(source[i]["image"]) for i in range(len(source))]
    )

  t0 = time.time()
  config = au_config(s, data_dir, fold)
  data = data_lib.setup(config)
  rconfig = au_config(s, data_dir, fold)
  rconfig.data.config = "raf"
  rdata = data_lib.setup(rconfig)
  # Labels in source order, as the embeddings of every row were saved.
  e = embed_row(s, root, data_dir, "init" if s.get("init") else "random", fold)
  xtr, xte = pixels(data.train), pixels(data.test)
  ytr, yte, groups = e["au_train/au"], e["au_test/au"], e["au_train/subject_id"]
  res = linear_probe_au.probe_with_validation(xtr, ytr, groups, xte, yte, data.aus, seed=s["seed"])
  sc = scarce_index(len(ytr), s["seed"])
  scarce = linear_probe_au.probe_with_validation(
    xtr[sc], ytr[sc], groups[sc], xte, yte, data.aus, seed=s["seed"]
  )
  classes = list(rdata.classes)
  ftr = fer_labels(e["raf_train/expression"], classes)
  fte = fer_labels(e["raf_test/expression"], classes)
  keep = ftr >= 0
  pred, c, val = fer_probe(pixels(rdata.train)[keep], ftr[keep], pixels(rdata.test), s["seed"])
  out = {
    "raw_pixels/au_f1": res["au_f1/mean"],
    "raw_pixels/val/au_f1": res["val/au_f1/mean"],
    "raw_pixels/au_C": res["C"],
    "raw_pixels/scarce_au_f1": scarce["au_f1/mean"],
    "raw_pixels/fer_acc": float(np.mean(pred[fte >= 0] == fte[fte >= 0])),
    "raw_pixels/val/fer_acc": val,
    "raw_pixels/fer_C": c,
  }
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  os.replace(path + ".tmp", path)
  print(f"[references] fold {fold} ({time.time() - t0:.0f} s): {out}", flush=True)
  return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  v = np.asarray([x for x in values if x is not None], np.float64)
  if not len(v):
    return float("nan"), float("nan")
  return float(v.mean()), float(v.std())


def fmt(values: Sequence[float], pct: bool = True) -> str:
  m, sd = mean_std(values)
  if not np.isfinite(m):
    return "–"
  k = 100.0 if pct else 1.0
  return f"{m * k:.1f} ± {sd * k:.1f}"


def tables(cells: dict, s, refs: dict[str, list] | None = None) -> str:
  """The markdown tables of docs/results.md."""
  folds = s["folds"]
  rows = list(cells)
  col = lambda r, k: [cells[r][f].get(k) for f in folds if f in cells[r]]  # noqa: E731
  lines = [
    f"### Ablation (BP4D-like mean AU F1, {len(folds)} subject-exclusive folds; RAF-like "
    "FER accuracy; %, mean ± std over folds)",
    "",
    "| pretraining | "
    + " | ".join(f"AU F1 {h}" for h in HEADS)
    + " | "
    + " | ".join(f"FER acc {h}" for h in HEADS)
    + " |",
    "|---|" + "---:|" * (2 * len(HEADS)),
  ]
  for r in rows:
    lines.append(
      f"| {ROW_TITLES[r]} | "
      + " | ".join(fmt(col(r, f"au_f1/{h}")) for h in HEADS)
      + " | "
      + " | ".join(fmt(col(r, f"fer_acc/{h}")) for h in HEADS)
      + " |"
    )
  refs = refs or {}
  sup = (
    f"end to end from the init, fold {folds[0]}, {s['finetune_steps']} steps, lr chosen on "
    "validation subjects"
  )
  lines += [
    "",
    "| reference (same test frames, same run) | AU F1 | FER acc |",
    "|---|---:|---:|",
    f"| trivial: every AU present / the majority expression | {fmt(refs.get('au_all_positive', []))} "
    f"| {fmt(refs.get('fer_majority', []))} |",
    "| raw pixels: head I on 32×32 grey pixels (same probe, same C selection) | "
    f"{fmt(refs.get('raw_pixels/au_f1', []))} | {fmt(refs.get('raw_pixels/fer_acc', []))} |",
    f"| supervised upper bound: the ViT fine-tuned with the labels ({sup}) | "
    f"{fmt(refs.get('supervised/au_f1', []))} | {fmt(refs.get('supervised/fer_acc', []))} |",
  ]
  lines += [
    "",
    f"### Label-scarce: AU F1 with {SCARCE_FRACTION:.0%} of the labelled training "
    "frames (same frames for every cell)",
    "",
    "| pretraining | " + " | ".join(f"AU F1 {h} (10 %)" for h in HEADS) + " |",
    "|---|" + "---:|" * len(HEADS),
  ]
  for r in rows:
    lines.append(
      f"| {ROW_TITLES[r]} | " + " | ".join(fmt(col(r, f"scarce_au_f1/{h}")) for h in HEADS) + " |"
    )
  lines += [
    f"| *reference: every AU present* | {fmt(refs.get('au_all_positive', []))} | – | – | – |",
    f"| *reference: raw pixels, head I on the same 10 %* | "
    f"{fmt(refs.get('raw_pixels/scarce_au_f1', []))} | – | – | – |",
  ]
  chance = mean_std(col(rows[0], "identity_chance"))[0]
  lines += [
    "",
    "### Identity leakage and zero-shot (%, mean ± std over folds)",
    "",
    f"Identity: linear probe for the subject on frozen embeddings, trained on the odd "
    f"tasks (T1, T3, T5, T7) of the training subjects, tested on their even tasks "
    f"(chance {chance * 100:.1f} %). Lower is better for CLEF's claim. Activity: "
    "zero-shot activity classification from the activity texts straight after "
    "pretraining (chance 12.5 %). Unseen expressions: seen = "
    f"{', '.join(s['zeroshot_seen'])}; unseen = {', '.join(s['zeroshot_unseen'])}; "
    "accuracy on unseen-class RAF-like test images predicting over all 7 classes and "
    "over the 3 unseen ones (chance 33.3 %). AU → FER: the AU I+N+D model classifies "
    "RAF-like test images over the 7 expression names (chance 14.3 %).",
    "",
    "| pretraining | identity acc | activity zero-shot | unseen (all classes) | "
    "unseen (unseen only) | AU → FER |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {ROW_TITLES[r]} | {fmt(col(r, 'identity_acc'))} | "
      f"{fmt(col(r, 'activity_zeroshot'))} | "
      f"{fmt(col(r, 'zeroshot/unseen_all_classes'))} | "
      f"{fmt(col(r, 'zeroshot/unseen_only'))} | {fmt(col(r, 'zeroshot/au_to_fer'))} |"
    )
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Stage 5: a real fine-tune, figures.
# ------------------------------------------------------------------------------------------


def finetune_workdir(
  root: str,
  task: str,
  head: str,
  row: str,
  fold: int,
  lr: float,
  steps: int,
  validation: bool = False,
) -> str:
  """W/finetune/TASK-HEAD/lrLR-sSTEPS/ROW/foldK (or .../val-foldK: trained on one training part,
  tested on the other)."""
  run = f"lr{lr:g}-s{steps}"
  leaf = f"val-fold{fold}" if validation else f"fold{fold}"
  return os.path.join(root, "finetune", f"{task}-{head}", run, row, leaf)


def finetune_run(
  s,
  root: str,
  data_dir: str,
  task: str,
  head: str,
  row: str,
  fold: int,
  lr: float,
  commands: list,
  validation: bool = False,
) -> dict[str, Any]:
  """One end-to-end fine-tune (image and text towers trained; `configs/finetune_TASK.py`, head
  variant `head` of HEADS) from `row`'s model of `fold`; skipped when its results.json is on
  disk. validation=True (AU only) trains on the fold's first training part and tests on its
  second, so the test fold is never seen. -> the run's results.json."""
  if validation and task != "au":
    raise ValueError("validation runs hold out training subjects: AU task only")
  steps = s["finetune_steps"]
  wd = finetune_workdir(root, task, head, row, fold, lr, steps, validation)
  if row == "init":
    init = s["init"]
  elif PRETRAIN_ROWS[row] is None:  # random: the architecture's initialisation (seed)
    init = ""
  else:
    init = f"clef:{pretrain_workdir(root, row, fold)}"
  over = {
    **base_overrides(s, data_dir, fold),
    "total_steps": steps,
    "checkpoint_every_steps": steps,
    "optim.lr": lr,
    "init": init,
    **{f"finetune.{k}": v for k, v in HEADS[head].items()},
  }
  if validation:
    a, b = folds_lib.train_parts(fold)[:2]
    over.update({"data.train_split": f"part{a}", "data.test_split": f"part{b}"})
  config_file = f"configs/finetune_{task}.py"
  commands.append(cli(config_file, s, wd, over))
  done = os.path.join(wd, "results.json")
  if os.path.isfile(done):
    with open(done, encoding="utf-8") as f:
      return json.load(f)
  config = (finetune_au if task == "au" else finetune_fer).get_config(s["config_arg"])
  common.set_fields(config, over)
  t0 = time.time()
  res = train.run(config, wd)
  what = "validation" if validation else "test"
  print(
    f"[finetune] {task} {head} from {row}, lr {lr:g} ({what}): {time.time() - t0:.0f} s", flush=True
  )
  return res


def e2e_baseline(s) -> str:
  """The row the baselines start from: the init, or random weights without one."""
  return "init" if s["init"] else "random"


def select_lr(val: dict[float, float]) -> float:
  """The lr with the best validation score (the smaller one on a tie)."""
  return min(val, key=lambda lr: (-val[lr], lr))


def full_finetunes(
  s, root: str, data_dir: str, rows: Sequence[str], commands: list
) -> tuple[dict[str, dict], dict[str, Any]]:
  """Stage 2 end to end, as in the paper (the image tower is fine-tuned), on fold `folds[0]`.

  The lr comes from `--e2e_lrs`: each is an AU I+N+D fine-tune from the baseline (the init) on
  one training part, scored on the other (held-out training subjects); the best is used for
  every run below (and for FER, whose RAF-like split has no subjects). Then AU I+N+D from every
  row, AU I (the linear head, the poster's baseline) and FER I+N+D from the baseline and CLEF
  PA+PI. From the init they are also the supervised upper bounds of the frozen-feature tables.
  -> ({"au/ROW" (I+N+D), "au_I/ROW", "fer/ROW": results.json}, {"val": {lr: F1}, "lr": lr}).
  """
  fold = s["folds"][0]
  base = e2e_baseline(s)
  val = {
    lr: finetune_run(s, root, data_dir, "au", "I+N+D", base, fold, lr, commands, True)[
      "test/au_f1/mean"
    ]
    for lr in s["e2e_lrs"]
  }
  lr = select_lr(val)
  print(f"[finetune] lr {lr:g} chosen on validation subjects: {val}", flush=True)
  pair = [r for r in (base, "clef_pa_pi") if r in rows]
  runs = [("au", "I+N+D", r) for r in s["e2e_rows"] if r in rows]
  runs += [("au", "I", r) for r in pair] + [("fer", "I+N+D", r) for r in pair]
  out = {}
  for task, head, row in runs:
    key = f"{task}{'_I' if head == 'I' else ''}/{row}"
    out[key] = finetune_run(s, root, data_dir, task, head, row, fold, lr, commands)
  return out, {"val": val, "lr": lr}


def stage1_curves(root: str, fig_dir: str, rows: Sequence[str], fold: int) -> str | None:
  """A PNG of the stage-1 losses of the fold's pretraining rows: loss_pi against its collapse
  value log(2B-1) (identical embeddings within every positive set), and loss_pa."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  runs = {}
  for row in rows:
    path = os.path.join(pretrain_workdir(root, row, fold), "metrics.jsonl")
    if PRETRAIN_ROWS[row] is not None and os.path.isfile(path):
      with open(path, encoding="utf-8") as f:
        runs[row] = [r for r in map(json.loads, f) if "loss" in r]
  if not runs:
    return None
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  collapse = None
  for row, recs in runs.items():
    for ax, key in zip(axes, ("loss_pi", "loss_pa")):
      pts = [(r["step"], r[key]) for r in recs if key in r]
      if pts:
        ax.plot(*zip(*pts), label=ROW_TITLES[row])
    collapse = collapse or next(
      (r["health/loss_pi_at_collapse"] for r in recs if "health/loss_pi_at_collapse" in r), None
    )
  if collapse is not None:
    axes[0].axhline(
      collapse, color="k", ls="--", lw=1, label=f"collapse log(2B-1) = {collapse:.2f}"
    )
  for ax, title in zip(axes, ("L_II' (loss_pi)", "L_IA (loss_pa)")):
    ax.set(title=f"{title}, fold {fold}", xlabel="step")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(fig_dir, exist_ok=True)
  out = os.path.join(fig_dir, "stage1_losses.png")
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def figures(
  s, root: str, fig_dir: str, rows: Sequence[str], commands: list, relevance_workdir: str
) -> dict[str, Any]:
  """Embedding maps of the fold-1 instance and CLEF pretrainings; relevance of the AU model
  fine-tuned from CLEF (`relevance_workdir`; '' when it was not fine-tuned: no heatmaps)."""
  from clef_jax import visualize  # pylint: disable=g-import-not-at-top

  fold = s["folds"][0]
  os.makedirs(fig_dir, exist_ok=True)
  stats = {}
  curves = stage1_curves(root, fig_dir, rows, fold)
  if curves:
    stats["stage1_losses"] = os.path.relpath(curves, fig_dir)
  if "clef_pa_pi" not in rows or "instance" not in rows:
    return stats
  for row in ("instance", "clef_pa_pi"):
    wd = pretrain_workdir(root, row, fold)
    out = os.path.join(fig_dir, f"embeddings_{row}.png")
    commands.append(f"python -m clef_jax.visualize embeddings --workdir={wd} --out={out}")
    stats[row] = visualize.embeddings_main(
      [wd], out, max_examples=200 if s["quick"] else 2000, perplexity=10.0 if s["quick"] else 30.0
    )[0]
  if not relevance_workdir:
    return stats
  wd = relevance_workdir
  out = os.path.join(fig_dir, "relevance")
  commands.append(f"python -m clef_jax.visualize relevance --workdir={wd} --images=6 --out={out}")
  if os.path.isdir(out):
    shutil.rmtree(out)
  rel = visualize.relevance_main(wd, "2" if s["quick"] else "6", out, steps=2 if s["quick"] else 16)
  stats["relevance_figures"] = [os.path.relpath(p, fig_dir) for p in rel["paths"]]
  return stats


def git_commit() -> str:
  """The checked-out commit (with '+changes' when the tree differs), for the record."""
  import subprocess  # pylint: disable=g-import-not-at-top

  try:
    head = subprocess.run(
      ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=ROOT,
      check=True,
      capture_output=True,
      text=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head + ("+changes" if dirty else "")


READING_START = "<!-- reading: kept between runs -->"
READING_END = "<!-- end reading -->"


def e2e_table(finetunes: dict[str, dict], selection: dict[str, Any]) -> str:
  """The markdown table of the end-to-end fine-tunes, with the lr selection under it."""
  rows = list(dict.fromkeys(k.split("/", 1)[1] for k in finetunes))

  def cell(key: str, metric: str) -> str:
    res = finetunes.get(key, {})
    return f"{res[metric] * 100:.1f}" if metric in res else "–"

  lines = [
    "| start of stage 2 | AU F1 I (%) | AU F1 I+N+D (%) | FER acc I+N+D (%) |",
    "|---|---:|---:|---:|",
  ]
  for r in rows:
    lines.append(
      f"| {ROW_TITLES[r]} | {cell(f'au_I/{r}', 'test/au_f1/mean')} | "
      f"{cell(f'au/{r}', 'test/au_f1/mean')} | {cell(f'fer/{r}', 'test/fer/accuracy')} |"
    )
  val = selection.get("val", {})
  if val:
    scores = ", ".join(f"{float(lr):g}: {v * 100:.1f}" for lr, v in val.items())
    lines += ["", f"Validation AU F1 (%) by lr: {scores}; chosen: {float(selection['lr']):g}."]
  return "\n".join(lines)


def write_markdown(
  path: str,
  s,
  cells,
  finetunes,
  selection,
  figs,
  commands,
  wall: float,
  fig_dir: str,
  argv: str,
  commit: str,
  root: str,
):
  reading = (
    "## Reading\n\n(Written by a person after looking at the numbers: what holds, what "
    "does not, and why.)\n"
  )
  if os.path.isfile(path):
    text = pathlib.Path(path).read_text(encoding="utf-8")
    if READING_START in text and READING_END in text:
      reading = text.split(READING_START, 1)[1].split(READING_END, 1)[0].strip() + "\n"
  rel = os.path.relpath(fig_dir, os.path.dirname(os.path.abspath(path)))
  pc = pretrain_config.get_config(s["config_arg"])
  mc, sf = pc.model, pc.data.synthface
  ft = e2e_table(finetunes, selection)
  emb = "\n".join(
    f"| {ROW_TITLES[r]} | {st['behaviour/purity']:.3f} ({st['behaviour/chance']:.3f}) | "
    f"{st['subject/purity']:.3f} ({st['subject/chance']:.3f}) |"
    for r, st in figs.items()
    if r in PRETRAIN_ROWS
  )
  # The poster's two examples are shown (and committed); the others stay in the folder.
  shown = [
    p for p in figs.get("relevance_figures", []) if os.path.basename(p) in ("AU12.png", "AU4.png")
  ]
  rel_figs = "\n".join(f"![relevance]({rel}/{p})" for p in shown)
  cmd = argv or "python benchmarks/reproduce.py"
  text = f"""# Results on SynthFace

Everything on this page was produced by one run of `{cmd}` (the tables, the figures and this
file, except the Reading section); rerun it to check. Machine: {
    platform.processor() or platform.machine()
  }, {os.cpu_count()} CPU cores, no accelerator; wall time {wall / 60:.0f} min.
Data: SynthFace ({sf.subjects} BP4D-like subjects × 8 tasks × {sf.frames_per_task} frames at
{sf.size} px; {sf.raf_train} + {sf.raf_test} RAF-like images; generator seed {sf.seed}; code at
commit `{commit}`). Model: {mc.vision_layers}-layer ViT (width {mc.vision_width}, patch
{mc.patch_size}) at {mc.image_size} px and a {mc.text_layers}-layer text tower, {
    f"every row but `random` starting from `{os.path.relpath(s['init'].split(':', 1)[1], ROOT)}`"
    f" ({s['init'].split(':', 1)[0]}:, tokenizer `{os.path.basename(s['tokenizer'])}`)"
    if s.get("init")
    else "from scratch (--init=none)"
  }. Pretraining {s["pretrain_steps"]} steps of batch
{pc.batch_size} (two views each) per row and fold; stage-2 heads on frozen image embeddings: head I
is L-BFGS logistic regression (CLIP's linear-probe protocol, C from {
    list(linear_probe_au.CS)
  } chosen on {VAL_FRACTION:.0%} of the training
subjects held out whole, RAF-like: of the training images), the text heads train with the
project's objective at constant lr {s["head_lr"]}, batch {s["head_batch"]}, for the step count of {
    s["head_steps"]
  } that scores best on the same held-out subjects (images), chosen on fold {s["folds"][0]} and
reused for the row's other folds, then refitted on all training frames; seed {s["seed"]}.

{READING_START}
{reading}{READING_END}

## Tables

{tables(cells, s, references(root, list(cells), s["folds"], finetunes))}

### Stage 2 end to end (the paper's protocol: the image tower is fine-tuned; fold {s["folds"][0]})

`configs/finetune_au.py` / `configs/finetune_fer.py`, {s["finetune_steps"]} steps of batch {
    finetune_au.get_config(s["config_arg"]).batch_size
  },
cosine schedule; the lr is chosen from {s["e2e_lrs"]} by AU I+N+D fine-tunes from the {
    e2e_baseline(s)
  } row trained on one training part and scored on the other (training subjects held out
whole; the test fold is never seen), and used for every run here (FER too: the RAF-like split
has no subjects).

{ft}

## Stage-1 losses (fold {s["folds"][0]})

`loss_pi` of the activity-pairing rows against its collapse value log(2B−1) (the loss when all
embeddings are equal), and `loss_pa`; from each pretraining's metrics.jsonl.

{f"![stage-1 losses]({rel}/{figs['stage1_losses']})" if figs.get("stage1_losses") else "(none)"}

## Embedding maps (fold {
    s["folds"][0]
  } test subjects, t-SNE; kNN purity of the embeddings, chance in brackets)

| pretraining | expression purity | subject purity |
|---|---:|---:|
{emb}

![instance]({rel}/embeddings_instance.png)
![clef]({rel}/embeddings_clef_pa_pi.png)

## Relevance heatmaps (CLEF PA+PI, fine-tuned end to end)

Integrated gradients of cos(f(x), g(prompt)) with respect to the pixels (mean-colour baseline),
positive part, smoothed; one map per AU prompt (name and description). The share of relevance
inside each AU's rendered region is measured by `benchmarks/relevance_check.py` and
`tests/test_relevance_synthface.py`. Shown: AU12 (lip corner puller) and AU4 (brow lowerer), the
poster's examples; a run writes every AU's figure to the same folder.

{rel_figs}

## Commands

```sh
{chr(10).join(commands)}
```
"""
  pathlib.Path(path).write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="workdirs/reproduce")
  p.add_argument("--data_dir", default="", help="SynthFace data folder (default: WORKDIR/data)")
  p.add_argument("--results", default="docs/results.md")
  p.add_argument("--figures", default="docs/results", help="folder for the figures")
  p.add_argument("--quick", action="store_true", help="tiny models and data: minutes")
  p.add_argument("--folds", default="")
  p.add_argument(
    "--init",
    default="",
    help="the model every row starts from: 'foundation' (the shipped SynthFace-CLIP; the "
    "default), 'none' (random weights; the --quick default), or a pretrained.load spec "
    "(hf:DIR, openai:FILE)",
  )
  p.add_argument("--tokenizer", default="", help="tokenizer spec (default: --init's own)")
  p.add_argument(
    "--config_arg", default="", help="extra config argument, e.g. variant=B/16 for ViT-B/16"
  )
  p.add_argument("--rows", default="", help="default: every row (without 'init' if --init=none)")
  p.add_argument("--pretrain_steps", type=int, default=0)
  p.add_argument(
    "--head_steps",
    default="",
    help="step counts the text heads choose from on validation (default 50,100,200; quick 5,10)",
  )
  p.add_argument("--finetune_steps", type=int, default=0)
  p.add_argument(
    "--e2e_lrs",
    default="",
    help="lrs the end-to-end fine-tunes choose from on validation subjects "
    "(default 2e-4,5e-4,1e-3; quick 1e-4,1e-3)",
  )
  p.add_argument(
    "--e2e_rows",
    default="",
    help="rows fine-tuned end to end with I+N+D (default: every row; quick: the baseline and "
    "clef_pa_pi)",
  )
  p.add_argument("--head_lr", type=float, default=3e-3, help="lr of the stage-2 text heads")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--markdown_only",
    action="store_true",
    help="rewrite --results from WORKDIR/results.json of a finished run",
  )
  p.add_argument(
    "--cache_dir",
    default=os.path.join(tempfile.gettempdir(), "clef_jax_bench_cache"),
    help="JAX persistent compilation cache ('' = off)",
  )
  args = p.parse_args(argv)
  if args.cache_dir and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  logging.basicConfig(level=logging.WARNING)
  s = settings(args)
  # With an init, the poster's rows (the init replaces `random`); without, `random` and stage 1.
  rows = [r for r in args.rows.split(",") if r] or [
    r for r in PRETRAIN_ROWS if r != ("random" if s["init"] else "init")
  ]
  bad = [r for r in rows if r not in PRETRAIN_ROWS]
  if bad:
    raise SystemExit(f"--rows: unknown {bad}; known {list(PRETRAIN_ROWS)}")
  if "init" in rows and not s["init"]:
    raise SystemExit("--rows: the 'init' row needs a pretrained --init (it is 'none' here)")
  e2e_rows = [r for r in args.e2e_rows.split(",") if r] or (
    [r for r in (e2e_baseline(s), "clef_pa_pi") if r in rows] if s["quick"] else rows
  )
  bad = [r for r in e2e_rows if r not in rows]
  if bad:
    raise SystemExit(f"--e2e_rows: {bad} not among the run's rows {rows}")
  s["e2e_rows"] = e2e_rows
  root = os.path.abspath(args.workdir)
  if args.markdown_only:
    path = os.path.join(root, "results.json")
    if not os.path.isfile(path):
      raise SystemExit(f"--markdown_only: {path} does not exist (run without it first)")
    with open(path, encoding="utf-8") as f:
      result = json.load(f)
    cells = {r: {int(k): v for k, v in c.items()} for r, c in result["cells"].items()}
    write_markdown(
      args.results,
      result["settings"],
      cells,
      result["finetune"],
      result.get("finetune_selection", {}),
      result["figures"],
      result["commands"],
      result["wall_s"],
      args.figures,
      result.get("argv", ""),
      result.get("commit", "unknown"),
      root,
    )
    print(f"wrote {args.results} from {path}")
    return result
  data_dir = os.path.abspath(args.data_dir or os.path.join(root, "data"))
  t0 = time.time()
  commands: list[str] = []
  # Fold 1 first, then its end-to-end fine-tunes and figures, then the other folds: a run cut
  # short still leaves one complete fold (and a rerun resumes from what is on disk).
  run_cells(s, root, data_dir, rows, s["folds"][:1], commands)
  pixel_references(s, root, data_dir, s["folds"][0])
  finetunes, selection = full_finetunes(s, root, data_dir, rows, commands)
  relevance_wd = (
    finetune_workdir(
      root, "au", "I+N+D", "clef_pa_pi", s["folds"][0], selection["lr"], s["finetune_steps"]
    )
    if "au/clef_pa_pi" in finetunes
    else ""
  )
  figs = figures(s, root, args.figures, rows, commands, relevance_wd)
  cells = run_cells(s, root, data_dir, rows, s["folds"], commands)
  for fold in s["folds"][1:]:
    pixel_references(s, root, data_dir, fold)
  wall = time.time() - t0
  result = {
    "settings": s,
    "cells": {r: {str(k): v for k, v in c.items()} for r, c in cells.items()},
    "finetune": {
      r: {k: v for k, v in res.items() if not isinstance(v, list)} for r, res in finetunes.items()
    },
    "finetune_selection": selection,
    "figures": figs,
    "commands": list(dict.fromkeys(commands)),
    "wall_s": wall,
    "argv": " ".join(
      ["python benchmarks/reproduce.py", *(argv if argv is not None else sys.argv[1:])]
    ),
    "commit": git_commit(),
  }
  with open(os.path.join(root, "results.json"), "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2, default=str)
  write_markdown(
    args.results,
    s,
    cells,
    finetunes,
    selection,
    figs,
    result["commands"],
    wall,
    args.figures,
    result["argv"],
    result["commit"],
    root,
  )
  print(f"wrote {args.results} and {os.path.join(root, 'results.json')} in {wall / 60:.1f} min")
  return result


if __name__ == "__main__":
  main()
