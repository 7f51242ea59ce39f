"""Orbax checkpoints of the full train state (params, optimiser, EMA, replay buffer, key, step).

Writes are atomic (orbax writes to a temporary directory and renames it when
complete), so a run killed mid-write leaves the previous checkpoints intact. At
restore, a checkpoint that cannot be read is skipped with a warning and the
next older one is tried. Sharded states are saved and restored by every host;
a state saved on N devices restores on M (the replay buffer's N shards are
regrouped into M).
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

import jax
import orbax.checkpoint as ocp
from etils import epath

from ired_cd import replay as replay_lib


class CheckpointStore:
  """Keeps the newest ``keep`` checkpoints of a run under ``directory``."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self.manager = self._open()

  def _open(self):
    return ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True))

  def steps(self):
    return sorted(self.manager.all_steps())

  def save(self, state, wait: bool = False) -> int:
    """Saves ``state`` under its own step (asynchronously unless ``wait``)."""
    step = int(jax.device_get(state.step))
    if step not in self.manager.all_steps():
      self.manager.save(step, args=ocp.args.StandardSave(state))
    if wait:
      self.manager.wait_until_finished()
    return step

  def restore(self, like, step: Optional[int] = None) -> Tuple[Optional[object], Optional[int]]:
    """Restores into the structure, shapes and shardings of ``like``.

    With ``step=None`` the newest readable checkpoint is used; unreadable ones
    are skipped with a warning. Returns (state, step) or (None, None) if there
    is nothing to restore.
    """
    candidates = [step] if step is not None else self.steps()[::-1]
    for candidate in candidates:
      try:
        return self._restore(like, candidate), candidate
      except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is skipped
        if step is not None:
          raise
        logging.warning("Checkpoint at step %d in %s is unreadable (%s: %s); skipping it.",
                        candidate, self.directory, type(err).__name__, err)
        self.manager.close()  # a failed read can leave the manager's item registry wrong
        self.manager = self._open()
    return None, None

  def restore_params(self, like, step: Optional[int] = None, field: str = "ema_params"):
    """(params, step): only the train state's ``field`` (``ema_params`` or ``params``) of the
    newest (or the given) checkpoint, in the shapes and shardings of ``like`` (a params tree);
    (None, None) without a checkpoint. The optimiser state and replay buffer are not read."""
    step = self.steps()[-1] if step is None and self.steps() else step
    if step is None:
      return None, None
    abstract = {field: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)}
    restored = ocp.PyTreeCheckpointer().restore(
        epath.Path(self.directory, str(step), "default"),
        args=ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                    restore_args=ocp.checkpoint_utils.construct_restore_args(
                                        abstract)))
    return restored[field], step

  def _restore(self, like, step: int):
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    saved_replay = self._saved_replay_shapes(step)
    if like.replay is None or saved_replay["storage"] == like.replay.storage.shape:
      return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    # Saved with another shard count: read the buffer whole, regroup it on the host.
    whole = jax.sharding.NamedSharding(like.replay.storage.sharding.mesh,
                                       jax.sharding.PartitionSpec()) \
        if isinstance(like.replay.storage.sharding, jax.sharding.NamedSharding) \
        else like.replay.storage.sharding
    replay_target = like.replay.replace(**{
        name: jax.ShapeDtypeStruct(shape, getattr(like.replay, name).dtype, sharding=whole)
        for name, shape in saved_replay.items()})
    state = self.manager.restore(
        step, args=ocp.args.StandardRestore(abstract.replace(replay=replay_target)))
    num_shards, capacity = like.replay.storage.shape[0], like.replay.storage.shape[2]
    regrouped = replay_lib.reshard(jax.device_get(state.replay), num_shards,
                                   num_shards * capacity)
    shardings = jax.tree_util.tree_map(lambda a: a.sharding, like.replay)
    logging.info("Replay buffer regrouped from %d to %d shards.",
                 saved_replay["storage"][0], num_shards)
    return state.replace(replay=jax.device_put(regrouped, shardings))

  def _saved_replay_shapes(self, step: int):
    # The item's own handler: a Checkpointer would also look for step metadata in the item's
    # directory, where orbax does not write it, and log a warning on every restore.
    tree = ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory, str(step), "default")).tree
    replay = tree.get("replay") or {}
    return {name: tuple(meta.shape) for name, meta in replay.items() if meta is not None}

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
