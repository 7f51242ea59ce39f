"""Every figure of the project, drawn from the files runs write.

  plot_curves               one run's curves (WORKDIR/curves.png), from its metrics.jsonl
  plot_inner_steps          one run's headline metric (MSE, solved) against inner descent steps
                            (WORKDIR/inner_steps.png)
  plot_ablation             an ablation's headline metric and health curves per strategy
  plot_ablation_inner_steps an ablation's headline metric against inner descent steps
  plot_ablation_particles   an ablation's headline metric against particles, per pick
  plot_landscape            a run's landscape.json (ired_cd.landscape)
  plot_answer_landscape     a discrete task's landscape.json (ired_cd.answer_landscape)

Matplotlib's object API (no pyplot): drawing does not select or need a
display backend, so a training run can write its own figure.
"""

from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ired_cd import evaluation, metrics_io, schema, tasks

SET_NAMES = {"": "in-distribution", "_ood": "harder"}  # metric suffix -> its set


def series(rows, key):
  """(steps, values) of the rows that carry ``key``; non-finite values (stored as text) too."""
  points = [(r["step"], float(r[key])) for r in rows if key in r]
  steps, values = zip(*points) if points else ((), ())
  return np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=np.float64)


def set_yscale(ax, values):
  """Log scale for positive data, symlog where it crosses zero (energies, CD losses)."""
  finite = values[np.isfinite(values)]
  if finite.size and np.all(finite > 0):
    ax.set_yscale("log")
  elif finite.size:
    # Linear up to the typical magnitude, log beyond (a runaway stays on the axis); few
    # decade ticks, so the labels around zero stay apart.
    magnitudes = np.abs(finite[finite != 0])
    ax.set_yscale("symlog", linscale=2.0,
                  linthresh=float(np.median(magnitudes)) if magnitudes.size else 1.0)
    ax.yaxis.get_major_locator().set_params(numticks=6)


def inner_steps_axes(ax, counts, baselines, ylabel, title):
  """Labels a metric-against-inner-descent-steps panel: the counts as ticks (0 included on a
  symlog axis), each of ``baselines`` ({name: value}) as a black line, title, grid, legend."""
  for (name, value), dashes in zip(baselines.items(), ("--", "-.", ":")):
    if value is not None:
      ax.axhline(value, ls=dashes, color="black", lw=1, label=name.replace("_", " "))
  ax.set_xscale("symlog", linthresh=1)
  ax.set_xlim(-0.25, max(counts) * 1.25 + 0.25)  # symlog's own margin reaches far below 0
  ax.set_xticks(counts, [str(k) for k in counts])
  ax.set_xlabel("inner descent steps per timestep")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)


def _health_panels(out_dim):
  """(title, [(key, style)], reference lines) of each training-health panel."""
  return [
      ("energy gap E_neg - E_pos", [("train/energy_gap", "-")], []),
      ("‖∇E‖ (score norm)", [("train/score_norm", "-")],
       [(math.sqrt(out_dim), f"√D = {math.sqrt(out_dim):.3g} (healthy)")]),
      ("x0 prediction norm", [("train/pred_norm", "-"), ("train/target_norm", "--")], []),
      ("Langevin displacement", [("train/langevin_displacement", "-")], []),
  ]


