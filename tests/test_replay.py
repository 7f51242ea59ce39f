"""Ring semantics of the timestep-bucketed replay buffer (tiny capacity)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ired_cd import replay

T, NB, CAP, DIM = 10, 16, 4, 2


def _x(values):
  """Distinctive 2-d rows [v, -v]."""
  v = jnp.asarray(values, jnp.float32)
  return jnp.stack([v, -v], axis=-1)


_jit_add = jax.jit(replay.add)


def _add(buf, values, ts, conditions=None):
  return _jit_add(buf, _x(values), jnp.asarray(ts, jnp.int32), conditions)


def _row(buf, t):
  """First coordinates of timestep t's ring, slot order."""
  return np.asarray(buf.storage[int(buf.slot_of_timestep[t]), :, 0])


def _ordered(buf, row):
  """Contents of one ring, oldest first (first coordinate)."""
  count, wp = int(buf.count[row]), int(buf.write_pointer[row])
  ring = np.asarray(buf.storage[row, :, 0])
  return list(ring[:count]) if count < buf.capacity else list(np.roll(ring, -wp))


@pytest.fixture
def buf():
  return replay.create(T, NB, CAP, DIM)


def test_only_reachable_buckets_allocated():
  """T=10, nb=16: ten reachable bucket ids, one storage row each; shared buckets share a row."""
  np.testing.assert_array_equal(replay.reachable_buckets(T, NB), [0, 1, 3, 5, 6, 8, 10, 11, 13, 15])
  np.testing.assert_array_equal(replay.bucket_of_timestep(np.arange(T), T, NB),
                                np.floor(np.arange(T) / 9 * 15).astype(int))
  b = replay.create(T, NB, CAP, DIM)
  assert b.storage.shape == (10, CAP, DIM) and b.num_rows == 10 and b.capacity == CAP
  np.testing.assert_array_equal(b.slot_of_timestep, np.arange(T))
  b4 = replay.create(T, 4, CAP, DIM)
  assert b4.storage.shape == (4, CAP, DIM)
  np.testing.assert_array_equal(b4.slot_of_timestep, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
  assert replay.create(4, NB, CAP, DIM).num_rows == 4  # ids 0, 5, 10, 15


def test_fifo_order_and_counters(buf):
  """Single adds fill slots 0, 1, 2 in order; pointer and count advance."""
  for v in (1.0, 2.0, 3.0):
    buf = _add(buf, [v], [0])
  np.testing.assert_array_equal(_row(buf, 0), [1, 2, 3, 0])
  np.testing.assert_array_equal(buf.storage[0, :3, 1], [-1, -2, -3])
  assert int(buf.write_pointer[0]) == 3 and int(buf.count[0]) == 3
  assert _ordered(buf, 0) == [1, 2, 3]


def test_shared_bucket_gets_consecutive_slots_in_batch_order(buf):
  """Samples of one batch sharing a bucket take consecutive slots, in batch order."""
  buf = _add(buf, [1, 2, 3, 4, 5], [2, 7, 2, 2, 7])
  np.testing.assert_array_equal(_row(buf, 2), [1, 3, 4, 0])
  np.testing.assert_array_equal(_row(buf, 7), [2, 5, 0, 0])
  np.testing.assert_array_equal(buf.write_pointer, [0, 0, 3, 0, 0, 0, 0, 2, 0, 0])
  np.testing.assert_array_equal(buf.count, [0, 0, 3, 0, 0, 0, 0, 2, 0, 0])
  buf = _add(buf, [6, 7], [2, 2])  # slot 3, then wraps to slot 0
  np.testing.assert_array_equal(_row(buf, 2), [7, 3, 4, 6])
  assert int(buf.write_pointer[2]) == 1 and int(buf.count[2]) == CAP
  assert _ordered(buf, 2) == [3, 4, 6, 7]


def test_wraparound_overwrites_oldest(buf):
  """Six adds into a 4-slot ring keep the newest four; the pointer sits on the oldest."""
  for v in range(1, 7):
    buf = _add(buf, [v], [0])
  np.testing.assert_array_equal(_row(buf, 0), [5, 6, 3, 4])
  assert int(buf.write_pointer[0]) == 2 and int(buf.count[0]) == CAP
  assert _ordered(buf, 0) == [3, 4, 5, 6]


@pytest.mark.parametrize("prefill", [0, 1, 3])
def test_batch_larger_than_capacity_keeps_newest(buf, prefill):
  """A batch with 6 samples of one bucket writes only its newest 4, as sequential adds would."""
  seq = buf
  for v in range(prefill):
    buf = _add(buf, [100 + v], [5])
    seq = _add(seq, [100 + v], [5])
  buf = _add(buf, [1, 2, 3, 4, 5, 6], [5] * 6)
  for v in range(1, 7):
    seq = _add(seq, [v], [5])
  assert _ordered(buf, 5) == [3, 4, 5, 6]
  np.testing.assert_array_equal(buf.storage, seq.storage)
  np.testing.assert_array_equal(buf.write_pointer, seq.write_pointer)
  np.testing.assert_array_equal(buf.count, seq.count)
  assert int(buf.write_pointer[5]) == (prefill + 6) % CAP


def test_matches_deque_model():
  """Random batches: every ring holds what the guide's deque(maxlen=capacity) per bucket holds."""
  rng = np.random.RandomState(0)
  buf = replay.create(T, 4, CAP, DIM)  # nb=4: several timesteps share a bucket
  model = collections.defaultdict(lambda: collections.deque(maxlen=CAP))
  value, n = 0, 7
  for _ in range(12):
    ts = rng.randint(0, T, size=n)
    values = np.arange(value, value + n, dtype=np.float32) + 1
    value += n
    buf = _add(buf, values, ts)
    for t, v in zip(ts, values):
      model[int(buf.slot_of_timestep[t])].append(v)
  for row in range(buf.num_rows):
    assert _ordered(buf, row) == list(model[row]), row
    assert int(buf.count[row]) == len(model[row])


def test_buckets_are_independent(buf):
  """Adding to one bucket leaves every other row's storage, pointer and count untouched."""
  buf = _add(buf, [1, 2], [4, 4])
  before = jax.tree_util.tree_map(np.asarray, buf)
  after = _add(buf, [7, 8, 9], [3, 3, 3])
  others = np.arange(T) != 3
  np.testing.assert_array_equal(after.storage[others], before.storage[others])
  np.testing.assert_array_equal(after.write_pointer[others], before.write_pointer[others])
  np.testing.assert_array_equal(after.count[others], before.count[others])
  np.testing.assert_array_equal(_row(after, 3), [7, 8, 9, 0])
  np.testing.assert_allclose(replay.fill_fraction(after), 5 / (T * CAP))


def test_sample_returns_only_filled_slots(buf):
  """Draws come from the 3 filled slots, uniformly; an empty bucket gives zeros, not available."""
  buf = _add(buf, [10, 20, 30], [4, 4, 4])
  t = jnp.asarray([4] * 1500 + [5] * 10, jnp.int32)
  x, conds, available = replay.sample(buf, jax.random.PRNGKey(0), t)
  assert conds is None
  x, available = np.asarray(x), np.asarray(available)
  assert available[:1500].all() and not available[1500:].any()
  assert set(x[:1500, 0]) == {10.0, 20.0, 30.0}
  np.testing.assert_array_equal(x[:1500, 1], -x[:1500, 0])
  np.testing.assert_array_equal(x[1500:], 0.0)
  freq = np.array([np.mean(x[:1500, 0] == v) for v in (10, 20, 30)])
  np.testing.assert_allclose(freq, 1 / 3, atol=0.05)
  x2, _, _ = replay.sample(buf, jax.random.PRNGKey(1), t)
  assert not np.array_equal(x, np.asarray(x2))  # the key decides the draw


def test_sample_of_full_ring_covers_every_slot(buf):
  """Once a ring is full every slot can be drawn, including the ones overwritten last."""
  for v in range(1, 7):
    buf = _add(buf, [v], [9])
  x, _, available = replay.sample(buf, jax.random.PRNGKey(2), jnp.full((400,), 9, jnp.int32))
  assert np.asarray(available).all()
  assert set(np.asarray(x[:, 0])) == {3.0, 4.0, 5.0, 6.0}


def test_conditions_stored_alongside():
  """With condition_dim, each negative's input is written to the same slot and drawn with it."""
  buf = replay.create(T, NB, CAP, DIM, condition_dim=3)
  assert buf.conditions.shape == (10, CAP, 3)
  values = jnp.arange(1.0, 7.0)
  conds = jnp.stack([values, 2 * values, 3 * values], axis=-1)
  buf = replay.add(buf, _x(values), jnp.asarray([1, 1, 1, 1, 1, 8], jnp.int32), conds)
  np.testing.assert_array_equal(buf.conditions[1, :, 0], [5, 2, 3, 4])
  np.testing.assert_array_equal(buf.conditions[8, 0], [6, 12, 18])
  x, c, available = jax.jit(replay.sample)(buf, jax.random.PRNGKey(0),
                                           jnp.asarray([1] * 50 + [8, 0]))
  x, c = np.asarray(x), np.asarray(c)
  np.testing.assert_array_equal(c[:51, 0], x[:51, 0])  # drawn together
  np.testing.assert_array_equal(c[:51, 2], 3 * x[:51, 0])
  np.testing.assert_array_equal(c[51], 0.0)
  np.testing.assert_array_equal(available, [True] * 51 + [False])


def test_works_under_jit_and_scan(buf):
  """add/sample jitted, and adds as a lax.scan carry, equal the eager results."""
  ts = jnp.asarray([[0, 0, 3], [3, 0, 0], [0, 9, 0]], jnp.int32)
  xs = jnp.stack([_x([1, 2, 3]), _x([4, 5, 6]), _x([7, 8, 9])])
  eager = buf
  for x, t in zip(xs, ts):
    eager = replay.add(eager, x, t)

  @jax.jit
  def run(b):
    b, _ = jax.lax.scan(lambda b, xt: (replay.add(b, *xt), None), b, (xs, ts))
    return b, replay.sample(b, jax.random.PRNGKey(0), jnp.asarray([0, 3, 9, 5]))

  jitted, (x, _, available) = run(buf)
  for a, e in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)):
    np.testing.assert_array_equal(a, e)
  np.testing.assert_array_equal(_row(eager, 0), [7, 9, 5, 6])  # 1, 2 overwritten by 7, 9
  want = replay.sample(eager, jax.random.PRNGKey(0), jnp.asarray([0, 3, 9, 5]))
  np.testing.assert_array_equal(x, want[0])
  np.testing.assert_array_equal(available, [True, True, True, False])
