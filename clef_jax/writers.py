"""Run outputs: config.json, metrics (TensorBoard + metrics.jsonl), results.json, results.md,
curves.png.

Scalars go to TensorBoard event files (clu's SummaryWriter) and `metrics.jsonl`, on process 0
only; the console gets one progress line per log step from the training loop, not the scalars. `metrics.jsonl` holds one JSON object per logged step with at least `step` and
`loss`; evaluation results are written on lines of their own, and after a resume a step may
appear again: `read_metrics` merges the lines of a step, later values superseding earlier ones.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from typing import Any, Mapping

import numpy as np


def jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x


def write_config(workdir: str, config) -> None:
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(jsonable(config.to_dict()), f, indent=2, sort_keys=True)


class MetricWriter:
  """TensorBoard (clu, asynchronous) plus the metrics.jsonl file; a no-op off process 0."""

  def __init__(self, workdir: str, is_main: bool = True):
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)

    _hide_accelerators_from_tf()
    writers = [metric_writers.SummaryWriter(workdir)] if is_main else []
    self._writer = metric_writers.AsyncMultiWriter(writers)
    self._jsonl = os.path.join(workdir, "metrics.jsonl") if is_main else None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    scalars = {
      k: float(np.asarray(v))
      for k, v in scalars.items()
      if np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.number)
    }
    if not scalars:
      return
    self._writer.write_scalars(int(step), scalars)
    if self._jsonl:
      with open(self._jsonl, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": int(step), **scalars}) + "\n")

  def close(self) -> None:
    self._writer.flush()
    self._writer.close()


def trim_metrics(workdir: str, last_step: int) -> int:
  """Drops the metrics.jsonl rows past `last_step` (a run resumed from an older checkpoint:
  the lost steps are trained again), so every consumer sees one history. Returns rows dropped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return 0
  with open(path, encoding="utf-8") as f:
    lines = [l for l in f if l.strip()]
  keep = []
  for line in lines:
    try:
      if int(json.loads(line)["step"]) <= last_step:
        keep.append(line)
    except (ValueError, KeyError):  # a line cut short by a kill: drop it too
      pass
  if len(keep) < len(lines):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(keep)
    os.replace(tmp, path)
    logging.info("metrics.jsonl: dropped %d rows past step %d", len(lines) - len(keep), last_step)
  return len(lines) - len(keep)


class WorkdirLock:
  """An exclusive lock on `workdir/.lock` held by process 0 of a run for its lifetime.

  Two runs on one workdir would overwrite each other's checkpoints and interleave metrics.jsonl;
  the second one stops with the first one's pid and host. The lock dies with its process (even
  on SIGKILL), so a killed run can be resumed at once. The processes of one multi-process job
  share the workdir by design: only process 0 takes the lock.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._f = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._f.seek(0)
      holder = self._f.read().strip() or "another process"
      self._f.close()
      raise RuntimeError(
        f"{workdir} is in use by another run ({holder}); two runs in one workdir would "
        "overwrite each other's checkpoints. Wait for it, stop it, or use another --workdir."
      ) from None
    self._f.seek(0)
    self._f.truncate()
    self._f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    self._f.flush()

  def release(self) -> None:
    if not self._f.closed:
      fcntl.flock(self._f, fcntl.LOCK_UN)
      self._f.close()


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """metrics.jsonl as {step: metrics}: the lines of a step merged, later values winning."""
  out: dict[int, dict[str, float]] = {}
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        m = json.loads(line)
        out.setdefault(int(m["step"]), {}).update(m)
  return out


def plot_curves(workdir: str, out_name: str = "curves.png") -> str | None:
  """Plots the logged losses (`loss` and every `loss_*` term) and the learning rate of
  metrics.jsonl against the step, as `workdir/curves.png`; returns its path (None: no rows)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  rows = read_metrics(workdir)
  steps = [s for s in sorted(rows) if "loss" in rows[s]]
  if not steps:
    return None
  keys = sorted({k for s in steps for k in rows[s] if k == "loss" or k.startswith("loss_")})
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  has_lr = any("lr" in rows[s] for s in steps)
  fig, axes = plt.subplots(1, 2 if has_lr else 1, figsize=(11 if has_lr else 6, 3.6), squeeze=False)
  ax = axes[0, 0]
  for k in keys:
    xs = [s for s in steps if k in rows[s]]
    ax.plot(xs, [rows[s][k] for s in xs], label=k, lw=1.4 if k == "loss" else 1.0)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(os.path.basename(os.path.normpath(workdir)) + ": losses")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if has_lr:
    xs = [s for s in steps if "lr" in rows[s]]
    axes[0, 1].plot(xs, [rows[s]["lr"] for s in xs], color="tab:gray")
    axes[0, 1].set_xlabel("step")
    axes[0, 1].set_title("learning rate")
    axes[0, 1].grid(alpha=0.3)
  fig.tight_layout()
  out = os.path.join(workdir, out_name)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def _hide_accelerators_from_tf() -> None:
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except Exception:  # pylint: disable=broad-except  (already initialised, or no such type)
    pass


def log_parameter_overview(params) -> None:
  from clu import parameter_overview  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  shapes = jax.tree.map(lambda x: np.zeros((), np.float32) if x.ndim == 0 else x, params)
  try:
    parameter_overview.log_parameter_overview(shapes, include_stats=False)
  except Exception as e:  # pylint: disable=broad-except  (logging must never stop training)
    logging.warning("parameter overview failed: %s", e)


def write_results(workdir: str, results: Mapping[str, Any], config=None) -> None:
  """results.json (flat, keys named by metric) and a readable results.md table."""
  flat = {k: v for k, v in jsonable(results).items()}
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump(flat, f, indent=2, sort_keys=True)
  lines = ["| metric | value |", "|---|---|"]
  for k in sorted(flat):
    v = flat[k]
    if isinstance(v, float):
      lines.append(f"| {k} | {v:.4f} |")
    elif isinstance(v, (int, str)):
      lines.append(f"| {k} | {v} |")
  header = f"# Results ({config.mode})\n\n" if config is not None else "# Results\n\n"
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(header + "\n".join(lines) + "\n")