def plot_curves(workdir):
  """Writes WORKDIR/curves.png from metrics.jsonl, config.json and summary.json; returns its path."""
  rows = metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  if not rows:
    raise FileNotFoundError(f"no metrics rows in {os.path.join(workdir, 'metrics.jsonl')}")
  config = metrics_io.read_json(os.path.join(workdir, "config.json"))
  if config is None:
    raise FileNotFoundError(f"no config.json in {workdir}: not a run directory")
  summary = metrics_io.read_json(os.path.join(workdir, "summary.json")) or {}
  task = tasks.from_config(schema.from_saved(config))
  panels = [("training loss", [("train/loss", "-"), ("train/loss_mse", "--")], [])]
  panels += [(f"eval {m.label} (sampler, EMA)",
              [(f"eval/{m.name}", "-o"), (f"eval/{m.name}_ood", "-s")], []) for m in task.metrics]
  panels += _health_panels(task.out_dim)
  linear = {f"eval {m.label} (sampler, EMA)" for m in task.metrics if m.higher_is_better}
  panels = [p for p in panels if any(series(rows, key)[0].size for key, _ in p[1])]
  ncols = 3
  nrows = math.ceil(len(panels) / ncols)
  fig = Figure(figsize=(5 * ncols, 3.6 * nrows))
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for ax, (title, keys, references) in zip(axes.flat, panels):
    values = []
    for key, style in keys:
      steps, ys = series(rows, key)
      line, = ax.plot(steps, ys, style, ms=3, label=key.split("/", 1)[1])
      values.append(ys)
      for name, dashes in zip(task.baselines, ("--", "-.", ":")) if key.startswith("eval/") else ():
        baseline = series(rows, f"{key}_{name}")[1]
        if baseline.size:
          ax.axhline(baseline[-1], ls=dashes, color=line.get_color(), lw=1,
                     label=f"{key.split('/', 1)[1]} {name.replace('_', ' ')}")
    for value, label in references:
      ax.axhline(value, ls=":", color="gray", label=label)
    if summary.get("collapse_step") is not None:
      ax.axvline(summary["collapse_step"], color="red", ls=":", lw=1, label="collapse")
    if title not in linear:  # a share solved stays linear, 0 included
      set_yscale(ax, np.concatenate(values))
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  for ax in axes.flat[len(panels):]:
    ax.set_visible(False)
  status = summary.get("status", "no summary")
  fig.suptitle(f"{workdir}: {config['mining_strategy']}, seed {config['seed']}, {status}"
               + (f", collapsed at step {summary['collapse_step']}"
                  if summary.get("collapse_step") is not None else ""))
  fig.tight_layout()
  path = os.path.join(workdir, "curves.png")
  fig.savefig(path, dpi=110)
  return path


SET_STYLES = {"": ("in-distribution", "-"), "_ood": ("harder", "--")}
LANDSCAPE_PANELS_PER_ROW = 5  # the ablation's landscape figure


def plot_landscape(landscape, path):
  """Writes the figure of a landscape.json (ired_cd.landscape) to ``path`` (through a
  temporary file and a rename) and returns ``path``. Panels: proposals that moved y per
  timestep; repair from wrong answers at t = 0; descent past the schedule; P[E(truth) <
  E(answer)] per timestep; breadth: the MSE of the energy's pick of several trajectories
  against their re-noise, beside the residual's pick and the mean trajectory."""
  run = landscape["run"]
  k = run["inner_steps"]
  fig = Figure(figsize=(25, 4))
  moved_ax, repair_ax, scaling_ax, below_ax, breadth_ax = fig.subplots(1, 5)
  for suffix, (name, style) in SET_STYLES.items():
    moved = np.asarray(landscape[f"acceptance{suffix}"][f"k{k}"]["moved"])  # (T, K)
    timesteps = np.arange(moved.shape[0])
    for step in sorted({0, moved.shape[1] - 1}) if moved.shape[1] else ():
      moved_ax.plot(timesteps, moved[:, step], style, marker="o", ms=3,
                    label=f"{name}, inner step {step + 1}")
    repair = landscape[f"repair{suffix}"]
    for start, curves in repair["t0"].items():
      repair_ax.plot(repair["steps"], curves["mse"], style, label=f"{name}, {start}")
    scaling = landscape[f"scaling{suffix}"]
    scaling_ax.plot(scaling["total_steps"], scaling["mse"], style, marker="o", ms=3, label=name)
    below_ax.plot(timesteps, landscape[f"truth_below_answer{suffix}"], style, marker="o", ms=3,
                  label=name)
    breadth = landscape[f"breadth{suffix}"]
    for key, marker in (("mse_energy_chosen", "o"), ("mse_residual_chosen", "s"),
                        ("mse_mean_trajectory", "^")):
      breadth_ax.plot(breadth["renoise"], breadth[key], style, marker=marker, ms=3,
                      label=f"{name}, {key[4:].replace('_', ' ')}")
  moved_ax.set(title=f"proposals that moved y ({k} inner steps)", xlabel="timestep t",
               ylim=(-0.05, 1.05))
  repair_ax.set(title="repair at t = 0: MSE of x from wrong starts", xlabel="descent steps",
                ylabel="MSE", yscale="log")
  repair_ax.set_xscale("symlog", linthresh=1)
  repair_ax.set_xlim(-0.25, landscape["repair"]["steps"][-1] * 1.25)
  scaling_ax.set(title="descent past the schedule (t = 0)", xlabel="total descent steps",
                 ylabel=f"MSE ({run['sampler_output']})", yscale="log")
  below_ax.set(title="P[E(truth) < E(model's answer)]", xlabel="timestep t", ylim=(-0.05, 1.05))
  breadth_ax.set(title=f"breadth: {landscape['breadth']['trajectories']} trajectories a problem",
                 xlabel="re-noise between timesteps", ylabel="MSE", yscale="log")
  return _finish_landscape(fig, (moved_ax, repair_ax, scaling_ax, below_ax, breadth_ax),
                           landscape, path)


