"""Timestep-bucketed persistent replay buffer of x_t negatives, on device.

A pytree of arrays: ``storage`` [buckets, capacity, D] (plus ``conditions``
[buckets, capacity, inp_dim] when negatives keep their own conditioning
input), a per-bucket write pointer and fill count. ``add`` and ``sample`` are
pure and jit-able; both are a scatter / gather, with no host round trip.

Bucket of timestep t (the guide's formula, T timesteps, nb buckets):
  b = clip(floor(t / max(1, T - 1) * (nb - 1)), 0, nb - 1).
With T=10 and nb=16 only 10 of the 16 buckets are reachable. Storage is
allocated for the reachable buckets only (``slot_of_timestep`` maps t to its
row), so nothing is wasted; ``bucket_of_timestep`` gives the guide's ids.

Data parallelism: the train state holds ``num_shards`` independent buffers
stacked on a leading axis (one per device along the mesh's data axis, 1 on a
single device). Sample i of a global batch of B belongs to shard i // (B / S):
the same split as the batch's sharding, so each device writes and reads only
its own buffer. ``reshard`` regroups a buffer saved with another shard count.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


def bucket_of_timestep(t, num_timesteps: int, num_buckets: int):
  """The guide's bucket id of each timestep.  t: int (B,) -> int32 (B,)."""
  ratio = jnp.asarray(t, jnp.float32) / max(1, num_timesteps - 1) * (num_buckets - 1)
  return jnp.clip(ratio.astype(jnp.int32), 0, num_buckets - 1)


def _bucket_table(num_timesteps: int, num_buckets: int) -> np.ndarray:
  """``bucket_of_timestep`` of t = 0..T-1 as a host constant (also while tracing)."""
  with jax.ensure_compile_time_eval():
    return np.asarray(bucket_of_timestep(np.arange(num_timesteps), num_timesteps, num_buckets))


def reachable_buckets(num_timesteps: int, num_buckets: int) -> np.ndarray:
  """Sorted bucket ids that some t in [0, T) maps to."""
  return np.unique(_bucket_table(num_timesteps, num_buckets))


@flax.struct.dataclass
class ReplayBuffer:
  """FIFO ring per reachable bucket.  Row k of every array is bucket ``bucket_ids[k]``."""

  storage: jnp.ndarray  # [R, capacity, D]
  write_pointer: jnp.ndarray  # [R] int32: next slot to write
  count: jnp.ndarray  # [R] int32: filled slots (<= capacity)
  slot_of_timestep: jnp.ndarray  # [T] int32: row of each timestep's bucket
  conditions: Optional[jnp.ndarray] = None  # [R, capacity, inp_dim] or None

  @property
  def capacity(self) -> int:
    """Slots per bucket (per shard, for stacked shards)."""
    return self.storage.shape[-2]

  @property
  def num_rows(self) -> int:
    return self.storage.shape[-3]


def create(num_timesteps: int, num_buckets: int, capacity: int, dim: int,
           condition_dim: Optional[int] = None) -> ReplayBuffer:
  """An empty buffer for the reachable buckets of (T, nb)."""
  ids = reachable_buckets(num_timesteps, num_buckets)
  row_of_id = {int(b): k for k, b in enumerate(ids)}
  slots = _bucket_table(num_timesteps, num_buckets)
  slot_of_timestep = np.array([row_of_id[int(b)] for b in slots], np.int32)
  rows = len(ids)
  return ReplayBuffer(
      storage=jnp.zeros((rows, capacity, dim), jnp.float32),
      write_pointer=jnp.zeros((rows,), jnp.int32),
      count=jnp.zeros((rows,), jnp.int32),
      slot_of_timestep=jnp.asarray(slot_of_timestep),
      conditions=None if condition_dim is None else jnp.zeros((rows, capacity, condition_dim),
                                                                jnp.float32),
  )


def add(buffer: ReplayBuffer, x, t, conditions=None) -> ReplayBuffer:
  """Appends x (B, D) at timesteps t (B,) to their buckets' rings.

  Samples of one batch that share a bucket take consecutive slots in batch
  order; when the ring is full the oldest entries are overwritten. When a batch
  holds more than ``capacity`` samples of one bucket, only its newest
  ``capacity`` are written (the older ones would be evicted at once anyway).
  """
  rows = buffer.slot_of_timestep[t]  # (B,)
  one_hot = jax.nn.one_hot(rows, buffer.num_rows, dtype=jnp.int32)  # (B, R)
  rank_in_row = jnp.sum((jnp.cumsum(one_hot, axis=0) - 1) * one_hot, axis=1)  # (B,)
  added = jnp.sum(one_hot, axis=0)  # (R,)
  cap = buffer.capacity
  keep = rank_in_row >= added[rows] - cap
  slots = (buffer.write_pointer[rows] + rank_in_row) % cap
  rows_or_drop = jnp.where(keep, rows, buffer.num_rows)  # out of range -> dropped
  storage = buffer.storage.at[rows_or_drop, slots].set(x, mode="drop")
  conds = buffer.conditions
  if conds is not None:
    conds = conds.at[rows_or_drop, slots].set(conditions, mode="drop")
  return buffer.replace(
      storage=storage,
      conditions=conds,
      write_pointer=(buffer.write_pointer + added) % cap,
      count=jnp.minimum(cap, buffer.count + added),
  )


