"""Ahead-of-time compilation of a run for TPU slices and NVIDIA GPUs, on a machine without them.

``compile_run(config, target, target_mesh(target))`` builds exactly what
``experiments.run`` runs on ``target``: on the mesh over the target's devices
(``target_mesh``, built once for every program compiled for it), the train state
in its shardings (``train.abstract_state``: replay buffer one shard per device),
``train.make_multi_step`` over ``log_every`` steps with the state donated, and
the evaluation sampler on the mesh (``evaluation``'s chunk, problems
on the ``data`` axis). Inputs are jax.ShapeDtypeStructs: nothing is allocated.
It returns, per device: XLA's memory (arguments, outputs, temporaries, code),
whether it fits the chip, the matmul FLOPs of a train step (``flops``) and a
roofline lower bound of the step time. ``compile_strategies`` does so for several
strategies, ``max_batch`` finds the largest batch that fits.

Targets: TPU slices by their cloud names (``v5e-16``), NVIDIA GPUs by name and
count (``h100x8``), with XLA's GPU target configs in ``gpu_targets/``. Chips'
memory, peak FLOP/s and bandwidth, with their sources: docs/hardware.md. The
compile-only backends (libtpu, the CUDA plugin) come from requirements-compile.txt,
installed apart (``compile_packages``; ``experiments/compile.py`` puts them on the
path): a normal run never loads them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, Optional

import jax
import jax.numpy as jnp
from jax.experimental import topologies

from ired_cd import compile_packages, evaluation, flops, parallel, quiet, train

GPU_TARGETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")
GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip; sources in docs/hardware.md."""

  name: str
  memory_bytes: int  # HBM per chip
  peak_flops: Dict[str, float]  # dense matmul FLOP/s per config.matmul_dtype, as JAX runs it
  bandwidth: float  # HBM bytes/s
  usable_fraction: float  # of memory_bytes a run gets (GPU: JAX preallocates 75 %)


# float32 matmuls at JAX's default precision run as one bfloat16 pass on TPU and as TF32 on
# A100/H100/H200, so their peak is that of those formats.
CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, {"bfloat16": 275e12, "float32": 275e12}, 1200e9, 1.0),
    "v5e": Chip("TPU v5e", 16 * GIB, {"bfloat16": 197e12, "float32": 197e12}, 819e9, 1.0),
    "v5p": Chip("TPU v5p", 95 * GIB, {"bfloat16": 459e12, "float32": 459e12}, 2765e9, 1.0),
    "v6e": Chip("TPU v6e", 32 * GIB, {"bfloat16": 918e12, "float32": 918e12}, 1638e9, 1.0),
    "a100-80gb": Chip("NVIDIA A100-SXM4-80GB", 85100068864,
                      {"bfloat16": 312e12, "float32": 156e12}, 2039e9, 0.75),
    "h100": Chip("NVIDIA H100 80GB HBM3", 84942979072,
                 {"bfloat16": 989e12, "float32": 494.5e12}, 3352e9, 0.75),
    "h200": Chip("NVIDIA H200 141GB HBM3e", 151397597184,
                 {"bfloat16": 989e12, "float32": 494.5e12}, 4800e9, 0.75),
}
GPU_CONFIGS = {"a100-80gb": "a100_sxm_80.txtpb", "h100": "h100_sxm.txtpb", "h200": "h200.txtpb"}


@dataclasses.dataclass(frozen=True)
class Target:
  """Where a run would go: ``chip`` x devices as JAX's topology names them (TPU: ``v5e:4x4``
  with ``chips_per_host`` bounds and the torus ``wrap`` of each axis; GPU: ``hosts x 1 x GPUs
  per host``)."""

  name: str
  chip: str
  topology: str
  chips_per_host: Optional[tuple] = None
  wrap: Optional[tuple] = None

  @property
  def platform(self) -> str:
    """The platform its devices name (``Device.platform``)."""
    return "gpu" if self.chip in GPU_CONFIGS else "tpu"


