"""Memory figures of one measurement: XLA's for the compiled program, the device's where it keeps any.

A device's ``memory_stats()`` (None on CPU) holds one high-water mark,
``peak_bytes_in_use``, per process; nothing resets it, so after a first
measurement it reads the largest peak of all measurements so far, not this one's.
"""


def program_bytes(compiled) -> int:
  """Bytes XLA assigns to one call of ``compiled``: temporaries + arguments + outputs, less the
  outputs aliased to (donated) arguments. A property of the program, so per strategy on every
  backend; allocator overheads are not in it."""
  mem = compiled.memory_analysis()
  return int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
             - mem.alias_size_in_bytes)


def device_peak_bytes(before, after):
  """Peak device bytes in use during a measurement, above those in use when it began.

  ``before``, ``after``: ``device.memory_stats()`` at its start and end. None where the backend
  keeps no statistics (CPU), and where the measurement did not raise the process's high-water
  mark, so that its own peak is hidden under an earlier one's (measure it alone, e.g.
  ``bench --strategies=NAME``, for its figure).
  """
  if not (before and after and "bytes_in_use" in before and "peak_bytes_in_use" in after):
    return None
  if after["peak_bytes_in_use"] <= before["peak_bytes_in_use"]:
    return None
  return int(after["peak_bytes_in_use"] - before["bytes_in_use"])
