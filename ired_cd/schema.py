"""The mining strategies' registry, config validation, and a run's saved config read back.

``STRATEGY_REGISTRY`` is the one home of what each strategy trains and which
switches define it; ``apply_strategy`` and ``validate`` read it.
``validate(config, defaults)`` runs before anything is compiled or written and
raises ``ConfigError`` naming the bad field and what it may be.
``load_config(workdir)`` reads the config.json a run wrote.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import re
from typing import Mapping, Optional

import ml_collections

from ired_cd import model, tasks


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A mining strategy: the energy term it adds to the denoising loss, and its switches.

  energy_term: None (denoising only), ``nce`` (the original's NCE on 3x-noise
  negatives) or ``cd`` (guide sections A-F). descent: the NCE negatives take
  ``ired_descent_steps`` steps of energy descent. stage: the guide's stage
  switches (q202, q203, q204) that ``apply_strategy`` sets.
  """

  energy_term: Optional[str] = None
  descent: bool = False
  stage: Mapping[str, bool] = dataclasses.field(default_factory=dict)


def _stage(replay: bool, full: bool) -> dict:
  return dict(use_replay_buffer=replay, use_residual_filter=full, use_energy_schedule=full,
              use_timestep_range=full)


STRATEGY_REGISTRY = {
    "none": Strategy(),
    "nce_random": Strategy("nce"),
    "ired": Strategy("nce", descent=True),
    "cd_langevin": Strategy("cd", stage=_stage(replay=False, full=False)),
    "cd_langevin_replay": Strategy("cd", stage=_stage(replay=True, full=False)),
    "cd_full": Strategy("cd", stage=_stage(replay=True, full=True)),
}
STRATEGIES = tuple(STRATEGY_REGISTRY)
CD_STRATEGIES = tuple(n for n, s in STRATEGY_REGISTRY.items() if s.energy_term == "cd")

# The switches of an energy term, each with its value when off: a strategy without
# that term reads none of them, so validate refuses them on and apply_strategy
# turns them off.
ENERGY_SWITCHES = dict(energy_reg_weight=0.0, log_grad_conflict=False)  # nce and cd
DESCENT_SWITCHES = dict(ired_descent_clamp="per_sample")  # the strategies with descent (ired)
CD_SWITCHES = dict(
    use_replay_buffer=False, use_residual_filter=False, use_energy_schedule=False,
    use_timestep_range=False, replay_store_condition=False, langevin_grad_clip=0.0,
    cd_loss="linear", cd_margin=0.0, cd_negatives="chain", energy_grad_surgery="none",
    energy_grad_max_ratio=0.0)

REPLAY_MIXING = ("sample", "batch")
# per_sample: each sample's own bound 2 sqrt(abar_t) | first_sample: sample 0's for the whole
# batch (the original's quirk, the reference's per_sample_clamp=False).
DESCENT_CLAMPS = ("per_sample", "first_sample")
CD_LOSSES = ("linear", "logistic")
CD_NEGATIVES = ("chain", "renoised", "denoised")
GRAD_SURGERY = ("none", "project")
LR_SCHEDULES = ("constant", "cosine")
# Composed energies (composed.ClauseEnergy, EdgeEnergy): the task each one needs, its parts.
COMPOSED_TASKS = {"clauses": ("sat", "one energy per clause of a 3-SAT formula"),
                  "edges": ("colouring", "one energy per edge of a graph to colour")}
ENERGY_MODELS = ("mlp",) + tuple(COMPOSED_TASKS)  # model.EnergyMLP, then the composed ones


# Fields added after runs were first written, with the value that reproduces those runs (as
# config.json holds it: tuples as lists): a saved config.json without them means that value.
ADDED_FIELDS = {"matmul_dtype": "float32", "cd_loss": "linear", "cd_negatives": "chain",
                "cd_margin": 0.0, "energy_grad_surgery": "none", "energy_grad_max_ratio": 0.0,
                "log_grad_conflict": False, "learning_rate_schedule": "constant",
                "learning_rate_decay_steps": 100_000, "last_layer": "auto",
                "ired_descent_clamp": "per_sample", "sampler_state_weight": 0.0,
                "sat_variables": 20, "sat_clauses": [60, 80], "sat_clauses_ood": 91,
                "sat_train_instances": 20_000, "sat_solutions": 32, "graph_nodes": 20,
                "graph_colours": 3, "graph_degree": 3.0, "graph_degree_ood": 4.5,
                "energy_model": "mlp"}


