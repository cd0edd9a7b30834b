"""The host's work per training example, piece by piece, without grain's threads around it.

  python benchmarks/host_cost.py                 # the default job's data and augmentation
  python benchmarks/host_cost.py --n=512 --rounds=5 --config_arg=image_size=112

On the small SynthFace of `pipeline_overhead.py` (prepared into `--data_dir` on first use), in
this process on one core, alternating over `--rounds`:
  load           `ExampleLoader`: read the ArrayRecord, parse the TFDS example, decode the JPEG;
                 and the same loader answering from a warm `DecodedCache`.
  augment        `TrainAugment` (two views at the model's size), colour on the host (Pillow)
                 and colour left to the device (`data.augment.colour_on_device`).
  device colour  `clef_jax.augment.apply_colour`, jitted, on one batch of the default job.
Medians in ms per example (per batch for the device op). `pipeline_overhead.py` measures what
the same work costs a training step side by side.
"""

from __future__ import annotations

import os
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

import pipeline_overhead as po  # pylint: disable=g-import-not-at-top  (its --data_dir, --config_arg)

FLAGS = flags.FLAGS
FLAGS.set_default("config_arg", "")  # the default job (pipeline_overhead.py's default is 112 px)
flags.DEFINE_integer("n", 256, "examples per round")
flags.DEFINE_integer("rounds", 3, "rounds (medians reported)")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  import train_throughput as tt  # pylint: disable=g-import-not-at-top
  from clef_jax import augment as device_augment  # pylint: disable=g-import-not-at-top
  from clef_jax import datasets as data_lib  # pylint: disable=g-import-not-at-top
  from input_pipeline import augment  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  print(f"machine: {tt.machine_line()}")
  config = po.make_config(FLAGS.data_dir, FLAGS.config_arg, 0)
  data = data_lib.setup(config)
  n = min(FLAGS.n, len(data.train))
  size = config.model.image_size
  keys = ("image", "activity_id", "subject_id", "index")
  cfg = config.data.augment.to_dict()
  host = augment.TrainAugment({**cfg, "colour_on_device": False}, size, two_views=True)
  dev = augment.TrainAugment({**cfg, "colour_on_device": True}, size, two_views=True)
  print(
    f"data: {data.name}/{data.builder_config} ({len(data.train)} examples, JPEG); {n} examples "
    f"per round, two views at {size} px, {config.batch_size} per batch"
  )
  times = {
    k: [] for k in ("load", "load cached", "augment, colour on host", "augment, colour on device")
  }
  device_ms = []
  colour_fn = jax.jit(device_augment.apply_colour)
  for r in range(FLAGS.rounds):
    cache = pipeline.DecodedCache(4096)
    loader = pipeline.ExampleLoader(data.train, keys, data.subjects, data.tasks, cache)
    t0 = time.perf_counter()
    examples = [loader((i, i)) for i in range(n)]
    t1 = time.perf_counter()
    for i in range(n):
      loader((i, i))
    t2 = time.perf_counter()
    rng = np.random.default_rng(r)
    order = [(host, "augment, colour on host"), (dev, "augment, colour on device")]
    out = {}
    for transform, name in order if r % 2 == 0 else order[::-1]:
      t = time.perf_counter()
      out[name] = [transform.random_map(ex, rng) for ex in examples]
      times[name].append((time.perf_counter() - t) / n * 1e3)
    times["load"].append((t1 - t0) / n * 1e3)
    times["load cached"].append((t2 - t1) / n * 1e3)
    batch = out["augment, colour on device"][: config.batch_size]
    images = np.stack([b["image"] for b in batch])
    colours = np.stack([b["colour"] for b in batch])
    colour_fn(images, colours).block_until_ready()
    t = time.perf_counter()
    for _ in range(10):
      y = colour_fn(images, colours)
    y.block_until_ready()
    device_ms.append((time.perf_counter() - t) / 10 * 1e3)
    print(
      f"  round {r + 1}: "
      + "  ".join(f"{k} {v[-1]:.3f}" for k, v in times.items())
      + f" ms/example; device colour {device_ms[-1]:.1f} ms/batch  load {os.getloadavg()[0]:.2f}"
    )
  print("medians, ms per example (one core, no grain):")
  for k, v in times.items():
    print(f"  {k:28s} {statistics.median(v):.3f}")
  images_per_batch = config.batch_size * 2
  print(
    f"  device colour op            {statistics.median(device_ms):.1f} ms per batch of "
    f"{images_per_batch} images at {size} px (jitted, {jax.devices()[0].platform})"
  )
  print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  app.run(main)
