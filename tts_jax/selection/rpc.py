"""RPC: Perplexity Consistency with Reasoning Pruning (Zhou et al., NeurIPS 2025), in JAX.

Each sample's confidence is its probability p_i = exp(mean token log-prob).
Reasoning Pruning fits a two-component Weibull mixture to the p_i of a problem and
drops samples that belong to the low-probability component and lie below the mean p.
Perplexity Consistency scores each answer by the sum of p_i over its *distinct*
remaining samples (identical completions count once, so the score estimates the
answer's probability mass) and picks the highest.

Everything is array code over [..., N] (batched over problems and subsets, jittable),
with an optional membership mask so that a subset of a pool is fitted and voted on
without gathering it. The mixture is fitted by maximum likelihood with EM for a fixed
number of iterations: the E-step is closed form; the M-step of each Weibull component
is exact in the scale (lambda^k = sum r x^k / sum r) and takes Newton steps on the
shape's profile likelihood, which is concave in k (a step is kept only if it improves
the profile, so every iteration raises the likelihood). The mixture weight is kept in
[0.2, 0.8] and the shapes and scales >= 0.01, the bounds of the reference fit. Starts:
the classic (w = 0.5, a unit exponential and a broader Weibull), hard splits of the
sorted sample at nine cut points, and two single-sample spikes. The likelihood is
unbounded (a component can collapse on one sample); shapes are capped at 1e6, past
what float32 log-probabilities resolve.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

CLASSIC_START = (0.5, 1.0, 1.0, 1.5, 2.0)  # (w, k1, l1, k2, l2): the reference fit's start
W_BOUNDS = (0.2, 0.8)
FLOOR = 0.01
MAX_SHAPE = 1e6
EM_NEWTON = 3  # Newton steps on each shape per EM iteration
SPLITS = 11  # starts from hard splits of the sorted sample: nine cut points and two spikes


# XLA:CPU hands reductions and elementwise fusions to YNNPACK by default. The EM's many short
# reductions run ~2.5x slower there than in XLA's own fusions (the main experiment's RPC
# program: ~300 -> ~130 ms per batch; `benchmarks/selection.py --fusions`), so programs that run
# the fits compile with YNNPACK kept to matmuls. The model's programs keep the default, which
# is faster for them (the sampler ~20% slower without it).
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@functools.cache
def compiler_options() -> dict[str, str]:
  """XLA options for a jitted program that runs these fits (`jax.jit(..., compiler_options=)`):
  on CPU, YNNPACK for matmuls only; {} on other backends or where this XLA does not know the
  option (checked once by compiling a trivial program). Only the float summation order of
  the fit's reductions differs from a default compile."""
  if jax.default_backend() != "cpu":
    return {}
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_OPTIONS).lower(jax.ShapeDtypeStruct((), jnp.float32)).compile()
  except jax.errors.JaxRuntimeError:
    return {}
  return dict(_CPU_OPTIONS)


def _weibull_logpdf(y, k, lam):
  """log pdf at x = exp(y) of Weibull(shape k, scale lam)."""
  z = y - jnp.log(lam)
  return jnp.log(k) - jnp.log(lam) + (k - 1) * z - jnp.exp(jnp.minimum(k * z, 80.0))


# The fits below run batch-minor: points on axis 0 and independent fits on axis 1 ([N, R]
# arrays, parameters [5, R]), so elementwise work vectorises over the fits and each
# reduction over a fit's N points is a sum of rows. (vmapping a one-fit function puts the
# fits first and reduces along the short minor axis: 1.2-1.7x slower to run at N = 4-16,
# about as fast at 32-64, ~1.5x slower to compile; `benchmarks/selection.py --layouts`.)
# The same code also runs on one fit's [N] points with scalar parameters.


def _component_logliks(theta, y):
  """[2, N, ...]: log(w pdf1(x)), log((1 - w) pdf2(x)) at y = log x (theta [5, ...])."""
  w, k1, l1, k2, l2 = theta
  return jnp.stack([jnp.log(w) + _weibull_logpdf(y, k1, l1), jnp.log1p(-w) + _weibull_logpdf(y, k2, l2)])


def _nll(theta, x, m):
  """Weighted NLL of the mixture theta [5, ...] at x [N, ...] (weights m): float[...]."""
  return -jnp.sum(m * jax.nn.logsumexp(_component_logliks(theta, jnp.log(x)), axis=0), axis=0)


def mixture_nll(theta, x, weights=None) -> jax.Array:
  """Negative log-likelihood of the mixture theta = (w, k1, l1, k2, l2) at x float[N] > 0
  (each point counted with its weight, default 1)."""
  x = jnp.asarray(x, jnp.float32)
  return _nll(jnp.asarray(theta), x, jnp.ones_like(x) if weights is None else weights)


