"""ORM / PRM data labelling and training on a tiny policy, end to end."""

import os

import numpy as np
import pytest

from tts_jax.models.io import load_model
from tts_jax.tasks import ModChain
from tts_jax.tasks.base import STEP
from tts_jax.train import OptimConfig, PolicyTrainConfig, train_policy
from tts_jax.train.verifier import VerifierTrainConfig, build_data, train_verifier
from tests.test_train import TINY

import jax


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
  out = tmp_path_factory.mktemp("policy")
  cfg = PolicyTrainConfig(task=ModChain(max_ops=3), model=TINY, optim=OptimConfig(learning_rate=1e-2, warmup_steps=4),
                          steps=30, batch_size=8, max_len=96, eval_every=0, checkpoint_every=30, out_dir=str(out))
  train_policy(cfg)
  return os.path.join(out, "model")


def vcfg(kind, policy_dir, out_dir, **kw):
  base = dict(kind=kind, task=ModChain(max_ops=3), policy_dir=policy_dir, steps=6, batch_size=8, problems_per_round=4,
              samples_per_problem=2, rollouts=2, eval_problems=8, eval_samples=2, max_new_tokens=40,
              checkpoint_every=3, out_dir=str(out_dir))
  base.update(kw)
  return VerifierTrainConfig(**base)


@pytest.mark.parametrize("kind, labels, every_token", [("orm", "exact", False), ("prm", "mc-hard", False),
                                                       ("prm", "exact", False), ("orm", "exact", True),
                                                       ("prm", "exact", True)])
