"""The verifiers layer: one step aggregation (offline = incremental), the step finder, the
pure oracle (the problem read off the prompt), chunked scoring = one forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tts_jax.models import qwen2_config
from tts_jax.models.value import init_value, value_logits
from tts_jax.tasks import Countdown, ModChain, prompt_ids, step_oracle
from tts_jax.verifiers import (accumulate_step, aggregate_steps, delimiter_positions, score_sequences, step_ends,
                               within_group_auc)


@pytest.mark.parametrize("how", ["last", "min", "prod"])
def test_incremental_aggregation_equals_offline(how):
  rng = np.random.default_rng(0)
  probs = rng.uniform(0.01, 1.0, size=(50, 7)).astype(np.float32)
  counts = rng.integers(1, 8, size=50)
  mask = np.arange(7)[None, :] < counts[:, None]
  total = jnp.zeros(50)
  for s in range(7):
    step = accumulate_step(how, total, jnp.log(probs[:, s]), jnp.full(50, s))
    total = jnp.where(s < counts, step, total)
  np.testing.assert_allclose(np.exp(np.asarray(total)), np.asarray(aggregate_steps(probs, mask, how)), rtol=1e-5)


def test_step_ends_count_a_final_delimiter_once():
  assert delimiter_positions([9, 5, 1, 5, 2], 1, (5,)) == [1, 3]
  assert step_ends([9, 5, 1, 5, 2], 1, (5,)) == [1, 3, 4]
  assert step_ends([9, 5, 1, 5], 1, (5,)) == [1, 3]  # ends with a delimiter: counted once
  assert step_ends([9, 5, 1, 5], 2, (5,)) == [3]  # delimiters in the prompt are not steps
  assert step_ends([9], 1, (5,)) == []  # nothing generated


def test_within_group_auc_ignores_between_group_differences():
  # Group 0 is easy (high scores), group 1 hard; within each, right > wrong: perfect ranking.
  scores = [0.9, 0.8, 0.2, 0.1]
  labels = [True, False, True, False]
  assert within_group_auc(scores, labels, [0, 0, 1, 1]) == 1.0
  assert within_group_auc([0.1, 0.9, 0.5, 0.6], labels, [0, 0, 1, 1]) == 0.0
  assert np.isnan(within_group_auc([1, 2], [True, True], [0, 0]))


@pytest.mark.parametrize("task", [ModChain(), Countdown()])
def test_prompts_parse_back_to_their_problems(task):
  for p in task.split("test")[:100]:
    q = task.parse_prompt(task.prompt(p))
    sol = task.solution(p)
    assert task.verify(q, sol) and all(task.step_labels(q, sol))
  with pytest.raises(ValueError, match="not a"):
    task.parse_prompt("hello world")


def test_oracle_is_pure_in_its_arguments():
  """One compiled score serves any problem: the problem comes in through the prompt tokens."""
  task = ModChain()
  tok = task.tokenizer()
  pot = step_oracle(task)
  probs = task.split("test")[:2]
  assert step_oracle(task) == pot and hash(step_oracle(task)) == hash(pot)  # a static jit argument
  score = jax.jit(lambda s, x, l, d: pot.score(None, s, x, l, d, None)[0])
  for prob, other in (probs, probs[::-1]):
    ids = tok.encode(task.solution(prob), add_special_tokens=False) + [tok.token_to_id("<eos>")]
    prompts = [prompt_ids(task, prob), prompt_ids(task, other)]
    width = max(map(len, prompts))
    pt = np.zeros((2, width), np.int32)
    for i, p in enumerate(prompts):
      pt[i, :len(p)] = p
    state = pot.init(None, jnp.asarray(pt), jnp.asarray([len(p) for p in prompts]), 1, len(ids))
    tokens = jnp.asarray(np.tile(np.asarray(ids, np.int32), (2, 1, 1)))
    out = np.asarray(score(state, tokens, jnp.full((2, 1), len(ids)), jnp.ones((2, 1), bool)))
    # Row 0 is prob's own solution (right); row 1 pairs it with the other problem (wrong).
    np.testing.assert_allclose(out[:, 0], np.log([0.99, 0.01]), rtol=1e-6)
  assert score._cache_size() == 1


def test_chunked_scoring_equals_one_forward_pass():
  cfg = qwen2_config(vocab_size=13, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_position_embeddings=64)
  vm, params = init_value(cfg, seed=1)
  rng = np.random.default_rng(2)
  seqs = [rng.integers(0, 13, size=n).tolist() for n in rng.integers(1, 40, size=7)]
  out = score_sequences(vm, params, seqs, chunk=3)
  for s, o in zip(seqs, out):
    want = np.asarray(value_logits(vm, params, jnp.asarray([s]), jnp.asarray([len(s)])))[0]
    np.testing.assert_allclose(o, want, atol=1e-5)


def test_extra_value_layers_start_as_the_policy_trunk():
  """init_value(extra_layers=k): k more blocks whose output projections are zero, so the
  values equal those of the plain trunk under the same head; the new blocks are trainable
  (not all zero) and bad arguments are named."""
  cfg = qwen2_config(vocab_size=13, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_position_embeddings=64)
  _, policy = init_value(cfg, seed=5)
  trunk = {k: v for k, v in policy.items() if k != "value_head"}
  vm0, p0 = init_value(cfg, seed=1, trunk_params=trunk)
  vm2, p2 = init_value(cfg, seed=1, trunk_params=trunk, extra_layers=2)
  assert vm2.config.num_layers == 4 and sorted(p2["layers"]) == [0, 1, 2, 3]
  p2 = {**p2, "value_head": p0["value_head"]}  # the fresh head's draw depends on the layer count
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 13, size=(3, 17)), jnp.int32)
  np.testing.assert_array_equal(np.asarray(vm2.values(p2, tokens)), np.asarray(vm0.values(p0, tokens)))
  assert float(jnp.abs(p2["layers"][3]["self_attn"]["q_proj"]["kernel"]).sum()) > 0
  assert float(jnp.abs(p2["layers"][3]["mlp"]["down_proj"]["kernel"]).sum()) == 0
  with pytest.raises(ValueError, match="extra_layers"):
    init_value(cfg, extra_layers=1)
  with pytest.raises(ValueError, match="extra_layers"):
    init_value(cfg, trunk_params=trunk, extra_layers=-1)
  with pytest.raises(ValueError, match=r"hold layers \[0\] but the config has num_layers=2"):
    init_value(cfg, trunk_params={**trunk, "layers": {0: trunk["layers"][0]}}, extra_layers=1)


def test_completions_on_a_shared_prompt_equal_full_sequence_scoring():
  """N completions of each prompt scored on one prefill of the prompt (LanguageModel.extend)
  give the full forward's ORM and PRM numbers; ragged prompts, an empty completion, a
  completion ending on a delimiter (counted once), a repeated completion (packed once) and
  one text under two prompts (packed twice)."""
  from tts_jax.verifiers import (completion_outcome_probabilities, completion_step_probabilities,
                                 outcome_probabilities, step_probabilities)
  cfg = qwen2_config(vocab_size=13, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_position_embeddings=128)
  vm, params = init_value(cfg, seed=3)
  rng = np.random.default_rng(4)
  prompts = [rng.integers(0, 13, size=n).tolist() for n in (3, 9, 17)]
  tokens = rng.integers(0, 13, size=(3, 4, 20)).astype(np.int32)
  lengths = rng.integers(1, 21, size=(3, 4)).astype(np.int32)
  lengths[0, 0] = 0
  tokens[1, 2, lengths[1, 2] - 1] = 5  # ends on the delimiter
  tokens[2, 3], lengths[2, 3] = tokens[2, 1], lengths[2, 1]  # a repeated sample: scored once
  tokens[1, 0], lengths[1, 0] = tokens[0, 1], lengths[0, 1]  # the same text under another prompt
  seqs = [prompts[i] + tokens[i, j, :lengths[i, j]].tolist() for i in range(3) for j in range(4)]
  orm = completion_outcome_probabilities(vm, params, prompts, tokens, lengths, prompt_width=32)
  np.testing.assert_allclose(orm.ravel(), outcome_probabilities(vm, params, seqs), atol=1e-5)
  steps, mask = completion_step_probabilities(vm, params, prompts, tokens, lengths, (5,), num_steps=24, prompt_width=32)
  want, want_mask = step_probabilities(vm, params, seqs, [len(prompts[i]) for i in range(3) for _ in range(4)], (5,))
  s = want.shape[-1]
  assert steps.shape == (3, 4, 24) and not mask[..., s:].any()
  np.testing.assert_array_equal(mask[..., :s].reshape(12, s), want_mask)
  np.testing.assert_allclose(steps[..., :s].reshape(12, s), want, atol=1e-5)


def test_an_orm_and_a_prm_of_one_architecture_share_their_scoring_program():
  """The ORM reads its last token in a query block of the PRM's multiple, so scoring a pool
  with an ORM and then a PRM of the same architecture compiles one program, not two."""
  from tts_jax.verifiers import completion_outcome_probabilities, completion_step_probabilities
  from tts_jax.verifiers.scoring import _prompt_and_completion_values
  cfg = qwen2_config(vocab_size=11, hidden_size=16, intermediate_size=24, num_layers=1, num_heads=2, num_kv_heads=1,
                     head_dim=8, max_position_embeddings=64)
  (orm, orm_params), (prm, prm_params) = init_value(cfg, seed=1), init_value(cfg, seed=2)
  rng = np.random.default_rng(3)
  prompts = [rng.integers(0, 11, size=n).tolist() for n in (4, 7)]
  tokens, lengths = rng.integers(0, 11, size=(2, 3, 12)).astype(np.int32), np.array([[12, 5, 1], [9, 12, 3]], np.int32)
  kw = dict(prompt_width=13, width=12)
  completion_outcome_probabilities(orm, orm_params, prompts, tokens, lengths, **kw)
  compiled = _prompt_and_completion_values._cache_size()
  _, mask = completion_step_probabilities(prm, prm_params, prompts, tokens, lengths, (3,), **kw)
  assert 1 <= mask.sum(-1).max() <= 8  # one query block for both
  assert _prompt_and_completion_values._cache_size() == compiled


def test_packing_keeps_each_distinct_completion_of_a_prompt_once():
  """`pack_completions`: one row per distinct non-empty (prompt, completion, positions), in
  order; repeats and texts equal up to their length map to their first row; empty ones to
  -1; each block of prompts packs into its own chunks with block-local prompt ids; chunks of
  R = chunk_tokens // W rows, unused ones flagged."""
  from tts_jax.verifiers.scoring import pack_completions
  tokens = np.zeros((4, 3, 4), np.int32)
  tokens[0] = [[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 3, 4]]  # rows 0 and 2 repeat; row 1 differs past length 3
  lengths = np.array([[4, 3, 4], [2, 0, 2], [1, 1, 1], [3, 3, 0]], np.int32)
  tokens[1, 0, :2] = tokens[1, 2, :2] = [5, 6]
  tokens[2] = [[7, 0, 0, 0], [8, 0, 0, 0], [7, 1, 1, 1]]  # row 2 equals row 0 within its length
  tokens[3, :2, :3] = [1, 2, 3]
  pos = np.zeros((4, 3, 1), np.int32)
  pos[3, 1] = 1  # same tokens as row 0, read elsewhere: its own row
  packed = pack_completions(tokens, lengths, pos, blocks=2, chunk_tokens=8)
  r = 2  # 8 // 4 rows per chunk; a block holds 2 prompts x 3 = 6 rows: 3 chunks
  assert packed.tokens.shape == (6, r, 4) and packed.positions.shape == (6, r, 1)
  np.testing.assert_array_equal(packed.row, [[0, 1, 0], [2, -1, 2], [6, 7, 6], [8, 9, -1]])
  flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
  np.testing.assert_array_equal(flat(packed.lengths), [4, 3, 2, 0, 0, 0, 1, 1, 3, 3, 0, 0])
  np.testing.assert_array_equal(flat(packed.prompt)[[0, 1, 2, 6, 7, 8, 9]], [0, 0, 1, 0, 0, 1, 1])
  np.testing.assert_array_equal(flat(packed.tokens)[[1, 8]], [[1, 2, 3, 9], [1, 2, 3, 0]])
  np.testing.assert_array_equal(flat(packed.positions)[[8, 9], 0], [0, 1])
  np.testing.assert_array_equal(packed.used, [True, True, False, True, True, False])
  with pytest.raises(ValueError, match="4 prompts do not split into 3 equal blocks"):
    pack_completions(tokens, lengths, blocks=3)