# Cloud TPU names -> (chip, topology, chips per host bounds[, wrap]), as MaxText's
# accelerator_to_spec_map.py gives them (docs/hardware.md). The number counts TensorCores for
# v4 and v5p (two per chip: v4-8 is 4 chips, 4 per host) and chips for v5e and v6e. Every
# multi-host v5e and v6e slice is made of 4-chip hosts (v5e-16 is 4 hosts); v5e-8 and v6e-8
# are one 8-chip host, as a Cloud TPU VM of that name is.
_TPU_SLICES = {
    "v4-8": ("v4", "v4:2x2x1", (2, 2, 1)),
    "v4-16": ("v4", "v4:2x2x2", (2, 2, 1)),
    "v4-32": ("v4", "v4:2x2x4", (2, 2, 1)),
    "v5p-8": ("v5p", "v5p:2x2x1", (2, 2, 1)),
    "v5p-16": ("v5p", "v5p:2x2x2", (2, 2, 1)),
    "v5p-32": ("v5p", "v5p:2x2x4", (2, 2, 1)),
    "v5p-64": ("v5p", "v5p:2x4x4", (2, 2, 1)),
    "v5p-128": ("v5p", "v5p:4x4x4", (2, 2, 1), (True, True, True)),
    "v5e-1": ("v5e", "v5e:1x1", (1, 1, 1)),
    "v5e-4": ("v5e", "v5e:2x2", (2, 2, 1)),
    "v5e-8": ("v5e", "v5e:2x4", (2, 4, 1)),
    "v5e-16": ("v5e", "v5e:4x4", (2, 2, 1)),
    "v5e-32": ("v5e", "v5e:4x8", (2, 2, 1)),
    "v5e-64": ("v5e", "v5e:8x8", (2, 2, 1)),
    "v5e-128": ("v5e", "v5e:8x16", (2, 2, 1), (False, True, False)),
    "v5e-256": ("v5e", "v5e:16x16", (2, 2, 1), (True, True, False)),
    "v6e-1": ("v6e", "v6e:1x1", (1, 1, 1)),
    "v6e-4": ("v6e", "v6e:2x2", (2, 2, 1)),
    "v6e-8": ("v6e", "v6e:2x4", (2, 4, 1)),
    "v6e-16": ("v6e", "v6e:4x4", (2, 2, 1)),
    "v6e-32": ("v6e", "v6e:4x8", (2, 2, 1)),
    "v6e-64": ("v6e", "v6e:8x8", (2, 2, 1)),
    "v6e-128": ("v6e", "v6e:8x16", (2, 2, 1), (False, True, False)),
    "v6e-256": ("v6e", "v6e:16x16", (2, 2, 1), (True, True, False)),
}
_GPU_COUNTS = (1, 8)


class TargetError(ValueError):
  """An unknown target, or one this installation cannot compile for."""


def known_targets():
  gpus = [f"{chip}{'' if n == 1 else f'x{n}'}" for chip in GPU_CONFIGS for n in _GPU_COUNTS]
  return sorted(_TPU_SLICES) + gpus


def get_target(name: str, hosts: int = 1) -> Target:
  """The target called ``name``; ``hosts`` (GPUs only) repeats a GPU machine over hosts."""
  if name in _TPU_SLICES:
    if hosts != 1:
      raise TargetError(f"--hosts: a TPU slice's hosts are fixed by its name ({name}); "
                        "give --hosts for GPU targets only")
    return Target(name, *_TPU_SLICES[name])
  chip, _, count = name.partition("x")
  if chip in GPU_CONFIGS and (not count or count.isdigit() and int(count) > 0):
    per_host = int(count or 1)
    if hosts < 1:
      raise TargetError(f"--hosts: a positive integer, got {hosts}")
    return Target(name, chip, f"{hosts}x1x{per_host}")
  raise TargetError(f"--target: unknown target {name!r}; known: {', '.join(known_targets())} "
                    "(GPU names take any count, e.g. h100x4)")


