"""Zero-shot evaluation (mode=zeroshot), docs/method.md "Zero-shot evaluation".

  python main.py --config=configs/zeroshot.py:protocol=unseen_expressions --workdir=W \
      --config.init=clef:workdirs/finetune_fer_seen
"""

import ml_collections

from configs import common


def get_config(arg=None):
  args = common.parse_arg(
    arg, variant="Ti/16", tiny=False, init="", image_size=0, protocol="prompts"
  )
  c = common.base("zeroshot", args)
  c.total_steps = 0
  c.data.config = "raf"
  c.evals.zeroshot = ml_collections.ConfigDict(
    dict(
      type="zeroshot_fer",
      protocol=args.protocol,  # 'prompts' | 'unseen_expressions' | 'au_to_fer'
      texts="names",  # 'names' | 'descriptions' | 'both' (mean of the two, renormalised)
      seen=("happiness", "sadness", "surprise", "neutral"),
      unseen=("fear", "disgust", "anger"),
    )
  )
  return common.finalize(c, args)
