"""Measures a task's default models: pass@k of the policy, ROC AUC of the ORM and PRM.

    python -m tts_jax.eval.model_report modchain [--dir DIR] [--samples 16] [--write]

Samples `--samples` completions per problem of the "test" and "hard" splits at
temperature 1 and reports unbiased pass@1/4/16, then scores the test completions
with the ORM (AUC against the exact outcome) and the PRM (AUC of the score at each
step against the exact oracle step label). `--write` stores report.json beside the models.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from tts_jax.eval.metrics import mean_pass_at_k
from tts_jax.tasks import STEP, complete, grade, load_default, task_prompts
from tts_jax.tasks.shipped import DEFAULTS_DIR
from tts_jax.verifiers import delimiter_positions, roc_auc, score_sequences

REPORT_SEED = 1234


def policy_pass_at_k(d, split: str, samples: int, max_new_tokens: int, seed: int = REPORT_SEED,
                     num_problems: int | None = None):
  """(correct bool[P, samples], completions) on `split` at temperature 1."""
  problems = list(d.task.split(split))[:num_problems]
  comps = complete(d.task, d.policy, d.policy_params, task_prompts(d.task, problems), num_samples=samples,
                   key=jax.random.key(seed), max_new_tokens=max_new_tokens)
  return grade(d.task, problems, comps), comps, problems


def verifier_auc(d, problems, comps, correct):
  """ROC AUCs: ORM at the last token vs outcome; PRM at each step vs the oracle step label."""
  prompts = task_prompts(d.task, problems)
  step_id = d.tokenizer.token_to_id(STEP)
  seqs, owners = [], []
  for p in range(len(problems)):
    for n in range(comps.tokens.shape[1]):
      seqs.append(prompts[p] + comps.tokens[p, n, :comps.lengths[p, n]].tolist())
      owners.append((p, n))
  orm = score_sequences(d.orm, d.orm_params, seqs)
  orm_auc = roc_auc([s[-1] for s in orm], correct.reshape(-1))
  prm = score_sequences(d.prm, d.prm_params, seqs)
  s_all, y_all = [], []
  for i, (p, n) in enumerate(owners):
    at = delimiter_positions(seqs[i], len(prompts[p]), (step_id,))
    labels = d.task.step_labels(problems[p], comps.texts[p][n])
    s_all += [prm[i][j] for j in at]
    y_all += labels[:len(at)]
  return {"orm_auc": orm_auc, "prm_step_auc": roc_auc(s_all, y_all), "prm_steps": len(y_all),
          "prm_step_positive_rate": float(np.mean(y_all))}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("task", nargs="?", default="modchain")
  ap.add_argument("--dir", default=None)
  ap.add_argument("--samples", type=int, default=16)
  ap.add_argument("--max-new-tokens", type=int, default=96)
  ap.add_argument("--write", action="store_true")
  args = ap.parse_args(argv)
  d = load_default(args.task, args.dir)
  report = {"task": args.task, "seed": REPORT_SEED, "samples_per_problem": args.samples,
            "command": f"python -m tts_jax.eval.model_report {args.task} --samples {args.samples}"}
  t0 = time.perf_counter()
  for split in ("test", "hard"):
    correct, comps, problems = policy_pass_at_k(d, split, args.samples, args.max_new_tokens)
    report[split] = {f"pass@{k}": mean_pass_at_k(correct, k) for k in (1, 4, 16) if k <= args.samples}
    report[split]["problems"] = len(problems)
    if split == "test":
      report.update(verifier_auc(d, problems, comps, correct))
  report["params"] = {k: getattr(d, k).config.num_params() for k in ("policy", "orm", "prm")}
  report["eval_seconds"] = round(time.perf_counter() - t0, 1)
  old = d.report
  for k in ("training_seconds",):
    if k in old:
      report[k] = old[k]
  print(json.dumps(report, indent=1))
  if args.write:
    root = args.dir or os.path.join(DEFAULTS_DIR, args.task)
    with open(os.path.join(root, "report.json"), "w") as fh:
      json.dump(report, fh, indent=1)


if __name__ == "__main__":
  main()
