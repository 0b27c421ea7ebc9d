"""Prompts of the math papers' models, rendered exactly as `transformers`' `apply_chat_template`.

    messages = math_messages(problem, style="qwen")      # system: QWEN_MATH_SYSTEM
    ids = chat_prompt(tokenizer, messages)               # the model's own template, else ours

A model directory's own chat template (tokenizer_config.json or chat_template.jinja) is
always used when present. `QWEN25_TEMPLATE` and `LLAMA3_TEMPLATE` are the Qwen2.5 /
Qwen2.5-Math instruct template and the Llama-3.1/3.2 instruct template without their
tool-calling branches, for directories that ship none (e.g. the tiny random checkpoints
of the smoke configs).
"""

from __future__ import annotations

from typing import Literal

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")

TEMPLATES = {"qwen": QWEN25_TEMPLATE, "llama": LLAMA3_TEMPLATE}

Style = Literal["qwen", "llama", "plain"]


def math_messages(problem: str, style: Style = "qwen") -> list[dict[str, str]]:
  """The conversation the papers use: Qwen2.5-Math: the system prompt `QWEN_MATH_SYSTEM` and
  the problem as the user turn; Llama-3.x (search-and-learn): the same instruction as the
  system prompt; "plain": the problem alone."""
  if style in ("qwen", "llama"):
    return [{"role": "system", "content": QWEN_MATH_SYSTEM}, {"role": "user", "content": problem}]
  if style == "plain":
    return [{"role": "user", "content": problem}]
  raise ValueError(f"unknown prompt style {style!r}; use 'qwen', 'llama' or 'plain'")


def chat_prompt(tokenizer, messages: list[dict[str, str]], style: Style | None = None, *,
                tokenize: bool = True, **variables) -> list[int] | str:
  """`messages` rendered with the tokenizer's own chat template, or, when it has none, with
  `TEMPLATES[style]`; the assistant header appended (the model answers next). Returns ids
  (encoded without adding special tokens: the template writes them) or the text."""
  if tokenizer.chat_template is None:
    if style not in TEMPLATES:
      raise ValueError(f"the tokenizer has no chat template; pass style='qwen' or 'llama' (got {style!r})")
    tokenizer.chat_template, tokenizer._compiled = TEMPLATES[style], None
  return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=tokenize, **variables)
