"""Settings kept in the URL, so that a copied link reproduces the view.

The URL parameter names and value formats are a public interface (links already shared must
keep opening the same view): never rename one. Two mechanisms keep them, chosen per widget:

* **Streamlit's binding** (``bind="query-params"``, Streamlit 1.67 as pinned) wherever it
  reads the old format: number inputs (``seed``, ``steps``, ``eval``, ``every``,
  ``lr.<optimizer>``, ``momentum.<optimizer>``, ``damping.<optimizer>``,
  ``tcov.<optimizer>``, ``tinv.<optimizer>``), selects whose options show as their own text
  (``batch``, ``m``, ``report``, ``path``), and the explorer's ``rank`` slider. The binding
  uses the widget's key as the parameter name, so these widgets' session keys are the bare
  URL names. Streamlit seeds them from the URL on first render, leaves a default out of the
  URL, updates the URL as the visitor edits, and removes a parameter whose widget is no
  longer drawn (``rank`` while its tab is closed, once the slider has been drawn; the tab's
  slider keeps its value for the session, as every bound widget does across page switches,
  where the hand-made ones start again from the URL). A float may come back in another
  spelling of the same number; every old spelling still reads. A URL value that is not
  valid for its widget never reaches the binding (which drops most such values without a
  word and raises on some, ``seed=inf`` among them): the widget is drawn unbound for that
  run and the parameter removed (see :meth:`UrlSettings._draw_bound`).
* **Hand-made sync** (session key ``<page>.<name>``, seeded from ``st.query_params`` and
  written back by :meth:`UrlSettings.sync`) where the binding would change a public format:
  a bound select or radio writes its *displayed label* (``format_func``'s text) and accepts
  only labels, where links carry the option itself (``dataset=digits``, ``preset``,
  ``model``, ``opt``, ``layer``, ``show``, ``fisher``, ``damping``, ``contrast``,
  ``schedule``, ``kl.<optimizer>``); a bound multiselect repeats the parameter
  (``methods=a&methods=b``) where links carry one comma-joined value (``methods``,
  ``opts``); a bound toggle writes ``true``/``false`` where links carry ``1``/``0``
  (``slow``); bound tabs write the tab's label where links carry a slug (``tab=block``).

Either way a URL value that is not used as given (invalid for its widget, or a repeated or
unknown item of a list) is never replaced silently: :meth:`UrlSettings.show_notices` names
the parameter, the value given and the value used, as plain text, in one warning that also
collects the notices of widgets drawn further down the page.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from .errors import plain

__all__ = ["UrlSettings", "shown"]

BIND = "query-params"


def shown(value: object) -> str:
    """How a default value reads in a notice (lists comma-joined, floats short)."""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class UrlSettings:
    """The URL-kept widgets of one page (see the module docstring for which are bound).

    ``values`` holds the URL values this run writes or keeps itself (the hand-made widgets',
    a hidden slider's); the bound widgets' are Streamlit's.
    """

    def __init__(self, page: str) -> None:
        self.page = page
        self.values: dict[str, str] = {}
        self.notices: list[str] = []
        # where show_notices() put the warning, once it has run
        self._notice_area: DeltaGenerator | None = None
        # names this page has bound in this session: Streamlit owns those parameters (it
        # removes one itself when its widget stops being drawn), so sync() never touches them
        self._bound: set[str] = st.session_state.setdefault(f"urlstate.bound.{page}", set())

    # -- notices -----------------------------------------------------------------------------

    def notice(self, name: str, given: str, used: str) -> None:
        """Report a URL value that was not used as given (shown by :meth:`show_notices`,
        also when it comes from a widget drawn after that call)."""
        self.notices.append(
            f"URL parameter {plain(name, 40)}: the value {plain(given, 60)} is not valid "
            f"here; using {plain(used, 60)}."
        )
        if self._notice_area is not None:
            self._draw_notices()

    def show_notices(self) -> None:
        """Place the warning that lists every URL value replaced in this run (plain text).
        Called once, near the top of the page: widgets drawn further down (the explorer's
        tabs and views) add their notices to this same warning."""
        self._notice_area = st.empty()
        self._draw_notices()

    def _draw_notices(self) -> None:
        if self.notices and self._notice_area is not None:
            self._notice_area.warning("  \n".join(self.notices), icon=":material/link_off:")

    # -- bound widgets -----------------------------------------------------------------------

    def _draw_bound(self, widget: Callable, name: str, accepts: Callable[[str], bool], **kw):
        """Draw ``widget`` with key ``name``, bound to the URL parameter ``name``.

        Streamlit seeds a bound widget from the URL the run started with, and its handling of
        an invalid value is not ours to rely on: it drops most without a word and raises on
        some (``OverflowError`` for ``seed=inf`` or ``steps=1e309`` on an int input). So a URL
        value that ``accepts`` refuses never reaches the binding: the widget is drawn unbound
        for this run (it keeps its key, hence its value) and the parameter is removed from
        the URL, so the next run binds it again. A value refused on the widget's first render
        (when the binding would have seeded it) gets a notice naming the value used.
        """
        raw = st.query_params.get(name)
        usable = raw is None or accepts(raw)
        first = name not in st.session_state
        value = widget(key=name, bind=BIND if usable else None, **kw)
        if not usable:
            st.query_params.pop(name, None)  # unbound now: the parameter is ours to remove
            if first and raw is not None:  # a refused value is never None
                self.notice(name, raw, shown(value))
        self._bound.add(name)
        return value

    def number(self, label: str, name: str, default, *, min_value, max_value, **kw):
        """A number input bound to ``name`` (an int or float input, as ``default`` is)."""
        kind = type(default)

        def accepts(raw: str) -> bool:  # int()/float(), finite, in range
            try:
                value = kind(raw)
            except ValueError:
                return False
            return math.isfinite(value) and min_value <= value <= max_value

        return self._draw_bound(
            st.number_input, name, accepts, label=label, min_value=min_value,
            max_value=max_value, value=default, **kw,
        )  # fmt: skip

    def slider(self, label: str, name: str, default: int, *, min_value: int, max_value: int, **kw):
        """An integer slider bound to ``name``."""
        default = min(max(default, min_value), max_value)
        return self._draw_bound(
            st.slider, name, _whole_number_in(min_value, max_value), label=label,
            min_value=min_value, max_value=max_value, value=default, **kw,
        )  # fmt: skip

    def hidden_slider(self, name: str, default: int, *, min_value: int, max_value: int) -> None:
        """The URL value of an integer slider that this run does not draw (its tab is closed,
        or it has nothing to slide), checked against the widest range the slider can have: a
        valid one stays in the URL for the run that draws the slider (which checks it against
        its own range), an invalid one is removed with a notice. A slider already bound in
        this session is Streamlit's: it removes the parameter itself."""
        raw = st.query_params.get(name)
        if raw is None or name in self._bound:
            return
        if _whole_number_in(min_value, max_value)(raw):
            self.values[name] = raw
        else:
            self.notice(name, raw, shown(default))

    # -- selects: bound when an option's text is its URL value, else hand-made ---------------

    def select(self, label: str, options: Sequence, name: str, default=None, **kw):
        """A select box; bound to ``name`` unless it shows options through ``format_func``
        (the binding would then put the displayed label in the URL)."""
        options = list(options)
        default = options[0] if default is None or default not in options else default
        if "format_func" in kw:
            return self._choice(st.selectbox, label, options, name, default, **kw)
        texts = [str(o) for o in options]
        return self._draw_bound(
            st.selectbox, name, texts.__contains__, label=label, options=options,
            index=options.index(default), **kw,
        )  # fmt: skip

    # -- hand-made widgets -------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return f"{self.page}.{name}"

    def _seed(
        self, name: str, default, parse: Callable, valid: Callable, used: str | None = None
    ) -> str:
        """Seed a hand-made widget's session value from the URL (once: a later run keeps the
        visitor's choice while it is still valid); returns its session key. A refused URL
        value gets a notice naming ``used`` (the default as a notice shows it, if not given)."""
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
                self.notice(name, raw, shown(default) if used is None else used)
        st.session_state[key] = value
        return key

    def _choice(self, widget, label: str, options: list, name: str, default, **kw):
        lookup = {str(o): o for o in options}
        key = self._seed(name, default, lookup.get, options.__contains__)
        value = widget(label, options, key=key, **kw)
        self.values[name] = str(value)
        return value

    def radio(self, label: str, options: Sequence, name: str, default=None, **kw):
        """Radio buttons (hand-made: their ``format_func`` labels are not the URL values)."""
        options = list(options)
        default = options[0] if default is None or default not in options else default
        return self._choice(st.radio, label, options, name, default, **kw)

    def select_slider(self, label: str, options: Sequence, name: str, default=None, **kw):
        """A slider over ``options`` kept as the option's ``str`` (hand-made: the binding
        would write the ``format_func`` label)."""
        options = list(options)
        default = options[0] if default is None or default not in options else default
        return self._choice(st.select_slider, label, options, name, default, **kw)

    def hidden_choice(self, name: str, options: Sequence, default) -> None:
        """The value of a hand-made choice that this run does not draw (its tab is closed):
        seeded from the URL as if drawn (an invalid value replaced, with a notice) and kept
        there for the run that draws it."""
        options = list(options)
        lookup = {str(o): o for o in options}
        key = self._seed(name, default, lookup.get, options.__contains__)
        self.values[name] = str(st.session_state[key])

    def multiselect(self, label: str, options: Sequence[str], name: str, default, **kw):
        """A multiselect kept as one comma-joined URL value (hand-made: the binding repeats
        the parameter instead). Unknown and repeated items are dropped with a notice (each
        option is one widget: twice would draw its controls twice, under the same keys)."""
        options = list(options)

        def parse(raw: str) -> list[str]:
            kept = list(dict.fromkeys(o for o in raw.split(",") if o in options))
            if ",".join(kept) != raw:  # keep what is valid, once; name what was dropped
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

    def toggle(self, label: str, name: str, default: bool = False, **kw) -> bool:
        """A toggle kept as ``1``/``0`` (hand-made: the binding writes ``true``/``false``)."""
        key = self._seed(
            name,
            default,
            lambda raw: {"1": True, "0": False}.get(raw),
            lambda v: v in (0, 1),
            used="1" if default else "0",
        )
        value = st.toggle(label, key=key, **kw)
        self.values[name] = "1" if value else "0"
        return value

    def tabs(self, labels: dict[str, str], name: str, default: str | None = None) -> dict:
        """Lazy tabs (only the open one runs); ``labels``: URL value → tab label (hand-made:
        the binding writes the label, links carry the slug).

        Returns URL value → tab container; ``container.open`` tells which one is shown.
        """
        slugs = {label: slug for slug, label in labels.items()}
        first_label = next(iter(labels.values()))
        default_label = first_label if default is None else labels.get(default, first_label)
        key = self._seed(
            name, default_label, labels.get, slugs.__contains__, used=slugs[default_label]
        )
        containers = st.tabs(list(labels.values()), key=key, on_change="rerun")
        chosen = st.session_state.get(key)
        fallback = default or next(iter(labels))
        self.values[name] = fallback if chosen is None else slugs.get(chosen, fallback)
        return dict(zip(labels, containers, strict=True))

    def sync(self, *, final: bool = True) -> None:
        """Write the hand-made values to the URL (only those that changed). The final sync
        also removes the parameters nothing on the page uses any more (a widget no longer
        drawn, a name the page does not know); ``final=False`` (an early sync, before every
        widget of the page has run) removes nothing. Bound parameters are Streamlit's."""
        current = st.query_params.to_dict()
        changed = {k: v for k, v in self.values.items() if current.get(k) != v}
        if changed:
            st.query_params.update(changed)
        if final:
            for name in current.keys() - self.values.keys() - self._bound:
                del st.query_params[name]


def _whole_number_in(min_value: int, max_value: int) -> Callable[[str], bool]:
    """The check of an integer slider's URL value: a whole number from ``min_value`` to
    ``max_value`` (``3`` and ``3.0`` both are: a float may come back in another spelling)."""

    def accepts(raw: str) -> bool:
        try:
            value = float(raw)
        except ValueError:
            return False
        return value.is_integer() and min_value <= value <= max_value

    return accepts
