"""libtraffic: LibCity-compatible traffic state prediction and hyperparameter tuning."""

__version__ = "0.1.0"
