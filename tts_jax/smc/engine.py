"""The particle engine: extend every particle to its next step boundary -> score -> select.

Best-of-N, particle filtering, twisted SMC, step-level beam search and DVTS are this
one loop with a different selection strategy (`SMCConfig.select`, a
`tts_jax.smc.strategy.SelectionStrategy`): `NoSelect()`, `Resample(scheme,
ess_threshold)`, `tts_jax.search.Beam(width, group_size)`, or one of your own.

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

Prompts are independent: selection happens within each prompt, a prompt whose
particles have all finished is left untouched (never reweighted or selected again),
and every random draw of prompt b comes from its own key, the step index, the
particle index and the token position. So a prompt's particles are the same, bit for
bit, alone or in any batch (up to float rounding with a real LM, whose caches grow
when the batch's longest particle fills them). The loop is a jitted `lax.while_loop` of
token steps, a step ending (score, select) when every particle reached a boundary, one
loop per cache capacity (`run`); selection moves suffix state only.
Given an exact target sample as `reference`, particle 0 is held to it (conditional
SMC), which gives upper bounds on log Z (`tts_jax.smc.bounds`).

Building blocks, for new algorithms on the same state:

    models = SMCModels(policy=lm, potential=pot)             # static (hashable)
    params = SMCParams(policy=lm_params, potential=pot_params)
    p = init_particles(models, params, prompt_tokens, prompt_lengths, cfg)
    p, token_log_weights = extend(models, params, cfg, keys, p)
    p = reweight(models, params, cfg, p, token_log_weights, extended, live)
    p = apply_selection(p, cfg.select.select(keys, p))
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
from flax import struct

from tts_jax.models import CausalLM
from tts_jax.sampling import SamplingParams, draw_tokens
from tts_jax.sampling.sampler import cache_segments
from tts_jax.smc.particles import Particles, move
from tts_jax.smc.resample import Resample
from tts_jax.smc.strategy import Selection, SelectionStrategy
from tts_jax.traced import Traced, bind_of
from tts_jax.verifiers import Potential
from tts_jax.verifiers.base import with_host

_HASH_MULT = (jnp.uint32(1000003), jnp.uint32(2654435761))


@dataclasses.dataclass(frozen=True)
class SMCConfig(Traced):
  """How the engine runs (hashable: a static argument of `run_smc`). `incremental` and the
  strategy's traced fields are arguments of the compiled program (`tts_jax.traced`):
  configs differing only in them share one program.

  num_particles: N per prompt. max_new_tokens: T, the longest generation.
  delimiters: token ids that end a step; max_step_tokens: also end a step after this
    many tokens (0: no cap; 1: token-level SMC). stop_tokens: end a particle.
  select: the selection strategy applied after every step.
  incremental: True: SMC weights (ratios of potentials); False: the current potential.
  proposal: the sampling distribution before twisting. pad_id fills unused positions.
  page_size: > 0 keeps the policy's suffix KV in a paged cache (`tts_jax.models.paged`):
    selection moves block tables and copies only duplicated partial pages; num_pages
    pages per prompt (0: enough for no sharing at all).
  grow_cache: the suffix KV caches (policy, twist, and a potential's if it has `grow`)
    start at 32 slots and double when a particle fills them (`cache_schedule`), so early
    tokens read fewer slots; the loop resumes mid-step. False: T slots from the start.
  """

  num_particles: int = 8
  max_new_tokens: int = 64
  delimiters: tuple[int, ...] = ()
  stop_tokens: tuple[int, ...] = ()
  max_step_tokens: int = 0
  select: SelectionStrategy = Resample()
  incremental: bool = True
  proposal: SamplingParams = SamplingParams()
  pad_id: int = 0
  page_size: int = 0
  num_pages: int = 0
  grow_cache: bool = True

  traced: ClassVar[tuple[str, ...]] = ("incremental",)

  def __post_init__(self):
    for name in ("num_particles", "max_new_tokens"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"SMCConfig.{name} must be an int >= 1, got {v!r}")
    if self.max_step_tokens < 0:
      raise ValueError(f"max_step_tokens must be >= 0, got {self.max_step_tokens}")
    if not isinstance(self.select, SelectionStrategy):
      raise ValueError(f"select must be a SelectionStrategy (e.g. Resample(), NoSelect(), Beam(...)), "
                       f"got {self.select!r}")
    self.select.validate(self.num_particles)


@dataclasses.dataclass(frozen=True)
class SMCModels:
  """The engine's functions (static): the policy, the potential, an optional twist model."""

  policy: CausalLM
  potential: Potential
  twist: CausalLM | None = None


@struct.dataclass
class SMCParams:
  """Their parameters (pytrees)."""

  policy: Any
  potential: Any = None
  twist: Any = None


def _check_potential_vocabulary(lm, potential) -> None:
  """A value-model potential reads the policy's token ids: its vocabulary must hold them all."""
  model = getattr(potential, "model", None)
  size = getattr(model, "vocab_size", None)
  if size is not None and size < lm.vocab_size:
    raise ValueError(f"the potential's model has a vocabulary of {size} tokens but the policy's has {lm.vocab_size}: "
                     f"it would read token ids it does not know")


def cache_schedule(models: SMCModels, cfg: SMCConfig) -> tuple[int, ...]:
  """The suffix-cache capacities a run goes through (the sampler's `cache_segments`: 32,
  64, ..., T): several when every cache can grow (`cfg.grow_cache`, no paged cache, a
  `LanguageModel` policy and twist), else (T,). A potential grows with them if it has
  `grow(state, capacity)` (then `init` gets the first capacity as its `max_new_tokens`)."""
  t = cfg.max_new_tokens
  if not cfg.grow_cache or cfg.page_size:
    return (t,)
  schedule = cache_segments(models.policy, t)
  if models.twist is not None and len(cache_segments(models.twist, t)) == 1:
    return (t,)
  return schedule


def _potential_grows(models: SMCModels) -> bool:
  return callable(getattr(models.potential, "grow", None))


def init_particles(models: SMCModels, params: SMCParams, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
                   cfg: SMCConfig, capacity: int | None = None) -> Particles:
  """Prefills the prompts once and returns N empty particles per prompt sharing their KV.

  prompt_tokens: int32[B, Tp] right-padded; prompt_lengths: int32[B]; capacity: suffix
  slots of the KV caches (default T; `grow_particles` enlarges them).
  """
  chex.assert_rank(prompt_tokens, 2)
  chex.assert_shape(prompt_lengths, prompt_tokens.shape[:1])
  b, n, t_max = prompt_tokens.shape[0], cfg.num_particles, cfg.max_new_tokens
  cap = t_max if capacity is None else capacity
  lm = models.policy
  first, prefix = lm.prefill(params.policy, prompt_tokens, prompt_lengths)
  twist_out = twist_cache = None
  if models.twist is not None:
    t_first, t_prefix = models.twist.prefill(params.twist, prompt_tokens, prompt_lengths)
    twist_cache = models.twist.init_cache(t_prefix, n, cap, compact=True)
    twist_out = jnp.broadcast_to(t_first[:, None].astype(jnp.float32), (b, n, t_first.shape[-1]))
  cache = (lm.init_paged_cache(prefix, n, t_max, cfg.page_size, cfg.num_pages) if cfg.page_size
           else lm.init_cache(prefix, n, cap, compact=True))
  zf = jnp.zeros((b, n, t_max), jnp.float32)
  z = jnp.zeros((b, n), jnp.float32)
  pot_state = models.potential.init(params.potential, prompt_tokens, prompt_lengths, n,
                                    cap if _potential_grows(models) else t_max)
  return Particles(
      tokens=jnp.full((b, n, t_max), cfg.pad_id, jnp.int32), length=jnp.zeros((b, n), jnp.int32), logp=zf, logq=zf,
      log_weights=z, log_potential=z, log_twist=z, log_z=jnp.zeros((b,)), done=jnp.zeros((b, n), bool),
      steps=jnp.zeros((b, n), jnp.int32), ancestors=jnp.broadcast_to(jnp.arange(n), (b, n)),
      num_resamples=jnp.zeros((b,), jnp.int32), decoded=jnp.zeros((b,), jnp.int32),
      verified=_read(pot_state, jnp.zeros((b,), jnp.int32)),
      hash=jnp.zeros((b, n, 2), jnp.uint32), logits=jnp.broadcast_to(first[:, None], (b, n, first.shape[-1])),
      twist_out=twist_out, cache=cache, twist_cache=twist_cache, potential_state=pot_state)


def _read(pot_state, default: jax.Array) -> jax.Array:
  """int32[B] ids the potential's model has read, when its state counts them (`read`)."""
  read = getattr(pot_state, "read", None)
  return default if read is None else read.astype(jnp.int32)


def grow_particles(models: SMCModels, p: Particles, capacity: int) -> Particles:
  """The particles with their KV caches (and a growing potential's state) enlarged to
  `capacity` suffix slots (new slots empty)."""
  return p.replace(cache=p.cache.grow(capacity),
                   twist_cache=None if p.twist_cache is None else p.twist_cache.grow(capacity),
                   potential_state=(models.potential.grow(p.potential_state, capacity) if _potential_grows(models)
                                    else p.potential_state))


def extend(models: SMCModels, params: SMCParams, cfg: SMCConfig, keys: jax.Array, p: Particles,
           reference: tuple[jax.Array, jax.Array] | None = None) -> tuple[Particles, jax.Array]:
  """Each unfinished particle samples tokens until a step boundary, a stop token or T.

  Args:
    keys: [B] PRNG keys of this step (token t of particle n draws from fold_in(key, n * T + t)).
    p: the particles (their caches must hold the step: capacity T, or grown enough).
    reference: (tokens int32[B, T], lengths int32[B]) to force particle 0 to (conditional SMC).

  Returns:
    (particles, float32[B, N] the step's token log-weights sum of log p - log q + twist ratios).
  """
  b, n = p.shape
  waiting0 = p.done
  step = _Step(waiting=waiting0, logw=jnp.zeros((b, n), jnp.float32), start=p.length)
  p, step = jax.lax.while_loop(lambda c: ~jnp.all(c[1].waiting),
                               lambda c: token_step(models, params, cfg, keys, *c, reference), (p, step))
  return p.replace(steps=p.steps + (~waiting0).astype(jnp.int32)), step.logw


@struct.dataclass
class _Step:
  """A step in progress: waiting bool[B, N] (at a boundary, finished, or never started),
  logw float32[B, N] token log-weights so far, start int32[B, N] lengths at its start."""

  waiting: jax.Array
  logw: jax.Array
  start: jax.Array


def token_step(models: SMCModels, params: SMCParams, cfg: SMCConfig, keys: jax.Array, p: Particles, step: _Step,
               reference: tuple[jax.Array, jax.Array] | None = None) -> tuple[Particles, _Step]:
  """One token for every particle of the step still extending (`step.waiting` False): draw,
  feed the policy (and twist and potential), mark the ones that reached a boundary."""
  b, n, t_max = p.tokens.shape
  delims = jnp.asarray(cfg.delimiters or (-1,), jnp.int32)
  active = ~step.waiting
  slot_ids = jnp.arange(n)[None, :] * t_max
  tok_keys = jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)))(keys, slot_ids + p.length)
  forced = None
  if reference is not None:
    ref_tokens, ref_lengths = reference
    at = jnp.minimum(p.length, t_max - 1)
    forced = ((jnp.arange(n)[None, :] == 0) & (p.length < ref_lengths[:, None]),
              jnp.take_along_axis(ref_tokens, at, axis=1))
  d = draw_tokens(p.logits, tok_keys, active, proposal=cfg.proposal, stop_tokens=cfg.stop_tokens,
                  pad_id=cfg.pad_id, log_twist=p.twist_out, forced=forced)
  tok = d.tokens
  slot = jax.nn.one_hot(p.length, t_max, dtype=bool) & active[..., None]  # each particle's own next position
  length = p.length + active.astype(jnp.int32)
  done = p.done | d.stopped | (active & (length >= t_max))
  boundary = active & (jnp.any(tok[..., None] == delims, axis=-1) | (length >= t_max))
  if cfg.max_step_tokens:
    boundary |= active & (length - step.start >= cfg.max_step_tokens)
  log_twist = p.log_twist
  if p.twist_out is not None:
    picked = jnp.take_along_axis(p.twist_out, tok[..., None], axis=-1)[..., 0]
    log_twist = jnp.where(active, jnp.where(done, 0.0, picked), p.log_twist)
  logw = step.logw + jnp.where(active, d.logp - d.logq + log_twist - p.log_twist, 0.0)
  tok_u = tok.astype(jnp.uint32) + 1
  hashed = jnp.stack([p.hash[..., i] * m + tok_u for i, m in enumerate(_HASH_MULT)], axis=-1)
  pot_state = models.potential.advance(params.potential, tok, p.potential_state, active)
  alive = active & ~d.stopped
  logits, cache = models.policy.decode(params.policy, tok, p.cache, active=alive)
  twist_out, twist_cache = p.twist_out, p.twist_cache
  if models.twist is not None:
    out, twist_cache = models.twist.decode(params.twist, tok, p.twist_cache, active=alive)
    twist_out = jnp.where(active[..., None], out, p.twist_out)
  p = p.replace(tokens=jnp.where(slot, tok[..., None], p.tokens), length=length,
                logp=jnp.where(slot, d.logp[..., None], p.logp), logq=jnp.where(slot, d.logq[..., None], p.logq),
                log_twist=log_twist, done=done, decoded=p.decoded + jnp.sum(active, axis=1, dtype=jnp.int32),
                hash=jnp.where(active[..., None], hashed, p.hash),
                logits=jnp.where(active[..., None], logits, p.logits), twist_out=twist_out, cache=cache,
                twist_cache=twist_cache, potential_state=pot_state)
  return p, step.replace(waiting=step.waiting | d.stopped | boundary, logw=logw)


