"""A hostile visitor against one real server (issue 17: one shared server no visitor can hurt).

One ``python serve.py`` per module (bench/load_bench.py's ``Server``: a free 127.0.0.1
port, a fresh cache directory, its process group killed at the end), driven over Streamlit's
own protocol by bench/loadclient.py: websocket sessions carrying a browser's
``_streamlit_xsrf`` cookie (one cookie = one visitor, all its tabs), raw
``PUT /_stcore/upload_file`` requests, the ``clear_cache`` back message, a widget upload.

* ``clear_cache`` (any client may send it) changes nothing shared: the worker processes stay
  the same, a live session's stored upload stays, the next view works.
* Raw uploads are bounded per visitor (``KRONOSCOPE_UPLOAD_SESSION_MB``, 100 MiB here): the
  third 40 MiB file is refused with 413, the server's resident memory grows by less than the
  quota plus a margin, another visitor can still upload; a file above ``server.maxUploadSize``
  gets 413; two tabs of one browser share the quota, also tabs stopped before the page ran;
  the files of a closed tab stop counting soon after.
* An .npz of ~1 MiB that declares ~1 GiB of zeros, uploaded through the explorer's file
  uploader, gives a plain error message (no exception element) and the web process's peak
  memory does not move.
* A new visitor's cheap view finishes within :data:`COLD_VIEW_DEADLINE_S` while four tabs
  compute the heaviest explorer views (the worker pool's view lane).

Every test is bounded (:data:`TEST_TIMEOUT_S`) and talks to 127.0.0.1 only; measured numbers
are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from load_bench import Server, free_port, group_members, health, process_tree, status_kib  # noqa: E402
from loadclient import StudentSession, put_file, xsrf_cookie  # noqa: E402

from tests.webapp.hostile import zero_bomb_npz  # noqa: E402


def children(pid: int) -> set[int]:
    """The server's worker processes (its descendants)."""
    return set(process_tree(pid)) - {pid}


def status_mib(pid: int, field: str) -> float:
    return status_kib(pid, field) / 1024


MiB = 2**20
TEST_TIMEOUT_S = 60.0
VIEW_TIMEOUT_S = 45.0
QUOTA_MIB = 100  # KRONOSCOPE_UPLOAD_SESSION_MB given to the server
TOTAL_MIB = 1000  # KRONOSCOPE_UPLOAD_TOTAL_MB
ARRAY_CAP_MIB = 128  # KRONOSCOPE_UPLOAD_MAX_ARRAY_MB
RSS_MARGIN_MIB = 64  # resident growth allowed above the bytes a visitor may keep
RELEASE_WAIT_S = 10.0  # how soon a closed tab's uploads must stop counting
HWM_MARGIN_MIB = 100  # peak-memory growth allowed for a decompression bomb's upload
HEAVY_TABS = 4
HEAVY_QUERY = "dataset=curves-small&layer=encoder.linear1&m=1024&slow=1&seed={seed}"
HEAVY_HEAD_START_S = 4.0  # the heavy tabs' head start before the new visitor arrives
COLD_VIEW_DEADLINE_S = 15.0  # tune here: a new visitor's cheap view behind the heavy tabs
UPLOADER = "…or upload an .npz"

SERVER_ENV = {
    "KRONOSCOPE_UPLOAD_SESSION_MB": str(QUOTA_MIB),
    "KRONOSCOPE_UPLOAD_TOTAL_MB": str(TOTAL_MIB),
    "KRONOSCOPE_UPLOAD_MAX_ARRAY_MB": str(ARRAY_CAP_MIB),
    "KRONOSCOPE_DATA_DIR": None,  # no host files: MNIST is upload-only
    "KRONOSCOPE_ALLOW_DOWNLOADS": None,
}


@contextlib.contextmanager
def _environ(values: dict[str, str | None]):
    """``os.environ`` with ``values`` (None: unset) while the server starts (``Server`` hands
    the environment of that moment to the server process), restored after."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with _environ(SERVER_ENV):
        srv = Server(free_port(), tmp_path_factory.mktemp("hostile-logs")).__enter__()
    try:
        # warm the imports and the worker processes once (no test pays the cold start)
        view = asyncio.run(_open(srv.url, "explorer", "dataset=digits&seed=0", timeout=90))
        assert view.ok, (view.as_dict(), srv.log_tail())
        yield srv
    finally:
        srv.stop()
    assert group_members(srv.proc.pid) == []  # nothing of the server's process group is left


def bounded(coro):
    """Run one test's coroutine with the per-test time bound."""
    return asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT_S))


