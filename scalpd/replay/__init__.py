"""Replay: history through the same engine on a simulated clock, and the run summary."""
