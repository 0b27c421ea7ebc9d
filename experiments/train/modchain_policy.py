"""The default policy for modular arithmetic chains (shipped in tts_jax/tasks/defaults/modchain)."""

from tts_jax.models import ModelConfig
from tts_jax.tasks import ModChain
from tts_jax.train import OptimConfig, PolicyTrainConfig

config = PolicyTrainConfig(
    task=ModChain(),
    model=ModelConfig(vocab_size=62, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                      num_kv_heads=2, head_dim=32, attention_bias=True, max_position_embeddings=256,
                      family="qwen2"),
    optim=OptimConfig(learning_rate=1e-3, warmup_steps=100),
    steps=3000,
    batch_size=64,
    max_len=128,
    seed=0,
    eval_every=500,
    checkpoint_every=250,
    out_dir="runs/modchain/policy",
)
