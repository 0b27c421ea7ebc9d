"""Real math benchmarks: file readers (MATH-500, GSM8K, AIME layouts; JSONL, JSON, parquet),
answer extraction, math-verify grading on tricky equivalences, the papers' chat prompts
rendered as transformers renders them, and blank-line step delimiters of a byte-level BPE."""

import json

import pytest

from tts_jax.models.tokenizer import Tokenizer
from tts_jax.tasks.math import (LLAMA3_TEMPLATE, QWEN25_TEMPLATE, QWEN_MATH_SYSTEM, SAMPLE_FILE, chat_prompt,
                                extract_answer, gsm8k_final, last_boxed, math_equal, math_messages, read_problems,
                                step_delimiter_ids)


def test_the_sample_file_reads_and_grades_its_own_solutions():
  problems = read_problems(SAMPLE_FILE)
  assert len(problems) == 20 and len({p.unique_id for p in problems}) == 20
  assert problems[1].answer == "\\frac{3}{4}" and problems[1].level == 1 and problems[1].subject == "Prealgebra"
  assert all(math_equal(p.answer, p.solution) for p in problems)
  # Each problem's solution is graded wrong against every other answer that differs.
  wrong = [(a.answer, b.solution) for a in problems[:6] for b in problems[:6] if a.answer != b.answer]
  assert not any(math_equal(a, s) for a, s in wrong)
  assert [p.problem for p in read_problems(SAMPLE_FILE, limit=3)] == [p.problem for p in problems[:3]]


def test_gsm8k_and_aime_layouts(tmp_path):
  gsm = tmp_path / "gsm8k.jsonl"
  gsm.write_text(json.dumps({"question": "Tom has 3 boxes of 4 apples. How many?",
                             "answer": "3 boxes of 4 is 3*4=<<3*4=12>>12 apples.\n#### 12"}) + "\n"
                 + json.dumps({"question": "Big", "answer": "so\n#### 1,234"}) + "\n")
  p = read_problems(str(gsm))
  assert p[0].answer == "12" and p[0].solution.endswith("12 apples.") and p[1].answer == "1234"
  import pyarrow as pa
  import pyarrow.parquet as pq
  aime = tmp_path / "aime.parquet"
  pq.write_table(pa.table({"ID": ["2024-I-1"], "Problem": ["Find $n$."], "Solution": ["..."], "Answer": [204]}), aime)
  (q,) = read_problems(str(aime))
  assert (q.problem, q.answer, q.unique_id) == ("Find $n$.", "204", "2024-I-1")
  aime25 = tmp_path / "aime25.json"
  aime25.write_text(json.dumps({"test": [{"question": "Q", "answer": "70"}]}))
  assert read_problems(str(aime25))[0].answer == "70"
  no_answer = tmp_path / "math.jsonl"  # MATH without an answer column: the solution's last box
  no_answer.write_text(json.dumps({"problem": "P", "solution": "so $\\boxed{\\frac{1}{2}}$", "level": "Level 3"}))
  assert read_problems(str(no_answer))[0].answer == "\\frac{1}{2}"


@pytest.mark.parametrize("content, match", [
    (None, "problem file not found"),
    ('{"problem": "x"}\n', r"problem 0: no 'answer' column"),
    ('{"answer": "1"}\n', r"no 'problem' or 'question' column \(columns: \['answer'\]\)"),
    ('{"problem": "x", "answer": "1"}\n{oops\n', r"bad.jsonl:2: not a JSON line"),
    ("", "no problems"),
])
def test_bad_problem_files_name_the_problem(tmp_path, content, match):
  path = tmp_path / "bad.jsonl"
  if content is not None:
    path.write_text(content)
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    read_problems(str(path))
  other = tmp_path / "problems.csv"
  other.write_text("problem,answer\n")
  with pytest.raises(ValueError, match="unknown file type '.csv'"):
    read_problems(str(other))


def test_answer_extraction():
  assert last_boxed("a \\boxed{1} then \\boxed{\\frac{a}{b^{2}}} end") == "\\frac{a}{b^{2}}"
  assert last_boxed("\\boxed 7.") == "7" and last_boxed("\\fbox{x+1}") == "x+1"
  assert last_boxed("\\boxed{2} and \\boxed{3") == "2"  # an unclosed box is skipped
  assert last_boxed("no box") is None
  assert gsm8k_final("work\n#### $1,000.") == "1000" and gsm8k_final("none") is None
  assert extract_answer("x\n#### 5") == "5" and extract_answer("\\boxed{4}\n#### 5") == "4"


