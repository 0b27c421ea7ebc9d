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
  base = dict(kind=kind, task=ModChain(max_ops=3), policy_dir=policy_dir, steps=6, batch_size=8, num_problems=8,
              samples_per_problem=2, rollouts=2, eval_problems=8, eval_samples=2, max_new_tokens=40,
              checkpoint_every=3, out_dir=str(out_dir))
  base.update(kw)
  return VerifierTrainConfig(**base)


@pytest.mark.parametrize("kind", ["orm", "prm"])
def test_labels_sit_on_the_right_tokens(tiny_policy, tmp_path, kind):
  cfg = vcfg(kind, tiny_policy, tmp_path)
  lm, params, _ = load_model(tiny_policy)
  task = cfg.task
  problems = [task.train_problem(1, i) for i in range(6)]
  data, oracle = build_data(cfg, task, lm, params, problems, key=jax.random.key(0), rollouts=(kind == "prm"))
  step_id = task.tokenizer().token_to_id(STEP)
  for i in range(len(data.tokens)):
    n = data.lengths[i]
    pos = np.flatnonzero(data.weight[i])
    assert pos[-1] == n - 1
    text = task.tokenizer().decode(data.tokens[i, :n].tolist(), skip_special_tokens=True)
    completion = text.split(":", 1)[1]
    assert data.target[i, n - 1] == float(task.verify(problems[i // 2], completion))
    if kind == "prm":
      assert all(data.tokens[i, p] == step_id for p in pos[:-1])
      assert set(np.unique(data.target[i, pos])) <= {0.0, 1.0}
    else:
      assert len(pos) == 1


def test_orm_and_prm_train_resume_and_export(tiny_policy, tmp_path):
  for kind in ("orm", "prm"):
    cfg = vcfg(kind, tiny_policy, tmp_path / kind)
    _, _, log = train_verifier(cfg, stop_after=4)
    vm, params, log = train_verifier(cfg)  # resumes from step 3, reuses the cached data
    assert os.path.isfile(tmp_path / kind / "data.npz")
    assert log[-1]["step"] == 6 and 0.0 <= log[-1][f"{kind}_auc"] <= 1.0 or np.isnan(log[-1][f"{kind}_auc"])
    model, loaded, meta = load_model(str(tmp_path / kind / "model"))
    assert meta["kind"] == kind and type(model).__name__ == "ValueModel"
