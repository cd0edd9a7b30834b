"""Faults a user makes on the command line, through the real CLI (`python main.py ...`).

Each one must be a single line on stderr naming the key as typed (`config.total_steps`) and
the config file, exit code 2, and must leave the filesystem as it was: no workdir where there
was none, and a workdir that was there (a finished run) untouched to the byte and the mtime.
"""

import difflib
import hashlib
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/pretrain.py:tiny"
# One simulated device is enough here and starts faster than conftest's eight.
ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def _main(workdir, *args, timeout=600):
  return subprocess.run(
    [sys.executable, "main.py", f"--config={CONFIG}", f"--workdir={workdir}", *args],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def _error_line(r) -> str:
  """The one `main.py: error:` line of a refused run (and no traceback)."""
  assert r.returncode == 2, r.stderr[-3000:]
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  lines = [line for line in r.stderr.splitlines() if line.startswith("main.py: error:")]
  assert len(lines) == 1, r.stderr[-3000:]
  return lines[0]


def _snapshot(folder) -> dict[str, tuple[int, int, str]]:
  """{relative path: (size, mtime_ns, sha256)} of every file and folder under `folder`."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(folder):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      st = os.stat(path)
      digest = ""
      if os.path.isfile(path):
        with open(path, "rb") as f:
          digest = hashlib.sha256(f.read()).hexdigest()
      out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns, digest)
  return out


# ---------------------------------------------------------------- flag parsing (no JAX start)

TOP_KEYS = (
  "accum_steps, batch_size, checkpoint_every_steps, data, dont_load, eval_every_steps, evals, "
  "fold, init, keep_checkpoints, log_every_steps, mesh, mode, model, optim, pretrain, seed, "
  "sharding_rules, tokenizer, total_steps, transfer_guard"
)
OPTIM_KEYS = (
  "b1, b2, end_lr_ratio, eps, freeze, grad_clip_norm, layer_decay, lr, lr_mults, no_decay, total_steps, "
  "warmup_steps, weight_decay"
)


@pytest.mark.parametrize(
  "arg,expected",
  [
    (
      "--config.foo=1",
      f"--config.foo: {CONFIG} has no key config.foo. Keys of config: {TOP_KEYS}",
    ),
    (
      "--config.batchsize=8",
      f"--config.batchsize: {CONFIG} has no key config.batchsize. Did you mean "
      f"config.batch_size? Keys of config: {TOP_KEYS}",
    ),
    (
      "--config.optim.lrr=1",
      f"--config.optim.lrr: {CONFIG} has no key config.optim.lrr. Did you mean config.optim.lr? "
      f"Keys of config.optim: {OPTIM_KEYS}",
    ),
    (
      "--config.optim.qqq=1",
      f"--config.optim.qqq: {CONFIG} has no key config.optim.qqq. Keys of config.optim: "
      f"{OPTIM_KEYS}",
    ),
    (
      "--config.total_steps.x=1",
      f"--config.total_steps.x: config.total_steps is 6 (type int) in {CONFIG}, not a group of "
      "keys, so it has no 'x'",
    ),
    (
      "--config.total_steps=abc",
      "--config.total_steps=abc: invalid literal for int() with base 10: 'abc'; "
      f"{CONFIG} has config.total_steps=6 (type int)",
    ),
  ],
)
def test_bad_override_is_one_line_exit_2_and_writes_nothing(tmp_path, arg, expected):
  workdir = tmp_path / "w"
  line = _error_line(_main(workdir, arg))
  assert line == f"main.py: error: {expected}"
  assert os.listdir(tmp_path) == []


def test_did_you_mean_is_difflibs_closest_key():
  # The hints above, from difflib itself: 'batchsize' is close to 'batch_size', 'lrr' to 'lr';
  # 'foo' (nearest 'fold', ratio 4/7) and 'qqq' to none.
  assert difflib.get_close_matches("foo", TOP_KEYS.split(", "), n=1) == []
  assert difflib.get_close_matches("batchsize", TOP_KEYS.split(", "), n=1) == ["batch_size"]
  assert difflib.get_close_matches("lrr", OPTIM_KEYS.split(", "), n=1) == ["lr"]
  assert difflib.get_close_matches("qqq", OPTIM_KEYS.split(", "), n=1) == []


def test_unknown_mode_is_one_line_exit_2(tmp_path):
  line = _error_line(_main(tmp_path / "w", "--config.mode=dance"))
  assert "config.mode='dance' is not a mode" in line and CONFIG in line and "zeroshot" in line
  assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- values train.run refuses

BAD_VALUES = [
  ("--config.total_steps=-3", "config.total_steps=-3: must be an integer >= 0"),
  ("--config.batch_size=0", "config.batch_size=0: must be an integer >= 1"),
  ("--config.log_every_steps=0", "config.log_every_steps=0: must be >= 1"),
  (
    "--config.accum_steps=5",
    "config.accum_steps=5 does not divide the 32 images per step (config.batch_size=16, two views)",
  ),
  (
    "--config.batch_size=12",
    "config.data.sampler gives batches of 16 (activities_per_batch x subjects_per_activity x "
    "frames_per_group) but config.batch_size=12",
  ),
  ("--config.optim.lr=-1", "config.optim.lr: must be >= 0, got -1.0"),
  (
    "--config.total_steps=2",  # tiny warms up for 2 steps
    "config.optim.warmup_steps=2 must be smaller than config.total_steps=2",
  ),
  ("--config.model.dtype=fp8", "config.model.dtype='fp8': expected one of"),
]


@pytest.mark.parametrize("arg,expected", BAD_VALUES)
def test_bad_value_is_refused_before_the_workdir_is_made(tmp_path, arg, expected):
  line = _error_line(_main(tmp_path / "w", arg))
  assert line.startswith(f"main.py: error: {expected}") and line.endswith(f"({CONFIG})"), line
  assert "optim.total_steps" not in line or "config.optim.total_steps" in line
  assert os.listdir(tmp_path) == []


def test_late_fault_removes_the_workdir_it_made_and_nothing_else(tmp_path):
  # A fault found only after the workdir was made (the data): the new workdir goes, the data
  # folder and a pre-existing workdir with the user's file stay.
  data = tmp_path / "data"
  data.mkdir()
  late = ("--config.data.name=bp4d", f"--config.data.data_dir={data}")
  r = _main(tmp_path / "w", *late)
  assert r.returncode == 1 and "unknown config 'bp4d' for bp4d" in r.stderr, r.stderr[-3000:]
  assert "failed before its first step: removing" in r.stderr
  assert sorted(os.listdir(tmp_path)) == ["data"] and os.listdir(data) == []

  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me\n")
  r = _main(mine, *late)
  assert r.returncode == 1 and "removing" not in r.stderr, r.stderr[-3000:]
  assert (mine / "notes.txt").read_text() == "keep me\n"


@pytest.mark.slow
def test_failing_rerun_leaves_a_finished_workdir_untouched(tmp_path, tiny_data_dir):
  workdir = tmp_path / "w"
  data = f"--config.data.data_dir={tiny_data_dir}"
  r = _main(workdir, data, "--config.total_steps=3", "--config.evals.au_probe.max_train=32")
  assert r.returncode == 0, r.stderr[-3000:]
  assert (workdir / "results.json").is_file() and (workdir / "checkpoints" / "3").is_dir()
  before = _snapshot(workdir)
  for bad in ("--config.total_steps=-3", "--config.optim.lr=-1", "--config.foo=1"):
    _error_line(_main(workdir, data, bad))
    assert _snapshot(workdir) == before, bad
