"""Run outputs: config.json, metrics (TensorBoard + metrics.jsonl), results.json, results.md,
curves.png.

Scalars go to TensorBoard event files (clu's SummaryWriter) and `metrics.jsonl`, on process 0
only; the console gets one progress line per log step from the training loop, not the scalars. `metrics.jsonl` holds one JSON object per logged step with at least `step` and
`loss`; evaluation results are written on lines of their own, and after a resume a step may
appear again: `read_metrics` merges the lines of a step, later values superseding earlier ones.

Every file goes through `input_pipeline.paths` (etils.epath), so a workdir may be `gs://…`. There
TensorBoard's events are written to a local staging folder by clu (TensorFlow's own GCS client
cannot be pointed at anything but the real service, see paths) and copied into the workdir through
epath at most every `EVENTS_SYNC_SECONDS` and when the writer closes.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from typing import Any, Mapping

import numpy as np

from input_pipeline import paths

EVENTS_SYNC_SECONDS = 30.0


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
  text = json.dumps(jsonable(config.to_dict()), indent=2, sort_keys=True)
  paths.write_text(paths.path(workdir) / "config.json", text)


class MetricWriter:
  """TensorBoard (clu, asynchronous) plus the metrics.jsonl file; a no-op off process 0.

  On a remote workdir the event files are staged locally and copied in (see the module doc)."""

  def __init__(self, workdir: str, is_main: bool = True):
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)

    _hide_accelerators_from_tf()
    self._workdir = paths.path(workdir)
    self._staging = None
    if is_main and paths.is_remote(workdir):
      self._staging = tempfile.mkdtemp(prefix="clef_jax_events.")
    events_dir = self._staging or os.fspath(self._workdir)
    writers = [metric_writers.SummaryWriter(events_dir)] if is_main else []
    self._writer = metric_writers.AsyncMultiWriter(writers)
    self._jsonl = self._workdir / "metrics.jsonl" if is_main else None
    self._synced = time.monotonic()

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
      paths.append_text(self._jsonl, json.dumps({"step": int(step), **scalars}) + "\n")
    if self._staging and time.monotonic() - self._synced > EVENTS_SYNC_SECONDS:
      self._sync_events()

  def _sync_events(self) -> None:
    """Copies the staged event files into the (remote) workdir, whole (objects are immutable)."""
    self._writer.flush()
    paths.upload_tree(self._staging, self._workdir)
    self._synced = time.monotonic()

  def close(self) -> None:
    self._writer.flush()
    self._writer.close()
    if self._staging:
      self._sync_events()
      shutil.rmtree(self._staging, ignore_errors=True)
      self._staging = None


def trim_metrics(workdir: str, last_step: int) -> int:
  """Drops the metrics.jsonl rows past `last_step` (a run resumed from an older checkpoint:
  the lost steps are trained again), so every consumer sees one history. Returns rows dropped."""
  path = paths.path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return 0
  lines = [l for l in path.read_text(encoding="utf-8").splitlines(keepends=True) if l.strip()]
  keep = []
  for line in lines:
    try:
      if int(json.loads(line)["step"]) <= last_step:
        keep.append(line)
    except (ValueError, KeyError):  # a line cut short by a kill: drop it too
      pass
  if len(keep) < len(lines):
    paths.write_text(path, "".join(keep))
    logging.info("metrics.jsonl: dropped %d rows past step %d", len(lines) - len(keep), last_step)
  return len(lines) - len(keep)


class WorkdirLock:
  """An exclusive lock on `workdir/.lock` held by process 0 of a run for its lifetime.

  Two runs on one workdir would overwrite each other's checkpoints and interleave metrics.jsonl;
  the second one stops with the first one's pid and host. The processes of one multi-process job
  share the workdir by design: only process 0 takes the lock.

  Local workdir: an flock, which dies with its process (even on SIGKILL), so a killed run can be
  resumed at once.

  Remote workdir (`gs://`): object stores have no flock, so the lock is an object. Process 0
  writes `.lock` as JSON {host, pid, time}, rewrites it every `HEARTBEAT_SECONDS` from a daemon
  thread and deletes it on release. A run that finds a lock refuses to start while the holder
  looks alive: on the same host while its pid runs, on another host while its heartbeat is
  younger than `STALE_SECONDS`. A lock left by a killed run is taken over and said so in the log:
  at once on the same host, after `STALE_SECONDS` from another one (a preempted VM's job restarted
  elsewhere waits at most that long, or deletes the object). The check and the write are two
  requests, not one atomic operation: it catches a second run started on a busy workdir, not two
  started in the same second.
  """

  HEARTBEAT_SECONDS = 30.0
  STALE_SECONDS = 120.0

  def __init__(self, workdir: str):
    self.path = os.fspath(paths.path(workdir) / ".lock")
    self._f = None
    self._stop = None
    if paths.is_remote(workdir):
      self._acquire_object(workdir)
      return
    self._f = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._f.seek(0)
      holder = self._f.read().strip() or "another process"
      self._f.close()
      raise self._busy(workdir, holder) from None
    self._f.seek(0)
    self._f.truncate()
    self._f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    self._f.flush()

  @staticmethod
  def _busy(workdir: str, holder: str) -> RuntimeError:
    return RuntimeError(
      f"{workdir} is in use by another run ({holder}); two runs in one workdir would "
      "overwrite each other's checkpoints. Wait for it, stop it, or use another --workdir."
    )

  def _acquire_object(self, workdir: str) -> None:
    lock = paths.path(self.path)
    if lock.exists():
      try:
        held = json.loads(lock.read_text(encoding="utf-8"))
        host, pid, beat = str(held["host"]), int(held["pid"]), float(held["time"])
      except (ValueError, KeyError, TypeError):
        host, pid, beat = "?", -1, 0.0  # unreadable: a write cut short, treated as stale
      age = time.time() - beat
      if host == socket.gethostname() and pid != os.getpid():
        alive = _pid_alive(pid)
      else:
        alive = host != socket.gethostname() and age < self.STALE_SECONDS
      if alive:
        raise self._busy(workdir, f"pid {pid} on {host}, heartbeat {age:.0f} s ago")
      logging.warning(
        "%s: taking over the lock of pid %d on %s (heartbeat %.0f s ago; that run is gone).",
        self.path,
        pid,
        host,
        age,
      )
    self._beat()
    self._stop = threading.Event()
    threading.Thread(target=self._heartbeat, name="workdir-lock", daemon=True).start()

  def _beat(self) -> None:
    held = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    paths.write_text(self.path, json.dumps(held) + "\n")

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.HEARTBEAT_SECONDS):
      try:
        self._beat()
      except Exception as e:  # pylint: disable=broad-except  (a lost heartbeat never stops a run)
        logging.warning("%s: heartbeat not written (%s)", self.path, e)

  def release(self) -> None:
    if self._stop is not None:
      self._stop.set()
      self._stop = None
      try:
        paths.path(self.path).unlink(missing_ok=True)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning(
          "%s: could not remove the lock (%s); the next run takes it over", self.path, e
        )
    if self._f is not None and not self._f.closed:
      fcntl.flock(self._f, fcntl.LOCK_UN)
      self._f.close()


def _pid_alive(pid: int) -> bool:
  if pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's live process
    return True
  return True


def read_metrics(workdir: str) -> dict[int, dict[str, float]]:
  """metrics.jsonl as {step: metrics}: the lines of a step merged, later values winning."""
  out: dict[int, dict[str, float]] = {}
  path = paths.path(workdir) / "metrics.jsonl"
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no such file (the run has logged no step)") from None
  for line in text.splitlines():
    if line.strip():
      m = json.loads(line)
      out.setdefault(int(m["step"]), {}).update(m)
  return out


def plot_curves(workdir: str, out_name: str = "curves.png") -> str | None:
  """Plots the logged losses (`loss` and every `loss_*` term) and the learning rate of
  metrics.jsonl against the step, as `workdir/curves.png`; returns its path (None: no rows)."""
  if not (paths.path(workdir) / "metrics.jsonl").is_file():
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
  ax.set_title(paths.path(workdir).name + ": losses")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if has_lr:
    xs = [s for s in steps if "lr" in rows[s]]
    axes[0, 1].plot(xs, [rows[s]["lr"] for s in xs], color="tab:gray")
    axes[0, 1].set_xlabel("step")
    axes[0, 1].set_title("learning rate")
    axes[0, 1].grid(alpha=0.3)
  fig.tight_layout()
  out = paths.path(workdir) / out_name
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  plt.close(fig)
  out.write_bytes(buf.getvalue())
  return os.fspath(out)


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
  paths.write_text(paths.path(workdir) / "results.json", json.dumps(flat, indent=2, sort_keys=True))
  lines = ["| metric | value |", "|---|---|"]
  for k in sorted(flat):
    v = flat[k]
    if isinstance(v, float):
      lines.append(f"| {k} | {v:.4f} |")
    elif isinstance(v, (int, str)):
      lines.append(f"| {k} | {v} |")
  header = f"# Results ({config.mode})\n\n" if config is not None else "# Results\n\n"
  paths.write_text(paths.path(workdir) / "results.md", header + "\n".join(lines) + "\n")
