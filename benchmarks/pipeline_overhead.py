"""What the real input pipeline adds to a training step, measured side by side in one run.

  python benchmarks/pipeline_overhead.py                 # default pretraining job, workers 0 and 2
  python benchmarks/pipeline_overhead.py --quick         # workers 0 only, 1 step per round
  python benchmarks/pipeline_overhead.py --workers=0,1,2 --steps=4 --repeats=3 --data_dir=DIR
  python benchmarks/pipeline_overhead.py --config_arg='' --colour=device,host   # both placements

The step is the trainer's (`configs/pretrain.py:image_size=112` by default, `--config_arg`:
CLEF objective, Ti/16 with 6 vision and 4 text layers, global batch 64 drawn by the activity
sampler, two augmented views per image so 128 images per step), jitted with
`donate_argnums=(0,)`. The data is a small SynthFace prepared
as TFDS ArrayRecord (JPEG bytes; generated into `--data_dir` on first use, about a minute, and
reused after). Modes, timed in alternating order over `--repeats` rounds; in each round a mode
gets a fresh iterator, `--warmup` untimed steps (so batches grain prefetched while the mode sat
idle are not counted as free), then `--steps` timed steps:
  staged     one batch put on the device once and reused: the step alone.
  workers=N  the trainer's loop: `next(train_iter)` (grain: read ArrayRecord, decode JPEG, random
             resized crop, flip, colour jitter, greyscale, two views, batch; N `mp_prefetch`
             worker processes, 0 = in-process read threads), `sharding.global_batch`, the step.
Dispatch is asynchronous as in the trainer, so the host pipeline overlaps the step's compute.
`--colour` times each mode with the colour jitter and greyscale applied on the device (the
default, `data.augment.colour_on_device`: the host draws them, the jitted step applies them, so
"staged" includes that op) and/or on the host (Pillow, in the pipeline), side by side.
It prints the median seconds per step of each mode and the share the pipeline adds (target
<= 10 %), plus the pipeline's own time per batch with no step running, as a share of the step.
"""

from __future__ import annotations

import gc
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "data_dir",
  os.path.join(tempfile.gettempdir(), "clefbench_data"),
  "where the small SynthFace is prepared (reused if present)",
)
flags.DEFINE_string(
  "config_arg",
  "image_size=112",
  "argument of configs/pretrain.py "
  "get_config, e.g. 'variant=S/16,image_size=112' ('' = the default job)",
)
flags.DEFINE_list("workers", ["0", "2"], "grain mp_prefetch worker counts to time")
flags.DEFINE_list("colour", ["device"], "where the colour jitter runs: device, host or both")
flags.DEFINE_list(
  "cache",
  ["warm"],
  "decoded-example cache (data.cache_mb): 'warm' (each mode's untimed warm-up first reads one "
  "epoch, so the timed steps read from the cache as every epoch after a run's first does), "
  "'off' (cache_mb=0: every example read and decoded, as in a run's first epoch), or both",
)
flags.DEFINE_integer("steps", 2, "timed steps per mode and round")
flags.DEFINE_integer("warmup", 1, "untimed steps per mode and round (fresh iterator)")
flags.DEFINE_integer("repeats", 2, "rounds (medians reported)")
flags.DEFINE_bool("quick", False, "workers 0 only, 1 step per round")
flags.DEFINE_string(
  "cache_dir",
  os.path.join(tempfile.gettempdir(), "clef_jax_bench_cache"),
  "JAX persistent compilation cache ('' for none)",
)

# SynthFace sizes: 12 subjects (8 in fold 1's training split) x 8 tasks x 16 frames.
SYNTHFACE = dict(seed=0, subjects=12, frames_per_task=16, raf_train=64, raf_test=32, size=112)


def make_config(
  data_dir: str, config_arg: str, worker_count: int, colour: str = "device", cache: str = "warm"
):
  from configs import pretrain  # pylint: disable=g-import-not-at-top

  config = pretrain.get_config(config_arg or None)
  config.data.data_dir = data_dir
  config.data.worker_count = worker_count
  config.data.augment.colour_on_device = colour == "device"
  if cache == "off":
    config.data.cache_mb = 0
  config.data.synthface.update(SYNTHFACE)
  config.optim.total_steps = config.total_steps
  return config


