"""ModChain's step checker as array code gives the host checker's verdict on every kind of
generation: right and wrong solutions, every prefix of them (a step half written, a step
cut mid-way, done or not), corrupted tokens, special tokens mid-text, random token strings;
and as a potential it scores exactly what the host callback scores."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.tasks import ModChain, TaskChecker, prompt_ids, step_oracle
from tts_jax.tasks.modchain_checker import right_so_far


@dataclasses.dataclass(frozen=True)
class HostOnly(TaskChecker):
  """The host checker, its array version hidden: the potential takes the callback path."""

  def on_device(self):
    return None


def _generations(task, problem, rng, count: int):
  """(ids, done) pairs: solutions right and wrong, their prefixes, corrupted ones, random ones."""
  tok = task.tokenizer()
  enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
  eos, vocab = tok.token_to_id("<eos>"), 4 + len(task.words)
  right, wrong = enc(task.solution(problem)), enc(task.wrong_solution(problem, rng))
  out = [(right, True), (right + [eos], True), (wrong + [eos], True), (right, False), ([], False), ([], True)]
  while len(out) < count:
    ids = list(right if rng.random() < 0.6 else wrong)
    kind = rng.integers(0, 6)
    if kind == 1 and ids:  # one token replaced
      ids[rng.integers(0, len(ids))] = int(rng.integers(0, vocab))
    elif kind == 2:  # special tokens mid-text (decoding drops them)
      for _ in range(rng.integers(1, 3)):
        ids.insert(int(rng.integers(0, len(ids) + 1)), int(rng.choice([0, 1, 3])))
    elif kind == 3 and ids:  # a token dropped or repeated
      i = int(rng.integers(0, len(ids)))
      ids = ids[:i] + ids[i + 1:] if rng.random() < 0.5 else ids[:i] + [ids[i]] + ids[i:]
    elif kind == 4:  # random tokens, mostly words
      ids = rng.integers(4, vocab, size=rng.integers(1, 30)).tolist()
    elif kind == 5:  # words after the answer
      ids = ids + rng.integers(4, vocab, size=rng.integers(1, 3)).tolist()
    ids = ids[:rng.integers(0, len(ids) + 1)] if kind != 5 and rng.random() < 0.5 else ids  # a prefix
    out.append((ids, bool(rng.random() < 0.5)))
  return out[:count]


def _batch(task, problems, gens):
  prompts = [prompt_ids(task, p) for p in problems]
  b, n = len(problems), len(gens[0])
  pt = np.zeros((b, max(map(len, prompts)) + 3), np.int32)  # right padding past the prompt
  t = max(len(ids) for g in gens for ids, _ in g) + 2
  tokens = np.full((b, n, t), 5, np.int32)  # garbage past each length: must not be read
  lengths, done = np.zeros((b, n), np.int32), np.zeros((b, n), bool)
  for i, p in enumerate(prompts):
    pt[i, :len(p)] = p
    for j, (ids, d) in enumerate(gens[i]):
      tokens[i, j, :len(ids)], lengths[i, j], done[i, j] = ids, len(ids), d
  return prompts, pt, np.asarray([len(p) for p in prompts], np.int32), tokens, lengths, done


@pytest.fixture(scope="module")
def batch():
  task, rng = ModChain(), np.random.default_rng(0)
  problems = list(task.split("hard")[:12]) + list(task.split("ood")[:6]) + list(task.split("test")[:6])
  gens = [_generations(task, p, rng, 48) for p in problems]
  return task, gens, _batch(task, problems, gens)


def test_array_checker_equals_host_checker(batch):
  task, gens, (prompts, pt, plens, tokens, lengths, done) = batch
  got = np.asarray(jax.jit(lambda *a: right_so_far(task, *a))(pt, plens, tokens, lengths, done))
  check = TaskChecker(task)
  want = np.asarray([[check(prompts[i], ids, d) for ids, d in g] for i, g in enumerate(gens)])
  assert want.sum() > 150 and (~want).sum() > 300  # both verdicts, many times
  mismatch = np.argwhere(got != want)
  assert mismatch.size == 0, [(task.tokenizer().decode(gens[i][j][0]), gens[i][j][1], want[i, j])
                              for i, j in mismatch[:5]]


@pytest.mark.parametrize("at, word", [(2, ","), (4, "="), (-1, "?"), (-2, "7")])
def test_a_malformed_prompt_judges_everything_wrong(batch, at, word):
  """"v , l op r", "v = l = r", "? q ?", "? 7 :": not a modchain prompt ([BOS] v = l op r , ...)."""
  task, _, (_, pt, plens, tokens, lengths, done) = batch
  broken = pt.copy()
  broken[np.arange(len(pt)), at % plens if at < 0 else at] = task.tokenizer().token_to_id(word)
  assert np.asarray(right_so_far(task, pt, plens, tokens, lengths, done)).any()
  assert not np.asarray(right_so_far(task, broken, plens, tokens, lengths, done)).any()


@pytest.mark.parametrize("transform", ["log", "logit"])
def test_the_potential_scores_what_the_host_callback_scores(batch, transform):
  task, _, (_, pt, plens, tokens, lengths, done) = batch
  device, host = step_oracle(task, transform), dataclasses.replace(step_oracle(task, transform),
                                                                     checker=HostOnly(task))
  scores = []
  for pot in (device, host):
    state = pot.init(None, jnp.asarray(pt), jnp.asarray(plens), tokens.shape[1], tokens.shape[2])
    score = jax.jit(lambda s, x, n, d, pot=pot: pot.score(None, s, x, n, d, None)[0])
    scores.append(np.asarray(score(state, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(done))))
  np.testing.assert_array_equal(scores[0], scores[1])
  assert "callback" not in jax.jit(lambda s, x, n, d: device.score(None, s, x, n, d, None)[0]).lower(
      state, tokens, lengths, done).as_text()
