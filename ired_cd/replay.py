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


def reachable_buckets(num_timesteps: int, num_buckets: int) -> np.ndarray:
  """Sorted bucket ids that some t in [0, T) maps to."""
  ids = np.asarray(bucket_of_timestep(np.arange(num_timesteps), num_timesteps, num_buckets))
  return np.unique(ids)


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
    return self.storage.shape[1]

  @property
  def num_rows(self) -> int:
    return self.storage.shape[0]


def create(num_timesteps: int, num_buckets: int, capacity: int, dim: int,
           condition_dim: Optional[int] = None) -> ReplayBuffer:
  """An empty buffer for the reachable buckets of (T, nb)."""
  ids = reachable_buckets(num_timesteps, num_buckets)
  row_of_id = {int(b): k for k, b in enumerate(ids)}
  slots = np.asarray(bucket_of_timestep(np.arange(num_timesteps), num_timesteps, num_buckets))
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
  """Filled slots over total slots (scalar)."""
  return jnp.sum(buffer.count) / (buffer.num_rows * buffer.capacity)