class Loop:
  """The trainer's step on a fixed state; `run(batches, n)` returns seconds for n steps."""

  def __init__(self, config, data):
    import jax  # pylint: disable=g-import-not-at-top
    import train_throughput as tt  # pylint: disable=g-import-not-at-top
    from clef_jax import datasets as data_lib  # pylint: disable=g-import-not-at-top
    from clef_jax import models  # pylint: disable=g-import-not-at-top
    from clef_jax import sharding  # pylint: disable=g-import-not-at-top
    from clef_jax import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    from clef_jax import objectives  # pylint: disable=g-import-not-at-top

    self.jax, self.sharding, self.data_lib = jax, sharding, data_lib
    tok = tokenizer_lib.get(config.tokenizer, context_length=config.model.context_length)
    objective, self.keys = objectives.build(config, models.build(config.model), tok, data)
    self.state, self.step, self.mesh = tt.build_state_and_step(config, objective)

  def to_device(self, host_batch):
    keep = {k: v for k, v in host_batch.items() if k in self.data_lib.NUMERIC_BATCH_KEYS}
    return self.sharding.global_batch(keep, self.mesh)

  def run(self, next_batch, n: int) -> float:
    """n steps, each on `next_batch()` (a device batch); seconds until the last is done."""
    t0 = time.perf_counter()
    with self.jax.set_mesh(self.mesh):
      for _ in range(n):
        self.state, metrics = self.step(self.state, next_batch())
      self.jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t0


