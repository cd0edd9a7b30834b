"""Stage 1: weakly-supervised activity-aware pretraining (mode=pretrain), docs/method.md.

Like the paper, the default starts from a face vision-language model: the shipped SynthFace
CLIP (the FaRL analog, models/synthface-clip, built by tools/build_foundation.py), with its
tokenizer. A named variant or `init=` starts from that checkpoint instead (pass its tokenizer
with --config.tokenizer=...); `init=none` trains from random weights.

python main.py --config=configs/pretrain.py --workdir=workdirs/pretrain
python main.py --config=configs/pretrain.py:variant=B/16,init=openai:/path/ViT-B-16.pt ...
"""

import pathlib

import ml_collections

from configs import common
from configs import foundation

FOUNDATION = str(pathlib.Path(__file__).resolve().parent.parent / foundation.FOUNDATION_DIR)


def get_config(arg=None):
  args = common.parse_arg(arg, variant="Ti/16", tiny=False, init="", image_size=0)
  from_foundation = (
    not args.init and not args.tiny and args.variant == "Ti/16" and args.image_size in (0, 64)
  )
  if args.init == "none":
    args.init = ""
  c = common.base("pretrain", args)
  if from_foundation:
    c.init = f"hf:{FOUNDATION}"
    c.tokenizer = FOUNDATION
  c.pretrain = ml_collections.ConfigDict(
    dict(
      objective="clef",  # 'clef' (L = λ_PI·L_II' + λ_PA·L_IA) or 'clip' (plain InfoNCE)
      pairing="activity",  # 'activity' (CLEF) | 'instance' (SimCLR) | 'activity_cross_subject'
      temperature=0.1,  # τ_img of L_II'
      lambda_pi=1.0,
      lambda_pa=1.0,
      lambda_inst=0.0,  # weight of the instance (SimCLR) term next to the activity term
      pi_negatives="all",  # 'all' | 'other_subjects': the negatives of L_II' and the instance term
      proj_head=False,  # MLP head used only by L_II' (SimCLR/SupCon style)
      proj_dim=128,
    )
  )
  c.data.two_views = True
  c.data.sampler.enabled = True
  # Evaluators at the end of pretraining (and every eval_every_steps): a linear probe for AU
  # occurrence on held-out subjects, next to its references on the same frames (raw pixels,
  # all present).
  c.evals.au_probe = ml_collections.ConfigDict(
    dict(type="linear_probe_au", max_train=4000, references=True)
  )
  # Zero-shot (also what `--config.mode=zeroshot --config.init=SPEC` runs): the test frames
  # against the activity texts, and the RAF-like test set against expression prompts from the
  # names and from the descriptions (prompt ensembles).
  c.evals.activity = ml_collections.ConfigDict(dict(type="zeroshot_activity"))
  c.evals.expressions = ml_collections.ConfigDict(
    dict(type="zeroshot_fer", protocol="prompts", texts="names", data=dict(config="raf"))
  )
  c.evals.expression_descriptions = ml_collections.ConfigDict(
    dict(type="zeroshot_fer", protocol="prompts", texts="descriptions", data=dict(config="raf"))
  )
  if c.init:
    # From a pretrained tower (the foundation, CLIP, FaRL): a 10x lower lr and the instance term
    # next to the activity term. With lr 5e-4 and the activity term alone, the views of the
    # default job fall to one point within 30 steps (loss_pi at log(2B-1), effective rank
    # 21 -> 6.3) and the AU probe ends below the init's; docs/method.md §3 has the runs.
    c.optim.lr = 5e-5
    c.pretrain.lambda_inst = 1.0
  if args.tiny:
    c.evals.au_probe.max_train = 200
  return common.finalize(c, args)