async def _open(url: str, page: str, query: str, *, cookie=None, timeout=VIEW_TIMEOUT_S):
    async with StudentSession(url, cookie=cookie) as s:
        return await s.open(page, query, timeout=timeout)


async def _tab(url: str, cookie: str | None) -> StudentSession:
    """A connected tab that has run the home page (so the server knows its visitor)."""
    tab = StudentSession(url, cookie=cookie)
    await tab.connect()
    view = await tab.open("", "", timeout=VIEW_TIMEOUT_S)
    assert view.ok and tab.session_id, view.as_dict()
    return tab


async def _put(url: str, tab: StudentSession, data: bytes, name: str = "data.bin") -> int:
    return await asyncio.to_thread(
        put_file, url, tab.session_id, os.urandom(8).hex(), name, data, tab.cookie
    )


def _rss(server) -> float:
    return status_mib(server.proc.pid, "VmRSS")


# -- clear_cache ------------------------------------------------------------------------------


def test_clear_cache_changes_nothing_shared(server):
    async def body():
        owner = StudentSession(server.url, cookie=xsrf_cookie(server.url))
        hostile = StudentSession(server.url)  # no cookie: any client
        await owner.connect()
        await hostile.connect()
        try:
            first = await owner.open("explorer", "dataset=digits", timeout=VIEW_TIMEOUT_S)
            assert first.ok, first.as_dict()
            workers = children(server.proc.pid)
            marker = (
                Path(server.cache_dir) / "uploads" / "hostile-marker" / owner.session_id
            ) / "marker.npz"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_bytes(b"a live session's stored upload")
            await hostile.open("", "", timeout=VIEW_TIMEOUT_S)
            for _ in range(3):
                await hostile.clear_cache()
            # the hostile session's next rerun is handled after its clear_cache messages
            after = await hostile.open("explorer", "dataset=digits&seed=2", timeout=VIEW_TIMEOUT_S)
            again = await owner.open("explorer", "dataset=digits&seed=1", timeout=VIEW_TIMEOUT_S)
            return workers, marker, after, again, children(server.proc.pid)
        finally:
            await owner.close()
            await hostile.close()

    workers, marker, after, again, workers_after = bounded(body())
    print(f"\nclear_cache ×3: workers before {sorted(workers)}, after {sorted(workers_after)}")
    assert workers, "the server has no worker processes to watch"
    assert workers_after == workers, (
        f"clear_cache changed the worker processes: {sorted(workers)} → {sorted(workers_after)}"
    )
    assert marker.is_file(), "clear_cache removed a live session's stored upload"
    assert after.ok and after.charts >= 1, after.as_dict()
    assert again.ok and again.charts >= 1, again.as_dict()


# -- a decompression bomb through the file uploader -------------------------------------------


def test_zero_bomb_npz_declares_what_it_says():
    raw = zero_bomb_npz({"x_train": ((2048, 784), np.float32), "x_test": ((16, 784), np.float32)})
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        sizes = {i.filename: i.file_size for i in zf.infolist()}
        assert sizes["x_train.npy"] == 128 + 2048 * 784 * 4
        assert zf.testzip() is None  # CRC and sizes exact
    with np.load(io.BytesIO(raw)) as npz:
        assert npz["x_train"].shape == (2048, 784) and not npz["x_train"].any()


def test_compressed_upload_is_refused_before_it_is_inflated(server):
    declared = 342 * 1024  # rows of 784 float32: ~1 GiB
    bomb = zero_bomb_npz(
        {"x_train": ((declared, 784), np.float32), "x_test": ((16, 784), np.float32)}
    )
    # the same construction, small: read as a dataset (so the bomb's refusal is its size)
    control = zero_bomb_npz(
        {"x_train": ((1024, 784), np.float32), "x_test": ((64, 784), np.float32)}
    )

    async def body():
        async with StudentSession(server.url, cookie=xsrf_cookie(server.url)) as tab:
            page = await tab.open("explorer", "dataset=mnist", timeout=VIEW_TIMEOUT_S)
            assert page.ok, page.as_dict()
            assert UPLOADER in tab.uploaders, (tab.uploaders, page.as_dict())
            small = await tab.upload(UPLOADER, "control.npz", control, timeout=VIEW_TIMEOUT_S)
            hwm0 = status_mib(server.proc.pid, "VmHWM")
            view = await tab.upload(UPLOADER, "bomb.npz", bomb, timeout=VIEW_TIMEOUT_S)
            return small, hwm0, view

    small, hwm0, view = bounded(body())
    hwm1 = status_mib(server.proc.pid, "VmHWM")
    workers_hwm = {p: round(status_mib(p, "VmHWM")) for p in children(server.proc.pid)}
    print(
        f"\nbomb: {len(bomb) / MiB:.2f} MiB file declaring {declared * 784 * 4 / MiB:,.0f} MiB; "
        f"server VmHWM {hwm0:.0f} → {hwm1:.0f} MiB; workers' VmHWM (MiB) {workers_hwm}; "
        f"view {view.status} in {view.latency_s} s: {view.errors}"
    )
    assert small.status == "finished" and not small.exceptions, small.as_dict()
    assert not any("control.npz" in _plain(e) for e in small.errors), small.as_dict()
    assert view.status == "finished", view.as_dict()
    assert view.exceptions == [], view.as_dict()
    assert view.errors, f"no error message for a ~1 GiB archive: {view.as_dict()}"
    message = _plain(" ".join(view.errors))
    assert "bomb.npz" in message and f"{ARRAY_CAP_MIB} MiB" in message, message
    for leak in ("KRONOSCOPE_", server.cache_dir, "Traceback"):
        assert leak not in message, (leak, message)
    assert hwm1 < hwm0 + HWM_MARGIN_MIB, f"server peak memory {hwm0:.0f} → {hwm1:.0f} MiB"
    assert health(server.url, 5.0) is not None


