"""Every config builds; overrides and unknown keys behave as ml_collections' config_flags do."""

import importlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from clef_jax import tokenizer
from configs import common

CONFIGS = ("pretrain", "finetune_au", "finetune_fer", "linear_probe", "zeroshot")
FIELDS = (
  "mode",
  "seed",
  "total_steps",
  "batch_size",
  "log_every_steps",
  "checkpoint_every_steps",
  "init",
  "data",
  "model",
  "optim",
  "mesh",
)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "tiny", "variant=B/16", "variant=S/16,tiny"])
def test_every_config_builds(name, arg):
  c = importlib.import_module(f"configs.{name}").get_config(arg)
  for field in FIELDS:
    assert field in c, f"{name}:{arg} lacks {field}"
  assert c.mode in common.MODES
  if arg and "tiny" in arg:
    assert c.model.variant == "tiny" and c.total_steps <= 10


def test_pretrain_defaults_follow_method():
  c = importlib.import_module("configs.pretrain").get_config(None)
  assert c.pretrain.pairing == "activity"
  assert c.pretrain.temperature == 0.1
  assert c.data.two_views and c.data.sampler.enabled
  assert c.data.leakage_guard


def test_embedded_vocab_constant_matches_tokenizer():
  assert common.EMBEDDED_VOCAB_SIZE == tokenizer.EMBEDDED_VOCAB_SIZE
  tok = tokenizer.get("embedded", context_length=64)
  assert tok.vocab_size == common.EMBEDDED_VOCAB_SIZE


def test_unknown_config_arg_is_named():
  with pytest.raises(ValueError, match="'bogus'"):
    importlib.import_module("configs.pretrain").get_config("bogus=1")


def _parse(argv):
  argv = ["prog", *argv]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
  )
  fv(argv)
  return fv.config


def test_command_line_override_and_unknown_key():
  c = _parse(
    [
      "--config=configs/pretrain.py:tiny",
      "--config.mode=zeroshot",
      "--config.data.data_dir=/tmp/x",
      "--config.pretrain.pairing=instance",
    ]
  )
  assert c.mode == "zeroshot" and c.data.data_dir == "/tmp/x"
  assert c.pretrain.pairing == "instance"
  with pytest.raises(Exception, match="not_a_key"):
    _parse(["--config=configs/pretrain.py", "--config.not_a_key=1"])


def test_main_rejects_unknown_mode(tmp_path):
  r = subprocess.run(
    [
      sys.executable,
      "main.py",
      "--config=configs/pretrain.py:tiny",
      f"--workdir={tmp_path}",
      "--config.mode=dance",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode != 0
  assert "dance" in r.stderr and "pretrain" in r.stderr and "zeroshot" in r.stderr