def reweight(models: SMCModels, params: SMCParams, cfg: SMCConfig, p: Particles, token_log_weights: jax.Array,
             extended: jax.Array, live: jax.Array) -> Particles:
  """Scores the particles that grew and updates their weights.

  token_log_weights: float32[B, N] from `extend`; extended: bool[B, N] particles that grew
  this step; live: bool[B] prompts that had unfinished particles before it.
  """
  log_phi, pot_state = models.potential.score(params.potential, p.potential_state, p.tokens, p.length, p.done,
                                              extended)
  if log_phi.shape != p.shape:
    raise ValueError(f"the potential returned shape {log_phi.shape}; it must return log phi float32{list(p.shape)} "
                     f"(one value per prompt and particle)")
  log_phi = jnp.where(extended, log_phi, p.log_potential)
  # SMC: a zero potential (log -inf), now or before, is a zero weight for good (never -inf - -inf).
  zero = (log_phi == -jnp.inf) | (p.log_potential == -jnp.inf)
  ratio = jnp.where(zero, -jnp.inf, log_phi - jnp.where(zero, 0.0, p.log_potential))
  smc = p.log_weights + jnp.where(extended, token_log_weights + ratio, 0.0)
  # Puri et al.: the current potential; a prompt finished before this step keeps its weights.
  current = jnp.where(live[:, None], log_phi, p.log_weights)
  log_weights = jnp.where(cfg.incremental, smc, current)  # incremental may be traced
  return p.replace(log_weights=log_weights, log_potential=log_phi, potential_state=pot_state,
                   verified=_read(pot_state, p.verified))


