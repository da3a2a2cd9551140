"""A local fake Binance spot exchange (REST + WebSocket on 127.0.0.1) for tests and for trying
`scalpd run` without an account.

It replays one-minute bars: `step()` closes the current bar (resting orders are matched against
it, its closed kline is pushed) and opens the next. Fill rules and the fee model (Binance's: maker
or taker rate, paid in the asset received or in BNB) are in `scalpd.fakex.matching`; the server,
its clock and its fault injection in `scalpd.fakex.server`; `python -m scalpd.fakex.cli` runs
one by hand.
"""

from scalpd.fakex.matching import FakeMarket
from scalpd.fakex.server import FakeExchange

__all__ = ["FakeExchange", "FakeMarket"]
