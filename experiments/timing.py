"""The order of a comparison's timed calls: interleaved in one process."""


def interleaved(rounds, names, run):
  """{name: [ms, ...]}: ``run(name)`` (one timed call, its ms) for each of ``names`` in each of
  ``rounds`` rounds, the order reversed every other round (the last name leads the first), so
  the machine's drift hits every name alike and the ratios are cleaner than separate runs'."""
  times = {name: [] for name in names}
  for i in range(rounds):
    for name in list(names)[::1 if i % 2 else -1]:
      times[name].append(run(name))
  return times
