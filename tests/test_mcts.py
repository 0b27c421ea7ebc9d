"""MCTS against a tabular LM with exact values: each token is a step, the reward of a finished
generation is a fixed phi(x) (1 for one optimum, random in [0.05, 0.5] otherwise), and the potential of a prefix is its exact optimal value
V*(prefix) = max phi over its completions. As simulations grow, the root's visits concentrate
on the optimal first step and the search returns the optimal generation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.models.tabular import enumerate_generations, random_tabular
from tts_jax.search.mcts import mcts

V, T, STOP, PROMPT = 4, 4, 3, [1, 2]
K = 12  # steps drawn per expansion: each level draws the optimal token w.p. ~0.97


@pytest.fixture(scope="module")
def problem():
  lm, params = random_tabular(V, len(PROMPT) + T, seed=11, scale=0.3)
  seqs, logp = enumerate_generations(lm, params, PROMPT, T, (STOP,))
  # One optimum (phi = 1) among rewards <= 0.5: a full-length generation of median probability.
  full = [i for i, s in enumerate(seqs) if len(s) == T]
  star = sorted(full, key=lambda i: logp[i])[len(full) // 2]
  phi = np.random.default_rng(0).uniform(0.05, 0.5, size=len(seqs))
  phi[star] = 1.0
  best = seqs[star]
  v_star = np.full(lm.num_prefixes, 0.0)
  for s, f in zip(seqs, phi):
    for j in range(len(s) + 1):
      i = lm.prefix_id(PROMPT + list(s[:j]))
      v_star[i] = max(v_star[i], f)
  log_v = jnp.asarray(np.log(np.maximum(v_star, 1e-9)), jnp.float32)

  def potential(tokens, lengths, done):
    ids = jnp.full(lengths.shape, lm.prefix_id(PROMPT), jnp.int32)
    for j in range(tokens.shape[-1]):
      ids = jnp.where(j < lengths, ids * V + tokens[..., j] + 1, ids)
    return log_v[ids]

  return lm, params, potential, best


def _search(problem, sims, reps, seed=0, c_puct=1.0, backup="mean"):
  lm, params, potential, _ = problem
  prompts = jnp.tile(jnp.asarray([PROMPT], jnp.int32), (reps, 1))
  return mcts(lm, params, prompts, jnp.full((reps,), len(PROMPT)), jax.random.key(seed), potential=potential,
              simulations=sims, expansions=K, max_new_tokens=T, delimiters=(0, 1, 2), stop_tokens=(STOP,),
              c_puct=c_puct, backup=backup)


def _root_share(tree, first_token) -> np.ndarray:
  """Per run: the share of the root children's visits on children starting with first_token."""
  kids = np.asarray(tree.first_child[:, 0])[:, None] + np.arange(tree.expansions)
  rows = np.arange(kids.shape[0])[:, None]
  visits, first = np.asarray(tree.visits)[rows, kids], np.asarray(tree.tokens)[rows, kids, 0]
  return (visits * (first == first_token)).sum(1) / visits.sum(1)


@pytest.mark.parametrize("backup", ["mean", "max"])
def test_visits_concentrate_on_the_optimum_and_the_answer_is_it(problem, backup):
  best = problem[3]
  reps = 64
  few, many = _search(problem, 3, reps, backup=backup), _search(problem, 24, reps, backup=backup)
  share_few, share_many = _root_share(few, best[0]).mean(), _root_share(many, best[0]).mean()
  assert share_many > share_few + 0.15 and share_many > 0.55, (share_few, share_many)
  found = []
  for tree in (few, many):
    toks, lens = np.asarray(tree.answer_tokens), np.asarray(tree.answer_length)
    found.append(np.mean([tuple(toks[r, :lens[r]]) == tuple(best) for r in range(reps)]))
  assert found[1] > 0.85 and found[0] < 0.2, found
  # The answer continues the chosen node (completed by a rollout only when it is unfinished).
  pick = np.asarray(many.answer())
  node_toks, node_lens = np.asarray(many.tokens), np.asarray(many.length)
  for r in range(reps):
    n = node_lens[r, pick[r]]
    assert np.array_equal(toks[r, :n], node_toks[r, pick[r], :n])
    assert bool(many.finished[r, pick[r]]) == (lens[r] == n)
  # Bookkeeping: every expansion added K children whose parent is set; one visit per simulation
  # at the root, and through exactly one root child after the first (each child starts at 1).
  used = np.asarray(many.used)
  assert np.all((used - 1) % K == 0) and np.all(np.asarray(many.parent)[:, 1] == 0)
  kids = np.asarray(many.first_child[:, 0])[:, None] + np.arange(K)
  assert np.allclose(np.asarray(many.visits)[:, 0], 1 + 24)
  assert np.allclose(np.asarray(many.visits)[np.arange(reps)[:, None], kids].sum(1), K + 24 - 1)


def test_without_exploration_values_still_rank(problem):
  """c_puct = 0: pure exploitation of the exact values finds the optimum when it was drawn."""
  best = problem[3]
  tree = _search(problem, 24, 32, seed=3, c_puct=0.0)
  toks, lens = np.asarray(tree.answer_tokens), np.asarray(tree.answer_length)
  assert np.mean([tuple(toks[r, :lens[r]]) == tuple(best) for r in range(32)]) > 0.8


def test_bad_arguments_are_named(problem):
  lm, params, potential, _ = problem
  args = (lm, params, jnp.asarray([PROMPT]), jnp.asarray([2]), jax.random.key(0))
  with pytest.raises(ValueError, match="simulations must be an int >= 1"):
    mcts(*args, potential=potential, simulations=0, expansions=2, max_new_tokens=T, delimiters=(0,))
  with pytest.raises(ValueError, match="needs step delimiters"):
    mcts(*args, potential=potential, simulations=2, expansions=2, max_new_tokens=T, delimiters=())


def test_mcts_method_in_the_runner(tmp_path):
  """MCTS as an experiment method on the shipped models: N simulations per problem, K new nodes
  per expansion, compute that grows with N, the value model read only with the PRM."""
  import json
  from tts_jax.eval import MCTS, Experiment, run_experiment
  from tts_jax.tasks import ModChain
  exp = Experiment(name="mcts", task=ModChain(), split="test", num_problems=4, models="default",
                   methods=(MCTS(verifier="oracle", expansions=3, name="mcts-oracle"),
                            MCTS(verifier="prm", expansions=3, name="mcts-prm")),
                   budgets=(2, 6), max_new_tokens=64, batch_problems=2, out_dir=str(tmp_path / "full"))
  run_experiment(exp, quiet=True)
  recs = [json.loads(x) for x in (tmp_path / "full" / "results.jsonl").read_text().splitlines()]
  by = {(r["problem"], r["budget"]): r["methods"] for r in recs}
  for i in range(4):
    for name in ("mcts-oracle", "mcts-prm"):
      small, big = by[i, 2][name], by[i, 6][name]
      assert small["samples"] == 2.0 and big["samples"] == 6.0
      assert (small["nodes"] - 1) % 3 == 0 and 1 < small["nodes"] <= big["nodes"] <= 1 + 6 * 3
      assert small["flops"] < big["flops"] and small["generated_tokens"] < big["generated_tokens"]
    assert by[i, 6]["mcts-prm"]["verifier_tokens"] > 0 and by[i, 6]["mcts-oracle"]["verifier_tokens"] == 0
  with pytest.raises(ValueError, match="expansions must be an int >= 1"):
    Experiment(name="x", task=ModChain(), methods=(MCTS(expansions=0),), budgets=(2,))
