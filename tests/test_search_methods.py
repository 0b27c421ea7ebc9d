"""PRM potentials scored incrementally, particle-filter weighting, and search methods in the runner."""

import dataclasses
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import modchain_right_and_wrong, policy_and_value, without_timing
from tts_jax.eval import DVTS, BeamSearch, Experiment, ParticleFiltering, PassAtK, run_experiment
from tts_jax.eval.search_methods import shared_selection
from tts_jax.models.value import value_logits
from tts_jax.search import Beam, beam_search, best_of_n, dvts, particle_filter
from tts_jax.smc import Resample, SMCConfig, run_smc
from tts_jax.smc.driver import _run_jit
from tts_jax.smc.one_of import OneOf
from tts_jax.tasks import ModChain, step_oracle
from tts_jax.tasks.shipped import DEFAULTS_DIR
from tts_jax.verifiers import ValuePotential

DELIM, EOS, T = 5, 7, 12


@pytest.fixture(scope="module")
def models():
  return policy_and_value(11, 64)


@pytest.mark.parametrize("aggregate", ["last", "prod", "min"])
def test_incremental_prm_equals_offline_scoring(models, aggregate):
  lm, params, vm, vparams = models
  prompts = jnp.asarray([[1, 2, 3, 0], [4, 4, 0, 0]], jnp.int32)
  plens = jnp.asarray([3, 2], jnp.int32)
  cfg = best_of_n(3, max_new_tokens=T, delimiters=(DELIM,), stop_tokens=(EOS,), max_step_tokens=4)
  p = run_smc(lm, params, prompts, plens, jax.random.key(0), cfg=cfg,
              potential=ValuePotential(vm.as_lm(), aggregate=aggregate), potential_params=vparams)
  toks, lens = np.asarray(p.tokens), np.asarray(p.length)
  assert np.asarray(p.steps).max() >= 3  # several steps were scored
  for b in range(2):
    for n in range(3):
      # the engine's step ends: delimiter, the 4-token cap, or the final token
      seq_ends, start = [], 0
      for i in range(lens[b, n]):
        if toks[b, n, i] == DELIM or i - start + 1 == 4 or i == lens[b, n] - 1:
          seq_ends.append(i)
          start = i + 1
      seq = list(np.asarray(prompts[b])[:plens[b]]) + list(toks[b, n, :lens[b, n]])
      v = np.asarray(value_logits(vm, vparams, jnp.asarray([seq]), jnp.asarray([len(seq)])))[0]
      r = -np.log1p(np.exp(-v[[int(plens[b]) + i for i in seq_ends]]))
      want = {"last": r[-1], "prod": r.sum(), "min": r.min()}[aggregate]
      np.testing.assert_allclose(float(p.log_potential[b, n]), want, atol=2e-4)


def test_puri_weights_are_the_current_scores(models):
  lm, params, vm, vparams = models
  cfg = particle_filter(4, "multinomial", 1.0, max_new_tokens=T, delimiters=(DELIM,), stop_tokens=(EOS,),
                        incremental=False)
  p = run_smc(lm, params, jnp.asarray([[1, 2, 3]]), jnp.asarray([3]), jax.random.key(1), cfg=cfg,
              potential=ValuePotential(vm.as_lm(), transform="logit"), potential_params=vparams)
  np.testing.assert_allclose(np.asarray(p.log_weights), np.asarray(p.log_potential))
  assert int(p.num_resamples[0]) == int(np.asarray(p.steps).max()) - 1  # every step but the last


def test_search_methods_in_the_runner(tmp_path):
  exp = Experiment(name="tiny-search", task=ModChain(), split="test", num_problems=4,
                   models=os.path.join(DEFAULTS_DIR, "modchain"),
                   methods=(PassAtK(), ParticleFiltering(incremental=True, transform="log", resampler="systematic",
                                                         ess_threshold=0.5, final="weighted_majority", name="smc"),
                            DVTS(expansions=2)),
                   budgets=(2, 4), max_new_tokens=64, num_subsets=4, batch_problems=2,
                   out_dir=str(tmp_path / "full"))
  full = run_experiment(exp, quiet=True)
  for name in ("DVTS (PRM)", "smc"):
    rows = full["methods"][name]
    assert [r["budget"] for r in rows] == [2, 4]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    # compute grows with the budget; every particle decodes at least one token
    assert rows[0]["flops"] < rows[1]["flops"]
    assert rows[0]["generated_tokens"] >= 2 and rows[1]["generated_tokens"] > rows[0]["generated_tokens"]
  # Resume after a crash reproduces the search records bit for bit.
  cut = dataclasses.replace(exp, out_dir=str(tmp_path / "cut"))
  run_experiment(cut, stop_after_batches=1, quiet=True)
  assert without_timing(run_experiment(cut, quiet=True)) == without_timing(full)
  assert (tmp_path / "cut" / "results.jsonl").read_bytes() == (tmp_path / "full" / "results.jsonl").read_bytes()


