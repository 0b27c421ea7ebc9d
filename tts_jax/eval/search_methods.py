"""Search methods: particle filtering, beam search and DVTS as experiment methods.

Each budget N is one run of the particle engine per batch of problems (unlike pool
methods, which select among pre-drawn samples); the answer is the best particle
("argmax") or a vote weighted by the final weights / verifier probabilities, and the
cost is the compute actually spent (policy tokens decoded, discarded particles
included; PRM tokens scored incrementally beside the policy).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Literal

import jax.numpy as jnp
import numpy as np

from tts_jax.eval.batch import Batch
from tts_jax.eval.cost import Cost, search_cost
from tts_jax.eval.method import Outcome
from tts_jax.sampling import SamplingParams
from tts_jax.search import beam_search, best_of_n, dvts, particle_filter
from tts_jax.search.ets import distinct_pages, ets_beam_search
from tts_jax.smc import NoSelect, OneOf, Particles, SMCConfig, run_smc
from tts_jax.smc.gibbs import particle_gibbs
from tts_jax.tasks import completion_text, step_oracle, task_tokens
from tts_jax.traced import program_of
from tts_jax.verifiers import StepTagPotential, ValuePotential, as_potential
from tts_jax.verifiers.corruption import check_verifier_auc

Final = Literal["argmax", "weighted_majority"]


def prm_potential(models, task, aggregate: str = "last", transform: str = "log"):
  """The models' PRM as an engine potential: read in its own format when it has one
  (`models.prm_format`, a step-tag PRM: `StepTagPotential`), else scored incrementally on
  the policy's tokens (`ValuePotential`)."""
  if getattr(models, "prm_format", None) is not None:
    from tts_jax.tasks.math import StepTagReader  # noqa: PLC0415 (math pulls in math-verify)
    return StepTagPotential(models.prm.as_lm(), StepTagReader(task, models.prm_format, models.prm_tokenizer),
                            aggregate=aggregate, transform=transform)
  return ValuePotential(models.prm.as_lm(), aggregate=aggregate, transform=transform)


