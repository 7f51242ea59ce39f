"""The tasks, one module each behind one interface (``base.Task``), and the config's choice.

  inverse, addition, lowrank   IRED's continuous matrix tasks (rank x rank)
  sat                          random 3-SAT, satisfiable instances made with a SAT solver
  colouring                    k-colouring of planted colourable graphs

``from_config(config)`` builds the config's task once; the loop, the evaluation, the CD
filter and solve ask it and never test its name. Each module's ``FIELDS`` are the config
fields it reads (``schema.validate`` refuses another task's fields set away from their
defaults).
"""

from __future__ import annotations

from ired_cd.tasks import addition, colouring, inverse, lowrank, sat
from ired_cd.tasks.base import (SPLITS, ContinuousTask, DiscreteTask, InstanceError,  # noqa: F401
                                Metric, Task)

# name -> (task class, its module's config fields, the prefix those fields carry)
REGISTRY = {
    "inverse": (inverse.Inverse, inverse.FIELDS, ""),
    "addition": (addition.Addition, addition.FIELDS, ""),
    "lowrank": (lowrank.Lowrank, lowrank.FIELDS, ""),
    "sat": (sat.Sat, sat.FIELDS, "sat_"),
    "colouring": (colouring.Colouring, colouring.FIELDS, "graph_"),
}
TASK_NAMES = tuple(REGISTRY)


def fields_of(name: str):
  """The config fields task ``name`` reads."""
  return REGISTRY[name][1]


def get_task(name: str, **settings) -> Task:
  """The task ``name`` with ``settings`` (its fields without their config prefix, e.g.
  ``rank=5``; the rest at their defaults)."""
  if name not in REGISTRY:
    raise ValueError(f"task must be one of {TASK_NAMES}, got {name!r}")
  return REGISTRY[name][0](**settings)


def from_config(config) -> Task:
  """The config's task, its fields read from the config (a ConfigDict, or a config.json's
  dict in the current fields: schema.from_saved)."""
  _, fields, prefix = REGISTRY[config["task"]]
  return get_task(config["task"], **{f[len(prefix):]: _hashable(config[f]) for f in fields})


def _hashable(value):
  return tuple(value) if isinstance(value, (list, tuple)) else value
