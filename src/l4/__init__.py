"""L4: length-aware scheduling for multi-instance LLM serving.

The package map is in ``docs/structure.md``. The version has one source, the package metadata
(``pyproject.toml``); ``l4 --version``, reports and the engine's ``/version`` all read it here.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("l4-serve")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