def test_extend_with_prefix_rows_equals_extend_on_gathered_prompts():
  """`extend(prefix_rows=...)`: rows of several prompts in one batch, each attending to its
  own prompt's KV, give what `extend` on a prefix gathered row by row gives."""
  from tts_jax.models import init
  from tts_jax.models.lm import PrefixCache
  cfg = qwen2_config(vocab_size=13, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, max_position_embeddings=64)
  lm, params = init(cfg, seed=5)
  rng = np.random.default_rng(6)
  _, prefix = lm.prefill(params, jnp.asarray(rng.integers(0, 13, size=(3, 7)), jnp.int32), jnp.asarray([7, 2, 5]))
  rows = jnp.asarray([2, 0, 2, 1, 0], jnp.int32)
  tokens = jnp.asarray(rng.integers(0, 13, size=(5, 2, 6)), jnp.int32)
  lengths = jnp.asarray(rng.integers(1, 7, size=(5, 2)), jnp.int32)
  got = np.asarray(lm.extend(params, prefix, tokens, lengths, prefix_rows=rows))
  gathered = PrefixCache(k=tuple(k[rows] for k in prefix.k), v=tuple(v[rows] for v in prefix.v),
                         lengths=prefix.lengths[rows])
  want = np.asarray(lm.extend(params, gathered, tokens, lengths))
  keep = np.arange(6) < np.asarray(lengths)[..., None]
  np.testing.assert_allclose(got[keep], want[keep], atol=1e-6)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_extend_at_positions_equals_extend_everywhere(qk_norm):
  """`extend(positions=...)` (the last layer at a few query positions only) gives the full
  extend's outputs at those positions: several positions per row, repeated ones, a GQA model
  with and without q/k norms (Qwen3)."""
  import dataclasses
  from tts_jax.models import init
  cfg = dataclasses.replace(qwen2_config(vocab_size=13, hidden_size=32, intermediate_size=48, num_layers=3,
                                         num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=64),
                            qk_norm=qk_norm)
  lm, params = init(cfg, seed=7)
  rng = np.random.default_rng(8)
  prompts, plens = jnp.asarray(rng.integers(0, 13, size=(2, 6)), jnp.int32), jnp.asarray([6, 3], jnp.int32)
  tokens = jnp.asarray(rng.integers(0, 13, size=(2, 3, 10)), jnp.int32)
  lengths = jnp.asarray([[10, 4, 1], [7, 10, 2]], jnp.int32)
  _, prefix = lm.prefill(params, prompts, plens)
  full = np.asarray(lm.extend(params, prefix, tokens, lengths))
  pos = np.stack([np.maximum(np.asarray(lengths) - 1, 0), np.zeros((2, 3), int), np.minimum(2, np.asarray(lengths) - 1)],
                 axis=-1).astype(np.int32)
  sel = np.asarray(lm.extend(params, prefix, tokens, lengths, positions=jnp.asarray(pos)))
  assert sel.shape == (2, 3, 3, 13)
  np.testing.assert_allclose(sel, np.take_along_axis(full, pos[..., None], axis=2), atol=2e-5)
