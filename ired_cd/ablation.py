"""The strategy ablation: every (strategy, seed) as a normal run, then one report.

``run_ablation(config, strategies, seeds, workdir)`` trains (or resumes, or
skips when finished) each run in ``run_dir(workdir, strategy, seed)``, records
a failed one and goes on, and writes WORKDIR/ablation.md (``markdown``),
ablation.json (``summarize``) and ablation.png (plotting.plot_ablation); with
``inner_steps`` it also scores each final checkpoint per number of inner
descent steps (``score_checkpoint``, ablation_inner_steps.png); with ``particles``
with several trajectories per problem, per pick (ablation_particles.png); with
``landscape_settings`` it also measures each final checkpoint's energy landscape
(``score_landscape``: ired_cd.landscape, a table and ablation_landscape.png).
``merge`` makes one report of grids run apart on the same protocol.

A run's record (``_record``) holds its outcome and one value per measure. A new
per-run measure is a record key filled there (or after it, as the inner-steps
sweep is) and a line of ``RUN_MEASURES``: it is then averaged over the
completed seeds and gets a column of the table.
"""

import dataclasses
import json
import logging
import os
import re
import time

import numpy as np
import tqdm

from configs import base
from ired_cd import answer_landscape, evaluation, landscape, loop, metrics_io, plotting
from ired_cd import schema, tasks
from ired_cd.tasks import SPLITS

HEALTH_KEYS = ("train/score_norm", "train/energy_gap")  # last logged value of each run
UNFINISHED = (None, "interrupted")  # a run's status before it completes, diverges or fails
# The per-run measures reported beside the MSEs: (record key, column header, format).
RUN_MEASURES = (("train/score_norm", "final ‖∇E‖", ".3g"),
                ("train/energy_gap", "final energy gap", ".3g"),
                ("train/steps_per_sec", "steps/s", ".1f"))
# Config fields named in the report's header.
HEADER_FIELDS = ("task", "batch_size", "train_steps", "learning_rate", "eval_size",
                 "eval_inner_steps")


def run_dir(workdir, strategy, seed):
  """The directory of one run of the ablation: WORKDIR/<strategy>/seed<k>."""
  return os.path.join(workdir, strategy, f"seed{seed}")


def _last_value(rows, key):
  _, values = plotting.series(rows, key)
  return float(values[-1]) if values.size else None


def run_one(config, strategy, seed, subdir, report_only=False):
  """Trains (or skips) one run; returns its record. Never raises for a failed run.

  ``report_only``: train nothing; a run without its outcome is recorded as not
  finished, at the last step it logged.
  """
  tic = time.time()
  skipped = loop.holds_outcome(config, subdir)
  if skipped:
    summary = metrics_io.read_json(os.path.join(subdir, "summary.json"))
  elif report_only:
    rows = metrics_io.read_jsonl(os.path.join(subdir, "metrics.jsonl"))
    summary = dict(steps=rows[-1]["step"]) if rows else {}
  else:
    try:
      summary = loop.train_and_evaluate(config, subdir, progress=False)
    except loop.TrainingDiverged as err:
      summary = metrics_io.read_json(os.path.join(subdir, "summary.json")) or {}
      summary.update(status="diverged", message=str(err))
    except Exception as err:  # noqa: BLE001 - any failure is recorded; the others go on
      logging.exception("%s seed %d failed", strategy, seed)
      summary = dict(status="failed", message=f"{type(err).__name__}: {err}")
  return _record(strategy, seed, subdir, summary, task_info(tasks.from_config(config)), skipped,
                 time.time() - tic)


def task_info(task) -> dict:
  """What a report needs of its task: its metrics (name, label, higher_is_better, spec; the
  first is the headline), its baselines' names, its answer width and its words."""
  return dict(name=task.name, describe=task.describe(), out_dim=task.out_dim,
              metrics=[dict(name=m.name, label=m.label, higher_is_better=m.higher_is_better,
                            spec=m.spec) for m in task.metrics],
              baselines=list(task.baselines))


