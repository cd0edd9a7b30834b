"""clef-jax: CLEF (weakly-supervised text-driven contrastive learning for facial behavior) in JAX/Flax."""

__version__ = "0.1.0"

# What `config.mode` can be: main.py, configs/ and clef_jax.train all read this one tuple.
# foundation = stage 0 (CLIP InfoNCE on image-caption pairs, the FaRL analog, configs/foundation.py).
MODES = ("foundation", "pretrain", "finetune", "linear_probe", "zeroshot")
