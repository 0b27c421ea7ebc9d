"""The real-benchmark configs end to end on tiny random checkpoints of the real
architectures (Qwen2 policy, Qwen2.5-Math-PRM-style PRM, a causal LM read as a "+"/"-"
PRM), a byte-level BPE trained here, the sample MATH file: the code path users run with
their weights, in CI."""

import json

import numpy as np
import pytest

from tts_jax.cli import main
from tts_jax.config_files import apply_overrides, load_config
from tts_jax.tasks import load_models, task_prompts, task_tokens
from tts_jax.tasks.math import QWEN_MATH_SYSTEM, SAMPLE_FILE, math_equal
from tts_jax.tasks.math.smoke import write_smoke_models


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  return write_smoke_models(str(tmp_path_factory.mktemp("smoke")))


def overrides(smoke, prm: str, out) -> list[str]:
  return [f"models.policy_path={smoke['policy']}", f"models.prm_path={prm}", f"task.tokenizer_path={smoke['policy']}",
          f"task.data_path={SAMPLE_FILE}", "num_problems=3", "budgets=(4,)", "max_new_tokens=40",
          "batch_problems=2", "models.dtype=float32", f"out_dir={out}"]


@pytest.mark.parametrize("config, prm", [("puri_table1", "prm"), ("search_and_learn", "policy")])
def test_config_runs_end_to_end(smoke, tmp_path, config, prm):
  path = f"experiments/math500/{config}.py"
  main(["run", path, "--set", *overrides(smoke, smoke[prm], tmp_path / "out")])
  lines = [json.loads(x) for x in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
  assert sorted((r["problem"], r["budget"]) for r in lines) == [(i, 4) for i in range(3)]
  exp = apply_overrides(load_config(path), overrides(smoke, smoke[prm], tmp_path / "out"))
  assert set(lines[0]["methods"]) == {m.name for m in exp.methods}
  for r in lines:
    for name, rec in r["methods"].items():
      assert rec["accuracy"] in (0.0, 1.0) or "self-consistency" in name or "majority" in name.lower()
      assert rec["flops"] > 0 and rec["generated_tokens"] > 0, (name, rec)
      if "PRM" in name:
        assert rec["verifier_tokens"] > 0, (name, rec)
  # The prompts are the chat template's, the steps end at blank-line tokens, the PRM scores vary.
  models = load_models(exp.models, exp.task)
  tok = exp.task.tokenizer()
  text = tok.decode(task_prompts(exp.task, exp.task.split("test")[:1])[0], skip_special_tokens=False)
  assert text.startswith(f"<|im_start|>system\n{QWEN_MATH_SYSTEM}<|im_end|>\n<|im_start|>user\n")
  assert text.endswith("<|im_start|>assistant\n")
  assert all("\n\n" in tok.decode([i], skip_special_tokens=False) for i in task_tokens(exp.task).steps)
  ids = np.asarray([task_prompts(exp.task, exp.task.split("test")[:1])[0]], np.int32)
  values = np.asarray(models.prm.values(models.prm_params, ids))
  assert np.isfinite(values).all() and values.std() > 0
  # The task's grader reads the reference answers of the sample file.
  p = exp.task.split("test")[1]
  assert exp.task.verify(p, p.solution) and not exp.task.verify(p, "\\boxed{7}") and math_equal(p.answer, p.answer)


def test_models_with_another_tokenizer_are_refused(smoke, tmp_path):
  from tts_jax.tasks import HFModels
  from tts_jax.tasks.math.smoke import write_tokenizer
  other = tmp_path / "other"
  import shutil
  shutil.copytree(smoke["prm"], other)
  write_tokenizer(str(other), vocab_size=400)
  with pytest.raises(ValueError, match="another tokenizer than the policy"):
    load_models(HFModels(policy_path=smoke["policy"], prm_path=str(other)), None)
  # A PRM that reads its own format re-tokenizes the text: its vocabulary is its own business.
  from tts_jax.models.tokenizer import Tokenizer
  models = load_models(HFModels(policy_path=smoke["policy"], prm_path=str(other), prm_step_tag="qwen"), None)
  assert models.prm_tokenizer.backend.get_vocab() != Tokenizer.from_directory(smoke["policy"]).backend.get_vocab()


def test_a_prm_with_step_tags_reads_its_own_format(smoke, tmp_path):
  """models.prm_step_tag=qwen (the Puri config's own): the pool's PRM step scores are the
  PRM's values at each "<extra_0>" of its own conversation (system + problem, steps joined by
  the tag), equal to a full forward over that text. (The config's run with it is
  `test_config_runs_end_to_end[puri_table1-prm]`.)"""
  from tts_jax.eval.batch import Batch
  from tts_jax.models import hf
  from tts_jax.tasks.math import StepTagFormat
  over = overrides(smoke, smoke["prm"], tmp_path / "out")
  exp = apply_overrides(load_config("experiments/math500/puri_table1.py"), over)
  models = load_models(exp.models, exp.task)
  assert models.prm_format == StepTagFormat.qwen_math_prm()
  batch = Batch(experiment=exp, models=models, problems=list(exp.task.split("test")[:2]), start=0)
  pool = batch.pool(("prm",))
  vm, params, tok = hf.load_reward_model(smoke["prm"])
  tag = tok.token_to_id("<extra_0>")
  for i, problem in enumerate(batch.problems):
    for j in range(2):
      prompt, ids = models.prm_format.encode(tok, problem.problem, batch.completions.texts[i][j])
      seq = np.asarray([prompt + ids], np.int32)
      want = 1 / (1 + np.exp(-np.asarray(vm.values(params, seq))[0, len(prompt):]))[np.asarray(ids) == tag]
      got = pool.prm_steps[i, j][pool.prm_mask[i, j]]
      np.testing.assert_allclose(got, want, atol=2e-5)
      assert len(got) >= 1


def test_the_engine_reads_a_step_tag_prm_as_pool_scoring_does(smoke, tmp_path):
  """Inside the engine a step-tag PRM reads what pool scoring gives it: its own prompt and
  the steps re-tokenized, each followed by "<extra_0>"; a particle's score is its steps'
  scores at the tags (here "prod": all of them), equal to a full forward over that text, at
  the end and at a step end mid-way."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  from tts_jax.eval.search_methods import prm_potential
  from tts_jax.models import hf
  from tts_jax.models.padding import pad_prompts
  from tts_jax.search import best_of_n
  from tts_jax.smc import run_smc
  from tts_jax.tasks import completion_text
  exp = apply_overrides(load_config("experiments/math500/puri_table1.py"), overrides(smoke, smoke["prm"], tmp_path))
  models, task = load_models(exp.models, exp.task), exp.task
  problems = list(task.split("test")[:2])
  tokens, lengths = pad_prompts(task_prompts(task, problems), pad_id=task_tokens(task).pad)
  ids = task_tokens(task)
  cfg = best_of_n(3, max_new_tokens=40, delimiters=ids.steps, stop_tokens=ids.stop, pad_id=ids.pad)
  pot = prm_potential(models, task, aggregate="prod", transform="log")
  p = run_smc(models.policy, models.policy_params, tokens, lengths, jax.random.key(3), cfg=cfg, potential=pot,
              potential_params=models.prm_params)
  vm, params, tok = hf.load_reward_model(smoke["prm"])
  tag = tok.token_to_id("<extra_0>")

  def want(problem, text):  # sum of log sigmoid at the tags of one full forward
    prompt, seq = models.prm_format.encode(tok, problem.problem, text)
    v = np.asarray(vm.values(params, np.asarray([prompt + seq], np.int32)), np.float64)[0, len(prompt):]
    return float(np.sum(-np.log1p(np.exp(-v[np.asarray(seq) == tag])))), len(prompt), len(seq)

  read, steps = 0, 0
  for i, problem in enumerate(problems):
    for j in range(3):
      text = completion_text(task, p.tokens[i, j, :p.length[i, j]])
      got, prompt_len, seq_len = want(problem, text)
      np.testing.assert_allclose(float(p.log_potential[i, j]), got, atol=1e-4)
      steps += int(p.steps[i, j])
      read += seq_len
    read += prompt_len
  # Every score re-read the particles that grew: more ids than one read of each final text.
  assert int(p.steps.max()) > 1 and int(np.sum(p.verified)) > read
  # Mid-way: a particle cut after its first step end, not done, scores that step alone.
  i, j = np.unravel_index(int(np.argmax(np.asarray(p.steps))), p.steps.shape)
  seq = np.asarray(p.tokens[i, j, :p.length[i, j]])
  first = int(np.nonzero(np.isin(seq, ids.steps))[0][0]) + 1
  part = np.full((1, 1, 40), ids.pad, np.int32)
  part[0, 0, :first] = seq[:first]
  state = pot.init(models.prm_params, jnp.asarray(tokens[i:i + 1]), jnp.asarray(lengths[i:i + 1]), 1, 40)
  phi, _ = jax.jit(pot.score)(models.prm_params, state, jnp.asarray(part), jnp.asarray([[first]]),
                              jnp.asarray([[False]]), jnp.asarray([[True]]))
  got, _, _ = want(problems[i], completion_text(task, seq[:first]))
  np.testing.assert_allclose(float(phi[0, 0]), got, atol=1e-4)
  # Read one particle at a time (chunks of at most 8 ids per prompt): the same scores.
  final = (models.prm_params, pot.init(models.prm_params, jnp.asarray(tokens), jnp.asarray(lengths), 3, 40),
           p.tokens, p.length, p.done, jnp.ones(p.shape, bool))
  whole, chunked = jax.jit(pot.score)(*final)[0], jax.jit(dataclasses.replace(pot, tokens_per_read=8).score)(*final)[0]
  np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), atol=1e-5)
  np.testing.assert_allclose(np.asarray(whole), np.asarray(p.log_potential), atol=1e-4)
  # More PRM ids than the potential allows: an error that names the bound, not a cut-off read.
  with pytest.raises(Exception, match="more than the 2 allowed"):
    jax.jit(dataclasses.replace(pot, max_tokens=2).score)(
        models.prm_params, state, jnp.asarray(part), jnp.asarray([[first]]), jnp.asarray([[False]]),
        jnp.asarray([[True]]))


def test_a_step_tag_reader_scores_only_whole_steps_until_done(smoke):
  """A token that carries text past the step's blank line (".\\n\\nThe") ends the step: until
  the particle is done, the PRM reads up to the blank line; once done, all of it."""
  from tts_jax.models.tokenizer import Tokenizer
  from tts_jax.tasks.math import MathProblem, StepTagFormat, StepTagReader

  class Pieces:  # a policy tokenizer with the merged token
    pieces = {1: "First step", 2: ".\n\nThe", 3: " end"}

    def decode(self, ids, skip_special_tokens=True):
      return "".join(self.pieces[int(i)] for i in ids)

  class Task:
    def tokenizer(self):
      return Pieces()

    def problem_of_prompt(self, ids):
      return MathProblem(problem="What is 1+1?", answer="2")

  fmt, tok = StepTagFormat.qwen_math_prm(), Tokenizer.from_directory(smoke["prm"])
  reader = StepTagReader(Task(), fmt, tok)
  tag = fmt.tag_id(tok)
  for ids, done, text in (([1, 2], False, "First step.\n\n"), ([1, 2], True, "First step.\n\nThe"),
                          ([1, 2, 3], False, "First step.\n\nThe end")):
    want = fmt.completion_ids(tok, text)
    assert reader.completion([0], ids, done) == (want, [i == tag for i in want])
  assert fmt.completion_ids(tok, "First step.\n\nThe").count(tag) == 2


def test_rlhflow_prm_reads_its_conversation(smoke, tmp_path):
  """models.prm_step_tag=rlhflow (search-and-learn's RLHFlow PRM, the config's own): the PRM
  reads a conversation in its chat template, user turns the steps (the first "problem
  step1"), assistant turns "+", each step scored by p("+") against p("-") at the token before
  its "+". The ids are the whole conversation's as the template renders and the tokenizer
  encodes it; pool scores equal a full forward over them. (The engines read the same ids and
  mask through `StepTagReader`, tested on the qwen format above; beam search and DVTS run
  with this one in `test_config_runs_end_to_end[search_and_learn-policy]`.)"""
  from tts_jax.eval.batch import Batch
  from tts_jax.models import hf
  from tts_jax.tasks.math import ChatTurnFormat
  from tts_jax.tasks.math.prm_format import split_steps
  over = overrides(smoke, smoke["policy"], tmp_path / "out")
  exp = apply_overrides(load_config("experiments/math500/search_and_learn.py"), over)
  models, task = load_models(exp.models, exp.task), exp.task
  fmt = models.prm_format
  assert fmt == ChatTurnFormat(good="+")
  vm, params, tok = hf.load_reward_model(smoke["policy"], good_token="+", bad_token="-")
  plus = tok.encode("+", add_special_tokens=False)[0]

  def want(problem, text):  # step log-probabilities of "+" against "-"
    steps = split_steps(text, "\n\n")
    conversation = []
    for k, step in enumerate(steps):
      conversation += [{"role": "user", "content": f"{problem.problem} {step}" if k == 0 else step},
                       {"role": "assistant", "content": "+"}]
    whole = tok.encode(tok.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)
    prompt, seq = fmt.encode(tok, problem.problem, text)
    assert prompt + seq == whole  # read piecewise, the same ids as the whole conversation
    v = np.asarray(vm.values(params, np.asarray([whole], np.int32)), np.float64)[0]
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    at = [i for i in range(len(whole) - 1) if whole[i + 1] == plus and whole[i + 1 - len(header):i + 1] == header]
    assert len(at) == len(steps) and [i - len(prompt) for i in at] == list(np.nonzero(fmt.read_mask(tok, seq))[0])
    return -np.log1p(np.exp(-v[at]))

  problems = list(task.split("test")[:2])
  batch = Batch(experiment=exp, models=models, problems=problems, start=0)
  pool = batch.pool(("prm",))
  for i, problem in enumerate(problems):
    for j in range(2):
      got = np.log(pool.prm_steps[i, j][pool.prm_mask[i, j]])
      np.testing.assert_allclose(got, want(problem, batch.completions.texts[i][j]), atol=2e-5)


def test_rlhflow_format_under_the_llama3_template(smoke):
  """RLHFlow's PRMs use Llama-3.1's template (a dated system header, trimmed turns): on the
  sample file's reference solutions, the prompt and completion ids read piecewise are the whole
  conversation's ids, and there is one read position per step."""
  from tts_jax.models.tokenizer import Tokenizer
  from tts_jax.tasks.math import LLAMA3_TEMPLATE, ChatTurnFormat, read_problems
  from tts_jax.tasks.math.prm_format import split_steps
  tok = Tokenizer.from_directory(smoke["policy"])
  tok.chat_template, tok._compiled = LLAMA3_TEMPLATE, None
  fmt = ChatTurnFormat()
  for problem in read_problems(SAMPLE_FILE):
    steps = split_steps(problem.solution, "\n\n")
    conversation = []
    for k, step in enumerate(steps):
      conversation += [{"role": "user", "content": f"{problem.problem} {step}" if k == 0 else step},
                       {"role": "assistant", "content": "+"}]
    text = tok.apply_chat_template(conversation, tokenize=False)
    assert text.startswith("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date")
    prompt, seq = fmt.encode(tok, problem.problem, problem.solution)
    assert prompt + seq == tok.encode(text, add_special_tokens=False)
    assert sum(fmt.read_mask(tok, seq)) == len(steps) >= 1


@pytest.mark.parametrize("strategy", ["beam", "pf"])
def test_host_steps_give_the_one_program_run(smoke, tmp_path, monkeypatch, strategy):
  """A step-tag PRM's engine runs from the host (`tts_jax.smc.host_steps`: the reader between
  programs, no callback) and gives the particles of the one-program run that calls the reader
  back, bit for bit: every field and cache, through a cache growth (capacities 32, 40)."""
  import jax
  from tts_jax.eval.search_methods import prm_potential
  from tts_jax.models.padding import pad_prompts
  from tts_jax.sampling.inputs import prompt_keys
  from tts_jax.search import beam_search, particle_filter
  from tts_jax.smc import run_smc
  from tts_jax.smc.driver import _run_jit
  from tts_jax.smc.engine import SMCModels, SMCParams, cache_schedule
  from tts_jax.traced import knobs_of, program_of
  exp = apply_overrides(load_config("experiments/math500/puri_table1.py"), overrides(smoke, smoke["prm"], tmp_path))
  models, task = load_models(exp.models, exp.task), exp.task
  tokens, lengths = pad_prompts(task_prompts(task, list(task.split("test")[:2])), pad_id=task_tokens(task).pad)
  ids = task_tokens(task)
  kw = dict(max_new_tokens=40, delimiters=ids.steps, stop_tokens=ids.stop, pad_id=ids.pad, max_step_tokens=8)
  cfg = beam_search(4, 2, **kw) if strategy == "beam" else particle_filter(4, ess_threshold=1.0, **kw)
  pot = prm_potential(models, task, aggregate="last", transform="logit")
  engine = SMCModels(policy=models.policy, potential=program_of(pot))
  assert len(cache_schedule(engine, cfg)) == 2
  with monkeypatch.context() as m:  # no program of the host-stepped run calls back
    m.setattr(jax, "pure_callback", lambda *a, **k: pytest.fail("a host callback in a host-stepped run"))
    host = run_smc(models.policy, models.policy_params, tokens, lengths, jax.random.key(3), cfg=cfg, potential=pot,
                   potential_params=models.prm_params)
  one, flags = _run_jit(engine, SMCParams(policy=models.policy_params, potential=models.prm_params),
                        jax.numpy.asarray(tokens), jax.numpy.asarray(lengths), prompt_keys(jax.random.key(3), 2), None,
                        {"cfg": cfg.knobs(), "potential": knobs_of(pot)}, cfg.program())
  assert not np.asarray(flags).any()
  got, want = jax.tree_util.tree_leaves_with_path(host), jax.tree_util.tree_leaves_with_path(one)
  assert [k for k, _ in got] == [k for k, _ in want]
  for (path, x), (_, y) in zip(got, want):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
  assert int(host.num_resamples.sum()) > 0 and int(host.verified.sum()) > 0  # selection moved, the PRM read


@pytest.mark.parametrize("search", ["mcts", "latts"])
def test_mcts_and_latts_read_a_step_tag_prm_between_programs(smoke, tmp_path, monkeypatch, search):
  """MCTS and local acceptance (LATTS) with the runner's step-tag PRM (whole sequences, read
  by the host reader): their loops run as programs with the reader between them, none calling
  back, and give the one-program runs (reader called back) bit for bit."""
  import importlib
  import jax
  from tts_jax.eval.tree_methods import _prm_outcome
  from tts_jax.models.padding import pad_prompts
  from tts_jax.sampling import SamplingParams
  from tts_jax.sampling.inputs import prompt_keys
  mcts, latts = (importlib.import_module(f"tts_jax.search.{m}") for m in ("mcts", "latts"))  # (the package's
  # `mcts` is the function)
  exp = apply_overrides(load_config("experiments/math500/puri_table1.py"), overrides(smoke, smoke["prm"], tmp_path))
  models, task = load_models(exp.models, exp.task), exp.task
  tokens, lengths = pad_prompts(task_prompts(task, list(task.split("test")[:2])), pad_id=task_tokens(task).pad)
  ids = task_tokens(task)
  pot = _prm_outcome(models, task)
  assert pot.needs_host()
  common = dict(t=24, delimiters=tuple(ids.steps), stop_tokens=tuple(ids.stop), pad_id=ids.pad, proposal=SamplingParams())
  if search == "mcts":
    module = mcts
    setup = mcts._Search(models.policy, simulations=3, k=2, c_puct=1.0, backup="mean", page_size=16, num_pages=0,
                         share_kv=True, **common)
    run = lambda: mcts.mcts(models.policy, models.policy_params, tokens, lengths, jax.random.key(3),  # noqa: E731
                            potential=pot, potential_params=models.prm_params, simulations=3, expansions=2,
                            max_new_tokens=24, delimiters=ids.steps, stop_tokens=ids.stop, pad_id=ids.pad)
    one_program = mcts._mcts_jit
  else:
    module = latts
    setup = latts._Search(models.policy, n=2, k=3, **common)
    run = lambda: latts.local_acceptance(models.policy, models.policy_params, tokens, lengths,  # noqa: E731
                                         jax.random.key(3), potential=pot, potential_params=models.prm_params,
                                         num_samples=2, max_tries=3, max_new_tokens=24, delimiters=ids.steps,
                                         stop_tokens=ids.stop, pad_id=ids.pad)
    one_program = latts._local_acceptance_jit
  with monkeypatch.context() as m:  # no program of the host-driven run calls back (traced first)
    m.setattr(jax, "pure_callback", lambda *a, **k: pytest.fail(f"a host callback in {module.__name__}"))
    host = run()
  one = one_program(setup, models.policy_params, pot, models.prm_params, jax.numpy.asarray(tokens),
                    jax.numpy.asarray(lengths), prompt_keys(jax.random.key(3), 2))
  got, want = jax.tree_util.tree_leaves_with_path(host), jax.tree_util.tree_leaves_with_path(one)
  assert [k for k, _ in got] == [k for k, _ in want]
  for (path, x), (_, y) in zip(got, want):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
  scores = np.asarray(host.value if search == "mcts" else host.log_potential)
  assert len(np.unique(scores)) > 2  # the PRM's reads differ between sequences


def test_the_puri_config_compiles_nothing_the_second_time(smoke, tmp_path):
  """Its step-tag PRM engines hold no host callback (they run from the host, per device on a
  mesh), so a second run loads every program from the persistent compilation cache, on one
  device and on a mesh of two (its own cache: other programs); all four runs write the same
  results.jsonl."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}

  def run(out, devices):
    args = ["run", "experiments/math500/puri_table1.py", "--set", *overrides(smoke, smoke["prm"], out)]
    here = dict(env, TTS_JAX_COMPILATION_CACHE=str(tmp_path / f"cache{devices}"),
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    mesh = ["--mesh", f"data={devices}"] if devices > 1 else []
    subprocess.run([sys.executable, "-m", "tts_jax.cli", *args, *mesh], env=here, cwd=root, check=True,
                   capture_output=True)
    return json.loads((out / "summary.json").read_text())["timing"], (out / "results.jsonl").read_bytes()

  runs = {(devices, i): run(tmp_path / f"{devices}-{i}", devices) for devices in (1, 2) for i in (1, 2)}
  for devices in (1, 2):
    first, second = runs[devices, 1][0], runs[devices, 2][0]
    assert first["compilations"] > 0, first
    assert second["compilations"] == 0 and second["compilation_cache_hits"] > 0, second
  assert runs[2, 1][0]["mesh"].startswith("mesh data=2")
  assert len({results for _, results in runs.values()}) == 1