def apply_selection(p: Particles, sel: Selection, conditional: bool = False) -> Particles:
  """Applies a strategy's `Selection` to the prompts that still have unfinished particles.

  With `conditional`, particle 0 keeps itself (conditional SMC)."""
  b, n = p.shape
  chex.assert_shape(sel.ancestors, (b, n))
  live = ~jnp.all(p.done, axis=1)  # a finished prompt is never selected again
  apply = sel.selected & live
  identity = jnp.broadcast_to(jnp.arange(n), (b, n))
  ancestors = sel.ancestors.at[:, 0].set(0) if conditional else sel.ancestors
  ancestors = jnp.where(apply[:, None], ancestors, identity)
  moved = jax.lax.cond(jnp.any(apply), lambda q: move(q, ancestors), lambda q: q, p)
  return moved.replace(ancestors=jnp.where(live[:, None], ancestors, p.ancestors),
                       log_weights=jnp.where(apply[:, None], sel.log_weights, moved.log_weights),
                       log_z=jnp.where(apply, p.log_z + sel.log_z_increment, p.log_z),
                       num_resamples=p.num_resamples + apply.astype(jnp.int32))


def run(models: SMCModels, params: SMCParams, prompt_tokens: jax.Array, prompt_lengths: jax.Array,
        keys: jax.Array, cfg: SMCConfig, reference: tuple[jax.Array, jax.Array] | None = None,
        knobs: dict[str, jax.Array] | None = None) -> Particles:
  """The whole loop (traceable; `run_smc` is its jitted, checked entry point).

  keys: [B] one PRNG key per prompt. knobs: the program's arguments, {"cfg": cfg.knobs(),
  "potential": the potential's knobs} (`tts_jax.traced`), bound into `cfg` and
  `models.potential`; None: both as they are. Returns the final particles.

  One `lax.while_loop` of token steps per cache capacity (`cache_schedule`): each iteration
  feeds one token to the particles still extending; once all have reached a boundary the
  step ends (`reweight`, then the strategy's selection) and the next begins. A loop exits
  when a particle about to be fed has filled the caches; they grow and the next loop
  resumes the same step. Every draw depends on (prompt key, step, particle, position)
  only, so the capacities change no result.
  """
  loop = Loop.of(models, params, cfg, keys, reference, knobs)
  schedule = cache_schedule(loop.models, cfg)
  c = loop.start(prompt_tokens, prompt_lengths, schedule[0])
  for i, capacity in enumerate(schedule):
    if i:
      c = loop.grow(c, capacity)
    c = jax.lax.while_loop(loop.fits(capacity), loop.body, c)
  return c[0]


