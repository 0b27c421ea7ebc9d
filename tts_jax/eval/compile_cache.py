"""JAX's persistent compilation cache, on by default for experiment runs: a second run of
the same experiment (or any run with the same shapes) loads its compiled code instead of
compiling it.

Where: $TTS_JAX_COMPILATION_CACHE if set ("off", "0" or "" turn the cache off), else
$XDG_CACHE_HOME/tts_jax/jax (default ~/.cache/tts_jax/jax). A cache directory the user
already gave JAX (jax_compilation_cache_dir) is left as it is.
"""

from __future__ import annotations

import os

import jax

ENV = "TTS_JAX_COMPILATION_CACHE"
_OFF = ("", "0", "off", "false", "no")


def cache_dir() -> str | None:
  """The cache directory this process should use, or None when it is turned off."""
  value = os.environ.get(ENV)
  if value is not None:
    return None if value.strip().lower() in _OFF else os.path.expanduser(value)
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "tts_jax", "jax")


def enable_compilation_cache() -> str | None:
  """Turns the persistent cache on (every compiled function is stored, however fast its
  compilation was); returns its directory (None: off)."""
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = cache_dir()
  if path is None:
    return None
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
