"""Strategies: plug-ins behind one small interface (`Strategy`), rule baselines and models."""

from scalpd.strategy.base import Strategy, StrategyContext
from scalpd.strategy.ema_cross import EmaCross
from scalpd.strategy.random_entries import RandomEntries

# RandomEntries is built by the report's baselines (replay/baselines.py), never from settings:
# it needs the entry times drawn for one trial.
__all__ = ["EmaCross", "RandomEntries", "Strategy", "StrategyContext", "build_strategy"]


def build_strategy(settings, replay_bars=None) -> Strategy:
    """The strategy named by `settings.strategy.name`. `replay_bars`: the whole series a replay
    will feed, for strategies that can precompute from it (the model's probabilities)."""
    if settings.strategy.name == "ema_cross":
        return EmaCross(settings.strategy, settings.symbols)
    if settings.strategy.name == "model":
        from scalpd.strategy.model import ModelStrategy  # imports torch: only when needed

        return ModelStrategy(
            settings.strategy,
            settings.symbols,
            settings.strategy.model_path,
            replay_bars,
            online=settings.online,
        )
    raise ValueError(f"unknown strategy {settings.strategy.name!r}")