def _fit_component(y, r, k, newton: int):
  """Weighted MLE of one Weibull (shape, scale) for log-points y [N, R] with weights r >= 0,
  Newton on the shape's profile likelihood from k [R]. -> (k, lam), each [R]."""
  s0 = jnp.maximum(jnp.sum(r, axis=0), 1e-30)
  log_r = jnp.where(r > 0, jnp.log(jnp.where(r > 0, r, 1.0)), -jnp.inf)
  mean_y = jnp.sum(r * y, axis=0) / s0

  def log_b(k):  # log sum r x^k
    return jax.nn.logsumexp(k * y + log_r, axis=0)

  def profile(k):  # the log-likelihood at the best scale for k, up to a constant
    return s0 * (jnp.log(k) - log_b(k) + jnp.log(s0)) + (k - 1) * mean_y * s0

  def step(k, _):
    pi = jax.nn.softmax(k * y + log_r, axis=0)
    ey = jnp.sum(pi * y, axis=0)
    g = 1 / k + mean_y - ey  # d profile / dk, over s0; decreasing in k
    dg = -1 / k ** 2 - jnp.sum(pi * (y - ey) ** 2, axis=0)
    k_new = jnp.clip(k - g / dg, FLOOR, MAX_SHAPE)
    return jnp.where(jnp.isfinite(k_new), k_new, k), None

  # The EM's 3 steps unrolled (a loop of 3 costs more to run and to compile than its body).
  k_new, _ = jax.lax.scan(step, k, None, length=newton, unroll=newton <= EM_NEWTON)
  k_new = jnp.where(profile(k_new) >= profile(k), k_new, k)
  lam = jnp.maximum(jnp.exp((log_b(k_new) - jnp.log(s0)) / k_new), FLOOR)
  return k_new, lam


def _m_step(y, m, r1, k1, k2, newton):
  r1, r2 = r1 * m, (1 - r1) * m
  k1, l1 = _fit_component(y, r1, k1, newton)
  k2, l2 = _fit_component(y, r2, k2, newton)
  w = jnp.clip(jnp.sum(r1, axis=0) / jnp.maximum(jnp.sum(m, axis=0), 1e-30), *W_BOUNDS)
  return jnp.stack([w, k1, l1, k2, l2])


def _em(y, m, theta, iterations: int):
  """`iterations` EM steps from theta [5, R] on log-points y [N, R] with weights m."""
  def step(theta, _):
    r1 = jax.nn.softmax(_component_logliks(theta, y), axis=0)[0]
    new = _m_step(y, m, r1, theta[1], theta[3], newton=EM_NEWTON)
    return jnp.where(jnp.all(jnp.isfinite(new), axis=0), new, theta), None

  theta, _ = jax.lax.scan(step, theta, None, length=iterations)
  return theta


def _fit(x, m, iterations: int):
  """The fits of points x [N, R] > 0 with weights m [N, R] (fit r: column r) -> [5, R]."""
  n, r = x.shape
  y = jnp.log(x)
  count = jnp.sum(m > 0, axis=0).astype(jnp.int32)  # [R]
  rank = jnp.argsort(jnp.argsort(jnp.where(m > 0, x, jnp.inf), axis=0), axis=0)  # rank among the weighted points
  one = jnp.ones_like(count)
  cuts = jnp.clip(jnp.stack([one, 2 * one, 3 * one, count // 4, count // 2, 3 * count // 4, count - 3, count - 2,
                             count - 1]), 1, jnp.maximum(count - 1, 1))  # [9, R]
  spikes = jnp.stack([one, jnp.maximum(count - 2, 0)])  # [2, R]
  hard = jnp.concatenate([rank[None] < cuts[:, None], rank[None] == spikes[:, None]])  # [11, N, R]
  wide = lambda a, s: jnp.tile(a, (1, s))  # noqa: E731  [N, R] -> [N, s R]: every start is one more fit
  split = _m_step(wide(y, SPLITS), wide(m, SPLITS), jnp.moveaxis(hard, 0, 1).reshape(n, SPLITS * r).astype(jnp.float32),
                  *[jnp.full((SPLITS * r,), 2.0, jnp.float32)] * 2, newton=20)  # [5, 11 R]
  classic = jnp.broadcast_to(jnp.asarray(CLASSIC_START, jnp.float32)[:, None], (5, r))
  starts = jnp.concatenate([classic, split], axis=1)  # [5, 12 R], start-major
  thetas = _em(wide(y, SPLITS + 1), wide(m, SPLITS + 1), starts, iterations)
  nll = _nll(thetas, wide(x, SPLITS + 1), wide(m, SPLITS + 1)).reshape(SPLITS + 1, r)
  best = jnp.argmin(jnp.where(jnp.isfinite(nll), nll, jnp.inf), axis=0)  # [R]
  return jnp.take_along_axis(thetas.reshape(5, SPLITS + 1, r), best[None, None, :], axis=1)[:, 0]


