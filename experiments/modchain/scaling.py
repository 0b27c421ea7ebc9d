"""The default scaling experiment: parallel sampling + selection on the shipped modchain models.

    tts-jax run experiments/modchain/scaling.py
"""

from tts_jax.eval import (RPC, AdaptiveConsistency, BestOfN, Experiment, InverseEntropyVote, MajorityVote, PassAtK,
                          ShortestMajority, WeightedMajority)
from tts_jax.sampling import SamplingParams
from tts_jax.tasks import ModChain

config = Experiment(
    name="modchain-scaling",
    task=ModChain(),
    split="hard",
    num_problems=200,
    models="default",
    methods=(
        PassAtK(),
        MajorityVote(),
        BestOfN(verifier="orm", name="best-of-N (ORM)"),
        WeightedMajority(verifier="prm", aggregate="last", name="weighted majority (PRM)"),
        WeightedMajority(verifier="orm", name="weighted majority (ORM)"),
        AdaptiveConsistency(threshold=0.95),
        InverseEntropyVote(),
        ShortestMajority(),
        RPC(),
    ),
    budgets=(1, 2, 4, 8, 16, 32, 64),
    sampling=SamplingParams(temperature=1.0),
    max_new_tokens=96,
    seed=0,
    num_subsets=64,
    batch_problems=25,
    out_dir="runs/modchain-scaling",
)