@dataclasses.dataclass(frozen=True)
class Loop:
  """The parts of the engine's loop for one run (inside a program): `run` puts them in
  while_loops; `tts_jax.smc.host_steps` runs them as separate programs. A loop's carry is
  (particles, step index s int32[], the `_Step` in progress)."""

  models: SMCModels  # the potential with its knobs bound
  params: SMCParams
  cfg: SMCConfig  # the program's config (token steps)
  bound: SMCConfig  # with its knobs bound (weighting, selection)
  keys: jax.Array
  reference: tuple[jax.Array, jax.Array] | None

  @classmethod
  def of(cls, models, params, cfg, keys, reference=None, knobs=None, host=None) -> "Loop":
    """knobs: as `run` takes them; host: {"init": ..., "score": ...} arrays the potential reads
    instead of calling back (`tts_jax.verifiers.base.with_host`), or None."""
    bound = cfg
    if knobs is not None:
      bound = cfg.bind(knobs["cfg"])
      models = dataclasses.replace(models, potential=bind_of(models.potential, knobs["potential"]))
    if host is not None:
      models = dataclasses.replace(models, potential=with_host(models.potential, **host))
    return cls(models, params, cfg, bound, keys, reference)

  def start(self, prompt_tokens, prompt_lengths, capacity: int):
    """The carry of step 0, the prompts prefilled, the caches at `capacity` slots."""
    p = init_particles(self.models, self.params, prompt_tokens, prompt_lengths, self.cfg, capacity=capacity)
    return self.begin(p, jnp.zeros((), jnp.int32))

  def begin(self, p, s):  # the state of step s, about to start
    return (p, s, _Step(waiting=p.done, logw=jnp.zeros(p.shape, jnp.float32), start=p.length))

  def finish(self, c):
    """Every particle is at a boundary: score, select, begin the next step."""
    p, s, step = c
    # The particles unfinished at the step's start: each took at least one token.
    started = p.length > step.start
    p = p.replace(steps=p.steps + started.astype(jnp.int32))
    p = reweight(self.models, self.params, self.bound, p, step.logw, started, jnp.any(started, axis=1))
    p = apply_selection(p, self.bound.select.select(_step_keys(self.keys, s)[1], p),
                        conditional=self.reference is not None)
    return self.begin(p, s + 1)

  def token(self, c):
    """One token step of the particles still extending."""
    p, s, step = c
    p, step = token_step(self.models, self.params, self.cfg, _step_keys(self.keys, s)[0], p, step, self.reference)
    return (p, s, step)

  def body(self, c):  # a token step, and the step's end once every particle waits
    c = self.token(c)
    return jax.lax.cond(jnp.all(c[2].waiting), self.finish, lambda c: c, c)

  def fits(self, capacity: int):
    """cond: work remains, and every particle to be fed has a free cache slot."""
    def cond(c):
      p, _, step = c
      return ~jnp.all(p.done) & jnp.all(step.waiting | (p.length < capacity))
    return cond

  def grow(self, c, capacity: int):
    return (grow_particles(self.models, c[0], capacity),) + c[1:]


def _step_keys(keys: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """([B] keys of step s's tokens, [B] keys of its selection) from the prompts' keys [B]."""
  step_keys = jax.vmap(lambda k: jax.random.fold_in(k, s))(keys)
  k_ext, k_sel = jax.vmap(jax.random.split, out_axes=1)(step_keys)
  return k_ext, k_sel


FINITE_NAMES = ("log_weights", "log_potential", "log Z")


def not_finite(p: Particles) -> jax.Array:
  """bool[3]: whether `FINITE_NAMES` (log_weights, log_potential, log Z) hold NaN or +inf;
  computed inside a run's program (no program of its own per shape)."""
  return jnp.stack([jnp.any(jnp.isnan(x) | (x == jnp.inf)) for x in (p.log_weights, p.log_potential, p.log_z)])
