"""motionmask: learn to segment what moves, by watching video."""

__version__ = "0.1.0"