def target_devices(target: Target):
  """The target's compile-only devices (each has ``process_index``, its host)."""
  try:
    with quiet.held_stderr():
      jax.devices()  # discovers the plugins (the CUDA stub prints here)
      if target.platform == "tpu":
        # A v4 chip's two TensorCores are one JAX device (megacore), as on a v4 TPU VM.
        options = {"chip_config_name": "megacore"} if target.chip == "v4" else {}
        if target.wrap:
          options["wrap"] = list(target.wrap)
        topology = topologies.get_topology_desc(
            platform="tpu", topology_name=target.topology,
            chips_per_host_bounds=list(target.chips_per_host), **options)
      else:  # the CUDA plugin's topology
        with open(os.path.join(GPU_TARGETS, GPU_CONFIGS[target.chip])) as f:
          topology = topologies.get_topology_desc(platform="cuda", target_config=f.read(),
                                                  topology=target.topology)
  except (RuntimeError, NotImplementedError) as err:
    raise TargetError(f"--target: cannot compile for {target.name} here "
                      f"({str(err).splitlines()[0]}); install the compile packages: "
                      f"{compile_packages.INSTALL}") from err
  return topology.devices


def target_mesh(target: Target):
  """The mesh ``experiments.run`` would build on ``target``, over its compile-only devices."""
  return parallel.make_mesh(devices=target_devices(target))


def memory_breakdown(compiled) -> Dict[str, int]:
  """Per-device bytes of one call of ``compiled`` (XLA's memory_analysis); ``needed`` is
  what it holds at once: arguments + outputs not aliased to donated arguments +
  temporaries + code."""
  mem = compiled.memory_analysis()
  sizes = dict(arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
               aliased=mem.alias_size_in_bytes, temporaries=mem.temp_size_in_bytes,
               code=mem.generated_code_size_in_bytes)
  sizes = {k: int(v) for k, v in sizes.items()}
  sizes["needed"] = (sizes["arguments"] + sizes["outputs"] - sizes["aliased"]
                     + sizes["temporaries"] + sizes["code"])
  return sizes


class DoesNotFit(Exception):
  """A program the target's compiler refused for lack of memory (TPU: RESOURCE_EXHAUSTED);
  ``needed_bytes``: what the compiler said it needed, where it said (else None)."""

  def __init__(self, message: str):
    super().__init__(message)
    # "... HLO temporaries (78.58G) exceeds available HBM (15.75G)", "Used 20.5G of 15.75G hbm"
    said = re.search(r"\(([\d.]+)([KMGT])\) exceeds|Used ([\d.]+)([KMGT]) of", message)
    self.needed_bytes = None
    if said:
      value, unit = said.group(1, 2) if said.group(1) else said.group(3, 4)
      self.needed_bytes = int(float(value) * 1024 ** ("KMGT".index(unit) + 1))


# Compile-only GPU programs sort with XLA's own sort: its CUB sort, which XLA picks for large
# sorts (the residual filter's quantile above a batch of about 10^5 a device), asks the CUDA
# runtime for a device at compile time. Such programs are predicted with slightly less scratch
# memory than a GPU would use.
_COMPILER_OPTIONS = {"gpu": {"xla_gpu_enable_cub_radix_sort": False}}  # by device platform


def _compile(lowered, platform):
  try:
    return lowered.compile(_COMPILER_OPTIONS.get(platform))
  except Exception as err:  # noqa: BLE001 - XLA's errors have no finer public type
    if "RESOURCE_EXHAUSTED" in str(err):
      raise DoesNotFit(str(err).splitlines()[0]) from err
    raise


def abstract_data(setup, mesh):
  """The task's training data (``task.data_shapes``) as replicated ShapeDtypeStructs, or None."""
  shapes = setup.task.data_shapes()
  return None if shapes is None else jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)),
      shapes)


def compile_train(setup, mesh):
  """(compiled ``make_multi_step`` over ``log_every`` steps, abstract state, steps)."""
  c = setup.config
  steps = min(c.log_every, c.train_steps)
  state = train.abstract_state(setup, mesh)
  lowered = train.make_multi_step(setup, steps, mesh, state).lower(
      state, data=abstract_data(setup, mesh))
  return _compile(lowered, mesh.devices.flat[0].platform), state, steps


def _compile_on_mesh(sample, setup, mesh, params, problems: int):
  """``sample(params, inputs, keys, inner_steps)`` compiled on ``mesh`` for one chunk of
  ``problems``: their inputs and keys on the ``data`` axis, ``params`` replicated."""
  rows = parallel.batch_sharding(mesh)
  return _compile(sample.lower(
      jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype,
                                                            sharding=parallel.replicated(mesh)),
                             params),
      jax.ShapeDtypeStruct((problems, setup.task.inp_dim), jnp.float32, sharding=rows),
      jax.ShapeDtypeStruct((problems, 2), jnp.uint32, sharding=rows),
      jax.ShapeDtypeStruct((), jnp.int32)), mesh.devices.flat[0].platform)


