"""The Gram last layer: when it pays (``gram.pays``), and the ``last_layer`` field that
chooses it."""

import jax
import pytest

from configs import base
from ired_cd import gram, model, train


@pytest.mark.parametrize("calls,first_batch", [(1, 712), (10, 72)])
def test_pays_from_the_batch_where_gram_needs_fewer_multiply_adds(calls, first_batch):
  """hidden 512, out 400: B hidden^2 + hidden^2 out / calls < 2 B hidden out from the
  quoted batch on, for one call and for a 10-step chain."""
  assert not gram.pays(first_batch - 1, 512, 400, calls)
  assert gram.pays(first_batch, 512, 400, calls)


def test_never_pays_when_the_output_is_at_most_half_the_hidden_width():
  assert not gram.pays(10 ** 6, 512, 256, 10 ** 3)


@pytest.mark.parametrize("last_layer,batch,calls,gram", [
    ("auto", 711, 1, False), ("auto", 712, 1, True), ("auto", 72, 10, True),
    ("gram", 1, 1, True), ("plain", 10 ** 4, 10, False)])
def test_last_layer_decides_the_score_form(last_layer, batch, calls, gram):
  """``last_layer`` gram / plain fix the form; auto takes it where ``gram.pays``."""
  fn = model.EnergyFunction(model.EnergyMLP(out_dim=400, hidden=512, last_layer=last_layer))
  assert model.uses_gram(fn.sharing(calls), batch) == gram


def _hidden_products(last_layer):
  """The config's last_layer on the tiny none step: (the model's field, the number of
  hidden x hidden (64 x 64) products in the step's jaxpr)."""
  setup = train.build_setup(base.run_config(base.get_config("tiny"), "none",
                                            last_layer=last_layer))
  jaxpr = str(jax.make_jaxpr(train.make_train_step(setup))(train.init_state(setup)))
  return setup.model.last_layer, jaxpr.count("f32[64,64] = dot_general")


def test_config_last_layer_reaches_the_compiled_step():
  """The config's field is the model's, and it changes the step's graph: gram adds the
  hidden x hidden W W^T (and its derivatives) that plain lacks; auto is plain here (the
  tiny model's out_dim 16 is under half its hidden width 64: gram never pays)."""
  products = {}
  for last_layer in model.LAST_LAYERS:
    field, products[last_layer] = _hidden_products(last_layer)
    assert field == last_layer
  assert products["gram"] > products["plain"] == products["auto"]
