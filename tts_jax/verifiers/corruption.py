"""A verifier of known quality: an exact verdict corrupted to a chosen ROC AUC.

A corrupted checker scores r = clip(sigmoid(z), eps, 1 - eps), z = mu (y - 1/2) + e, with y
the exact verdict and e a standard normal that is a pure function of (seed, prompt ids,
completion ids, done): the same text always gets the same score. Right and wrong texts'
logits then differ by mu in mean, so the ROC AUC of the score against y is Phi(mu / sqrt 2):
mu = sqrt 2 Phi^-1(auc).

e comes from an integer hash of the ids (murmur3's 32-bit finaliser, uint32 arithmetic) that
runs the same in numpy, for pools on the host, and in jax.numpy, inside a search engine's
program: the two give the same uniform bit for bit, and the same normal up to float rounding
(float64 on the host, float32 on device), and the engine needs no host callback for it.
"""

from __future__ import annotations

from statistics import NormalDist

import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
import scipy.special

_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads small integers over the words


def _mix(x, xp):
  """murmur3's 32-bit finaliser: a bijection of uint32 words in which every input bit flips
  each output bit with probability ~1/2."""
  x = x ^ (x >> 16)
  x = x * xp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * xp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def sequence_hash(ids, lengths, salt: int, xp=np):
  """uint32[...] hash of each sequence ids[..., :lengths] (ids int[..., T], lengths int[...]).
  Ids at or past a sequence's length do not count, so neither does the padding width. xp:
  numpy or jax.numpy, the same words from both."""
  pos = xp.arange(ids.shape[-1])
  key = _mix(pos.astype(xp.uint32) * xp.uint32(_GOLDEN) + xp.uint32(salt), xp)  # one key per position
  v = _mix(_mix(ids.astype(xp.uint32) ^ key, xp) + key, xp)
  v = xp.where(pos < lengths[..., None], v, xp.uint32(0))
  return _mix(xp.sum(v, axis=-1, dtype=xp.uint32) ^ _mix(lengths.astype(xp.uint32) + xp.uint32(salt), xp), xp)


def checker_noise(seed, prompt_tokens, prompt_lengths, tokens, lengths, done, xp=np):
  """Standard normals e[B, N], each a pure function of (seed, its prompt's ids, its own ids, done).

  prompt_tokens int[B, Tp], prompt_lengths int[B], tokens int[B, N, T], lengths int[B, N],
  done bool[B, N]; seed an int (or int32 scalar array). numpy (xp=np): float64 normals;
  jax.numpy: float32 normals of the same uniforms. The uniform is (h // 2^8 + 1/2) / 2^24 of
  the 32-bit hash h, exact in float32, in (0, 1)."""
  with np.errstate(over="ignore"):  # uint32 products wrap, as they do in XLA
    hp = sequence_hash(xp.asarray(prompt_tokens), xp.asarray(prompt_lengths), 1, xp)  # [B]
    hc = sequence_hash(xp.asarray(tokens), xp.asarray(lengths), 2, xp)  # [B, N]
    s = _mix(xp.asarray(seed).astype(xp.uint32) * xp.uint32(_GOLDEN) + xp.uint32(3), xp)
    h = _mix(hc ^ _mix(hp[:, None] ^ s, xp) + xp.asarray(done).astype(xp.uint32), xp)
  if xp is np:
    return scipy.special.ndtri(((h >> 8).astype(np.float64) + 0.5) * 2.0 ** -24)
  return jsp.ndtri(((h >> 8).astype(jnp.float32) + 0.5) * jnp.float32(2.0 ** -24))


def corruption_scale(auc: float) -> float:
  """mu such that N(mu/2, 1) against N(-mu/2, 1) has ROC AUC `auc`: sqrt 2 Phi^-1(auc)."""
  if not 0.5 <= auc < 1:
    raise ValueError(f"a corrupted checker's auc must be in [0.5, 1) (1: the exact checker), got {auc!r}")
  return 2 ** 0.5 * NormalDist().inv_cdf(auc)


def check_verifier_auc(method) -> None:
  """Raises ValueError unless `method.verifier_auc` is 1, or in [0.5, 1) with verifier="oracle"."""
  if method.verifier_auc != 1:
    if method.verifier != "oracle":
      raise ValueError(f"{type(method).__name__}.verifier_auc corrupts the exact checker (verifier='oracle'); "
                       f"got verifier={method.verifier!r} with verifier_auc={method.verifier_auc!r}")
    corruption_scale(method.verifier_auc)


def corrupted_scores(ok, noise, auc: float, eps: float = 0.01) -> np.ndarray:
  """float64 probabilities r of exact verdicts `ok` (bool array) with standard normal `noise`
  of the same shape (host): the exact 1 - eps / eps at auc = 1, else clip(sigmoid(z), eps, 1 - eps)."""
  ok = np.asarray(ok, bool)
  if auc >= 1:
    return np.where(ok, 1 - eps, eps)
  z = corruption_scale(auc) * (ok - 0.5) + np.asarray(noise, np.float64)
  return np.clip(1 / (1 + np.exp(-z)), eps, 1 - eps)


def corrupted_logits(ok: jnp.ndarray, noise: jnp.ndarray, auc, eps: float) -> jnp.ndarray:
  """float32 logit r of the corrupted score (inside a program; auc may be a float32 tracer,
  in [0.5, 1)): clip(z, logit eps, logit(1 - eps)), z = mu (ok - 1/2) + noise. [...] -> [...]"""
  mu = jnp.sqrt(jnp.float32(2.0)) * jsp.ndtri(jnp.asarray(auc, jnp.float32))
  z = mu * (ok.astype(jnp.float32) - 0.5) + noise
  bound = float(np.log((1 - eps) / eps))
  return jnp.clip(z, -bound, bound)
