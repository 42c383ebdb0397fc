"""mixopt: find the best data mixture for training a language model.

The public face of the project: the command line (``mixopt.cli``), the wire schemas shared by the
service and its clients (``mixopt.schemas``) and the service settings (``mixopt.settings``).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
