"""The one training loop: pretrain, finetune and linear_probe differ only by config.

Sections, top to bottom: setup (workdir, writers) → mesh → data → model and objective →
optimizer and sharded state → checkpoint restore / pretrained init → jitted step → loop
(log, checkpoint, evaluate, SIGTERM) → final evaluation and results.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from clef_jax import checkpoint as ckpt_lib
from clef_jax import datasets as data_lib
from clef_jax import evaluate
from clef_jax import losses
from clef_jax import models
from clef_jax import objectives
from clef_jax import optim
from clef_jax import pretrained
from clef_jax import sharding
from clef_jax import tokenizer as tokenizer_lib
from clef_jax import writers

TRAIN_MODES = ("pretrain", "finetune", "linear_probe")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs config.mode in workdir; returns the final results dict."""
  if config.mode == "zeroshot":
    return zeroshot(config, workdir)
  if config.mode not in TRAIN_MODES:
    raise ValueError(f"unknown mode {config.mode!r}; known: {TRAIN_MODES + ('zeroshot',)}")
  return train_and_evaluate(config, workdir)


# ------------------------------------------------------------------------------------------
# Model construction, shared with the evaluators.
# ------------------------------------------------------------------------------------------


def resolve_init(config, resuming_from: str | None = None) -> tuple[Any, Any] | None:
  """Loads `config.init` (if any) and fixes config.model to the checkpoint's architecture.

  `resuming_from`: a workdir with checkpoints (and its config.json); then nothing is loaded.

  Compute settings (dtype, remat) and the image size come from the config; the image
  positional embedding is resampled when the sizes differ.
  """
  if not config.init:
    return None
  if resuming_from is not None:
    # The run's own checkpoint will replace the weights: take the architecture it was built
    # with from its config.json instead of reading the (possibly large) init checkpoint again.
    with open(os.path.join(resuming_from, "config.json"), encoding="utf-8") as f:
      saved = json.load(f)["model"]
    with config.unlocked():
      config.model = ml_collections.ConfigDict(
        {**saved, "dtype": config.model.dtype, "remat": config.model.remat}
      )
    return None
  mc, params = pretrained.load(
    config.init,
    image_size=config.model.image_size,
    dtype=config.model.dtype,
    remat=config.model.remat,
  )
  with config.unlocked():
    config.model = mc
  return mc, params


def check_tokenizer(config, tok) -> None:
  if tok.vocab_size > config.model.vocab_size:
    raise ValueError(
      f"tokenizer {config.tokenizer!r} has {tok.vocab_size} tokens but the text tower has "
      f"vocab_size={config.model.vocab_size}; with a CLIP/FaRL init pass "
      "--config.tokenizer=<folder with that model's vocab.json + merges.txt>"
    )
  if tok.context_length != config.model.context_length:
    raise ValueError(
      f"tokenizer context {tok.context_length} != model context_length "
      f"{config.model.context_length}"
    )


def build_objective(config, model, tok, data: data_lib.Data):
  """(objective, batch keys, data) for config.mode; data may be restricted (label subsets)."""
  if config.mode == "pretrain":
    keys = ("image", "activity_id", "subject_id", "index", "mask")
    return objectives.pretrain_objective(config, model, tok, data.activity_texts), keys, data
  fc = config.finetune
  rng = np.random.default_rng(config.seed)
  table = data.train_table
  keep = np.ones(len(data.train), bool)
  if fc.task == "fer":
    classes = list(fc.classes) or list(data.classes)
    unknown = [c for c in classes if c not in data.classes]
    if unknown:
      raise ValueError(
        f"config.finetune.classes {unknown} are not classes of {data.name} ({data.classes})"
      )
    keep &= np.isin(table["expression"], [evaluate.canonical_index(c) for c in classes])
    labels, keys = classes, ("image", "expression", "mask")
  elif fc.task == "au":
    if not data.aus:
      raise ValueError(f"dataset {data.name}/{data.builder_config} has no AU labels")
    labels, keys = data.aus, ("image", "au", "mask")
  else:
    raise ValueError(f"config.finetune.task={fc.task!r}: expected 'fer' or 'au'")
  if not 0 < config.data.label_fraction <= 1:
    raise ValueError(f"config.data.label_fraction={config.data.label_fraction}: expected (0, 1]")
  idx = np.flatnonzero(keep)
  if config.data.label_fraction < 1:
    n = max(1, int(round(len(idx) * config.data.label_fraction)))
    idx = np.sort(rng.choice(idx, n, replace=False))
  if len(idx) < len(data.train):
    logging.info("fine-tuning on %d of %d training examples", len(idx), len(data.train))
    data = data_lib.restrict(data, idx)
  pos_weight = None
  if fc.task == "au":
    pos_weight = losses.au_pos_weight(data.train_table["au"])
  obj = objectives.finetune_objective(config, model, tok, labels, pos_weight=pos_weight)
  return obj, keys, data


