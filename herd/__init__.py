"""herd: a private, declarative inference fleet for air-gapped sites."""

__version__ = "0.1.0"
