"""The training loop around the jitted step: evaluation, metrics, checkpoints, resume, health.

``train_and_evaluate(config, workdir)`` trains (or resumes) a run in
``workdir`` and returns its summary; ``evaluate_checkpoint`` scores a saved
run. Outputs in the workdir:

  config.json      the resolved config (a restart with other settings is refused)
  metrics.jsonl    one row per logged step: "step", "train/..." and "eval/..." keys
  tensorboard/     the same scalars as TensorBoard events
  checkpoints/     orbax checkpoints of the full train state
  summary.json     final eval/mse, eval/mse_ood, train/steps_per_sec, steps, wall clock
  curves.png       the run's curves (plotting.plot_curves), drawn when the run ends
  eval.json        written by evaluate_checkpoint
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Dict, Optional, Tuple

import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from ired_cd import checkpoint, evaluation, metrics_io, parallel, plotting, train
from ired_cd import config as config_lib

# Fields that name or describe a run: nothing reads them, so they never make two runs differ.
BOOKKEEPING_FIELDS = frozenset({
    "experiment_name", "description", "investigation", "ablation_stage", "notes", "output_dir"})
# Fields a resumed run may change: they steer logging and evaluation, not the
# trajectory of the train state.
RESUMABLE_FIELDS = frozenset({
    "train_steps", "eval_every", "eval_size", "eval_seed", "eval_inner_steps", "eval_chunk",
    "eval_return_x0", "log_every", "checkpoint_every", "keep_checkpoints",
    "collapse_after_steps"})
# The resumable fields that change a finished run's reported numbers.
EVALUATION_FIELDS = frozenset({"eval_size", "eval_seed", "eval_inner_steps"})

# A collapse is a landscape that had formed and went flat: ||dE/dy|| had reached
# FORMED_SCORE_FRACTION of sqrt(D) (a fresh model's is near 0) and is now below
# COLLAPSE_SCORE_FRACTION of sqrt(D) while the denoising MSE stays near its null value 1.
FORMED_SCORE_FRACTION = 0.5
COLLAPSE_SCORE_FRACTION = 0.05
COLLAPSE_MSE = 0.9
# Config fields that are tuples in the config and lists in config.json.
TUPLE_FIELDS = ("eval_inner_steps", "energy_loss_timestep_range")


class TrainingDiverged(RuntimeError):
  """The loss or the parameters became non-finite."""


def _config_dict(config) -> Dict:
  return json.loads(config.to_json_best_effort())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's resolved config (WORKDIR/config.json) as a ConfigDict, tuples restored."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no config.json in {workdir}: not a run directory")
  with open(path) as f:
    saved = config_lib.with_added_fields(json.load(f))
  for field in TUPLE_FIELDS:
    saved[field] = tuple(saved[field])
  return ml_collections.ConfigDict(saved)


def _saved_differences(config, workdir: str, ignore) -> Optional[Dict]:
  """{field: (saved, current)} where WORKDIR/config.json differs from ``config`` outside
  ``ignore``; None when the workdir holds no config.json."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = config_lib.with_added_fields(json.load(f))
  current = _config_dict(config)
  return {k: (saved.get(k), current.get(k)) for k in sorted(set(saved) | set(current))
          if saved.get(k) != current.get(k) and k not in ignore}


def check_workdir(config, workdir: str, allow_config_change: bool = False):
  """Refuses a workdir that holds a run of a different config (differing fields named).

  "Different" means a field that steers the train state's trajectory: bookkeeping
  and resumable fields may change.
  """
  differ = _saved_differences(config, workdir, BOOKKEEPING_FIELDS | RESUMABLE_FIELDS)
  if differ and not allow_config_change:
    details = ", ".join(f"{k}: {saved!r} -> {current!r}" for k, (saved, current) in differ.items())
    raise config_lib.ConfigError(
        f"workdir {workdir} holds a run of a different config ({details}). Use another "
        "--workdir, or pass --allow_config_change to resume it with the new values.")


def holds_outcome(config, workdir: str) -> bool:
  """True when ``workdir`` holds the outcome of exactly ``config``: nothing to redo.

  That is the same trajectory and the same evaluation (``EVALUATION_FIELDS``),
  completed at ``train_steps``, or diverged (training is deterministic: a rerun
  from its last checkpoint diverges again).
  """
  summary = plotting.read_json(os.path.join(workdir, "summary.json"))
  differ = _saved_differences(
      config, workdir, BOOKKEEPING_FIELDS | (RESUMABLE_FIELDS - EVALUATION_FIELDS))
  if summary is None or differ is None or differ:
    return False
  return (summary.get("status") == "completed" and summary.get("steps") == config.train_steps
          or summary.get("status") == "diverged")


