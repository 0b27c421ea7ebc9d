"""Slim-SC: thought similarities and the pruning replay equal host loops; in the runner it
stops redundant chains (fewer tokens than majority vote) and survives a resume."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.selection.thoughts import prune_redundant, pruned_lengths, thought_similarity

STEP = 9


def _random_chains(rng, p, n, length):
  """Chains over a 4-token alphabet with step delimiters (similar thoughts are common)."""
  tokens = rng.integers(0, 4, (p, n, length))
  tokens[rng.random((p, n, length)) < 0.25] = STEP
  lengths = rng.integers(0, length + 1, (p, n))
  return tokens.astype(np.int32), lengths.astype(np.int32)


def test_thought_similarity_is_jaccard_of_ngram_sets():
  rng = np.random.default_rng(0)
  tokens, lengths = _random_chains(rng, 2, 5, 14)
  sim, ends = thought_similarity(tokens, lengths, (STEP,), max_steps=4, ngram=2)
  for i in range(2):
    split = []
    for j in range(5):
      seq, th, e, cur = list(tokens[i, j, :lengths[i, j]]), [], [], []
      for pos, x in enumerate(seq):
        if x == STEP:
          th.append(tuple(cur))
          e.append(pos + 1)
          cur = []
        else:
          cur.append(int(x))
      split.append((th, e))
    for t in range(4):
      for a, b in itertools.product(range(5), repeat=2):
        ta, tb = split[a][0], split[b][0]
        if t < len(ta) and t < len(tb):
          g = lambda x: {x} if len(x) <= 2 else {x[k:k + 2] for k in range(len(x) - 1)}  # noqa: E731
          want = len(g(ta[t]) & g(tb[t])) / len(g(ta[t]) | g(tb[t]))
        else:
          want = 0.0
        assert sim[i, t, a, b] == pytest.approx(want)
      for j in range(5):
        e = split[j][1]
        assert ends[i, j, t] == (e[t] if t < len(e) else -1)


def _host_prune(sim, ends, rank, member, threshold):
  n, steps = len(rank), sim.shape[0]
  stopped_at = np.full(n, -1)
  order = np.argsort(rank)
  for t in range(steps):
    running = [j for j in order if member[j] and stopped_at[j] < 0 and ends[j, t] >= 0]
    kept = []
    for j in running:
      if any(sim[t, j, i] >= threshold for i in kept):
        stopped_at[j] = t
      else:
        kept.append(j)
  return stopped_at


@pytest.mark.parametrize("threshold", [0.0, 0.34, 0.5, 1.0])
def test_pruning_replay_equals_a_host_loop(threshold):
  rng = np.random.default_rng(1)
  p, s, n = 3, 5, 7
  tokens, lengths = _random_chains(rng, p, n, 16)
  sim, ends = thought_similarity(tokens, lengths, (STEP,), max_steps=5, ngram=2)
  rank = np.stack([np.stack([rng.permutation(n) for _ in range(s)]) for _ in range(p)]).astype(np.int32)
  member = rank < rng.integers(1, n + 1, (p, s, 1))
  got = np.asarray(prune_redundant(jnp.asarray(sim)[:, None], jnp.asarray(ends)[:, None], jnp.asarray(rank),
                                   jnp.asarray(member), threshold))
  cut = np.asarray(pruned_lengths(jnp.asarray(ends)[:, None], jnp.asarray(lengths)[:, None], jnp.asarray(got)))
  stopped_any = 0
  for i in range(p):
    for j in range(s):
      want = _host_prune(sim[i], ends[i], rank[i, j], member[i, j], threshold)
      np.testing.assert_array_equal(got[i, j], want)
      for c in range(n):
        assert cut[i, j, c] == (ends[i, c, want[c]] if want[c] >= 0 else lengths[i, c])
      first = np.argmin(np.where(member[i, j], rank[i, j], n))
      assert got[i, j, first] == -1  # the first chain drawn always finishes
      stopped_any += int(np.sum(want >= 0))
  assert stopped_any > 0 or threshold == 1.0


def test_slim_sc_in_the_runner(tmp_path):
  """On the shipped policy: Slim-SC stops chains whose thoughts repeat (fewer generated tokens
  than majority vote at the same N, more stopped at a lower threshold)."""
  from tts_jax.eval import Experiment, MajorityVote, run_experiment
  from tts_jax.eval.pruning_methods import SlimSC
  from tts_jax.tasks import ModChain
  exp = Experiment(name="slim", task=ModChain(), split="hard", num_problems=2, models="default",
                   methods=(MajorityVote(), SlimSC(threshold=1.0, name="slim-1"), SlimSC(threshold=0.5, name="slim-.5")),
                   budgets=(1, 4, 8), max_new_tokens=64, num_subsets=8, batch_problems=2,
                   out_dir=str(tmp_path / "full"))
  full = run_experiment(exp, quiet=True)
  rows = {(name, r["budget"]): r for name, rs in full["methods"].items() for r in rs}
  for name in ("slim-1", "slim-.5"):  # one chain: nothing to prune, majority vote exactly
    assert rows[name, 1]["accuracy"] == rows["majority vote", 1]["accuracy"]
    assert rows[name, 1]["generated_tokens"] == pytest.approx(rows["majority vote", 1]["generated_tokens"])
  assert rows["slim-.5", 8]["generated_tokens"] <= rows["slim-1", 8]["generated_tokens"]
  assert rows["slim-1", 8]["generated_tokens"] < rows["majority vote", 8]["generated_tokens"]
  assert rows["slim-1", 8]["samples"] == 8
  with pytest.raises(ValueError, match="threshold must be in"):
    Experiment(name="x", task=ModChain(), methods=(SlimSC(threshold=1.5),), budgets=(4,))
