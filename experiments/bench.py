r"""Speed and memory of the train step of each strategy, the sampler and the machine's matmul.

  python -m experiments.bench --config=configs/q204.py --config.batch_size=2048
  python -m experiments.bench --config=configs/q204.py --strategies=cd_full --what=train
  python -m experiments.bench --config=configs/q204.py --what=dtypes --steps=10
  python -m experiments.bench --config=configs/sat.py:cpu --what=particles --particles=1,8,64

Prints one JSON object per line:
  {"what": "device", ...}   device kind and count
  {"what": "matmul", ...}   measured GFLOP/s of a large product of float32 arrays, done in
                            config.matmul_dtype as the model does (the hardware's rate)
  {"what": "matmul_layouts", ...}  the same at the model's layer size, for the forward
                            (x W), input-gradient (g W^T) and weight-gradient (x^T g) layouts;
                            bfloat16 also with the other choice of the row-major copy
  {"what": "train", "strategy": ..., "median_ms", "min_ms", "compile_s",
   "flops_analytic", "flops_xla", "gflops_per_s", "fraction_of_matmul_peak",
   "program_memory_bytes", "device_peak_bytes", ...}
                                    one per strategy, >= --steps timed steps after compile;
                                    memory: XLA's bytes for the step's program (every backend),
                                    and the device's peak during the strategy's measurement
                                    above what was in use before it (null on CPU, which keeps
                                    no statistics, and where an earlier measurement's peak
                                    hides it: see experiments/memory.py)
  {"what": "sampler", ...}          the IRED sampler (T timesteps, --inner_steps)
  {"what": "particles", ...}        --what=particles: the particle sampler of evaluation
                                    (--particles=K,..., re-noised), one per K, on
                                    config.eval_chunk // K problems: instances (problems)/s
  {"what": "dtypes", ...}           --what=dtypes: float32 vs bfloat16 matmuls, steps interleaved
  {"what": "gram", ...}             --what=gram: the Gram last layer where it pays
                                    (last_layer=auto) against the plain one (plain), train
                                    steps interleaved, and the sampler
"""

import functools
import json
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from configs import base
from experiments import cli, memory
from experiments.timing import interleaved
from ired_cd import evaluation, flops, parallel, sampler, schema, train
from ired_cd import matmul as matmul_lib

_CONFIG = config_flags.DEFINE_config_file("config", "configs/q204.py", "Config file.")
_STRATEGIES = flags.DEFINE_list("strategies", list(schema.STRATEGIES), "Strategies to time.")
MEASURES = ("matmul", "train", "sampler", "particles", "dtypes", "gram")
_WHAT = flags.DEFINE_list(
    "what", ["matmul", "train", "sampler"],
    "What to measure: matmul, train, sampler, and (not in the default) particles (the "
    "particle sampler at each --particles), and (steps interleaved in one process) dtypes (float32 against bfloat16 matmuls) and gram (the Gram last layer "
    "against the plain one).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (or sampler calls) after compile.")
_INNER = flags.DEFINE_integer("inner_steps", 5, "Sampler inner descent steps.")
_PARTICLES = flags.DEFINE_list("particles", ["1", "8", "64"],
                               "--what=particles: particles per problem, each timed.")
_RESAMPLE_TAU = flags.DEFINE_float("resample_tau", None, "--what=particles: resample the "
                                   "particles by softmax(-E / tau) (default: independent).")
_MATMUL_N = flags.DEFINE_integer("matmul_size", 4096, "Square size of the matmul probe.")
_DEVICE_COUNTS = flags.DEFINE_list(
    "device_counts", None, "Train on meshes of these many devices (default: all). Simulated "
    "CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N) share the same cores: "
    "their figures check scaling code paths, not speed.")


def emit(**record):
  print(json.dumps(record), flush=True)


def _time_calls(fn, n):
  times = []
  for _ in range(n):
    tic = time.perf_counter()
    jax.block_until_ready(fn())
    times.append((time.perf_counter() - tic) * 1e3)
  return times


