"""Linear probe (mode=linear_probe): frozen towers, a trained linear head on image embeddings.

python main.py --config=configs/linear_probe.py:task=au --workdir=W --config.init=clef:DIR
"""

from configs import common
from configs import finetune_common


def get_config(arg=None):
  args = common.parse_arg(arg, variant="Ti/16", tiny=False, init="", image_size=0, task="au")
  c = common.base("linear_probe", args)
  finetune_common.add_finetune(c, task=args.task)
  c.finetune.head = "linear"
  c.finetune.use_descriptions = False
  c.optim.freeze = ("visual/.*", "text/.*", "logit_scale")
  c.optim.lr = 1e-2
  c.optim.weight_decay = 0.0
  if args.task == "fer":
    c.data.config = "raf"
  return common.finalize(c, args)