# Config fields that are tuples in the config and lists in config.json.
TUPLE_FIELDS = ("eval_inner_steps", "energy_loss_timestep_range", "sat_clauses")


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's resolved config (WORKDIR/config.json) as a ConfigDict, tuples restored."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config.json in {workdir}: not a run directory")
  with open(path) as f:
    saved = from_saved(json.load(f))
  for field in TUPLE_FIELDS:
    saved[field] = tuple(saved[field])
  return ml_collections.ConfigDict(saved)


class ConfigError(ValueError):
  """A config field with a value it may not take."""


def ignored_switches(strategy: str) -> dict:
  """{switch: off value} of every switch that ``strategy``'s energy term does not read."""
  spec = STRATEGY_REGISTRY[strategy]
  return {**(CD_SWITCHES if spec.energy_term != "cd" else {}),
          **(ENERGY_SWITCHES if spec.energy_term is None else {}),
          **(DESCENT_SWITCHES if not spec.descent else {})}


def from_saved(saved: dict) -> dict:
  """A saved config.json's dict in the current fields.

  The ``ADDED_FIELDS`` it predates are filled in, and the switches its strategy
  ignores are read as off: runs written before validate refused them carry them
  on where the loss never read them (the ablation derives every strategy from one
  config), and off they describe the same run.
  """
  config = {**ADDED_FIELDS, **saved}
  if config.get("mining_strategy") in STRATEGY_REGISTRY:
    config.update(ignored_switches(config["mining_strategy"]))
  return config


def apply_strategy(config, strategy: str):
  """Sets ``mining_strategy``, turns off the switches it ignores and sets its stage's."""
  if strategy not in STRATEGY_REGISTRY:
    raise ConfigError(f"mining_strategy must be one of {STRATEGIES}, got {strategy!r}")
  config.mining_strategy = strategy
  config.update(ignored_switches(strategy))
  config.update(STRATEGY_REGISTRY[strategy].stage)
  return config


def _check(ok: bool, field: str, message: str):
  if not ok:
    raise ConfigError(f"config.{field}: {message}")


def check_overrides(argv, defaults) -> None:
  """Raises ConfigError for a ``--config.<field>`` in ``argv`` that ``defaults`` lacks.

  Names the field and the closest known ones; checked before absl parses the
  flags (ml_collections would raise a traceback from inside its parser).
  """
  for arg in argv:
    match = re.match(r"^--?(?:no)?config\.([^.=]+)", arg)
    if match and match.group(1) not in defaults:
      field = match.group(1)
      close = difflib.get_close_matches(field, list(defaults.keys()), n=3)
      hint = f"closest: {', '.join(close)}" if close else "every field is in configs/base.py"
      raise ConfigError(f"--config.{field}: no such config field ({hint})")


