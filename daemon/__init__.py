"""staticipd: moves connected accounts into the provider's static IP environment."""

__version__ = "0.1.0"
