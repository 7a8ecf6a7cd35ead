"""Settings kept in the URL: widgets seeded from ``st.query_params`` and written back.

A copied link reproduces the view. Each widget's session key is ``<page>.<name>``; its URL key
is ``<name>``. The URL names are a public interface (links already shared must keep opening
the same view): never rename one. A URL value that is not valid for its widget is not silently
dropped: :meth:`UrlSettings.show_notices` names the parameter, the value given and the value
used, as plain text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import streamlit as st

from .errors import plain

__all__ = ["UrlSettings", "shown"]


def shown(value: object) -> str:
    """How a default value reads in a notice (lists comma-joined, floats short)."""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class UrlSettings:
    """Widgets whose values are seeded from ``st.query_params`` and written back to it.

    A copied link therefore reproduces the view. Each widget's session key is
    ``<page>.<name>``; its URL key is ``<name>``.
    """

    def __init__(self, page: str) -> None:
        self.page = page
        self.values: dict[str, str] = {}
        self.notices: list[str] = []

    def _key(self, name: str) -> str:
        return f"{self.page}.{name}"

    def _seed(self, name: str, default, parse: Callable, valid: Callable) -> str:
        key = self._key(name)
        if key in st.session_state and valid(st.session_state[key]):
            return key
        value = default
        raw = st.query_params.get(name)
        if raw is not None:
            try:
                parsed = parse(raw)
            except (TypeError, ValueError, OverflowError):
                parsed = None
            if parsed is not None and valid(parsed):
                value = parsed
            else:
                self.notice(name, raw, f"{shown(default)}")
        st.session_state[key] = value
        return key

    def notice(self, name: str, given: str, used: str) -> None:
        """Report a URL value that was not used (shown by :meth:`show_notices`)."""
        self.notices.append(
            f"URL parameter {plain(name, 40)}: the value {plain(given, 60)} is not valid "
            f"here; using {plain(used, 60)}."
        )

    def show_notices(self) -> None:
        """One warning listing every URL value that was replaced (plain text)."""
        if self.notices:
            st.warning("  \n".join(self.notices), icon=":material/link_off:")

    def select(self, label: str, options: Sequence, name: str, default=None, **kw):
        options = list(options)
        default = options[0] if default is None or default not in options else default
        lookup = {str(o): o for o in options}
        key = self._seed(name, default, lambda raw: lookup.get(raw), lambda v: v in options)
        value = st.selectbox(label, options, key=key, **kw)
        self.values[name] = str(value)
        return value

    def radio(self, label: str, options: Sequence, name: str, default=None, **kw):
        options = list(options)
        default = options[0] if default is None or default not in options else default
        lookup = {str(o): o for o in options}
        key = self._seed(name, default, lambda raw: lookup.get(raw), lambda v: v in options)
        value = st.radio(label, options, key=key, **kw)
        self.values[name] = str(value)
        return value

    def multiselect(self, label: str, options: Sequence[str], name: str, default, **kw):
        options = list(options)

        def parse(raw: str) -> list[str]:
            items = [o for o in raw.split(",") if o] if raw else []
            kept = [o for o in items if o in options]
            if len(kept) < len(items):  # keep what is valid; name what was dropped
                self.notice(name, raw, shown(kept))
            return kept

        key = self._seed(
            name,
            list(default),
            parse,
            lambda v: isinstance(v, list) and all(o in options for o in v),
        )
        value = st.multiselect(label, options, key=key, **kw)
        self.values[name] = ",".join(value)
        return value

    def number(self, label: str, name: str, default, *, min_value, max_value, **kw):
        kind = type(default)

        def valid(v) -> bool:
            return isinstance(v, kind) and min_value <= v <= max_value

        key = self._seed(name, default, lambda raw: kind(float(raw)) if raw else None, valid)
        value = st.number_input(label, min_value=min_value, max_value=max_value, key=key, **kw)
        self.values[name] = f"{value:g}" if kind is float else str(value)
        return value

    def slider(self, label: str, name: str, default: int, *, min_value: int, max_value: int, **kw):
        def valid(v) -> bool:
            return isinstance(v, int) and min_value <= v <= max_value

        default = min(max(default, min_value), max_value)
        key = self._seed(name, default, lambda raw: int(raw) if raw else None, valid)
        value = st.slider(label, min_value=min_value, max_value=max_value, key=key, **kw)
        self.values[name] = str(value)
        return value

    def text(self, label: str, name: str, default: str = "", **kw) -> str:
        key = self._seed(name, default, str, lambda v: isinstance(v, str))
        value = st.text_input(label, key=key, **kw)
        if value:
            self.values[name] = value
        return value

    def toggle(self, label: str, name: str, default: bool = False, **kw) -> bool:
        key = self._seed(
            name, default, lambda raw: {"1": True, "0": False}.get(raw), lambda v: v in (0, 1)
        )
        value = st.toggle(label, key=key, **kw)
        self.values[name] = "1" if value else "0"
        return value

    def tabs(self, labels: dict[str, str], name: str, default: str | None = None) -> dict:
        """Lazy tabs (only the open one runs); ``labels``: URL value → tab label.

        Returns URL value → tab container; ``container.open`` tells which one is shown.
        """
        slugs = {label: slug for slug, label in labels.items()}
        default_label = labels.get(default, next(iter(labels.values())))
        key = self._seed(name, default_label, lambda raw: labels.get(raw), lambda v: v in slugs)
        containers = st.tabs(list(labels.values()), key=key, on_change="rerun")
        self.values[name] = slugs.get(st.session_state.get(key), default or next(iter(labels)))
        return dict(zip(labels, containers, strict=True))

    def sync(self, *, final: bool = True) -> None:
        """Write the current values to the URL (only when they changed). ``final=False`` (an
        early sync, before every widget of the page has run) keeps the URL's other keys."""
        current = st.query_params.to_dict()
        wanted = dict(self.values)
        if not final:
            wanted = {**{k: v for k, v in current.items() if k not in wanted}, **wanted}
        if current != wanted:
            st.query_params.from_dict(wanted)
