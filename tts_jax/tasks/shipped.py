"""The shipped default models of a task: policy, ORM and PRM, loaded without training.

    d = tts_jax.tasks.load_default("modchain")
    out = sample(d.policy, d.policy_params, [prompt_ids(d.task, problem)], ...)
    p_correct = outcome_probabilities(d.orm, d.orm_params, sequences)

They live in tts_jax/tasks/defaults/<task>/{policy,orm,prm}/ (config.json +
model.safetensors), with report.json holding their measured quality; an optional twist/
holds a learned twist for twisted SMC with the policy (`tts_jax.train.twist`).
"""

from __future__ import annotations

import dataclasses
import json
import os

from tts_jax.models.io import load_model
from tts_jax.tasks.registry import get_task

DEFAULTS_DIR = os.path.join(os.path.dirname(__file__), "defaults")


@dataclasses.dataclass
class DefaultModels:
  """A task with its shipped models. `report`: report.json (pass@k, AUCs, sizes, times)."""

  task: object
  policy: object
  policy_params: dict
  orm: object
  orm_params: dict
  prm: object
  prm_params: dict
  report: dict
  prm_format: object = None  # `tts_jax.tasks.math.StepTagFormat` / `ChatTurnFormat`: the PRM reads the text that way
  prm_tokenizer: object = None  # the PRM's own tokenizer (for `prm_format`)
  twist: object = None  # a `BoundedTwist` for twisted SMC with the policy, when one is shipped
  twist_params: dict | None = None

  @property
  def tokenizer(self):
    return self.task.tokenizer()


def available_defaults() -> list[str]:
  return sorted(d for d in os.listdir(DEFAULTS_DIR) if os.path.isdir(os.path.join(DEFAULTS_DIR, d))) \
      if os.path.isdir(DEFAULTS_DIR) else []


def load_default(task: str = "modchain", directory: str | None = None) -> DefaultModels:
  """Loads the shipped policy, ORM and PRM of `task` (or of a `directory` laid out the same way)."""
  root = directory or os.path.join(DEFAULTS_DIR, task)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"no default models for task {task!r} at {root}; available: "
                            f"{', '.join(available_defaults()) or 'none'}")
  models = {k: load_model(os.path.join(root, k)) for k in ("policy", "orm", "prm")}
  if os.path.isdir(os.path.join(root, "twist")):
    models["twist"] = load_model(os.path.join(root, "twist"))
  info = models["policy"][2]["info"]
  report_file = os.path.join(root, "report.json")
  report = json.load(open(report_file)) if os.path.isfile(report_file) else {}
  t = get_task(info.get("task", task), **info.get("task_knobs", {}))
  vocab = t.tokenizer().vocab_size
  for k, (m, _, meta) in models.items():
    if m.config.vocab_size != vocab:
      raise ValueError(f"default {k} of {task} has vocab_size {m.config.vocab_size}, task tokenizer {vocab}")
    if meta.get("kind", "policy") != k:
      raise ValueError(f"{os.path.join(root, k)} holds a model of kind {meta.get('kind', 'policy')!r}, not {k!r}")
  twist, twist_params = models.get("twist", (None, None, None))[:2]
  return DefaultModels(task=t, policy=models["policy"][0], policy_params=models["policy"][1],
                       orm=models["orm"][0], orm_params=models["orm"][1], prm=models["prm"][0],
                       prm_params=models["prm"][1], report=report, twist=twist, twist_params=twist_params)


@dataclasses.dataclass(frozen=True)
class HFModels:
  """Models from local Hugging Face directories (a field of an experiment config): the
  policy (`tts_jax.models.hf.load`) and, optionally, a PRM and an ORM
  (`tts_jax.models.hf.load_reward_model`, which reads the head from config.json). They must
  share the policy's tokenizer, except a PRM that reads its own format (`prm_step_tag`: the
  text is re-tokenized, e.g. Math-Shepherd's Mistral PRM beside a Qwen or Llama policy). dtype: "float32" or "bfloat16"; good_token / bad_token: the
  "+" / "-" of causal-LM PRMs (Math-Shepherd, RLHFlow)."""

  policy_path: str
  prm_path: str = ""
  orm_path: str = ""
  dtype: str = "float32"
  good_token: str = "+"
  bad_token: str = "-"
  # The PRM's own format: "qwen" (Qwen2.5-Math-PRM's <extra_0>), "shepherd" (ки; `StepTagFormat`) or
  # "rlhflow" (a conversation of steps answered "+", `ChatTurnFormat`); "": the policy's tokens as they are.
  prm_step_tag: str = ""


def load_models(spec, task) -> DefaultModels:
  """The models of an experiment: "default" (the task's shipped ones), a directory laid out
  like the shipped defaults, or `HFModels`. A verifier that is not given is None (a method
  that asks for it fails with its name)."""
  if isinstance(spec, HFModels):
    from tts_jax.models import hf  # noqa: PLC0415
    policy, policy_params, tok = hf.load(spec.policy_path, dtype=spec.dtype)
    loaded = {}
    for role in ("prm", "orm"):
      path = getattr(spec, f"{role}_path")
      if path:
        vm, params, vtok = hf.load_reward_model(path, dtype=spec.dtype, good_token=spec.good_token,
                                                bad_token=spec.bad_token)
        mine, policy_vocab = vtok.backend.get_vocab(), tok.backend.get_vocab()
        own_format = role == "prm" and spec.prm_step_tag  # it re-tokenizes the text: any vocabulary
        if not own_format and any(mine.get(t) != i for t, i in policy_vocab.items()):
          raise ValueError(f"the {role} at {path} has another tokenizer than the policy at {spec.policy_path}; "
                           f"verifiers read the policy's token ids, so its vocabulary must contain the policy's "
                           f"with the same ids")
        loaded[role] = (vm, params, vtok)
    none = (None, None, None)
    fmt = None
    if spec.prm_step_tag:
      from tts_jax.tasks.math.prm_format import ChatTurnFormat, StepTagFormat  # noqa: PLC0415
      formats = {"qwen": StepTagFormat.qwen_math_prm, "shepherd": StepTagFormat.math_shepherd,
                 "rlhflow": lambda: ChatTurnFormat(good=spec.good_token)}
      if spec.prm_step_tag not in formats:
        raise ValueError(f"prm_step_tag must be 'qwen', 'shepherd' or 'rlhflow', got {spec.prm_step_tag!r}")
      fmt = formats[spec.prm_step_tag]()
    return DefaultModels(task=task, policy=policy, policy_params=policy_params, orm=loaded.get("orm", none)[0],
                         orm_params=loaded.get("orm", none)[1], prm=loaded.get("prm", none)[0],
                         prm_params=loaded.get("prm", none)[1], report={}, prm_format=fmt,
                         prm_tokenizer=loaded.get("prm", none)[2])
  if spec == "default":
    return load_default(task.name)
  if isinstance(spec, str):
    return load_default(task.name, directory=spec)
  raise ValueError(f"models must be 'default', a directory or HFModels(...), got {spec!r}")
