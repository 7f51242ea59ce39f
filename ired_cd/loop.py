"""The training loop around the jitted step: evaluation, metrics, checkpoints, resume, health.

``train_and_evaluate(config, workdir)`` trains (or resumes) a run in
``workdir`` and returns its summary; ``evaluate_checkpoint`` scores a saved
run. Outputs in the workdir:

  config.json      the resolved config (a restart with other settings is refused)
  metrics.jsonl    one row per logged step: "step", "train/..." and "eval/..." keys
  tensorboard/     the same scalars as TensorBoard events
  checkpoints/     orbax checkpoints of the full train state (checkpoints_corrupt/: unreadable
                   ones moved aside)
  .lock            held while a run writes here (workdir_lock); names the holder
  summary.json     RunRecord.summary(): status, steps, the final evaluation (the task's metrics,
                   eval/mse or eval/solved ..., beside its baselines), steps/s, wall clock,
                   collapse_step, failed_step
  dataset/         the task's training data where it is built on the host (3-SAT: formulas
                   and their solutions), made once per seed
  curves.png       the run's curves (plotting.plot_curves), drawn when the run ends
  eval.json        written by evaluate_checkpoint
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Dict, Optional, Tuple

import jax
import ml_collections
import tqdm

from ired_cd import checkpoint, evaluation, metrics_io, parallel, tasks, train
from ired_cd import workdir_lock
from ired_cd import schema

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


# What a run or an evaluation refuses with one line: the workdir's state, not a bug.
REFUSALS = (schema.ConfigError, FileNotFoundError, workdir_lock.WorkdirBusy,
            checkpoint.IncompatibleCheckpoint, checkpoint.UnreadableCheckpoint,
            metrics_io.MalformedFile)
# What to change in a config whose run diverged.
DIVERGENCE_FIXES = "energy_reg_weight > 0, langevin_grad_clip, or a smaller energy_loss_weight"


class TrainingDiverged(RuntimeError):
  """The loss or the parameters became non-finite (or did, in the run a workdir holds)."""


def _config_dict(config) -> Dict:
  return json.loads(config.to_json_best_effort())


def _saved_differences(config, workdir: str, ignore) -> Optional[Dict]:
  """{field: (saved, current)} where WORKDIR/config.json differs from ``config`` outside
  ``ignore``; None when the workdir holds no config.json."""
  saved = metrics_io.read_json(os.path.join(workdir, "config.json"))
  if saved is None:
    return None
  saved = schema.from_saved(saved)
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
    raise schema.ConfigError(
        f"workdir {workdir} holds a run of a different config ({details}). Use another "
        "--workdir, or pass --allow_config_change to use it with the new values.")


def holds_outcome(config, workdir: str) -> bool:
  """True when ``workdir`` holds the outcome of exactly ``config``: nothing to redo.

  That is the same trajectory and the same evaluation (``EVALUATION_FIELDS``),
  completed at ``train_steps``, or diverged (training is deterministic: a rerun
  from its last checkpoint diverges again).
  """
  summary = metrics_io.read_json(os.path.join(workdir, "summary.json"))
  differ = _saved_differences(
      config, workdir, BOOKKEEPING_FIELDS | (RESUMABLE_FIELDS - EVALUATION_FIELDS))
  if summary is None or differ is None or differ:
    return False
  return (summary.get("status") == "completed" and summary.get("steps") == config.train_steps
          or summary.get("status") == "diverged")


def _nonfinite(quantity: str, step: int, bad_steps: int, start: int, end: int) -> str:
  """Where and how a run diverged, in words."""
  return (f"non-finite {quantity} at step {step} ({bad_steps} of steps {start}-{end} with a "
          "non-finite loss or gradient)")


def check_diverged(config, workdir: str) -> None:
  """Raises TrainingDiverged when ``workdir`` holds this run diverged, saying where and how
  (from summary.json and the last row of metrics.jsonl) and what to change: training is
  deterministic, so a rerun would diverge again. This run: the same trajectory
  (``check_workdir``'s fields), diverged within ``train_steps``. Raises MalformedFile,
  naming the file, where those records are damaged."""
  path = os.path.join(workdir, "summary.json")
  summary = metrics_io.read_json(path)
  if summary is None or summary.get("status") != "diverged":
    return
  differ = _saved_differences(config, workdir, BOOKKEEPING_FIELDS | RESUMABLE_FIELDS)
  if differ is None or differ:
    return
  failed = summary.get("failed_step")
  if not isinstance(failed, int):
    raise metrics_io.MalformedFile(f"{path}: a diverged run without its failed_step; restore "
                                   "it, or start afresh in another workdir")
  if failed > config.train_steps:
    return
  metrics = os.path.join(workdir, "metrics.jsonl")
  rows = metrics_io.read_jsonl(metrics)
  if (metrics_io.has_partial_line(metrics) or not rows or rows[-1]["step"] < failed
      or "train/nonfinite_steps" not in rows[-1]):
    raise metrics_io.MalformedFile(
        f"{metrics}: its last row is not the divergence at step {failed} that summary.json "
        "records (cut short or edited); restore it, or start afresh in another workdir")
  quantity = summary.get("failed_quantity", "loss, gradient or parameters")  # older runs: any
  start = rows[-2]["step"] + 1 if len(rows) > 1 else 1
  how = _nonfinite(quantity, failed, int(rows[-1]["train/nonfinite_steps"]), start,
                   rows[-1]["step"])
  raise TrainingDiverged(
      f"{workdir} holds this run: {how}. Rerun unchanged it diverges again, so nothing was "
      f"trained: change the config ({DIVERGENCE_FIXES}) and pass --allow_config_change to "
      "resume from its last good checkpoint, or use another --workdir.")


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
  return (f"{config.mining_strategy}, {tasks.from_config(config).describe()}: {devices} "
          f"{kind} device{'s' if devices > 1 else ''}{hosts} (mesh {mesh_shape}), batch "
          f"{config.batch_size} ({config.batch_size // devices} per device), "
          f"{config.matmul_dtype} matmuls, {config.train_steps} steps, workdir {workdir}. {start}")


def _write_curves(workdir: str) -> None:
  """Draws WORKDIR/curves.png if the run logged a row; a failure is a warning, not an error.

  Plotting (matplotlib) is imported here, when the run ends: training never loads it.
  """
  if not metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    return
  try:
    from ired_cd import plotting  # noqa: PLC0415
    plotting.plot_curves(workdir)
  except Exception as err:  # noqa: BLE001 - the figure must not mask the run's own outcome
    logging.warning("curves.png not written: %s: %s", type(err).__name__, err)


def check_devices(config, mesh) -> None:
  """The global batch must split evenly over the data axis."""
  devices = parallel.data_size(mesh)
  if config.batch_size % devices:
    raise schema.ConfigError(
        f"config.batch_size: {config.batch_size} does not split over {devices} devices; use a "
        f"multiple of {devices}, e.g. {devices * max(1, config.batch_size // devices)}")


@dataclasses.dataclass
class RunRecord:
  """What a run has done so far; ``summary()`` is its summary.json."""

  config: ml_collections.ConfigDict
  step: int
  baselines: Dict[str, float]  # the task's trivial baselines (Evaluator.baselines)
  peak_score: float = 0.0  # running max of ||dE/dy|| (collapse_check)
  started: float = dataclasses.field(default_factory=time.time)
  status: str = "completed"  # completed | interrupted | diverged
  train_seconds: float = 0.0  # execution time of the timed steps, compilation excluded
  timed_steps: int = 0
  collapse_step: Optional[int] = None
  failed_step: Optional[int] = None  # the first non-finite step of a diverged run
  failed_quantity: Optional[str] = None  # what went non-finite first: loss, gradient, parameters
  message: Optional[str] = None
  last_eval: Optional[Dict[str, float]] = None

  def advance(self, steps: int, seconds: float) -> None:
    self.step += steps
    self.train_seconds += seconds
    self.timed_steps += steps

  def summary(self) -> Dict:
    c = self.config
    summary = {
        "status": self.status, "steps": self.step, "mining_strategy": c.mining_strategy,
        "seed": c.seed, "batch_size": c.batch_size,
        "train/steps_per_sec": self.timed_steps / self.train_seconds if self.train_seconds
                               else None,
        "wall_clock_sec": time.time() - self.started, "collapse_step": self.collapse_step,
        "failed_step": self.failed_step, "failed_quantity": self.failed_quantity,
        **self.baselines, **(self.last_eval or {})}
    if self.message:
      summary["message"] = self.message
    return summary


class _CompiledSteps:
  """``make_multi_step`` compiled ahead of time once per chunk length, and timed; ``data``:
  the task's training data on the devices (train.device_data)."""

  def __init__(self, setup, mesh, data):
    self._setup, self._mesh, self._data, self._compiled = setup, mesh, data, {}

  def __call__(self, state, chunk: int):
    """(state, metrics, health, execution seconds) after ``chunk`` steps, on the host."""
    if chunk not in self._compiled:
      self._compiled[chunk] = train.make_multi_step(
          self._setup, chunk, self._mesh, state).lower(state, data=self._data).compile()
    tic = time.perf_counter()
    state, metrics, health = self._compiled[chunk](state, data=self._data)
    metrics, health = jax.device_get((metrics, health))
    return state, metrics, health, time.perf_counter() - tic


def _divergence(health, step: int, chunk: int, store) -> Tuple[int, str, str]:
  """(first non-finite step, the quantity non-finite first, the error message) of a chunk
  whose health flags failed."""
  bad_steps = int(health["nonfinite_steps"])
  if bad_steps:
    first = step + int(health["first_nonfinite"]) + 1
    quantity = "loss" if health["loss_nonfinite_first"] else "gradient"
  else:  # every loss and gradient finite, the parameters not after the chunk
    first, quantity = step + chunk, "parameters"
  good = store.steps()
  return first, quantity, (
      f"{_nonfinite(quantity, first, bad_steps, step + 1, step + chunk)}; last good "
      f"checkpoint: {f'step {good[-1]} in {store.directory}' if good else 'none'}. Consider "
      f"{DIVERGENCE_FIXES}.")


def _note_collapse(record: RunRecord, metrics, out_dim: int) -> None:
  """Updates the record's peak score; records (and warns of) the first collapse."""
  peak_before = record.peak_score
  record.peak_score, collapsed = collapse_check(
      peak_before, float(metrics["score_norm"]), float(metrics["loss_mse"]), out_dim)
  if (collapsed and record.collapse_step is None
      and record.step >= record.config.collapse_after_steps):
    record.collapse_step = record.step
    logging.warning(
        "COLLAPSE at step %d: ||dE/dy|| = %.3g (healthy ~%.0f, up to %.3g before) while the "
        "denoising MSE is %.3f: the energy landscape has gone flat (null predictor).",
        record.step, metrics["score_norm"], math.sqrt(out_dim), peak_before, metrics["loss_mse"])


def _progress(metrics, steps_per_sec: float, record: RunRecord, headline: str) -> Dict[str, str]:
  """The progress bar's postfix: loss, speed, energy gap, the last evaluation's ``headline``
  metric (e.g. 'eval/mse'), collapse."""
  postfix = dict(loss=f"{metrics['loss']:.4f}", sps=f"{steps_per_sec:.1f}")
  if "energy_gap" in metrics:
    postfix["gap"] = f"{metrics['energy_gap']:.3g}"
  if record.last_eval:
    postfix[headline.split("/")[-1]] = f"{record.last_eval[headline]:.4f}"
  if record.collapse_step is not None:
    postfix["COLLAPSED"] = str(record.collapse_step)
  return postfix


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False,
                       progress: bool = True, defaults=None, num_devices=None) -> Dict:
  """Trains ``config`` in ``workdir`` (resuming what is there) and returns the summary.

  Data-parallel over the first ``num_devices`` devices (default: all devices of
  all hosts); host 0 writes metrics, config and summary, every host checkpoints.
  The workdir is held (workdir_lock) throughout: a second run on it raises
  WorkdirBusy. A completed run of this config (holds_outcome) whose final
  checkpoint reads is left untouched: its saved summary is returned.
  """
  schema.validate(config, defaults)
  mesh = parallel.make_mesh(num_devices)
  check_devices(config, mesh)
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock.hold(workdir):
    check_workdir(config, workdir, allow_config_change)
    # A malformed metrics.jsonl stops the run here, before anything is written.
    metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    check_diverged(config, workdir)
    return _train(config, workdir, mesh, progress)


