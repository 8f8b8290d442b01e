"""Built-in pretrainers (random, supervised, checkpoint, pretext), each registered by name through the
entry point group ``ssl_bench.pretrainers`` (pyproject.toml); ``common`` holds their shared options."""