def label_lookup(config, data) -> jnp.ndarray | None:
  """FER: canonical expression index -> position among the trained classes (-1 if absent)."""
  if config.mode == "pretrain" or config.finetune.task != "fer":
    return None
  classes = list(config.finetune.classes) or list(data.classes)
  lut = np.full((len(evaluate.canonical_names()),), -1, np.int32)
  for i, c in enumerate(classes):
    lut[evaluate.canonical_index(c)] = i
  return lut


def with_labels(batch, lut):
  if lut is None or "expression" not in batch:
    return batch
  e = batch["expression"]
  return {**batch, "label": jnp.where(e >= 0, jnp.asarray(lut)[jnp.clip(e, 0)], -1)}


# ------------------------------------------------------------------------------------------
# The step.
# ------------------------------------------------------------------------------------------


def make_train_step(config, objective, tx, schedule, lut):
  base_rng = jax.random.key(config.seed)
  accum = int(config.accum_steps)
  max_scale = config.model.logit_scale_max

  def train_step(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)
    batch = with_labels(batch, lut)
    (loss, aux), grads = objectives.grad_fn(objective, state["params"], batch, rng, accum)
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    params["logit_scale"] = jnp.minimum(params["logit_scale"], max_scale)  # CLIP's clamp
    metrics = {
      "loss": loss,
      **aux,
      "lr": schedule(step),
      "l2_grads": optax.tree.norm(grads),
      "l2_updates": optax.tree.norm(updates),
      "l2_params": optax.tree.norm(params),
    }
    return {"params": params, "opt": opt, "step": step + 1}, metrics

  return train_step