def main(argv):
  del argv
  import train_throughput as tt  # pylint: disable=g-import-not-at-top
  from clef_jax import datasets as data_lib  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  tt.use_compilation_cache(FLAGS.cache_dir)
  workers = [0] if FLAGS.quick else [int(w) for w in FLAGS.workers]
  steps = 1 if FLAGS.quick else FLAGS.steps
  if any(w < 0 for w in workers):
    raise app.UsageError(f"--workers={FLAGS.workers}: counts must be >= 0")
  print(f"machine: {tt.machine_line()}")
  print(f"command: {' '.join([os.path.basename(sys.argv[0])] + sys.argv[1:])}")

  t0 = time.perf_counter()
  config = make_config(FLAGS.data_dir, FLAGS.config_arg, 0)
  data = data_lib.setup(config)
  print(
    f"data: {data.name}/{data.builder_config} {data.train_split} ({len(data.train)} "
    f"examples) in {data.data_dir}; ready in {time.perf_counter() - t0:.0f} s"
  )
  t0 = time.perf_counter()
  loop = Loop(config, data)
  mc = config.model
  images = config.batch_size * (2 if config.data.two_views else 1)
  print(
    f"step: {config.pretrain.objective} objective, {mc.variant} (vision {mc.vision_width}x"
    f"{mc.vision_layers}, text {mc.text_width}x{mc.text_layers}) at {mc.image_size} px, "
    f"batch {config.batch_size} x {2 if config.data.two_views else 1} views = {images} "
    f"images, sampler {'on' if config.data.sampler.enabled else 'off'}"
  )

  colours = list(dict.fromkeys(FLAGS.colour))
  if not colours or any(c not in ("device", "host") for c in colours):
    raise app.UsageError(f"--colour={FLAGS.colour}: expected device, host or both")
  caches = list(dict.fromkeys(FLAGS.cache))
  if not caches or any(c not in ("warm", "off") for c in caches):
    raise app.UsageError(f"--cache={FLAGS.cache}: expected warm, off or both")
  variants = [f"{c}/{k}" for c in colours for k in caches]  # 'device/warm', ...
  epoch = -(-len(data.train) // config.batch_size)

  def fresh_iterator(w: int, variant: str):
    colour, cache = variant.split("/")
    return data_lib.train_iterator(
      make_config(FLAGS.data_dir, FLAGS.config_arg, w, colour, cache), data, loop.keys
    )

  def warm_up(variant: str) -> int:
    return max(FLAGS.warmup, epoch if variant.endswith("/warm") else 0)

  staged = {}  # one device batch per colour placement (the cache does not change a batch)
  for c in colours:
    it = fresh_iterator(0, f"{c}/off")
    staged[c] = loop.to_device(next(it))
    del it
    loop.run(lambda b=staged[c]: b, 1)  # compile (a batch with colour draws: another signature)
  print(f"compile + warm-up {time.perf_counter() - t0:.0f} s; an epoch is {epoch} batches")

  # The pipeline alone (no step running): a fresh iterator pulled back to back, so no batch was
  # prefetched while something else ran.
  alone_batches = max(steps, 6)
  alone = {}
  for v in variants:
    it = fresh_iterator(0, v)
    for _ in range(max(1, warm_up(v))):
      next(it)
    t0 = time.perf_counter()
    for _ in range(alone_batches):
      next(it)
    alone[v] = (time.perf_counter() - t0) / alone_batches
    del it
    gc.collect()

  def timed(mode: str) -> float:
    """Seconds per step of one mode: a fresh iterator, warm-up steps, then `steps` timed."""
    what, variant = mode.split("/", 1)
    if what == "staged":
      colour = variant.split("/")[0]
      loop.run(lambda: staged[colour], FLAGS.warmup)
      return loop.run(lambda: staged[colour], steps) / steps
    it = fresh_iterator(int(what.split("=")[1]), variant)
    try:
      loop.run(lambda: loop.to_device(next(it)), warm_up(variant))
      return loop.run(lambda: loop.to_device(next(it)), steps) / steps
    finally:
      it = None  # stops its read threads / worker processes
      gc.collect()

  modes = [f"staged/{c}/-" for c in colours] + [
    f"workers={w}/{v}" for v in variants for w in workers
  ]
  secs = {m: [] for m in modes}
  for r in range(FLAGS.repeats):
    for m in modes if r % 2 == 0 else modes[::-1]:
      secs[m].append(timed(m))
    print(
      f"  round {r + 1}: "
      + "  ".join(f"{m} {secs[m][-1]:.3f}" for m in modes)
      + f" s/step  load {os.getloadavg()[0]:.2f}"
    )
  cores = os.cpu_count() or 1
  for v in variants:
    c, k = v.split("/")
    base = statistics.median(secs[f"staged/{c}/-"])
    print(
      f"\ncolour on the {c}, cache {k}: pipeline alone (workers=0, no step running) "
      f"{alone[v]:.3f} s per batch of {config.batch_size} ({images} augmented images) = "
      f"{100 * alone[v] / base:.1f}% of the median staged step (what it adds run serially); its "
      f"CPU time (threads on {cores} cores) is at most "
      f"{100 * cores * alone[v] / min(secs[f'staged/{c}/-']):.1f}% of the fastest staged step"
    )
    spread = max(secs[f"staged/{c}/-"]) / min(secs[f"staged/{c}/-"]) - 1
    print(
      f"  median s/step: staged {base:.3f} (round-to-round spread {100 * spread:.0f}%: "
      "side-by-side differences smaller than that are noise)"
    )
    for w in workers:
      t = statistics.median(secs[f"workers={w}/{v}"])
      added = t / base - 1
      print(
        f"  workers={w}: {t:.3f} s/step -> pipeline adds {100 * added:+.1f}% "
        f"(target <= 10%: {'met' if added <= 0.10 else 'MISSED'})"
      )
  for w in workers:
    loops = {v: statistics.median(secs[f"workers={w}/{v}"]) for v in variants}
    fastest = min(loops, key=loops.get)
    print(
      f"\nworkers={w}, the trainer's loop: "
      + ", ".join(f"{v} {loops[fastest] / t:.2f}x" for v, t in loops.items())
      + f" the speed of the fastest ({fastest})"
    )
  print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  app.run(main)
