"""Prints the requirements of pyproject.toml's optional-dependency groups given as arguments,
one per line, so scripts can `pip install` them without building the package again."""

import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"][
    "optional-dependencies"
]
for name in sys.argv[1:]:
    print("\n".join(extras[name]))
