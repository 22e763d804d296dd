"""lensperf: a fast training stack for a strong-lensing foundation model."""

__version__ = "0.1.0"
