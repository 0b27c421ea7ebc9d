"""`benchmarks/gpu.py` is run on GPU machines only when one is lent: keep it runnable by
running its --smoke mode here (tiny shapes; Pallas interpreted on CPU)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_benchmark_smoke():
  out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--smoke"], capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  text = out.stdout
  assert "(ok: bfloat16 inputs" in text, text
  for row in ("xla-dense", "xla-cascade", "pallas", "tts_jax xla", "tts_jax pallas", "transformers (cpu)"):
    assert row in text, text
  assert "failed" not in text, text
