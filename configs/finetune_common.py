"""Fields shared by the fine-tuning and linear-probe configs."""

import ml_collections


def add_finetune(c: ml_collections.ConfigDict, *, task: str) -> None:
  c.finetune = ml_collections.ConfigDict(
    dict(
      task=task,  # 'au' | 'fer'
      head="text",  # 'text' (CLEF: classify by label texts) | 'linear' (the poster's "I")
      au_head="bias",  # 'bias' (s_au·cos + b_j) | 'prompt_pair' (with/without prompts)
      use_names=True,  # N: label names as the classifier texts
      use_descriptions=True,  # D: L_DN between descriptions and names
      lambda_dn=1.0,
      classes=(),  # FER: class subset to train on (() = all); unseen-expression split
      label_smoothing=0.0,
    )
  )
  c.total_steps = 300
  c.optim.lr = 1e-4
  c.optim.lr_mults = (("text/.*", 1.0),)
  c.evals.test = ml_collections.ConfigDict(dict(type=f"{task}_test"))
