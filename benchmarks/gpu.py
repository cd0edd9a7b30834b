r"""The GPU (or TPU) check: the CLEF step of ViT-B/16 at 224 px in bf16, its MFU, and the default job.

  bash benchmarks/gpu.sh                       # on a CUDA machine: installs jax[cuda12], runs this
  python benchmarks/gpu.py                     # B/16 224 px, batch 256 x 2 views, 20 timed steps
  python benchmarks/gpu.py --batch_size=128 --steps=50 --skip_default_job
  python benchmarks/gpu.py --dry_run           # the same code on CPU in a minute: tiny model, tiny job

Part 1, the step: exactly the trainer's step (`clef_jax.trainer.jit_train_step`, donated state)
for `configs/pretrain.py:variant=B/16,init=none` at 224 px, `model.dtype=bfloat16` (fp32 params,
optimizer state and losses): CLEF's L_II' over two views with activity positives plus the image
<-> activity-text contrast (8 BP4D activity texts), on a fixed device batch of random images.
It prints images/s (two views counted: images through the image tower), the step's model FLOPs
from XLA's `cost_analysis()` of the compiled step, the achieved FLOP/s, and MFU = achieved /
peak, where the peak is the device's dense bf16 figure (`PEAK_BF16_TFLOPS` by device kind, or
`--peak_tflops`); a device it does not know, and the CPU of `--dry_run`, are measured instead
(a 4096² bf16 matmul, said so in the output).

Part 2, the default job: `python main.py --config=configs/pretrain.py` in a fresh workdir and
data dir (SynthFace generated on first use), timed end to end, as the README's wall time.
`--dry_run` runs `configs/pretrain.py:tiny` instead.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense bf16 peak (TFLOP/s, no sparsity) by `device_kind` substring, from the vendors' sheets.
PEAK_BF16_TFLOPS = {
  "H200": 989.0,
  "H100 PCIe": 756.0,
  "H100": 989.0,  # SXM
  "A100": 312.0,
  "L40S": 362.0,
  "L4": 121.0,
  "A10G": 125.0,
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,
  "TPU v5e": 197.0,
  "TPU v5p": 459.0,
  "TPU v5": 459.0,
  "TPU v6 lite": 918.0,
  "TPU v6e": 918.0,
}


def peak_for(kind: str) -> float | None:
  for key, value in PEAK_BF16_TFLOPS.items():  # the more specific keys come first
    if key.lower() in kind.lower():
      return value
  return None


def measured_peak(jax, jnp, n: int = 4096, reps: int = 10) -> float:
  """TFLOP/s of an n² bf16 x bf16 -> fp32 matmul on the default device."""
  a = jnp.ones((n, n), jnp.bfloat16)
  f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    out = f(a, a)
  out.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def clef_step(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from benchmarks import train_throughput as tt  # pylint: disable=g-import-not-at-top
  from clef_jax import models  # pylint: disable=g-import-not-at-top
  from clef_jax import objectives  # pylint: disable=g-import-not-at-top
  from clef_jax import prompts  # pylint: disable=g-import-not-at-top
  from clef_jax import sharding  # pylint: disable=g-import-not-at-top
  from clef_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from configs import pretrain  # pylint: disable=g-import-not-at-top

  variant, size = ("tiny", 32) if args.dry_run else (args.variant, args.image_size)
  config = pretrain.get_config(f"variant={variant},image_size={size},init=none")
  config.batch_size = args.batch_size
  config.data.sampler.enabled = False
  config.optim.total_steps = config.total_steps
  config.model.dtype = "bfloat16"
  texts = list(prompts.activities("bp4d").values())
  tok = tokenizer_lib.get(config.tokenizer, context_length=config.model.context_length)
  model = models.build(config.model)
  objective = objectives.pretrain_objective(config, model, tok, texts)
  state, step, mesh = tt.build_state_and_step(config, objective)
  host = tt.random_batch(args.batch_size, size, len(texts), views=2)
  with jax.set_mesh(mesh):
    batch = sharding.global_batch(host, mesh)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    flops = tt.xla_flops(compiled)
    for _ in range(args.warmup):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - t0) / args.steps
  loss = float(metrics["loss"])
  dev = jax.devices()[0]
  kind = getattr(dev, "device_kind", dev.platform)
  peak = args.peak_tflops or (None if args.dry_run else peak_for(kind))
  peak_src = "given" if args.peak_tflops else "device sheet"
  if peak is None:
    peak, peak_src = measured_peak(jax, jnp), "measured 4096² bf16 matmul"
  # FLOPs per device: cost_analysis counts the per-device program of the sharded step.
  achieved = flops / seconds / 1e12
  return {
    "device": f"{jax.device_count()} x {kind} ({dev.platform})",
    "model": f"{variant} at {size} px, bf16 compute",
    "batch": f"{args.batch_size} x 2 views (global)",
    "compile_s": compile_s,
    "step_s": seconds,
    "img_per_s": 2 * args.batch_size / seconds,
    "gflop_per_step": flops / 1e9,
    "achieved_tflops": achieved,
    "peak_tflops": peak,
    "peak_source": peak_src,
    "mfu": achieved / peak,
    "loss": loss,
  }


def default_job(args) -> dict:
  with tempfile.TemporaryDirectory(prefix="clef_gpu_job_") as tmp:
    cfg = "configs/pretrain.py:tiny" if args.dry_run else "configs/pretrain.py"
    cmd = [
      sys.executable,
      "main.py",
      f"--config={cfg}",
      f"--workdir={tmp}/w",
      f"--config.data.data_dir={args.data_dir or tmp + '/data'}",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
  return {"command": " ".join(cmd[1:3]), "wall_s": wall}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--dry_run", action="store_true", help="tiny model and job, any device (CPU)")
  ap.add_argument("--variant", default="B/16")
  ap.add_argument("--image_size", type=int, default=224)
  ap.add_argument("--batch_size", type=int, default=None, help="default 256 (dry run 8)")
  ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; dry run 2)")
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--peak_tflops", type=float, default=None, help="the device's bf16 peak")
  ap.add_argument("--skip_default_job", action="store_true")
  ap.add_argument("--data_dir", default=None, help="data dir of the default job (default: fresh)")
  args = ap.parse_args(argv)
  args.batch_size = args.batch_size or (8 if args.dry_run else 256)
  args.steps = args.steps or (2 if args.dry_run else 20)
  print(f"uptime: {os.popen('uptime').read().strip()}")
  r = clef_step(args)
  print(f"device: {r['device']}")
  print(f"CLEF step: {r['model']}, batch {r['batch']}")
  print(
    f"  compile {r['compile_s']:.1f} s; {r['step_s'] * 1e3:.4g} ms/step; {r['img_per_s']:.4g} img/s; "
    f"loss {r['loss']:.4f}"
  )
  print(
    f"  {r['gflop_per_step']:.4g} GFLOP/step (XLA cost_analysis, per device); achieved "
    f"{r['achieved_tflops']:.4g} TFLOP/s; peak {r['peak_tflops']:.4g} TFLOP/s "
    f"({r['peak_source']}); MFU {100 * r['mfu']:.2f} %"
  )
  if not args.skip_default_job:
    j = default_job(args)
    print(f"default job: {j['command']}: {j['wall_s']:.1f} s wall (fresh workdir and data dir)")
  print(f"uptime: {os.popen('uptime').read().strip()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