def _finish_landscape(fig, axes, landscape, path):
  """Grids, legends and the run's title on a landscape figure; written to ``path`` (through a
  temporary file and a rename), which it returns."""
  run = landscape["run"]
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  fig.suptitle(f"{run['workdir']}: {run['strategy']}, seed {run['seed']}, step {run['step']}, "
               f"{run['matmul_dtype']} matmuls, {landscape['settings']['eval_size']} problems "
               "per set")
  fig.tight_layout()
  metrics_io.write_atomic(path, lambda f: fig.savefig(f, dpi=100, format="png"))
  return path


def plot_answer_landscape(landscape, path):
  """Writes the figure of a discrete task's landscape.json (ired_cd.answer_landscape) to
  ``path`` (through a temporary file and a rename) and returns ``path``. Panels: P[E(valid)
  < E(invalid)] one change apart per timestep; valid answers below the sampler's wrong ones;
  repair from j changes at t = 0; E's spread over valid answers and random assignments."""
  fig = Figure(figsize=(20, 4))
  flip_ax, answer_ax, repair_ax, spread_ax = fig.subplots(1, 4)
  width = 0.35
  for offset, (suffix, (name, style)) in enumerate(SET_STYLES.items()):
    below = landscape[f"one_flip{suffix}"]["below"]
    flip_ax.plot(np.arange(len(below)), below, style, marker="o", ms=3, label=name)
    answer = landscape[f"answer{suffix}"]
    keys = ("some_valid_below_raw", "valid_below_raw", "some_valid_below_decoded",
            "valid_below_decoded")
    answer_ax.bar(np.arange(len(keys)) + offset * width, [answer[k] for k in keys], width,
                  label=f"{name} ({answer['wrong']:.0%} wrong)")
    answer_ax.set_xticks(np.arange(len(keys)) + width / 2,
                         [k.replace("_below_", " below\n") for k in keys], fontsize=7)
    repair = landscape[f"repair{suffix}"]
    for j in (k for k in repair if k.startswith("j")):
      repair_ax.plot(repair["steps"], repair[j]["valid"], style, marker="o", ms=3,
                     label=f"{name}, {j[1:]} changes (back: {repair[j]['back']:.2f})")
    spread = landscape[f"spread{suffix}"]
    keys = ("valid_std", "random_std")
    spread_ax.bar(np.arange(len(keys)) + offset * width, [spread[k] for k in keys], width,
                  label=f"{name} (P[E(valid) < E(random)] {spread['valid_below_random']:.2f})")
    spread_ax.set_xticks(np.arange(len(keys)) + width / 2,
                         ["E over valid answers", "E over random ones"], fontsize=7)
  flip_ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="an energy blind to validity")
  flip_ax.set(title="P[E(valid) < E(invalid)], one change apart", xlabel="timestep t",
              ylim=(-0.05, 1.05))
  answer_ax.axhline(0.5, color="grey", lw=0.8, ls=":")
  answer_ax.set(title="valid answers below the sampler's wrong answer (t = 0)", ylim=(0, 1.05))
  repair_ax.set(title="repair at t = 0: share at a valid answer", xlabel="descent steps",
                ylim=(-0.05, 1.05))
  repair_ax.set_xscale("symlog", linthresh=1)
  spread_ax.set(title="std of E at t = 0 per problem", ylabel="E std")
  return _finish_landscape(fig, (flip_ax, answer_ax, repair_ax, spread_ax), landscape, path)


