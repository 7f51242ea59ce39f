"""When the Gram last layer pays: the static multiply-add count behind ``gram.pays``."""

import pytest

from ired_cd import gram


@pytest.mark.parametrize("calls,first_batch", [(1, 712), (10, 72)])
def test_pays_from_the_batch_where_gram_needs_fewer_multiply_adds(calls, first_batch):
  """hidden 512, out 400: B hidden^2 + hidden^2 out / calls < 2 B hidden out from the
  quoted batch on, for one call and for a 10-step chain."""
  assert not gram.pays(first_batch - 1, 512, 400, calls)
  assert gram.pays(first_batch, 512, 400, calls)


def test_never_pays_when_the_output_is_at_most_half_the_hidden_width():
  assert not gram.pays(10 ** 6, 512, 256, 10 ** 3)
