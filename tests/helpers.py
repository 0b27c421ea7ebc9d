"""Shared test helpers: tiny Hugging Face checkpoints and tokenizers built locally."""

from __future__ import annotations


import numpy as np

CHATML_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n' }}{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'system' and loop.first %}{%- continue %}"
    "{%- endif %}{{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('bad role: ' + message['role']) }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim "
    "+ '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]

CORPUS = [
    "You are a helpful assistant.", "What is 2 + 3? The answer is 5.", "Solve x * 7 = 21, so x = 3.",
    "system user assistant tools function name arguments", "Hello world, how are you today?",
    "Let's think step by step. First add, then multiply.", "{\"type\": \"function\", \"name\": \"add\"}",
] * 4


def build_tokenizer(vocab_size: int = 300):
  """A byte-level BPE tokenizer trained on a tiny corpus, with chat special tokens."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(CORPUS, trainer)
  return tok


def save_hf_tokenizer(path: str, template: str = CHATML_TEMPLATE, *, bos="<|begin_of_text|>",
                      eos="<|im_end|>", pad="<|endoftext|>", vocab_size: int = 300):
  """Writes tokenizer.json, tokenizer_config.json (and chat_template.jinja) via transformers."""
  from transformers import PreTrainedTokenizerFast
  t = PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(vocab_size), bos_token=bos, eos_token=eos,
                              pad_token=pad)
  t.chat_template = template
  t.save_pretrained(path)
  return t


FAMILIES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
}


def randomize(model, seed: int):
  """Every parameter of a torch module random (norm weights near 1, biases and weights small)."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
      elif name.endswith("bias"):
        p.copy_(0.2 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.08 * torch.randn(p.shape, generator=gen))
  return model


def make_hf_model(family: str, seed: int = 0, **overrides):
  """A randomly initialised transformers model whose every parameter (norms, biases) is random."""
  import torch
  import transformers
  cfg_cls, model_cls = (getattr(transformers, n) for n in FAMILIES[family])
  kw = dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256)
  kw.update(overrides)
  torch.manual_seed(seed)
  model = randomize(model_cls(cfg_cls(**kw)).eval(), seed + 1)
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = 0
  return model


def save_hf_checkpoint(path: str, family: str, seed: int = 0, max_shard_size=None, **overrides):
  """Saves a tiny random model + tokenizer to `path`; returns the torch model."""
  model = make_hf_model(family, seed, **overrides)
  kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(path, **kwargs)
  save_hf_tokenizer(path)
  return model


def random_tokens(rng: np.random.RandomState, b: int, t: int, vocab: int) -> np.ndarray:
  return rng.randint(0, vocab, size=(b, t)).astype(np.int32)


def without_timing(summary: dict) -> dict:
  """A run's summary less its time breakdown (which differs between invocations)."""
  return {k: v for k, v in summary.items() if k != "timing"}


def modchain_right_and_wrong(task, problem):
  """Four particles of `problem` for checking step potentials: the right solution, a copy whose
  first result is off by one (both done), and each cut after its first step (not done).
  Returns (prompt ids, tokens int32[1, 4, T], lengths int32[1, 4], done bool[1, 4],
  right so far bool[4])."""
  from tts_jax.tasks import prompt_ids  # noqa: PLC0415
  tok = task.tokenizer()
  text = task.solution(problem)
  first, rest = text.split(" ; ", 1)
  head, result = first.rsplit("= ", 1)
  bad = f"{head}= {(int(result) + 1) % task.modulus} ; {rest}"
  enc = lambda s: np.asarray(tok.encode(s, add_special_tokens=False) + [tok.token_to_id("<eos>")], np.int32)  # noqa: E731
  sol, wrong = enc(text), enc(bad)
  assert len(sol) == len(wrong) and not np.array_equal(sol, wrong)
  first_end = int(np.argmax(sol == tok.token_to_id(";"))) + 1
  t = len(sol)
  tokens = np.zeros((1, 4, t), np.int32)
  tokens[0, 0], tokens[0, 1], tokens[0, 2, :first_end], tokens[0, 3, :first_end] = sol, wrong, sol[:first_end], \
      wrong[:first_end]
  lengths = np.array([[t, t, first_end, first_end]], np.int32)
  done = np.array([[True, True, False, False]])
  return prompt_ids(task, problem), tokens, lengths, done, np.array([True, False, True, False])


def policy_and_value(vocab_size: int, max_positions: int, seeds: tuple[int, int] = (3, 4)):
  """A tiny Qwen2 policy and a value model of the same shape: (lm, params, vm, vparams)."""
  from tts_jax.models import init, qwen2_config  # noqa: PLC0415
  from tts_jax.models.value import init_value  # noqa: PLC0415
  cfg = qwen2_config(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                     num_kv_heads=2, head_dim=8, max_position_embeddings=max_positions)
  lm, params = init(cfg, seed=seeds[0])
  vm, vparams = init_value(cfg, seed=seeds[1])
  return lm, params, vm, vparams


class HostScored:
  """A potential whose scores only the host computes (`needs_host`): a subclass defines
  `host_score(prompt_tokens, prompt_lengths, tokens, lengths, done, extended, capacity)` ->
  float32[B, N]. `score` reads its arrays when the loop runs from the host and calls it back
  (`jax.pure_callback`, prompts and capacity None) where a program scores by itself."""

  def needs_host(self):
    return True

  def host_init(self, prompt_tokens, prompt_lengths):
    return None

  def init(self, params, prompt_tokens, prompt_lengths, num_particles, max_new_tokens):
    return ()

  def advance(self, params, tokens, state, active):
    return state

  def score(self, params, state, tokens, lengths, done, extended):
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415
    from tts_jax.verifiers.base import host_input  # noqa: PLC0415
    fed = host_input(self, "score")
    if fed is None:
      fed = jax.pure_callback(lambda *a: self.host_score(None, None, *map(np.asarray, a), None),
                              jax.ShapeDtypeStruct(lengths.shape, jnp.float32), tokens, lengths, done, extended)
    return fed, state
