"""Chat templates render and tokenize exactly as transformers' apply_chat_template."""

import json
import os

import pytest
from transformers import AutoTokenizer

from tests.helpers import CHATML_TEMPLATE, LLAMA3_TEMPLATE, save_hf_tokenizer
from tts_jax.models.tokenizer import Tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Solve x * 7 = 21 "},
     {"role": "assistant", "content": "  x = 3\n"}, {"role": "user", "content": "Hello world"}],
]
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"a": "int", "b": "int"}}}]


@pytest.fixture(scope="module", params=["chatml", "llama3", "chatml-in-config"])
def tokenizers_pair(request, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(request.param))
  if request.param == "llama3":
    save_hf_tokenizer(path, LLAMA3_TEMPLATE, bos="<|begin_of_text|>", eos="<|eot_id|>")
  else:
    save_hf_tokenizer(path, CHATML_TEMPLATE)
  if request.param == "chatml-in-config":  # the older layout: the template inside tokenizer_config.json
    os.remove(os.path.join(path, "chat_template.jinja"))
    cfg_file = os.path.join(path, "tokenizer_config.json")
    with open(cfg_file) as fh:
      cfg = json.load(fh)
    cfg["chat_template"] = CHATML_TEMPLATE
    with open(cfg_file, "w") as fh:
      json.dump(cfg, fh)
  return AutoTokenizer.from_pretrained(path), Tokenizer.from_directory(path)


@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [False, True])
def test_chat_template_matches_transformers(tokenizers_pair, conv, gen):
  ref, ours = tokenizers_pair
  msgs = CONVERSATIONS[conv]
  text = ref.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
  assert ours.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False) == text
  ids = ref.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True, return_dict=True)["input_ids"]
  assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == list(ids)


def test_tools_variable(tokenizers_pair):
  ref, ours = tokenizers_pair
  msgs = CONVERSATIONS[0]
  assert ours.apply_chat_template(msgs, tools=TOOLS, tokenize=False) == ref.apply_chat_template(
      msgs, tools=TOOLS, tokenize=False)


def test_encode_decode_match(tokenizers_pair):
  ref, ours = tokenizers_pair
  text = "Let's think step by step. 2 + 3 = 5"
  assert ours.encode(text) == ref(text)["input_ids"]
  assert ours.decode(ours.encode(text)) == text
  assert ours.eos_token_ids == (ref.eos_token_id,)


def test_template_errors_surface(tmp_path):
  save_hf_tokenizer(str(tmp_path), LLAMA3_TEMPLATE)
  tok = Tokenizer.from_directory(str(tmp_path))
  with pytest.raises(Exception, match="bad role: tool"):
    tok.apply_chat_template([{"role": "tool", "content": "x"}])
  tok.chat_template = None
  with pytest.raises(ValueError, match="has no chat template"):
    tok.apply_chat_template(CONVERSATIONS[0])
