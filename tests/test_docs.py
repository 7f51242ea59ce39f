"""Documented commands: every `python -m experiments.<tool> ...` in README.md and docs/*.md
names an existing tool, config file and variant, and only flags and config fields that exist.

Commands are parsed, not run. A tool's flags are read by importing it, one tool at a time
(absl refuses a flag defined by two modules, and the tools share names such as --workdir).
"""

import functools
import glob
import importlib
import importlib.util
import os
import re
import shlex
import sys

import pytest
from absl import app, flags
from ml_collections.config_flags.config_flags import is_config_flag

from configs import base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO)
                              for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
COMMAND = re.compile(r"python3? -m experiments\.(\w+)")
OPERATORS = set(";&|<>")
FLAG = re.compile(r"^--?([^=]+)")

def code_lines(markdown):
  """The shell text of a markdown document, one logical line each.

  Fenced blocks line by line, a trailing backslash joining the next line; outside
  them, each inline code span (which may wrap across lines) as one line.
  """
  lines, prose, fenced, pending = [], [], False, ""
  for line in markdown.splitlines():
    if line.strip().startswith("```"):
      fenced = not fenced
      continue
    if not fenced:
      prose.append(line)
    elif line.rstrip().endswith("\\"):
      pending += line.rstrip()[:-1] + " "
    else:
      lines.append(pending + line)
      pending = ""
  spans = re.findall(r"`([^`]+)`", "\n".join(prose))
  return lines + [span.replace("\n", " ") for span in spans]


def shell_words(text):
  """The words of ``text`` up to the first shell operator (&&, |, ;, >).

  A command quoted inside another (ssh --command="... python -m ...") ends at its
  closing quote: the unbalanced quote and what follows it are dropped.
  """
  while True:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
      words = list(lexer)
      break
    except ValueError:  # no closing quotation
      text = text[:max(text.rfind('"'), text.rfind("'"))]
  end = next((i for i, w in enumerate(words) if set(w) <= OPERATORS), len(words))
  return words[:end]


def commands(markdown):
  """[(tool, argv)] of every `python -m experiments.<tool>` command in ``markdown``."""
  found = []
  for line in code_lines(markdown):
    for match in COMMAND.finditer(line):
      found.append((match.group(1), shell_words(line[match.end():])))
  return found


@functools.lru_cache(maxsize=None)
def tool_flags(tool):
  """{flag name: {'boolean', 'config', 'default'}} that experiments.<tool> accepts: its own,
  those of the libraries it loads, absl's and app.run's help flags.

  The tool is imported here and then unloaded, its own flags removed, so that the
  next tool can define flags of the same names.
  """
  app.define_help_flags()
  module = f"experiments.{tool}"
  loaded_here = module not in sys.modules
  importlib.import_module(module)
  try:
    return {name: {"boolean": flags.FLAGS[name].boolean,
                   "config": is_config_flag(flags.FLAGS[name]),
                   "default": flags.FLAGS[name].default_as_str} for name in flags.FLAGS}
  finally:
    if loaded_here:
      for flag in flags.FLAGS.get_flags_for_module(module):
        delattr(flags.FLAGS, flag.name)
      del sys.modules[module]


@functools.lru_cache(maxsize=None)
def config_fields(spec):
  """The field names of the config ``path[:variant]`` (a flat ConfigDict's keys)."""
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_doc_config", os.path.join(REPO, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return frozenset(module.get_config(variant or None).keys())


