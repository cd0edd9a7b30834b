"""Stage 2 for expression recognition (mode=finetune, task=fer): L = L_IN + λ_DN·L_DN.

python main.py --config=configs/finetune_fer.py --workdir=W --config.init=clef:workdirs/pretrain
"""

from configs import common
from configs import finetune_common


def get_config(arg=None):
  args = common.parse_arg(arg, variant="Ti/16", tiny=False, init="", image_size=0)
  c = common.base("finetune", args)
  finetune_common.add_finetune(c, task="fer")
  c.data.name = "synthface"
  c.data.config = "raf"
  return common.finalize(c, args)