def eval_keys(info, headline_only=False):
  """The report's evaluation keys, e.g. ('eval/mse', 'eval/mse_ood'): every metric's (or the
  headline's) on both sets."""
  metrics = info["metrics"][:1] if headline_only else info["metrics"]
  return tuple(f"eval/{m['name']}{suffix}" for m in metrics for suffix in SPLITS)


def _record(strategy, seed, subdir, summary, info, skipped=False, seconds=0.0):
  """A run's row of ablation.json: its outcome, final evaluation (and the baselines beside
  it) and last health values; ``info``: task_info of the grid's task."""
  status = summary.get("status")
  record = dict(strategy=strategy, seed=seed, workdir=subdir, status=status, skipped=skipped,
                steps=summary.get("steps"), collapse_step=summary.get("collapse_step"),
                message=summary.get("message"), seconds=seconds)
  record["failed_step"] = summary.get("failed_step")
  record["train/steps_per_sec"] = summary.get("train/steps_per_sec")
  for key in eval_keys(info):
    record[key] = summary.get(key)
    for name in info["baselines"]:
      record[f"{key}_{name}"] = summary.get(f"{key}_{name}")
  rows = metrics_io.read_jsonl(os.path.join(subdir, "metrics.jsonl")) if status else []
  for key in HEALTH_KEYS:
    record[key] = _last_value(rows, key)
  return record


def score_checkpoint(config, record, inner_steps=None, particles=None, report_only=False):
  """A completed run's final checkpoint scored with each of ``inner_steps`` descent steps
  and/or with ``particles`` (evaluation.Particles): its eval.json, reused when it holds
  exactly this evaluation (the final step, the counts, the particle settings, the run's
  evaluation set); otherwise evaluated and written, except under ``report_only`` (then
  None). None for a run that did not complete."""
  if record["status"] != "completed":
    return None
  counts = list(inner_steps or config.eval_inner_steps)
  wanted = None if particles is None else json.loads(json.dumps(dataclasses.asdict(particles)))
  saved = metrics_io.read_json(os.path.join(record["workdir"], "eval.json"))
  current = (saved is not None and saved.get("step") == record["steps"]
             and saved.get("inner_steps") == counts and saved.get("particles") == wanted
             and saved.get("eval_size") == config.eval_size and saved.get("params") == "ema")
  if not current:
    if report_only:
      return None
    saved = loop.evaluate_checkpoint(config, record["workdir"], inner_steps=counts,
                                     particles=particles)
  return saved


def inner_steps_sweep(config, saved, inner_steps):
  """{k: {'eval/mse': .., 'eval/mse_ood': ..}} (the task's headline metric) of an eval.json
  scored with each of ``inner_steps``."""
  keys = evaluation.headline_keys(tasks.from_config(config))
  values = {key: evaluation.at_inner_steps(saved, key, inner_steps) for key in keys}
  return {str(k): {key: values[key][i] for key in keys} for i, k in enumerate(inner_steps)}


def particle_columns(saved):
  """The particle scores of an eval.json ('eval/...' keys with _p{K})."""
  return {k: v for k, v in saved.items() if re.search(r"_p\d+(_|$)", k)}


def score_landscape(config, record, settings, report_only=False):
  """The summary (landscape's, or answer_landscape's for a discrete task) of a completed run's
  final checkpoint; None if it is not scored (yet).

  Reuses the run's landscape.json when it holds that checkpoint measured with ``settings``
  (landscape.holds); otherwise measures and writes it with the run's folder held
  (landscape.measure_run), except under ``report_only``.
  """
  if record["status"] != "completed":
    return None
  saved = metrics_io.read_json(os.path.join(record["workdir"], "landscape.json"))
  if not landscape.holds(saved, settings, record["steps"], config.eval_seed):
    if report_only:
      return None
    saved, _ = landscape.measure_run(record["workdir"], settings)
  return answer_landscape.measures_of(settings.as_json()).summary(saved)


def stats(values):
  """{'mean', 'std' (sample std; None below 2 values), 'n', 'values'} of the non-None values."""
  values = [float(v) for v in values if v is not None]
  if not values:
    return None
  return dict(mean=float(np.mean(values)),
              std=float(np.std(values, ddof=1)) if len(values) > 1 else None,
              n=len(values), values=values)


