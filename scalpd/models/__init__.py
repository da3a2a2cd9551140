"""The model layer: labels, splits, networks, training, artifacts, inference backends.

- labels.py: triple-barrier labels (take-profit, stop-loss, timeout; long and short).
- splits.py: purged and embargoed train/validation splits by time.
- nets.py: TCN, sliding-window Transformer, online LSTM, ensemble; streaming == batch.
- ensemble.py: the ensemble's weights from recent log-loss on matured labels, per regime.
- online.py: replay buffer, volatility-scaled learning rate, one online training step.
- train.py: `train(...)` -> ModelArtifact (device: XPU, then CUDA, then CPU).
- artifact.py: save/load models/<name>/<version>/ with a model card.
- backends.py: `Predictor` on "eager" | "onnx" | "int8".
- kernels.py: the networks' one-bar steps compiled (numba), which the eager backend runs.
- cli.py: `scalpd train`; bench.py: model benchmarks.
- basic_features.py: a stand-in feature set until scalpd/features lands.

Heavy imports (torch) happen in the submodules, so importing this package is cheap.
"""

from scalpd.models.errors import ModelError

__all__ = ["ModelError"]
