"""Cross-dataset AU detection: train on one dataset, test on another's shared AUs.

  python main.py --config=configs/cross_dataset.py --workdir=W [--config.init=clef:DIR]
  python scripts/run_folds.py --config=configs/cross_dataset.py --workdir=W   # 3 folds, mean ± std

The run is `finetune_au` on the source (default SynthFace's BP4D-like part, fold `config.fold`:
two subject parts for training) with two evaluators on the same trained head:
  test   the source's held-out part (in-domain), its 12 AUs;
  cross  every subject of the target (default SynthFace's DISFA-like part: other people, another
         recording set-up, DISFA's AU coding), on the AUs both code (BP4D -> DISFA: 1, 2, 4, 6,
         12), as the field reports BP4D -> DISFA.
Both print the all-present reference on their frames. Real data: --config.data.name=bp4d
--config.evals.cross.data.name=disfa --config.evals.cross.data.config=default (and data_dir).
"""

import ml_collections

from configs import finetune_au


def get_config(arg=None):
  c = finetune_au.get_config(arg)
  c.evals.cross = ml_collections.ConfigDict(
    dict(
      type="au_test",
      data=ml_collections.ConfigDict(
        dict(name="synthface", config="disfa", test_split="part1+part2+part3")
      ),
    )
  )
  return c
