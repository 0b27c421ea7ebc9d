"""Twists for twisted SMC: the optimal (exact) twists of a tabular LM, and contrastive
twist learning (CTL, Zhao et al. 2024) for any twist model, with optax.

The optimal twist of target sigma(x) proportional to p(x) phi(x) is
psi*_t(x_{1:t}) = E_p[phi(X) | x_{1:t}] (= phi(x) once x is complete); with it the
twisted proposal samples sigma exactly and every SMC estimate of Z equals Z.

CTL minimises sum_t KL(sigma_t || pi_t), pi_t(x_{1:t}) proportional to
p(x_{1:t}) psi_t(x_{1:t}), whose gradient is
    sum_t E_{pi_t}[grad log psi_t] - E_{sigma}[grad log psi_t].
Both expectations are estimated from one importance-sampling run of the current
twisted proposal: sigma by the final weights, pi_t by the weights of the prefixes at t.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tts_jax.smc.driver import run_smc
from tts_jax.smc.engine import SMCConfig
from tts_jax.smc.resample import Resample


def optimal_tabular_twists(lm, params, prompt, max_new_tokens: int, log_phi, stop_tokens=()) -> np.ndarray:
  """The optimal log-twists of a `TabularLM` as a twist table.

  Args:
    lm, params: the tabular policy.
    prompt: the prompt token ids.
    max_new_tokens: T; a generation is complete at a stop token or after T tokens.
    log_phi: function (generation tuple) -> log phi of a complete generation.
    stop_tokens: token ids that complete a generation.

  Returns:
    float32[num_prefixes, V]: row id(s), column x holds log psi*(s + [x]) for every prefix s
    of the generation (zeros elsewhere); use it as params {"logits": table} of a `TabularLM`
    twist model.
  """
  table = np.asarray(params["logits"], np.float64)
  logp = table - np.logaddexp.reduce(table, axis=1, keepdims=True)
  v = lm.vocab_size
  out = np.zeros((lm.num_prefixes, v))
  stops = set(int(s) for s in stop_tokens)

  def value(seq, pid, n):
    """log psi*(seq); fills the row of pid."""
    if seq and (seq[-1] in stops or len(seq) == max_new_tokens):
      return float(log_phi(tuple(seq)))
    for t in range(v):
      nxt = pid * v + t + 1 if n < lm.max_length else lm.num_prefixes - 1
      out[pid, t] = value(seq + [t], nxt, n + 1)
    return float(np.logaddexp.reduce(logp[pid] + out[pid]))

  value([], lm.prefix_id(prompt), len(prompt))
  return out.astype(np.float32)


def _joined(prompt_tokens, prompt_lengths, tokens):
  """Prompt + generation per particle: int32[B * N, Tp + T] and each generated token's
  position in it int32[B, N, T]."""
  b, n, t = tokens.shape
  tp = prompt_tokens.shape[1]
  pos = prompt_lengths[:, None, None] + jnp.arange(t)[None, None, :]  # [B, 1, T]
  joined = jnp.concatenate([jnp.broadcast_to(prompt_tokens[:, None, :], (b, n, tp)).astype(jnp.int32),
                            jnp.zeros((b, n, t), jnp.int32)], axis=-1)
  rows = jnp.broadcast_to(pos, (b, n, t))
  joined = jax.vmap(jax.vmap(lambda row, p, x: row.at[p].set(x)))(joined, rows, tokens)
  return joined.reshape(b * n, tp + t), rows


def token_log_twists(twist, twist_params, prompt_tokens, prompt_lengths, tokens) -> jax.Array:
  """log psi(x_{1:t}) float32[B, N, T] of every generated prefix, by one forward pass of the
  twist model over prompt + generation (values past a particle's length are meaningless)."""
  b, n, t = tokens.shape
  joined, pos = _joined(prompt_tokens, prompt_lengths, tokens)
  out = twist.forward(twist_params, joined).reshape(b, n, joined.shape[-1], -1)  # [B, N, Tp+T, V]
  before = jnp.take_along_axis(out, (pos - 1)[..., None], axis=2)  # outputs at the position before each token
  return jnp.take_along_axis(before, tokens[..., None], axis=-1)[..., 0]


def ctl_loss(twist, twist_params, prompt_tokens, prompt_lengths, particles) -> jax.Array:
  """The CTL surrogate loss of one importance-sampling run (`particles` from `run_smc`
  with ess_threshold=0): its gradient is the CTL gradient estimate."""
  log_psi = token_log_twists(twist, twist_params, prompt_tokens, prompt_lengths, particles.tokens)
  t = particles.tokens.shape[-1]
  valid = jnp.arange(t)[None, None, :] < particles.length[..., None]  # [B, N, T]
  cum = jnp.cumsum(particles.logp - particles.logq, axis=-1)
  lw_t = jnp.where(valid, cum + jax.lax.stop_gradient(log_psi), -jnp.inf)
  w_t = jax.nn.softmax(lw_t, axis=1)  # pi_t: over the particles of each prompt alive at t
  w_t = jnp.where(valid, w_t, 0.0)
  w_sigma = jax.nn.softmax(particles.log_weights, axis=1)[..., None]  # sigma: the final weights
  coef = jax.lax.stop_gradient(jnp.where(valid, w_t - w_sigma, 0.0))
  return jnp.sum(coef * log_psi) / prompt_tokens.shape[0]


@dataclasses.dataclass(frozen=True)
class CTLConfig:
  """steps of CTL, each on one importance-sampling run of `num_particles` per prompt."""

  steps: int = 300
  num_particles: int = 256
  learning_rate: float = 0.05
  seed: int = 0


def train_twists(lm, params, twist, twist_params, prompt_tokens, prompt_lengths, *, smc: SMCConfig, potential,
                 potential_params=None, ctl: CTLConfig = CTLConfig(), callback=None):
  """Contrastive twist learning with Adam.

  smc: the engine config of the target (delimiters, stop tokens, T, proposal); its
    num_particles and selection are replaced by CTL's (importance sampling).
  callback(step, twist_params, loss) is called after every update (e.g. to log).
  Returns the trained twist params.
  """
  cfg = dataclasses.replace(smc, num_particles=ctl.num_particles, select=Resample(ess_threshold=0.0))
  opt = optax.adam(ctl.learning_rate)
  twist_params = jax.tree.map(jnp.array, twist_params)  # a copy: the caller's arrays are not donated
  state = opt.init(twist_params)
  root = jax.random.key(ctl.seed)
  for i in range(ctl.steps):
    twist_params, state, loss, _ = ctl_update(lm, params, potential_params, twist_params, state, prompt_tokens,
                                              prompt_lengths, jax.random.fold_in(root, i), twist=twist, cfg=cfg,
                                              potential=potential, opt=opt)
    if callback is not None:
      callback(i, twist_params, loss)
  return twist_params


@functools.partial(jax.jit, static_argnames=("lm", "twist", "cfg", "potential", "opt"), donate_argnums=(3, 4))
def ctl_update(lm, params, potential_params, twist_params, opt_state, prompt_tokens, prompt_lengths, key, *, twist,
               cfg: SMCConfig, potential, opt):
  """One CTL step: an importance-sampling run of `cfg` (its selection should be
  `Resample(ess_threshold=0)`) under the current twist, then one `opt` update on `ctl_loss`.
  Returns (twist params, optimizer state, loss, mean normalized ESS of the run's final
  weights); the twist params and optimizer state passed in are donated."""
  parts = run_smc(lm, params, prompt_tokens, prompt_lengths, key, cfg=cfg, potential=potential,
                  potential_params=potential_params, twist=twist, twist_params=twist_params)
  loss, grads = jax.value_and_grad(lambda q: ctl_loss(twist, q, prompt_tokens, prompt_lengths, parts))(twist_params)
  updates, opt_state = opt.update(grads, opt_state, twist_params)
  ess = jnp.mean(1.0 / jnp.sum(jax.nn.softmax(parts.log_weights, axis=1) ** 2, axis=1)) / cfg.num_particles
  return optax.apply_updates(twist_params, updates), opt_state, loss, ess
