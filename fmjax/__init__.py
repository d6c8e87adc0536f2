"""fmjax: conditional flow matching for speech generation in JAX/Flax."""

__version__ = "0.1.0"
