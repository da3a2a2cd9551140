"""Features: everything a model knows of the market, computed one way for training, replay and
live trading.

The package owns the feature definitions and both of their implementations:

- `spec`: the registry (name, formula, unit, warm-up of every feature, `FEATURE_NAMES` in the
  vector's fixed order), the parameters (`FeatureParams`, GARCH parameters included) and
  `feature_set_id`, the hash a model stores to check that it is fed the vector it was trained on.
- `incremental`: `SymbolFeatures` (one symbol, O(1) per closed 1m bar, a preallocated vector
  rewritten in place) and `FeatureEngine` (several symbols, cross-asset correlation, tick input).
- `batch`: the same numbers over whole bar arrays with numpy, for training over years.
- `ticks`: trades and order-book tops/levels aggregated per minute (imbalance, large trades,
  spread, depth imbalance), tick by tick and vectorised.
- `garch`: the GARCH(1,1) fit (offline) and its recursion (online).
- `normalize`: running (EW) z-scores, the only normalisation models see: no look-ahead.
- `bench`: update latency and batch throughput benchmarks.

Rules every feature keeps: a value at bar t uses bars <= t only; a gap restarts all state that
spans bars; a feature still warming up, or without its input (no taker volume, no ticks), is
NaN, never a made-up zero. No I/O here except in `bench`.
"""
