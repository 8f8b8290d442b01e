"""What a run's feature extraction did, counted in a module of its own: the plugin API's run context
carries it, and reading a plugin must not import the extraction code (torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExtractionStats:
    images: int = 0
    seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
