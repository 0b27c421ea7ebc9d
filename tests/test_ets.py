"""ETS's KV-aware survivor choice: page and step keys equal host sets, the greedy choice equals a
host loop over the objective, lambda = 0 is beam search exactly (selection and engine run), and
the method reports the KV pages it holds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.search.beam import beam_ancestors
from tts_jax.search.ets import _ets_group, distinct_pages, last_step_keys, page_keys

STEP = 9


def _tree_sequences(rng, g, t):
  """g sequences that share prefixes (copies of one another, then diverging), some identical."""
  seqs = rng.integers(0, 4, (g, t))
  seqs[rng.random((g, t)) < 0.2] = STEP
  for i in range(1, g):
    parent, cut = rng.integers(0, i), rng.integers(0, t + 1)
    seqs[i, :cut] = seqs[parent, :cut]
  length = rng.integers(1, t + 1, g)
  length[g - 1], seqs[g - 1] = length[0], seqs[0]  # an exact duplicate
  return seqs.astype(np.int32), length.astype(np.int32)


def _host_pages(seq, length, ps):
  return {(j, tuple(seq[:min(length, (j + 1) * ps)])) for j in range(-(-length // ps))}


def _host_last_step(seq, length):
  body = list(seq[:length])
  cuts = [i for i, x in enumerate(body[:-1]) if x == STEP]
  return tuple(body[(cuts[-1] + 1 if cuts else 0):])


def test_page_and_step_keys_equal_host_sets():
  rng = np.random.default_rng(0)
  seqs, length = _tree_sequences(rng, 12, 21)
  key, end = jax.device_get(page_keys(jnp.asarray(seqs), jnp.asarray(length), 4))
  host = [_host_pages(s, n, 4) for s, n in zip(seqs, length)]
  for a in range(12):
    assert len(host[a]) == int(np.sum(end[a] >= 0))
    for b in range(12):
      for j in range(key.shape[1]):
        same = end[a, j] >= 0 and end[a, j] == end[b, j] and key[a, j] == key[b, j]
        assert same == (j < len(host[a]) and any(p[0] == j and p in host[b] for p in host[a]))
  got = distinct_pages(seqs[None], length[None], 4)
  assert got[0] == len(set().union(*host))
  h, n = jax.device_get(last_step_keys(jnp.asarray(seqs), jnp.asarray(length), (STEP,)))
  steps = [_host_last_step(s, m) for s, m in zip(seqs, length)]
  for a in range(12):
    assert n[a] == len(steps[a])
    for b in range(12):
      assert (h[a] == h[b] and n[a] == n[b]) == (steps[a] == steps[b])


def _host_ets(score, done, seqs, length, width, lam_kv, lam_div, ps):
  """Survivors by the greedy objective with Python sets, then beam's slot filling."""
  g = len(score)
  reward = np.exp(score.astype(np.float64))
  ident = [tuple(s[:n]) for s, n in zip(seqs, length)]
  eligible = [ident[i] not in ident[:i] for i in range(g)]
  pages = [_host_pages(s, n, ps) for s, n in zip(seqs, length)]
  clusters = [_host_last_step(s, n) for s, n in zip(seqs, length)]
  first = max((i for i in range(g) if eligible[i]), key=lambda i: (score[i], -i))
  chosen, held, seen = [first], set(pages[first]), {clusters[first]}
  while len(chosen) < width:
    cands = [i for i in range(g) if eligible[i] and i not in chosen]
    if not cands:
      break
    gains = {i: np.float32(reward[i] - lam_kv * len(pages[i] - held) + lam_div * (clusters[i] not in seen))
             for i in cands}
    top = max(gains.values())
    if top < 0:
      break
    best = max((i for i in cands if gains[i] == top), key=lambda i: (score[i], -i))
    chosen.append(best)
    held |= pages[best]
    seen.add(clusters[best])
  fin = [i for i in chosen if done[i]]
  unf = [i for i in chosen if not done[i]] or chosen
  return [fin[s] if s < len(fin) else unf[(s - len(fin)) % len(unf)] for s in range(g)]


