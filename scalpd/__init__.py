"""scalpd: a crypto scalping daemon. One engine for replay, paper and live trading."""

__version__ = "0.1.0"