def test_oracle_potential_checks_steps_and_answer():
  task = ModChain()
  prompt, tokens, lengths, done, _ = modchain_right_and_wrong(task, task.split("test")[0])
  pot = step_oracle(task, eps=0.01)  # the checker reads the problem off the prompt
  state = pot.init(None, jnp.asarray([prompt]), jnp.asarray([len(prompt)]), 4, tokens.shape[-1])
  score, _ = jax.jit(lambda s, x, l, d: pot.score(None, s, x, l, d, None))(
      state, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(done))
  np.testing.assert_allclose(np.asarray(score)[0], np.log([0.99, 0.01, 0.99, 0.01]), rtol=1e-6)
  # Outcome only: the finished particles' verdicts, log 1 for the two still being written.
  outcome = step_oracle(task, eps=0.01, outcome_only=True)
  score, _ = jax.jit(lambda s, x, l, d: outcome.score(None, s, x, l, d, None))(
      state, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(done))
  np.testing.assert_allclose(np.asarray(score)[0], np.log([0.99, 0.01, 1.0, 1.0]), rtol=1e-6)


@dataclasses.dataclass(frozen=True)
class _HostOnly:
  """A task's checker without its array form: the oracle calls it back on the host."""

  checker: object

  def __call__(self, prompt_ids, completion_ids, done):
    return self.checker(prompt_ids, completion_ids, done)


@pytest.mark.parametrize("on_device", [True, False])  # ModChain's array checker; the host callback
def test_oracle_reads_its_traced_fields_as_the_constants(on_device):
  """Inside the engine's program an oracle's transform, auc and seed are traced (`tts_jax.traced`):
  all share one program, and each value gives the scores of the potential with it compiled in
  (the exact ones bit for bit, the corrupted ones to float32 rounding)."""
  from tts_jax.tasks.oracle import TaskChecker
  from tts_jax.verifiers import OraclePotential
  task = ModChain()
  prompt, tokens, lengths, done, _ = modchain_right_and_wrong(task, task.split("test")[0])
  args = jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(done)
  checker = TaskChecker(task) if on_device else _HostOnly(TaskChecker(task))
  traced = jax.jit(lambda program, k, s, x, l, d: program.bind(k).score(None, s, x, l, d, None)[0], static_argnums=0)
  scores, programs = {}, set()
  for transform, auc, seed in [("log", 1.0, 0), ("logit", 1.0, 0), ("log", 0.8, 0), ("logit", 0.8, 0), ("log", 0.8, 5),
                               ("log", 0.6, 0)]:
    pot = OraclePotential(checker, transform, eps=0.01, auc=auc, seed=seed)
    state = pot.init(None, jnp.asarray([prompt]), jnp.asarray([len(prompt)]), 4, tokens.shape[-1])
    baked = jax.jit(lambda s, x, l, d: pot.score(None, s, x, l, d, None)[0])(state, *args)
    programs.add(pot.program())
    got = np.asarray(traced(pot.program(), pot.knobs(), state, *args))
    if auc == 1:  # the exact scores: constants selected, bit for bit
      np.testing.assert_array_equal(got, np.asarray(baked))
    else:  # XLA may fuse the constant-folded program's log_sigmoid otherwise: the same to float32 rounding
      np.testing.assert_allclose(got, np.asarray(baked), rtol=1e-6)
    scores[transform, auc, seed] = np.asarray(baked)
  assert programs == {OraclePotential(checker, "log", eps=0.01)}  # one program for all six
  assert traced._cache_size() == 1
  for auc in (1.0, 0.8):
    log = scores["log", auc, 0]
    np.testing.assert_allclose(scores["logit", auc, 0], log - np.log1p(-np.exp(log)), rtol=1e-5)
  assert len({v.tobytes() for k, v in scores.items() if k[0] == "log"}) == 4  # auc and seed both count


