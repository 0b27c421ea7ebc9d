"""Hugging Face search-and-learn: Llama-3.2-1B-Instruct with RLHFlow's Llama3.1-8B PRM on MATH-500.

    tts-jax run experiments/math500/search_and_learn.py --set \\
        models.policy_path=/weights/Llama-3.2-1B-Instruct models.prm_path=/weights/Llama3.1-8B-PRM-Deepseek-Data \\
        task.tokenizer_path=/weights/Llama-3.2-1B-Instruct task.data_path=/data/MATH-500/test.jsonl

Best-of-N (PRM, last step) and weighted best-of-N, beam search (M=4) and DVTS (M=4) up to
N = 256. The PRM is a causal LM read as p("+") vs p("-") (models.good_token / bad_token) in
RLHFlow's conversation format (models.prm_step_tag="rlhflow": the steps as user turns, each
answered "+"), in pool scoring and inside beam search / DVTS.
"""

from tts_jax.eval import DVTS, BeamSearch, BestOfN, Experiment, MajorityVote, WeightedMajority
from tts_jax.sampling import SamplingParams
from tts_jax.tasks import HFModels
from tts_jax.tasks.math import MathTask

config = Experiment(
    name="math500-search-and-learn",
    task=MathTask(data_path="MATH-500/test.jsonl", tokenizer_path="Llama-3.2-1B-Instruct", prompt_style="llama"),
    split="test",
    num_problems=500,
    models=HFModels(policy_path="Llama-3.2-1B-Instruct", prm_path="Llama3.1-8B-PRM-Deepseek-Data", dtype="bfloat16",
                    prm_step_tag="rlhflow"),
    methods=(
        MajorityVote(),
        BestOfN(verifier="prm", aggregate="last", name="best-of-N (PRM)"),
        WeightedMajority(verifier="prm", aggregate="last", name="weighted best-of-N (PRM)"),
        BeamSearch(expansions=4, name="beam search (PRM, M=4)"),
        DVTS(expansions=4, name="DVTS (PRM, M=4)"),
    ),
    budgets=(4, 16, 64, 256),
    sampling=SamplingParams(temperature=0.8, top_p=1.0),
    max_new_tokens=2048,
    seed=0,
    num_subsets=64,
    batch_problems=4,
    out_dir="runs/math500-search-and-learn",
)
