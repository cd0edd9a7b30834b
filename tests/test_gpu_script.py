"""benchmarks/gpu.py --dry_run: the GPU check's code path on CPU (tiny model, tiny default job).

What it must print on a GPU is checked here on the CPU: images/s, the step's XLA FLOPs, the
achieved FLOP/s against a peak (measured on a device it does not know), MFU, and the default
job's wall time. benchmarks/gpu.sh installs the requirements plus jax[cuda12] and runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_script_dry_run(tiny_data_dir):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  proc = subprocess.run(
    [sys.executable, "benchmarks/gpu.py", "--dry_run", f"--data_dir={tiny_data_dir}"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "CLEF step: tiny at 32 px, bf16 compute, batch 8 x 2 views" in out
  num = r"([\d.]+(?:e[-+]?\d+)?)"
  ms = float(re.search(num + r" ms/step", out).group(1))
  img_s = float(re.search(num + r" img/s", out).group(1))
  gflop = float(re.search(num + r" GFLOP/step", out).group(1))
  achieved = float(re.search(r"achieved " + num + r" TFLOP/s", out).group(1))
  peak = float(re.search(r"peak " + num + r" TFLOP/s \(measured 4096² bf16 matmul\)", out).group(1))
  mfu = float(re.search(r"MFU " + num + r" %", out).group(1))
  assert gflop > 0 and peak > 0
  # img/s counts both views; achieved = FLOPs per step / seconds per step; MFU = achieved / peak.
  assert img_s == pytest.approx(2 * 8 / (ms / 1e3), rel=0.01)
  assert achieved == pytest.approx(gflop / 1e3 / (ms / 1e3), rel=0.01)
  assert mfu == pytest.approx(100 * achieved / peak, rel=0.01)
  assert re.search(r"default job: main.py --config=configs/pretrain.py:tiny: [\d.]+ s wall", out)
  assert out.count("uptime:") == 2
  assert '"jax[cuda12]' in open(os.path.join(ROOT, "benchmarks", "gpu.sh")).read()