def compile_sampler(setup, mesh, params):
  """The evaluation program as ``evaluation.Evaluator`` runs it on ``mesh`` (its own sampler
  and chunk)."""
  evaluator = evaluation.Evaluator(setup, mesh=mesh)
  return _compile_on_mesh(evaluator.sample, setup, mesh, params, evaluator.chunk)


def compile_particles(config, target: Target, mesh, counts,
                      resample_tau: Optional[float] = None):
  """Yields, per K of ``counts``, the particle evaluation's program as ``Evaluator.particles``
  runs it on ``mesh`` (``Evaluator.particle_program``: a chunk of eval_chunk // K problems, K
  re-noised particles each): {target, particles, problems, memory (per device,
  ``memory_breakdown``), needed_bytes_per_problem (per device: needed / its problems)}."""
  setup = train.build_setup(config)
  evaluator = evaluation.Evaluator(setup, mesh=mesh)
  params = train.abstract_state(setup, mesh).ema_params
  per_device = parallel.data_size(mesh)
  for k in counts:
    sample, problems = evaluator.particle_program(k, evaluation.Particles.renoise, resample_tau)
    memory = memory_breakdown(_compile_on_mesh(sample, setup, mesh, params, problems))
    yield dict(target=target.name, particles=k, problems=problems, rows=problems * k,
               resample_tau=resample_tau, memory=memory,
               needed_bytes_per_problem=memory["needed"] * per_device / problems)


def replay_shards(compiled_train) -> Optional[Dict[str, int]]:
  """The replay buffer's shards in the compiled train program: {'total', 'per_device',
  'devices_holding_one'} (None: no buffer)."""
  state_sharding = compiled_train.input_shardings[0][0]
  if state_sharding.replay is None:
    return None
  sharding = state_sharding.replay.storage
  shape = compiled_train.args_info[0][0].replay.storage.shape
  starts = [index[0].start or 0 for index in sharding.devices_indices_map(shape).values()]
  return dict(total=shape[0], per_device=sharding.shard_shape(shape)[0],
              devices_holding_one=len(set(starts)))


def compile_run(config, target: Target, mesh, sampler_memory=None) -> Dict:
  """Compiles ``config``'s train step and evaluation sampler for ``target`` on its ``mesh``
  (``target_mesh``); a dict of the per-device figures (see the module docstring).
  ``sampler_memory``: the sampler's ``memory_breakdown`` where known (it does not depend on
  the batch size). Raises DoesNotFit when the target's compiler refuses a program for lack
  of memory."""
  setup = train.build_setup(config)
  chip = CHIPS[target.chip]
  compiled, state, steps = compile_train(setup, mesh)
  train_memory = memory_breakdown(compiled)
  if sampler_memory is None:
    sampler_memory = memory_breakdown(compile_sampler(setup, mesh, state.ema_params))
  # During evaluation the train state stays on the device beside the sampler.
  needed = max(train_memory["needed"], train_memory["arguments"] + sampler_memory["needed"])
  usable = int(chip.memory_bytes * chip.usable_fraction)
  step_flops = flops.train_step_flops(setup, state, mesh, abstract_data(setup, mesh))
  devices = list(mesh.devices.flat)
  n = len(devices)
  compute_s = step_flops / n / chip.peak_flops[config.matmul_dtype]
  # Every byte of the program's arguments and outputs moves at least once per call.
  memory_s = (train_memory["arguments"] + train_memory["outputs"]) / steps / chip.bandwidth
  step_s = max(compute_s, memory_s)
  return dict(
      target=target.name, chip=chip.name, topology=target.topology, devices=n,
      hosts=len({d.process_index for d in devices}), device_kind=devices[0].device_kind,
      strategy=config.mining_strategy, batch_size=config.batch_size,
      per_device_batch=config.batch_size // n, matmul_dtype=config.matmul_dtype,
      steps_per_program=steps, train_memory=train_memory, sampler_memory=sampler_memory,
      needed_bytes=needed, usable_bytes=usable, fits=needed <= usable,
      headroom_bytes=usable - needed, replay_shards=replay_shards(compiled),
      matmul_flops_per_step=step_flops, roofline_step_s=step_s,
      roofline_bound="compute" if compute_s >= memory_s else "memory",
      max_steps_per_s=1.0 / step_s)


