"""Stage 2 for AU detection (mode=finetune, task=au): L = L_IN + λ_DN·L_DN, docs/method.md.

python main.py --config=configs/finetune_au.py --workdir=W --config.init=clef:workdirs/pretrain
"""

from configs import common
from configs import finetune_common


def get_config(arg=None):
  args = common.parse_arg(arg, variant="Ti/16", tiny=False, init="", image_size=0)
  c = common.base("finetune", args)
  finetune_common.add_finetune(c, task="au")
  return common.finalize(c, args)