class _Preemption:
  """Turns SIGTERM into a flag the loop checks (save, then exit cleanly)."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    del frame
    logging.warning("Signal %d received: saving a checkpoint and stopping.", signum)
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per config in workdir (resuming if it holds checkpoints); returns final results."""
  # ---------------------------------------------------------------- setup
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  resuming = os.path.isfile(os.path.join(workdir, "config.json")) and ckpt_lib.has_checkpoint(
    os.path.join(workdir, "checkpoints")
  )
  init_loaded = resolve_init(config, workdir if resuming else None)
  if config.optim.total_steps < 0:
    with config.unlocked():
      config.optim.total_steps = config.total_steps
  if is_main:
    writers.write_config(workdir, config)
  writer = writers.MetricWriter(workdir, is_main)
  logging.info(
    "workdir %s; process %d/%d; %d devices",
    workdir,
    jax.process_index(),
    jax.process_count(),
    jax.device_count(),
  )

  # ---------------------------------------------------------------- mesh
  mesh = sharding.make_mesh(config.mesh)
  repl = sharding.replicated(mesh)

  # ---------------------------------------------------------------- data, model, objective
  tok = tokenizer_lib.get(config.tokenizer, context_length=config.model.context_length)
  check_tokenizer(config, tok)
  data = data_lib.setup(config)
  model = models.build(config.model)
  objective, keys, data = build_objective(config, model, tok, data)
  lut = label_lookup(config, data)

  # ---------------------------------------------------------------- optimizer, state
  rng = jax.random.key(config.seed)

  def init_params(rng):
    r_model, r_heads = jax.random.split(rng)
    size = config.model.image_size
    params = model.init(
      r_model,
      jnp.zeros((1, size, size, 3), jnp.float32),
      jnp.zeros((1, config.model.context_length), jnp.int32),
    )["params"]
    return {**params, "heads": objective.init_heads(r_heads)}

  abstract_params = jax.eval_shape(init_params, rng)
  tx, schedule = optim.make_optimizer(config.optim, abstract_params)

  def init_state(params):
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  abstract_state = jax.eval_shape(lambda r: init_state(init_params(r)), rng)
  state_sh = sharding.infer_sharding(abstract_state, config.sharding_rules, mesh)
  param_sh = state_sh["params"]

  # ---------------------------------------------------------------- restore or init
  train_iter = data_lib.train_iterator(config, data, keys)
  ckpt = ckpt_lib.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    every_steps=config.checkpoint_every_steps,
    keep=config.keep_checkpoints,
  )
  target = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, state_sh
  )
  restored = ckpt.restore(target, train_iter)
  with jax.set_mesh(mesh):
    if restored is not None:
      state, first = restored
      logging.info("Resumed from %s at step %d.", ckpt.directory, first)
    else:
      first = 0
      params = jax.jit(init_params, out_shardings=param_sh)(rng)
      if init_loaded is not None:
        params_host = jax.device_get(params)
        _, loaded = init_loaded
        merged = pretrained.merge_params(
          {**loaded, "heads": params_host["heads"]}, params_host, config.dont_load
        )
        merged.setdefault("heads", params_host["heads"])  # merge_params drops empty subtrees
        params = sharding.reshard(merged, param_sh)
        logging.info("Initialised from %s (kept init for %s).", config.init, list(config.dont_load))
      state = jax.jit(init_state, out_shardings=state_sh)(params)
  writers.log_parameter_overview(state["params"])

  step_fn = jax.jit(
    make_train_step(config, objective, tx, schedule, lut),
    donate_argnums=(0,),
    out_shardings=(state_sh, repl),
  )
  evaluator = evaluate.Evaluators(config, model, objective, data, mesh, tok, workdir)

  # ---------------------------------------------------------------- loop
  total = int(config.total_steps)
  images_per_step = config.batch_size * (2 if config.data.two_views else 1)
  preempt = _Preemption()
  last_good = first
  t_log, s_log = time.time(), first
  metrics = None
  try:
    with jax.set_mesh(mesh):
      for step in range(first + 1, total + 1):
        batch = sharding.global_batch(
          {k: v for k, v in next(train_iter).items() if k in data_lib.NUMERIC_BATCH_KEYS}, mesh
        )
        if config.transfer_guard:
          with jax.transfer_guard("disallow"):
            state, metrics = step_fn(state, batch)
        else:
          state, metrics = step_fn(state, batch)
        log_now = step % config.log_every_steps == 0 or step == total or step == first + 1
        save_now = ckpt.should_save(step) or step == total or preempt.requested
        if log_now or save_now:
          m = jax.device_get(metrics)
          if not all(np.isfinite(v).all() for v in jax.tree.leaves(m)):
            bad = sorted(k for k, v in m.items() if not np.isfinite(v).all())
            raise FloatingPointError(
              f"non-finite {bad} at step {step}; stopping. The last good checkpoint is step "
              f"{last_good} in {ckpt.directory} (a rerun resumes from it)."
            )
          if log_now:
            now = time.time()
            sps = (step - s_log) / max(now - t_log, 1e-9)
            t_log, s_log = now, step
            m = {k: float(np.asarray(v)) for k, v in m.items()}
            m.update({"steps_per_sec": sps, "images_per_sec": sps * images_per_step})
            writer.write_scalars(step, m)
            eta = (total - step) / max(sps, 1e-9)
            logging.info(
              "step %d/%d loss %.4f  %.2f steps/s  %.1f img/s  ETA %s",
              step,
              total,
              m["loss"],
              sps,
              sps * images_per_step,
              _fmt_time(eta),
            )
          if save_now and ckpt.save(
            step, state, train_iter, force=(step == total or preempt.requested)
          ):
            last_good = step
        if config.eval_every_steps and step % config.eval_every_steps == 0 and step < total:
          writer.write_scalars(step, evaluator.run(state["params"]))
        if preempt.requested:
          logging.warning("Stopped at step %d after SIGTERM; the checkpoint is saved.", step)
          ckpt.close()
          writer.close()
          return {"preempted_at_step": step}
  finally:
    preempt.restore()
  ckpt.close()

  # ---------------------------------------------------------------- final evaluation
  results = evaluator.run(state["params"]) if config.evals else {}
  results = {"step": total, **results}
  if is_main:
    writers.write_results(workdir, results, config)
  writer.write_scalars(total, {k: v for k, v in results.items() if isinstance(v, (int, float))})
  writer.close()
  return results


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}"


