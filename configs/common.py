"""Shared config pieces: argument parsing, the fields every mode has, and the `tiny` overrides.

Every config file exposes `get_config(arg: str | None) -> ml_collections.ConfigDict`. `arg` is a
comma-separated list of `key=value` pairs and bare switches, e.g. `variant=B/16,tiny`:
  variant=NAME   model variant (clef_jax.models.variants.VARIANTS)
  tiny           a run small enough for a CPU test (seconds to a few minutes)
  init=SPEC      a clef_jax.pretrained.load spec (hf:DIR, openai:FILE, clef:DIR)
Unknown arguments are errors. Command-line `--config.x=...` overrides come after this.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from clef_jax import MODES
from clef_jax.models import variants

# The embedded tokenizer's vocabulary size; kept in sync with clef_jax/tokenizer.py by a test.
EMBEDDED_VOCAB_SIZE = 4096


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses 'k=v,switch' into a ConfigDict over `defaults` (unknown keys are errors)."""
  out = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}")
    if not sep:
      out[key] = True
      continue
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, int):
      out[key] = int(value)
    else:
      out[key] = value
  return ml_collections.ConfigDict(out)


def set_fields(
  config: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
  """Sets dotted fields, like `--config.a.b=v` does: {'optim.lr': 1e-4} -> config.optim.lr."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def base(mode: str, args: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The fields every mode has, with defaults for the SynthFace default job."""
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; known modes: {MODES}")
  c = ml_collections.ConfigDict()
  c.mode = mode
  c.seed = 0
  c.total_steps = 300
  c.batch_size = 64  # global, over all processes and devices
  c.accum_steps = 1  # gradient accumulation that keeps the whole negative pool
  c.log_every_steps = 10
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 2
  c.eval_every_steps = 0  # 0: evaluate only at the end
  init = args.get("init", "") or ""
  c.init = "" if init == "none" else init  # clef_jax.pretrained.load spec or '' ('none')
  c.dont_load = ("heads/.*",)  # regexes of params that keep their init when loading `init`
  c.tokenizer = "embedded"  # or a folder with HF CLIP tokenizer files
  c.fold = 1  # subject-exclusive fold for BP4D-like data (1..3)
  c.transfer_guard = True  # jax_transfer_guard='disallow' inside the training loop

  variant = args.get("variant", "Ti/16")
  default_job = variant == "Ti/16" and not args.get("image_size", 0)
  # The default job must finish in minutes on 2 CPU cores: a 6-layer Ti/16 at 64 px. Named
  # variants otherwise keep CLIP's 224 px unless image_size= is given.
  image_size = args.get("image_size", 0) or (64 if default_job else 224)
  c.model = variants.model_config(
    variant,
    image_size=image_size,
    vocab_size=EMBEDDED_VOCAB_SIZE,
    eos_token_id=EMBEDDED_VOCAB_SIZE - 1,
    context_length=64,
    # bf16 compute where the backend has fast bf16 matmuls (TPU, GPU cc >= 8, CPUs with AMX),
    # fp32 elsewhere; the run logs which (clef_jax/models/precision.py).
    dtype="auto",
  )
  if variant == "Ti/16":
    c.model.vision_layers = 6
    c.model.text_layers = 4

  c.data = ml_collections.ConfigDict()
  c.data.name = "synthface"  # TFDS builder: bp4d, bp4d_plus, disfa, raf_db, ferplus, affectnet, synthface, manifest
  c.data.config = "bp4d"  # builder config ('' for the default one)
  c.data.data_dir = config_dict.placeholder(str)  # default: $CLEF_DATA_DIR or ./data
  c.data.train_split = ""  # '' = derived from the fold (part datasets) or 'train'
  c.data.test_split = ""  # '' = derived from the fold or 'test'
  c.data.leakage_guard = True  # pretraining on fold k reads only fold k's training subjects
  c.data.label_fraction = 1.0  # share of labelled training examples used by fine-tuning
  c.data.worker_count = 0  # grain mp_prefetch workers (0: in-process)
  # Decoded training examples kept in memory (MiB per process; 0: off): from the second epoch
  # on the host only augments. The default job's 8,960 faces at 112 px take 337 MiB.
  c.data.cache_mb = 1024
  c.data.two_views = False
  c.data.augment = ml_collections.ConfigDict(
    dict(
      crop_scale=(0.7, 1.0),
      crop_ratio=(0.9, 1.1),
      flip_prob=0.5,
      jitter_prob=0.8,
      brightness=0.3,
      contrast=0.3,
      saturation=0.3,
      greyscale_prob=0.1,
      # The host crops and flips; the colour jitter and greyscale are drawn there but applied
      # in the jitted step (clef_jax/augment.py): the same images for 57 % of the host's time.
      colour_on_device=True,
    )
  )
  c.data.sampler = ml_collections.ConfigDict(
    dict(
      enabled=False,
      activities_per_batch=8,
      subjects_per_activity=4,
      frames_per_group=2,
      min_frame_gap=4,
    )
  )
  c.data.synthface = ml_collections.ConfigDict(
    dict(
      seed=0,
      subjects=41,
      frames_per_task=40,
      raf_train=2400,
      raf_test=600,
      size=112,
      disfa_subjects=12,
      disfa_frames=96,
    )
  )

  c.optim = ml_collections.ConfigDict(
    dict(
      lr=5e-4,
      warmup_steps=30,
      total_steps=-1,
      end_lr_ratio=0.0,
      weight_decay=0.05,
      b1=0.9,
      b2=0.98,
      eps=1e-6,
      grad_clip_norm=1.0,
      lr_mults=(),
      # Layer-wise lr decay of the image tower (1 = off; BEiT / FT-CLIP fine-tune with 0.6-0.75):
      # block i of L trains at lr * d**(L - i), the patch embedding at d**(L + 1).
      layer_decay=1.0,
      freeze=(),
      no_decay=config_dict.placeholder(tuple),
    )
  )

  c.mesh = (("data", -1), ("fsdp", 1))  # tuples: overridable from the command line
  c.sharding_rules = ((".*", "fsdp(axis='fsdp', min_size_mb=4)"),)

  c.evals = ml_collections.ConfigDict()
  return c


def finalize(
  c: ml_collections.ConfigDict, args: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  """Applies the switches that must come last (after mode-specific fields), e.g. `tiny`."""
  if args.get("tiny", False):
    apply_tiny(c)
  return c


def apply_tiny(c: ml_collections.ConfigDict) -> None:
  """Makes a config small enough for a CPU test: tiny towers, tiny SynthFace, a few steps."""
  c.model = variants.model_config(
    "tiny",
    image_size=32,
    patch_size=8,
    vocab_size=EMBEDDED_VOCAB_SIZE,
    eos_token_id=EMBEDDED_VOCAB_SIZE - 1,
    context_length=48,
    dtype="float32",  # tests compare numbers across runs, processes and references
  )
  c.total_steps = 6
  c.batch_size = 16
  c.log_every_steps = 1
  c.checkpoint_every_steps = 3
  c.optim.warmup_steps = 2
  c.data.sampler.activities_per_batch = 4
  c.data.sampler.subjects_per_activity = 2
  c.data.sampler.frames_per_group = 2
  c.data.sampler.min_frame_gap = 1
  c.data.synthface.subjects = 6
  c.data.synthface.frames_per_task = 6
  c.data.synthface.raf_train = 64
  c.data.synthface.raf_test = 32
  c.data.synthface.size = 32
  c.data.synthface.disfa_subjects = 3
  c.data.synthface.disfa_frames = 8
