"""The medad version (a leaf module: importing it imports nothing else of medad)."""

__version__ = "0.1.0"
