"""The other test-time-scaling families on the hard modchain split, against voting: MCMC
(QAlign), iterated SMC (particle Gibbs), tree search (MCTS), local acceptance (LATTS) and early
stopping (DeepConf).

    tts-jax run experiments/modchain/families.py     # ~12 min on 2 CPU cores

100 problems (95% CIs about +-9 points) and N up to 16: the sequential methods (MCTS's
simulations, QAlign's moves, particle Gibbs's sweeps) make this the slowest experiment here.

QAlign runs one Metropolis-Hastings chain per problem (N states: the start + N - 1 moves; the
answer is the majority vote over the states) with the shipped ORM or the task's exact checker
as reward. Particle Gibbs runs 2 sweeps of conditional SMC with N particles each (twice the
particles of one run: see the FLOPs column) with the shipped PRM or the exact step checker.
MCTS runs N simulations (PUCT, 4 steps drawn per expansion) valued by the PRM or the exact
checker; the chosen node is completed by a rollout. Local acceptance (LATTS's resample move)
grows N solutions a step at a time, redrawing a step until the verifier accepts it (with
probability its score; at most 4 draws, weighted vote). DeepConf draws N/4 warm-up samples, then stops the others whose sliding-window
confidence falls below the warm-up's 10% quantile (keep 90%) and votes over the rest. Slim-SC
stops a chain whose latest step repeats an earlier running chain's (tokens saved at the same
N). ETS is beam search whose survivors must pay 0.2 of verifier probability per new 16-token KV
page (`kv_pages`: the pages the final particles hold, prefix-shared), against plain beam search.
"""

from tts_jax.eval import (ETS, MCTS, BeamSearch, DeepConf, Experiment, LocalAcceptanceSearch, MajorityVote,
                          ParticleGibbs, PassAtK, QAlign, SlimSC)
from tts_jax.sampling import SamplingParams
from tts_jax.tasks import ModChain

config = Experiment(
    name="modchain-families",
    task=ModChain(),
    split="hard",
    num_problems=100,
    models="default",
    methods=(
        PassAtK(),
        MajorityVote(),
        QAlign(reward="orm", name="QAlign (ORM, beta 1)"),
        QAlign(reward="oracle", name="QAlign (exact checker, beta 1)"),
        ParticleGibbs(sweeps=2, name="particle Gibbs (PRM, 2 sweeps)"),
        ParticleGibbs(sweeps=2, verifier="oracle", name="particle Gibbs (exact checker, 2 sweeps)"),
        MCTS(verifier="prm", expansions=4, name="MCTS (PRM, K=4)"),
        MCTS(verifier="oracle", expansions=4, name="MCTS (exact checker, K=4)"),
        LocalAcceptanceSearch(verifier="prm", max_tries=4, name="local acceptance (PRM, 4 tries)"),
        LocalAcceptanceSearch(verifier="oracle", max_tries=4, name="local acceptance (exact checker, 4 tries)"),
        DeepConf(window=8, top_k=10, keep=0.9, name="DeepConf (keep 90%)"),
        DeepConf(window=8, top_k=10, keep=0.1, name="DeepConf (keep 10%)"),
        SlimSC(threshold=1.0, name="Slim-SC (identical steps)"),
        BeamSearch(verifier="prm", expansions=4, name="beam search (PRM, M=4)"),
        ETS(verifier="prm", expansions=4, lambda_kv=0.2, name="ETS (PRM, M=4, lambda 0.2)"),
        BeamSearch(verifier="oracle", expansions=4, name="beam search (exact checker, M=4)"),
        ETS(verifier="oracle", expansions=4, lambda_kv=0.2, name="ETS (exact checker, M=4, lambda 0.2)"),
    ),
    budgets=(4, 8, 16),
    sampling=SamplingParams(temperature=1.0),
    max_new_tokens=96,
    seed=0,
    num_subsets=64,
    batch_problems=25,
    out_dir="runs/modchain-families",
)
