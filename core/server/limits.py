"""What a shared server refuses: :class:`LimitError`, the error every limit raises, and the
layer-size check.

The limits' values are host settings (:mod:`core.settings`); the run queue's slots and quotas
are :mod:`core.server.run_queue`'s. Messages speak of the app, never of settings' names: a
student cannot change them.
"""

from __future__ import annotations

from ..settings import max_layer_params

__all__ = ["LimitError", "check_layer_size"]


class LimitError(RuntimeError):
    """A server-wide limit was reached; the message names it and what to do."""


def check_layer_size(n_params: int, name: str = "this layer") -> None:
    """Raise :class:`LimitError` when a layer has more weights than the server allows."""
    limit = max_layer_params()
    if n_params > limit:
        raise LimitError(
            f"{name} has {n_params:,} weights, above this server's limit of {limit:,}. Pick a "
            "smaller layer, analyse it with the command line (`python -m core quality`), or "
            "ask the host to raise the layer limit."
        )
