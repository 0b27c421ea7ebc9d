"""Real math benchmarks: MATH-500, GSM8K and AIME files, answer extraction, math-verify
grading, the prompts of the Qwen2.5-Math and Llama-3.x instruct models, and step
delimiters of real tokenizers."""

from tts_jax.tasks.math.answers import extract_answer, gsm8k_final, last_boxed, math_equal
from tts_jax.tasks.math.data import SAMPLE_FILE, MathProblem, read_problems
from tts_jax.tasks.math.prm_format import ChatTurnFormat, StepTagFormat, StepTagReader
from tts_jax.tasks.math.prompts import (LLAMA3_TEMPLATE, QWEN25_TEMPLATE, QWEN_MATH_SYSTEM, chat_prompt,
                                        math_messages)
from tts_jax.tasks.math.steps import step_delimiter_ids
from tts_jax.tasks.math.task import MathTask

__all__ = ["extract_answer", "gsm8k_final", "last_boxed", "math_equal", "SAMPLE_FILE", "MathProblem",
           "read_problems", "LLAMA3_TEMPLATE", "QWEN25_TEMPLATE", "QWEN_MATH_SYSTEM", "chat_prompt", "math_messages",
           "step_delimiter_ids", "MathTask", "StepTagFormat", "StepTagReader",
           "ChatTurnFormat"]
