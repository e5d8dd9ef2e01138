"""nas_core: DARTS neural architecture search, from data to a tested model."""

__version__ = "0.1.0"
