"""The one training loop, built on `clef_jax.trainer`: every mode is a run of it.

pretrain, finetune and linear_probe differ only by config (objective, frozen params, data);
zeroshot is a run with no training steps that evaluates `config.init` with the config's
zero-shot evaluators. Sections, top to bottom: setup (workdir, init, writers) → mesh, data,
model, objective → state (restore or init) → evaluators → loop (log, checkpoint, evaluate,
SIGTERM) → final evaluation, results.json and curves.png.
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
import ml_collections
import numpy as np
from flax import traverse_util

from input_pipeline import paths

from clef_jax import MODES
from clef_jax import checkpoint as ckpt_lib
from clef_jax import datasets as data_lib
from clef_jax import evaluators
from clef_jax import heads as heads_lib
from clef_jax import models
from clef_jax import objectives
from clef_jax import optim
from clef_jax import pretrained
from clef_jax import sharding
from clef_jax import tokenizer as tokenizer_lib
from clef_jax import trainer
from clef_jax import writers


class ConfigError(ValueError):
  """A config value `run` refuses before it writes anything (main.py: one line, exit 2)."""


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses a config `run` cannot finish, before any file is written, naming the key as the
  user types it (`config.total_steps`): mode, step counts, batch size vs processes, mesh
  and accumulation, the optimizer and the sampler. Later checks (data, init) need the data."""
  if config.mode not in MODES:
    raise ConfigError(f"config.mode={config.mode!r}: expected one of {MODES}")
  if config.model.dtype not in models.precision.DTYPES:
    raise ConfigError(
      f"config.model.dtype={config.model.dtype!r}: expected one of {models.precision.DTYPES}"
    )
  for key, low in (("total_steps", 0), ("batch_size", 1), ("accum_steps", 1)):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ConfigError(f"config.{key}={value!r}: must be an integer >= {low}")
  for key, low in (("log_every_steps", 1), ("checkpoint_every_steps", 0), ("eval_every_steps", 0)):
    if config[key] < low:
      raise ConfigError(f"config.{key}={config[key]!r}: must be >= {low}")
  if config.mode != "zeroshot":
    bs, processes = config.batch_size, jax.process_count()
    try:
      mesh = sharding.make_mesh(config.mesh)
      shards = math.prod(mesh.shape[a] for a in sharding.batch_axes(mesh))
    except ValueError as e:
      raise ConfigError(f"config.mesh: {e}") from None
    if bs % processes or bs % shards:
      raise ConfigError(
        f"config.batch_size={bs} must be a multiple of the {processes} processes and of the "
        f"{shards} batch shards of config.mesh={config.mesh!r} over {jax.device_count()} devices"
      )
    images = bs * (2 if config.data.two_views else 1)
    if images % config.accum_steps:
      raise ConfigError(
        f"config.accum_steps={config.accum_steps} does not divide the {images} images per step "
        f"(config.batch_size={bs}{', two views' if config.data.two_views else ''})"
      )
    sc = config.data.sampler
    per_batch = sc.activities_per_batch * sc.subjects_per_activity * sc.frames_per_group
    if sc.enabled and per_batch != bs:
      raise ConfigError(
        f"config.data.sampler gives batches of {per_batch} (activities_per_batch x "
        f"subjects_per_activity x frames_per_group) but config.batch_size={bs}"
      )
    oc = config.optim
    if oc.total_steps < 0 and config.total_steps and oc.warmup_steps >= config.total_steps:
      raise ConfigError(
        f"config.optim.warmup_steps={oc.warmup_steps} must be smaller than "
        f"config.total_steps={config.total_steps} (the schedule's length while "
        "config.optim.total_steps=-1)"
      )
    steps = config.total_steps if oc.total_steps < 0 else oc.total_steps
    try:
      optim._config_dict({**oc.to_dict(), "total_steps": steps})  # pylint: disable=protected-access
    except ValueError as e:
      raise ConfigError(str(e)) from None
  if config.mode in ("finetune", "linear_probe") and not 0 < config.data.label_fraction <= 1:
    raise ConfigError(f"config.data.label_fraction={config.data.label_fraction}: expected (0, 1]")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs config.mode in workdir (resuming if it holds checkpoints); returns the final results.

  The config is checked before the workdir is made (`check_config`); a run that made its
  workdir and fails before its first logged step or checkpoint removes it again (a workdir that
  was there before the run is never removed)."""
  check_config(config)
  requested = config.model.dtype
  with config.unlocked():
    config.model.dtype = models.precision.resolve(requested)
  logging.info(
    "compute dtype %s%s (params, optimizer state and losses fp32)",
    config.model.dtype,
    f" (model.dtype=auto on {jax.devices()[0].platform})" if requested == "auto" else "",
  )
  workdir = paths.text(workdir)  # a local path made absolute, or a gs:// URL as it is
  made_here = not paths.path(workdir).exists()
  paths.makedirs(workdir, "--workdir")
  # One run per workdir (process 0 holds the lock; the processes of one job share the workdir).
  lock = writers.WorkdirLock(workdir) if jax.process_index() == 0 else None
  try:
    if config.mode == "zeroshot":
      return evaluate_init(config, workdir)
    return train_and_evaluate(config, workdir)
  except Exception:
    # Removed while the lock is held, so no other run can have started in it meanwhile.
    # A run that logged a step keeps its workdir: its metrics are what explain the failure.
    metrics = paths.path(workdir) / "metrics.jsonl"
    if (
      made_here
      and lock is not None
      and not ckpt_lib.has_checkpoint(_join(workdir, "checkpoints"))
      and not (metrics.is_file() and metrics.stat().length > 0)
    ):
      logging.warning("The run failed before its first step: removing %s.", workdir)
      lock.release()  # its file is in the workdir
      lock = None
      paths.rmtree(workdir)
    raise
  finally:
    if lock is not None:
      lock.release()


# ------------------------------------------------------------------------------------------
# Setup shared by training and zero-shot runs.
# ------------------------------------------------------------------------------------------


def _join(workdir: str, name: str) -> str:
  return os.fspath(paths.path(workdir) / name)


def _read_json(path: str) -> Any:
  return json.loads(paths.path(path).read_text(encoding="utf-8"))


def resolve_init(config, resuming_from: str | None = None) -> dict[str, Any] | None:
  """Loads `config.init` (if any) and fixes config.model to the checkpoint's architecture.

  `resuming_from`: a workdir with checkpoints (and its config.json); then nothing is loaded.
  Compute settings (dtype, remat) and the image size come from the config; the image
  positional embedding is resampled when the sizes differ. Returns the loaded params or None.
  """
  if not config.init:
    return None
  if resuming_from is not None:
    # The run's own checkpoint will replace the weights: take the architecture it was built
    # with from its config.json instead of reading the (possibly large) init checkpoint again.
    saved = _read_json(_join(resuming_from, "config.json"))["model"]
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
  return params


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


def _build(config, workdir: str):
  """mesh, tokenizer, data, model, objective, batch keys and label map of the run."""
  mesh = sharding.make_mesh(config.mesh)
  tok = tokenizer_lib.get(config.tokenizer, context_length=config.model.context_length)
  check_tokenizer(config, tok)
  data = data_lib.setup(config)
  if config.mode in ("finetune", "linear_probe"):
    data = data_lib.for_finetune(config, data)
  if config.mode == "foundation":
    data = data_lib.with_caption_tokens(data, tok)
  model = models.build(config.model)
  objective, keys = objectives.build(config, model, tok, data)
  label_map = objectives.label_map(config, data)
  if config.mode in ("finetune", "linear_probe") and jax.process_index() == 0:
    # What the head classifies, for clef_jax.predict and clef_jax.export.
    heads_lib.write_labels(workdir, config.finetune.task, objectives.trained_labels(config, data))
  ctx = evaluators.Context(
    config=config,
    data=data,
    mesh=mesh,
    tok=tok,
    fns=evaluators.make_predict_fns(objective),
    workdir=workdir,
  )
  return mesh, data, objective, keys, label_map, ctx


def _finish(workdir, writer, step, results, config, is_main) -> dict[str, Any]:
  results = {"step": step, **results}
  if is_main:
    writers.write_results(workdir, results, config)
  writer.write_scalars(step, {k: v for k, v in results.items() if isinstance(v, (int, float))})
  writer.close()
  if is_main:
    writers.plot_curves(workdir)
  return results


# ------------------------------------------------------------------------------------------
# Zero-shot: a run with no training steps.
# ------------------------------------------------------------------------------------------


def evaluate_init(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """mode=zeroshot: the config's zero-shot evaluators on the weights of `config.init`."""
  if not config.init:
    raise ValueError(
      "mode=zeroshot classifies with trained weights: pass "
      "--config.init=clef:WORKDIR (or hf:DIR / openai:FILE)"
    )
  workdir = paths.text(workdir)
  paths.makedirs(workdir, "--workdir")
  is_main = jax.process_index() == 0
  loaded = resolve_init(config)
  if is_main:
    writers.write_config(workdir, config)
  writer = writers.MetricWriter(workdir, is_main)
  mesh, _, _, _, _, ctx = _build(config, workdir)
  evs = evaluators.build(config, ctx, zero_shot_only=True)
  if not evs:
    raise ValueError(
      f"mode=zeroshot: config.evals has no zero-shot evaluator (types "
      f"{sorted(t for t, c in evaluators.REGISTRY.items() if c.zero_shot)}); it has "
      f"{sorted((n, e.type) for n, e in config.evals.items())}"
    )
  params = {k: v for k, v in loaded.items() if k in objectives.MODEL_KEYS}
  params = sharding.reshard(params, sharding.infer_sharding(params, config.sharding_rules, mesh))
  results = evaluators.run(evs, params, final=True)
  return _finish(workdir, writer, 0, results, config, is_main)


