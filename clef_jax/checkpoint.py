"""Orbax checkpoints of the train state and the grain iterator, for exact resume.

A checkpoint at step s holds two items:
  state  the train state pytree {'params', 'opt', 'step'} (orbax StandardSave, sharded arrays)
  data   the grain iterator's state (grain.checkpoint.CheckpointSave: one JSON per process)
so that a resumed run continues with the same parameters *and* the same next batches.

Policies (orbax 0.12): save every `every_steps` and at preemption sync points
(`PreemptionCheckpointingPolicy`, multi-host); keep the latest `keep` checkpoints. Saves are
asynchronous; `close()` waits for the last one.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from input_pipeline import paths

_policies = ocp.checkpoint_managers
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a checkpoint being written


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (e.g. the disk is full); the message says which one, why,
  and which earlier checkpoint is intact. The partial write has been removed."""


_OS_ERROR_RE = re.compile(r":\s*([^:\[\]]+?)\s*\[os_error_code='(\d+)'\]")


def _reason(e: BaseException) -> str:
  """Why a save failed, in a user's words: the OS error tensorstore reports (a full disk said
  so), else the exception's first line."""
  text = str(e)
  m = _OS_ERROR_RE.search(text)
  if (m and m.group(2) == "28") or (isinstance(e, OSError) and e.errno == 28):
    return "the disk is full (No space left on device)"
  if m:
    return f"{m.group(1)} (errno {m.group(2)})"
  if isinstance(e, OSError) and e.strerror:
    return f"{e.strerror} (errno {e.errno})"
  first = text.splitlines()[0][:300] if text else ""
  return f"{type(e).__name__}: {first}"


class Checkpointer:
  """A thin wrapper of `ocp.CheckpointManager` for our two items."""

  def __init__(self, directory: str, *, every_steps: int, keep: int = 2, async_save: bool = True):
    self.directory = paths.text(directory)  # local: absolute; gs://: as it is
    save_policies = [_policies.PreemptionCheckpointingPolicy()]
    if every_steps > 0:
      save_policies.insert(0, _policies.FixedIntervalPolicy(every_steps))
    options = ocp.CheckpointManagerOptions(
      save_decision_policy=_policies.AnySavePolicy(save_policies),
      preservation_policy=_policies.LatestN(max(1, keep)),
      enable_async_checkpointing=async_save,
      create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._writing: int | None = None  # the step of the save that may still be in flight

  def all_steps(self) -> list[int]:
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  def save(
    self, step: int, state: Any, data_iterator: Any | None = None, *, force: bool = False
  ) -> bool:
    """Saves (if the policies say so, or `force`); call on every process."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      # A failure of the previous (asynchronous) save surfaces here, or in close().
      saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many kinds)
      raise self._write_failed(e, self._writing or step) from None
    if saved:
      self._writing = step
    return saved

  def restore(
    self, abstract_state: Any, data_iterator: Any | None = None
  ) -> tuple[Any, int] | None:
    """Restores the newest readable checkpoint into `abstract_state`'s shapes and shardings.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with `.sharding`. If the newest
    checkpoint cannot be read (a partial write, a corrupt file), the error is logged and the
    one before it is tried. Returns (state, step), or None when there is no checkpoint.
    """
    steps = self.all_steps()
    for step in reversed(steps):
      try:
        return self._restore_step(step, abstract_state, data_iterator), step
      except Exception as e:  # pylint: disable=broad-except
        logging.error(
          "Checkpoint %s/%d is unreadable (%s: %s); trying the previous one.",
          self.directory,
          step,
          type(e).__name__,
          e,
        )
    if steps:
      raise RuntimeError(f"no readable checkpoint in {self.directory} (steps {steps})")
    return None

  def _restore_step(self, step: int, abstract_state: Any, data_iterator: Any | None) -> Any:
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    has_data = (paths.path(self.directory) / str(step) / "data").is_dir()
    if data_iterator is not None and has_data:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    elif data_iterator is not None:
      logging.warning("Checkpoint %d has no data-iterator state; the data stream restarts.", step)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"]

  def close(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_failed(e, self._writing) from None
    self._manager.close()

  def _write_failed(self, e: BaseException, step: int | None) -> CheckpointWriteError:
    """The error to raise when writing checkpoint `step` failed: removes the partial write
    (freeing its space) and names the newest intact checkpoint."""
    names = _listdir(self.directory)
    partial = sorted(n for n in names if n.endswith(_TMP_SUFFIX))
    for name in partial:
      try:
        paths.rmtree(paths.path(self.directory) / name)
      except Exception as rm_error:  # pylint: disable=broad-except  (the report matters more)
        logging.warning("could not remove %s/%s: %s", self.directory, name, rm_error)
    intact = [int(n) for n in names if n.isdigit()]
    what = f"checkpoint {step}" if step is not None else "a checkpoint"
    why = _reason(e)
    kept = (
      f"checkpoint {max(intact)} is intact; free space and rerun the same command to resume from it"
      if intact
      else "no earlier checkpoint exists; free space and rerun to start again"
    )
    removed = f" (its partial write {', '.join(partial)} was removed)" if partial else ""
    return CheckpointWriteError(
      f"writing {what} to {self.directory} failed: {why}{removed}; {kept}."
    )


def _listdir(directory: str) -> list[str]:
  """The entry names of `directory` ([] when it does not exist), local or gs://."""
  d = paths.path(directory)
  return [p.name for p in d.iterdir()] if d.is_dir() else []


# On object stores orbax writes a step in place and marks it finished with this object last
# (there is no rename); locally it renames `<step>.orbax-checkpoint-tmp` to `<step>`.
_COMMIT_FILE = "commit_success.txt"


def has_checkpoint(directory: str) -> bool:
  """Whether `directory` holds at least one finished checkpoint (orbax step folder)."""
  d = paths.path(directory)
  remote = paths.is_remote(directory)
  return any(
    name.isdigit() and ((d / name / _COMMIT_FILE).exists() if remote else (d / name).is_dir())
    for name in _listdir(directory)
  )


def load_params(workdir: str, step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a finished run for `pretrained.load('clef:DIR')`: (config dict, params as numpy).

  The params are read onto the host as numpy arrays whatever mesh they were saved from.
  """
  config, params, _ = load_run_state(workdir, step)
  return config, params


def load_run_state(
  workdir: str, step: int | None = None
) -> tuple[dict[str, Any], dict[str, Any], int]:
  """`load_params` plus the step it read (the latest finished one unless `step` is given)."""
  config_path = paths.path(workdir) / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path}: not a clef-jax workdir (config.json missing)")
  config = json.loads(config_path.read_text(encoding="utf-8"))
  ckpt_dir = os.fspath(paths.path(workdir) / "checkpoints")
  if not paths.path(ckpt_dir).is_dir():
    raise FileNotFoundError(f"{ckpt_dir}: no checkpoints in this workdir")
  with ocp.CheckpointManager(ckpt_dir) as manager:
    steps = sorted(manager.all_steps())
  if not steps:
    raise FileNotFoundError(f"{ckpt_dir}: no finished checkpoint")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"{ckpt_dir}: no checkpoint at step {step}; have {steps}")
  # Restore onto one host CPU device whatever the mesh/process count it was saved from.
  path = os.fspath(paths.path(ckpt_dir) / str(step) / "state")
  host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  with ocp.StandardCheckpointer() as ckptr:
    metadata = ckptr.metadata(path).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host), metadata)
    state = ckptr.restore(path, target)
  return config, jax.tree.map(np.asarray, jax.device_get(state["params"])), step
