"""Beam search, DVTS and best-of-N on the engine against enumeration and closed forms."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.tabular_target import make_target
from tts_jax.models.tabular import TabularLM
from tts_jax.sampling import SamplingParams
from tts_jax.search import beam_search, best_of_n, dvts
from tts_jax.search.beam import beam_ancestors
from tts_jax.smc import run_smc

FLAT = SamplingParams(temperature=20.0)  # beam search ranks by potential only; a flat proposal covers all children


@pytest.fixture(scope="module")
def target():
  # No stop token: every generation has exactly 3 tokens, 4^3 = 64 of them; phi on every prefix.
  return make_target(vocab=4, max_new=3, prompt=(1,), stops=(), seed=2, phi_scale=1.0)


def _exact_beam(tgt, width):
  """Beam search expanding every child of every beam (numpy): the final beams, best first."""
  beams = [()]
  for _ in range(tgt.max_new):
    children = [b + (x,) for b in beams for x in range(tgt.lm.vocab_size)]
    beams = sorted(children, key=lambda s: -tgt.log_phi(s))[:width]
  return beams


def _run(tgt, cfg, reps=1, seed=0):
  return run_smc(tgt.lm, tgt.params, *tgt.prompts(reps), jax.random.key(seed), cfg=cfg, potential=tgt.potential)


def top_distinct(particles, k: int):
  """The k best distinct particles of each prompt by final potential: (int32[B, k] indices, best
  first; bool[B, k] valid, False where a prompt has fewer than k distinct particles)."""
  score, h, length = particles.log_potential, particles.hash, particles.length
  idx = jnp.arange(score.shape[1])

  def one(score, h, length):
    same = (length[:, None] == length[None, :]) & jnp.all(h[:, None] == h[None, :], axis=-1)
    dup = jnp.any(same & (idx[None, :] < idx[:, None]), axis=1)
    order = jnp.lexsort((idx, -score, dup))[:k]
    return order, ~dup[order]

  return jax.vmap(one)(score, h, length)


def _decode_top(tgt, p, k):
  idx, valid = top_distinct(p, k)
  toks, lens = np.asarray(p.tokens[0]), np.asarray(p.length[0])
  return [tuple(toks[i, :lens[i]].tolist()) for i, v in zip(np.asarray(idx[0]), np.asarray(valid[0])) if v]


def test_beam_covering_the_space_returns_the_enumerated_top_k(target):
  seqs = list(itertools.product(range(4), repeat=3))
  ranked = sorted(seqs, key=lambda s: -target.log_phi(s))
  p = _run(target, beam_search(num_particles=64 * 32, expansions=32, max_new_tokens=3, max_step_tokens=1,
                               proposal=FLAT))
  assert _decode_top(target, p, 64) == ranked  # every sequence, in the exact order
  assert _decode_top(target, p, 10) == ranked[:10]


@pytest.mark.parametrize("width", [1, 3, 5])
def test_narrow_beam_equals_exact_beam_search(target, width):
  m = 64
  p = _run(target, beam_search(num_particles=width * m, expansions=m, max_new_tokens=3, max_step_tokens=1,
                               proposal=FLAT), seed=width)
  assert _decode_top(target, p, width) == _exact_beam(target, width)


def test_dvts_subtrees_are_independent_greedy_searches(target):
  m, trees = 48, 4
  p = _run(target, dvts(num_particles=m * trees, expansions=m, max_new_tokens=3, max_step_tokens=1, proposal=FLAT))
  greedy = _exact_beam(target, 1)[0]
  toks, score = np.asarray(p.tokens[0]), np.asarray(p.log_potential[0])
  for t in range(trees):  # the final step's expansions are not selected: each subtree's best is greedy
    best = t * m + int(np.argmax(score[t * m:(t + 1) * m]))
    assert tuple(toks[best]) == greedy
    assert all(tuple(r[:2]) == greedy[:2] for r in toks[t * m:(t + 1) * m])
  # Ancestors never cross subtree boundaries.
  anc = np.asarray(p.ancestors[0])
  assert np.all(anc // m == np.arange(m * trees) // m)


def _toy(q, k):
  """A policy whose every step (one token) is correct (token 1) w.p. q; a perfect PRM."""
  lm = TabularLM(2, k + 1)
  logits = jnp.zeros((lm.num_prefixes, 2)).at[:, 1].set(np.log(q / (1 - q)))

  def prm(tokens, lengths, done):
    wrong = jnp.any((tokens == 0) & (jnp.arange(tokens.shape[-1]) < lengths[..., None]), axis=-1)
    return jnp.where(wrong, -30.0, 0.0)

  return lm, {"logits": logits}, prm


def _accuracy(q, k, cfg, reps, seed):
  lm, params, prm = _toy(q, k)
  p = run_smc(lm, params, jnp.ones((reps, 1), jnp.int32), jnp.ones((reps,), jnp.int32), jax.random.key(seed),
              cfg=cfg, potential=prm)
  best, _ = top_distinct(p, 1)
  toks = np.take_along_axis(np.asarray(p.tokens), np.asarray(best)[:, :, None], axis=1)[:, 0]
  return np.all(toks == 1, axis=-1).mean()


@pytest.mark.parametrize("q,k,n", [(0.3, 4, 4), (0.5, 3, 8), (0.2, 2, 2)])
def test_toy_policy_closed_forms(q, k, n):
  reps = 4000
  common = dict(max_new_tokens=k, max_step_tokens=1)
  cases = [(beam_search(n, n, dedup=False, **common), (1 - (1 - q) ** n) ** k),  # width 1, N expansions
           (best_of_n(n, **common), 1 - (1 - q ** k) ** n)]
  if n % 2 == 0:
    m = n // 2
    cases.append((dvts(n, m, dedup=False, **common), 1 - (1 - (1 - (1 - q) ** m) ** k) ** (n // m)))
  for i, (cfg, exact) in enumerate(cases):
    acc = _accuracy(q, k, cfg, reps, seed=i)
    se = np.sqrt(exact * (1 - exact) / reps)
    assert abs(acc - exact) < 4 * se, (cfg.select, acc, exact, se)


def _host_beam(score, done, seqs, width, group, dedup):
  """Beam's selection for one prompt in plain Python, from the module docstring: in each group
  of `group` consecutive particles, rank the distinct ones (identical token sequences count
  once, the lowest index standing for them) by score (desc), then index; keep the first
  `width`; finished survivors keep one slot each, in rank order; the other slots go
  round-robin to the unfinished survivors (to all survivors if none is unfinished)."""
  n = len(score)
  out = []
  for start in range(0, n, group):
    members = range(start, start + group)
    seen, distinct = set(), []
    for i in members:
      if not dedup or seqs[i] not in seen:
        distinct.append(i)
        seen.add(seqs[i])
    top = sorted(distinct, key=lambda i: (-score[i], i))[:width]
    fin, unf = [i for i in top if done[i]], [i for i in top if not done[i]]
    rest = unf or top
    out += fin + [rest[j % len(rest)] for j in range(group - len(fin))]
  return out


def test_beam_ancestors_equal_a_host_reference():
  """`beam_ancestors` (one sort over all groups, width and group traced) against the plain
  Python rule: ties, -inf scores, duplicates, finished particles, every divisor group size."""
  rng = np.random.default_rng(0)
  fn = jax.jit(jax.vmap(beam_ancestors, in_axes=(0, 0, 0, 0, None, None, None)), static_argnums=6)
  checked = 0
  for n in (1, 4, 6, 8, 12):
    for group in [d for d in range(1, n + 1) if n % d == 0]:
      for width in sorted({1, 2, group // 2 or 1, group} & set(range(1, group + 1))):
        for dedup in (True, False):
          b = 6
          score = rng.choice([-np.inf, -1.0, 0.0, 0.5], (b, n)).astype(np.float32)  # many ties
          score[: b // 2] = rng.normal(size=(b // 2, n))
          done = rng.random((b, n)) < np.linspace(0, 1, b)[:, None]  # none finished ... all finished
          seqs = rng.integers(0, 2, (b, n, 2))
          length = rng.integers(1, 3, (b, n))
          keys = [[tuple(s[:m]) for s, m in zip(seqs[r], length[r])] for r in range(b)]
          hash_ = np.array([[[hash(k) % 2**31, len(k)] for k in row] for row in keys], np.uint32)
          got = fn(jnp.asarray(score), jnp.asarray(done), jnp.asarray(hash_), jnp.asarray(length, jnp.int32),
                   jnp.int32(width), jnp.int32(group), dedup)
          want = [_host_beam(score[r], done[r], keys[r], width, group, dedup) for r in range(b)]
          np.testing.assert_array_equal(np.asarray(got), np.array(want), err_msg=f"{n=} {group=} {width=} {dedup=}")
          checked += b
  assert checked > 300