def validate(config, defaults=None):
  """Raises ConfigError on the first bad field. ``defaults``: the known keys."""
  if defaults is not None:
    unknown = sorted(set(config.keys()) - set(defaults.keys()))
    _check(not unknown, unknown[0] if unknown else "",
           f"unknown key(s) {unknown}; known keys: {sorted(defaults.keys())}")
  c = config
  _check(c.mining_strategy in STRATEGIES, "mining_strategy",
         f"must be one of {STRATEGIES}, got {c.mining_strategy!r}")
  _check(c.task in tasks.TASK_NAMES, "task", f"must be one of {tasks.TASK_NAMES}, got {c.task!r}")
  _validate_task(c, defaults)
  _check(c.matmul_dtype in model.MATMUL_DTYPES, "matmul_dtype",
         f"must be one of {model.MATMUL_DTYPES}, got {c.matmul_dtype!r}")
  _check(c.last_layer in model.LAST_LAYERS, "last_layer",
         f"must be one of {model.LAST_LAYERS}, got {c.last_layer!r}")
  _check(c.energy_model in ENERGY_MODELS, "energy_model",
         f"must be one of {ENERGY_MODELS}, got {c.energy_model!r}")
  if c.energy_model in COMPOSED_TASKS:
    task, parts = COMPOSED_TASKS[c.energy_model]
    _check(c.task == task, "energy_model", f"{c.energy_model!r} composes {parts} (task "
           f"{task!r}); this config's task is {c.task!r}: use 'mlp'")
  for field in ("batch_size", "train_steps", "diffusion_steps", "hidden_dim",
                "time_embedding_dim", "eval_size", "eval_chunk", "log_every",
                "checkpoint_every", "keep_checkpoints", "replay_buffer_size",
                "replay_buffer_buckets", "ema_update_every", "learning_rate_decay_steps"):
    value = c[field]
    _check(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
           f"must be a positive integer, got {value!r}")
  _check(c.time_embedding_dim % 2 == 0 and c.time_embedding_dim >= 4, "time_embedding_dim",
         f"must be even and >= 4, got {c.time_embedding_dim}")
  _check(c.eval_every >= 0, "eval_every", f"must be >= 0 (0: only at the end), got {c.eval_every}")
  for field in ("eval_every", "checkpoint_every"):
    _check(c[field] % c.log_every == 0, field,
           f"must be a multiple of log_every={c.log_every} (the host sees the state only "
           f"every log_every steps), got {c[field]}")
  _check(c.collapse_after_steps >= 0, "collapse_after_steps",
         f"must be >= 0, got {c.collapse_after_steps}")
  for field in ("learning_rate", "grad_clip_norm"):
    _check(math.isfinite(c[field]) and c[field] > 0, field,
           f"must be finite and > 0, got {c[field]!r}")
  for field in ("adam_b1", "adam_b2", "ema_decay"):
    _check(0.0 <= c[field] < 1.0, field, f"must lie in [0, 1), got {c[field]!r}")
  for field in ("mining_opt_steps", "ired_descent_steps", "energy_loss_warmup_steps",
                "ema_update_after_step"):
    _check(isinstance(c[field], int) and c[field] >= 0, field,
           f"must be a non-negative integer, got {c[field]!r}")
  inner = tuple(c.eval_inner_steps)
  _check(len(inner) > 0 and all(isinstance(k, int) and k >= 0 for k in inner),
         "eval_inner_steps", f"must be a non-empty tuple of integers >= 0, got {inner!r}")
  for field, allowed in (("cd_loss", CD_LOSSES), ("cd_negatives", CD_NEGATIVES),
                        ("energy_grad_surgery", GRAD_SURGERY),
                        ("ired_descent_clamp", DESCENT_CLAMPS),
                        ("learning_rate_schedule", LR_SCHEDULES)):
    _check(c[field] in allowed, field, f"must be one of {allowed}, got {c[field]!r}")
  for field in ("mining_noise_scale", "langevin_sigma_multiplier", "langevin_grad_clip",
                "energy_reg_weight", "energy_loss_weight", "energy_loss_max_weight",
                "nce_loss_weight", "ired_noise_scale", "energy_grad_max_ratio", "cd_margin",
                "sampler_state_weight"):
    _check(c[field] >= 0, field, f"must be >= 0, got {c[field]!r}")
  _check(c.cd_margin == 0 or c.cd_loss == "logistic", "cd_margin",
         f"needs cd_loss='logistic' (a margin only shifts the linear loss), got cd_margin="
         f"{c.cd_margin} with cd_loss={c.cd_loss!r}")

  strategy = c.mining_strategy
  term = STRATEGY_REGISTRY[strategy].energy_term
  for field, off in ignored_switches(strategy).items():
    readers = ("the CD strategies" if field in CD_SWITCHES else
               "the strategies with training descent" if field in DESCENT_SWITCHES else
               "the strategies with an energy term")
    _check(c[field] == off, field, f"mining_strategy={strategy!r} does not read it (only "
           f"{readers} do): must be {off!r} for {strategy}, got {c[field]!r}")
  if term == "cd":
    for field in ("use_langevin", "use_cd_loss"):
      _check(c[field], field, f"must be True for {strategy} (it defines the CD strategies); "
             "for negatives without a Langevin chain use mining_strategy='nce_random'")
    _check(c.mining_opt_steps >= 1, "mining_opt_steps",
           f"must be >= 1 for {strategy}, got {c.mining_opt_steps}")
    preset = STRATEGY_REGISTRY[strategy].stage
    differ = {k: c[k] for k, v in preset.items() if c[k] != v}
    if differ:
      logging.warning("%s with switches %s that differ from the stage's preset %s: "
                      "running as configured.", strategy, differ, preset)
  if c.use_replay_buffer:
    _check(0.0 <= c.replay_sample_prob <= 1.0, "replay_sample_prob",
           f"must lie in [0, 1], got {c.replay_sample_prob}")
    _check(c.replay_mixing in REPLAY_MIXING, "replay_mixing",
           f"must be one of {REPLAY_MIXING}, got {c.replay_mixing!r}")
  if c.use_residual_filter:
    threshold = tasks.from_config(c).filter_threshold
    _check(c.residual_tau is None or threshold is None, "residual_tau",
           f"task {c.task!r} filters by its verifier (negatives with no violation are right "
           f"answers, dropped: a fixed cut at {threshold}); residual_tau is for the continuous "
           f"tasks, got {c.residual_tau}")
    if c.residual_tau is None:
      _check(0.0 <= c.residual_filter_quantile <= 1.0, "residual_filter_quantile",
             f"must lie in [0, 1], got {c.residual_filter_quantile}")
    else:
      _check(c.residual_tau >= 0, "residual_tau", f"must be >= 0 or None, got {c.residual_tau}")
  if c.use_energy_schedule:
    _check(c.energy_loss_warmup_steps >= 1, "energy_loss_warmup_steps",
           f"must be >= 1 with use_energy_schedule, got {c.energy_loss_warmup_steps}")
  if c.use_timestep_range:
    bounds = tuple(c.energy_loss_timestep_range)
    _check(len(bounds) == 2 and 0.0 <= bounds[0] <= bounds[1] <= 1.0,
           "energy_loss_timestep_range",
           f"must be (lo, hi) with 0 <= lo <= hi <= 1 (an empty range otherwise), got {bounds}")
  return config


