"""Configuration: the typed settings model (one definition of every key) and its loader."""

from scalpd.config.settings import (
    ConfigError,
    MarketRules,
    Settings,
    find_config,
    load_settings,
)

__all__ = ["ConfigError", "MarketRules", "Settings", "find_config", "load_settings"]
