"""MCMC and iterated SMC on the hard modchain split: QAlign and particle Gibbs against voting.

    tts-jax run experiments/modchain/mcmc.py

QAlign runs one Metropolis-Hastings chain per problem (N states: the start + N - 1 moves; the
answer is the majority vote over the states) with the shipped ORM or the task's exact checker
as reward. Particle Gibbs runs 2 sweeps of conditional SMC with N particles each (twice the
particles of one run: see the FLOPs column) with the shipped PRM or the exact step checker.
"""

from tts_jax.eval import Experiment, MajorityVote, ParticleGibbs, PassAtK, QAlign
from tts_jax.sampling import SamplingParams
from tts_jax.tasks import ModChain

config = Experiment(
    name="modchain-mcmc",
    task=ModChain(),
    split="hard",
    num_problems=200,
    models="default",
    methods=(
        PassAtK(),
        MajorityVote(),
        QAlign(reward="orm", name="QAlign (ORM, beta 1)"),
        QAlign(reward="oracle", name="QAlign (exact checker, beta 1)"),
        ParticleGibbs(sweeps=2, name="particle Gibbs (PRM, 2 sweeps)"),
        ParticleGibbs(sweeps=2, verifier="oracle", name="particle Gibbs (exact checker, 2 sweeps)"),
    ),
    budgets=(4, 8, 16, 32),
    sampling=SamplingParams(temperature=1.0),
    max_new_tokens=96,
    seed=0,
    num_subsets=64,
    batch_problems=25,
    out_dir="runs/modchain-mcmc",
)