def with_batch(config, batch_size: int):
  c = config.copy_and_resolve_references()
  c.batch_size = batch_size
  return c


def max_batch(config, target: Target, mesh, result: Dict, on_probe=None,
              tolerance: float = 0.01) -> int:
  """The largest global batch (a multiple of the device count) with which ``config`` fits
  ``target``, to within ``tolerance`` (a batch that fits, less than that fraction below
  the smallest found not to); 0 if none does. ``result``: ``compile_run``'s at
  ``config.batch_size``; ``on_probe(batch, fits)`` is called after each compile.

  Memory grows about linearly with the batch (in steps, where XLA pads it to tiles):
  each next batch tried is where the line through the two largest measured batches
  of different memory reaches the chip's limit (or, where that is no help, twice the
  largest that fits, or the middle of the bracket), kept a tolerance inside the
  bracket, so that a good guess is confirmed by one compile just beside it.
  """
  n = parallel.data_size(mesh)
  # per-device batch -> (fits, bytes needed (None: refused without saying), usable bytes)
  results = {config.batch_size // n: (result["fits"], result["needed_bytes"],
                                       result["usable_bytes"])}

  def probe(k):
    if k not in results:
      try:
        r = compile_run(with_batch(config, k * n), target, mesh, result["sampler_memory"])
        results[k] = (r["fits"], r["needed_bytes"], r["usable_bytes"])
      except DoesNotFit as refused:  # what the compiler said it needed, a point of the line
        results[k] = (False, refused.needed_bytes, None)
      if on_probe:
        on_probe(k * n, results[k][0])
    return results[k][0]

  def guess():
    measured = sorted((k, r[1]) for k, r in results.items() if r[1] is not None)
    points = {}
    for k, need in measured[::-1]:  # the largest batch of each memory figure
      points.setdefault(need, k)
    if len(points) < 2:
      return None
    (need2, k2), (need1, k1) = sorted(points.items(), key=lambda p: -p[1])[:2]
    if need2 <= need1:
      return None
    return k2 + int((result["usable_bytes"] - need2) * (k2 - k1) // (need2 - need1))

  def margin(k):
    return max(1, int(tolerance * k))

  k = max(1, config.batch_size // n)
  lo, hi = 0, None  # the largest per-device batch known to fit, the smallest known not to
  nudged = False  # the last batch tried was just above lo
  while True:
    fits = probe(k)
    if fits:
      lo = max(lo, k)
    else:
      hi = k if hi is None else min(hi, k)
    if hi is not None and hi - lo <= margin(hi):
      break
    split = 2 * max(lo, 1) if hi is None else (lo + hi) // 2
    k = guess()
    if k is None or (hi is not None and k >= hi):
      k = split
    k = max(k, lo + margin(lo))  # a guess at the largest that fits: just above it
    nudge = k == lo + margin(lo)
    if nudge and nudged and fits:  # the line is behind twice running: halve the bracket
      k, nudge = split, False
    if hi is not None:
      k = min(k, hi - margin(hi))
      if not lo < k < hi:
        k = (lo + hi) // 2
    nudged = nudge
  return lo * n


def compile_strategies(configs, target: Target, mesh, find_max_batch: bool = False,
                       on_probe=None):
  """Yields, for each of ``configs`` in turn, ``compile_run``'s result on ``mesh`` (with
  ``max_batch`` where ``find_max_batch``; ``on_probe`` as there), or, where the target's
  compiler refuses it for lack of memory, {target, strategy, batch_size, fits: False,
  error}. The evaluation sampler, the same for every strategy, is compiled once."""
  sampler_memory = None
  for config in configs:
    try:
      result = compile_run(config, target, mesh, sampler_memory)
    except DoesNotFit as err:
      yield dict(target=target.name, strategy=config.mining_strategy,
                 batch_size=config.batch_size, fits=False, error=str(err))
      continue
    sampler_memory = result["sampler_memory"]
    if find_max_batch:
      result["max_batch"] = max_batch(config, target, mesh, result, on_probe)
    yield result