def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _validate_task(c, defaults) -> None:
  """The task's own fields; another task's fields at their defaults (``defaults`` given)."""
  own = set(tasks.fields_of(c.task))
  if defaults is not None:
    for name in tasks.TASK_NAMES:
      for field in set(tasks.fields_of(name)) - own:
        _check(tuple(c[field]) == tuple(defaults[field]) if field in TUPLE_FIELDS
               else c[field] == defaults[field], field,
               f"task {c.task!r} does not read it (only {name} does): must be "
               f"{defaults[field]!r} for {c.task}, got {c[field]!r}")
  for field in ("rank", "sat_variables", "sat_clauses_ood", "sat_train_instances",
                "sat_solutions", "graph_nodes"):
    if field in own:
      _check(_positive_int(c[field]), field, f"must be a positive integer, got {c[field]!r}")
  if c.task == "sat":
    _check(c.sat_variables <= 127, "sat_variables",
           f"at most 127 (literals are stored as int8), got {c.sat_variables}")
    lo_hi = tuple(c.sat_clauses)
    _check(len(lo_hi) == 2 and all(_positive_int(m) for m in lo_hi) and lo_hi[0] <= lo_hi[1],
           "sat_clauses", f"must be (lo, hi), positive integers with lo <= hi, got {lo_hi}")
  if c.task == "colouring":
    _check(_positive_int(c.graph_colours) and c.graph_colours >= 2, "graph_colours",
           f"must be an integer >= 2, got {c.graph_colours!r}")
    _check(c.graph_nodes >= 2, "graph_nodes", f"must be >= 2, got {c.graph_nodes}")
    most = (c.graph_nodes - 1) * (c.graph_colours - 1) / c.graph_colours
    for field in ("graph_degree", "graph_degree_ood"):
      _check(0 < c[field] <= most, field,
             f"must lie in (0, {most:g}] (a planted {c.graph_colours}-colourable graph on "
             f"{c.graph_nodes} nodes has at most that mean degree), got {c[field]!r}")


def timestep_range(bounds, num_timesteps: int):
  """The guide's integer range: (int(lo (T-1)), int(hi (T-1))), both ends included."""
  lo, hi = bounds
  return int(lo * (num_timesteps - 1)), int(hi * (num_timesteps - 1))
