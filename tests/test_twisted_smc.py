"""Twisted SMC, log Z bounds and contrastive twist learning against exact enumeration."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from tests.tabular_target import make_target
from tts_jax.models.tabular import TabularLM, enumerate_generations
from tts_jax.sampling import SamplingParams
from tts_jax.smc import Resample, SMCConfig, run_smc
from tts_jax.smc.bounds import log_z_bounds
from tts_jax.smc.twists import CTLConfig, optimal_tabular_twists, train_twists

DELIM, EOS = 0, 3


@pytest.fixture(scope="module")
def target():
  return make_target(final_only=True)


def _cfg(tgt, **kw):
  return SMCConfig(max_new_tokens=tgt.max_new, delimiters=(DELIM,), stop_tokens=tgt.stops, **kw)


@pytest.mark.parametrize("n", [1, 3, 16])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_optimal_twists_give_log_z_exactly(target, n, threshold):
  _, _, log_z = target.log_sigma()
  table = optimal_tabular_twists(target.lm, target.params, target.prompt, target.max_new, target.log_phi,
                                 target.stops)
  twist = TabularLM(target.lm.vocab_size, target.lm.max_length)
  p = run_smc(target.lm, target.params, *target.prompts(50), jax.random.key(n),
              cfg=_cfg(target, num_particles=n, select=Resample(ess_threshold=threshold)), potential=target.potential,
              twist=twist, twist_params={"logits": jnp.asarray(table)})
  assert np.all(np.asarray(p.done))
  np.testing.assert_allclose(np.asarray(p.final_log_z()), log_z, atol=2e-5)
  # Every particle's weight is the same: the twisted proposal is the target.
  lw = np.asarray(p.log_weights)
  np.testing.assert_allclose(lw, np.broadcast_to(lw[:, :1], lw.shape), atol=2e-5)


def test_bounds_sandwich_log_z_and_tighten_with_n(target):
  _, _, log_z = target.log_sigma()
  reps = 2000
  ref_t, ref_l = target.exact_samples(reps, seed=0)
  out = {}
  for n in (1, 4, 16):
    out[n] = log_z_bounds(target.lm, target.params, *target.prompts(reps), jax.random.key(n),
                          cfg=_cfg(target, num_particles=n), potential=target.potential,
                          reference_tokens=ref_t, reference_lengths=ref_l)
  # The proposal is p itself: the exact KL(p || sigma) must lie in every N's KL interval.
  seqs, lu, _ = target.log_sigma()
  _, logp = target.generations
  kl_exact = float(np.sum(np.exp(logp) * (logp - (lu - log_z))))
  for n, b in out.items():
    assert b.smc_lower < log_z + 3 * b.smc_lower_se, (n, b, log_z)
    assert b.csmc_upper > log_z - 3 * b.csmc_upper_se, (n, b, log_z)
    assert b.iwae_lower < log_z + 3 * b.iwae_lower_se and b.iwae_upper > log_z - 3 * b.iwae_upper_se, (n, b)
    lo, hi = b.kl_q_sigma
    margin = 3 * (b.smc_lower_se + b.csmc_upper_se + b.elbo_se)
    assert lo - margin <= kl_exact <= hi + margin, (n, lo, kl_exact, hi)
  # Tighten: the gaps shrink as N grows (differences far beyond their standard errors).
  for a, c in ((1, 4), (4, 16)):
    assert out[c].smc_lower > out[a].smc_lower + 3 * out[a].smc_lower_se
    assert out[c].csmc_upper < out[a].csmc_upper - 3 * out[a].csmc_upper_se
  assert out[16].csmc_upper - out[16].smc_lower < 0.25 * (out[1].csmc_upper - out[1].smc_lower)


def test_one_particle_elbo_and_eubo_give_the_exact_kls(target):
  """N = 1, no resampling, a tempered proposal: log Z - ELBO = KL(q||sigma), EUBO - log Z = KL(sigma||q)."""
  temp = 1.6
  seqs, lu, log_z = target.log_sigma()
  q_seqs, log_q = enumerate_generations(target.lm, target.params, target.prompt, target.max_new, target.stops,
                                        temperature=temp)
  assert q_seqs == seqs
  log_s = lu - log_z
  kl_qs = float(np.sum(np.exp(log_q) * (log_q - log_s)))
  kl_sq = float(np.sum(np.exp(log_s) * (log_s - log_q)))
  reps = 4000
  ref_t, ref_l = target.exact_samples(reps, seed=1)
  cfg = _cfg(target, num_particles=1, select=Resample("multinomial", 0.0), proposal=SamplingParams(temperature=temp))
  lower = run_smc(target.lm, target.params, *target.prompts(reps), jax.random.key(0), cfg=cfg,
                  potential=target.potential)
  upper = run_smc(target.lm, target.params, *target.prompts(reps), jax.random.key(1), cfg=cfg,
                  potential=target.potential, reference_tokens=ref_t, reference_lengths=ref_l)
  elbo = np.asarray(lower.log_weights[:, 0], np.float64)
  eubo = np.asarray(upper.log_weights[:, 0], np.float64)
  # The reference is held exactly: particle 0 reproduces the exact samples.
  np.testing.assert_array_equal(np.asarray(upper.tokens[:, 0]), np.asarray(ref_t))
  se = lambda x: x.std(ddof=1) / np.sqrt(len(x))
  assert abs((log_z - elbo.mean()) - kl_qs) < 3 * se(elbo), (log_z - elbo.mean(), kl_qs, se(elbo))
  assert abs((eubo.mean() - log_z) - kl_sq) < 3 * se(eubo), (eubo.mean() - log_z, kl_sq, se(eubo))
  assert kl_qs > 10 * se(elbo) and kl_sq > 10 * se(eubo)  # the test can tell a wrong KL from zero


@pytest.mark.parametrize("threshold", [0.5, 1.0])
def test_many_particle_outputs_follow_the_target(target, threshold):
  """One output per run, drawn by final weights, over 3000 runs of 64 particles: chi-square vs sigma."""
  seqs, lu, log_z = target.log_sigma()
  reps, n = 3000, 64
  p = run_smc(target.lm, target.params, *target.prompts(reps), jax.random.key(11),
              cfg=_cfg(target, num_particles=n, select=Resample(ess_threshold=threshold)), potential=target.potential)
  pick = jax.vmap(lambda k, lw: jax.random.categorical(k, lw))(jax.random.split(jax.random.key(12), reps),
                                                                p.log_weights)
  rows = np.arange(reps)
  idx = target.seq_index(np.asarray(p.tokens)[rows, np.asarray(pick)], np.asarray(p.length)[rows, np.asarray(pick)])
  expected = reps * np.exp(lu - log_z)
  counts = np.bincount(idx, minlength=len(seqs)).astype(float)
  big = expected >= 5
  obs = np.append(counts[big], counts[~big].sum())
  exp_ = np.append(expected[big], expected[~big].sum())
  assert stats.chisquare(obs, exp_).pvalue > 1e-3
  # ...and a wrong target (the model p itself) is rejected by the same test.
  _, logp = target.generations
  exp_p = reps * np.exp(logp)
  assert stats.chisquare(np.append(counts[big], counts[~big].sum()),
                         np.append(exp_p[big], exp_p[~big].sum())).pvalue < 1e-6


def test_ctl_learns_the_optimal_twists_up_to_a_constant():
  """Fixed-length target (Zhao et al.'s setting): CTL's twists match log psi* up to a per-t constant."""
  tgt = make_target(vocab=3, max_new=4, prompt=(1,), stops=(), seed=7, phi_scale=1.5, final_only=True)
  twist = TabularLM(tgt.lm.vocab_size, tgt.lm.max_length)
  opt = optimal_tabular_twists(tgt.lm, tgt.params, tgt.prompt, tgt.max_new, tgt.log_phi)
  cfg = SMCConfig(max_new_tokens=tgt.max_new, max_step_tokens=1)
  init = {"logits": jnp.zeros_like(tgt.params["logits"])}
  learned = train_twists(tgt.lm, tgt.params, twist, init, *tgt.prompts(1), smc=cfg, potential=tgt.potential,
                         ctl=CTLConfig(steps=300, num_particles=256, learning_rate=0.05))
  learned = np.asarray(learned["logits"])
  seqs, lu, log_z = tgt.log_sigma()
  sigma = np.exp(lu - log_z)

  def rel_err(table):
    """Per t: sigma-weighted variance of (table - log psi*) over prefixes of length t+1, relative to that of log psi*."""
    out = []
    for t in range(tgt.max_new):
      marg: dict = {}
      for s, w in zip(seqs, sigma):
        marg[s[:t + 1]] = marg.get(s[:t + 1], 0.0) + w
      ws, d, o = [], [], []
      for pre, w in marg.items():
        row, col = tgt.lm.prefix_id(tgt.prompt + list(pre[:-1])), pre[-1]
        ws.append(w), d.append(table[row, col] - opt[row, col]), o.append(opt[row, col])
      ws, d, o = map(np.array, (ws, d, o))
      var = lambda x: np.sum(ws * (x - np.sum(ws * x)) ** 2)
      out.append(var(d) / var(o))
    return np.array(out)

  before, after = rel_err(np.zeros_like(learned)), rel_err(learned)
  np.testing.assert_allclose(before, 1.0)
  assert np.all(after < 0.05), after
  # The learned twists cut the variance of log Z_hat (N = 4, IS) by a large factor.
  cfg4 = SMCConfig(num_particles=4, max_new_tokens=tgt.max_new, max_step_tokens=1, 
                   select=Resample(ess_threshold=0.0))
  def var_log_z(tp):
    p = run_smc(tgt.lm, tgt.params, *tgt.prompts(2000), jax.random.key(3), cfg=cfg4, potential=tgt.potential,
                twist=twist, twist_params=tp)
    return float(np.var(np.asarray(p.final_log_z())))
  assert var_log_z({"logits": jnp.asarray(learned)}) < 0.1 * var_log_z(init)


def test_transformer_twist_head_plumbing():
  """A zero twist head (psi = 1) changes nothing; a trained-for-a-few-steps head runs through CTL."""
  from tts_jax.models import init, qwen2_config
  from tts_jax.models.twist_head import init_twist
  cfg = qwen2_config(vocab_size=9, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_position_embeddings=32)
  lm, params = init(cfg, seed=0)
  twist, tparams = init_twist(cfg, seed=1, trunk_params=params)
  smc = SMCConfig(num_particles=4, max_new_tokens=6, stop_tokens=(8,), max_step_tokens=2,
                  select=Resample(ess_threshold=0.5))
  pot = lambda tokens, lengths, done: -jnp.sum(tokens == 3, axis=-1).astype(jnp.float32)
  prompts, plens = jnp.asarray([[1, 2, 3], [4, 5, 0]]), jnp.asarray([3, 2])
  plain = run_smc(lm, params, prompts, plens, jax.random.key(0), cfg=smc, potential=pot)
  twisted = run_smc(lm, params, prompts, plens, jax.random.key(0), cfg=smc, potential=pot, twist=twist,
                    twist_params=tparams)
  np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(twisted.tokens))
  np.testing.assert_allclose(np.asarray(plain.final_log_z()), np.asarray(twisted.final_log_z()), atol=1e-5)
  losses = []
  trained = train_twists(lm, params, twist, tparams, prompts, plens, smc=smc, potential=pot,
                         ctl=CTLConfig(steps=3, num_particles=8, learning_rate=0.01),
                         callback=lambda i, tp, loss: losses.append(float(loss)))
  assert len(losses) == 3 and np.all(np.isfinite(losses))
  head = np.asarray(trained["twist_head"]["kernel"])
  assert np.abs(head).max() > 0  # the head moved
