"""The default PRM for modular arithmetic chains, trained on the default policy's samples."""

from tts_jax.tasks import ModChain
from tts_jax.train import OptimConfig
from tts_jax.train.verifier import VerifierTrainConfig

config = VerifierTrainConfig(
    kind="prm",
    task=ModChain(),
    policy_dir="runs/modchain/policy/model",
    optim=OptimConfig(learning_rate=1e-3, warmup_steps=50),
    steps=300,
    batch_size=64,
    problems_per_round=1024,
    samples_per_problem=4,
    epochs_per_round=5,
    rollouts=4,
    max_new_tokens=80,
    labels="mc-hard",
    eval_problems=200,
    eval_samples=4,
    seed=0,
    data_seed=1,
    checkpoint_every=100,
    out_dir="runs/modchain/prm",
)
