"""Stage 2 for AU intensity (mode=finetune, task=au_intensity), the poster's extension.

head='text' (default): each AU is classified over six intensity-aware label texts, the "without"
prompt for level 0 and "<AU name> with <word> intensity" for the FACS levels A-E (the words are
`intensity_levels` in clef_jax/data/prompts.json); the prediction is the expected level.
head='linear': a plain regression head on the same embedding (MSE), the baseline. Trained on the
AUs the dataset codes with intensity (BP4D and SynthFace's BP4D-like part: 6, 10, 12, 14, 17;
`finetune.intensity_aus` picks some); evaluated by ICC(3,1), MAE and Pearson per AU.

python main.py --config=configs/finetune_intensity.py --workdir=W --config.init=clef:workdirs/pretrain
"""

from configs import common
from configs import finetune_common


def get_config(arg=None):
  args = common.parse_arg(arg, variant="Ti/16", tiny=False, init="", image_size=0)
  c = common.base("finetune", args)
  finetune_common.add_finetune(c, task="au_intensity")
  c.finetune.use_descriptions = False  # no intensity descriptions: L_DN does not apply
  c.finetune.intensity_aus = ()  # () = every AU with intensity codes in the training split
  return common.finalize(c, args)
