"""sentistream: real-time sentiment analysis of social-media streams."""

__version__ = "0.1.0"

__all__ = ["__version__"]