@dataclasses.dataclass(frozen=True)
class SearchMethod(abc.ABC):
  """Common fields. verifier: the potential, the shipped PRM ("prm") or the task's exact
  step checker ("oracle"); aggregate: how the PRM's step scores combine; transform: a step
  score r is read as log r or logit r; final: the answer is the best particle ("argmax") or
  a vote weighted by `final_weights`; max_step_tokens: a cap on a step's length (0: steps
  end at the task's delimiter only); verifier_auc < 1: the exact checker corrupted to that
  ROC AUC (a verifier of known quality, `tts_jax.verifiers.oracle`). Subclasses define
  `smc_config(n, **engine_fields)`."""

  verifier: Literal["prm", "oracle"] = "prm"
  aggregate: Literal["last", "prod", "min"] = "last"
  transform: Literal["log", "logit"] = "log"
  final: Final = "argmax"
  max_step_tokens: int = 0
  verifier_auc: float = 1.0
  timing_phase = "search"  # where the runner's time breakdown counts this method

  @abc.abstractmethod
  def smc_config(self, n: int, **kw) -> SMCConfig:
    """The engine config at budget N; `kw` are the task's engine fields (delimiters, ...)."""

  def verifiers(self) -> tuple[str, ...]:
    return ("prm",) if self.verifier == "prm" else ()

  def check_budgets(self, budgets) -> None:
    """Raises ValueError now for a budget this method cannot run (e.g. N not divisible by M)."""
    if self.verifier not in ("prm", "oracle"):
      raise ValueError(f"verifier must be 'prm' or 'oracle', got {self.verifier!r}")
    check_verifier_auc(self)
    for n in budgets:
      self.smc_config(n)

  def potential(self, models, task):
    if self.verifier == "oracle":
      return step_oracle(task, self.transform, auc=self.verifier_auc), None
    return prm_potential(models, task, self.aggregate, self.transform), models.prm_params

  def host_state(self, particles: Particles) -> Particles:
    """What the batch keeps of a run: the particles without their device caches."""
    return particles.replace(cache=None, twist_cache=None, potential_state=None)

  def final_weights(self, particles: Particles) -> np.ndarray:
    """float[B, N] vote weights of the final particles (here: the potential as a probability)."""
    return np.exp(np.asarray(particles.log_potential, np.float64))

  def evaluate(self, batch: Batch, index: int) -> dict[int, list[Outcome]]:
    batch.start_searches(self, index, batch.experiment.budgets)  # the budgets' runs overlap
    return {k: self.evaluate_budget(batch, k, index) for k in batch.experiment.budgets}

  def evaluate_budget(self, batch: Batch, budget: int, index: int) -> list[Outcome]:
    """One engine run at budget N = `budget`: one Outcome per problem of the batch (the
    run itself is shared by the batch's group, `Batch.search`)."""
    return self._outcomes(batch, batch.search(self, index, budget), budget)

  def engine_config(self, models, exp, budget: int) -> SMCConfig:
    """The engine config of a run at budget N, on the task's delimiters and stop tokens."""
    ids = task_tokens(exp.task)
    return self.smc_config(budget, max_new_tokens=exp.max_new_tokens, delimiters=ids.steps, stop_tokens=ids.stop,
                           max_step_tokens=self.max_step_tokens, proposal=exp.sampling, pad_id=ids.pad)

  def run_engine(self, models, exp, tokens, lengths, keys, budget: int, mesh=None) -> Particles:
    """The particle engine at budget N from prompts int32[B, Tp] (lengths int32[B]) with one
    key per prompt ([B]); prompts split over `mesh`'s data axis when given. Its strategy is
    one of those of the experiment's runs that differ from it only there (`shared_selection`):
    they share one compiled program."""
    potential, pparams = self.potential(models, exp.task)
    twist, twist_params = self.twist_of(models)
    cfg = shared_selection(self, models, exp, budget)
    return run_smc(models.policy, models.policy_params, tokens, lengths, keys, cfg=cfg, potential=potential,
                   potential_params=pparams, twist=twist, twist_params=twist_params, mesh=mesh)

  def twist_of(self, models):
    """(twist model, params) of the run, (None, None) for an untwisted one."""
    return None, None

  def _answer(self, task, texts, score, weights) -> str:
    if self.final == "argmax":
      return texts[int(np.argmax(score))]
    votes: dict = {}
    for t, w in zip(texts, weights):
      a = task.extract_answer(t)
      if a is not None:
        votes[a] = votes.get(a, 0.0) + float(w)
    best = max(votes, key=votes.get) if votes else None
    return next((t for t in texts if task.extract_answer(t) == best), texts[0])

  def _outcomes(self, batch: Batch, p: Particles, n: int) -> list[Outcome]:
    task, models = batch.task, batch.models
    weights, score = self.final_weights(p), np.asarray(p.log_potential)
    verifier = models.prm.config if self.verifier == "prm" else None
    pages = distinct_pages(p.tokens[:, :n], p.length[:, :n], self.page_size)
    extra = self.extras(p)
    out = []
    for i, prob in enumerate(batch.problems):
      texts = [completion_text(task, p.tokens[i, j, :p.length[i, j]]) for j in range(n)]
      text = self._answer(task, texts, score[i], weights[i])
      prompt_len, decoded = len(batch.prompts[i]), float(p.decoded[i])
      out.append(Outcome(accuracy=float(task.verify(prob, text)), samples=float(n * self.runs),
                         cost=self.cost(models.policy.config, verifier, prompt_len, decoded, n,
                                        float(p.verified[i]))
                         + self.model_cost(models, prompt_len, decoded, n),
                         extra=(("resamples", float(p.num_resamples[i])), ("kv_pages", float(pages[i])))
                         + tuple((k, float(v[i])) for k, v in extra.items())))
    return out

  def extras(self, particles: Particles) -> dict[str, np.ndarray]:
    """Further per-problem numbers of a run (name -> float[B]), stored in each row."""
    return {}

  def model_cost(self, models, prompt_len: int, decoded: float, n: int) -> Cost:
    """Compute of models run beside the policy and verifier (e.g. a twist), per problem."""
    return Cost()

  runs = 1  # engine runs per problem at each budget
  page_size = 16  # of the KV pages reported (`kv_pages`: the final particles' pages, prefix-shared)

  def cost(self, policy, verifier, prompt_len: int, decoded: float, n: int, verified: float = 0.0):
    """The compute of one problem: `decoded` policy tokens over `runs` engine runs of N
    particles; `verified`: the ids the verifier re-read (`Particles.verified`; 0 when it reads
    the policy's tokens incrementally)."""
    return search_cost(policy, verifier, prompt_len, decoded / self.runs, n, verified / self.runs).scale(self.runs)