@pytest.mark.parametrize("seed,lam_kv,lam_div", [(1, 0.07, 0.0), (2, 0.23, 0.0), (3, 0.07, 0.3), (4, 1.1, 0.0)])
def test_greedy_survivors_equal_a_host_loop(seed, lam_kv, lam_div):
  rng = np.random.default_rng(seed)
  g, t, ps, width = 10, 18, 4, 6
  seqs, length = _tree_sequences(rng, g, t)
  score = np.log(rng.choice([0.3, 0.55, 0.9, 1.0], g)).astype(np.float32)  # no gain is exactly 0
  score[rng.integers(0, g)] = -np.inf
  done = rng.random(g) < 0.3
  key, end = page_keys(jnp.asarray(seqs), jnp.asarray(length), ps)
  cl, cl_len = last_step_keys(jnp.asarray(seqs), jnp.asarray(length), (STEP,))
  hash_ = jnp.asarray(np.array([[hash(tuple(s[:n])) % 2**31, n] for s, n in zip(seqs, length)]), jnp.uint32)
  got = _ets_group(jnp.asarray(score), jnp.asarray(done), hash_, jnp.asarray(length), key, end, cl, cl_len,
                   width=width, lambda_kv=lam_kv, lambda_div=lam_div)
  want = _host_ets(score, done, seqs, length, width, lam_kv, lam_div, ps)
  np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_zero_lambdas_are_beam_search(seed):
  rng = np.random.default_rng(seed)
  g, t = 12, 15
  seqs, length = _tree_sequences(rng, g, t)
  score = np.log(rng.random(g)).astype(np.float32)
  score[rng.integers(0, g, 3)] = -np.inf
  done = rng.random(g) < 0.4
  hash_ = jnp.asarray(np.array([[hash(tuple(s[:n])) % 2**31, n] for s, n in zip(seqs, length)]), jnp.uint32)
  key, end = page_keys(jnp.asarray(seqs), jnp.asarray(length), 4)
  cl, cl_len = last_step_keys(jnp.asarray(seqs), jnp.asarray(length), (STEP,))
  for width in (1, 3, g):
    beam = beam_ancestors(jnp.asarray(score), jnp.asarray(done), hash_, jnp.asarray(length), width=width, group=g,
                          dedup=True)
    ets = _ets_group(jnp.asarray(score), jnp.asarray(done), hash_, jnp.asarray(length), key, end, cl, cl_len,
                     width=width, lambda_kv=0.0, lambda_div=0.0)
    np.testing.assert_array_equal(np.asarray(ets), np.asarray(beam))


def test_ets_engine_and_method(tmp_path):
  """The engine with lambda = 0 reproduces beam search's particles; a large lambda_kv keeps
  fewer KV pages; the method reports `kv_pages`."""
  import json
  from tts_jax.eval import ETS, Experiment, run_experiment
  from tts_jax.models import pad_prompts
  from tts_jax.search import beam_search, ets_beam_search
  from tts_jax.smc import run_smc
  from tts_jax.tasks import ModChain, load_default, prompt_ids, step_oracle, task_tokens
  task = ModChain()
  models = load_default("modchain")
  ids = task_tokens(task)
  tokens, lengths = pad_prompts([prompt_ids(task, p) for p in task.split("hard")[:3]], pad_id=ids.pad)
  kw = dict(max_new_tokens=48, delimiters=ids.steps, stop_tokens=ids.stop, pad_id=ids.pad)
  run = lambda cfg: run_smc(models.policy, models.policy_params, jnp.asarray(tokens), jnp.asarray(lengths),  # noqa
                            jax.random.key(0), cfg=cfg, potential=step_oracle(task, "log"))
  beam, same = run(beam_search(8, 2, **kw)), run(ets_beam_search(8, 2, 0.0, **kw))
  np.testing.assert_array_equal(np.asarray(beam.tokens), np.asarray(same.tokens))
  np.testing.assert_array_equal(np.asarray(beam.length), np.asarray(same.length))
  tight = run(ets_beam_search(8, 2, 1.5, **kw))
  assert distinct_pages(tight.tokens, tight.length, 16).sum() < distinct_pages(beam.tokens, beam.length, 16).sum()

  exp = Experiment(name="ets", task=task, split="hard", num_problems=2, models="default",
                   methods=(ETS(verifier="oracle", expansions=2, lambda_kv=0.3, name="ets"),),
                   budgets=(4,), max_new_tokens=48, batch_problems=2, out_dir=str(tmp_path / "full"))
  run_experiment(exp, quiet=True)
  recs = [json.loads(x) for x in (tmp_path / "full" / "results.jsonl").read_text().splitlines()]
  assert len(recs) == 2 and all(1 <= r["methods"]["ets"]["kv_pages"] <= 4 * 3 for r in recs)  # 4 x 48 tokens
  with pytest.raises(ValueError, match="lambda_kv and lambda_div must be"):
    Experiment(name="x", task=task, methods=(ETS(lambda_kv=-1.0),), budgets=(4,))