def _plain(markdown: str) -> str:
    """An ``st.error`` body without the Markdown escapes the app adds."""
    return markdown.replace("\\", "")


# -- raw upload requests ------------------------------------------------------------------------


def test_raw_uploads_are_bounded_per_visitor(server):
    data = os.urandom(40 * MiB)

    async def body():
        a = await _tab(server.url, xsrf_cookie(server.url))
        b = await _tab(server.url, xsrf_cookie(server.url))
        try:
            rss = [_rss(server)]
            statuses = []
            for _ in range(3):
                statuses.append(await _put(server.url, a, data))
                rss.append(_rss(server))
            other = await _put(server.url, b, data)
            rss.append(_rss(server))
            oversize = await _put(server.url, b, os.urandom(60 * MiB))  # > server.maxUploadSize
            return statuses, other, oversize, rss
        finally:
            await a.close()
            await b.close()

    statuses, other, oversize, rss = bounded(body())
    growth = max(rss[:4]) - rss[0]
    print(
        f"\nraw uploads of 40 MiB, one visitor: {statuses}; another visitor: {other} "
        f"(then 60 MiB, above server.maxUploadSize: {oversize}); "
        f"server VmRSS (MiB) {[round(r) for r in rss]}: +{growth:.0f} MiB for one visitor"
    )
    assert statuses == [204, 204, 413], statuses
    assert growth < QUOTA_MIB + RSS_MARGIN_MIB, (
        f"server VmRSS grew {growth:.0f} MiB for one visitor's uploads (quota {QUOTA_MIB} MiB "
        f"+ {RSS_MARGIN_MIB} MiB margin); samples after each PUT {[round(r) for r in rss]}"
    )
    assert other == 204, f"another visitor's upload got {other}"
    assert oversize == 413, oversize


def test_closed_tabs_release_their_uploads(server):
    data = os.urandom(40 * MiB)

    async def body():
        cookie = xsrf_cookie(server.url)
        tab = await _tab(server.url, cookie)
        rss0 = _rss(server)
        kept = [await _put(server.url, tab, data) for _ in range(2)]
        rss_kept = _rss(server)
        await tab.close()
        await asyncio.sleep(RELEASE_WAIT_S)
        rss_closed = _rss(server)
        async with StudentSession(server.url, cookie=cookie) as again:
            await again.open("", "", timeout=VIEW_TIMEOUT_S)
            later = await _put(server.url, again, data)
        return kept, later, (rss0, rss_kept, rss_closed)

    kept, later, (rss0, rss_kept, rss_closed) = bounded(body())
    print(
        f"\nclosed tab: its PUTs {kept}; VmRSS {rss0:.0f} → {rss_kept:.0f} with 80 MiB kept → "
        f"{rss_closed:.0f} MiB {RELEASE_WAIT_S:.0f} s after closing; the visitor's next tab's "
        f"40 MiB PUT: {later}"
    )
    assert kept == [204, 204], kept
    assert later == 204, (
        f"{RELEASE_WAIT_S:.0f} s after the tab closed, its 80 MiB still count against the "
        f"visitor's quota (the next tab's 40 MiB PUT got {later})"
    )
    assert rss_closed < rss0 + RSS_MARGIN_MIB, (
        f"server VmRSS {rss_closed:.0f} MiB {RELEASE_WAIT_S:.0f} s after the tab closed "
        f"(before its uploads {rss0:.0f} MiB): the closed tab's files are still held"
    )


