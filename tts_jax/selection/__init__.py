"""Selection: turning N finished samples into one answer (best-of-N, votes, RPC, adaptive,
Slim-SC's thought-level pruning)."""

from tts_jax.selection.adaptive import adaptive_consistency
from tts_jax.selection.rpc import compiler_options as rpc_compiler_options
from tts_jax.selection.rpc import fit_weibull_mixture, mixture_nll, prune_mask, rpc_vote
from tts_jax.selection.thoughts import prune_redundant, pruned_lengths, thought_similarity
from tts_jax.selection.voting import (best_index, encode_answers, inverse_entropy_vote,
                                      inverse_entropy_weights, majority_vote,
                                      shortest_majority_scores, shortest_majority_vote, subset_vote_totals,
                                      vote_totals, weighted_majority_vote, winner)

__all__ = ["adaptive_consistency", "fit_weibull_mixture", "mixture_nll", "prune_mask", "rpc_vote", "rpc_compiler_options",
           "best_index", "encode_answers",
           "inverse_entropy_vote", "inverse_entropy_weights", "majority_vote", "shortest_majority_scores", "shortest_majority_vote",
           "subset_vote_totals", "vote_totals", "weighted_majority_vote", "winner",
           "prune_redundant", "pruned_lengths", "thought_similarity"]
