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
  per expansion, compute that grows with N, the value model's tokens counted. One method: each
  method x budget compiles its own tree engine (~30 s on 2 CPU cores), and the exact checker
  reaches the engine through the same potential seam as the PRM."""
  import json
  from tts_jax.eval import MCTS, Experiment, run_experiment
  from tts_jax.tasks import ModChain
  exp = Experiment(name="mcts", task=ModChain(), split="test", num_problems=2, models="default",
                   methods=(MCTS(verifier="prm", expansions=3, name="mcts-prm"),),
                   budgets=(2, 6), max_new_tokens=64, batch_problems=2, out_dir=str(tmp_path / "full"))
  run_experiment(exp, quiet=True)
  recs = [json.loads(x) for x in (tmp_path / "full" / "results.jsonl").read_text().splitlines()]
  by = {(r["problem"], r["budget"]): r["methods"] for r in recs}
  for i in range(2):
    small, big = by[i, 2]["mcts-prm"], by[i, 6]["mcts-prm"]
    assert small["samples"] == 2.0 and big["samples"] == 6.0
    assert (small["nodes"] - 1) % 3 == 0 and 1 < small["nodes"] <= big["nodes"] <= 1 + 6 * 3
    assert small["flops"] < big["flops"] and small["generated_tokens"] < big["generated_tokens"]
    assert 0 < small["kv_pages"] <= big["kv_pages"]
    assert 0 < small["verifier_tokens"] <= big["verifier_tokens"]
  with pytest.raises(ValueError, match="expansions must be an int >= 1"):
    Experiment(name="x", task=ModChain(), methods=(MCTS(expansions=0),), budgets=(2,))
  with pytest.raises(ValueError, match="page_size must be an int >= 1"):
    Experiment(name="x", task=ModChain(), methods=(MCTS(page_size=0),), budgets=(2,))
  with pytest.raises(ValueError, match="num_pages must be an int >= 0"):
    Experiment(name="x", task=ModChain(), methods=(MCTS(num_pages=-1),), budgets=(2,))


# -- the paged path: a transformer policy whose nodes share KV pages ------------------------------

LM_T, LM_K, LM_SIMS, PS = 16, 3, 6, 4
LM_DELIMS, LM_STOP = (3, 4), 5


@pytest.fixture(scope="module")
def transformer_tree():
  """A search with a tiny random transformer: steps end at tokens 3/4 (drawn often: their
  logits are raised), solutions at 5 (lowered); values from a fixed function of the tokens,
  low for finished nodes so that the search goes deeper."""
  from tts_jax.models import init, qwen2_config
  cfg = qwen2_config(vocab_size=11, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_position_embeddings=48)
  lm, params = init(cfg, seed=3)
  params = {**params, "lm_head": params["lm_head"].at[3:5].add(0.15).at[5].add(-0.5)}
  prompts = jnp.asarray([[1, 2, 6, 7, 8, 9], [7, 6, 0, 0, 0, 0]], jnp.int32)
  plens = jnp.asarray([6, 2], jnp.int32)

  def potential(tokens, lengths, done):  # any deterministic value: (sum of tokens mod 7 + 1) / 8
    mask = jnp.arange(tokens.shape[-1]) < lengths[..., None]
    return jnp.log((jnp.sum(jnp.where(mask, tokens, 0), axis=-1) % 7 + 1) / 8.0) - 2.0 * done

  tree = mcts(lm, params, prompts, plens, jax.random.key(5), potential=potential, simulations=LM_SIMS,
              expansions=LM_K, max_new_tokens=LM_T, delimiters=LM_DELIMS, stop_tokens=(LM_STOP,), page_size=PS,
              c_puct=2.0)
  return lm, params, prompts, plens, potential, tree


def test_paged_tree_equals_resampling_each_node_from_scratch(transformer_tree):
  """The same search with every expanded node prefilled again and its children drawn by the
  sampler (share_kv=False) builds the same tree and answer (the draws use the same keys)."""
  lm, params, prompts, plens, potential, tree = transformer_tree
  scratch = mcts(lm, params, prompts, plens, jax.random.key(5), potential=potential, simulations=LM_SIMS,
                 expansions=LM_K, max_new_tokens=LM_T, delimiters=LM_DELIMS, stop_tokens=(LM_STOP,), c_puct=2.0,
                 share_kv=False)
  assert scratch.cache is None and np.all(np.asarray(scratch.pages) == 0)
  for f in ("tokens", "length", "parent", "first_child", "finished", "used", "born", "decoded", "answer_tokens",
            "answer_length"):
    np.testing.assert_array_equal(np.asarray(getattr(tree, f)), np.asarray(getattr(scratch, f)), err_msg=f)
  np.testing.assert_allclose(np.asarray(tree.value_sum), np.asarray(scratch.value_sum), rtol=1e-6)
  expanded = (np.asarray(tree.first_child) >= 0).sum(1)
  assert np.all(expanded >= 3) and np.all(np.asarray(tree.answer_length) > 0), expanded  # below the root too


def test_every_node_s_kv_equals_a_full_forward_pass(transformer_tree):
  """A node's pages (its ancestors' shared ones included) hold the KV of prompt + its tokens:
  feeding its pending last token gives the full forward pass's logits (all nodes at once)."""
  from tts_jax.models.lm import forward
  lm, params, prompts, plens, _, tree = transformer_tree
  toks, lens, used = np.asarray(tree.tokens), np.asarray(tree.length), np.asarray(tree.used)
  width = int(used.max()) - 1
  nodes = np.zeros((2, width), np.int32)  # every node but the root; padding: the root (not fed)
  for b in range(2):
    nodes[b, :used[b] - 1] = np.arange(1, used[b])
  node_len = lens[np.arange(2)[:, None], nodes]
  pending = toks[np.arange(2)[:, None], nodes, np.maximum(node_len - 1, 0)]
  work = tree.cache.branch(jnp.asarray(nodes), jnp.asarray([True, True]))
  got, _ = jax.jit(lambda w, t, a: lm.decode(params, t, w, active=a))(work, jnp.asarray(pending),
                                                                       jnp.asarray(node_len > 0))
  seqs, seq_lens, where = [], [], []
  for b in range(2):
    for j, node in enumerate(nodes[b, :used[b] - 1]):
      seq = list(np.asarray(prompts[b, :plens[b]])) + list(toks[b, node, :lens[b, node]])
      seqs.append(seq + [0] * (prompts.shape[1] + LM_T - len(seq)))
      seq_lens.append(len(seq))
      where.append((b, j))
  want = forward(lm, params, np.asarray(seqs, np.int32), np.asarray(seq_lens, np.int32))
  want = np.asarray(want)[np.arange(len(seqs)), np.asarray(seq_lens) - 1]
  got = np.asarray(got)
  np.testing.assert_allclose(np.stack([got[b, j] for b, j in where]), want, atol=1e-4)
  assert len(where) == int(used.sum()) - 2