def _flags(runs):
  """Per-seed problems: failed runs are excluded from the means, collapsed ones are not."""
  done = [r for r in runs if r["status"] == "completed"]
  notes = [] if len(done) == len(runs) else [f"{len(done)}/{len(runs)} seeds"]
  for r in runs:
    seed = f"seed{r['seed']}"
    if r["status"] == "diverged":
      notes.append(f"{seed} diverged at step {r['failed_step']}" if r["failed_step"] is not None
                   else f"{seed} diverged after step {r['steps']}")
    elif r["status"] == "interrupted":
      notes.append(f"{seed} interrupted at step {r['steps']}")
    elif r["status"] == "failed":
      notes.append(f"{seed} failed ({r['message'].split(':')[0]})")
    elif r["status"] is None:
      notes.append(f"{seed} not run" if r["steps"] is None
                   else f"{seed} unfinished (step {r['steps']})")
    if r["collapse_step"] is not None:
      notes.append(f"{seed} collapsed at step {r['collapse_step']}")
  return notes


def _relative(info):
  """The metrics reported relative to the first baseline: those where lower is better (an
  MSE ÷ the mean predictor's, violations ÷ a random assignment's)."""
  return [m["name"] for m in info["metrics"] if not m["higher_is_better"]]


def summarize(records, strategies, header, base_config, info, command=None):
  """The report: the task's baselines and one row per strategy (see ablation.json).
  ``header``: the protocol's HEADER_FIELDS; ``base_config``: its experiment name;
  ``info``: task_info of its task."""
  keys = eval_keys(info)
  baselines = {}
  for name in info["baselines"]:
    baselines[name] = {}
    for key in keys:
      known = [r[f"{key}_{name}"] for r in records if r.get(f"{key}_{name}") is not None]
      baselines[name][key] = known[0] if known else None
  first = info["baselines"][0]
  relative = [f"eval/{m}{suffix}" for m in _relative(info) for suffix in SPLITS]
  rows = {}
  for strategy in strategies:
    runs = [r for r in records if r["strategy"] == strategy]
    done = [r for r in runs if r["status"] == "completed"]
    row = dict(seeds_completed=len(done), seeds_total=len(runs))
    for key in keys:
      row[key] = stats(r[key] for r in done)
      if key in relative:
        row[f"{key}_rel"] = stats(r[key] / r[f"{key}_{first}"] for r in done)
    for key, _, _ in RUN_MEASURES:
      row[key] = stats(r[key] for r in done)
    sweeps = [r["inner_steps"] for r in done if r.get("inner_steps")]
    if sweeps:
      row["inner_steps"] = {k: {key: stats(s[k][key] for s in sweeps) for key in sweeps[0][k]}
                            for k in sweeps[0]}
    sampled = [r["particles"] for r in done if r.get("particles")]
    if sampled:
      row["particles"] = {key: stats(s[key] for s in sampled) for key in sampled[0]}
    scored = [r["landscape"] for r in done if r.get("landscape")]
    if scored:
      row["landscape"] = {key: stats(s[key] for s in scored) for key in scored[0]}
    row["flags"] = _flags(runs)
    rows[strategy] = row
  return dict(command=command, config=dict(header), base_config=base_config, task=info,
              strategies=list(strategies),
              seeds=sorted({r["seed"] for r in records}), baselines=baselines, rows=rows,
              runs=records)


# Metrics keep the significant digits of their spec (MSEs 4 with their trailing zeros, 0.2100,
# not 0.21: strategies differ in the fourth digit on the harder set); their spread over
# seeds gets two.
STD_SPEC = ".2g"


def _fmt(s, spec, std_spec=None):
  if s is None:
    return "n/a"
  std = f" ± {s['std']:{std_spec or spec}}" if s["std"] is not None else ""
  return f"{s['mean']:{spec}}{std}"


def _value(value, spec):
  return "n/a" if value is None else f"{value:{spec}}"