def sample(buffer: ReplayBuffer, key, t):
  """Draws one stored negative per timestep, uniformly over the filled slots of its bucket.

  Returns (x (B, D), conditions (B, inp_dim) or None, available (B,) bool);
  rows whose bucket is empty are zeros and ``available`` is False there.
  """
  rows = buffer.slot_of_timestep[t]
  count = buffer.count[rows]
  u = jax.random.uniform(key, t.shape)
  index = jnp.minimum((u * count).astype(jnp.int32), jnp.maximum(count - 1, 0))
  x = buffer.storage[rows, index]
  conds = None if buffer.conditions is None else buffer.conditions[rows, index]
  return x, conds, count > 0


def fill_fraction(buffer: ReplayBuffer):
  """Filled slots over total slots (scalar); also for stacked shards."""
  return jnp.sum(buffer.count) / (buffer.count.size * buffer.capacity)


# --------------------------------------------------------------------- shards
def create_sharded(num_shards: int, num_timesteps: int, num_buckets: int, capacity: int,
                   dim: int, condition_dim: Optional[int] = None) -> ReplayBuffer:
  """``num_shards`` empty buffers stacked on axis 0, each with ceil(capacity / num_shards)
  slots per bucket (the total capacity is the guide's per-bucket size)."""
  per_shard = -(-capacity // num_shards)
  one = create(num_timesteps, num_buckets, per_shard, dim, condition_dim)
  return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (num_shards,) + a.shape), one)


def _split_shards(num_shards, a):
  return None if a is None else a.reshape((num_shards, -1) + a.shape[1:])


def _merge_shards(a):
  return None if a is None else a.reshape((-1,) + a.shape[2:])


def add_sharded(buffers: ReplayBuffer, x, t, conditions=None) -> ReplayBuffer:
  """``add`` per shard: rows of the batch go to the shard that owns them."""
  n = buffers.storage.shape[0]
  split = lambda a: _split_shards(n, a)  # noqa: E731
  return jax.vmap(add)(buffers, split(x), split(t), split(conditions))


def sample_sharded(buffers: ReplayBuffer, key, t):
  """``sample`` per shard; returns (x (B, D), conditions or None, available (B,))."""
  n = buffers.storage.shape[0]
  x, conds, available = jax.vmap(sample)(buffers, jax.random.split(key, n), _split_shards(n, t))
  return _merge_shards(x), _merge_shards(conds), _merge_shards(available)


def reshard(buffers, num_shards: int, capacity: int):
  """Regroups host (numpy) stacked buffers into ``num_shards`` shards.

  Each bucket's entries of all old shards, oldest first, are dealt round-robin
  to the new shards, keeping the newest ceil(capacity / num_shards) per shard.
  Used when a checkpoint written on N devices is restored on M.
  """
  per_shard = -(-capacity // num_shards)
  storage = np.asarray(buffers.storage)
  old_shards, rows = storage.shape[:2]
  conds = None if buffers.conditions is None else np.asarray(buffers.conditions)
  new_storage = np.zeros((num_shards, rows, per_shard) + storage.shape[3:], storage.dtype)
  new_conds = None if conds is None else np.zeros(
      (num_shards, rows, per_shard) + conds.shape[3:], conds.dtype)
  pointer = np.zeros((num_shards, rows), np.int32)
  count = np.zeros((num_shards, rows), np.int32)
  for r in range(rows):
    order = []  # (shard, slot) oldest first, interleaving the old shards
    per_old = []
    for s in range(old_shards):
      n, p, cap = int(buffers.count[s, r]), int(buffers.write_pointer[s, r]), storage.shape[2]
      per_old.append([(s, (p - n + k) % cap) for k in range(n)])
    longest = max((len(slots) for slots in per_old), default=0)
    for k in range(longest):
      for slots in per_old:
        offset = k - (longest - len(slots))
        if offset >= 0:
          order.append(slots[offset])
    order = order[-per_shard * num_shards:]
    for k, (s, slot) in enumerate(order):
      dest, idx = k % num_shards, k // num_shards
      new_storage[dest, r, idx] = storage[s, r, slot]
      if conds is not None:
        new_conds[dest, r, idx] = conds[s, r, slot]
    for dest in range(num_shards):
      count[dest, r] = len(range(dest, len(order), num_shards))
      pointer[dest, r] = count[dest, r] % per_shard
  slot_of_timestep = np.broadcast_to(np.asarray(buffers.slot_of_timestep)[0],
                                     (num_shards,) + buffers.slot_of_timestep.shape[1:])
  return ReplayBuffer(storage=new_storage, write_pointer=pointer, count=count,
                      slot_of_timestep=np.array(slot_of_timestep), conditions=new_conds)
