"""Where ``experiments.compile``'s compile-only backends live (libtpu and the CUDA plugin of
requirements-compile.txt, installed apart so that a normal run never loads them), and the one
command that installs them there. No JAX import here: the tool puts FOLDER on the path
before it imports JAX."""

import os
import sys

FOLDER = os.path.join(sys.prefix, "compile-packages")
INSTALL = f"{sys.executable} -m pip install --target {FOLDER} -r requirements-compile.txt"
