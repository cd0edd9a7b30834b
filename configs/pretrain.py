"""Stage 1: weakly-supervised activity-aware pretraining (mode=pretrain), docs/method.md.

python main.py --config=configs/pretrain.py --workdir=workdirs/pretrain
python main.py --config=configs/pretrain.py:variant=B/16,init=openai:/path/ViT-B-16.pt ...
"""

import ml_collections

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, variant="Ti/16", tiny=False, init="", image_size=0)
  c = common.base("pretrain", args)
  c.pretrain = ml_collections.ConfigDict(
    dict(
      objective="clef",  # 'clef' (L = λ_PI·L_II' + λ_PA·L_IA) or 'clip' (plain InfoNCE)
      pairing="activity",  # 'activity' (CLEF) | 'instance' (SimCLR) | 'activity_cross_subject'
      temperature=0.1,  # τ_img of L_II'
      lambda_pi=1.0,
      lambda_pa=1.0,
      proj_head=False,  # MLP head used only by L_II' (SimCLR/SupCon style)
      proj_dim=128,
    )
  )
  c.data.two_views = True
  c.data.sampler.enabled = True
  # Evaluators at the end of pretraining (and every eval_every_steps): a linear probe for AU
  # occurrence on held-out subjects.
  c.evals.au_probe = ml_collections.ConfigDict(dict(type="linear_probe_au", max_train=4000))
  # Zero-shot (also what `--config.mode=zeroshot --config.init=SPEC` runs): the test frames
  # against the activity texts, and the RAF-like test set against expression-name prompts.
  c.evals.activity = ml_collections.ConfigDict(dict(type="zeroshot_activity"))
  c.evals.expressions = ml_collections.ConfigDict(
    dict(type="zeroshot_fer", protocol="prompts", texts="names", data=dict(config="raf"))
  )
  if args.tiny:
    c.evals.au_probe.max_train = 200
  return common.finalize(c, args)
