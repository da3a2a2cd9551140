"""Strategies: plug-ins behind one small interface (`Strategy`), rule baselines and models."""

from scalpd.strategy.base import Strategy, StrategyContext
from scalpd.strategy.ema_cross import EmaCross

__all__ = ["EmaCross", "Strategy", "StrategyContext", "build_strategy"]


def build_strategy(settings) -> Strategy:
    """The strategy named by `settings.strategy.name`."""
    if settings.strategy.name == "ema_cross":
        return EmaCross(settings.strategy, settings.symbols)
    if settings.strategy.name == "model":
        from scalpd.strategy.model import ModelStrategy  # imports torch: only when needed

        return ModelStrategy(settings.strategy, settings.symbols, settings.strategy.model_path)
    raise ValueError(f"unknown strategy {settings.strategy.name!r}")
