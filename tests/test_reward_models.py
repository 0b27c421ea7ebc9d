"""The papers' reward models, loaded from local Hugging Face directories, equal a torch
reference of the same architecture on tiny random instances: Qwen2.5-Math-PRM (Qwen2 trunk +
two-layer 2-class head), Skywork-o1-PRM (Qwen2 trunk + value head), Math-Shepherd (Mistral)
and RLHFlow (Llama) PRMs read as p("+") vs p("-"), and sequence-classification ORMs. Each
works as a pool verifier (prompt shared by its completions) and as an engine potential."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.helpers import make_hf_model, randomize, save_hf_tokenizer
from tts_jax.models import hf
from tts_jax.models.hf import CheckpointError

TRUNK = dict(vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
             num_key_value_heads=2, max_position_embeddings=256)


def _save_headed(path, head_modules: dict, arch: str, seed: int):
  """A Qwen2 trunk + torch head modules saved under `model.*` and the heads' own names."""
  import transformers
  from safetensors.torch import save_file
  cfg = transformers.Qwen2Config(**TRUNK)
  torch.manual_seed(seed)
  trunk = randomize(transformers.Qwen2Model(cfg).eval(), seed)
  tensors = {f"model.{k}": v.contiguous() for k, v in trunk.state_dict().items()}
  for name, module in head_modules.items():
    randomize(module, seed + 7)
    tensors |= {f"{name}.{k}": v.contiguous() for k, v in module.state_dict().items()}
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump({**cfg.to_dict(), "architectures": [arch]}, fh)
  save_hf_tokenizer(path)
  return trunk


def qwen_prm(path):
  head = torch.nn.Sequential(torch.nn.Linear(48, 48), torch.nn.ReLU(), torch.nn.Linear(48, 2))
  trunk = _save_headed(path, {"score": head}, "Qwen2ForProcessRewardModel", 1)
  return lambda ids: torch.softmax(head(trunk(ids).last_hidden_state), -1)[..., 1]


def skywork_prm(path):
  head = torch.nn.Linear(48, 1)
  trunk = _save_headed(path, {"v_head.summary": head}, "Qwen2ForPrmModel", 2)
  return lambda ids: torch.sigmoid(head(trunk(ids).last_hidden_state))[..., 0]


def token_prm(family):
  def build(path):
    model = make_hf_model(family, seed=3)
    model.save_pretrained(path)
    tok = save_hf_tokenizer(path)
    good, bad = (tok.encode(t, add_special_tokens=False)[0] for t in ("+", "-"))
    return lambda ids: torch.softmax(model(ids).logits[..., [good, bad]], -1)[..., 0]
  return build


def seqcls_orm(labels):
  def build(path):
    import transformers
    torch.manual_seed(4)
    model = randomize(transformers.LlamaForSequenceClassification(
        transformers.LlamaConfig(**TRUNK, num_labels=labels, pad_token_id=0)).eval(), 4)
    model.save_pretrained(path)
    save_hf_tokenizer(path)
    def ref(ids):
      s = model.score(model.model(ids).last_hidden_state)
      return torch.sigmoid(s[..., 0]) if labels == 1 else torch.softmax(s, -1)[..., 1]
    ref.model = model
    return ref
  return build


CASES = {"qwen2.5-math-prm": qwen_prm, "skywork-prm": skywork_prm, "math-shepherd-mistral": token_prm("mistral"),
         "rlhflow-llama": token_prm("llama"), "orm-seqcls-1": seqcls_orm(1), "orm-seqcls-2": seqcls_orm(2)}


@pytest.fixture(scope="module", params=sorted(CASES))
def reward(request, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(request.param))
  ref = CASES[request.param](path)
  vm, params, tok = hf.load_reward_model(path)
  return request.param, path, ref, vm, params


def test_probabilities_equal_the_torch_reference_at_every_position(reward):
  name, _, ref, vm, params = reward
  ids = np.random.RandomState(0).randint(5, 300, size=(3, 17)).astype(np.int32)
  with torch.no_grad():
    want = ref(torch.as_tensor(ids, dtype=torch.long)).numpy()
  got = np.asarray(jax.nn.sigmoid(vm.values(params, jnp.asarray(ids))))
  np.testing.assert_allclose(got, want, atol=2e-5, err_msg=name)
  assert want.std() > 1e-3  # the heads are not trivially constant
  if hasattr(ref, "model"):  # transformers' own pooled output: the last token's score
    with torch.no_grad():
      pooled = ref.model(torch.as_tensor(ids, dtype=torch.long)).logits
    last = np.asarray(vm.values(params, jnp.asarray(ids)))[:, -1]
    want_last = pooled[:, 0].numpy() if pooled.shape[-1] == 1 else (pooled[:, 1] - pooled[:, 0]).numpy()
    np.testing.assert_allclose(last, want_last, atol=2e-5)


def test_usable_as_pool_verifier_and_engine_potential(reward):
  """Completion scores (prompt computed once, shared) equal full-sequence values; in the
  engine, the reward model scores particles incrementally with finite weights."""
  from tts_jax.models import init, qwen2_config
  from tts_jax.smc import particle_filter, run_smc
  from tts_jax.verifiers import ValuePotential, completion_values
  name, _, _, vm, params = reward
  rng = np.random.RandomState(1)
  prompts = [list(rng.randint(5, 300, size=n)) for n in (6, 9)]
  tokens, lengths = rng.randint(5, 300, size=(2, 3, 8)).astype(np.int32), np.array([[8, 5, 1], [3, 8, 8]], np.int32)
  first, values = completion_values(vm, params, prompts, tokens, lengths, width=8)
  for i, p in enumerate(prompts):
    for j in range(3):
      seq = np.asarray(p + list(tokens[i, j, :lengths[i, j]]), np.int32)[None]
      full = np.asarray(vm.values(params, jnp.asarray(seq)))[0]
      np.testing.assert_allclose(values[i, j, :lengths[i, j]], full[len(p):], atol=2e-5, err_msg=name)
      np.testing.assert_allclose(first[i], full[len(p) - 1], atol=2e-5)
  policy, pparams = init(qwen2_config(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=1,
                                      num_heads=2, num_kv_heads=1, head_dim=16), 0)
  ptoks = np.zeros((2, 9), np.int32)
  for i, p in enumerate(prompts):
    ptoks[i, :len(p)] = p
  cfg = particle_filter(4, max_new_tokens=6, delimiters=(7,), max_step_tokens=2)
  out = run_smc(policy, pparams, ptoks, np.array([6, 9], np.int32), jax.random.key(0), cfg=cfg,
                potential=ValuePotential(vm.as_lm()), potential_params=params)
  assert np.isfinite(np.asarray(out.log_weights)).all() and np.isfinite(np.asarray(out.final_log_z())).all()


def test_reward_loading_errors_name_the_problem(tmp_path):
  path = str(tmp_path / "prm")
  qwen_prm(path)
  with pytest.raises(CheckpointError, match="is a reward model .*load_reward_model"):
    hf.load(path)
  token_prm("mistral")(str(tmp_path / "shepherd"))
  with pytest.raises(CheckpointError, match="reward token 'ab cd' is"):
    hf.load_reward_model(str(tmp_path / "shepherd"), good_token="ab cd")
  cfg = json.load(open(os.path.join(path, "config.json")))
  json.dump({**cfg, "hidden_size": 64}, open(os.path.join(path, "config.json"), "w"))
  with pytest.raises(CheckpointError, match="does not match|has shape"):
    hf.load_reward_model(path)
