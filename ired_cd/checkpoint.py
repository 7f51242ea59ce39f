"""Orbax checkpoints of the full train state (params, optimiser, EMA, replay buffer, key, step).

Writes are atomic (orbax writes to a temporary directory and renames it when
complete), so a run killed mid-write leaves the previous checkpoints intact. At
restore, a checkpoint that cannot be read is skipped with a warning and the
next older one is tried; the store of the training run (``writer``) moves it
aside to ``checkpoints_corrupt/<step>-<time>`` (never deleted), so the step is
free again for a new save. One written for another model (other parameter
shapes) is an error, not a damaged checkpoint. Sharded states are saved and
restored by every host; a state saved on N devices restores on M (the replay
buffer's N shards are regrouped into M).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional, Tuple

import flax
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from ired_cd import parallel
from ired_cd import replay as replay_lib


class IncompatibleCheckpoint(ValueError):
  """A readable checkpoint of another model: its parameter shapes differ from the state's."""


class UnreadableCheckpoint(RuntimeError):
  """The checkpoint asked for by step cannot be read."""


class CheckpointStore:
  """Keeps the newest ``keep`` checkpoints of a run under ``directory``.

  A ``writer`` (the one run that holds the workdir) creates the directory and
  moves unreadable checkpoints aside; a reader creates nothing and moves nothing.
  """

  def __init__(self, directory: str, keep: int = 3, writer: bool = False):
    self.directory = os.path.abspath(directory)
    self.keep = keep
    self.writer = writer
    self.manager = self._open()

  def _open(self):
    return ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=self.keep, create=self.writer))

  def steps(self):
    return sorted(self.manager.all_steps())

  def save(self, state, wait: bool = False) -> int:
    """Saves ``state`` under its own step (asynchronously unless ``wait``); a step already
    saved holds this state (training is deterministic) and is kept."""
    step = int(jax.device_get(state.step))
    if step not in self.manager.all_steps():
      self.manager.save(step, args=ocp.args.StandardSave(state))
    if wait:
      self.manager.wait_until_finished()
    return step

  def restore(self, like, step: Optional[int] = None) -> Tuple[Optional[object], Optional[int]]:
    """Restores into the structure, shapes and shardings of ``like``.

    With ``step=None`` the newest readable checkpoint is used; unreadable ones
    are skipped with a warning (and moved aside by a writer). Returns (state,
    step) or (None, None) if there is nothing to restore. Raises
    IncompatibleCheckpoint for a checkpoint of another model,
    UnreadableCheckpoint for an unreadable ``step``.
    """
    return self._newest_readable(lambda candidate: self._restore(like, candidate), step)

  def _newest_readable(self, read, step: Optional[int]):
    """(read(step), step) of the given step, or of the newest readable one (restore's rules)."""
    candidates = [step] if step is not None else self.steps()[::-1]
    for candidate in candidates:
      try:
        value, error = read(candidate), None
      except IncompatibleCheckpoint:
        raise
      except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is skipped
        value, error = None, f"{type(err).__name__}: {err}"
      if not parallel.any_process(error is not None):
        return value, candidate
      if step is not None:
        raise UnreadableCheckpoint(f"checkpoint at step {step} in {self.directory} is "
                                   f"unreadable ({error or 'on another host'})")
      self.manager.close()  # a failed read can leave the manager's item registry wrong
      aside = f"moved to {self._move_aside(candidate)}" if self.writer else "skipping it"
      logging.warning("Checkpoint at step %d in %s is unreadable (%s); %s.",
                      candidate, self.directory, error or "on another host", aside)
      self.manager = self._open()
    return None, None

  def _move_aside(self, step: int) -> str:
    """Moves checkpoint ``step`` to checkpoints_corrupt/<step>-<time> (process 0; all wait)."""
    aside = os.path.join(f"{self.directory}_corrupt",
                         f"{step}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      os.rename(os.path.join(self.directory, str(step)), aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    return aside

  def restore_params(self, like, step: Optional[int] = None, field: str = "ema_params"):
    """(params, step): only the train state's ``field`` (``ema_params`` or ``params``) of the
    newest readable (or the given) checkpoint, as ``restore`` picks it, in the shapes and
    shardings of ``like`` (a params tree); (None, None) without a checkpoint. The optimiser
    state and replay buffer are not read."""
    abstract = {field: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)}

    def read(candidate):
      self._check_params(like, candidate)
      return ocp.PyTreeCheckpointer().restore(
          epath.Path(self.directory, str(candidate), "default"),
          args=ocp.args.PyTreeRestore(item=abstract, partial_restore=True,
                                      restore_args=ocp.checkpoint_utils.construct_restore_args(
                                          abstract)))[field]

    return self._newest_readable(read, step)

  def _restore(self, like, step: int):
    self._check_params(like.params, step)
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

  def _saved_tree(self, step: int):
    # The item's own handler: a Checkpointer would also look for step metadata in the item's
    # directory, where orbax does not write it, and log a warning on every restore.
    return ocp.StandardCheckpointHandler().metadata(
        epath.Path(self.directory, str(step), "default")).tree

  def _saved_replay_shapes(self, step: int):
    replay = self._saved_tree(step).get("replay") or {}
    return {name: tuple(meta.shape) for name, meta in replay.items() if meta is not None}

  def _check_params(self, params_like, step: int) -> None:
    """Raises IncompatibleCheckpoint if the saved parameters' shapes differ from
    ``params_like``'s (a params tree)."""
    saved = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(
        self._saved_tree(step)["params"], sep="/").items()}
    wanted = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(
        params_like, sep="/").items()}
    if saved != wanted:
      differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
      raise IncompatibleCheckpoint(
          f"checkpoint at step {step} in {self.directory} holds another model (params "
          f"{differ[0]}: saved {saved.get(differ[0])}, this config {wanted.get(differ[0])}); "
          "use the config that trained it, or another --workdir")

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
