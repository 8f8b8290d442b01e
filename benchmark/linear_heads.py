"""Old import path of the seeding helpers, kept only for pretrainers/ until they import
``benchmark.training`` (where the helpers live); the linear heads are ``tasks.linear.heads``.
Delete this file once nothing imports it."""

from .training import derived_seed, epoch_order, rng_state, set_rng_state  # noqa: F401
