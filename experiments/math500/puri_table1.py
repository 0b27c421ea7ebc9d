"""Puri et al. (2025), Table 1: Qwen2.5-Math-1.5B-Instruct with Qwen2.5-Math-PRM-7B on MATH-500.

    tts-jax run experiments/math500/puri_table1.py --set \\
        models.policy_path=/weights/Qwen2.5-Math-1.5B-Instruct models.prm_path=/weights/Qwen2.5-Math-PRM-7B \\
        task.tokenizer_path=/weights/Qwen2.5-Math-1.5B-Instruct task.data_path=/data/MATH-500/test.jsonl

Greedy decoding, self-consistency, best-of-N and weighted best-of-N (PRM, last step), beam search, DVTS and
particle filtering (the paper's: resampling at every step, weights = the PRM's last step
score as a logit, answer = the heaviest particle) at N = 4..32. The PRM reads its own format
(models.prm_step_tag="qwen": its chat prompt, "<extra_0>" after each step), in pool scoring
and inside the engines. Smoke run on tiny random
checkpoints (the same code path): `tts-jax smoke-models runs/smoke-models`, then the
command above with those paths and `num_problems=4 budgets="(2, 4)" max_new_tokens=48`.
"""

from tts_jax.eval import (DVTS, BeamSearch, BestOfN, Experiment, Greedy, MajorityVote, ParticleFiltering,
                          WeightedMajority)
from tts_jax.sampling import SamplingParams
from tts_jax.tasks import HFModels
from tts_jax.tasks.math import MathTask

config = Experiment(
    name="math500-puri-table1",
    task=MathTask(data_path="MATH-500/test.jsonl", tokenizer_path="Qwen2.5-Math-1.5B-Instruct", prompt_style="qwen"),
    split="test",
    num_problems=500,
    models=HFModels(policy_path="Qwen2.5-Math-1.5B-Instruct", prm_path="Qwen2.5-Math-PRM-7B", dtype="bfloat16",
                    prm_step_tag="qwen"),
    methods=(
        Greedy(),
        MajorityVote(name="self-consistency"),
        BestOfN(verifier="prm", aggregate="last", name="best-of-N (PRM)"),
        WeightedMajority(verifier="prm", aggregate="last", name="weighted best-of-N (PRM)"),
        BeamSearch(expansions=4, name="beam search (PRM, M=4)"),
        DVTS(expansions=4, name="DVTS (PRM, M=4)"),
        ParticleFiltering(name="particle filtering (PRM)"),
    ),
    budgets=(4, 8, 16, 32),
    sampling=SamplingParams(temperature=0.8, top_p=0.95),
    max_new_tokens=2048,
    seed=0,
    num_subsets=64,
    batch_problems=8,
    out_dir="runs/math500-puri-table1",
)
