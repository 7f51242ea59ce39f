"""Shapes and dtypes of every public function, jitted and un-jitted (chex variants)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from ired_cd import schema
from ired_cd import langevin, replay, sampler, strategies, tasks
from ired_cd import model as model_lib
from ired_cd.descent import energy_descent
from ired_cd.diffusion import take
from tests import _tiny

B = 8
D = _tiny.DIM
F32 = jnp.float32


def _batch(seed=0, b=B):
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
  inp = jax.random.normal(k1, (b, D))
  y = jax.random.normal(k2, (b, D))
  t = jax.random.randint(k3, (b,), 0, _tiny.T)
  eps = jax.random.normal(k4, (b, D))
  return inp, y, t, eps


class ScheduleShapesTest(chex.TestCase):
  """Schedule lookups: (B, D) in, (B, D) or (B, 1) out, float32."""

  def setUp(self):
    super().setUp()
    self.sch = _tiny.schedule()
    self.x0, self.x_t, self.t, self.eps = _batch()

  @chex.variants(with_jit=True, without_jit=True)
  def test_q_sample(self):
    out = self.variant(self.sch.q_sample)(self.x0, self.t, self.eps)
    chex.assert_shape(out, (B, D))
    chex.assert_type(out, F32)

  @chex.variants(with_jit=True, without_jit=True)
  def test_predict_start_from_noise(self):
    out = self.variant(self.sch.predict_start_from_noise)(self.x_t, self.t, self.eps)
    chex.assert_shape(out, (B, D))
    chex.assert_type(out, F32)

  @chex.variants(with_jit=True, without_jit=True)
  def test_x0_estimate(self):
    out = self.variant(self.sch.x0_estimate)(10.0 * self.x_t, self.t)
    chex.assert_shape(out, (B, D))
    chex.assert_type(out, F32)
    self.assertLessEqual(float(jnp.max(jnp.abs(out))), 2.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_descent_rule_and_take(self):
    """Per-row timesteps give (B, 1) columns, one timestep for all rows two scalars."""
    rule = self.variant(self.sch.descent_rule)(self.t)
    chex.assert_shape([rule.step_size, rule.bound, rule.low], [(B, 1)] * 3)
    chex.assert_type([rule.step_size, rule.bound], F32)
    rule = self.variant(self.sch.descent_rule)(jnp.int32(3))
    chex.assert_shape([rule.step_size, rule.bound], [()] * 2)
    chex.assert_shape(self.variant(take)(self.sch.opt_step_size, self.t), (B, 1))


class ModelShapesTest(chex.TestCase):
  """Embedding, energy (B, 1) and score (B, D)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_sinusoidal_embedding(self):
    emb = self.variant(model_lib.sinusoidal_embedding, static_argnums=1)(
        jnp.arange(5, dtype=jnp.int32), 16)
    chex.assert_shape(emb, (5, 16))
    chex.assert_type(emb, F32)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("film_table", _tiny.T), ("per_sample", None))
  def test_energy(self, num_timesteps):
    fn, params = _tiny.small_energy(num_timesteps=num_timesteps)
    inp, y, t, _ = _batch()
    e = self.variant(fn)(params, inp, y, t)
    chex.assert_shape(e, (B, 1))
    chex.assert_type(e, F32)

  @chex.variants(with_jit=True, without_jit=True)
  def test_energy_and_score(self):
    fn, params = _tiny.small_energy()
    inp, y, t, _ = _batch()
    e, s = self.variant(lambda *a: model_lib.energy_and_score(fn, *a))(params, inp, y, t)
    chex.assert_shape([e, s], [(B,), (B, D)])
    chex.assert_type([e, s], F32)
    s2 = self.variant(lambda *a: model_lib.score(fn, *a))(params, inp, y, t)
    chex.assert_shape(s2, (B, D))
    chex.assert_trees_all_close(s2, s, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(s))))

  @chex.variants(with_jit=True, without_jit=True)
  def test_condition_and_energy_given(self):
    """condition: five (B, hidden) parts; energy_given(cond, y): (B, 1); fc1 split = Dense on concat."""
    fn, params = _tiny.small_energy()
    inp, y, t, _ = _batch()
    cond = self.variant(fn.condition)(params, inp, t)
    chex.assert_shape(list(cond), [(B, 32)] * 5)
    chex.assert_type(list(cond), F32)
    e = self.variant(fn.energy_given)(params, cond, y)
    chex.assert_shape(e, (B, 1))
    e2, s2 = self.variant(lambda *a: model_lib.conditioned_energy_and_score(fn, *a))(
        params, cond, y)
    chex.assert_shape([e2, s2], [(B,), (B, D)])
    kernel, bias = params["fc1"]["kernel"], params["fc1"]["bias"]
    chex.assert_shape(kernel, (2 * D, 32))
    h1 = jnp.concatenate([inp, y], axis=-1) @ kernel + bias
    h1_split = cond[0] + y @ kernel[D:]
    chex.assert_trees_all_close(h1_split, h1, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_init_params(self):
    params = self.variant(lambda k: model_lib.init_params(_tiny.small_model(), k))(
        jax.random.PRNGKey(0))
    chex.assert_shape(params["fc1"]["kernel"], (2 * D, 32))
    chex.assert_shape(params["fc4"]["kernel"], (32, D))
    chex.assert_shape(params["t_map_fc2"]["bias"], (64,))
    chex.assert_type(params["fc1"]["bias"], F32)


class TaskShapesTest(chex.TestCase):
  """Every task's training batches (B, inp_dim), (B, out_dim) float32 (a dataset task's drawn
  from its data), evaluation sets the same on the host, residuals (B,) float32."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[(n, n) for n in tasks.TASK_NAMES])
  def test_sample(self, name):
    task = _tiny.tiny_task(name)
    data = task.build_data(0)
    chex.assert_trees_all_equal_shapes_and_dtypes(data, task.data_shapes())
    inp, x = self.variant(lambda k, d: task.sample(k, B, False, d))(jax.random.PRNGKey(0), data)
    chex.assert_shape([inp, x], [(B, task.inp_dim), (B, task.out_dim)])
    chex.assert_type([inp, x], F32)
    chex.assert_tree_all_finite((inp, x))
    if name in ("inverse", "lowrank", "addition"):
      self.assertEqual(task.out_dim, D)
      self.assertEqual(task.inp_dim, 2 * D if name == "addition" else D)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[(n, n) for n in tasks.TASK_NAMES])
  def test_eval_set_and_residual(self, name):
    task = _tiny.tiny_task(name)
    inp, x = task.eval_set(B, 0, True)
    chex.assert_shape([inp, x], [(B, task.inp_dim), (B, task.out_dim)])
    chex.assert_type([inp, x], np.float32)
    res = self.variant(task.residual)(inp, x)
    chex.assert_shape(res, (B,))
    chex.assert_type(res, F32)


class ChainShapesTest(chex.TestCase):
  """Langevin chain and energy descent: (B, D) out, scalar statistics."""

  def setUp(self):
    super().setUp()
    self.fn, self.params = _tiny.small_energy()
    self.sch = _tiny.schedule()
    self.inp, self.y, self.t, _ = _batch()

  @chex.variants(with_jit=True, without_jit=True)
  def test_langevin_chain(self):
    noises = jax.random.normal(jax.random.PRNGKey(1), (3, B, D))
    run = lambda p, inp, y, t, n: langevin.langevin_chain(  # noqa: E731
        self.fn, p, inp, y, t, n, self.sch)
    y, stats = self.variant(run)(self.params, self.inp, self.y, self.t, noises)
    chex.assert_shape(y, (B, D))
    chex.assert_type(y, F32)
    chex.assert_shape(list(stats), [()] * 2)
    self.assertLessEqual(float(jnp.max(jnp.abs(y))), 2.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_sample_negatives(self):
    run = lambda p, inp, y, t, k: langevin.sample_negatives(  # noqa: E731
        self.fn, p, inp, y, t, k, 3, self.sch, 1.0, 0.5)
    y, stats = self.variant(run)(self.params, self.inp, self.y, self.t, jax.random.PRNGKey(2))
    chex.assert_shape(y, (B, D))
    chex.assert_type(y, F32)
    chex.assert_shape(list(stats), [()] * 2)

  @chex.variants(with_jit=True, without_jit=True)
  def test_energy_descent(self):
    sch = self.sch
    run = lambda p, inp, y, t, n: energy_descent(  # noqa: E731
        self.fn, p, inp, y, t, n, sch.descent_rule(t).step_size, sch.descent_rule(t).bound)
    y = self.variant(run)(self.params, self.inp, self.y, self.t, jnp.int32(2))
    chex.assert_shape(y, (B, D))
    chex.assert_type(y, F32)


class ReplayShapesTest(chex.TestCase):
  """Replay add keeps every array's shape; sample gives (B, D), (B, inp), (B,) bool."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("plain", None), ("conditions", 2 * D))
  def test_add_and_sample(self, condition_dim):
    buf = replay.create(_tiny.T, 16, 4, D, condition_dim)
    inp, y, t, _ = _batch()
    conds = None if condition_dim is None else jnp.ones((B, condition_dim))
    new = self.variant(replay.add)(buf, y, t, conds)
    chex.assert_trees_all_equal_shapes_and_dtypes(new, buf)
    chex.assert_shape(new.storage, (10, 4, D))
    chex.assert_type([new.write_pointer, new.count], jnp.int32)
    x, c, avail = self.variant(replay.sample)(new, jax.random.PRNGKey(0), t)
    chex.assert_shape([x, avail], [(B, D), (B,)])
    chex.assert_type([x, avail], [F32, jnp.bool_])
    if condition_dim is None:
      self.assertIsNone(c)
    else:
      chex.assert_shape(c, (B, condition_dim))
    frac = self.variant(replay.fill_fraction)(new)
    chex.assert_shape(frac, ())


def _settings(strategy):
  """LossSettings of ``strategy`` as its stage preset sets them, with a 2-step chain."""
  c = _tiny.tiny_config(strategy, mining_opt_steps=2)
  return strategies.LossSettings.from_config(c)


class LossShapesTest(chex.TestCase):
  """Every strategy's loss_fn: scalar loss, scalar metrics, buffer of unchanged shapes."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[(s, s) for s in schema.STRATEGIES])
  def test_loss_fn(self, strategy):
    settings = _settings(strategy)
    fn, params = _tiny.small_energy()
    task = _tiny.tiny_task("inverse")
    loss_fn = strategies.make_loss_fn(fn, _tiny.schedule(), settings, task.residual)
    buf = replay.create_sharded(1, _tiny.T, 16, 4, D) if settings.use_replay_buffer else None
    inp, x0 = task.sample(jax.random.PRNGKey(0), B)
    loss, (metrics, new_buf) = self.variant(loss_fn)(params, inp, x0, jax.random.PRNGKey(1),
                                                     jnp.int32(5), buf)
    chex.assert_shape(loss, ())
    chex.assert_type(loss, F32)
    chex.assert_tree_all_finite(loss)
    for name, value in metrics.items():
      chex.assert_shape(value, (), custom_message=name)
    self.assertIn("loss_mse", metrics)
    if strategy != "none":
      self.assertIn("energy_weight", metrics)
    if buf is None:
      self.assertIsNone(new_buf)
    else:
      chex.assert_trees_all_equal_shapes_and_dtypes(new_buf, buf)
      self.assertEqual(int(jnp.sum(new_buf.count)), B)


class SamplerShapesTest(chex.TestCase):
  """ired_sample and make_sampler: (B, out_dim) float32."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("scaled", False), ("x0", True))
  def test_ired_sample(self, return_x0):
    fn, params = _tiny.small_energy()
    inp, y, _, _ = _batch()
    run = lambda p, inp, y, k: sampler.ired_sample(fn, p, inp, y, _tiny.schedule(), k,  # noqa
                                                   return_x0)
    out = self.variant(run)(params, inp, y, jnp.int32(1))
    chex.assert_shape(out, (B, D))
    chex.assert_type(out, F32)
    chex.assert_tree_all_finite(out)

  def test_make_sampler(self):
    """make_sampler is jitted already: (B, D) float32, and one trace for any inner_steps
    (the count is traced, not static)."""
    fn, params = _tiny.small_energy()
    sample = sampler.make_sampler(fn, _tiny.schedule())
    inp = jnp.ones((3, D))
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    with _tiny.jit_traces() as traced:
      outs = [sample(params, inp, keys, k) for k in (0, 0, 2)]
    chex.assert_shape(outs, [(3, D)] * 3)
    chex.assert_type(outs, F32)
    self.assertEqual(traced["sample"], 1)
    self.assertFalse(np.array_equal(outs[0], outs[2]))  # the count reached the program
