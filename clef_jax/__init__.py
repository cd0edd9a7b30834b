"""clef-jax: CLEF (weakly-supervised text-driven contrastive learning for facial behavior) in JAX/Flax."""

__version__ = "0.1.0"

# What `config.mode` can be: main.py, configs/ and clef_jax.train all read this one tuple.
MODES = ("pretrain", "finetune", "linear_probe", "zeroshot")
