"""Code shared by the AIOS gateway and sidecar: config, errors, the KServe v2 codec, CLI."""

__version__ = "0.1.0"
