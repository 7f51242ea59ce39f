"""Orbax checkpoints of the full train state (params, optimiser, EMA, replay buffer, key, step).

Writes are atomic (orbax writes to a temporary directory and renames it when
complete), so a run killed mid-write leaves the previous checkpoints intact. At
restore, a checkpoint that cannot be read is skipped with a warning and the
next older one is tried.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Tuple

import jax
import orbax.checkpoint as ocp


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

  def wait(self):
    self.manager.wait_until_finished()

  def restore(self, like, step: Optional[int] = None) -> Tuple[Optional[object], Optional[int]]:
    """Restores into the structure, shapes and shardings of ``like``.

    With ``step=None`` the newest readable checkpoint is used; unreadable ones
    are skipped with a warning. Returns (state, step) or (None, None) if there
    is nothing to restore.
    """
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    candidates = [step] if step is not None else self.steps()[::-1]
    for candidate in candidates:
      try:
        state = self.manager.restore(candidate, args=ocp.args.StandardRestore(abstract))
        return state, candidate
      except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is skipped
        if step is not None:
          raise
        logging.warning("Checkpoint at step %d in %s is unreadable (%s: %s); skipping it.",
                        candidate, self.directory, type(err).__name__, err)
        self.manager.close()  # a failed read can leave the manager's item registry wrong
        self.manager = self._open()
    return None, None

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
