"""L4: length-aware scheduling for multi-instance LLM serving.

The package map is in ``docs/structure.md``.
"""

__version__ = "0.1.0"