def _completed(config, workdir: str, restored_step: Optional[int]) -> Optional[Dict]:
  """The saved summary if ``workdir`` holds ``config`` completed (holds_outcome) and its final
  checkpoint was restored, after saying (on host 0) there is nothing to do; else None."""
  if restored_step != config.train_steps or not holds_outcome(config, workdir):
    return None
  summary = metrics_io.read_json(os.path.join(workdir, "summary.json"))
  if summary["status"] != "completed":
    return None
  if jax.process_index() == 0:
    tqdm.tqdm.write(f"{workdir} holds this run, completed at step {summary['steps']}: nothing "
                    f"to do. To train further, pass --config.train_steps=N with N > "
                    f"{summary['steps']}.")
  return summary


def _train(config, workdir: str, mesh, progress: bool) -> Dict:
  """Trains ``config`` in the held ``workdir`` from its newest readable checkpoint."""
  main_process = jax.process_index() == 0
  setup = train.build_setup(config)
  state = train.init_state(setup, mesh=mesh)
  store = checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"), config.keep_checkpoints,
                                     writer=True)
  restored, restored_step = store.restore(state)
  completed = _completed(config, workdir, restored_step)
  if completed is not None:
    store.close()
    return completed
  if restored is not None:
    state = restored
  step = restored_step or 0
  description = describe_run(config, mesh, workdir, step)
  logging.info(description)
  if main_process:
    tqdm.tqdm.write(description)
    metrics_io.write_json_atomic(os.path.join(workdir, "config.json"), _config_dict(config))
    summary = os.path.join(workdir, "summary.json")
    if (metrics_io.read_json(summary) or {}).get("status") == "diverged":
      os.remove(summary)  # the record of an attempt this one replaces (check_diverged)
  writer = metrics_io.MetricsWriter(workdir, resume_step=step) if main_process else None
  data = setup.task.build_data(config.seed, config.ood, os.path.join(workdir, "dataset"))
  evaluator = evaluation.Evaluator(setup, mesh=mesh)
  record = RunRecord(config, step, evaluator.baselines, _peak_score(workdir, step))
  run_chunk = _CompiledSteps(setup, mesh, train.device_data(data, mesh))

  def evaluate():  # on every host: the sampler runs on the mesh, on the EMA params in place
    return evaluator.report(state.ema_params, tuple(config.eval_inner_steps))

  bar = tqdm.tqdm(total=config.train_steps, initial=step, disable=not (progress and main_process),
                  dynamic_ncols=True, desc=config.mining_strategy)
  try:
    with _StopSignal() as stop:
      while (record.step < config.train_steps
             and not parallel.any_process(stop.received is not None)):
        chunk = min(config.log_every - record.step % config.log_every,
                    config.train_steps - record.step)
        state, metrics, health, seconds = run_chunk(state, chunk)
        if health["nonfinite_steps"] or not health["params_finite"]:
          record.status = "diverged"
          record.failed_step, record.failed_quantity, record.message = _divergence(
              health, record.step, chunk, store)
          if main_process:
            writer.write(record.step + chunk,
                         {"train/nonfinite_steps": health["nonfinite_steps"]})
            metrics_io.write_json_atomic(os.path.join(workdir, "summary.json"), record.summary())
          raise TrainingDiverged(record.message)
        record.advance(chunk, seconds)
        _note_collapse(record, metrics, setup.task.out_dim)
        row = {**{f"train/{k}": v for k, v in metrics.items()},
               "train/steps_per_sec": chunk / seconds}
        if (config.eval_every and record.step % config.eval_every == 0
            or record.step == config.train_steps):
          record.last_eval = evaluate()
          row.update(record.last_eval)
        if main_process:
          writer.write(record.step, row)
        if record.step % config.checkpoint_every == 0:
          store.save(state)
        bar.update(chunk)
        bar.set_postfix(_progress(metrics, chunk / seconds, record,
                                  evaluation.headline_keys(setup.task)[0]))
      store.save(state, wait=True)
      if record.step < config.train_steps:
        record.status = "interrupted"
        tqdm.tqdm.write(f"{stop.received or 'stop'}: checkpoint saved at step {record.step}; "
                        "rerun the same command to resume.")
    if record.status == "interrupted":
      return {"status": record.status, "steps": record.step}
    if record.last_eval is None or record.step != config.train_steps:
      record.last_eval = evaluate()
      if main_process:
        writer.write(record.step, record.last_eval)
    if not main_process:
      return {"status": record.status, "steps": record.step}
    summary = record.summary()
    metrics_io.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return summary
  finally:
    bar.close()
    if writer is not None:
      writer.close()
      _write_curves(workdir)
    store.close()