@pytest.mark.parametrize("reference, prediction, equal", [
    ("0.75", "so $\\boxed{\\dfrac34}$", True),             # \dfrac, braces left out
    ("\\frac{1}{2}", "1/2", True),                          # \frac vs /
    ("-\\frac{1}{3}", "\\boxed{-1/3}", True),
    ("50\\%", "\\boxed{0.5}", True),                        # percentages
    ("[1,2)", "\\boxed{[1, 2)}", True),                      # intervals
    ("[1,2)", "\\boxed{[1,2]}", False),
    ("3, 5", "\\boxed{5, 3}", True),                        # several answers, any order
    ("3, 5", "\\boxed{3}", False),
    ("10", "\\boxed{10\\text{ cm}}", True),                  # units
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\frac{1}{2}\\sqrt3}", True),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", True),                  # symbolic equivalence
    ("1000", "#### 1,000", True),                             # GSM8K answer line
    ("\\frac{1}{2}", "\\boxed{0.4999}", False),
    ("2", "\\boxed{2} first, finally \\boxed{3}", False),    # the last box counts
    ("9\\pi", "The area is $\\boxed{9\\pi}$.", True),
    ("5", "the answer is 5", True),                          # no box: math-verify's extraction
    ("(1,2]", "(1, 2]", True),                               # bare answers (no box): read as answers
    ("(-\\infty, 3)", "(-\\infty,3)", True),
    ("(1,2]", "[1, 2]", False),
    ("\\frac{1}{2}", "0.5", True),
])
def test_math_verify_equivalences(reference, prediction, equal):
  assert math_equal(reference, prediction) is equal


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  """A byte-level BPE tokenizer trained here on math text (blank lines between steps), saved
  with Qwen- and Llama-style special tokens as a transformers tokenizer."""
  from tokenizers import Tokenizer as HFTokenizer
  from tokenizers import decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
              "<|end_header_id|>", "<|eot_id|>"]
  tok = HFTokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  steps = [f"Step {i}: we compute {i} + {i} = {2 * i}." for i in range(40)]
  corpus = ["\n\n".join(steps[i:i + 4]) + ".\n\n" + "x)\n\n y \n\n" for i in range(0, 36)] * 20
  tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path = tmp_path_factory.mktemp("bpe")
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>")
  fast.save_pretrained(path)
  return str(path), fast


@pytest.mark.parametrize("template, style", [(QWEN25_TEMPLATE, "qwen"), (LLAMA3_TEMPLATE, "llama")],
                         ids=["qwen", "llama"])
def test_chat_prompts_render_as_transformers_renders_them(bpe_dir, template, style):
  path, fast = bpe_dir
  fast.chat_template = template
  ours = Tokenizer.from_directory(path)
  assert ours.chat_template is None  # the saved directory has none: chat_prompt falls back to `style`
  messages = math_messages("What is $1 + 1$?\n\nShow your work.", style)
  assert messages[0]["content"] == QWEN_MATH_SYSTEM
  text = chat_prompt(ours, messages, style, tokenize=False)
  assert text == fast.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert chat_prompt(ours, messages, style) == fast.apply_chat_template(messages, tokenize=True, return_dict=False,
                                                                          add_generation_prompt=True)
  if style == "qwen":
    assert text.startswith("<|im_start|>system\nPlease reason step by step") and text.endswith("<|im_start|>assistant\n")
  else:
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
  # Without a system message the Qwen template writes its default one, as transformers does.
  plain = math_messages("Q", "plain")
  assert chat_prompt(ours, plain, style, tokenize=False) == fast.apply_chat_template(plain, tokenize=False,
                                                                                     add_generation_prompt=True)


def test_blank_line_step_delimiters_of_a_byte_level_bpe(bpe_dir):
  path, _ = bpe_dir
  tok = Tokenizer.from_directory(path)
  ids = step_delimiter_ids(tok)
  texts = {i: tok.decode([i], skip_special_tokens=False) for i in ids}
  assert all("\n\n" in t for t in texts.values())
  assert any(t != "\n\n" and t.endswith("\n\n") for t in texts.values()), texts  # merged, e.g. ".\n\n"
  # Every blank line of an encoded text falls inside a delimiter token, and no other token holds one.
  text = "Step 3: we compute 3 + 3 = 6.\n\nStep 4: we compute 4 + 4 = 8.\n\nx)\n\n y \n\nso 12"
  enc = tok.encode(text, add_special_tokens=False)
  pieces = [tok.decode([i], skip_special_tokens=False) for i in enc]
  assert [("\n\n" in p) for p in pieces] == [(i in ids) for i in enc]
  assert sum(p.count("\n\n") for p in pieces if "\n\n" in p) == text.count("\n\n")
  with pytest.raises(ValueError, match="no token of the vocabulary contains '@@@'"):
    step_delimiter_ids(tok, "@@@")
