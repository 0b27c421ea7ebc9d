"""Twisted SMC with the shipped learned twist against untwisted SMC (Zhao et al. 2024).

    tts-jax run experiments/modchain/twisted_smc.py

The target is p(x) phi(x) with phi the task's exact checker on finished generations
(`step_potentials=False`: nothing scores a particle between steps). Untwisted SMC then has
no guidance until particles finish; twisted SMC tilts every token by the shipped twist
(tts_jax/tasks/defaults/modchain/twist, trained by experiments/train/modchain_twist.py);
SMC with the exact step checker as step potentials is the hand-made twist both are measured
against. Each row also holds "log_z" (mean log Z_hat: higher is a tighter stochastic lower
bound on the same log Z) and "ess" (normalized ESS of the final weights). With phi an exact
checker, the weighted vote finds a right answer whenever a particle holds one, so accuracy
here is the particles' coverage, bounded by pass@N.
"""

from tts_jax.eval import Experiment, MajorityVote, ParticleFiltering, PassAtK
from tts_jax.sampling import SamplingParams
from tts_jax.tasks import ModChain

SMC = dict(verifier="oracle", incremental=True, transform="log", resampler="systematic", ess_threshold=0.5,
           final="weighted_majority")

config = Experiment(
    name="modchain-twisted-smc",
    task=ModChain(),
    split="hard",
    num_problems=100,
    models="default",
    methods=(
        PassAtK(),
        MajorityVote(),
        ParticleFiltering(step_potentials=False, name="SMC (outcome checker, untwisted)", **SMC),
        ParticleFiltering(step_potentials=False, twist=True, name="twisted SMC (outcome checker, learned twist)",
                          **SMC),
        ParticleFiltering(name="SMC (step checker)", **SMC),
    ),
    budgets=(4, 8, 16, 32),
    sampling=SamplingParams(temperature=1.0),
    max_new_tokens=96,
    seed=0,
    num_subsets=64,
    batch_problems=25,
    out_dir="runs/modchain-twisted-smc",
)
