"""clef-jax: CLEF (weakly-supervised text-driven contrastive learning for facial behavior) in JAX/Flax."""

__version__ = "0.1.0"
