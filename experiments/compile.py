r"""Compile a run for a TPU slice or NVIDIA GPUs on this machine: memory, fit, a step-time bound.

  python -m experiments.compile --config=configs/q204.py --target=v5e-8
  python -m experiments.compile --config=configs/q204.py --target=h100x8 --hosts=2 \
      --strategies=none,cd_full --max_batch
  python -m experiments.compile --config=configs/sat.py --target=v5e-8 --particles=1,8,64

Compiles what ``experiments.run`` would run on the target (ired_cd.hardware) and
prints, per strategy, the per-device memory, whether it fits, the matmul FLOPs
per step and a roofline lower bound of the step time, then the same as one JSON
line; with --particles, the particle evaluation's program per K (its memory per device
and per problem). Predictions from the compiled programs, not measurements. Needs the
compile packages, installed apart from the run's (ired_cd/compile_packages.py):
  pip install --target .venv/compile-packages -r requirements-compile.txt
"""

import json
import os
import sys

if __name__ == "__main__":  # before JAX is imported: its compile-only backends, and the CPU
  from ired_cd import compile_packages, quiet  # (a GPU or TPU VM's own devices are not used)
  sys.path.insert(0, compile_packages.FOLDER)
  os.environ["JAX_PLATFORMS"] = "cpu"  # the CUDA plugin then registers without a GPU
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no TPU VM metadata server to ask
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # several compiles at once
  with quiet.held_stderr():  # the CUDA plugin's libraries report the missing driver
    import jax  # noqa: F401

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs import base  # noqa: E402
from experiments import cli  # noqa: E402
from ired_cd import hardware, loop, schema  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/q204.py", "Config file.")
_TARGET = flags.DEFINE_string("target", None, "Where the run would go: a TPU slice (v5e-8, "
                              "v4-8, ...) or GPUs (h100, h100x8, a100-80gb, h200x8, ...).")
_HOSTS = flags.DEFINE_integer("hosts", 1, "GPU targets: hosts, each with the named GPUs.")
_STRATEGIES = flags.DEFINE_list("strategies", None,
                                "Strategies to compile (default: the config's own).")
_MAX_BATCH = flags.DEFINE_bool("max_batch", False,
                               "Also find the largest global batch that fits, to within 1 %.")

_PARTICLES = flags.DEFINE_list("particles", None, "Also compile the particle evaluation "
                               "(--eval_particles) with this many particles per problem, "
                               "e.g. 1,8,64.")
_RESAMPLE_TAU = flags.DEFINE_float("resample_tau", None, "--particles: resampled by "
                                   "softmax(-E / tau) (default: independent).")

MIB = 1024 ** 2


def describe(r) -> str:
  """A compile_run result as a few readable lines."""
  hosts = f", {r['hosts']} hosts" if r["hosts"] > 1 else ", 1 host"
  lines = [f"{r['strategy']} on {r['target']} ({r['devices']} x {r['device_kind']}{hosts}), "
           f"batch {r['batch_size']} ({r['per_device_batch']} per device), "
           f"{r['matmul_dtype']} matmuls; per device:"]
  for name, mem, what in (("train", r["train_memory"], f"{r['steps_per_program']} steps a call"),
                          ("sampler", r["sampler_memory"], "one evaluation chunk")):
    lines.append(f"  {name} ({what}): arguments {mem['arguments'] / MIB:.1f} MiB, outputs "
                 f"{mem['outputs'] / MIB:.1f} MiB ({mem['aliased'] / MIB:.1f} donated), "
                 f"temporaries {mem['temporaries'] / MIB:.1f} MiB, code {mem['code'] / MIB:.1f} MiB")
  lines.append(f"  needs {r['needed_bytes'] / MIB:.0f} MiB of {r['usable_bytes'] / MIB:.0f} MiB: "
               f"{'fits' if r['fits'] else 'DOES NOT FIT'}, headroom "
               f"{r['headroom_bytes'] / MIB:.0f} MiB")
  lines.append(f"  {r['matmul_flops_per_step'] / r['devices'] / 1e9:.2f} GFLOP of matmuls per step;"
               f" roofline: >= {r['roofline_step_s'] * 1e3:.3f} ms a step "
               f"({r['roofline_bound']}-bound), <= {r['max_steps_per_s']:.0f} steps/s")
  if "max_batch" in r:
    lines.append(f"  largest batch that fits: {r['max_batch']}")
  return "\n".join(lines)


def describe_particles(r) -> str:
  """A compile_particles result as one line."""
  mem = r["memory"]
  return (f"particles K={r['particles']} on {r['target']}: {r['problems']} problems a chunk "
          f"({r['rows']} rows), per device needs {mem['needed'] / MIB:.1f} MiB (temporaries "
          f"{mem['temporaries'] / MIB:.1f} MiB), "
          f"{r['needed_bytes_per_problem'] / MIB:.2f} MiB per problem")


def main(argv):
  del argv
  if _TARGET.value is None:
    sys.exit(f"error: --target: give one of {', '.join(hardware.known_targets())}")
  try:
    target = hardware.get_target(_TARGET.value, _HOSTS.value)
    if _STRATEGIES.value is not None:
      cli.check_choices(_STRATEGIES, schema.STRATEGIES)
    mesh = hardware.target_mesh(target)
    configs = [base.run_config(_CONFIG.value, s)
               for s in _STRATEGIES.value or [_CONFIG.value.mining_strategy]]
    for config in configs:
      loop.check_devices(config, mesh)
    counts = cli.integers(_PARTICLES.name, _PARTICLES.value, 1)
    cli.check_resample_tau(_RESAMPLE_TAU)
  except (hardware.TargetError, schema.ConfigError) as err:
    sys.exit(f"error: {err}")
  results = hardware.compile_strategies(
      configs, target, mesh, _MAX_BATCH.value,
      on_probe=lambda batch, fits: print(f"  batch {batch}: {'fits' if fits else 'too big'}",
                                         file=sys.stderr, flush=True))
  failed = False
  for config in configs:  # the results come in this order
    try:
      result = next(results)
    except Exception as err:  # noqa: BLE001 - a compile failure is one line, not a traceback
      sys.exit(f"error: compiling {config.mining_strategy} for {target.name} failed: "
               f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if "error" in result:
      print(f"error: {config.mining_strategy} at batch {config.batch_size} does not fit "
            f"{target.name}: {result['error']}", file=sys.stderr)
    else:
      print(describe(result))
    print(json.dumps(result), flush=True)
    failed |= not result["fits"]
  if counts:  # the particle program does not depend on the strategy
    for result in hardware.compile_particles(configs[0], target, mesh, counts,
                                             _RESAMPLE_TAU.value):
      print(describe_particles(result))
      print(json.dumps(result), flush=True)
  if failed:
    sys.exit(f"error: the batch does not fit {target.name} for every strategy (see above)")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
