"""Risk: the gate every intent passes before it becomes an order (limits, later breakers)."""

from scalpd.risk.gate import Decision, RiskGate

__all__ = ["Decision", "RiskGate"]