def bench_matmul(n, reps, matmul_dtype):
  """GFLOP/s of an n x n product of float32 arrays, done as the model does its products."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  dot = jax.jit(matmul_lib.matmul_for(matmul_dtype))
  jax.block_until_ready(dot(a, a))
  times = _time_calls(lambda: dot(a, a), reps)
  gflops = 2 * n ** 3 / (statistics.median(times) * 1e-3) / 1e9
  emit(what="matmul", size=n, matmul_dtype=matmul_dtype, median_ms=statistics.median(times),
       gflops_per_s=gflops, precision=str(jax.config.jax_default_matmul_precision))
  return gflops


def _layout_rates(matmul, batch, hidden, reps):
  """GFLOP/s of ``matmul`` in the three product layouts of a layer's training at (batch,
  hidden) x (hidden, hidden): forward x W, input gradient g W^T, weight gradient x^T g."""
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x, g = (jax.random.normal(k, (batch, hidden), jnp.float32) for k in keys[:2])
  w = jax.random.normal(keys[2], (hidden, hidden), jnp.float32)
  layouts = {"x_w": ((lambda a, b: matmul(a, b)), (x, w)),
             "g_wT": ((lambda a, b: matmul(a, b, transpose_b=True)), (g, w)),
             "xT_g": ((lambda a, b: matmul(a, b, transpose_a=True)), (x, g))}
  rates = {}
  for name, (product, args) in layouts.items():
    fn = jax.jit(product)  # operands as arguments: XLA would fold a product of constants
    jax.block_until_ready(fn(*args))
    median_ms = statistics.median(_time_calls(lambda: fn(*args), reps))
    rates[name] = 2 * batch * hidden ** 2 / (median_ms * 1e-3) / 1e9
  return rates


def bench_matmul_layouts(batch, hidden, reps, matmul_dtype):
  """The layer-size layouts' GFLOP/s as the model runs them; CPU libraries run them at
  different rates, bfloat16 most of all. For bfloat16 also with the other choice of
  ``bf16_matmul``'s row-major copy (made on CPU only), the figure that choice rests on."""
  record = dict(what="matmul_layouts", batch_size=batch, hidden=hidden, matmul_dtype=matmul_dtype,
                gflops_per_s=_layout_rates(matmul_lib.matmul_for(matmul_dtype), batch, hidden,
                                           reps))
  if matmul_dtype == "bfloat16":
    row_major = matmul_lib.row_major_default()
    other = functools.partial(matmul_lib.bf16_matmul, row_major=not row_major)
    record.update(row_major_copy=row_major,
                  gflops_per_s_other_copy_choice=_layout_rates(other, batch, hidden, reps))
  emit(**record)


class _Step:
  """A compiled train step on the task's training data (built once, not timed), and its
  program as lowered (StableHLO text, without source locations)."""

  def __init__(self, lowered, data):
    self.compiled, self.data, self.program = lowered.compile(), data, lowered.as_text()

  def __call__(self, state):
    return self.compiled(state, data=self.data)


def _warm_step(config, strategy, mesh=None, **overrides):
  """(config, setup, state, compiled step, compile seconds) for ``strategy``, after three
  warm-up steps (which also fill the replay buffer, so replay paths are exercised)."""
  c = base.run_config(config, strategy, **overrides)
  setup = train.build_setup(c)
  state = train.init_state(setup, mesh=mesh)
  data = train.device_data(setup.task.build_data(c.seed, c.ood), mesh)
  tic = time.perf_counter()
  compiled = _Step(train.jit_train_step(setup, mesh, state).lower(state, data=data), data)
  compile_s = time.perf_counter() - tic
  for _ in range(3):
    state, _ = compiled(state)
  jax.block_until_ready(state)
  return c, setup, state, compiled, compile_s


def _timed_step(compiled, state):
  """(new state, metrics, ms) of one step, waited for."""
  tic = time.perf_counter()
  state, metrics = compiled(state)
  jax.block_until_ready(state)
  return state, metrics, (time.perf_counter() - tic) * 1e3


def _problems(setup, n):
  """(inputs (n, inp_dim), keys (n, 2)) for the sampler: the task's evaluation problems."""
  inputs, _ = setup.task.eval_set(n, setup.config.eval_seed, False)
  return inputs, jax.random.split(jax.random.PRNGKey(2), n)


def _interleaved_steps(compiled, states, steps):
  """Interleaved train steps: ``steps`` of each compiled step of {name: compiled}, from
  and into {name: state} ``states``."""
  def step(name):
    states[name], _, ms = _timed_step(compiled[name], states[name])
    return ms
  return interleaved(steps, list(compiled), step)


