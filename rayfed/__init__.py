"""rayfed: federated prompt tuning of language models, simulated on Ray."""

__version__ = "0.1.0"