def test_a_host_checker_runs_between_programs_as_it_ran_called_back():
  """An oracle whose checker has no array code (`_HostOnly`) is host work the potential names:
  `run_smc` runs the engine from the host (`smc.host_steps`) and gives the one-program run's
  particles (the checker called back) bit for bit, at AUC 1 and corrupted to 0.7."""
  from tts_jax.sampling.inputs import prompt_keys
  from tts_jax.smc.engine import SMCModels, SMCParams
  from tts_jax.tasks import load_default, task_prompts, task_tokens
  from tts_jax.tasks.oracle import TaskChecker
  from tts_jax.traced import knobs_of, program_of
  from tts_jax.verifiers import OraclePotential
  from tts_jax.models import pad_prompts
  task, models = ModChain(), load_default("modchain")
  tokens, lengths = pad_prompts(task_prompts(task, list(task.split("hard")[:2])), pad_id=task_tokens(task).pad)
  ids = task_tokens(task)
  cfg = beam_search(4, 2, max_new_tokens=48, delimiters=ids.steps, stop_tokens=ids.stop, pad_id=ids.pad)
  for auc in (1.0, 0.7):
    pot = OraclePotential(_HostOnly(TaskChecker(task)), auc=auc)
    host = run_smc(models.policy, models.policy_params, tokens, lengths, jax.random.key(1), cfg=cfg, potential=pot)
    one, _ = _run_jit(SMCModels(policy=models.policy, potential=program_of(pot)),
                      SMCParams(policy=models.policy_params), jnp.asarray(tokens), jnp.asarray(lengths),
                      prompt_keys(jax.random.key(1), 2), None, {"cfg": cfg.knobs(), "potential": knobs_of(pot)},
                      cfg.program())
    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(host), jax.tree_util.tree_leaves_with_path(one)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    assert int(host.num_resamples.sum()) > 0


def test_a_host_checker_on_a_mesh_runs_per_device_between_programs(monkeypatch):
  """On a data mesh the host-driven loop runs each program per device (`smc.host_steps`), the
  carry kept on its device, never calling back: the particles of the run without a mesh, bit
  for bit (less the caches, device-local state), with a paged cache too; a paged cache too
  small for the run is an error naming it. (8 devices and a model axis: tests/test_parallel.py.)"""
  from tts_jax.models import pad_prompts
  from tts_jax.parallel import make_mesh
  from tts_jax.tasks import load_default, task_prompts, task_tokens
  from tts_jax.tasks.oracle import TaskChecker
  from tts_jax.verifiers import OraclePotential
  task, models = ModChain(), load_default("modchain")
  tokens, lengths = pad_prompts(task_prompts(task, list(task.split("hard")[:3])), pad_id=task_tokens(task).pad)
  ids = task_tokens(task)
  cfg = beam_search(4, 2, max_new_tokens=48, delimiters=ids.steps, stop_tokens=ids.stop, pad_id=ids.pad)
  pot = OraclePotential(_HostOnly(TaskChecker(task)), auc=0.7)
  run = lambda cfg, mesh=None: run_smc(models.policy, models.policy_params, tokens, lengths,  # noqa: E731
                                       jax.random.key(1), cfg=cfg, potential=pot, mesh=mesh)
  paged = dataclasses.replace(cfg, page_size=8, num_pages=64)
  monkeypatch.setattr(jax, "pure_callback", lambda *a, **k: pytest.fail("a host potential called back"))
  for c in (cfg, paged):
    one = run(c).replace(cache=None, twist_cache=None, potential_state=None)
    each = run(c, make_mesh())
    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(each), jax.tree_util.tree_leaves_with_path(one)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))
    assert int(one.num_resamples.sum()) > 0
  with pytest.raises(RuntimeError, match="ran out of pages on some device"):
    run(dataclasses.replace(paged, num_pages=3), make_mesh())


def test_bad_search_configs_are_named():
  with pytest.raises(ValueError, match="expansions M=4 must divide the number of particles N=6"):
    Experiment(name="x", task=ModChain(), methods=(BeamSearch(expansions=4),), budgets=(4, 6))
  with pytest.raises(ValueError, match="select must be a SelectionStrategy"):
    SMCConfig(select="greedy")
  with pytest.raises(ValueError, match="beam width must be in"):
    SMCConfig(num_particles=8, select=Beam(width=9))
  with pytest.raises(ValueError, match="group_size=3 must divide num_particles=8"):
    SMCConfig(num_particles=8, select=Beam(width=1, group_size=3))
  with pytest.raises(ValueError, match="unknown resampler 'gumbel'"):
    Resample("gumbel")
  with pytest.raises(ValueError, match="aggregate must be"):
    ValuePotential(None, aggregate="mean")


