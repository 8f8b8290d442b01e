"""One module per pretext method, each registered by name through the entry point group
``ssl_bench.pretext_methods`` (pyproject.toml); ``_trunk`` holds helpers the classic methods share."""
