"""clef-jax entry point: pretrain, finetune, linear_probe or zeroshot, as config.mode says.

  python main.py --config=configs/pretrain.py --workdir=workdirs/pretrain
  python main.py --config=configs/finetune_au.py:tiny --workdir=W --config.init=clef:DIR

Multi-process (TPU VM pods, SLURM, several GPU nodes): `jax.distributed.initialize()` runs when
the environment says this is one of several processes, or with explicit
--coordinator_address/--num_processes/--process_id.
"""

import logging as std_logging
import os

# TensorFlow (used by TFDS and the TensorBoard writer only) prints a screen of C++ and oneDNN
# start-up chatter before the first line of ours; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from clef_jax import MODES  # noqa: E402


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Config file (configs/<mode>.py[:args]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and results.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.mark_flags_as_required(["config", "workdir"])


def _is_multiprocess_env() -> bool:
  env = os.environ
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return True
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  return env.get("CLEF_DISTRIBUTED", "") == "1"


def _maybe_initialize_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top

  # Cross-process collectives for the CPU backend (no effect on GPU/TPU backends).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if FLAGS.coordinator_address or FLAGS.num_processes:
    jax.distributed.initialize(
      FLAGS.coordinator_address, num_processes=FLAGS.num_processes, process_id=FLAGS.process_id
    )
  elif _is_multiprocess_env():
    jax.distributed.initialize()


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of orbax, TFDS and grain (their warnings and errors still show)."""

  _NOISY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/etils/", "/jax/_src/xla_bridge.py")

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or not any(
      p in record.pathname for p in self._NOISY
    )


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = FLAGS.config
  if config.mode not in MODES:
    raise app.UsageError(f"config.mode={config.mode!r} is not a mode; known modes: {MODES}")
  _maybe_initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  from clef_jax import train  # pylint: disable=g-import-not-at-top

  logging.info(
    "JAX %s: process %d of %d, devices %s",
    jax.__version__,
    jax.process_index(),
    jax.process_count(),
    jax.devices(),
  )
  train.run(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