def check_config(spec):
  """What is wrong with the config argument ``path[:variant]`` (None: nothing)."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(os.path.join(REPO, path)):
    return f"config file {path} does not exist"
  unknown = [name for name in variant.split(",") if name not in base.VARIANTS] if variant else []
  if unknown:
    return f"config variant :{variant} is not one or more of {sorted(base.VARIANTS)}"
  return None


def problems(doc, markdown):
  """Each thing wrong with a command of ``markdown``, naming ``doc``, the command and what."""
  found = []
  for tool, argv in commands(markdown):
    command = " ".join(["python -m experiments." + tool] + argv)
    where = f"{doc}: `{command}`"
    if not os.path.isfile(os.path.join(REPO, "experiments", f"{tool}.py")):
      found.append(f"{where}: no module experiments.{tool}")
      continue
    accepted = tool_flags(tool)
    configs = {name: spec["default"].strip("'") for name, spec in accepted.items()
               if spec["config"]}
    given = {}
    for word in argv:
      match = FLAG.match(word)
      if match is None:
        continue  # a positional argument (experiments.plot WORKDIR)
      name = match.group(1)
      value = word.split("=", 1)[1] if "=" in word else None
      root, dot, field = name.partition(".")
      root = root[2:] if root.startswith("no") and root[2:] in configs and dot else root
      if dot and root in configs:
        given.setdefault(root, {}).setdefault("fields", []).append(field)
      elif name in configs:
        given.setdefault(name, {})["spec"] = value
      elif name not in accepted and not (name.startswith("no") and name[2:] in accepted
                                         and accepted[name[2:]]["boolean"]):
        found.append(f"{where}: experiments.{tool} has no flag --{name}")
    for name, use in given.items():
      spec = use.get("spec") or configs[name]
      wrong = check_config(spec)
      if wrong:
        found.append(f"{where}: --{name}: {wrong}")
        continue
      fields = config_fields(spec)
      found += [f"{where}: --{name}.{field}: {spec} has no field {field.split('.')[0]!r}"
                for field in use.get("fields", []) if field.split(".")[0] not in fields]
  return found


@pytest.mark.parametrize("doc", DOCS)
def test_documented_commands_are_valid(doc):
  with open(os.path.join(REPO, doc)) as f:
    markdown = f.read()
  if doc == "README.md":
    assert commands(markdown), f"{doc}: no python -m experiments.<tool> command found"
  wrong = problems(doc, markdown)
  assert not wrong, "\n".join(wrong)


def test_the_docs_document_every_tool():
  """Every tool in experiments/ has a documented command in README.md or docs/."""
  documented = set()
  for doc in DOCS:
    with open(os.path.join(REPO, doc)) as f:
      documented |= {tool for tool, _ in commands(f.read())}
  assert documented == {"run", "ablate", "bench", "plot", "solve", "landscape", "compile",
                        "instances"}


SAMPLE = """Prose with `python -m experiments.plot
  results/x --inner_steps=0,1` wrapping, and `--config.seed=1` alone.

```bash
.venv/bin/python -m experiments.run --config=configs/q204.py:cpu \\
    --config.seed=2 --workdir=/tmp/a && echo done
gcloud ssh --command="cd ired-cd && \\
  python -m experiments.run --config=configs/q204.py --workdir=/mnt/q204"
python3 -m experiments.ablate --seeds=3 | tee log  # comment
```
"""


def test_commands_are_found_in_fences_continuations_quotes_and_inline_code():
  assert commands(SAMPLE) == [
      ("run", ["--config=configs/q204.py:cpu", "--config.seed=2", "--workdir=/tmp/a"]),
      ("run", ["--config=configs/q204.py", "--workdir=/mnt/q204"]),
      ("ablate", ["--seeds=3"]),
      ("plot", ["results/x", "--inner_steps=0,1"]),
  ]


def test_a_bad_command_is_named_with_its_doc_and_flag():
  markdown = """```bash
python -m experiments.run --config=configs/q204.py:gpu --progresss --noprogress
python -m experiments.run --config=configs/q999.py
python -m experiments.run --config.batch_sizee=2 --mode=eval
python -m experiments.ablate --config=configs/none.py:tiny --config.seed=1 --noconfig.ood --workdir=w
python -m experiments.train --config=configs/q204.py
```"""
  assert problems("docs/x.md", markdown) == [
      "docs/x.md: `python -m experiments.run --config=configs/q204.py:gpu --progresss "
      "--noprogress`: experiments.run has no flag --progresss",
      "docs/x.md: `python -m experiments.run --config=configs/q204.py:gpu --progresss "
      "--noprogress`: --config: config variant :gpu is not one or more of "
      f"{sorted(base.VARIANTS)}",
      "docs/x.md: `python -m experiments.run --config=configs/q999.py`: --config: config file "
      "configs/q999.py does not exist",
      "docs/x.md: `python -m experiments.run --config.batch_sizee=2 --mode=eval`: "
      "--config.batch_sizee: configs/q204.py:cpu has no field 'batch_sizee'",
      "docs/x.md: `python -m experiments.train --config=configs/q204.py`: no module "
      "experiments.train",
  ]


def test_the_page_fits_and_names_machines_never_sessions():
  """README.md stays under 12,000 characters; README and docs speak of machines, not sessions."""
  for doc in DOCS:
    with open(os.path.join(REPO, doc), encoding="utf-8") as f:
      text = f.read()
    assert doc != "README.md" or len(text) < 12_000, f"README.md has {len(text)} characters"
    assert not re.search(r"\bsessions?\b", text, re.IGNORECASE), doc