def _metric_columns(info):
  """(header, key, spec, relative) per table column of the task's metrics: each metric on
  both sets, a '÷ baseline' column after each where it is reported relative."""
  relative = _relative(info)
  columns = []
  for m in info["metrics"]:
    for suffix, where in (("", "in-dist"), ("_ood", "harder")):
      key = f"eval/{m['name']}{suffix}"
      columns.append((f"{m['label']} {where}", key, m["spec"], False))
      if m["name"] in relative:
        columns.append(("÷ baseline", key, ".3f", True))
  return columns


def columns(info):
  """The table's header cells."""
  return (("strategy", "seeds") + tuple(header for header, *_ in _metric_columns(info))
          + tuple(header for _, header, _ in RUN_MEASURES) + ("flags",))


def _footnote(info):
  """What the metric columns mean, for the task's kind."""
  first = info["baselines"][0].replace("_", " ")
  if info["metrics"][0]["name"] == "mse":
    return ("MSE: the sampler's (EMA parameters) mean squared error on the fixed "
            "in-distribution and harder sets; ÷ baseline: relative to always predicting the "
            f"mean target (1 = no better than the {first}).")
  return ("solved: the share of problems of the fixed in-distribution and harder sets whose "
          "decoded answer (the sampler's, EMA parameters) violates no constraint; "
          "violations: the constraints it violates, on average; ÷ baseline: relative to a "
          f"{first} assignment's violations.")


