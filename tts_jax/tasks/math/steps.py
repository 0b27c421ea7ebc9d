"""Step boundaries of real text: reasoning steps end at blank lines ("\\n\\n").

Byte-level BPE tokenizers (Qwen2.5, Llama-3) merge the blank line into neighbouring
tokens (".\\n\\n", " \\n\\n", ")\\n\\n", "\\n\\n\\n"), so no single id is "the" delimiter: the
delimiter is the set of ids whose text contains the separator, read from the vocabulary.
"""

from __future__ import annotations


def step_delimiter_ids(tokenizer, separator: str = "\n\n") -> tuple[int, ...]:
  """Sorted ids of every vocabulary token whose decoded text contains `separator`
  (special tokens excluded). tokenizer: a `tts_jax.models.tokenizer.Tokenizer` (or
  anything with `.backend`, a `tokenizers.Tokenizer`)."""
  if not separator:
    raise ValueError("the step separator must be a non-empty string")
  backend = getattr(tokenizer, "backend", tokenizer)
  special = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
  vocab = [(t, i) for t, i in backend.get_vocab(with_added_tokens=True).items() if t not in special]
  texts = backend.decode_batch([[i] for _, i in vocab], skip_special_tokens=False)
  ids = [i for (_, i), text in zip(vocab, texts) if separator in text]
  if not ids:
    raise ValueError(f"no token of the vocabulary contains {separator!r}; steps cannot be delimited by it")
  return tuple(sorted(ids))