def test_greedy_is_the_argmax_continuation_at_every_budget():
  """Greedy: one temperature-0 completion per problem (the sampler's greedy tokens), the same
  outcome at every budget, costing one sample."""
  import jax
  import numpy as np
  from tts_jax.eval import Experiment, Greedy
  from tts_jax.eval.batch import Batch
  from tts_jax.sampling import sample
  from tts_jax.tasks import ModChain, load_default, task_prompts, task_tokens
  task = ModChain()
  exp = Experiment(name="g", task=task, split="hard", methods=(Greedy(),), budgets=(1, 4), max_new_tokens=64)
  models = load_default("modchain")
  problems = list(task.split("hard")[:3])
  batch = Batch(experiment=exp, models=models, problems=problems, start=0)
  out = Greedy().evaluate(batch, 0)
  assert [o.accuracy for o in out[1]] == [o.accuracy for o in out[4]] and all(o.samples == 1 for o in out[4])
  p = batch.search(Greedy(), 0, 1)
  ids = task_tokens(task)
  ref = sample(models.policy, models.policy_params, task_prompts(task, problems), key=jax.random.key(0),
               max_new_tokens=64, temperature=0.0, stop_tokens=ids.stop, pad_id=ids.pad)
  for i in range(3):
    n = int(ref.lengths[i, 0])
    assert int(p.length[i, 0]) == n
    np.testing.assert_array_equal(np.asarray(p.tokens[i, 0, :n]), np.asarray(ref.tokens[i, 0, :n]))


def test_particle_gibbs_method_runs_its_sweeps_and_counts_them():
  """ParticleGibbs as an experiment method: K conditional-SMC sweeps of N particles per problem,
  N x K samples and K runs' compute in its outcomes; a bad sweep count is named. (Its
  correctness against enumeration: tests/test_gibbs.py.)"""
  from tts_jax.eval import ParticleGibbs
  from tts_jax.eval.batch import Batch
  from tts_jax.tasks import load_default
  task = ModChain()
  one = ParticleGibbs(sweeps=1, verifier="oracle", name="pg1")
  three = ParticleGibbs(sweeps=3, verifier="oracle", name="pg3")
  exp = Experiment(name="pg", task=task, split="hard", methods=(one, three), budgets=(4,), max_new_tokens=64)
  batch = Batch(experiment=exp, models=load_default("modchain"), problems=list(task.split("hard")[:3]), start=0)
  out1, out3 = one.evaluate(batch, 0)[4], three.evaluate(batch, 1)[4]
  assert all(o.samples == 4 for o in out1) and all(o.samples == 12 for o in out3)
  for a, b in zip(out1, out3):
    assert 2.0 < b.cost.generated_tokens / a.cost.generated_tokens < 4.5  # three sweeps of similar length
    assert b.cost.flops > 2 * a.cost.flops
  with pytest.raises(ValueError, match="sweeps must be an int >= 1"):
    Experiment(name="x", task=task, methods=(ParticleGibbs(sweeps=0),), budgets=(4,))


def test_dvts_with_one_subtree_is_beam_search_and_shares_its_program(models):
  lm, params, vm, vparams = models
  kw = dict(max_new_tokens=T, delimiters=(DELIM,), stop_tokens=(EOS,), max_step_tokens=4)
  one_tree, beam = dvts(4, 4, **kw), beam_search(4, 4, **kw)
  assert one_tree.program() == beam.program()  # one compiled program (traced width and group)
  pot = ValuePotential(vm.as_lm())
  runs = []
  for cfg in (beam, one_tree):
    before = _run_jit._cache_size()
    p = run_smc(lm, params, jnp.asarray([[1, 2, 3]]), jnp.asarray([3]), jax.random.key(2), cfg=cfg,
                potential=pot, potential_params=vparams)
    runs.append((np.asarray(p.tokens), _run_jit._cache_size() - before))
  np.testing.assert_array_equal(runs[0][0], runs[1][0])
  assert runs[1][1] == 0  # the second config compiled nothing new


def _baked_type(cls: type) -> type:
  """`cls` with nothing traced: every field a constant of the compiled program (the
  reference for the traced ones)."""
  return dataclasses.dataclass(frozen=True)(type(f"_Baked{cls.__name__}", (cls,), {"traced": ()}))


_BakedBeam, _BakedResample = _baked_type(Beam), _baked_type(Resample)


