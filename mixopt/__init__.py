"""mixopt: find the best data mixture for training a language model.

The public face of the project: the command line (``mixopt.cli``), the typed HTTP client
(``mixopt.client``), the wire schemas shared by the service and its clients (``mixopt.schemas``),
the runs.csv format both sides read and write (``mixopt.runs_csv``) and the service settings
(``mixopt.settings``).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
