"""What the products of a traced or compiled program multiply: dtypes, shapes and layouts."""

import re


def dot_operands(jaxpr):
  """((lhs dtype, rhs dtype), (lhs shape, rhs shape)) of every dot_general in ``jaxpr`` and
  its sub-jaxprs."""
  dots = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      dots.append((tuple(str(v.aval.dtype) for v in eqn.invars),
                   tuple(v.aval.shape for v in eqn.invars)))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          dots += dot_operands(sub)
  return dots


def compiled_dots(hlo):
  """(lhs type, rhs type, lhs contracting dim, rhs contracting dim) of every dot in compiled
  HLO text; operand types are looked up in the dot's computation (its parameters included)."""
  dots, types = [], {}
  for line in hlo.splitlines():
    header = re.match(r"^\S.*?\((.*)\) -> .*\{$", line)
    if header:
      types = dict(re.findall(r"([\w.\-]+): (\w+)\[", header.group(1)))
    defined = re.match(r"\s+(?:ROOT )?%([\w.\-]+) = (\w+)\[", line)
    if defined:
      types[defined.group(1)] = defined.group(2)
    dot = re.search(r" dot\(%([\w.\-]+), %([\w.\-]+)\), lhs_contracting_dims=\{(\d)\}, "
                    r"rhs_contracting_dims=\{(\d)\}", line)
    if dot:
      dots.append((types[dot.group(1)], types[dot.group(2)], dot.group(3), dot.group(4)))
  return dots


def primitive_count(jaxpr, name):
  """How many equations of ``jaxpr`` and its sub-jaxprs apply the primitive ``name``."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == name
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          count += primitive_count(sub, name)
  return count
