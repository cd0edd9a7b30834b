"""clef-jax entry point: pretrain, finetune, linear_probe or zeroshot, as config.mode says.

  python main.py --config=configs/pretrain.py --workdir=workdirs/pretrain
  python main.py --config=configs/finetune_au.py:tiny --workdir=W --config.init=clef:DIR

Multi-process (TPU VM pods, SLURM, several GPU nodes): `jax.distributed.initialize()` runs when
the environment says this is one of several processes, or with explicit
--coordinator_address/--num_processes/--process_id.
"""

import difflib
import logging as std_logging
import os
import re
import sys
from typing import NoReturn

# TensorFlow (used by TFDS and the TensorBoard writer only) prints a screen of C++ and oneDNN
# start-up chatter before the first line of ours; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_dict  # noqa: E402
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
    noisy = any(p in record.pathname for p in self._NOISY)
    if noisy and record.exc_info and "/orbax/" in record.pathname:
      # An orbax background-thread error (e.g. a full disk while a checkpoint is written):
      # its one-line message stays, the thread's traceback goes; the run reports the outcome
      # (clef_jax.checkpoint.CheckpointWriteError).
      record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING or not noisy


def _usage_error(message: str) -> NoReturn:
  """A fault of the command line or the config: one line on stderr, exit code 2."""
  sys.stderr.write(f"main.py: error: {message}\n")
  sys.exit(2)


def _config_spec(argv: list[str]) -> str | None:
  """The value of `--config=SPEC` (or `--config SPEC`) in argv, the first one as
  ml_collections takes it."""
  for i, arg in enumerate(argv):
    m = re.match(r"-{1,2}config(=|$)", arg)
    if m:
      return arg.split("=", 1)[1] if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def _override_paths(argv: list[str]) -> list[str]:
  """The dotted paths of every `--config.PATH[=VALUE]` (and `--noconfig.PATH`) in argv."""
  return [m.group(1) for a in argv if (m := re.match(r"-{1,2}(?:no)?config\.([^=]*)", a))]


def unknown_key_message(config, path: str, spec: str) -> str | None:
  """One line naming the first key of dotted `path` that `config` (loaded from `spec`) lacks,
  with the closest key and the keys it has at that level; None when every key exists."""
  if "[" in path:  # indexing (a.b[0]): left to ml_collections
    return None
  node, where = config, "config"
  for part in path.split("."):
    if node is None:  # a placeholder: ml_collections decides
      return None
    if not isinstance(node, config_dict.ConfigDict):
      return (
        f"--config.{path}: {where} is {node!r} (type {type(node).__name__}) in {spec}, "
        f"not a group of keys, so it has no {part!r}"
      )
    if part not in node:
      keys = sorted(node.keys())
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f" Did you mean {where}.{close[0]}?" if close else ""
      return (
        f"--config.{path}: {spec} has no key {where}.{part}.{hint} "
        f"Keys of {where}: {', '.join(keys)}"
      )
    node, where = node[part], f"{where}.{part}"
  return None


def _value_message(config, error: flags.Error, spec: str) -> str | None:
  """`flag --config.a.b=V: reason` (a value of the wrong type) as one line with the config's
  own value of that key; None for any other flag error."""
  m = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", str(error), re.S)
  if not m:
    return None
  path, value, reason = m.groups()
  current = config
  for part in path.split("."):
    current = current[part]
  return (
    f"--config.{path}={value}: {reason.strip()}; {spec} has config.{path}={current!r} "
    f"(type {type(current).__name__})"
  )


def _config_flag_message(argv: list[str], error: Exception) -> str | None:
  """What went wrong with --config or one of its overrides, in one line (None: not that)."""
  spec = _config_spec(argv)
  if not spec:
    return None
  try:
    config = FLAGS["config"].parser.parse(spec)  # loads it as the failed parse did
    for path in _override_paths(argv):
      message = unknown_key_message(config, path, spec)
      if message:
        return message
    return _value_message(config, error, spec) if isinstance(error, flags.Error) else None
  except Exception:  # pylint: disable=broad-except
    return None  # the config itself does not load: the original error says why


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (`app.run(flags_parser=...)`): a fault of the flags exits 2 with one
  line. An unknown `--config.x` makes ml_collections raise a bare AttributeError (a screen of
  traceback ending `AttributeError: "'x'"`); only then is the config loaded again to name the
  key, its closest match and the keys beside it."""
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    message = _config_flag_message(argv, e)
    if message is None and not isinstance(e, flags.Error):
      raise
    _usage_error(message or f"{e} (--helpshort or --helpfull list the flags)")


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    _usage_error(f"unexpected arguments: {argv[1:]}")
  config, spec = FLAGS.config, _config_spec(sys.argv)
  if config.mode not in MODES:
    _usage_error(f"config.mode={config.mode!r} is not a mode ({spec}); known modes: {MODES}")
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
  from clef_jax import checkpoint  # pylint: disable=g-import-not-at-top

  try:
    train.run(config, FLAGS.workdir)
  except train.ConfigError as e:  # refused before anything was written
    _usage_error(f"{e} ({spec})")
  except checkpoint.CheckpointWriteError as e:  # e.g. a full disk: the message says what is kept
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # The failed save's I/O threads would print "Event loop is closed" tracebacks at shutdown;
    # what matters is written (the intact checkpoint, metrics.jsonl), so stop here.
    os._exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
