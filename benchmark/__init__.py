"""ssl-bench: benchmark frozen visual representations with the Goyal et al. 2019 protocol."""

__version__ = "0.1.0"