def markdown(report):
  """The ablation table with its command line and settings."""
  c, info = report["config"], report["task"]
  lines = ["# Strategy ablation", ""]
  if report["command"]:
    lines += ["```bash", report["command"], "```", ""]
  metric_columns = _metric_columns(info)
  header = columns(info)
  lines += [f"Base config `{report['base_config']}`: task {info['describe']}, batch "
            f"{c['batch_size']}, {c['train_steps']} steps, lr {c['learning_rate']}; evaluation "
            f"on {c['eval_size']} problems per set with {tuple(c['eval_inner_steps'])[0]} inner "
            f"steps; seeds {', '.join(map(str, report['seeds']))}.", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name, values in report["baselines"].items():
    cells = [name.replace("_", " "), ""]
    for _, key, spec, relative in metric_columns:
      base = report["baselines"][info["baselines"][0]][key]
      cells.append(_value(values[key] / base if values[key] is not None and base else None,
                          ".3g") if relative else _value(values[key], spec))
    lines.append("| " + " | ".join(cells) + " |" + " |" * (len(RUN_MEASURES) + 1))
  for strategy in report["strategies"]:
    row = report["rows"][strategy]
    cells = [f"`{strategy}`", f"{row['seeds_completed']}/{row['seeds_total']}"]
    cells += [_fmt(row[f"{key}_rel"], ".3f") if relative else _fmt(row[key], spec, STD_SPEC)
              for _, key, spec, relative in metric_columns]
    cells += [*(_fmt(row[key], spec) for key, _, spec in RUN_MEASURES), "; ".join(row["flags"])]
    lines.append("| " + " | ".join(cells) + " |")
  out_dim = info["out_dim"]
  lines += ["", _footnote(info) + " Mean ± sample std over the "
            "completed seeds: diverged or failed seeds are excluded and flagged; collapsed "
            "seeds completed and are included, flagged. Final ‖∇E‖ and energy gap: the last "
            f"logged training values (healthy ‖∇E‖ ≈ √D = {out_dim ** 0.5:.3g}). n/a: nothing to "
            "average (no completed seed, or no energy loss). steps/s: training throughput, "
            "compilation excluded."]
  lines += _inner_steps_markdown(report)
  lines += _particles_markdown(report)
  lines += _landscape_markdown(report)
  return "\n".join(lines) + "\n"


def _inner_steps_markdown(report):
  """The inner-steps sweep's table (lines), or nothing when no run was swept."""
  swept = {s: report["rows"][s]["inner_steps"] for s in report["strategies"]
           if "inner_steps" in report["rows"][s]}
  if not swept:
    return []
  counts = list(next(iter(swept.values())))
  headline = report["task"]["metrics"][0]
  keys = eval_keys(report["task"], headline_only=True)
  lines = ["", f"## {headline['label']} by inner descent steps", "",
           "The final checkpoint scored with k inner descent steps per sampler timestep "
           "(in-distribution / harder; mean ± std over the seeds swept).", "",
           "| strategy | " + " | ".join(f"k={k}" for k in counts) + " |",
           "|" + "---|" * (len(counts) + 1)]
  for strategy, sweep in swept.items():
    cells = [" / ".join(_fmt(sweep[k][key], headline["spec"], STD_SPEC) for key in keys)
             for k in counts]
    lines.append(f"| `{strategy}` | " + " | ".join(cells) + " |")
  return lines


def particle_counts(row_particles):
  """The particle counts K of a row's particle columns, ascending."""
  return sorted({int(m.group(1)) for k in row_particles
                 for m in [re.search(r"_p(\d+)", k)] if m})


def _particles_markdown(report):
  """The particles' table (lines): the headline metric per count K, one particle / the
  energy's pick / the oracle's, per set; the distinct right answers found (discrete tasks)."""
  sampled = {s: report["rows"][s]["particles"] for s in report["strategies"]
             if "particles" in report["rows"][s]}
  if not sampled:
    return []
  headline = report["task"]["metrics"][0]
  counts = particle_counts(next(iter(sampled.values())))
  distinct = any(k.startswith("eval/distinct") for k in next(iter(sampled.values())))
  settings = report.get("particles", {})
  lines = ["", f"## Particles: {headline['label']} by picks", "",
           f"The final checkpoint's sampler with K trajectories per problem (re-noise "
           f"{settings.get('renoise')}, "
           + (f"resampled by softmax(-E / {settings['resample_tau']})" if settings.get(
               "resample_tau") else "independent") + "); each cell one particle / the "
           "energy's pick (lowest E at t = 0) / the oracle's (the best particle, by the target), "
           "mean over the seeds" + ("; distinct: right answers found per problem" if distinct
                                    else "")
           + ("; random, the best of K: of K uniformly random answers per problem, the best "
              "(the oracle's pick among random particles)" if report.get("particle_baselines")
              else "") + ".", ""]
  for suffix, name in (("", "in-distribution"), ("_ood", "harder")):
    header = [f"K={k}" for k in counts] + ([f"distinct, K={counts[-1]}"] if distinct else [])
    lines += [f"{name}:", "", "| strategy | " + " | ".join(header) + " |",
              "|" + "---|" * (len(header) + 1)]
    for strategy, values in sampled.items():
      cells = [" / ".join(_value((values.get(f"eval/{headline['name']}{suffix}_p{k}_{pick}")
                                  or {}).get("mean"), headline["spec"])
                          for pick in evaluation.PICKS) for k in counts]
      if distinct:
        cells.append(_value((values.get(f"eval/distinct{suffix}_p{counts[-1]}") or {}).get(
            "mean"), ".3g"))
      lines.append(f"| `{strategy}` | " + " | ".join(cells) + " |")
    random = report.get("particle_baselines")
    if random:
      cells = [_value(random.get(f"eval/{headline['name']}{suffix}_p{k}_random"),
                      headline["spec"]) for k in counts]
      cells += [""] if distinct else []
      lines.append("| random, the best of K | " + " | ".join(cells) + " |")
    lines.append("")
  return lines[:-1]


def _landscape_markdown(report):
  """The landscape's table (lines), or nothing when no run was measured."""
  scored = {s: report["rows"][s]["landscape"] for s in report["strategies"]
            if "landscape" in report["rows"][s]}
  if not scored:
    return []
  settings = report["landscape_settings"]
  measures = answer_landscape.measures_of(settings)
  lines = ["", "## Energy landscape", "",
           "Each final checkpoint measured by `experiments.landscape` on "
           f"{measures.describe(settings)}: in-distribution / harder, mean ± std over the seeds "
           "measured.", "",
           "| strategy | " + " | ".join(header for _, header, _ in measures.columns(settings))
           + " |", "|" + "---|" * (len(measures.columns(settings)) + 1)]
  for strategy, values in scored.items():
    cells = [f"{_fmt(values[key], spec, '.2g')} / {_fmt(values[key + '_ood'], spec, '.2g')}"
             for key, _, spec in measures.columns(settings)]
    lines.append(f"| `{strategy}` | " + " | ".join(cells) + " |")
  return lines


def _describe(record, info):
  """One line per finished run for the log above the progress bar (``info``: task_info)."""
  name = f"{record['strategy']}/seed{record['seed']}"
  if record["skipped"]:
    return f"{name}: already {record['status']}, skipped"
  if record["status"] is None:
    return f"{name}: not finished (last logged step {record['steps']}), not trained"
  if record["status"] != "completed":
    return (f"{name}: {record['status'].upper()} after step {record['steps']}"
            + (f": {record['message']}" if record["message"] else ""))
  collapse = (f", COLLAPSED at step {record['collapse_step']}"
              if record["collapse_step"] is not None else "")
  scores = " ".join(f"{key}={record[key]:.5g}" for key in eval_keys(info, headline_only=True))
  return f"{name}: {scores}{collapse} ({record['seconds'] / 60:.1f} min)"


def run_ablation(config, strategies, seeds, workdir, command=None, report_only=False,
                 inner_steps=None, landscape_settings=None, particles=None, first_seed=0):
  """Runs (or skips) every (strategy, seed), then writes ablation.md / .json / .png.

  ``seeds``: the number of seeds, ``first_seed`` .. ``first_seed + seeds - 1`` (a grid split
  by seed across machines, then joined by ``merge``). Config and workdir problems
  raise ConfigError before anything runs. ``report_only``: train nothing, report
  what has finished (a grid still running elsewhere). ``inner_steps``: also
  score each completed run with these numbers of descent steps
  (score_checkpoint; ablation_inner_steps.png). ``landscape_settings``
  (landscape.Settings, answer_landscape.Settings for a discrete task): also measure each
  completed run's landscape with them (score_landscape; ablation_landscape.png). ``particles``
  (evaluation.Particles): also score each completed run with that many trajectories per
  problem, per pick (score_checkpoint; a table and ablation_particles.png). Returns
  the report.
  """
  if len(set(strategies)) != len(strategies) or not strategies:
    raise schema.ConfigError(f"strategies: a non-empty list without repeats, got "
                                 f"{list(strategies)}")
  if seeds < 1:
    raise schema.ConfigError(f"seeds: must be >= 1, got {seeds}")
  if first_seed < 0:
    raise schema.ConfigError(f"first_seed: must be >= 0, got {first_seed}")
  if landscape_settings:
    try:
      landscape.check_task(tasks.from_config(config), landscape_settings)
    except landscape.NotMeasurable as err:
      raise schema.ConfigError(f"--landscape_size: {err}") from err
  plan = []
  for strategy in strategies:
    for seed in range(first_seed, first_seed + seeds):
      c = base.run_config(config, strategy, seed=seed)
      subdir = run_dir(workdir, strategy, seed)
      loop.check_workdir(c, subdir)
      plan.append((strategy, seed, c, subdir))
  info = task_info(tasks.from_config(config))
  records = []
  bar = tqdm.tqdm(plan, desc="ablation", unit="run", dynamic_ncols=True)
  for strategy, seed, c, subdir in bar:
    bar.set_postfix_str(f"{strategy}/seed{seed}")
    record = run_one(c, strategy, seed, subdir, report_only)
    records.append(record)
    tqdm.tqdm.write(_describe(record, info))
    if record["status"] == "interrupted":
      break
  bar.close()
  # After an interruption the runs not reached are recorded with status None.
  records += [_record(strategy, seed, subdir, {}, info) for strategy, seed, _, subdir
              in plan[len(records):]]
  if inner_steps or particles:
    for (_, _, c, _), record in zip(plan, records):
      saved = score_checkpoint(c, record, inner_steps, particles, report_only)
      if inner_steps:
        record["inner_steps"] = saved and inner_steps_sweep(c, saved, inner_steps)
      if particles:
        record["particles"] = saved and particle_columns(saved)
  if landscape_settings:
    for (_, _, c, _), record in zip(plan, records):
      record["landscape"] = score_landscape(c, record, landscape_settings, report_only)
  report = summarize(records, strategies, {k: config[k] for k in HEADER_FIELDS},
                     config.experiment_name, info, command)
  if landscape_settings:
    report["landscape_settings"] = landscape_settings.as_json()
  if particles:
    report["particles"] = dataclasses.asdict(particles)
    task = tasks.from_config(config)
    if task.discrete:  # the sets particle scoring uses (Particles.report), and their seed
      sets = {suffix: task.eval_set(min(particles.size or config.eval_size, config.eval_size),
                                    config.eval_seed, ood)
              for suffix, ood in evaluation.SPLITS.items()}
      report["particle_baselines"] = {
          f"eval/{key}": value for key, value in
          task.random_particle_scores(sets, particles.counts, config.eval_seed).items()}
  write_report(report, workdir)
  return report


def upgrade(report):
  """An ablation.json written before reports named their task (matrix tasks, MSE against the
  mean predictor only) in the current form; a current one unchanged."""
  if "task" in report:
    return report
  c = report["config"]
  info = task_info(tasks.get_task(c["task"], rank=c.get("rank", 20)))
  config = {k: v for k, v in c.items() if k != "rank"}  # now part of the task's description
  return dict(report, config=config, task=info, baselines={"mean_predictor": report["baseline"]})


def merge(reports, command=None):
  """One report from the reports (ablation.json) of grids run apart on one protocol (stage
  by stage, seed by seed, or on several machines): all their runs, the strategies in order of
  first appearance. A run one report holds unfinished (not run, interrupted) takes another's
  finished record of it, in its place. ConfigError where the protocols differ or a (strategy,
  seed) finished in more than one report."""
  reports = [upgrade(r) for r in reports]
  first = reports[0]
  for other in reports[1:]:
    for key in ("base_config", "config", "task"):
      if other[key] != first[key]:
        raise schema.ConfigError(f"--merge: the reports differ in {key} ({first[key]} against "
                                 f"{other[key]}): only grids of one protocol merge")
  kept = {}  # (strategy, seed) -> its record; a reassigned key keeps its first place
  for run in (run for report in reports for run in report["runs"]):
    key, finished = (run["strategy"], run["seed"]), run["status"] not in UNFINISHED
    held = kept.get(key)
    if held is None or (finished and held["status"] in UNFINISHED):
      kept[key] = run
    elif finished:
      raise schema.ConfigError(f"--merge: {run['strategy']} seed {run['seed']} finished in more "
                               "than one report")
  records = list(kept.values())
  strategies = list(dict.fromkeys(s for report in reports for s in report["strategies"]))
  commands = [r["command"] for r in reports if r["command"]] + ([command] if command else [])
  merged = summarize(records, strategies, first["config"], first["base_config"], first["task"],
                     "\n".join(commands) or None)
  for key in ("landscape_settings", "particles", "particle_baselines"):
    measured = [r[key] for r in reports if key in r]
    if measured:
      merged[key] = measured[0]
  return merged


def write_report(report, workdir):
  """WORKDIR/ablation.md, ablation.json, ablation.png, and the inner-steps and landscape
  figures where the report has those measures."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "ablation.md"), "w") as f:
    f.write(markdown(report))
  metrics_io.write_json_atomic(os.path.join(workdir, "ablation.json"), report)
  plotting.plot_ablation(report, os.path.join(workdir, "ablation.png"))
  swept = [row["inner_steps"] for row in report["rows"].values() if "inner_steps" in row]
  if swept:
    plotting.plot_ablation_inner_steps(report, [int(k) for k in swept[0]],
                                       os.path.join(workdir, "ablation_inner_steps.png"))
  sampled = [row["particles"] for row in report["rows"].values() if "particles" in row]
  if sampled:
    plotting.plot_ablation_particles(report, particle_counts(sampled[0]),
                                     os.path.join(workdir, "ablation_particles.png"))
  if any("landscape" in row for row in report["rows"].values()):
    settings = report["landscape_settings"]
    plotting.plot_ablation_landscape(report,
                                     answer_landscape.measures_of(settings).columns(settings),
                                     os.path.join(workdir, "ablation_landscape.png"))
