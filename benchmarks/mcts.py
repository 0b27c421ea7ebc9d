"""MCTS with the nodes' KV shared through the paged cache vs re-prefilling every expanded node.

    python benchmarks/mcts.py [--simulations 16] [--expansions 4] [--prompt 256] [--new-tokens 128]

Side by side in this process, on one random Qwen2-architecture policy (float32), the same
search (`tts_jax.search.mcts`, same keys, so the same trees):
  re-prefill   share_kv=False: each expansion prefills prompt + node again and samples its K
               children with the sampler (the baseline);
  shared KV    share_kv=True: the prompt is prefilled once; every node keeps its KV in a paged
               cache whose full pages its children reference, so an expansion decodes only
               the new step.
Steps end at a delimiter drawn with probability about 1/--step-tokens per token (the
delimiter ids are the first vocab/--step-tokens ids of a random model); there is no stop
token, so the tree deepens until T. The value is a cheap hash of the tokens. Compile time is
reported apart; timed runs are medians over --repeats. The script also checks that the two
trees are identical and prints the KV pages the shared tree held.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.search.mcts import mcts
from timing import add_policy_args, random_policy, timed


def hashed(tokens, lengths, done):
  """A cheap value that differs between nodes: log((sum of tokens mod 13 + 1) / 14)."""
  mask = jnp.arange(tokens.shape[-1]) < lengths[..., None]
  return jnp.log((jnp.sum(jnp.where(mask, tokens, 0), axis=-1) % 13 + 1) / 14.0)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--simulations", type=int, default=16)
  ap.add_argument("--expansions", type=int, default=4)
  ap.add_argument("--step-tokens", type=int, default=16)
  ap.add_argument("--page-size", type=int, default=16)
  add_policy_args(ap)
  a = ap.parse_args()
  cfg, lm, params, prompts, plens = random_policy(a)
  delimiters = tuple(range(a.vocab // a.step_tokens))

  def search(share_kv):
    return lambda key: mcts(lm, params, prompts, plens, key, potential=hashed, simulations=a.simulations,
                            expansions=a.expansions, max_new_tokens=a.new_tokens, delimiters=delimiters,
                            page_size=a.page_size, share_kv=share_kv)

  print(f"policy: {cfg.num_params() / 1e6:.1f}M params (hidden {a.hidden}, {a.layers} layers, vocab {a.vocab}); "
        f"{a.prompts} prompts x {a.prompt} tokens; {a.simulations} simulations x {a.expansions} expansions, "
        f"T={a.new_tokens}, steps of ~{a.step_tokens} tokens; page size {a.page_size}; "
        f"backend {jax.default_backend()}")
  trees, base = {}, None
  print(f"{'run':12s} {'compile+1st s':>13s} {'median s':>9s} {'vs re-prefill':>13s}")
  for name, share in (("re-prefill", False), ("shared KV", True)):
    first, med = timed(search(share), jax.random.key(0), repeats=a.repeats)
    base = med if base is None else base
    trees[name] = search(share)(jax.random.key(0))
    print(f"{name:12s} {first:13.2f} {med:9.3f} {base / med:12.2f}x")
  old, new = trees["re-prefill"], trees["shared KV"]
  same = all(np.array_equal(np.asarray(getattr(old, f)), np.asarray(getattr(new, f)))
             for f in ("tokens", "length", "parent", "answer_tokens"))
  nodes = np.asarray(new.used)
  lens = np.asarray(new.length)
  copying = [sum(-(-int(x) // a.page_size) for x in lens[b, 1:nodes[b]]) for b in range(a.prompts)]
  print(f"trees identical: {same}; nodes per problem {nodes.tolist()}, mean node depth "
        f"{lens[lens > 0].mean():.1f} tokens; KV pages held (shared) {np.asarray(new.pages).tolist()} vs "
        f"{copying} if every node held its own copy")


if __name__ == "__main__":
  main()
