"""Tests do not write JAX's persistent compilation cache into the user's cache directory
(the test of the cache itself points it at a temporary directory)."""

import os

os.environ.setdefault("TTS_JAX_COMPILATION_CACHE", "off")