def _program_key(method: SearchMethod, models, exp, budget: int):
  """What an engine run's compiled program depends on besides its selection strategy: the
  config and potential in program form (`tts_jax.traced`) and the twist. None for a method
  that runs the engine its own way (its own `run_engine`)."""
  if type(method).run_engine is not SearchMethod.run_engine:
    return None
  cfg = method.engine_config(models, exp, budget).program()
  potential = program_of(as_potential(method.potential(models, exp.task)[0]))
  return dataclasses.replace(cfg, select=NoSelect()), potential, method.twist_of(models)[0]


def shared_selection(method: SearchMethod, models, exp, budget: int) -> SMCConfig:
  """`method`'s engine config at `budget`, its strategy made one of the strategies of every
  search method of `exp` whose run differs from it only in its strategy (`OneOf`): those
  runs (e.g. beam search, particle filtering and SMC with one PRM at one N) compile one
  engine program, whose switch runs each method's own selection. Alone, the config as it is."""
  cfg = method.engine_config(models, exp, budget)
  key = _program_key(method, models, exp, budget)
  if key is None:
    return cfg
  group = [m.engine_config(models, exp, budget).select for m in exp.methods
           if isinstance(m, SearchMethod) and _program_key(m, models, exp, budget) == key]
  if len({s.program() for s in group}) < 2:
    return cfg
  return dataclasses.replace(cfg, select=OneOf.among(group, cfg.select))


@dataclasses.dataclass(frozen=True)
class ParticleFiltering(SearchMethod):
  """Particle filtering with PRM potentials. The defaults follow Puri et al. 2025:
  multinomial resampling at every step with weights = the current PRM score as a logit
  (`incremental=False`, `transform="logit"`), answer = the particle with the largest
  weight. `incremental=True, transform="log"` is proper SMC for p(x) PRM(x) with
  ESS-triggered resampling; its rows also hold "log_z", the run's estimate log Z_hat of
  log E_p[phi] (unbiased in Z, so its mean is a stochastic lower bound on log Z), and
  "ess", the normalized effective sample size of the final weights.

  Twisted SMC (Zhao et al. 2024): `twist=True` tilts the proposal by the models' learned
  twist (`models.twist`, e.g. the task's shipped one, `tts_jax.train.twist`); with
  `step_potentials=False` the oracle scores finished particles only (the target's phi and
  nothing between steps, the setting the shipped twist is trained for), so the twist is the
  only guidance between steps. The twist's compute is counted beside the policy's."""

  transform: Literal["log", "logit"] = "logit"
  incremental: bool = False
  resampler: str = "multinomial"
  ess_threshold: float = 1.0
  twist: bool = False
  step_potentials: bool = True
  name: str = "particle filtering (PRM)"

  def check_budgets(self, budgets) -> None:
    if self.twist and not self.incremental:
      raise ValueError("ParticleFiltering(twist=True) needs incremental=True: twisted SMC's weights carry the "
                       "proposal's ratios p / q, which Puri et al.'s current-score weights (incremental=False) drop")
    if not self.step_potentials and self.verifier != "oracle":
      raise ValueError(f"ParticleFiltering(step_potentials=False) scores finished particles with the exact "
                       f"checker; it needs verifier='oracle', got {self.verifier!r}")
    super().check_budgets(budgets)

  def potential(self, models, task):
    if not self.step_potentials:
      return step_oracle(task, self.transform, auc=self.verifier_auc, outcome_only=True), None
    return super().potential(models, task)

  def smc_config(self, n, **kw):
    return particle_filter(n, scheme=self.resampler, ess_threshold=self.ess_threshold,
                           incremental=self.incremental, **kw)

  def twist_of(self, models):
    if not self.twist:
      return None, None
    if getattr(models, "twist", None) is None:
      raise ValueError(f"{self.name}: twist=True needs a learned twist, and these models have none (the shipped "
                       f"defaults hold one in tts_jax/tasks/defaults/<task>/twist; train one with "
                       f"experiments/train/<task>_twist.py)")
    return models.twist, models.twist_params

  def final_weights(self, particles):
    return np.asarray(particles.normalized_weights(), np.float64)

  def extras(self, particles):
    if not self.incremental:
      return {}
    w = self.final_weights(particles)
    return {"log_z": np.asarray(particles.final_log_z(), np.float64),
            "ess": 1.0 / np.sum(w ** 2, axis=1) / w.shape[1]}

  def model_cost(self, models, prompt_len, decoded, n):
    if not self.twist:
      return Cost()
    c = search_cost(models.twist.config, None, prompt_len, decoded, n)
    return Cost(flops=c.flops, kv_bytes=c.kv_bytes)