def bench_train(config, strategy, steps, peak, num_devices):
  device = jax.devices()[0]
  stats_before = device.memory_stats()
  mesh = parallel.make_mesh(num_devices)
  c, setup, state, compiled, compile_s = _warm_step(config, strategy, mesh)
  flops_analytic = flops.train_step_flops(setup, state, mesh, compiled.data)
  times = []
  for _ in range(steps):
    state, metrics, ms = _timed_step(compiled, state)
    times.append(ms)
  median = statistics.median(times)
  emit(what="train", task=c.task, energy_model=c.energy_model, strategy=strategy,
       batch_size=c.batch_size,
       matmul_dtype=c.matmul_dtype,
       devices=num_devices, steps=steps,
       median_ms=median, min_ms=min(times), steps_per_s=1e3 / median, compile_s=compile_s,
       flops_analytic=flops_analytic, flops_xla=flops.xla_flops(compiled.compiled),
       gflops_per_s=flops_analytic / (median * 1e-3) / 1e9,
       fraction_of_matmul_peak=flops_analytic / (median * 1e-3) / 1e9 / peak if peak else None,
       program_memory_bytes=memory.program_bytes(compiled.compiled),
       device_peak_bytes=memory.device_peak_bytes(stats_before, device.memory_stats()),
       loss=float(metrics["loss"]))


def bench_matmul_dtypes(config, strategy, steps):
  """float32 against bfloat16 matmuls: the two compiled steps interleaved."""
  compiled, states = {}, {}
  for dtype in matmul_lib.MATMUL_DTYPES:
    _, _, states[dtype], compiled[dtype], _ = _warm_step(config, strategy, matmul_dtype=dtype)
  times = _interleaved_steps(compiled, states, steps)
  median = {dtype: statistics.median(t) for dtype, t in times.items()}
  emit(what="dtypes", strategy=strategy, batch_size=config.batch_size, steps=steps,
       median_ms=median, speedup_bfloat16=median["float32"] / median["bfloat16"])


