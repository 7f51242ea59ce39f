"""Data parallelism over every device of every host, through JAX's own runtime.

One mesh axis, ``data``: the batch is sharded along it, params, optimiser
state and EMA are replicated, the replay buffer's shards (one per device) are
sharded along it. Gradient averaging is left to the compiler (jit with
shardings). Multi-host runs call ``initialize`` first: TPU VM slices and SLURM
auto-detect; elsewhere pass the coordinator explicitly.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> None:
  """Starts jax.distributed where the run spans several processes; a no-op otherwise."""
  if coordinator_address is None and not _cluster_detected():
    return
  # CPU processes reduce over gloo (GPU and TPU backends bring their own collectives).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is not None:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  else:
    jax.distributed.initialize()


def _cluster_detected() -> bool:
  tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in tpu_hosts or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def any_process(flag: bool) -> bool:
  """True on every host if ``flag`` is True on any (a decision all hosts must take together)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def make_mesh(num_devices: Optional[int] = None, devices=None) -> Mesh:
  """A 1-D ``data`` mesh over the first ``num_devices`` of ``devices`` (default: every device
  of every host; a compile-only topology's devices for ``experiments.compile``)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(devices[:num_devices] if num_devices else devices, (DATA,))


def data_size(mesh: Optional[Mesh]) -> int:
  return 1 if mesh is None else mesh.shape[DATA]


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_shardings(state, mesh: Mesh):
  """Replicated everywhere but the replay buffer, whose leading (shard) axis goes on ``data``."""
  shardings = jax.tree_util.tree_map(lambda _: replicated(mesh), state)
  if state.replay is not None:
    shardings = shardings.replace(
        replay=jax.tree_util.tree_map(lambda _: batch_sharding(mesh), state.replay))
  return shardings
