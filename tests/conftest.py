"""Test setup: 8 simulated CPU devices and a persistent compilation cache, set before JAX starts.

Subprocesses started by tests (main.py runs) inherit the same environment.
"""

import os
import tempfile

# Backend optimisation level 0 halves XLA's compile time; the programs under test are tiny, so
# compile time, not run time, is what the suite spends.
os.environ.setdefault(
  "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny programs (and main.py subprocesses recompile them): cache.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "clef_jax_test_jit_cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY_SYNTHFACE = dict(
  seed=0,
  subjects=6,
  frames_per_task=6,
  raf_train=64,
  raf_test=32,
  size=32,
  disfa_subjects=3,
  disfa_frames=8,
)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  """A data_dir with the tiny SynthFace (as configs/*.py:tiny use) generated and prepared."""
  from input_pipeline import sources  # pylint: disable=g-import-not-at-top

  d = tmp_path_factory.mktemp("tiny_data")
  sources.ensure_synthface(str(d), **TINY_SYNTHFACE)
  return str(d)