class _StopSignal:
  """Turns SIGTERM / SIGINT into a flag the loop checks between host calls."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.received is not None:  # a second signal: stop now
      signal.signal(signum, self._previous[signum])
      signal.raise_signal(signum)
    self.received = signal.Signals(signum).name
    logging.warning("%s received: saving a checkpoint and stopping.", self.received)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def collapse_check(peak_score: float, score_norm: float, loss_mse: float,
                   out_dim: int) -> Tuple[float, bool]:
  """(running max of ||dE/dy|| with this row, whether this row shows a collapse).

  ``peak_score``: the running max of the rows before. A collapse needs a
  landscape that had formed (peak >= FORMED_SCORE_FRACTION sqrt(D)) and is flat
  now (||dE/dy|| < COLLAPSE_SCORE_FRACTION sqrt(D), MSE > COLLAPSE_MSE); a model
  that has not learned yet is not collapsed.
  """
  scale = math.sqrt(out_dim)
  collapsed = (peak_score >= FORMED_SCORE_FRACTION * scale
               and score_norm < COLLAPSE_SCORE_FRACTION * scale and loss_mse > COLLAPSE_MSE)
  return max(peak_score, score_norm), collapsed


def _peak_score(workdir: str, step: int) -> float:
  """The running max of train/score_norm over the logged rows up to ``step`` (0.0 if none)."""
  rows = metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return max((float(r["train/score_norm"]) for r in rows
              if "train/score_norm" in r and r["step"] <= step), default=0.0)


def describe_run(config, mesh, workdir: str, step: int) -> str:
  """The run's one-line description: what, on which devices, how big, from where."""
  devices = parallel.data_size(mesh)
  kind = mesh.devices.flat[0].device_kind
  hosts = f" on {jax.process_count()} hosts" if jax.process_count() > 1 else ""
  mesh_shape = ", ".join(f"{name}={size}" for name, size in mesh.shape.items())
  start = f"Resuming from the checkpoint at step {step}." if step else "Starting fresh."
  return (f"{config.mining_strategy}, {config.task} {config.rank}x{config.rank}: {devices} "
          f"{kind} device{'s' if devices > 1 else ''}{hosts} (mesh {mesh_shape}), batch "
          f"{config.batch_size} ({config.batch_size // devices} per device), "
          f"{config.matmul_dtype} matmuls, {config.train_steps} steps, workdir {workdir}. {start}")


def _write_curves(workdir: str) -> None:
  """Draws WORKDIR/curves.png if the run logged a row; a failure is a warning, not an error."""
  if not metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    return
  try:
    plotting.plot_curves(workdir)
  except Exception as err:  # noqa: BLE001 - the figure must not mask the run's own outcome
    logging.warning("curves.png not written: %s: %s", type(err).__name__, err)


def check_devices(config, mesh) -> None:
  """The global batch must split evenly over the data axis."""
  devices = parallel.data_size(mesh)
  if config.batch_size % devices:
    raise config_lib.ConfigError(
        f"config.batch_size: {config.batch_size} does not split over {devices} devices; use a "
        f"multiple of {devices}, e.g. {devices * max(1, config.batch_size // devices)}")


