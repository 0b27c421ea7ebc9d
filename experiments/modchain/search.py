"""Verifier-guided search vs sampling at equal budgets N (the shape of Puri et al. 2025, Table 1).

    tts-jax run experiments/modchain/search.py

Best-of-N and weighted majority select among N independent samples scored by the PRM;
beam search, DVTS and particle filtering run the particle engine with the PRM as the
potential, scoring every step incrementally. All on the shipped modchain policy and PRM;
the last three rows replace the PRM by the task's exact step checker (an upper bound).
"""

from tts_jax.eval import (DVTS, BeamSearch, BestOfN, Experiment, MajorityVote, ParticleFiltering, PassAtK,
                          WeightedMajority)
from tts_jax.sampling import SamplingParams
from tts_jax.tasks import ModChain

config = Experiment(
    name="modchain-search",
    task=ModChain(),
    split="hard",
    num_problems=200,
    models="default",
    methods=(
        PassAtK(),
        MajorityVote(),
        BestOfN(verifier="prm", aggregate="last", name="best-of-N (PRM)"),
        WeightedMajority(verifier="prm", aggregate="last", name="weighted majority (PRM)"),
        BeamSearch(expansions=4, name="beam search (PRM, M=4)"),
        DVTS(expansions=4, name="DVTS (PRM, M=4)"),
        ParticleFiltering(name="particle filtering (PRM, Puri et al.)"),
        ParticleFiltering(incremental=True, transform="log", resampler="systematic", ess_threshold=0.5,
                          final="weighted_majority", name="SMC (PRM, ESS 0.5, weighted vote)"),
        # The same searches guided by the task's exact step checker: what a perfect PRM would give.
        BeamSearch(expansions=4, verifier="oracle", name="beam search (oracle PRM, M=4)"),
        DVTS(expansions=4, verifier="oracle", name="DVTS (oracle PRM, M=4)"),
        ParticleFiltering(verifier="oracle", name="particle filtering (oracle PRM)"),
    ),
    budgets=(4, 8, 16, 32),
    sampling=SamplingParams(temperature=1.0),
    max_new_tokens=96,
    seed=0,
    num_subsets=64,
    batch_problems=25,
    out_dir="runs/modchain-search",
)
