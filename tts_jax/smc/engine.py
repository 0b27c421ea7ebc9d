"""The particle engine: extend every particle to its next step boundary -> score -> select.

Best-of-N, particle filtering, twisted SMC, step-level beam search and DVTS are
this one loop with a different `select` (`SMCConfig.select`):

  "resample"  SMC: resample within each prompt when the effective sample size falls
              below `ess_threshold` x N (1 = every step, 0 = never: importance sampling);
  "beam"      keep the top `beam_width` distinct particles of each group of `group_size`
              by potential, and refill the group with copies of them (beam search: one
              group of N; DVTS: N / M independent groups of M, width 1);
  "none"      nothing: N independent samples scored at every step (best-of-N).

Target: sigma(x) proportional to p(x) phi(x) over complete generations x, with step
potentials phi_s(x_{1:s}) (the last one is phi) and optional token-level twists
psi_t (twisted SMC, Zhao et al. 2024): the proposal is q(x_t | x_{<t}) proportional
to p'(x_t | x_{<t}) psi(x_{1:t}), where p' is the model's distribution after the
proposal's temperature / top-k / top-p / min-p. A particle's incremental log-weight
over a step is

    sum over the step's tokens of [log p - log q + log psi_t - log psi_{t-1}]
      + log phi_s - log phi_{s-1},

with psi = 1 once a particle is complete (the final target is p phi), so the running
estimate of log Z = log E_p[phi(x)] is unbiased in Z for any positive twists and
potentials. Finished particles are absorbing: never extended, never revived (their
copies stay finished). With `incremental=False` the weights are instead the current
log-potential itself at every step (the particle filter of Puri et al. 2025).

All prompts of a batch keep their particles apart: resampling and beam selection
happen within each prompt, and every random draw of prompt b comes from its own key,
its step index, the particle index and the token position, so a prompt's particles
do not depend on its batch-mates. The whole loop is one jitted `lax.while_loop` over
steps with an inner `lax.while_loop` over tokens; selection moves suffix state only
(`cache.gather`). Given an exact target sample as `reference`, particle 0 is held to
it (conditional SMC), which gives upper bounds on log Z (`tts_jax.smc.bounds`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import struct

from tts_jax.models.paged import check_pages
from tts_jax.sampling.logits import SamplingParams, process_logits
from tts_jax.smc.potentials import as_potential, gather_state
from tts_jax.smc.resampling import SCHEMES, ess, get_resampler

SELECTS = ("resample", "beam", "none")
_HASH_MULT = (jnp.uint32(1000003), jnp.uint32(2654435761))


@dataclasses.dataclass(frozen=True)
class SMCConfig:
  """How the engine runs (hashable: a static argument of `run_smc`).

  num_particles: N per prompt. max_new_tokens: T, the longest generation.
  delimiters: token ids that end a step; max_step_tokens: also end a step after this
    many tokens (0: no cap; 1: token-level SMC). stop_tokens: end a particle.
  select: "resample" | "beam" | "none" (see the module docstring).
  resampler, ess_threshold: the resampling scheme and rule (select="resample").
  incremental: True: SMC weights (ratios of potentials); False: the current potential.
  beam_width, group_size: survivors per group and the group size (select="beam";
    group_size 0 = N). dedup: identical particles count once in beam selection.
  proposal: the sampling distribution before twisting. pad_id fills unused positions.
  page_size: > 0 keeps the policy's suffix KV in a paged cache (`tts_jax.models.paged`):
    selection moves block tables and copies only duplicated partial pages; num_pages
    pages per prompt (0: enough for no sharing at all).
  """

  num_particles: int = 8
  max_new_tokens: int = 64
  delimiters: tuple[int, ...] = ()
  stop_tokens: tuple[int, ...] = ()
  max_step_tokens: int = 0
  select: str = "resample"
  resampler: str = "systematic"
  ess_threshold: float = 0.5
  incremental: bool = True
  beam_width: int = 1
  group_size: int = 0
  dedup: bool = True
  proposal: SamplingParams = SamplingParams()
  pad_id: int = 0
  page_size: int = 0
  num_pages: int = 0

  def __post_init__(self):
    if self.num_particles < 1 or self.max_new_tokens < 1:
      raise ValueError(f"num_particles and max_new_tokens must be >= 1, got {self.num_particles}, "
                       f"{self.max_new_tokens}")
    if self.select not in SELECTS:
      raise ValueError(f"select must be one of {SELECTS}, got {self.select!r}")
    if self.resampler not in SCHEMES:
      raise ValueError(f"unknown resampler {self.resampler!r}; choose from {sorted(SCHEMES)}")
    if not 0.0 <= self.ess_threshold <= 1.0:
      raise ValueError(f"ess_threshold must be in [0, 1], got {self.ess_threshold}")
    if self.max_step_tokens < 0:
      raise ValueError(f"max_step_tokens must be >= 0, got {self.max_step_tokens}")
    g = self.groups_of
    if self.num_particles % g:
      raise ValueError(f"group_size={self.group_size} must divide num_particles={self.num_particles}")
    if self.select == "beam" and not 1 <= self.beam_width <= g:
      raise ValueError(f"beam_width must be in [1, group size {g}], got {self.beam_width}")

  @property
  def groups_of(self) -> int:
    """Particles per beam-selection group."""
    return self.group_size or self.num_particles


@struct.dataclass
class Particles:
  """N particles for each of B prompts (contract 3 of DESIGN.md).

  tokens int32[B, N, T]; length int32[B, N]; logp / logq float32[B, N, T] per-token
  log-probs under the model / the proposal; log_weights float32[B, N] since the last
  resampling; log_potential float32[B, N] the current log phi_s (the score beam search
  ranks by); log_twist float32[B, N] log psi of the current prefix (0 if none / done);
  log_z float32[B] accumulated at resamplings; done bool[B, N]; steps int32[B, N] steps
  taken; ancestors int32[B, N] of the last selection; num_resamples int32[B];
  decoded int32[B] policy tokens decoded (the compute spent, discarded particles
  included); hash uint32[B, N, 2] of the tokens (identical particles hash equal);
  logits float32[B, N, V] pending next-token logits; twist_out float32[B, N, V] pending
  next-token log-twists (None without twists); cache / twist_cache / potential_state:
  the policy's, the twist model's and the potential's per-particle state.
  """

  tokens: jax.Array
  length: jax.Array
  logp: jax.Array
  logq: jax.Array
  log_weights: jax.Array
  log_potential: jax.Array
  log_twist: jax.Array
  log_z: jax.Array
  done: jax.Array
  steps: jax.Array
  ancestors: jax.Array
  num_resamples: jax.Array
  decoded: jax.Array
  hash: jax.Array
  logits: jax.Array
  twist_out: jax.Array | None
  cache: object
  twist_cache: object
  potential_state: object

  def final_log_z(self) -> jax.Array:
    """log Z_hat float32[B]: the accumulated estimate times the mean current weight."""
    n = self.log_weights.shape[-1]
    return self.log_z + jax.nn.logsumexp(self.log_weights, axis=-1) - jnp.log(n)

  def normalized_weights(self) -> jax.Array:
    """float32[B, N] final importance weights, summing to 1 per prompt."""
    return jax.nn.softmax(self.log_weights, axis=-1)


_PER_PARTICLE = ("tokens", "length", "logp", "logq", "log_weights", "log_potential", "log_twist", "done", "steps",
                 "hash", "logits", "twist_out")


def _gather(x, anc):
  return jnp.take_along_axis(x, anc.reshape(anc.shape + (1,) * (x.ndim - 2)), axis=1)


def _move(p: Particles, anc: jax.Array) -> Particles:
  """Particles `anc` int32[B, N] of each prompt: suffix state only."""
  moved = {f: _gather(getattr(p, f), anc) for f in _PER_PARTICLE if getattr(p, f) is not None}
  return p.replace(**moved, cache=p.cache.gather(anc),
                   twist_cache=None if p.twist_cache is None else p.twist_cache.gather(anc),
                   potential_state=gather_state(p.potential_state, anc), ancestors=anc)


def _prompt_keys(key: jax.Array, b: int) -> jax.Array:
  if key.ndim == 0:
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b))
  if key.shape != (b,):
    raise ValueError(f"key must be one PRNG key or one per prompt ([{b}]), got shape {key.shape}")
  return key


def _extend(lm, params, twist, twist_params, potential, potential_params, cfg: SMCConfig, keys, p: Particles,
            reference):
  """Each unfinished particle samples tokens until a step boundary, a stop token or T.

  keys: [B] keys of this step. Returns (particles, float32[B, N] the step's token log-weights).
  """
  b, n, t_max = p.tokens.shape
  delims = jnp.asarray(cfg.delimiters or (-1,), jnp.int32)
  stops = jnp.asarray(cfg.stop_tokens or (-1,), jnp.int32)
  start_len = p.length
  waiting0 = p.done
  prop = cfg.proposal
  plain = prop == SamplingParams()  # the proposal is the model itself: one log-softmax serves both
  slot_ids = jnp.arange(n)[None, :] * t_max

  def cond(c):
    return ~jnp.all(c[1])

  def body(c):
    p, waiting, logw = c
    active = ~waiting
    logp_all = jax.nn.log_softmax(p.logits, axis=-1)
    logq_all = logp_all if plain else process_logits(p.logits, temperature=prop.temperature, top_k=prop.top_k,
                                                     top_p=prop.top_p, min_p=prop.min_p)
    if p.twist_out is not None:
      logq_all = jax.nn.log_softmax(logq_all + p.twist_out, axis=-1)
    tok_keys = jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)))(keys, slot_ids + p.length)
    tok = jax.vmap(jax.vmap(jax.random.categorical))(tok_keys, logq_all).astype(jnp.int32)
    if reference is not None:
      ref_tokens, ref_lengths = reference
      at = jnp.minimum(p.length, t_max - 1)
      ref_tok = jnp.take_along_axis(ref_tokens, at, axis=1)
      forced = (jnp.arange(n)[None, :] == 0) & (p.length < ref_lengths[:, None])
      tok = jnp.where(forced, ref_tok, tok)
    tok = jnp.where(active, tok, cfg.pad_id)
    pick = lambda x: jnp.where(active, jnp.take_along_axis(x, tok[..., None], axis=-1)[..., 0], 0.0)
    lp, lq = pick(logp_all), pick(logq_all)
    # Tokens go to each particle's own next position (slot = length), written via a one-hot mask.
    slot = jax.nn.one_hot(p.length, t_max, dtype=bool) & active[..., None]
    length = p.length + active.astype(jnp.int32)
    stopped = active & jnp.any(tok[..., None] == stops, axis=-1)
    done = p.done | stopped | (active & (length >= t_max))
    boundary = active & (jnp.any(tok[..., None] == delims, axis=-1) | (length >= t_max))
    if cfg.max_step_tokens:
      boundary |= active & (length - start_len >= cfg.max_step_tokens)
    log_twist = p.log_twist
    if p.twist_out is not None:
      log_twist = jnp.where(active, jnp.where(done, 0.0, pick(p.twist_out)), p.log_twist)
    logw = logw + jnp.where(active, lp - lq + log_twist - p.log_twist, 0.0)
    tok_u = tok.astype(jnp.uint32) + 1
    hashed = jnp.stack([p.hash[..., i] * m + tok_u for i, m in enumerate(_HASH_MULT)], axis=-1)
    pot_state = potential.advance(potential_params, tok, p.potential_state, active)
    alive = active & ~stopped
    logits, cache = lm.decode(params, tok, p.cache, active=alive)
    twist_out, twist_cache = p.twist_out, p.twist_cache
    if twist is not None:
      out, twist_cache = twist.decode(twist_params, tok, p.twist_cache, active=alive)
      twist_out = jnp.where(active[..., None], out, p.twist_out)
    p = p.replace(tokens=jnp.where(slot, tok[..., None], p.tokens), length=length,
                  logp=jnp.where(slot, lp[..., None], p.logp), logq=jnp.where(slot, lq[..., None], p.logq),
                  log_twist=log_twist, done=done, decoded=p.decoded + jnp.sum(active, axis=1, dtype=jnp.int32),
                  hash=jnp.where(active[..., None], hashed, p.hash),
                  logits=jnp.where(active[..., None], logits, p.logits), twist_out=twist_out, cache=cache,
                  twist_cache=twist_cache, potential_state=pot_state)
    return p, waiting | stopped | boundary, logw

  p, _, logw = jax.lax.while_loop(cond, body, (p, waiting0, jnp.zeros((b, n), jnp.float32)))
  return p.replace(steps=p.steps + (~waiting0).astype(jnp.int32)), logw


def _resample(cfg: SMCConfig, keys, p: Particles, conditional: bool) -> Particles:
  """Resample (within each prompt) where ESS < threshold * N; carry log Z. With
  `conditional`, particle 0 keeps itself (conditional SMC)."""
  b, n = p.log_weights.shape
  resampler = get_resampler(cfg.resampler)
  need = (ess(p.log_weights) < cfg.ess_threshold * n) | (cfg.ess_threshold >= 1.0)  # 1: every step
  need &= ~jnp.all(p.done, axis=1)  # a finished prompt is never selected again
  anc = jax.vmap(lambda k, lw: resampler(k, lw, n))(keys, p.log_weights)
  if conditional:
    anc = anc.at[:, 0].set(0)
  anc = jnp.where(need[:, None], anc, jnp.arange(n)[None, :])
  log_mean = jax.nn.logsumexp(p.log_weights, axis=-1) - jnp.log(n)
  live = ~jnp.all(p.done, axis=1)
  prev = p.ancestors
  p = _move(p, anc)
  return p.replace(ancestors=jnp.where(live[:, None], anc, prev), log_weights=jnp.where(need[:, None], 0.0, p.log_weights),
                   log_z=jnp.where(need, p.log_z + log_mean, p.log_z),
                   num_resamples=p.num_resamples + need.astype(jnp.int32))


def _beam_group(score, done, hash_, length, width: int, dedup: bool):
  """Ancestors int32[G] for one group: the top `width` distinct particles by score;
  finished survivors keep one slot each, the other slots go round-robin to the
  unfinished survivors (to all survivors if none is unfinished)."""
  g = score.shape[0]
  idx = jnp.arange(g)
  if dedup:
    same = (length[:, None] == length[None, :]) & jnp.all(hash_[:, None] == hash_[None, :], axis=-1)
    dup = jnp.any(same & (idx[None, :] < idx[:, None]), axis=1)
  else:
    dup = jnp.zeros((g,), bool)
  order = jnp.lexsort((idx, -score, dup))  # distinct first, then by score (desc), then index
  top = order[:width]
  valid = ~dup[top]
  nv = jnp.sum(valid)
  fin, unf = valid & done[top], valid & ~done[top]
  nf, nu = jnp.sum(fin), jnp.sum(unf)
  fin_first = top[jnp.argsort(~fin, stable=True)]
  unf_first = top[jnp.argsort(~unf, stable=True)]
  return jnp.where(idx < nf, fin_first[jnp.minimum(idx, width - 1)],
                   jnp.where(nu > 0, unf_first[(idx - nf) % jnp.maximum(nu, 1)], top[idx % jnp.maximum(nv, 1)]))


def _beam(cfg: SMCConfig, p: Particles) -> Particles:
  b, n = p.log_potential.shape
  g = cfg.groups_of
  split = lambda x: x.reshape((b * (n // g), g) + x.shape[2:])
  anc = jax.vmap(functools.partial(_beam_group, width=cfg.beam_width, dedup=cfg.dedup))(
      split(p.log_potential), split(p.done), split(p.hash), split(p.length))
  anc = (anc.reshape(b, n // g, g) + (jnp.arange(n // g) * g)[None, :, None]).reshape(b, n)
  live = ~jnp.all(p.done, axis=1)  # a finished prompt is never selected again
  anc = jnp.where(live[:, None], anc, jnp.arange(n)[None, :])
  return _move(p, anc).replace(ancestors=jnp.where(live[:, None], anc, p.ancestors),
                               num_resamples=p.num_resamples + live.astype(jnp.int32))


def run_smc(lm, params, prompt_tokens, prompt_lengths, key, *, cfg: SMCConfig, potential, potential_params=None,
            twist=None, twist_params=None, reference_tokens=None, reference_lengths=None) -> Particles:
  """Runs the engine from B prompts.

  Args:
    lm, params: the policy (LanguageModel contract) and its params.
    prompt_tokens: int32[B, Tp] right-padded; prompt_lengths: int32[B].
    key: one PRNG key, or one per prompt ([B]).
    cfg: the `SMCConfig`.
    potential, potential_params: a potential (`tts_jax.smc.potentials`) or a function
      (tokens int32[B, N, T], lengths int32[B, N], done bool[B, N]) -> log phi float32[B, N].
    twist, twist_params: an optional twist model (outputs log psi float32[..., V]).
    reference_tokens int32[B, T], reference_lengths int32[B]: an exact target sample per
      prompt to hold particle 0 to (conditional SMC; multinomial resampling, threshold 0 or 1).

  Returns:
    The final `Particles` (weights are not resampled after the last step:
    `final_log_z()` is log Z_hat, `normalized_weights()` the final importance weights).

  Raises RuntimeError if a paged cache (cfg.page_size > 0) ran out of pages.
  """
  p = _run_smc(lm, params, prompt_tokens, prompt_lengths, key, cfg=cfg, potential=potential,
               potential_params=potential_params, twist=twist, twist_params=twist_params,
               reference_tokens=reference_tokens, reference_lengths=reference_lengths)
  check_pages(p.cache)
  return p


@functools.partial(jax.jit, static_argnames=("lm", "cfg", "potential", "twist"))
def _run_smc(lm, params, prompt_tokens, prompt_lengths, key, *, cfg, potential, potential_params, twist,
             twist_params, reference_tokens, reference_lengths) -> Particles:
  potential = as_potential(potential)
  b, n, t_max = prompt_tokens.shape[0], cfg.num_particles, cfg.max_new_tokens
  reference = None
  if reference_tokens is not None:
    if cfg.select != "resample" or cfg.resampler != "multinomial" or cfg.ess_threshold not in (0.0, 1.0):
      raise ValueError("conditional SMC (a reference) needs select='resample', resampler='multinomial' and "
                       f"ess_threshold 0 or 1; got {cfg.select!r}, {cfg.resampler!r}, {cfg.ess_threshold}")
    if reference_tokens.shape != (b, t_max) or reference_lengths is None:
      raise ValueError(f"reference_tokens must be int32[{b}, {t_max}] with reference_lengths int32[{b}], "
                       f"got {reference_tokens.shape}")
    reference = (reference_tokens.astype(jnp.int32), reference_lengths.astype(jnp.int32))
  keys = _prompt_keys(key, b)
  first, prefix = lm.prefill(params, prompt_tokens, prompt_lengths)
  twist_out = twist_cache = None
  if twist is not None:
    t_first, t_prefix = twist.prefill(twist_params, prompt_tokens, prompt_lengths)
    twist_cache = twist.init_cache(t_prefix, n, t_max, compact=True)
    twist_out = jnp.broadcast_to(t_first[:, None].astype(jnp.float32), (b, n, t_first.shape[-1]))
  zf = jnp.zeros((b, n, t_max), jnp.float32)
  z = jnp.zeros((b, n), jnp.float32)
  p = Particles(tokens=jnp.full((b, n, t_max), cfg.pad_id, jnp.int32), length=jnp.zeros((b, n), jnp.int32),
                logp=zf, logq=zf, log_weights=z, log_potential=z, log_twist=z, log_z=jnp.zeros((b,)),
                done=jnp.zeros((b, n), bool), steps=jnp.zeros((b, n), jnp.int32),
                ancestors=jnp.broadcast_to(jnp.arange(n), (b, n)), num_resamples=jnp.zeros((b,), jnp.int32),
                decoded=jnp.zeros((b,), jnp.int32), hash=jnp.zeros((b, n, 2), jnp.uint32),
                logits=jnp.broadcast_to(first[:, None], (b, n, first.shape[-1])), twist_out=twist_out,
                cache=(lm.init_paged_cache(prefix, n, t_max, cfg.page_size, cfg.num_pages) if cfg.page_size
                       else lm.init_cache(prefix, n, t_max, compact=True)), twist_cache=twist_cache,
                potential_state=potential.init(potential_params, prompt_tokens, prompt_lengths, n, t_max))

  def cond(c):
    return ~jnp.all(c[0].done)

  def body(c):
    p, s = c
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, s))(keys)
    k_ext, k_sel = jax.vmap(jax.random.split, out_axes=1)(step_keys)
    before = p.length
    live = ~jnp.all(p.done, axis=1)
    p, logw = _extend(lm, params, twist, twist_params, potential, potential_params, cfg, k_ext, p, reference)
    extended = p.length > before
    log_phi, pot_state = potential.score(potential_params, p.potential_state, p.tokens, p.length, p.done, extended)
    log_phi = jnp.where(extended, log_phi, p.log_potential)
    if cfg.incremental:
      log_weights = p.log_weights + jnp.where(extended, logw + log_phi - p.log_potential, 0.0)
    else:  # the current potential (Puri et al.); a prompt finished before this round keeps its weights
      log_weights = jnp.where(live[:, None], log_phi, p.log_weights)
    p = p.replace(log_weights=log_weights, log_potential=log_phi, potential_state=pot_state)
    if cfg.select == "resample":
      select = lambda p: _resample(cfg, k_sel, p, reference is not None)
    elif cfg.select == "beam":
      select = lambda p: _beam(cfg, p)
    else:
      select = lambda p: p
    p = jax.lax.cond(jnp.all(p.done), lambda p: p, select, p)
    return p, s + 1

  p, _ = jax.lax.while_loop(cond, body, (p, jnp.zeros((), jnp.int32)))
  return p
