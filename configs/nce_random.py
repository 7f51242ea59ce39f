"""Baseline `nce_random`: the original NCE on random negatives, at the guide's scale."""

from configs import base


def get_config(arg=None):
  return base.baseline("nce_random", arg)