def fit_weibull_mixture(x, weights=None, iterations: int = 30) -> jax.Array:
  """Maximum-likelihood (w, k1, l1, k2, l2) of a two-component Weibull mixture.

  x: float[..., N] > 0; weights: float[..., N] >= 0 (e.g. a 0/1 membership mask; default all
  1). Every row is fitted on its own: EM for `iterations` steps from 12 starts; returns the
  parameters with the lowest finite weighted NLL (float32[..., 5]). Under `jax.jit`, pass
  `compiler_options=compiler_options()` (~2.3x faster on CPU).
  """
  x = jnp.asarray(x, jnp.float32)
  m = jnp.ones_like(x) if weights is None else jnp.asarray(weights, jnp.float32)
  chex.assert_equal_shape([x, m])
  n = x.shape[-1]
  theta = _fit(x.reshape(-1, n).T, m.reshape(-1, n).T, iterations)  # [5, R]
  return theta.T.reshape(x.shape[:-1] + (5,))


def prune_mask(probs: jax.Array, member: jax.Array | None = None) -> jax.Array:
  """bool[..., N]: members kept by Reasoning Pruning (all members kept when fewer than 4
  or their probs are constant; non-members never). probs: float[..., N] sample
  probabilities exp(mean token log-prob); member: bool[..., N] the set (default all)."""
  probs = jnp.asarray(probs, jnp.float32)
  member = jnp.ones(probs.shape, bool) if member is None else jnp.asarray(member, bool)
  chex.assert_equal_shape([probs, member])
  n = probs.shape[-1]
  if n < 4:
    return member
  p, inside = probs.reshape(-1, n).T, member.reshape(-1, n).T  # [N, R]: one fit per column
  x = jnp.clip(p, 1e-12, None)
  m = inside.astype(jnp.float32)
  theta = _fit(x, m, iterations=30)
  w, k1, l1, k2, l2 = theta
  mean = lambda k, lam: lam * jnp.exp(jax.scipy.special.gammaln(1 + 1 / k))  # noqa: E731
  swap = mean(k1, l1) < mean(k2, l2)  # component 1 = the high-probability one
  ll = _component_logliks(theta, jnp.log(x))
  high, low = jnp.where(swap, ll[1], ll[0]), jnp.where(swap, ll[0], ll[1])
  avg = jnp.sum(m * p, axis=0) / jnp.maximum(jnp.sum(m, axis=0), 1.0)
  keep = ~((high < low) & (p < avg))
  spread = jnp.max(jnp.where(inside, p, -jnp.inf), axis=0) - jnp.min(jnp.where(inside, p, jnp.inf), axis=0)
  trivial = (jnp.sum(inside, axis=0) < 4) | (spread <= 1e-12)
  return (jnp.where(trivial, True, keep) & inside).T.reshape(probs.shape)


def rpc_vote(answers: jax.Array, mean_logprob: jax.Array, sample_ids: jax.Array | None = None, prune: bool = True,
             num_answers: int | None = None, member: jax.Array | None = None) -> jax.Array:
  """The answer id RPC picks: int32[..., N] answers (-1 = none) -> int32[...] (-1 if none).

  mean_logprob: float[..., N] mean per-token log-prob of each sample under the model.
  sample_ids: int[..., N] ids of distinct completions (equal ids = identical text, hence
  equal answers and probabilities); default all distinct. prune: Reasoning Pruning.
  num_answers: the answer id range (default N). member: bool[..., N], the samples taking
  part (a subset of a pool; default all). Ties go to the answer that appeared first.
  When pruning leaves no sample with an answer, the unpruned members vote.
  """
  chex.assert_equal_shape([answers, mean_logprob])
  n = answers.shape[-1]
  member = jnp.ones(answers.shape, bool) if member is None else jnp.asarray(member, bool)
  probs = jnp.exp(jnp.asarray(mean_logprob, jnp.float32))
  has = (answers >= 0) & member
  keep = (prune_mask(probs, member) if prune else member) & has
  keep = jnp.where(jnp.any(keep, axis=-1, keepdims=True), keep, has)
  ids = jnp.broadcast_to(jnp.arange(n), answers.shape) if sample_ids is None else jnp.asarray(sample_ids)
  chex.assert_equal_shape([answers, ids])
  # A sample repeats an earlier kept one with the same text: it counts once.
  same = (ids[..., :, None] == ids[..., None, :]) & keep[..., None, :] & (jnp.arange(n)[None, :] < jnp.arange(n)[:, None])
  first = keep & ~jnp.any(same, axis=-1)
  onehot = jax.nn.one_hot(answers, n if num_answers is None else num_answers, dtype=jnp.float32)
  scores = jnp.einsum("...n,...na->...a", jnp.where(first, probs, 0.0), onehot)
  voted = jnp.einsum("...n,...na->...a", first.astype(jnp.float32), onehot) > 0
  scores = jnp.where(voted, scores, -jnp.inf)
  return jnp.where(jnp.any(has, axis=-1), jnp.argmax(scores, axis=-1), -1).astype(jnp.int32)