def bench_gram(config, strategy, steps, inner_steps):
  """The Gram last layer where it pays (``last_layer='auto'``) against the plain one: train
  steps interleaved, then the sampler on ``config.eval_chunk`` problems interleaved, both
  compiled in one process."""
  modes = {"gram": "auto", "plain": "plain"}
  compiled, states, setups = {}, {}, {}
  for mode, last_layer in modes.items():
    _, setups[mode], states[mode], compiled[mode], _ = _warm_step(config, strategy,
                                                                  last_layer=last_layer)
  times = _interleaved_steps(compiled, states, steps)
  train_ms = {mode: statistics.median(t) for mode, t in times.items()}
  setup = setups["gram"]
  params = train.init_state(setup).ema_params
  inp, key = _problems(setup, config.eval_chunk)
  k = jnp.int32(inner_steps)
  samplers = {}
  for mode in modes:
    samplers[mode] = sampler.make_sampler(setups[mode].energy_fn, setup.schedule).lower(
        params, inp, key, k).compile()
    jax.block_until_ready(samplers[mode](params, inp, key, k))
  times = interleaved(max(5, steps // 4), modes,
                      lambda mode: _time_calls(lambda: samplers[mode](params, inp, key, k), 1)[0])
  sampler_ms = {mode: statistics.median(t) for mode, t in times.items()}
  emit(what="gram", strategy=strategy, batch_size=config.batch_size,
       matmul_dtype=config.matmul_dtype, steps=steps,
       train_programs_differ=compiled["gram"].program != compiled["plain"].program,
       train_median_ms=train_ms,
       train_plain_over_gram=train_ms["plain"] / train_ms["gram"],
       sampler_rows=config.eval_chunk, inner_steps=inner_steps, sampler_median_ms=sampler_ms,
       sampler_plain_over_gram=sampler_ms["plain"] / sampler_ms["gram"])


def _compiled_and_timed(fn, args, reps):
  """(``fn`` compiled for ``args``, its compile seconds, ``reps`` timed calls in ms after
  one untimed)."""
  tic = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - tic
  jax.block_until_ready(compiled(*args))
  return compiled, compile_s, _time_calls(lambda: compiled(*args), reps)


def bench_sampler(config, inner_steps, reps, peak):
  setup = train.build_setup(config)
  params = train.init_state(setup).ema_params
  sample = sampler.make_sampler(setup.energy_fn, setup.schedule)
  inp, key = _problems(setup, config.batch_size)
  compiled, compile_s, times = _compiled_and_timed(sample, (params, inp, key,
                                                            jnp.int32(inner_steps)), reps)
  median = statistics.median(times)
  flops_analytic = flops.sampler_flops(setup, params, inp, inner_steps)
  emit(what="sampler", task=config.task, energy_model=config.energy_model,
       batch_size=config.batch_size,
       matmul_dtype=config.matmul_dtype, timesteps=config.diffusion_steps,
       inner_steps=inner_steps, median_ms=median, min_ms=min(times),
       instances_per_s=config.batch_size / (median * 1e-3), compile_s=compile_s,
       flops_analytic=flops_analytic, gflops_per_s=flops_analytic / (median * 1e-3) / 1e9,
       fraction_of_matmul_peak=flops_analytic / (median * 1e-3) / 1e9 / peak if peak else None)


def bench_particles(config, counts, inner_steps, reps, resample_tau):
  """The evaluation's particle program (``Evaluator.particle_program``: re-noised,
  ``resample_tau``) at each K of ``counts``, on one evaluation chunk of problems."""
  setup = train.build_setup(config)
  evaluator = evaluation.Evaluator(setup)
  params = train.init_state(setup).ema_params
  for count in counts:
    sample, problems = evaluator.particle_program(count, evaluation.Particles.renoise,
                                                  resample_tau)
    inp, keys = _problems(setup, problems)
    compiled, compile_s, times = _compiled_and_timed(sample, (params, inp, keys,
                                                              jnp.int32(inner_steps)), reps)
    median = statistics.median(times)
    emit(what="particles", task=config.task, energy_model=config.energy_model, particles=count,
         problems=problems,
         rows=problems * count, resample_tau=resample_tau, matmul_dtype=config.matmul_dtype,
         timesteps=config.diffusion_steps, inner_steps=inner_steps, median_ms=median,
         min_ms=min(times), instances_per_s=problems / (median * 1e-3), compile_s=compile_s,
         program_memory_bytes=memory.program_bytes(compiled))


def main(argv):
  cli.start(argv)
  config = _CONFIG.value
  devices = jax.devices()
  try:
    schema.validate(config, base.get_config())
    cli.check_choices(_STRATEGIES, schema.STRATEGIES)
    cli.check_choices(_WHAT, MEASURES)
    cli.check_at_least(_STEPS, 1)
    cli.check_at_least(_INNER, 0)
    cli.check_at_least(_MATMUL_N, 1)
    particle_counts = cli.integers(_PARTICLES.name, _PARTICLES.value, 1)
    cli.check_resample_tau(_RESAMPLE_TAU)
    device_counts = cli.integers(_DEVICE_COUNTS.name, _DEVICE_COUNTS.value, 1, len(devices),
                                 f" (the {devices[0].platform} devices this process sees)")
  except schema.ConfigError as err:
    sys.exit(f"error: {err}")
  emit(what="device", platform=devices[0].platform, device_kind=devices[0].device_kind,
       device_count=len(devices), jax_version=jax.__version__)
  peak = None
  if "matmul" in _WHAT.value:
    peak = bench_matmul(_MATMUL_N.value, max(5, _STEPS.value // 2), config.matmul_dtype)
    bench_matmul_layouts(config.batch_size, config.hidden_dim, max(5, _STEPS.value // 2),
                         config.matmul_dtype)
  if "train" in _WHAT.value:
    for num_devices in device_counts or [len(devices)]:
      for strategy in _STRATEGIES.value:
        bench_train(config, strategy, _STEPS.value, peak, num_devices)
  if "dtypes" in _WHAT.value:
    for strategy in _STRATEGIES.value:
      bench_matmul_dtypes(config, strategy, _STEPS.value)
  if "gram" in _WHAT.value:
    for strategy in _STRATEGIES.value:
      bench_gram(config, strategy, _STEPS.value, _INNER.value)
  if "sampler" in _WHAT.value:
    bench_sampler(config, _INNER.value, max(5, _STEPS.value // 2), peak)
  if "particles" in _WHAT.value:
    bench_particles(config, particle_counts, _INNER.value, max(3, _STEPS.value // 4),
                    _RESAMPLE_TAU.value)
  emit(what="process", max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