def plot_inner_steps(workdir, result, task, strategy):
  """Writes WORKDIR/inner_steps.png from ``result`` (loop.evaluate_checkpoint's, scored with
  each of its ``inner_steps``): the task's headline metric against inner descent steps, both
  sets; returns its path."""
  inner_steps = result["inner_steps"]
  fig = Figure(figsize=(5 * len(SET_NAMES), 3.6))
  axes = fig.subplots(1, len(SET_NAMES))
  metric = task.metrics[0]
  for ax, key, title in zip(axes, evaluation.headline_keys(task), SET_NAMES.values()):
    ax.plot(inner_steps, evaluation.at_inner_steps(result, key, inner_steps), "-o",
            label="sampler (EMA)")
    if not metric.higher_is_better:
      ax.set_yscale("log")
    inner_steps_axes(ax, inner_steps, {name: result[f"{key}_{name}"] for name in task.baselines},
                     metric.label, f"{title} (n={result['eval_size']})")
  fig.suptitle(f"{workdir}: {strategy}, checkpoint step {result['step']}")
  fig.tight_layout()
  path = os.path.join(workdir, "inner_steps.png")
  fig.savefig(path, dpi=110)
  return path


def _by_step(runs, key):
  """(steps, values (runs, steps)) on the steps every run logged ``key`` at."""
  curves = [dict(zip(*series(metrics_io.read_jsonl(
      os.path.join(r["workdir"], "metrics.jsonl")), key))) for r in runs]
  steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
  return np.asarray(steps), np.asarray([[c[s] for s in steps] for c in curves])


def _strategy_color(index):
  return matplotlib.colormaps["tab10"](index % 10)