def _any_process(flag: bool) -> bool:
  """True on every host if ``flag`` is True on any (a stop must be taken together)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False,
                       progress: bool = True, defaults=None, num_devices=None) -> Dict:
  """Trains ``config`` in ``workdir`` (resuming what is there) and returns the summary.

  Data-parallel over the first ``num_devices`` devices (default: all devices of
  all hosts); host 0 writes metrics, config and summary, every host checkpoints.
  """
  config_lib.validate(config, defaults)
  mesh = parallel.make_mesh(num_devices)
  check_devices(config, mesh)
  main_process = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  check_workdir(config, workdir, allow_config_change)
  start_wall = time.time()
  exp = train.build_experiment(config)
  state = train.init_state(exp, mesh=mesh)
  store = checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  restored, restored_step = store.restore(state)
  step = 0
  if restored is not None:
    state, step = restored, restored_step
  description = describe_run(config, mesh, workdir, step)
  logging.info(description)
  if main_process:
    tqdm.tqdm.write(description)
    metrics_io.write_json_atomic(os.path.join(workdir, "config.json"), _config_dict(config))
  writer = metrics_io.MetricsWriter(workdir, resume_step=step) if main_process else None
  evaluator = evaluation.Evaluator(exp)
  baselines = evaluation.mean_predictor_mse(exp.task, evaluator.sets, evaluator.seed)
  inner_steps = tuple(config.eval_inner_steps)
  runners = {}
  train_time, timed_steps = 0.0, 0
  collapse_step = None
  peak_score = _peak_score(workdir, step)
  status = "completed"
  last_eval = None

  def evaluate():
    if not main_process:
      return {}
    params = jax.device_get(state.ema_params)  # replicated: every host holds a full copy
    result = {f"eval/{k}": v for k, v in evaluator(params, inner_steps).items()}
    result.update({f"eval/{k}": v for k, v in baselines.items()})
    return result

  bar = tqdm.tqdm(total=config.train_steps, initial=step, disable=not (progress and main_process),
                  dynamic_ncols=True, desc=config.mining_strategy)
  try:
    with _StopSignal() as stop:
      while step < config.train_steps and not _any_process(stop.received is not None):
        chunk = min(config.log_every - step % config.log_every, config.train_steps - step)
        if chunk not in runners:  # compiled ahead of time: the timing below is execution only
          runners[chunk] = train.make_multi_step(exp, chunk, mesh, state).lower(state).compile()
        tic = time.perf_counter()
        state, metrics = runners[chunk](state)
        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - tic
        train_time += elapsed
        timed_steps += chunk
        if metrics["nonfinite_steps"] or not metrics["params_finite"]:
          first = step + int(metrics["first_nonfinite"]) + 1
          good = store.steps()
          status = "diverged"
          message = (f"non-finite loss, gradient or parameters at step {first} (steps {step + 1}-"
                     f"{step + chunk}); last good checkpoint: "
                     f"{f'step {good[-1]} in {store.directory}' if good else 'none'}. "
                     "Consider energy_reg_weight > 0, langevin_grad_clip, or a smaller "
                     "energy_loss_weight.")
          if main_process:
            writer.write(step + chunk, {"train/nonfinite_steps": metrics["nonfinite_steps"]})
            _write_summary(workdir, config, step, last_eval, train_time, timed_steps,
                           start_wall, status, collapse_step, baselines, message)
          raise TrainingDiverged(message)
        step += chunk
        row = {f"train/{k}": v for k, v in metrics.items()
               if k not in ("nonfinite_steps", "params_finite", "first_nonfinite")}
        row["train/steps_per_sec"] = chunk / elapsed
        peak_before = peak_score
        peak_score, collapsed = collapse_check(peak_score, float(metrics["score_norm"]),
                                               float(metrics["loss_mse"]), exp.task.out_dim)
        if collapse_step is None and step >= config.collapse_after_steps and collapsed:
          collapse_step = step
          warning = (f"COLLAPSE at step {step}: ||dE/dy|| = {metrics['score_norm']:.3g} "
                     f"(healthy ~{math.sqrt(exp.task.out_dim):.0f}, up to {peak_before:.3g} "
                     f"before) while the denoising MSE is {metrics['loss_mse']:.3f}: the energy "
                     "landscape has gone flat (null predictor).")
          logging.warning(warning)
        if config.eval_every and step % config.eval_every == 0 or step == config.train_steps:
          last_eval = evaluate()
          row.update(last_eval)
        if main_process:
          writer.write(step, row)
        if step % config.checkpoint_every == 0:
          store.save(state)
        bar.update(chunk)
        postfix = dict(loss=f"{metrics['loss']:.4f}", sps=f"{chunk / elapsed:.1f}")
        if "energy_gap" in metrics:
          postfix["gap"] = f"{metrics['energy_gap']:.3g}"
        if last_eval:
          postfix["mse"] = f"{last_eval['eval/mse']:.4f}"
        if collapse_step is not None:
          postfix["COLLAPSED"] = collapse_step
        bar.set_postfix(postfix)
      store.save(state, wait=True)
      if step < config.train_steps:
        status = "interrupted"
        tqdm.tqdm.write(f"{stop.received or 'stop'}: checkpoint saved at step {step}; rerun "
                        "the same command to resume.")
        return {"status": status, "steps": step}
    if not main_process:
      return {"status": status, "steps": step}
    if last_eval is None or step != config.train_steps:
      last_eval = evaluate()
      writer.write(step, last_eval)
    return _write_summary(workdir, config, step, last_eval, train_time, timed_steps, start_wall,
                          status, collapse_step, baselines)
  finally:
    bar.close()
    if writer is not None:
      writer.close()
      _write_curves(workdir)
    store.close()


def _write_summary(workdir, config, step, last_eval, train_time, timed_steps, start_wall,
                   status, collapse_step, baselines, message=None) -> Dict:
  summary = {
      "status": status,
      "steps": step,
      "mining_strategy": config.mining_strategy,
      "seed": config.seed,
      "batch_size": config.batch_size,
      "train/steps_per_sec": timed_steps / train_time if train_time else None,
      "wall_clock_sec": time.time() - start_wall,
      "collapse_step": collapse_step,
  }
  summary.update({f"eval/{k}": v for k, v in baselines.items()})
  if last_eval:
    summary.update(last_eval)
  if message:
    summary["message"] = message
  metrics_io.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
  return summary


def evaluate_checkpoint(config, workdir: str, step: Optional[int] = None,
                        inner_steps=None, eval_size: Optional[int] = None,
                        use_ema: bool = True) -> Dict:
  """Evaluates the latest (or the given) checkpoint of ``workdir``; writes eval.json."""
  exp = train.build_experiment(config)
  store = checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  state, restored_step = store.restore(train.init_state(exp), step=step)
  store.close()
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {store.directory}")
  inner_steps = tuple(inner_steps or config.eval_inner_steps)
  evaluator = evaluation.Evaluator(exp, size=eval_size)
  params = state.ema_params if use_ema else state.params
  result = {f"eval/{k}": v for k, v in evaluator(params, inner_steps).items()}
  result.update({f"eval/{k}": v for k, v in
                 evaluation.mean_predictor_mse(exp.task, evaluator.sets, evaluator.seed).items()})
  result.update(step=restored_step, eval_size=evaluator.size, inner_steps=list(inner_steps),
                params="ema" if use_ema else "online")
  metrics_io.write_json_atomic(os.path.join(workdir, "eval.json"), result)
  return result

