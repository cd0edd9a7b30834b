"""Stage 0: the face vision-language foundation model, CLIP on image-caption pairs (FaRL analog).

The paper starts every run from CLIP or FaRL. Neither can be downloaded here, so this builds the
analog the way FaRL was built: CLIP's symmetric InfoNCE between web faces and their alt-text,
both towers trained from scratch, on SynthFace-Captions (input_pipeline/synthface/captions.py,
prepared as a `manifest` dataset like a user's own image-text data). The shipped checkpoint
comes from `python tools/build_foundation.py` (docs/foundation.md), which runs this config.

python main.py --config=configs/foundation.py --workdir=workdirs/foundation \
    --config.tokenizer=<folder with vocab.json + merges.txt>
"""

import ml_collections

from configs import common

# Where the shipped foundation checkpoint lives (a transformers CLIP folder), relative to the
# repository root; configs/pretrain.py starts from it.
FOUNDATION_DIR = "models/synthface-clip"
VOCAB_SIZE = 2048  # the shipped CLIP-format BPE (tools/build_tokenizer.py --clip_out)


def get_config(arg=None):
  args = common.parse_arg(arg, variant="Ti/16", tiny=False, init="", image_size=0)
  c = common.base("foundation", args)
  c.model.vocab_size = VOCAB_SIZE
  c.model.eos_token_id = VOCAB_SIZE - 1
  # Captions are ~19 tokens (99 % <= 34); expression descriptions ~41 (at most 53).
  c.model.context_length = 48
  c.tokenizer = FOUNDATION_DIR  # the build command passes the freshly trained one
  # Sized to build in about 15 min on 2 CPU cores (tools/build_foundation.py): ~1 step/s.
  c.total_steps = 650
  c.batch_size = 128
  c.checkpoint_every_steps = 200
  c.log_every_steps = 25
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.1
  # FaRL's second loss next to image-text contrast: masked image modelling. `mim_weight` > 0
  # adds MAE's normalised-pixel MSE on the masked patches (`mim_mask_ratio` of the 16) of the
  # first `mim_fraction` of each batch, decoded by a LayerNorm + linear layer (SimMIM). The
  # mask token and decoder live in params['heads'], so the exported tower is a plain CLIP.
  c.foundation = ml_collections.ConfigDict(
    dict(mim_weight=0.0, mim_mask_ratio=0.5, mim_fraction=0.25)
  )
  c.data.name = "manifest"
  c.data.config = "synthface_captions_lm"  # input_pipeline.sources.CAPTIONS_CONFIG: aligned
  c.data.test_split = "validation"
  c.data.leakage_guard = False  # no subject folds: the corpus has its own identities
  # Captions say "looking to the left": a mirrored image would contradict its caption.
  c.data.augment.flip_prob = 0.0
  c.data.augment.crop_scale = (0.8, 1.0)
  # Batches of 32 people x 4 of their photos: a caption must be told from the captions of the
  # same person's other photos (same face, hair, glasses, background), i.e. by what changes
  # between photos (expression, lighting, pose), not only by who it is. (Uniform batches learn
  # the person's attributes and nothing of the expression: docs/foundation.md.)
  c.data.sampler.enabled = True
  c.data.sampler.activities_per_batch = 1  # one "activity": a photo
  c.data.sampler.subjects_per_activity = 32
  c.data.sampler.frames_per_group = 4
  c.data.sampler.min_frame_gap = 1
  # SynthFace-Captions: sizes and the alt-text noise (input_pipeline.synthface.captions.Rates).
  # Every caption says who (gender and age); 90 % name an expression, 5 % of those wrongly and
  # 5 % vaguely; AU appearance phrases in 20 %, FACS names in 1 %, clutter in 20 %. The person
  # and photo attributes (hair, background, light, pose; glasses stay at 0.2) are off: at 0.3
  # the 650 steps learn who is in the photo instead of the expression (docs/foundation.md,
  # finding 8). A longer build (a GPU) can afford LAION-like rates.
  c.data.captions = ml_collections.ConfigDict(
    dict(
      seed=0,
      identities=400,
      images_per_identity=16,
      size=112,
      rate_expression=0.9,
      rate_wrong=0.05,
      rate_vague=0.05,
      rate_appearance=0.2,
      rate_facs=0.01,
      rate_attribute=0.0,
      rate_clutter=0.2,
    )
  )
  # What the foundation knows, on the SynthFace evaluation sets: zero-shot expressions of the
  # RAF-like test set from names and from descriptions, and the held-out-subject linear AU probe
  # of the BP4D-like part (fold 1) next to its raw-pixel and all-present references.
  raf = dict(name="synthface", config="raf", test_split="")  # not the captions' validation
  c.evals.expr_names = ml_collections.ConfigDict(dict(type="zeroshot_fer", texts="names", data=raf))
  c.evals.expr_descriptions = ml_collections.ConfigDict(
    dict(type="zeroshot_fer", texts="descriptions", data=raf)
  )
  c.evals.au_probe = ml_collections.ConfigDict(
    dict(
      type="linear_probe_au",
      max_train=4000,
      references=True,
      data=dict(name="synthface", config="bp4d", test_split=""),
    )
  )
  if args.tiny:
    common.apply_tiny(c)
    c.model.vocab_size = VOCAB_SIZE
    c.model.eos_token_id = VOCAB_SIZE - 1
    c.data.captions.identities = 12
    c.data.captions.images_per_identity = 4
    c.data.sampler.activities_per_batch = 1
    c.data.sampler.subjects_per_activity = 4  # x 4 photos = the tiny batch of 16
    c.data.sampler.frames_per_group = 4
    c.data.captions.size = 32
    c.evals.au_probe.max_train = 200
    return c
  return common.finalize(c, args)
