"""The default twist for modular arithmetic chains: twisted SMC with the default policy for
p(x) phi(x), phi the exact checker on finished generations. A supervised warm start on the
policy's own samples (outcome at every token), then contrastive twist learning."""

from tts_jax.tasks import ModChain
from tts_jax.train import OptimConfig
from tts_jax.train.twist import TwistTrainConfig

config = TwistTrainConfig(
    task=ModChain(),
    policy_dir="runs/modchain/policy/model",
    eps=0.01,
    optim=OptimConfig(learning_rate=1e-3, warmup_steps=20),
    steps=300,
    batch_size=64,
    problems_per_round=128,
    samples_per_problem=8,
    ctl_steps=50,
    ctl_prompts=8,
    ctl_particles=32,
    ctl_learning_rate=1e-4,
    max_new_tokens=96,
    eval_split="hard",
    eval_problems=32,
    eval_particles=16,
    seed=0,
    data_seed=2,
    checkpoint_every=100,
    out_dir="runs/modchain/twist",
)
