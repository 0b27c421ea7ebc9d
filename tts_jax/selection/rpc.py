"""RPC: Perplexity Consistency with Reasoning Pruning (Zhou et al., NeurIPS 2025), in JAX.

Each sample's confidence is its probability p_i = exp(mean token log-prob).
Reasoning Pruning fits a two-component Weibull mixture to the p_i of a problem and
drops samples that belong to the low-probability component and lie below the mean p.
Perplexity Consistency scores each answer by the sum of p_i over its *distinct*
remaining samples (identical completions count once, so the score estimates the
answer's probability mass) and picks the highest.

Everything is array code over [..., N] (vmapped over problems and subsets, jittable):
the mixture is fitted by maximum likelihood with exact gradients (`jax.grad`) and
`optax.lbfgs` for a fixed number of iterations from several starting points (the best
likelihood wins), with the parameters kept in their bounds (w in [0.2, 0.8], shapes
and scales >= 0.01) by a sigmoid / softplus reparametrisation. The likelihood is
unbounded (a component can spike on one sample); a fixed, modest iteration count stops
before float32 loses the spike (more iterations chase float32 noise there).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import optax

# (w, k1, l1, k2, l2) starting points; the first is the classic one (w = 0.5, a unit
# exponential and a broader Weibull), the others start the components apart.
STARTS = ((0.5, 1.0, 1.0, 1.5, 2.0), (0.5, 2.0, 0.3, 2.0, 0.8), (0.3, 4.0, 0.4, 4.0, 0.9), (0.7, 1.0, 0.1, 3.0, 0.6))
_FLOOR = 0.01


def _to_theta(u):
  w = 0.2 + 0.6 * jax.nn.sigmoid(u[0])
  return jnp.concatenate([w[None], _FLOOR + jax.nn.softplus(u[1:])])


def _to_u(theta):
  w = (theta[0] - 0.2) / 0.6
  rest = theta[1:] - _FLOOR
  return jnp.concatenate([jnp.log(w / (1 - w))[None], rest + jnp.log(-jnp.expm1(-rest))])  # softplus inverse


def _weibull_logpdf(x, k, lam):
  z = jnp.log(x) - jnp.log(lam)
  t = k * z
  # exp(t), continued linearly past t = 80 so float32 never overflows and the penalty keeps growing.
  e = jnp.where(t > 80.0, jnp.exp(80.0) * (t - 79.0), jnp.exp(jnp.minimum(t, 80.0)))  # (float32 callers)
  return jnp.log(k) - jnp.log(lam) + (k - 1) * z - e


def _component_logliks(theta, x):
  """[2, N]: log(w pdf1(x)), log((1 - w) pdf2(x))."""
  w, k1, l1, k2, l2 = theta
  return jnp.stack([jnp.log(w) + _weibull_logpdf(x, k1, l1), jnp.log1p(-w) + _weibull_logpdf(x, k2, l2)])


def mixture_nll(theta, x) -> jax.Array:
  """Negative log-likelihood of the mixture theta = (w, k1, l1, k2, l2) at x float[N] > 0."""
  return -jnp.sum(jax.nn.logsumexp(_component_logliks(theta, x), axis=0))


def fit_weibull_mixture(x, iterations: int = 60) -> jax.Array:
  """Maximum-likelihood (w, k1, l1, k2, l2) of a two-component Weibull mixture for x float[N] > 0.

  L-BFGS (optax, zoom line search) with exact gradients for `iterations` steps from each
  of STARTS and from ten data-driven starts (a narrow component on each quintile of x);
  returns the parameters with the lowest finite NLL (float32[5]).
  """
  x = jnp.asarray(x, jnp.float32)
  fun = lambda u: mixture_nll(_to_theta(u), x)  # noqa: E731
  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(fun)

  def run(u0):
    def step(carry, _):
      u, state = carry
      value, grad = value_and_grad(u, state=state)
      updates, state = solver.update(grad, state, u, value=value, grad=grad, value_fn=fun)
      u_new = optax.apply_updates(u, updates)
      return (jnp.where(jnp.all(jnp.isfinite(u_new)), u_new, u), state), None

    (u, _), _ = jax.lax.scan(step, (u0, solver.init(u0)), None, length=iterations)
    return u

  # Fixed starts, plus a narrow component (shape 5 or 20) on each quintile of the sample
  # next to a broad one on the mean.
  q = jnp.quantile(x, jnp.linspace(0.0, 1.0, 5))
  mid = jnp.full_like(q, jnp.mean(x))
  data = jnp.concatenate([jnp.stack([jnp.full_like(q, 0.5), jnp.full_like(q, k), q, jnp.ones_like(q), mid], axis=1)
                          for k in (5.0, 20.0)])
  starts = jnp.concatenate([jnp.asarray(STARTS, x.dtype), jnp.clip(data, 0.02, None)])
  us = jax.vmap(run)(jax.vmap(_to_u)(starts))
  nll = jax.vmap(fun)(us)
  nll = jnp.where(jnp.isfinite(nll), nll, jnp.inf)
  return _to_theta(us[jnp.argmin(nll)])


def _prune_one(probs, iterations):
  x = jnp.clip(probs, 1e-12, None)
  theta = fit_weibull_mixture(x, iterations)
  w, k1, l1, k2, l2 = theta
  mean = lambda k, lam: lam * jnp.exp(jax.scipy.special.gammaln(1 + 1 / k))  # noqa: E731
  swap = mean(k1, l1) < mean(k2, l2)  # component 1 = the high-probability one
  ll = _component_logliks(theta, x)
  high, low = jnp.where(swap, ll[1], ll[0]), jnp.where(swap, ll[0], ll[1])
  keep = ~((high < low) & (probs < jnp.mean(probs)))
  return jnp.where(jnp.ptp(probs) <= 1e-12, True, keep)


def prune_mask(probs: jax.Array, iterations: int = 60) -> jax.Array:
  """bool[..., N]: samples kept by Reasoning Pruning (all kept when N < 4 or the probs are
  constant). probs: float[..., N] sample probabilities exp(mean token log-prob)."""
  probs = jnp.asarray(probs, jnp.float32)
  n = probs.shape[-1]
  if n < 4:
    return jnp.ones(probs.shape, bool)
  flat = probs.reshape(-1, n)
  return jax.vmap(functools.partial(_prune_one, iterations=iterations))(flat).reshape(probs.shape)


def rpc_vote(answers: jax.Array, mean_logprob: jax.Array, sample_ids: jax.Array | None = None, prune: bool = True,
             num_answers: int | None = None) -> jax.Array:
  """The answer id RPC picks: int32[..., N] answers (-1 = none) -> int32[...] (-1 if none).

  mean_logprob: float[..., N] mean per-token log-prob of each sample under the model.
  sample_ids: int[..., N] ids of distinct completions (equal ids = identical text, hence
  equal answers and probabilities); default all distinct. prune: Reasoning Pruning.
  num_answers: the answer id range (default N). Ties go to the answer that appeared first.
  When pruning leaves no sample with an answer, the unpruned samples vote.
  """
  chex.assert_equal_shape([answers, mean_logprob])
  n = answers.shape[-1]
  probs = jnp.exp(jnp.asarray(mean_logprob, jnp.float32))
  has = answers >= 0
  keep = (prune_mask(probs) if prune else jnp.ones(answers.shape, bool)) & has
  keep = jnp.where(jnp.any(keep, axis=-1, keepdims=True), keep, has)
  ids = jnp.broadcast_to(jnp.arange(n), answers.shape) if sample_ids is None else jnp.asarray(sample_ids)
  chex.assert_equal_shape([answers, ids])
  # A sample repeats an earlier kept one with the same text: it counts once.
  same = (ids[..., :, None] == ids[..., None, :]) & keep[..., None, :] & (jnp.arange(n)[None, :] < jnp.arange(n)[:, None])
  first = keep & ~jnp.any(same, axis=-1)
  a = n if num_answers is None else num_answers
  onehot = jax.nn.one_hot(answers, a, dtype=jnp.float32)
  scores = jnp.einsum("...n,...na->...a", jnp.where(first, probs, 0.0), onehot)
  voted = jnp.einsum("...n,...na->...a", first.astype(jnp.float32), onehot) > 0
  scores = jnp.where(voted, scores, -jnp.inf)
  return jnp.where(jnp.any(has, axis=-1), jnp.argmax(scores, axis=-1), -1).astype(jnp.int32)