def test_labels_sit_on_the_right_tokens(tiny_policy, tmp_path, kind, labels, every_token):
  cfg = vcfg(kind, tiny_policy, tmp_path, labels=labels, every_token=every_token)
  lm, params, _ = load_model(tiny_policy)
  task = cfg.task
  tok = task.tokenizer()
  problems = [task.train_problem(1, i) for i in range(6)]
  data, oracle = build_data(cfg, task, lm, params, problems, key=jax.random.key(0), num_samples=2, labels=labels,
                            every_token=every_token)
  step_id = tok.token_to_id(STEP)
  for i in range(len(data.tokens)):
    n = data.lengths[i]
    pos = np.flatnonzero(data.weight[i])
    assert pos[-1] == n - 1
    text = tok.decode(data.tokens[i, :n].tolist(), skip_special_tokens=True)
    completion = text.split(":", 1)[1]
    outcome = float(task.verify(problems[i // 2], completion))
    assert data.target[i, n - 1] == outcome
    start = int(np.flatnonzero(data.tokens[i] == tok.token_to_id(":"))[0]) + 1  # the completion's first token
    if every_token:  # every completion token, and nothing of the prompt
      assert pos.tolist() == list(range(start, n))
      if kind == "orm":
        assert (data.target[i, pos] == outcome).all()
      else:
        words = [tok.backend.id_to_token(int(t)) for t in data.tokens[i, start:n]]
        assert data.target[i, pos[:-1]].tolist() == [float(x) for x in task.token_labels(problems[i // 2], words)][:-1]
        steps = [p for p in pos if data.tokens[i, p] == step_id]
        assert data.target[i, steps].tolist() == [float(x) for x in oracle[i][:len(steps)]]
    elif kind == "prm":
      assert all(data.tokens[i, p] == step_id for p in pos[:-1])
      assert set(np.unique(data.target[i, pos])) <= {0.0, 1.0}
      if labels == "exact":
        assert data.target[i, pos[:-1]].tolist() == [float(x) for x in oracle[i][:len(pos) - 1]]
    else:
      assert len(pos) == 1


def test_rounds_are_fresh_whole_problems_and_pure_in_the_step(tiny_policy, tmp_path):
  """Step s reads round s // steps_per_round: fresh training problems each round, whole problems
  (all their samples) in each batch, and the same batch whichever order steps are asked in."""
  from tts_jax.train.verifier import RoundStream
  cfg = vcfg("orm", tiny_policy, tmp_path, problems_per_round=8, epochs_per_round=2)
  assert cfg.steps_per_round == 4  # 8 problems / 4 per batch x 2 epochs
  lm, params, _ = load_model(tiny_policy)
  a, b = RoundStream(cfg, cfg.task, lm, params), RoundStream(cfg, cfg.task, lm, params)
  forward = [a.batch(s) for s in range(8)]
  backward = [b.batch(s) for s in reversed(range(8))][::-1]
  for x, y in zip(forward, backward):
    assert all(np.array_equal(x[k], y[k]) for k in x)
  for batch in forward:
    groups, counts = np.unique(batch["group"], return_counts=True)
    assert len(groups) == 4 and (counts == 2).all()
  prompt = lambda batch, i: tuple(batch["tokens"][i, :int(np.flatnonzero(batch["tokens"][i] == 
                                                                       cfg.task.tokenizer().token_to_id(":"))[0])])
  seen = [{prompt(forward[s], i) for s in range(r * 4, r * 4 + 4) for i in range(8)} for r in (0, 1)]
  assert len(seen[0]) == len(seen[1]) == 8 and not seen[0] & seen[1]  # each epoch sees all 8; rounds differ


def test_verifier_configs_name_what_is_wrong():
  with pytest.raises(ValueError, match="multiple of samples_per_problem"):
    vcfg("orm", "x", "y", batch_size=7)
  with pytest.raises(ValueError, match="problems_per_round .* multiple of the problems per batch"):
    vcfg("orm", "x", "y", problems_per_round=6)
  with pytest.raises(ValueError, match="labels steps only"):
    vcfg("prm", "x", "y", labels="mc-soft", every_token=True)
  with pytest.raises(ValueError, match="labels must be one of"):
    vcfg("prm", "x", "y", labels="hard")


def test_orm_and_prm_train_resume_and_export(tiny_policy, tmp_path):
  for kind in ("orm", "prm"):
    cfg = vcfg(kind, tiny_policy, tmp_path / kind, every_token=kind == "prm", extra_layers=int(kind == "prm"))
    _, _, log = train_verifier(cfg, stop_after=4)
    vm, params, log = train_verifier(cfg)  # resumes from step 3, drawing rounds 3.. again
    assert log[-1]["step"] == 6 and (0.0 <= log[-1][f"{kind}_auc"] <= 1.0 or np.isnan(log[-1][f"{kind}_auc"]))
    assert "within_problem_auc" in log[-1]
    model, loaded, meta = load_model(str(tmp_path / kind / "model"))
    assert meta["kind"] == kind and type(model).__name__ == "ValueModel"
    assert model.config.num_layers == TINY.num_layers + (kind == "prm")  # the PRM stacks one block
    assert meta["info"]["train_sequences"] == 6 * 4 * 2
    if kind == "orm":  # the resumed run ends where an uninterrupted one does, bit for bit
      _, straight, _ = train_verifier(vcfg(kind, tiny_policy, tmp_path / "straight"))
      assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(straight)))


def test_written_samples_are_the_solution_and_one_token_off(tiny_policy):
  """written=3 of 5 problems, 4 samples each: 2 copies of the right solution and 2 wrong
  solutions, labelled like sampled ones; the other 2 problems are sampled."""
  cfg = vcfg("prm", tiny_policy, "unused", every_token=True, samples_per_problem=4)
  lm, params, _ = load_model(tiny_policy)
  task = cfg.task
  tok = task.tokenizer()
  problems = [task.train_problem(1, i) for i in range(5)]
  data, _ = build_data(cfg, task, lm, params, problems, key=jax.random.key(0), num_samples=4, labels="exact",
                       every_token=True, written=3)
  again, _ = build_data(cfg, task, lm, params, problems, key=jax.random.key(0), num_samples=4, labels="exact",
                        every_token=True, written=3)
  assert np.array_equal(data.tokens, again.tokens)  # a pure function of the key
  assert data.tokens.shape[0] == 20 and data.group.tolist() == [p for p in range(5) for _ in range(4)]
  for i in range(12):
    p, j = divmod(i, 4)
    n = data.lengths[i]
    text = tok.decode(data.tokens[i, :n].tolist(), skip_special_tokens=True).split(":", 1)[1].strip()
    pos = np.flatnonzero(data.weight[i])
    if j < 2:
      assert text == task.solution(problems[p]) and (data.target[i, pos] == 1).all()
    else:
      assert text != task.solution(problems[p])
      flips = np.flatnonzero(np.diff(data.target[i, pos[:-1]]))
      assert len(flips) == 1 and data.target[i, pos[0]] == 1  # right up to one token, wrong from it on
