"""Verifiers: the potential contract, value models as incremental potentials, exact host
checkers, scoring of finished sequences, step positions and aggregation, ranking metrics."""

from tts_jax.verifiers.base import Potential, PotentialFn, gather_state
from tts_jax.verifiers.metrics import roc_auc, within_group_auc
from tts_jax.verifiers.oracle import OraclePotential, PromptState, StepChecker
from tts_jax.verifiers.potentials import (OutcomePotential, OutcomeState, SequencePotential, ValuePotential, ValueState,
                                         as_potential)
from tts_jax.verifiers.scoring import (completion_outcome_probabilities, completion_step_probabilities,
                                      completion_values, completion_width, outcome_probabilities, score_sequences,
                                      sigmoid, step_end_mask, step_probabilities, step_query_count,
                                      value_logits_chunked)
from tts_jax.verifiers.step_tag import StepTagPotential, StepTagState
from tts_jax.verifiers.steps import (AGGREGATES, Aggregate, accumulate_step, aggregate_steps, delimiter_positions,
                                     step_ends)

__all__ = ["Potential", "PotentialFn", "gather_state", "roc_auc", "within_group_auc", "OraclePotential",
           "PromptState", "StepChecker", "OutcomePotential", "OutcomeState", "SequencePotential", "ValuePotential",
           "ValueState", "as_potential", "StepTagPotential", "StepTagState",
           "completion_outcome_probabilities", "completion_step_probabilities", "completion_values", "completion_width", "step_end_mask", "step_query_count",
           "outcome_probabilities", "score_sequences", "sigmoid", "step_probabilities", "value_logits_chunked",
           "AGGREGATES", "Aggregate", "accumulate_step", "aggregate_steps", "delimiter_positions", "step_ends"]