def test_two_tabs_of_one_browser_share_one_quota(server):
    # files below server.maxUploadSize (50 MB in .streamlit/config.toml): 2 × 35 MiB from tab 1,
    # then tab 2 of the same browser is at 105 MiB with 35 more (refused) and at 95 with 25
    big, small = os.urandom(35 * MiB), os.urandom(25 * MiB)

    async def body():
        cookie = xsrf_cookie(server.url)
        tabs = [await _tab(server.url, cookie) for _ in range(2)]
        stranger = await _tab(server.url, xsrf_cookie(server.url))
        try:
            first = [await _put(server.url, tabs[0], big) for _ in range(2)]
            second = [await _put(server.url, tabs[1], big), await _put(server.url, tabs[1], small)]
            third = await _put(server.url, stranger, big)
            return first, second, third
        finally:
            for t in (*tabs, stranger):
                await t.close()

    first, second, third = bounded(body())
    print(
        f"\nsame cookie: tab 1 2×35 MiB {first}, tab 2 35 MiB then 25 MiB {second}; "
        f"another visitor's 35 MiB {third}"
    )
    assert first == [204, 204], first
    assert second == [413, 204], f"tab 2 of the same browser: {second} (expected [413, 204])"
    assert third == 204, third


def test_tabs_stopped_before_the_page_runs_share_one_quota(server):
    """A tab whose first run is stopped at once (``stop_script`` right behind the rerun) still
    gets its session id, and its uploads count against its browser's quota like any tab's."""
    data = os.urandom(40 * MiB)

    async def body():
        cookie = xsrf_cookie(server.url)
        tabs = [StudentSession(server.url, cookie=cookie) for _ in range(2)]
        try:
            runs = []
            for tab in tabs:
                await tab.connect()
                runs.append(await tab.open_and_stop("", "", timeout=VIEW_TIMEOUT_S))
            first = [await _put(server.url, tabs[0], data) for _ in range(2)]
            second = await _put(server.url, tabs[1], data)
            return runs, first, second
        finally:
            for tab in tabs:
                await tab.close()

    runs, first, second = bounded(body())
    print(
        f"\ntwo stopped tabs of one browser ({[r.elements for r in runs]} elements drawn): "
        f"tab 1 2×40 MiB {first}, tab 2 40 MiB {second}"
    )
    assert all(r.status == "finished" for r in runs), [r.as_dict() for r in runs]
    assert first == [204, 204], first
    assert second == 413, (
        f"a second tab of the same browser stored 40 MiB more ({second}) with 80 MiB already "
        f"kept by the first: a tab whose script never reached the page is its own visitor"
    )


# -- heavy tabs against a new visitor's cheap view ---------------------------------------------


def test_cold_view_is_not_stuck_behind_heavy_tabs(server):
    async def heavy(seed: int):
        view = await _open(
            server.url, "explorer", HEAVY_QUERY.format(seed=seed),
            cookie=xsrf_cookie(server.url), timeout=TEST_TIMEOUT_S - 5,
        )  # fmt: skip
        return view, time.monotonic()

    async def body():
        tasks = [asyncio.create_task(heavy(500 + i)) for i in range(HEAVY_TABS)]
        try:
            await asyncio.sleep(HEAVY_HEAD_START_S)
            assert not any(t.done() for t in tasks), "a heavy view finished before the head start"
            cold = await _open(
                server.url, "explorer", "dataset=digits&seed=123",
                cookie=xsrf_cookie(server.url), timeout=COLD_VIEW_DEADLINE_S + 10,
            )  # fmt: skip
            cold_done = time.monotonic()
            heavies = await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return cold, cold_done, heavies

    cold, cold_done, heavies = bounded(body())
    still_running = sum(1 for _v, done in heavies if done > cold_done)
    print(
        f"\ncold view behind {HEAVY_TABS} heavy tabs: {cold.status} in {cold.latency_s} s "
        f"(deadline {COLD_VIEW_DEADLINE_S} s); heavy views "
        f"{[round(v.latency_s or -1, 1) for v, _ in heavies]} s, {still_running} still running "
        "when it finished"
    )
    assert cold.ok and cold.charts >= 1, cold.as_dict()
    assert cold.latency_s is not None and cold.latency_s <= COLD_VIEW_DEADLINE_S, cold.as_dict()
    assert still_running == HEAVY_TABS, "the heavy tabs were not all computing meanwhile"
    for view, _ in heavies:
        assert view.status == "finished" and not view.errors, view.as_dict()
