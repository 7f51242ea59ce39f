"""Graph 3-colouring (ired_cd/tasks/colouring.py) with IRED-CD stage 3 (cd_full, as
configs/q204.py): planted 3-colourable graphs on 20 nodes, average degree 3 in
distribution, 4.5 on the harder set. The CD filter drops the negatives that colour the
graph properly (the verifier: 0 conflicting edges)."""

from configs import base, q204


def get_config(arg=None):
  c = q204.get_config()
  c.experiment_name = "colouring_cd_full"
  c.description = "IRED-CD stage 3 on planted graph 3-colouring (20 nodes), many colourings each"
  c.task = "colouring"
  c.output_dir = "results/colouring/cd_full"
  c.notes = ""
  if arg:
    base.apply_variant(c, arg)
  return c
