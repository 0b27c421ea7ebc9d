"""The one prompt padder: ragged token lists -> a right-padded batch."""

from __future__ import annotations

from typing import Sequence

import numpy as np

PAD_MULTIPLE = 16  # widths are rounded up to a multiple of this, so ragged batches share compiled code


def pad_prompts(prompts: Sequence[Sequence[int]], multiple: int = PAD_MULTIPLE,
                pad_id: int = 0, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads token lists.

  Args:
    prompts: B non-empty sequences of token ids.
    multiple: the width Tp is the longest length rounded up to a multiple of this.
    pad_id: fills the positions past each row's length.
    width: pad to at least this width (e.g. one width for every batch of a run, so all
      batches share compiled code); a row longer than it is an error.

  Returns:
    (tokens int32[B, Tp], lengths int32[B]).
  """
  if len(prompts) == 0:
    raise ValueError("no prompts given")
  lengths = np.array([len(p) for p in prompts], np.int32)
  if (lengths == 0).any():
    raise ValueError(f"empty prompt at index {int(np.argmin(lengths))}; every prompt needs >= 1 token")
  tp = -(-int(lengths.max()) // multiple) * multiple
  if width is not None:
    if lengths.max() > width:
      raise ValueError(f"a sequence of {int(lengths.max())} tokens is longer than the padded width {width}")
    tp = max(tp, width)
  tokens = np.full((len(prompts), tp), pad_id, np.int32)
  for i, p in enumerate(prompts):
    tokens[i, :len(p)] = np.asarray(p, np.int32)
  return tokens, lengths
