"""Resampling schemes and the effective sample size.

Each scheme is `f(key, log_weights, num) -> int32[num]` ancestor indices for
float[N] unnormalised log-weights; jittable, static shapes (vmap for batches).
All draw positions u in [0, total) on the cumulative sum of the unnormalised
weights exp(lw - max), so a float32 cumulative sum that ends below 1 cannot push
a draw past the last particle, and a zero-weight particle (an empty interval of
the cumulative sum) is never chosen.

  multinomial: N i.i.d. draws.
  stratified:  one uniform draw in each of N equal strata.
  systematic:  one shared offset, N evenly spaced positions (lowest variance in
               practice; uniform weights give each particle exactly once).
  residual:    floor(N w_i) copies of each particle, the remaining R draws
               multinomial on the residual weights N w_i - floor(N w_i).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Resampler = Callable[[jax.Array, jax.Array, int], jax.Array]


def _unnormalised(log_weights: jax.Array) -> jax.Array:
  lw = log_weights.astype(jnp.float32)
  m = jnp.max(lw)
  return jnp.where(jnp.isfinite(lw), jnp.exp(lw - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)


def _invert(w: jax.Array, positions01: jax.Array) -> jax.Array:
  """Indices i with cdf[i-1] <= u < cdf[i] for u = positions01 * total."""
  cdf = jnp.cumsum(w)
  u = positions01 * cdf[-1]
  idx = jnp.searchsorted(cdf, u, side="right")
  return jnp.minimum(idx, w.shape[0] - 1).astype(jnp.int32)


def multinomial(key: jax.Array, log_weights: jax.Array, num: int) -> jax.Array:
  """num i.i.d. draws from the normalised weights."""
  return _invert(_unnormalised(log_weights), jax.random.uniform(key, (num,)))


def stratified(key: jax.Array, log_weights: jax.Array, num: int) -> jax.Array:
  """One uniform draw in each stratum [i/num, (i+1)/num)."""
  u = (jnp.arange(num) + jax.random.uniform(key, (num,))) / num
  return _invert(_unnormalised(log_weights), u)


def systematic(key: jax.Array, log_weights: jax.Array, num: int) -> jax.Array:
  """Positions (i + U) / num with one shared U ~ Uniform[0, 1)."""
  u = (jnp.arange(num) + jax.random.uniform(key, ())) / num
  return _invert(_unnormalised(log_weights), u)


def residual(key: jax.Array, log_weights: jax.Array, num: int) -> jax.Array:
  """floor(num * w_i) deterministic copies, then multinomial on the residuals."""
  w = _unnormalised(log_weights)
  scaled = num * w / jnp.sum(w)
  copies = jnp.floor(scaled)
  copies = jnp.where(jnp.cumsum(copies) <= num, copies, 0.0)  # guard against rounding overshoot
  det = jnp.sum(copies).astype(jnp.int32)
  slots = jnp.arange(num)
  det_idx = jnp.searchsorted(jnp.cumsum(copies), slots.astype(jnp.float32), side="right")
  rest = jnp.maximum(scaled - copies, 0.0)
  rest = jnp.where(jnp.sum(rest) > 0, rest, w)  # only reached when det == num (no draws used)
  res_idx = _invert(rest, jax.random.uniform(key, (num,)))
  res_idx = jnp.roll(res_idx, det)  # draw j - det goes to slot j >= det
  return jnp.where(slots < det, det_idx, res_idx).astype(jnp.int32)


SCHEMES: dict[str, Resampler] = {"multinomial": multinomial, "stratified": stratified, "systematic": systematic,
                                 "residual": residual}


def get_resampler(name: str) -> Resampler:
  if name not in SCHEMES:
    raise ValueError(f"unknown resampling scheme {name!r}; available: {', '.join(SCHEMES)}")
  return SCHEMES[name]


def ess(log_weights: jax.Array, axis: int = -1) -> jax.Array:
  """Effective sample size (sum w)^2 / sum w^2 from unnormalised log-weights, in [1, N]
  (0 when every weight is zero)."""
  lw = log_weights.astype(jnp.float32)
  top = jnp.max(lw, axis=axis, keepdims=True)
  lw = lw - jnp.where(jnp.isfinite(top), top, 0.0)  # a common offset cancels: keep precision
  a = jax.nn.logsumexp(lw, axis=axis)
  b = jax.nn.logsumexp(2 * lw, axis=axis)
  return jnp.where(jnp.isfinite(a), jnp.exp(2 * a - b), 0.0)
