"""How good must a verifier be? Accuracy at N = 32 against the verifier's ROC AUC, on the hard
modchain split: the task's exact checker corrupted to AUC 0.6 .. 1.0 (its logit is
mu (right - 1/2) + a standard normal that is a fixed function of the text, mu = sqrt 2
Phi^-1(AUC); `tts_jax.verifiers.corruption`), used by particle filtering, beam search and DVTS as
their potential and by best-of-N and weighted majority as their verifier.

    tts-jax run experiments/modchain/verifier_quality.py     # ~1.5 min on 2 CPU cores (100 problems)

Besides the usual plot it draws runs/modchain-verifier-quality/against_verifier_auc.png:
accuracy against AUC per method, majority vote and pass@32 as references.
"""

from tts_jax.eval import DVTS, BeamSearch, BestOfN, Experiment, MajorityVote, ParticleFiltering, PassAtK, \
    WeightedMajority
from tts_jax.sampling import SamplingParams
from tts_jax.tasks import ModChain

AUCS = (0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
N = 32

config = Experiment(
    name="modchain-verifier-quality",
    task=ModChain(),
    split="hard",
    num_problems=100,
    models="default",
    methods=(
        PassAtK(name=f"pass@{N} (oracle)"),
        MajorityVote(),
        *(m for auc in AUCS for m in (
            ParticleFiltering(verifier="oracle", verifier_auc=auc, name=f"particle filtering (AUC {auc})"),
            BeamSearch(verifier="oracle", verifier_auc=auc, expansions=4, name=f"beam search, M=4 (AUC {auc})"),
            DVTS(verifier="oracle", verifier_auc=auc, expansions=4, name=f"DVTS, M=4 (AUC {auc})"),
            BestOfN(verifier="oracle", verifier_auc=auc, name=f"best-of-N (AUC {auc})"),
            WeightedMajority(verifier="oracle", verifier_auc=auc, name=f"weighted majority (AUC {auc})"),
        )),
    ),
    budgets=(N,),
    sampling=SamplingParams(temperature=1.0),
    max_new_tokens=96,
    seed=0,
    num_subsets=64,
    batch_problems=25,
    out_dir="runs/modchain-verifier-quality",
    plot_against="verifier_auc",
)