def evaluate_checkpoint(config, workdir: str, step: Optional[int] = None,
                        inner_steps=None, eval_size: Optional[int] = None,
                        use_ema: bool = True,
                        particles: Optional[evaluation.Particles] = None) -> Dict:
  """Evaluates the latest (or the given) checkpoint of ``workdir`` on every device (only its
  EMA or online parameters are read); writes eval.json. ``particles``: also score that many
  trajectories per problem per pick (evaluation.Particles), at the first of ``inner_steps``.

  Raises FileNotFoundError, before anything is created, if there is no such
  checkpoint; holds the workdir (workdir_lock) while it reads and writes.
  """
  store = checkpoint.CheckpointStore(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
  try:
    saved = store.steps()
    if not saved or step not in saved + [None]:
      raise FileNotFoundError(
          f"no checkpoint in {store.directory}: train the run first" if not saved else
          f"--checkpoint_step={step}: no such checkpoint in {store.directory}; saved steps: "
          f"{', '.join(map(str, saved))}")
    with workdir_lock.hold(workdir):
      setup = train.build_setup(config)
      mesh = parallel.make_mesh()
      field = "ema_params" if use_ema else "params"
      params, restored_step = store.restore_params(
          getattr(train.abstract_state(setup, mesh), field), step=step, field=field)
      if params is None:
        raise FileNotFoundError(f"no readable checkpoint in {store.directory}")
      inner_steps = tuple(inner_steps or config.eval_inner_steps)
      evaluator = evaluation.Evaluator(setup, size=eval_size, mesh=mesh)
      result = evaluator.report(params, inner_steps)
      result.update(step=restored_step, eval_size=evaluator.size, inner_steps=list(inner_steps),
                    params="ema" if use_ema else "online")
      if particles is not None:
        result.update(particles.report(evaluator, params, inner_steps[0]),
                      particles=dataclasses.asdict(particles))
      if jax.process_index() == 0:
        metrics_io.write_json_atomic(os.path.join(workdir, "eval.json"), result)
  finally:
    store.close()
  return result
