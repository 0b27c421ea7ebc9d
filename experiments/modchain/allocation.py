"""Compute-optimal allocation (Snell et al. 2024) against uniform allocation, and Slim-SC's
thought pruning against self-consistency, on the mixed-difficulty test split.

    tts-jax run experiments/modchain/allocation.py

Compute-optimal: the first 4 samples of a problem predict its difficulty (their mean ORM
probability, or how many of them agree); each of 4 difficulty bins gets its own per-problem
budget (4 to 64 samples) and rule (majority vote, ORM-weighted majority, best-of-N), fitted to
keep the average budget at N. Plans are cross-fitted: a problem's plan comes from the other
half of the problems (by index parity). "uniform (calibrated)" is the same fit with one bin:
N samples for every problem and the single best rule. The "+ beam search" variants may also
give a bin beam search (M = 4) with the bin's budget less the probe as N, as Snell et al. choose
between best-of-N and beam search per difficulty: with the shipped PRM, and with the exact step
checker (what a better verifier would buy). Slim-SC stops a chain whose latest step
repeats (token-bigram Jaccard >= threshold) that of an earlier running chain; it saves tokens
at the same N.
"""

from tts_jax.eval import (BeamSearch, BestOfN, ComputeOptimal, Experiment, MajorityVote, PassAtK, SlimSC,
                          WeightedMajority)
from tts_jax.sampling import SamplingParams
from tts_jax.tasks import ModChain

config = Experiment(
    name="modchain-allocation",
    task=ModChain(),
    split="test",
    num_problems=200,
    models="default",
    methods=(
        PassAtK(),
        MajorityVote(),
        WeightedMajority(verifier="orm", name="weighted majority (ORM)"),
        BestOfN(verifier="orm", name="best-of-N (ORM)"),
        ComputeOptimal(bins=1, name="uniform (calibrated)"),
        ComputeOptimal(difficulty="orm", bins=4, name="compute-optimal (ORM difficulty)"),
        ComputeOptimal(difficulty="agreement", bins=4, name="compute-optimal (agreement)"),
        ComputeOptimal(difficulty="orm", bins=4, name="compute-optimal (ORM difficulty, + beam search PRM)",
                       searches=(BeamSearch(verifier="prm", expansions=4, name="beam search (PRM)"),)),
        ComputeOptimal(difficulty="orm", bins=4, name="compute-optimal (ORM difficulty, + beam search exact)",
                       searches=(BeamSearch(verifier="oracle", expansions=4, name="beam search (exact checker)"),)),
        SlimSC(threshold=1.0, name="Slim-SC (identical steps)"),
        SlimSC(threshold=0.6, name="Slim-SC (Jaccard 0.6)"),
    ),
    budgets=(4, 8, 16, 32, 64),
    sampling=SamplingParams(temperature=1.0),
    max_new_tokens=96,
    seed=0,
    num_subsets=64,
    batch_problems=25,
    out_dir="runs/modchain-allocation",
)
