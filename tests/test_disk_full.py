"""A checkpoint that cannot be written (the disk fills up while it is saved), through main.py.

A real write failure, not a mock: the resumed run gets a file-size limit (RLIMIT_FSIZE, with
SIGXFSZ ignored) below the size of a checkpoint's data file, so the kernel refuses the write
(EFBIG) inside orbax/tensorstore's own I/O, as a full disk refuses it with ENOSPC. (By hand, the
same run with the workdir on a 2.5 MB tmpfs says "the disk is full (No space left on
device)".) What must hold: exit code 1, one `error:` line last that names the checkpoint, says
why, that the partial write was removed and which checkpoint is intact; no traceback of ours;
and a rerun with room resumes from the intact checkpoint and ends with one history.
"""

import json
import os
import resource
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One device; the compilation cache of the suite (the limited run only reads what the first run
# wrote: its programs are the same).
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
LIMIT = 256 * 1024  # bytes; a tiny run's checkpoint data files are about 0.5 MB each


def _limit_file_size():
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails (EFBIG), no signal
  resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def _main(workdir, data_dir, *args, limited=False):
  return subprocess.run(
    [
      sys.executable,
      "main.py",
      "--config=configs/finetune_au.py:tiny",
      f"--workdir={workdir}",
      f"--config.data.data_dir={data_dir}",
      *args,
    ],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=600,
    preexec_fn=_limit_file_size if limited else None,
  )


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, tiny_data_dir):
  w = tmp_path / "w"
  r = _main(w, tiny_data_dir, "--config.total_steps=3")
  assert r.returncode == 0, r.stderr[-3000:]
  assert sorted(os.listdir(w / "checkpoints")) == ["3"]

  r = _main(w, tiny_data_dir, "--config.total_steps=6", limited=True)
  assert r.returncode == 1, r.stderr[-3000:]
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: writing checkpoint 6 to {w / 'checkpoints'} failed: "), last
  assert "(its partial write 6.orbax-checkpoint-tmp was removed)" in last, last
  assert last.endswith(
    "checkpoint 3 is intact; free space and rerun the same command to resume from it."
  ), last
  assert "File too large" in last or "No space left" in last, last
  assert "clef_jax/" not in r.stderr  # no traceback through our code
  assert sorted(os.listdir(w / "checkpoints")) == ["3"]

  r = _main(w, tiny_data_dir, "--config.total_steps=6")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Resumed from" in r.stderr and "at step 3" in r.stderr
  steps = [json.loads(line)["step"] for line in open(w / "metrics.jsonl")]
  train_steps = [s for s in steps if s <= 6]
  assert train_steps == sorted(train_steps) and set(train_steps) >= {1, 2, 3, 4, 5, 6}
  assert json.load(open(w / "results.json"))["step"] == 6
