"""How failures and visitor-controlled text reach the page.

Two rules: a failure is a message, never a traceback; and text a visitor controls (URL values,
file names, anything read from a file, error messages that may quote them) is never rendered
as Markdown or HTML. Streamlit renders the body of ``st.error``/``st.info`` as Markdown, so
such text goes through :func:`plain`, which backslash-escapes every ASCII punctuation
character (CommonMark allows escaping any of them): links, images, emphasis, math and
autolinks then show as the literal characters.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from core import DatasetError, DenseTooLargeError, LimitError

__all__ = ["EXPECTED_ERRORS", "friendly_errors", "plain"]

EXPECTED_ERRORS = (DatasetError, LimitError, DenseTooLargeError, ValueError, OSError)
MAX_MESSAGE_CHARS = 600  # a message is a sentence or two; more is someone's data
_ESCAPES = {ord(c): "\\" + c for c in string.punctuation}
_log = logging.getLogger(__name__)


def plain(text: object, max_chars: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` made safe to show inside Markdown: bounded, one line, every punctuation
    character escaped, control characters replaced."""
    s = "".join(c if c.isprintable() else " " for c in str(text))
    if len(s) > max_chars:
        s = s[: max_chars - 1] + "…"
    return s.translate(_ESCAPES)


@contextmanager
def friendly_errors(action: str, *, stop: bool = True) -> Iterator[None]:
    """Show a failure as a message on the page, never as a traceback. ``action`` is the app's
    own text. An expected error's message (a sentence written for the visitor) is shown as
    plain text; any other error is a bug, whose type and message mean nothing to a visitor and
    may describe the server: the page says what to do, the server's log gets the details."""
    try:
        yield
    except EXPECTED_ERRORS as err:
        st.error(f"**{action}:** {plain(err)}")
        if stop:
            st.stop()
    except Exception:  # a bug: the traceback goes to the host's log, a sentence to the page
        _log.exception("%s failed unexpectedly", action)
        st.error(
            f"**{action}** failed: something went wrong inside the app. Try other settings or "
            "reload the page; if it keeps happening, tell the host."
        )
        if stop:
            st.stop()