def test_children_reference_their_parent_s_pages(transformer_tree):
  """Children's block tables begin with their parent's full pages (shared, not copied), and
  the tree holds fewer pages than copying every node's KV would."""
  _, _, _, _, _, tree = transformer_tree
  table, lens = np.asarray(tree.cache.table), np.asarray(tree.length)
  parent, used = np.asarray(tree.parent), np.asarray(tree.used)
  shared = 0
  for b in range(2):
    for c in range(1, int(used[b])):
      full = max(int(lens[b, parent[b, c]]) - 1, 0) // PS  # the parent's KV holds its tokens but the last
      np.testing.assert_array_equal(table[b, c, :full], table[b, parent[b, c], :full])
      shared += full
  assert shared > 0
  copying = sum(-(-max(int(lens[b, c]) - 1, 0) // PS) for b in range(2) for c in range(1, int(used[b])))
  pages = np.asarray(tree.pages)
  assert np.all(pages > 0) and pages.sum() < copying, (pages, copying)
  refcount, recount = np.asarray(tree.cache.refcount), np.asarray(tree.cache.recount())
  np.testing.assert_array_equal(refcount, recount)  # no page leaked


def test_too_few_pages_is_a_clear_error(transformer_tree):
  lm, params, prompts, plens, potential, _ = transformer_tree
  with pytest.raises(RuntimeError, match="ran out of pages"):
    mcts(lm, params, prompts, plens, jax.random.key(5), potential=potential, simulations=LM_SIMS,
         expansions=LM_K, max_new_tokens=LM_T, delimiters=LM_DELIMS, stop_tokens=(LM_STOP,), page_size=PS,
         c_puct=2.0, num_pages=6)
  with pytest.raises(ValueError, match="page_size must be an int >= 1"):
    mcts(lm, params, prompts, plens, jax.random.key(5), potential=potential, simulations=1, expansions=1,
         max_new_tokens=LM_T, delimiters=LM_DELIMS, page_size=0)
