"""3-SAT (ired_cd/tasks/sat.py) with IRED-CD stage 3 (cd_full, as configs/q204.py): random
3-SAT on 20 variables, trained and evaluated in distribution on 60-80 clauses, the harder
set SATLIB uf20-91's distribution (91 clauses). The CD filter drops the negatives that
satisfy the formula (the verifier: 0 violations)."""

from configs import base, q204


def get_config(arg=None):
  c = q204.get_config()
  c.experiment_name = "sat_cd_full"
  c.description = "IRED-CD stage 3 on random 3-SAT (n = 20), many satisfying assignments each"
  c.task = "sat"
  c.output_dir = "results/sat/cd_full"
  c.notes = ""
  if arg:
    base.apply_variant(c, arg)
  return c