# ------------------------------------------------------------------------------------------
# Zero-shot: no training, classify by prompts.
# ------------------------------------------------------------------------------------------

ZEROSHOT_PROTOCOLS = ("prompts", "unseen_expressions", "au_to_fer")


def zeroshot(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """mode=zeroshot: expression recognition from prompts with the weights of `config.init`.

  protocol 'prompts' (a pretrained checkpoint) and 'au_to_fer' (an AU-fine-tuned one) classify
  every test image over all the dataset's classes; 'unseen_expressions' (a checkpoint
  fine-tuned on `zeroshot.seen`) reports accuracy on test images of `zeroshot.unseen`, predicting
  over all classes and over the unseen ones only.
  """
  zc = config.zeroshot
  if zc.protocol not in ZEROSHOT_PROTOCOLS:
    raise ValueError(
      f"config.zeroshot.protocol={zc.protocol!r}: expected one of {ZEROSHOT_PROTOCOLS}"
    )
  if not config.init:
    raise ValueError(
      "mode=zeroshot classifies with trained weights: pass "
      "--config.init=clef:WORKDIR (or hf:DIR / openai:FILE)"
    )
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  _, loaded = resolve_init(config)
  if jax.process_index() == 0:
    writers.write_config(workdir, config)
  mesh = sharding.make_mesh(config.mesh)
  tok = tokenizer_lib.get(config.tokenizer, context_length=config.model.context_length)
  check_tokenizer(config, tok)
  data = data_lib.setup(config)
  model = models.build(config.model)
  objective = objectives.embedding_objective(config, model)
  loaded = {k: v for k, v in loaded.items() if k in objectives.MODEL_KEYS}
  params = sharding.reshard(loaded, sharding.infer_sharding(loaded, config.sharding_rules, mesh))
  classes = list(data.classes)
  if not classes:
    raise ValueError(f"dataset {data.name}/{data.builder_config} has no expression classes")
  zcls = evaluate.classify_by_text(objective, params, tok, classes, zc.texts, mesh)
  e = evaluate.embed_source(objective, params, config, data, data.test, mesh, ("expression",))
  names = evaluate.canonical_names()
  expr = np.array([names[i] if i >= 0 else "" for i in e["expression"]])
  results: dict[str, Any] = {"zeroshot/protocol": zc.protocol, "zeroshot/texts": zc.texts}
  if zc.protocol == "unseen_expressions":
    bad = [c for c in list(zc.seen) + list(zc.unseen) if c not in classes]
    if bad:
      raise ValueError(
        f"config.zeroshot seen/unseen {bad} are not classes of {data.name} ({classes})"
      )
    results["zeroshot/split"] = f"seen={list(zc.seen)} unseen={list(zc.unseen)}"
    logging.info("zero-shot split: seen %s, unseen %s", list(zc.seen), list(zc.unseen))
    keep = np.isin(expr, list(zc.unseen))
    if not keep.any():
      raise ValueError(f"no test image of the unseen classes {list(zc.unseen)} in {data.name}")
    z, y = e["z"][keep], expr[keep]
    pred_all = np.asarray(classes)[(z @ zcls.T).argmax(-1)]
    uidx = [classes.index(c) for c in zc.unseen]
    pred_unseen = np.asarray(classes)[np.asarray(uidx)[(z @ zcls[uidx].T).argmax(-1)]]
    results["zeroshot/unseen_accuracy_all_classes"] = float(np.mean(pred_all == y))
    results["zeroshot/unseen_accuracy_unseen_only"] = float(np.mean(pred_unseen == y))
    results["zeroshot/num_examples"] = int(keep.sum())
    results["zeroshot/chance_unseen_only"] = 1.0 / len(uidx)
  else:
    keep = np.isin(expr, classes)
    label = np.array([classes.index(c) for c in expr[keep]], np.int64)
    pred = (e["z"][keep] @ zcls.T).argmax(-1)
    results.update(evaluate.fer_results("zeroshot/", pred, label, classes, workdir))
    results["zeroshot/chance"] = 1.0 / len(classes)
  logging.info(
    "zero-shot results: %s", {k: v for k, v in results.items() if not isinstance(v, list)}
  )
  if jax.process_index() == 0:
    writers.write_results(workdir, results, config)
  return results
