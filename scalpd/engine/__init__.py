"""The engine: the one event loop body shared by replay, paper and live, and its ports."""
