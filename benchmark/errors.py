"""Errors that ssl-bench reports to the user.

Every error names the file, key or path involved and says how to fix it; the CLI prints the
message without a traceback.
"""


class BenchmarkError(Exception):
    """Base class of user-facing ssl-bench errors."""


class ConfigError(BenchmarkError):
    """Invalid benchmark.yaml / task / pretrainer options."""


class DatasetError(BenchmarkError):
    """A dataset is missing, malformed or contains an unreadable file."""

    @classmethod
    def from_worker(cls, exc: "DatasetError") -> "DatasetError":
        """A DataLoader worker's error arrives wrapped in its traceback; keep the message the user
        needs (it names the file)."""
        return cls(str(exc).strip().splitlines()[-1].removeprefix("benchmark.errors.DatasetError: "))


class CheckpointError(BenchmarkError):
    """A checkpoint cannot be read or does not match the architecture."""


class FeatureError(BenchmarkError):
    """Extracted features are unusable (NaN/inf, wrong shape)."""