@dataclasses.dataclass(frozen=True)
class ParticleGibbs(SearchMethod):
  """Particle Gibbs (Puri et al. 2025): `sweeps` runs of conditional SMC with N particles, each
  holding particle 0 to the reference drawn (by final weight) from the run before; the first
  run is plain SMC (`tts_jax.smc.gibbs`). Proper SMC weights for p(x) PRM(x) (incremental,
  `transform="log"`) with multinomial resampling at every step, as conditional SMC needs. The
  answer comes from the last run's particles; the cost counts all `sweeps` runs."""

  sweeps: int = 4
  transform: Literal["log", "logit"] = "log"
  name: str = "particle Gibbs (PRM)"

  @property
  def runs(self) -> int:
    return self.sweeps

  def check_budgets(self, budgets) -> None:
    if not isinstance(self.sweeps, int) or self.sweeps < 1:
      raise ValueError(f"sweeps must be an int >= 1, got {self.sweeps!r}")
    super().check_budgets(budgets)

  def smc_config(self, n, **kw):
    return particle_filter(n, scheme="multinomial", ess_threshold=1.0, incremental=True, **kw)

  def run_engine(self, models, exp, tokens, lengths, keys, budget: int, mesh=None) -> Particles:
    cfg = self.engine_config(models, exp, budget)
    potential, pparams = self.potential(models, exp.task)
    return particle_gibbs(models.policy, models.policy_params, tokens, lengths, keys, cfg=cfg, potential=potential,
                          potential_params=pparams, sweeps=self.sweeps, mesh=mesh).particles

  def final_weights(self, particles):
    return np.asarray(particles.normalized_weights(), np.float64)


@dataclasses.dataclass(frozen=True)
class _TreeSearch(SearchMethod, abc.ABC):
  """Fields of the tree searches: M = `expansions` per kept particle, ranked by the potential."""

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


@dataclasses.dataclass(frozen=True)
class ETS(_TreeSearch):
  """Beam search (width N / M) with ETS's KV-aware survivor choice (`tts_jax.search.ets`):
  lambda_kv the potential a new KV page of `page_size` tokens must pay for, lambda_div the
  bonus of a new latest-step cluster. lambda_kv = lambda_div = 0 is `BeamSearch`."""

  lambda_kv: float = 0.1
  lambda_div: float = 0.0
  page_size: int = 16
  name: str = "ETS (PRM)"

  def smc_config(self, n, **kw):
    return ets_beam_search(n, min(self.expansions, n), self.lambda_kv, self.lambda_div, self.page_size, **kw)


@dataclasses.dataclass(frozen=True)
class Greedy(SearchMethod):
  """Greedy decoding (temperature 0, first argmax on ties): one completion per problem,
  the same at every budget (a budget-independent baseline, Puri et al. 2025's first row).
  Runs once per batch; its cost is one sample whatever the budget."""

  verifier: Literal["prm", "oracle"] = "oracle"  # no verifier is read
  name: str = "greedy"

  def smc_config(self, n, **kw):
    kw["proposal"] = SamplingParams(temperature=0.0)
    return best_of_n(1, **kw)

  def verifiers(self) -> tuple[str, ...]:
    return ()

  def potential(self, models, task):
    return (lambda tokens, lengths, done: jnp.zeros(lengths.shape, jnp.float32)), None

  def evaluate(self, batch: Batch, index: int) -> dict[int, list[Outcome]]:
    first = batch.experiment.budgets[0]
    p = batch.search(self, index, first)
    outcomes = self._outcomes(batch, p, 1)
    return {k: outcomes for k in batch.experiment.budgets}
