"""facegate: edge face-verification firmware for kiosks."""

__version__ = "0.1.0"
