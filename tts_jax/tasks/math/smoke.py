"""Tiny random checkpoints of the papers' architectures, for running the real-benchmark
configs end to end anywhere (CI, a laptop) before the user's weights are at hand.

    write_smoke_models("runs/smoke-models")   # policy/ (Qwen2), prm/ (Qwen2.5-Math-PRM style), orm/
    tts-jax run experiments/math500/puri_table1.py --set models.policy_path=runs/smoke-models/policy \\
        models.prm_path=runs/smoke-models/prm task.tokenizer_path=runs/smoke-models/policy ...

All three share one byte-level BPE tokenizer trained here on the sample problems, with the
Qwen2.5 chat template and special tokens. Their answers are noise; the code path is the real one.
"""

from __future__ import annotations

import json
import os
import shutil

from tts_jax.tasks.math.data import SAMPLE_FILE, read_problems
from tts_jax.tasks.math.prompts import QWEN25_TEMPLATE

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]  # <extra_0>: Qwen2.5-Math-PRM's step tag
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def write_tokenizer(path: str, vocab_size: int = 512) -> None:
  """A byte-level BPE trained on the sample problems and solutions, saved as tokenizer.json +
  tokenizer_config.json (Qwen2.5's special tokens and chat template)."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
  tok = Tokenizer(models.BPE())
  # Qwen2's pre-tokenizer: punctuation keeps its following newlines (".\n\n" is one piece).
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  texts = [p.problem + "\n\n" + p.solution for p in read_problems(SAMPLE_FILE)]
  tok.train_from_iterator(texts * 4, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                         show_progress=False))
  os.makedirs(path, exist_ok=True)
  tok.save(os.path.join(path, "tokenizer.json"))
  with open(os.path.join(path, "tokenizer_config.json"), "w") as fh:
    json.dump({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
               "chat_template": QWEN25_TEMPLATE}, fh, indent=1)


def write_smoke_models(root: str, seed: int = 0, hidden: int = 64, layers: int = 2) -> dict[str, str]:
  """Writes policy/ (Qwen2ForCausalLM), prm/ (Qwen2ForProcessRewardModel) and orm/
  (Qwen2ForSequenceClassification) under `root`; returns their paths."""
  from tts_jax.models import hf, init  # noqa: PLC0415
  from tts_jax.models.config import ModelConfig  # noqa: PLC0415
  from tts_jax.models.reward import RewardHead, init_reward  # noqa: PLC0415
  paths = {k: os.path.join(root, k) for k in ("policy", "prm", "orm")}
  write_tokenizer(paths["policy"])
  from tts_jax.models.tokenizer import Tokenizer  # noqa: PLC0415
  vocab = Tokenizer.from_directory(paths["policy"]).vocab_size
  cfg = ModelConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_layers=layers,
                    num_heads=4, num_kv_heads=2, head_dim=hidden // 4, attention_bias=True, family="qwen2",
                    max_position_embeddings=2048, tie_word_embeddings=True)
  _, params = init(cfg, seed)
  hf.save_pretrained(paths["policy"], cfg, params, "Qwen2ForCausalLM")
  for role, arch, head in (("prm", "Qwen2ForProcessRewardModel", RewardHead("two_layer")),
                           ("orm", "Qwen2ForSequenceClassification", RewardHead("seqcls", labels=1))):
    vm, vparams = init_reward(cfg, head, seed + 1)
    hf.save_pretrained(paths[role], vm.config, vparams, arch)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # the policy's tokenizer, shared
      shutil.copy(os.path.join(paths["policy"], f), paths[role])
  return paths
