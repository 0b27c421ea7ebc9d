"""tts_jax: JAX-native test-time scaling for language models."""

__version__ = "0.1.0"