# ------------------------------------------------------------------------------------------
# Training.
# ------------------------------------------------------------------------------------------


class _Preemption:
  """Turns SIGTERM (preemption) and SIGINT (Ctrl-C) into a flag the loop checks: it saves a
  checkpoint at the current step and the run exits 0 (a rerun resumes)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}

  def _handler(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:  # a second Ctrl-C: stop now
      raise KeyboardInterrupt
    logging.warning(
      "%s received: saving a checkpoint and stopping (Ctrl-C again to stop without saving).",
      signal.Signals(signum).name,
    )
    self.requested = True

  def restore(self):
    for s, previous in self._previous.items():
      signal.signal(s, previous)


# Fields a resumed run may change (speed, logging, evaluation, length); any other difference
# from the workdir's config.json means the checkpoints belong to another run.
_RESUME_MAY_CHANGE = (
  "total_steps",
  "optim.total_steps",
  "log_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval_every_steps",
  "evals",
  "data.worker_count",
  "data.data_dir",
  "model.dtype",
  "model.remat",
  "transfer_guard",
  "mesh",
  "sharding_rules",
  "accum_steps",
  "init",
)


def check_resumable(config, workdir: str) -> None:
  """Refuses (before anything is written) to resume a workdir whose config.json describes
  another run, naming every field that differs."""
  saved = traverse_util.flatten_dict(_read_json(_join(workdir, "config.json")), sep=".")
  now = traverse_util.flatten_dict(
    json.loads(json.dumps(writers.jsonable(config.to_dict()))), sep="."
  )
  if config.init:  # the model comes from the init: compare the run's, not the init's
    saved = {k: v for k, v in saved.items() if not k.startswith("model.")}
    now = {k: v for k, v in now.items() if not k.startswith("model.")}
  allowed = lambda k: any(k == a or k.startswith(a + ".") for a in _RESUME_MAY_CHANGE)
  diff = [
    f"{k}: {saved.get(k, '<absent>')!r} in the workdir, {now.get(k, '<absent>')!r} now"
    for k in sorted(set(saved) | set(now))
    if not allowed(k) and saved.get(k) != now.get(k)
  ]
  if diff:
    raise ValueError(
      f"{workdir} holds checkpoints of a run with another config; resuming it with this one "
      "would mix two runs. Differences:\n  " + "\n  ".join(diff) + "\nUse another --workdir "
      "(or delete this one to start afresh)."
    )


def _check_finite(m: dict[str, Any], step: int, last_good: int, where: str) -> None:
  if not all(np.isfinite(v).all() for v in jax.tree.leaves(m)):
    bad = sorted(k for k, v in m.items() if not np.isfinite(v).all())
    raise FloatingPointError(
      f"non-finite {bad} at step {step}; stopping. The last good checkpoint is step "
      f"{last_good} in {where} (a rerun resumes from it)."
    )


def progress_line(step: int, total: int, m: dict[str, float], sps: float, ips: float) -> str:
  """One console line per log step: step, loss and its terms, speed, ETA."""
  terms = " ".join(f"{k[5:]} {m[k]:.4f}" for k in sorted(m) if k.startswith("loss_"))
  eta = _fmt_time((total - step) / max(sps, 1e-9))
  loss = f"loss {m['loss']:.4f}" + (f" ({terms})" if terms else "")
  if "health/effective_rank" in m:  # stage 1's collapse monitor
    loss += f"  rank {m['health/effective_rank']:.1f}"
    if "health/loss_pi_at_collapse" in m:
      loss += f" (pi at collapse {m['health/loss_pi_at_collapse']:.2f})"
  return f"step {step}/{total}  {loss}  {sps:.2f} steps/s  {ips:.1f} img/s  ETA {eta}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per config in workdir (resuming if it holds checkpoints); returns final results."""
  # ---------------------------------------------------------------- setup
  workdir = paths.text(workdir)
  paths.makedirs(workdir, "--workdir")
  is_main = jax.process_index() == 0
  resuming = paths.path(_join(workdir, "config.json")).is_file() and ckpt_lib.has_checkpoint(
    _join(workdir, "checkpoints")
  )
  if resuming:
    check_resumable(config, workdir)
  loaded = resolve_init(config, workdir if resuming else None)
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

  # ---------------------------------------------------------------- mesh, data, objective
  mesh, data, objective, keys, label_map, ctx = _build(config, workdir)
  spec = trainer.state_spec(config, objective, mesh)

  # ---------------------------------------------------------------- restore or init
  train_iter = data_lib.train_iterator(config, data, keys)
  ckpt = ckpt_lib.Checkpointer(
    _join(workdir, "checkpoints"),
    every_steps=config.checkpoint_every_steps,
    keep=config.keep_checkpoints,
  )
  restored = ckpt.restore(spec.abstract, train_iter)
  with jax.set_mesh(mesh):
    if restored is not None:
      state, first = restored
      logging.info("Resumed from %s at step %d.", ckpt.directory, first)
      if is_main:
        writers.trim_metrics(workdir, first)  # rows of a lost run past the checkpoint
    else:
      first = 0
      state = trainer.init_state(spec, config, loaded)
      if is_main:
        writers.trim_metrics(workdir, 0)  # rows of a run killed before its first checkpoint
  del loaded
  writers.log_parameter_overview(state["params"])
  step_fn = trainer.jit_train_step(config, objective, spec, mesh, label_map)
  evs = evaluators.build(config, ctx)

  # ---------------------------------------------------------------- loop
  total = int(config.total_steps)
  images_per_step = config.batch_size * (2 if config.data.two_views else 1)
  preempt = _Preemption()
  last_good = first
  t_log, s_log = time.time(), first
  try:
    with jax.set_mesh(mesh):
      for step in range(first + 1, total + 1):
        host = next(train_iter)
        batch = sharding.global_batch(
          {k: v for k, v in host.items() if k in data_lib.NUMERIC_BATCH_KEYS}, mesh
        )
        with jax.transfer_guard("disallow" if config.transfer_guard else "allow"):
          state, metrics = step_fn(state, batch)
        log_now = step % config.log_every_steps == 0 or step == total or step == first + 1
        save_now = ckpt.should_save(step) or step == total or preempt.requested
        if log_now or save_now:
          m = jax.device_get(metrics)
          _check_finite(m, step, last_good, ckpt.directory)
          if log_now:
            now = time.time()
            sps = (step - s_log) / max(now - t_log, 1e-9)
            t_log, s_log = now, step
            m = {k: float(np.asarray(v)) for k, v in m.items()}
            m.update({"steps_per_sec": sps, "images_per_sec": sps * images_per_step})
            writer.write_scalars(step, m)
            logging.info("%s", progress_line(step, total, m, sps, sps * images_per_step))
          force = step == total or preempt.requested
          if save_now and ckpt.save(step, state, train_iter, force=force):
            last_good = step
        if step < total:
          res = evaluators.run(evs, state["params"], step=step)
          if res:
            writer.write_scalars(step, res)
            t_log = time.time()  # evaluation time is not training speed
        if preempt.requested:
          if last_good != step:  # the signal came after this step's save decision
            _check_finite(jax.device_get(metrics), step, last_good, ckpt.directory)
            if ckpt.save(step, state, train_iter, force=True):
              last_good = step
          logging.warning(
            "Stopped at step %d after SIGTERM/SIGINT; the checkpoint is saved (rerun to resume).",
            step,
          )
          ckpt.close()
          writer.close()
          return {"preempted_at_step": step}
  finally:
    preempt.restore()
  ckpt.close()

  # ---------------------------------------------------------------- final evaluation
  results = evaluators.run(evs, state["params"], final=True) if evs else {}
  return _finish(workdir, writer, total, results, config, is_main)


def _fmt_time(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}"
