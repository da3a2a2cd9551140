"""The one exception of the model layer."""

from __future__ import annotations


class ModelError(Exception):
    """A model cannot be built, trained, loaded or run as asked; the message is one line."""
