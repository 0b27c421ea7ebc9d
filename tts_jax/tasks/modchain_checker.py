"""ModChain's exact step checker as array code: `prefix_correct` on token ids, jittable.

    ok = right_so_far(task, prompt_tokens, prompt_lengths, tokens, lengths, done)   # bool[B, N]

The same verdicts as the host checker (`tts_jax.tasks.oracle.TaskChecker`) on the ids it
would decode: special tokens dropped, every `;`-terminated step right (`step_correct`: a
problem variable, its operands' values, its operator and its value, as 7 tokens) and, once
done, the text after the last `;` exactly `answer <the query's value>`. As a potential it
runs inside the compiled search (no host callback per step), so the engines that use it are
cached like any other program.

The prompt is read off its ids as `ModChain.prompt` writes it (`v = l op r ,` per
assignment, then `? q :`, variables defined once, before use); a prompt not of that form
judges every generation wrong.
"""

from __future__ import annotations

import string

import jax
import jax.numpy as jnp

from tts_jax.tasks.base import ANSWER, SPECIAL_TOKENS, STEP

_LETTERS = 26


def _ids(task) -> dict:
  tok = task.tokenizer()
  one = lambda w: tok.token_to_id(w)  # noqa: E731
  digits = [one(str(i)) for i in range(task.modulus)]
  letters = [one(c) for c in string.ascii_lowercase]
  if digits != list(range(digits[0], digits[0] + task.modulus)) or letters != list(range(letters[0],
                                                                                          letters[0] + _LETTERS)):
    raise ValueError("the modchain checker needs contiguous ids for the numbers and for the letters")
  return dict(specials=[one(w) for w in SPECIAL_TOKENS], zero=digits[0], a=letters[0],
              ops=[one(o) for o in ("+", "-", "*")], eq=one("="), comma=one(","), query=one("?"), colon=one(":"),
              step=one(STEP), answer=one(ANSWER))


def _compact(tokens, lengths, specials):
  """Drops special tokens (as decoding does): (int32[..., T] ids moved to the front, padded
  with -1; int32[...] how many)."""
  t = tokens.shape[-1]
  keep = (jnp.arange(t) < lengths[..., None]) & ~jnp.isin(tokens, jnp.asarray(specials))
  order = jnp.argsort(~keep, axis=-1, stable=True)
  out = jnp.take_along_axis(jnp.where(keep, tokens, -1), order, axis=-1)
  return out, jnp.sum(keep, axis=-1).astype(jnp.int32)


def _shift(x, k: int):
  """x[..., j - k] at j (-1 where j < k)."""
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(k, 0)], constant_values=-1)[..., :x.shape[-1]]