def plot_ablation(report, path):
  """The task's headline metric (both sets) and training health vs step, one colour per
  strategy.

  ``report``: ablation.summarize's; each run's curves come from its metrics.jsonl.
  """
  info = report["task"]
  out_dim, headline = info["out_dim"], info["metrics"][0]
  panels = [(f"eval {headline['label']}, {name}", f"eval/{headline['name']}{suffix}")
            for suffix, name in SET_NAMES.items()]
  panels += [("energy gap E_neg - E_pos", "train/energy_gap"),
            ("‖∇E‖ (score norm)", "train/score_norm")]
  fig = Figure(figsize=(13, 9))
  axes = fig.subplots(2, 2)
  for ax, (title, key) in zip(axes.flat, panels):
    plotted = []
    for i, strategy in enumerate(report["strategies"]):
      color = _strategy_color(i)
      runs = [r for r in report["runs"] if r["strategy"] == strategy]
      done = [r for r in runs if r["status"] == "completed"]
      steps, values = _by_step(done, key)
      if steps.size:
        ax.plot(steps, values.mean(axis=0), color=color, label=f"{strategy} ({len(done)})")
        if len(done) > 1:
          ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=color, alpha=0.2)
        plotted.append(values.ravel())
      for r in runs:  # runs that did not complete: their own curves, dotted
        if r["status"] not in ("completed", None):
          steps, values = _by_step([r], key)
          if steps.size:  # an x where it stopped
            ax.plot(steps, values[0], ":", color=color, lw=1,
                    label=f"{strategy} seed{r['seed']} ({r['status']})")
            ax.plot(steps[-1:], values[0][-1:], "x", color=color)
            plotted.append(values[0])
    for (name, values), dashes in zip(report["baselines"].items(), ("--", "-.", ":")):
      if values.get(key) is not None:
        ax.axhline(values[key], ls=dashes, color="black", lw=1, label=name.replace("_", " "))
    if key == "train/score_norm":
      ax.axhline(out_dim ** 0.5, ls=":", color="gray", label=f"√D = {out_dim ** 0.5:.3g}")
    if key.startswith("eval/"):
      ax.set_yscale("linear" if headline["higher_is_better"] else "log")
    elif plotted:
      set_yscale(ax, np.concatenate(plotted))
    ax.set_title(title + (" (mean over seeds, min–max shaded)" if key.startswith("eval/")
                          else ""))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if plotted:
      ax.legend(fontsize=7)
    else:
      ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="gray")
  fig.suptitle(f"Strategy ablation ({report['base_config']}, seeds "
               f"{', '.join(map(str, report['seeds']))})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_ablation_inner_steps(report, inner_steps, path):
  """The headline metric against inner descent steps (mean over seeds, std as error bars),
  both sets, one colour per strategy (the same as plot_ablation's)."""
  headline = report["task"]["metrics"][0]
  fig = Figure(figsize=(11, 4))
  axes = fig.subplots(1, len(SET_NAMES))
  for ax, (suffix, title) in zip(axes, SET_NAMES.items()):
    key = f"eval/{headline['name']}{suffix}"
    for i, strategy in enumerate(report["strategies"]):
      sweep = report["rows"][strategy].get("inner_steps")
      if not sweep:
        continue
      means = [sweep[k][key]["mean"] for k in sweep]
      stds = [sweep[k][key]["std"] or 0.0 for k in sweep]
      ax.errorbar([int(k) for k in sweep], means, yerr=stds, fmt="-o", capsize=3, ms=4,
                  color=_strategy_color(i), label=strategy)
    inner_steps_axes(ax, inner_steps, {name: values[key] for name, values
                                       in report["baselines"].items()},
                     headline["label"], f"eval {headline['label']}, {title}")
  fig.suptitle(f"Inner-steps sweep ({report['base_config']}, final checkpoints)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


PICK_STYLES = {"one": ":", "energy": "-", "oracle": "--"}  # evaluation.PICKS


def plot_ablation_particles(report, counts, path):
  """The headline metric against the particles per problem K, both sets: one colour per
  strategy (as plot_ablation's), one line style per pick (one particle dotted, the energy's
  pick solid, the oracle dashed); means over the seeds, their std as error bars."""
  headline = report["task"]["metrics"][0]
  fig = Figure(figsize=(11, 4))
  axes = fig.subplots(1, len(SET_NAMES))
  for ax, (suffix, title) in zip(axes, SET_NAMES.items()):
    for i, strategy in enumerate(report["strategies"]):
      values = report["rows"][strategy].get("particles")
      if not values:
        continue
      for pick, style in PICK_STYLES.items():
        stats = [values.get(f"eval/{headline['name']}{suffix}_p{k}_{pick}") for k in counts]
        ax.errorbar(counts, [s["mean"] for s in stats], yerr=[s["std"] or 0.0 for s in stats],
                    fmt=style, marker="o", ms=3, capsize=2, color=_strategy_color(i),
                    label=f"{strategy}, {pick}")
    for (name, baseline), dashes in zip(report["baselines"].items(), ("--", "-.")):
      key = f"eval/{headline['name']}{suffix}"
      if baseline.get(key) is not None:
        ax.axhline(baseline[key], ls=dashes, color="black", lw=1, label=name.replace("_", " "))
    random = report.get("particle_baselines")
    if random:
      ax.plot(counts, [random[f"eval/{headline['name']}{suffix}_p{k}_random"] for k in counts],
              ls=":", marker="x", color="gray", label="random, the best of K")
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(k) for k in counts])
    ax.set(xlabel="particles per problem K", ylabel=headline["label"],
           title=f"eval {headline['label']}, {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
  fig.suptitle(f"Particles ({report['base_config']}, final checkpoints): the energy's pick "
               "against one particle and the oracle")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_ablation_landscape(report, measures, path):
  """Writes the ablation's landscape figure: one panel per measure (key, title, _), a bar
  per strategy and set (mean over the seeds measured, their spread as error bars), up to
  LANDSCAPE_PANELS_PER_ROW panels a row."""
  strategies = [s for s in report["strategies"] if "landscape" in report["rows"][s]]
  columns = min(len(measures), LANDSCAPE_PANELS_PER_ROW)
  rows = -(-len(measures) // columns)
  fig = Figure(figsize=(4.2 * columns, 3.8 * rows))
  axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
  for ax in axes[len(measures):]:
    ax.set_axis_off()
  x = np.arange(len(strategies))
  for ax, (key, title, _) in zip(axes, measures):
    for offset, (suffix, (name, _)) in zip((-0.2, 0.2), SET_STYLES.items()):
      values = [report["rows"][s]["landscape"][key + suffix] for s in strategies]
      ax.bar(x + offset, [v["mean"] for v in values], 0.4, label=name,
             yerr=[v["std"] or 0.0 for v in values], capsize=2)
    ax.set_xticks(x, strategies, rotation=45, ha="right", fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
  axes[0].legend(fontsize=7)
  fig.suptitle(f"energy landscape of each strategy's final checkpoint ({report['base_config']})")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path
