"""Search methods for experiment configs: particle filtering, beam search and DVTS with a
PRM, each one run of the particle engine per budget N (unlike the pool methods of
`tts_jax.eval.methods`, which select among pre-drawn samples).

`method.run(models, task, problems, prompts, n, key, sampling, index_offset)` returns one
record per problem: the chosen answer's correctness and the compute actually spent
(policy tokens decoded, discarded particles included; PRM tokens scored incrementally).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.eval.compute import forward_flops, kv_bytes_per_token
from tts_jax.sampling.logits import SamplingParams
from tts_jax.search.beam import beam_search, dvts, particle_filter
from tts_jax.smc.engine import run_smc
from tts_jax.smc.potentials import ValuePotential
from tts_jax.tasks.base import EOS, PAD, STEP, completion_text, split_steps

Final = Literal["argmax", "weighted_majority"]


@dataclasses.dataclass(frozen=True)
class OraclePotential:
  """The task's exact step checker as a potential (an upper bound for any PRM), run on the
  host through `jax.pure_callback`. A particle scores r = 1 - eps while every finished step
  is right (and, once done, its answer is), eps otherwise; read as log r or logit r.
  params: int32[B] keys into `problems` (filled by the caller; excluded from the hash, so
  one compilation serves every batch)."""

  task: object
  transform: Literal["log", "logit"] = "log"
  eps: float = 0.01
  problems: dict = dataclasses.field(default_factory=dict, compare=False, hash=False)

  def init(self, params, prompt_tokens, prompt_lengths, num_particles, max_new_tokens):
    return ()

  def advance(self, params, tokens, state, active):
    return state

  def score(self, params, state, tokens, lengths, done, extended):
    out = jax.ShapeDtypeStruct(lengths.shape, jnp.float32)
    return jax.pure_callback(self._host, out, params, tokens, lengths, done), state

  def _host(self, ids, tokens, lengths, done) -> np.ndarray:
    ok = np.zeros(lengths.shape, bool)
    for b, i in enumerate(np.asarray(ids)):
      prob = self.problems[int(i)]
      for n in range(lengths.shape[1]):
        text = completion_text(self.task, tokens[b, n, :lengths[b, n]])
        steps, _ = split_steps(text)
        whole = steps if text.rstrip().endswith(STEP) or done[b, n] else steps[:-1]
        ok[b, n] = all(self.task.step_correct(prob, st) for st in whole) and (
            not done[b, n] or self.task.verify(prob, text))
    r = np.where(ok, 1 - self.eps, self.eps)
    return (np.log(r) if self.transform == "log" else np.log(r / (1 - r))).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _oracle(task, transform: str) -> OraclePotential:
  return OraclePotential(task, transform)


@dataclasses.dataclass(frozen=True)
class _Search:
  """Common fields. verifier: the PRM potential; aggregate: how its step scores combine;
  final: the answer is the best particle ("argmax") or a vote weighted by the final
  weights (particle filtering) / PRM probabilities (beam search, DVTS); max_step_tokens:
  a cap on a step's length (0: steps end at the task's delimiter only). Subclasses
  define `smc_config(n, **engine_kwargs) -> SMCConfig`."""

  kind = "search"
  verifier: Literal["prm", "oracle"] = "prm"
  aggregate: Literal["last", "prod", "min"] = "last"
  transform: Literal["log", "logit"] = "log"
  final: Final = "argmax"
  max_step_tokens: int = 0

  def needs(self) -> tuple[str, ...]:
    return ("prm",) if self.verifier == "prm" else ()

  def check_budgets(self, budgets) -> None:
    """Raises ValueError now for a budget this method cannot run (e.g. N not divisible by M)."""
    for n in budgets:
      self.smc_config(n)

  def potential(self, models, task):
    if self.verifier == "oracle":
      return _oracle(task, self.transform)
    if self.verifier != "prm":
      raise ValueError(f"verifier must be 'prm' or 'oracle', got {self.verifier!r}")
    return ValuePotential(models.prm.as_lm(), aggregate=self.aggregate, transform=self.transform)

  def final_weights(self, particles) -> np.ndarray:
    """float[B, N] vote weights of the final particles."""
    return np.exp(np.asarray(particles.log_potential, np.float64))

  def run(self, models, task, problems, prompts, n: int, key, sampling, index_offset: int = 0) -> list[dict]:
    tok = task.tokenizer()
    eos, pad, step = tok.token_to_id(EOS), tok.token_to_id(PAD), tok.token_to_id(STEP)
    width = -(-max(len(p) for p in prompts) // 16) * 16
    toks = np.full((len(prompts), width), pad, np.int32)
    for r, p in enumerate(prompts):
      toks[r, :len(p)] = p
    plens = np.array([len(p) for p in prompts], np.int32)
    proposal = SamplingParams(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                              min_p=sampling.min_p)
    cfg = self.smc_config(n, max_new_tokens=sampling.max_new_tokens, delimiters=(step,), stop_tokens=(eos,),
                          max_step_tokens=self.max_step_tokens, proposal=proposal, pad_id=pad)
    ids = np.arange(len(prompts)) + index_offset
    keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.asarray(ids))
    potential = self.potential(models, task)
    if self.verifier == "oracle":
      potential.problems.update(zip(ids.tolist(), problems))
      pparams = jnp.asarray(ids, jnp.int32)
    else:
      pparams = models.prm_params
    p = run_smc(models.policy, models.policy_params, jnp.asarray(toks), jnp.asarray(plens), keys, cfg=cfg,
                potential=potential, potential_params=pparams)
    p = jax.device_get(p)
    return self._records(models, task, problems, plens, p, n)

  def _records(self, models, task, problems, plens, p, n) -> list[dict]:
    weights = self.final_weights(p)
    score = np.asarray(p.log_potential)
    pc, vc = models.policy.config, models.prm.config
    out = []
    for i, prob in enumerate(problems):
      texts = [completion_text(task, p.tokens[i, j, :p.length[i, j]]) for j in range(n)]
      if self.final == "argmax":
        text = texts[int(np.argmax(score[i]))]
      else:
        votes: dict = {}
        for t, w in zip(texts, weights[i]):
          a = task.extract_answer(t)
          if a is not None:
            votes[a] = votes.get(a, 0.0) + float(w)
        best = max(votes, key=votes.get) if votes else None
        text = next((t for t in texts if task.extract_answer(t) == best), texts[0])
      decoded = float(p.decoded[i])
      per_particle = decoded / n
      flops = forward_flops(pc, plens[i]) + n * forward_flops(pc, per_particle, context_start=plens[i])
      vtok = 0.0
      if self.verifier == "prm":
        flops += forward_flops(vc, plens[i], head_outputs=1) + n * forward_flops(vc, per_particle, plens[i], 1)
        vtok = float(plens[i]) + decoded
      out.append({"accuracy": float(task.verify(prob, text)), "samples": float(n), "mc_var": 0.0,
                  "prompt_tokens": float(plens[i]), "generated_tokens": decoded, "verifier_tokens": vtok, "flops": float(flops),
                  "kv_bytes": float(kv_bytes_per_token(pc) * (plens[i] + decoded)),
                  "resamples": float(p.num_resamples[i])})
    return out


@dataclasses.dataclass(frozen=True)
class ParticleFiltering(_Search):
  """Particle filtering with PRM potentials. The defaults follow Puri et al. 2025:
  multinomial resampling at every step with weights = the current PRM score as a logit
  (`incremental=False`, `transform="logit"`), answer = the particle with the largest
  weight. `incremental=True, transform="log"` is proper SMC for p(x) PRM(x) with
  ESS-triggered resampling."""

  transform: Literal["log", "logit"] = "logit"
  incremental: bool = False
  resampler: str = "multinomial"
  ess_threshold: float = 1.0
  name: str = "particle filtering (PRM)"

  def smc_config(self, n, **kw):
    return particle_filter(n, resampler=self.resampler, ess_threshold=self.ess_threshold,
                           incremental=self.incremental, **kw)

  def final_weights(self, particles):
    return np.asarray(particles.normalized_weights(), np.float64)


@dataclasses.dataclass(frozen=True)
class _TreeSearch(_Search):
  """Fields of the tree searches: M = `expansions` per kept particle, ranked by the PRM."""

  expansions: int = 4


@dataclasses.dataclass(frozen=True)
class BeamSearch(_TreeSearch):
  """Step-level beam search: width N / M, M expansions per beam."""

  name: str = "beam search (PRM)"

  def smc_config(self, n, **kw):
    return beam_search(n, min(self.expansions, n), **kw)


@dataclasses.dataclass(frozen=True)
class DVTS(_TreeSearch):
  """Diverse verifier tree search: N / M independent subtrees of M expansions."""

  name: str = "DVTS (PRM)"

  def smc_config(self, n, **kw):
    return dvts(n, min(self.expansions, n), **kw)