SWEEPS = {  # configs that differ only in traced fields, and their strategy with those compiled in
    "beam widths and DVTS": ((lambda kw: (beam_search(8, 4, **kw), dvts(8, 4, **kw), beam_search(8, 2, **kw))),
                             _BakedBeam),
    "ESS thresholds": ((lambda kw: tuple(particle_filter(8, "multinomial", t, **kw) for t in (1.0, 0.0, 0.5))),
                       _BakedResample),
}


@pytest.mark.parametrize("sweep", SWEEPS)
def test_traced_fields_share_one_program_with_their_own_results(models, sweep):
  """Beam search at two widths and DVTS at one N, or particle filters at three ESS thresholds,
  run one compiled engine program (those fields are traced), and each gives the particles of a
  program with its values compiled in."""
  lm, params, vm, vparams = models
  kw = dict(max_new_tokens=T, delimiters=(DELIM,), stop_tokens=(EOS,), max_step_tokens=4)
  pot = ValuePotential(vm.as_lm())
  prompts = jnp.asarray([[1, 2, 3], [3, 2, 1]]), jnp.asarray([3, 3])
  make, baked_type = SWEEPS[sweep]

  def go(cfg):
    before = _run_jit._cache_size()
    p = run_smc(lm, params, *prompts, jax.random.key(5), cfg=cfg, potential=pot, potential_params=vparams)
    return p, _run_jit._cache_size() - before

  cfgs = make(kw)
  runs = [go(cfg) for cfg in cfgs]
  assert [new for _, new in runs[1:]] == [0, 0]  # one program for the three
  seen = [(np.asarray(p.tokens).tobytes(), np.asarray(p.num_resamples).tobytes()) for p, _ in runs]
  assert seen[1] != seen[0] and seen[2] != seen[0]  # the traced values were used
  for cfg, (p, _) in zip(cfgs, runs):
    baked = dataclasses.replace(cfg, select=baked_type(**dataclasses.asdict(cfg.select)))
    q, new = go(baked)
    assert new == 1
    for name in ("tokens", "ancestors", "log_weights", "log_z"):
      np.testing.assert_array_equal(np.asarray(getattr(q, name)), np.asarray(getattr(p, name)), err_msg=name)
  if sweep == "beam widths and DVTS":
    anc = np.asarray(runs[1][0].ancestors)  # DVTS: ancestors stay in their subtree of 4
    assert np.all(anc // 4 == np.arange(8) // 4)


_BakedConfig, _BakedValuePotential = _baked_type(SMCConfig), _baked_type(ValuePotential)


def _baked(cfg: SMCConfig) -> SMCConfig:
  """`cfg` with nothing traced: its strategy, `incremental`, all constants of its own program."""
  sel = cfg.select
  baked_sel = {Beam: _BakedBeam, Resample: _BakedResample}[type(sel)](**dataclasses.asdict(sel))
  return _BakedConfig(**{**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, "select": baked_sel})


def test_one_of_shares_one_program_among_strategies_weightings_and_transforms(models):
  """Beam search, Puri et al.'s particle filter (current logit weights) and SMC (ratios of
  log potentials, systematic, ESS 0.5) at one N, each as a member of one `OneOf`: one
  compiled engine program, and each run equals its own program with every choice compiled in."""
  lm, params, vm, vparams = models
  kw = dict(max_new_tokens=T, delimiters=(DELIM,), stop_tokens=(EOS,), max_step_tokens=4)
  prompts = jnp.asarray([[1, 2, 3], [3, 2, 1]]), jnp.asarray([3, 3])
  runs = [(beam_search(8, 4, **kw), "log"),
          (particle_filter(8, "multinomial", 1.0, incremental=False, **kw), "logit"),
          (particle_filter(8, "systematic", 0.5, **kw), "log")]
  strategies = [cfg.select for cfg, _ in runs]

  def go(cfg, potential):
    before = _run_jit._cache_size()
    p = run_smc(lm, params, *prompts, jax.random.key(5), cfg=cfg, potential=potential, potential_params=vparams)
    return p, _run_jit._cache_size() - before

  shared = []
  for cfg, transform in runs:
    one = dataclasses.replace(cfg, select=OneOf.among(strategies, cfg.select))
    assert one.program() == dataclasses.replace(runs[0][0], select=OneOf.among(strategies, runs[0][0].select)).program()
    shared.append(go(one, ValuePotential(vm.as_lm(), transform=transform)))
  assert [new for _, new in shared[1:]] == [0, 0]  # one program for the three
  seen = {(np.asarray(p.ancestors).tobytes(), np.asarray(p.log_weights).tobytes()) for p, _ in shared}
  assert len(seen) == 3  # each ran its own branch
  for (cfg, transform), (p, _) in zip(runs, shared):
    q, new = go(_baked(cfg), _BakedValuePotential(vm.as_lm(), transform=transform))
    assert new == 1
    for name in ("tokens", "ancestors", "log_weights", "log_potential", "log_z", "num_resamples"):
      np.testing.assert_array_equal(np.asarray(getattr(q, name)), np.asarray(getattr(p, name)), err_msg=name)


def test_one_of_checks_its_members():
  with pytest.raises(ValueError, match="non-empty tuple of SelectionStrategy"):
    OneOf(strategies=())
  with pytest.raises(ValueError, match=r"index must be in \[0, 2\)"):
    OneOf(strategies=(Beam(), Resample()), index=2)
  with pytest.raises(ValueError, match="is not one of"):
    OneOf.among([Beam()], Resample())
  one = OneOf.among([Beam(), Resample("multinomial")], Beam(width=2, group_size=4))
  assert one.index == 0 and one.chosen == Beam(width=2, group_size=4)
  other = OneOf.among([Beam(width=8), Resample("multinomial", 1.0), Beam(width=2)], Resample("multinomial", 0.3))
  assert other.index == 1 and other.program() == one.program()  # members compared by program form
  with pytest.raises(ValueError, match="beam width must be in"):  # the chosen member is validated
    SMCConfig(num_particles=8, select=OneOf.among([Beam(), Resample()], Beam(width=9)))
  assert one.knobs() == {"index": 0, "strategies": [{"width": 2, "group_size": 4}, {"ess_threshold": 0.5}]}
  with pytest.raises(ValueError, match=r"OneOf traces \['index', 'strategies'\], got knobs \['index'\]"):
    one.bind({"index": 0})
  with pytest.raises(ValueError, match="OneOf.strategies holds 2 configs, got knobs for 1"):
    one.bind({"index": 0, "strategies": [{"width": 2, "group_size": 4}]})


def test_an_experiment_shares_engine_programs_among_its_search_methods():
  """Search methods of one experiment whose runs differ only in their strategy, weighting
  and transform share a program (`shared_selection`); a different potential does not."""
  from tts_jax.tasks import load_default
  task = ModChain()
  beam, pf = BeamSearch(expansions=4), ParticleFiltering()
  smc = ParticleFiltering(incremental=True, transform="log", resampler="systematic", ess_threshold=0.5, name="smc")
  oracle = BeamSearch(expansions=4, verifier="oracle", name="beam (oracle)")
  exp = Experiment(name="x", task=task, methods=(beam, pf, smc, oracle), budgets=(4, 8), max_new_tokens=32)
  models = load_default("modchain")
  for n in exp.budgets:
    cfgs = [shared_selection(m, models, exp, n) for m in exp.methods]
    assert len({c.program() for c in cfgs[:3]}) == 1  # PRM-guided: one program
    assert [c.select.chosen for c in cfgs[:3]] == [m.engine_config(models, exp, n).select for m in (beam, pf, smc)]
    assert cfgs[3] == oracle.engine_config(models, exp, n)  # alone in its group: unchanged
    assert cfgs[1].incremental is False and cfgs[2].incremental is True  # traced, not dropped
  # The exact checker and its corruptions to any AUC: one potential program (verifier_quality.py).
  checkers = (oracle, dataclasses.replace(oracle, verifier_auc=0.7), ParticleFiltering(verifier="oracle", verifier_auc=0.9))
  assert len({m.potential(models, task)[0].program() for m in checkers}) == 1


def test_traced_fields_must_be_fields_with_defaults():
  @dataclasses.dataclass(frozen=True)
  class NoDefault(Beam):
    cut: int = dataclasses.field(kw_only=True)
    traced: ClassVar[tuple[str, ...]] = ("width", "cut")

  @dataclasses.dataclass(frozen=True)
  class Misspelt(Beam):
    traced: ClassVar[tuple[str, ...]] = ("widht",)

  with pytest.raises(ValueError, match=r"\['cut'\] have no default"):
    SMCConfig(num_particles=4, select=NoDefault(cut=2)).program()
  with pytest.raises(ValueError, match=r"\['widht'\] are not fields"):
    SMCConfig(num_particles=4, select=Misspelt()).program()