def _problem_tables(ids: dict, modulus: int, prompt_tokens, prompt_lengths):
  """Per prompt: (int32[B, 26, 4] (lhs value, operator, rhs value, value) of each variable
  (-1: undefined), int32[B] the answer, bool[B] the prompt parsed)."""
  toks, n = _compact(prompt_tokens, prompt_lengths, ids["specials"])
  num = lambda x: jnp.where((x >= ids["zero"]) & (x < ids["zero"] + modulus), x - ids["zero"], -1)  # noqa: E731
  var = lambda x: jnp.where((x >= ids["a"]) & (x < ids["a"] + _LETTERS), x - ids["a"], -1)  # noqa: E731
  op = lambda x: jnp.select([x == o for o in ids["ops"]], [0, 1, 2], -1)  # noqa: E731
  count = (n - 3) // 6
  well_formed = ((n - 3) % 6 == 0) & (count >= 1)

  def assignment(carry, i):
    table, ok = carry
    g = jax.lax.dynamic_slice_in_dim(toks, 6 * i, 6, axis=-1)  # [B, 6]: v = l op r ,
    live = i < count

    def value(x):  # a constant or an earlier variable's value (-1: neither)
      v = var(x)
      earlier = jnp.take_along_axis(table[..., 3], jnp.maximum(v, 0)[:, None], axis=-1)[:, 0]
      return jnp.where(v >= 0, earlier, num(x))

    v, lhs, o, rhs = var(g[:, 0]), value(g[:, 2]), op(g[:, 3]), value(g[:, 4])
    result = jnp.select([o == 0, o == 1, o == 2], [lhs + rhs, lhs - rhs, lhs * rhs], 0) % modulus
    good = (v >= 0) & (g[:, 1] == ids["eq"]) & (lhs >= 0) & (o >= 0) & (rhs >= 0) & (g[:, 5] == ids["comma"])
    fresh = jnp.take_along_axis(table[..., 3], jnp.maximum(v, 0)[:, None], axis=-1)[:, 0] < 0
    write = live & good & fresh
    row = jnp.stack([lhs, o, rhs, result], axis=-1)
    table = jnp.where(write[:, None, None] & (jnp.arange(_LETTERS)[None, :, None] == v[:, None, None]),
                      row[:, None, :], table)
    return (table, ok & (~live | (good & fresh))), None

  b, width = toks.shape
  table = jnp.full((b, _LETTERS, 4), -1, jnp.int32)
  toks = jnp.pad(toks, ((0, 0), (0, 6)), constant_values=-1)
  (table, ok), _ = jax.lax.scan(assignment, (table, well_formed), jnp.arange(max(width // 6, 1)))
  tail = jnp.take_along_axis(toks, jnp.clip(6 * count, 0, width)[:, None] + jnp.arange(3)[None, :], axis=-1)  # ? q :
  q = var(tail[:, 1])
  answer = jnp.take_along_axis(table[..., 3], jnp.maximum(q, 0)[:, None], axis=-1)[:, 0]
  ok = ok & (tail[:, 0] == ids["query"]) & (tail[:, 2] == ids["colon"]) & (q >= 0) & (answer >= 0)
  return table, answer, ok


def right_so_far(task, prompt_tokens, prompt_lengths, tokens, lengths, done):
  """bool[B, N]: generation (b, n) is right so far (see the module docstring).

  prompt_tokens: int32[B, Tp] (BOS and padding allowed), prompt_lengths: int32[B];
  tokens: int32[B, N, T] generated ids, lengths: int32[B, N], done: bool[B, N]."""
  ids, modulus = _ids(task), task.modulus
  table, answer, parsed = _problem_tables(ids, modulus, prompt_tokens, prompt_lengths)
  toks, n = _compact(tokens, lengths, ids["specials"])  # [B, N, T], [B, N]
  num = jnp.where((toks >= ids["zero"]) & (toks < ids["zero"] + modulus), toks - ids["zero"], -2)
  v = jnp.where((toks >= ids["a"]) & (toks < ids["a"] + _LETTERS), toks - ids["a"], -1)
  o = jnp.select([toks == x for x in ids["ops"]], [0, 1, 2], -3)
  is_step = (toks == ids["step"]).astype(jnp.int32)
  # A step ending at j (a ";" there) is the 7 tokens j-7 .. j-1: v = a op b = r, after a ";" or the start.
  var = _shift(v, 7)
  row = _rows(table, var)  # [B, N, T, 4]: the definition of the variable the step names
  pos = jnp.arange(toks.shape[-1])
  starts_step = (pos == 7) | (_shift(is_step, 8) == 1)
  step_ok = (starts_step & (var >= 0) & (row[..., 3] >= 0) & (_shift(toks, 6) == ids["eq"])
             & (_shift(num, 5) == row[..., 0]) & (_shift(o, 4) == row[..., 1]) & (_shift(num, 3) == row[..., 2])
             & (_shift(toks, 2) == ids["eq"]) & (_shift(num, 1) == row[..., 3]))
  steps_ok = jnp.all((is_step == 0) | step_ok, axis=-1)
  last = jnp.max(jnp.where(is_step == 1, pos, -1), axis=-1)  # the last ";" (-1: none)
  at = lambda x, k: jnp.take_along_axis(x, jnp.minimum(last + k, x.shape[-1] - 1)[..., None], -1)[..., 0]  # noqa: E731
  answered = (n - last == 3) & (at(toks, 1) == ids["answer"]) & (at(num, 2) == answer[:, None])
  return parsed[:, None] & steps_ok & (~done | answered)


def _rows(table, var):
  """table int32[B, 26, 4], var int32[B, N, T] (-1: none) -> int32[B, N, T, 4] (-1 rows for none)."""
  got = jax.vmap(lambda t, i: t[jnp.maximum(i, 0)])(table, var)  # [B, N, T, 4]
  return jnp.where((var >= 0)[..., None], got, -1)
