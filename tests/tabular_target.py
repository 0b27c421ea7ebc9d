"""A tabular SMC target shared by the exact tests: sigma(x) proportional to p(x) phi(x).

Everything about it is enumerable: the complete generations (EOS-terminated or of
length T), their log-probs under the model and under a tempered proposal, Z, and
exact samples of sigma.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tts_jax.models.tabular import TabularLM, enumerate_generations, random_tabular


@dataclasses.dataclass
class TabularTarget:
  lm: TabularLM
  params: dict
  phi_table: np.ndarray  # log phi per prefix id
  prompt: list
  max_new: int
  stops: tuple
  final_only: bool  # phi only at completion (intermediate potentials 1)

  @property
  def generations(self):
    return enumerate_generations(self.lm, self.params, self.prompt, self.max_new, self.stops)

  def log_phi(self, seq) -> float:
    return float(self.phi_table[self.lm.prefix_id(list(self.prompt) + list(seq))])

  def log_sigma(self):
    """(generations, float64 unnormalised log sigma, log Z)."""
    seqs, logp = self.generations
    lu = logp + np.array([self.log_phi(s) for s in seqs])
    return seqs, lu, float(np.logaddexp.reduce(lu))

  def potential(self, tokens, lengths, done):
    v = self.lm.vocab_size
    ids = jnp.full(lengths.shape, self.lm.prefix_id(self.prompt), jnp.int32)
    for j in range(tokens.shape[-1]):
      ids = jnp.where(j < lengths, ids * v + tokens[..., j] + 1, ids)
    phi = jnp.asarray(self.phi_table)[ids]
    return jnp.where(done, phi, 0.0) if self.final_only else phi

  def prompts(self, reps: int):
    return jnp.tile(jnp.asarray([self.prompt], jnp.int32), (reps, 1)), jnp.full((reps,), len(self.prompt), jnp.int32)

  def exact_samples(self, reps: int, seed: int):
    """int32[reps, T] exact samples of sigma (padded with 0) and int32[reps] lengths."""
    seqs, lu, log_z = self.log_sigma()
    pick = np.random.default_rng(seed).choice(len(seqs), size=reps, p=np.exp(lu - log_z))
    toks = np.zeros((reps, self.max_new), np.int32)
    lens = np.zeros(reps, np.int32)
    for r, i in enumerate(pick):
      toks[r, :len(seqs[i])] = seqs[i]
      lens[r] = len(seqs[i])
    return jnp.asarray(toks), jnp.asarray(lens)

  def seq_index(self, tokens, lengths) -> np.ndarray:
    """Index into `generations` of each row (tokens int[..., T], lengths int[...])."""
    seqs, _ = self.generations
    where = {s: i for i, s in enumerate(seqs)}
    t, l = np.asarray(tokens), np.asarray(lengths)
    flat_t, flat_l = t.reshape(-1, t.shape[-1]), l.reshape(-1)
    return np.array([where[tuple(int(x) for x in flat_t[i, :flat_l[i]])] for i in range(len(flat_l))]).reshape(l.shape)


def make_target(vocab=4, max_new=5, prompt=(1, 2), stops=(3,), seed=4, scale=1.0, phi_scale=0.7,
                final_only=False) -> TabularTarget:
  lm, params = random_tabular(vocab, len(prompt) + max_new, seed=seed, scale=scale)
  phi = np.asarray(jax.random.normal(jax.random.key(seed + 1), (lm.num_prefixes,)) * phi_scale)
  return TabularTarget(lm, params, phi, list(prompt), max_new, tuple(stops), final_only)
