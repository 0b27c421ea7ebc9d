"""Training loops (policy LM, ORM/PRM value heads) with orbax checkpoints that resume, and the
retraining of a task's shipped models."""

from tts_jax.train.optim import OptimConfig, make_optimizer
from tts_jax.train.policy import PolicyTrainConfig, make_batch, train_policy
from tts_jax.train.verifier import VerifierTrainConfig, train_verifier

__all__ = ["OptimConfig", "make_optimizer", "PolicyTrainConfig", "make_batch", "train_policy", "VerifierTrainConfig",
           "train_verifier"]
