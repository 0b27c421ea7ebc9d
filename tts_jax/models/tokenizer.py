"""Tokenizers from a Hugging Face directory, with chat templates rendered as `transformers` does."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import Tokenizer as _HFTokenizer

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _token_content(value) -> str | None:
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, dict):  # serialised AddedToken
    return value.get("content")
  raise ValueError(f"cannot read special token {value!r}")


def _select_template(template, name: str | None) -> str | None:
  if template is None or isinstance(template, str):
    return template
  # A list of {"name": ..., "template": ...}; pick by name, else "default".
  by_name = {t["name"]: t["template"] for t in template}
  want = name or "default"
  if want not in by_name:
    raise ValueError(f"chat template {want!r} not found; available: {sorted(by_name)}")
  return by_name[want]


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
  raise jinja2.exceptions.TemplateError(message)


def compile_chat_template(source: str) -> jinja2.Template:
  """Compiles a chat template in the sandboxed environment `transformers` uses."""
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(source)


class Tokenizer:
  """A `tokenizers` tokenizer plus the special tokens and chat template of its config.

  Attributes:
    backend: the underlying `tokenizers.Tokenizer`.
    special_tokens: {"bos_token": str, "eos_token": str, ...} for those set.
    chat_template: the Jinja source, or None.
    eos_token_ids: tuple of ids that end generation (generation_config.json's
      eos_token_id when present, else the tokenizer's eos token).
  """

  def __init__(self, backend: _HFTokenizer, special_tokens: dict[str, str] | None = None,
               chat_template: str | None = None, eos_token_ids: Sequence[int] | None = None):
    self.backend = backend
    self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
    self.chat_template = chat_template
    self._compiled = None
    if eos_token_ids is None:
      eos = self.special_tokens.get("eos_token")
      eos_token_ids = () if eos is None else (self.token_to_id(eos),)
    self.eos_token_ids = tuple(int(i) for i in eos_token_ids)

  @classmethod
  def from_directory(cls, path: str) -> "Tokenizer":
    """Reads tokenizer.json, tokenizer_config.json and, when present, chat_template.jinja
    and generation_config.json from a Hugging Face model directory."""
    tok_file = os.path.join(path, "tokenizer.json")
    cfg_file = os.path.join(path, "tokenizer_config.json")
    for f in (tok_file, cfg_file):
      if not os.path.isfile(f):
        raise FileNotFoundError(f"tokenizer file missing: {f}")
    backend = _HFTokenizer.from_file(tok_file)
    with open(cfg_file) as fh:
      cfg = json.load(fh)
    special = {k: _token_content(cfg.get(k)) for k in _SPECIAL_KEYS}
    template = _select_template(cfg.get("chat_template"), None)
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja_file):
      with open(jinja_file) as fh:
        template = fh.read()
    eos_ids = None
    gen_file = os.path.join(path, "generation_config.json")
    if os.path.isfile(gen_file):
      with open(gen_file) as fh:
        eos = json.load(fh).get("eos_token_id")
      if eos is not None:
        eos_ids = list(eos) if isinstance(eos, list) else [eos]
    return cls(backend, special, template, eos_ids)

  # -- ids <-> text ----------------------------------------------------------
  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int:
    i = self.backend.token_to_id(token)
    if i is None:
      raise ValueError(f"token {token!r} is not in the vocabulary")
    return i

  @property
  def pad_token_id(self) -> int:
    """The pad token's id, else the first eos id, else 0."""
    if "pad_token" in self.special_tokens:
      return self.token_to_id(self.special_tokens["pad_token"])
    return self.eos_token_ids[0] if self.eos_token_ids else 0

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Text -> token ids (special tokens as the tokenizer's post-processor adds them)."""
    return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  # -- chat ------------------------------------------------------------------
  def apply_chat_template(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = False,
                          tokenize: bool = True, **kwargs) -> list[int] | str:
    """Renders a conversation like `transformers`' `apply_chat_template`.

    Args:
      messages: [{"role": ..., "content": ...}, ...].
      add_generation_prompt: append the assistant turn header.
      tokenize: return token ids (encoded without adding special tokens) instead of text.
      **kwargs: extra template variables (e.g. tools, documents, enable_thinking).
    """
    if self.chat_template is None:
      raise ValueError("this tokenizer has no chat template (tokenizer_config.json has no "
                       "'chat_template' and there is no chat_template.jinja)")
    if self._compiled is None:
      self._compiled = compile_chat_template(self.chat_template)
    variables = {**self.special_tokens, **kwargs}
    variables.setdefault("tools", None)
    variables.setdefault("documents", None)
    text = self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
    return self.encode(text, add_special_tokens=False) if tokenize else text
