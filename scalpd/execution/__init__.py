"""Execution: brokers (simulated and ccxt), their fill models, and exchange order rules."""
