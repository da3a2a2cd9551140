"""Risk: the gate every intent passes before it becomes an order.

`RiskManager` (manager.py): pre-trade limits and persisted circuit breakers, pure, driven by
the engine's events; `RiskGate` (gate.py): the minimal size gate it grew from.
"""

from scalpd.risk.breakers import RiskEvent, RiskState
from scalpd.risk.gate import Decision, RiskGate
from scalpd.risk.manager import RiskManager, holdings_usdt

__all__ = ["Decision", "RiskEvent", "RiskGate", "RiskManager", "RiskState", "holdings_usdt"]
