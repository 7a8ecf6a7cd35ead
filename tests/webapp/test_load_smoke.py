"""A small class on a real server: five students and one dropped tab, over loopback.

Starts ``streamlit run app.py`` on a free 127.0.0.1 port (bench/load_bench.py's ``Server``, a
fresh cache directory), lets five simulated students open the default Fisher explorer view over
Streamlit's websocket protocol (bench/loadclient.py) while one more client drops its connection
in the middle of its view, and probes ``/_stcore/health`` every 0.25 s throughout. Every student
must see a complete view (finished, at least one plotly chart, no error element), no session may
drop, health must always answer within 2 s, and the server's process group must be gone after.
Bounded: 60 s per view, 75 s for the whole class.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from load_bench import Probes, Server, free_port, group_members, student_queries  # noqa: E402
from loadclient import StudentSession, _masked_binary_frame, disconnect_mid_view  # noqa: E402
from websockets.frames import Frame, Opcode  # noqa: E402
from websockets.streams import StreamReader  # noqa: E402

STUDENTS = 5
VIEW_TIMEOUT_S = 60.0
CLASS_TIMEOUT_S = 75.0
HEALTH_LIMIT_S = 2.0


async def _student(url: str, delay: float):
    await asyncio.sleep(delay)
    async with StudentSession(url) as session:
        view = await session.open("explorer", "", timeout=VIEW_TIMEOUT_S)
    return view, session.dropped


async def _class(url: str):
    dropper = asyncio.create_task(disconnect_mid_view(url, "explorer", "seed=7"))
    students = [_student(url, 0.3 * i) for i in range(STUDENTS)]
    return await asyncio.wait_for(asyncio.gather(dropper, *students), timeout=CLASS_TIMEOUT_S)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(free_port(), tmp_path_factory.mktemp("load-logs")) as srv:
        yield srv
    assert group_members(srv.proc.pid) == []  # nothing of the server's process group is left


def test_five_students_and_a_dropped_tab(server):
    with Probes(server.url, server.proc.pid, health_timeout=HEALTH_LIMIT_S) as probes:
        dropped_tab, *students = asyncio.run(_class(server.url))

    assert dropped_tab.status == "aborted", dropped_tab.as_dict()  # it left mid-view
    for view, dropped in students:
        assert not dropped, view.as_dict()
        assert view.status == "finished", view.as_dict()
        assert view.errors == [], view.as_dict()
        assert view.charts >= 1, view.as_dict()
    health = probes.summary()
    assert health["health_checks"] >= 4, health
    assert health["health_failures"] == 0, f"health unanswered within {HEALTH_LIMIT_S} s: {health}"
    assert health["health_max_s"] <= HEALTH_LIMIT_S, health
    assert server.proc.poll() is None, server.log_tail()  # the server survived the class


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536, 70_001])
def test_slow_reader_frame_parses_as_one_masked_binary_frame(n):
    """The raw-socket client's frame, read back by the websockets library's own parser
    (length encodings switch at 126 and 65536 bytes)."""
    payload = bytes(i % 251 for i in range(n))
    reader = StreamReader()
    reader.feed_data(_masked_binary_frame(payload))
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as done:
        next(parser)
    frame = done.value.value
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.BINARY, True, payload)


def test_mixes():
    teacher = student_queries(30, "teacher", "dataset=digits&seed=0")
    assert teacher.count("dataset=digits&seed=0") == 20  # two thirds on the teacher's link
    own = [q for q in teacher if q != "dataset=digits&seed=0"]
    assert len(set(own)) == 10
    different = student_queries(30, "different", "dataset=digits&seed=0")
    assert len(set(different)) == 30 and "dataset=digits&seed=0" not in different
    with pytest.raises(ValueError, match="mix 'all'"):
        student_queries(3, "all", "")
