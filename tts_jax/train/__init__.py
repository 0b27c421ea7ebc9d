"""Training loops (policy LM, ORM/PRM value heads) with orbax checkpoints that resume."""

from tts_jax.train.optim import OptimConfig, make_optimizer
from tts_jax.train.policy import PolicyTrainConfig, make_batch, train_policy

__all__ = ["OptimConfig", "make_optimizer", "PolicyTrainConfig", "make_batch", "train_policy"]
