"""Load test of the Streamlit server: a class of simulated students on loopback.

Each scenario starts a fresh server (``streamlit run app.py`` on a free 127.0.0.1 port, a fresh
``KRONOSCOPE_CACHE_DIR``), waits for ``/_stcore/health``, lets the teacher open the home page
once (imports warm, nothing cached that a student asks for), then lets N students arrive evenly
spread over a window. Each student opens the Fisher explorer through Streamlit's websocket
protocol (bench/loadclient.py) and then makes ``--interactions`` widget changes (another layer,
another method set, another m) with think time in between. Meanwhile a probe thread asks
``/_stcore/health`` every 0.25 s (5 s timeout = failure) and a sampler sums ``VmRSS`` over the
server's process tree every 0.5 s. The server's process group is killed at the end, always.

Mixes: ``teacher``: two thirds open the teacher's link (one fixed query), one third their own
seed; ``different``: every student has their own seed. ``--faults`` runs the fault scenario: a
client that drops its connection mid-view, a client that sends a rerun and never reads for 30 s,
then checks that health and a fresh student's view still answer.

    .venv/bin/python bench/load_bench.py --students 1,10,30 --mix teacher,different
    .venv/bin/python bench/load_bench.py --students 10 --url http://127.0.0.1:8080  # a proxy
    .venv/bin/python bench/load_bench.py --faults --students 0

Reported per scenario: view latency (send → script_finished) p50/p95/max over all views and over
first views, health max and failures, views with an error element (texts kept), dropped
sessions, views without a plotly chart, peak RSS of the process tree and VmHWM of the server
process, CPU seconds of the tree (``/proc/PID/stat`` utime+stime+cutime+cstime), wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadclient import (  # noqa: E402  (bench/ is not a package)
    StudentSession,
    ViewResult,
    disconnect_mid_view,
    first_options,
    next_option,
    slow_reader,
    summarize_views,
    ws_url,
)

ROOT = Path(__file__).resolve().parent.parent
TEACHER_QUERY = "dataset=digits&seed=0"
PAGE = "explorer"
# The follow-up interactions, in turn: widget label on the explorer page and how to change it.
INTERACTIONS = (
    ("Layer", next_option),
    ("Approximations", first_options(3)),
    ("Fisher minibatch m", next_option),
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the server under test --------------------------------------------------------------------


def loadavg() -> float:
    """The 1-minute load average: the machine is shared, so every result carries it."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(base_url: str, timeout: float) -> float | None:
    """Seconds for one ``GET /_stcore/health`` answered ``ok``; None on failure or timeout."""
    parts = urlsplit(base_url)
    started = time.monotonic()
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.request("GET", parts.path.rstrip("/") + "/_stcore/health")
        resp = conn.getresponse()
        body = resp.read()
        ok = resp.status == 200 and body.strip() == b"ok"
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return time.monotonic() - started if ok else None


class Server:
    """``python serve.py`` (settings checked, Streamlit serving app.py, the default views
    prewarmed) in its own process group; stopped (group killed) on exit."""

    def __init__(
        self,
        port: int,
        log_dir: Path,
        startup_timeout: float = 90.0,
        *,
        base_path: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port
        self.base_path = base_path  # Streamlit's server.baseUrlPath ("": the root)
        self.url = f"http://127.0.0.1:{port}" + (f"/{base_path}" if base_path else "")
        self.cache_dir = tempfile.mkdtemp(prefix="kronoscope-load-cache-")
        self.env = env or {}  # settings for this server (e.g. KRONOSCOPE_PREWARM)
        self.log_path = log_dir / f"server-{port}.log"
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        self.start()
        return self.wait_healthy()

    def start(self) -> None:
        """Start ``python serve.py`` (returns at once; :meth:`wait_healthy` waits for it)."""
        cmd = [
            str(ROOT / ".venv/bin/python"), "serve.py",
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.address", "127.0.0.1",
            "--server.port", str(self.port), "--server.baseUrlPath", self.base_path,
        ]  # fmt: skip
        env = {**os.environ, "KRONOSCOPE_CACHE_DIR": self.cache_dir, **self.env}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def wait_healthy(self) -> Server:
        """Wait until the health endpoint answers ``ok`` (after the warm-up); stop the server
        and raise, with its log's tail, when it exits or the startup timeout passes."""
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited with {self.proc.returncode}; {self.log_tail()}")
            if health(self.url, 2.0) is not None:
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"server not healthy after {self.startup_timeout:.0f} s; {self.log_tail()}"
        )

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL to what is left after 5 s: no process of the server's
        group (its worker processes included) outlives the bench."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 5.0
            while group_members(self.proc.pid) and time.monotonic() < deadline:
                self.proc.poll()  # reap the leader as soon as it exits
                time.sleep(0.1)
            if not group_members(self.proc.pid):
                break
        self.proc.wait(5)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return "server log tail: " + self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "no server log"


# -- probes -----------------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc/*/stat."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def status_kib(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime (fields 14–17 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return sum(int(f) for f in fields[11:15])


def tree_rss_kib(root: int) -> int:
    """Resident memory of the server and its worker processes, summed."""
    return sum(status_kib(pid, "VmRSS") for pid in process_tree(root))


def tree_cpu_seconds(root: int) -> float:
    """CPU of the tree: every live process's own and reaped children's time (each reaped
    process is counted once, in its parent's cutime/cstime)."""
    return sum(_cpu_ticks(pid) for pid in process_tree(root)) / CLK_TCK


@dataclass
class Probes:
    """A thread that asks health every 0.25 s and samples the tree's RSS every 0.5 s."""

    url: str
    server_pid: int | None
    health_timeout: float = 5.0
    health: list[tuple[float, float | None]] = field(default_factory=list)  # (t, latency)
    rss_kib: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._health_loop, daemon=True)]
        if self.server_pid is not None:
            self._threads.append(threading.Thread(target=self._rss_loop, daemon=True))
        self.t0 = time.monotonic()

    def __enter__(self) -> Probes:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.health_timeout + 2)

    def _health_loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.health.append((started - self.t0, health(self.url, self.health_timeout)))
            self._stop.wait(max(0.0, 0.25 - (time.monotonic() - started)))

    def _rss_loop(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss_kib(self.server_pid)
            self.rss_kib.append((time.monotonic() - self.t0, rss))
            self._stop.wait(0.5)

    def summary(self) -> dict:
        lat = [v for _, v in self.health]
        answered = [v for v in lat if v is not None]
        return {
            "health_checks": len(lat),
            "health_failures": len(lat) - len(answered),
            "health_max_s": max(answered) if answered else None,
            "health_p95_s": float(np.percentile(answered, 95)) if answered else None,
            "peak_rss_mib": max(r for _, r in self.rss_kib) / 1024 if self.rss_kib else None,
        }


# -- students ---------------------------------------------------------------------------------


def student_queries(n: int, mix: str, teacher_query: str) -> list[str]:
    """``teacher``: students 0, 1 (mod 3) on the teacher's link, 2 (mod 3) on their own seed."""
    if mix not in ("teacher", "different"):
        raise ValueError(f"mix {mix!r}: choose 'teacher' or 'different'")
    own = [f"dataset=digits&seed={101 + i}" for i in range(n)]
    if mix == "different":
        return own
    return [own[i] if i % 3 == 2 else teacher_query for i in range(n)]


async def student(
    url: str, query: str, delay: float, interactions: int, think: float, view_timeout: float
) -> dict:
    """One student: arrive after ``delay``, open the explorer, then change widgets in turn."""
    await asyncio.sleep(delay)
    views: list[ViewResult] = []
    connect_error = ""
    session = StudentSession(url)
    try:
        await session.connect()
    except Exception as err:  # any refusal to connect is a result
        connect_error = f"{type(err).__name__}: {err}"[:300]
    if not connect_error:
        try:
            views.append(await session.open(PAGE, query, timeout=view_timeout))
            for k in range(interactions):
                if session.dropped or views[-1].status != "finished":
                    break
                await asyncio.sleep(think)
                label, choose = INTERACTIONS[k % len(INTERACTIONS)]
                views.append(await session.change(label, choose, timeout=view_timeout))
        finally:
            await session.close()
    return {
        "query": query,
        "arrival_s": delay,
        "connect_error": connect_error,
        "dropped": session.dropped or bool(connect_error),
        "views": [v.as_dict() for v in views],
        "_views": views,
    }


def latency_stats(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    arr = np.asarray(values)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }


async def run_students(args, url: str, n: int, mix: str) -> list[dict]:
    queries = student_queries(n, mix, args.teacher_query)
    delays = [args.window * i / n for i in range(n)]
    tasks = [
        asyncio.create_task(student(url, q, d, args.interactions, args.think, args.view_timeout))
        for q, d in zip(queries, delays)
    ]
    done, pending = await asyncio.wait(tasks, timeout=args.deadline)
    for t in pending:
        t.cancel()
    results = []
    for t, q, d in zip(tasks, queries, delays):
        if t in done and t.exception() is None:
            results.append(t.result())
        else:
            why = "global deadline" if t in pending else repr(t.exception())[:300]
            results.append(
                {"query": q, "arrival_s": d, "connect_error": "", "dropped": False,
                 "views": [], "_views": [], "unfinished": why}
            )  # fmt: skip
    await asyncio.gather(*pending, return_exceptions=True)
    return results


def scenario_report(name: str, n: int, mix: str, students: list[dict], probes: Probes) -> dict:
    views = [v for s in students for v in s["_views"]]
    firsts = [s["_views"][0] for s in students if s["_views"]]
    done = [v.latency_s for v in views if v.latency_s is not None]
    counts = summarize_views(views)
    errors = sorted({e for v in views for e in v.errors})
    return {
        "scenario": name,
        "students": n,
        "mix": mix,
        "first_view": latency_stats([v.latency_s for v in firsts if v.latency_s is not None]),
        "all_views": latency_stats(done),
        **counts,
        "dropped_sessions": sum(1 for s in students if s["dropped"]),
        "unfinished_students": sum(1 for s in students if s.get("unfinished")),
        "error_texts": errors,
        **probes.summary(),
    }


def run_scenario(args, n: int, mix: str, log_dir: Path) -> dict:
    name = f"N={n} {mix}"
    print(f"-- {name}: starting", flush=True)
    load = loadavg()

    async def drive(url: str, probes: Probes) -> list[dict]:
        with probes:
            return await run_students(args, url, n, mix)

    started = time.monotonic()
    if args.url:
        probes = Probes(args.url, None)
        students = asyncio.run(drive(args.url, probes))
        report = scenario_report(name, n, mix, students, probes)
        report.update(cpu_s=None, vmhwm_mib=None)
    else:
        with Server(args.port or free_port(), log_dir) as server:
            asyncio.run(_warm(server.url, args.view_timeout))
            report_rss = {"rss_idle_mib": tree_rss_kib(server.proc.pid) / 1024}
            probes = Probes(server.url, server.proc.pid)
            cpu0 = tree_cpu_seconds(server.proc.pid)
            students = asyncio.run(drive(server.url, probes))
            report = scenario_report(name, n, mix, students, probes)
            report["cpu_s"] = tree_cpu_seconds(server.proc.pid) - cpu0
            report["vmhwm_mib"] = status_kib(server.proc.pid, "VmHWM") / 1024
            if args.settle > 0:  # every student has left: does the memory come back?
                time.sleep(args.settle)
                report_rss["rss_after_mib"] = tree_rss_kib(server.proc.pid) / 1024
            report.update(report_rss)
    report["window_s"] = args.window
    report["wall_s"] = time.monotonic() - started
    report["loadavg_start"] = load
    report["raw_students"] = [{k: v for k, v in s.items() if k != "_views"} for s in students]
    report["raw_health"] = probes.health
    report["raw_rss_kib"] = probes.rss_kib
    print(f"-- {name}: done in {report['wall_s']:.0f} s", flush=True)
    return report


async def _warm(url: str, timeout: float) -> None:
    """The teacher opens the home page and the explorer's default view before sharing the
    link (what ``serve.py``'s prewarm does at start: waiting for it here makes the idle memory
    a steady value)."""
    async with StudentSession(url) as s:
        for page in ("", "explorer"):
            view = await s.open(page, "", timeout=timeout)
            if not view.ok:
                raise RuntimeError(f"warm-up view of {page or 'home'} failed: {view.as_dict()}")


# -- faults -----------------------------------------------------------------------------------


def run_faults(args, log_dir: Path) -> dict:
    """A tab dropped mid-view and a client that never reads, then a fresh student."""
    print("-- faults: starting", flush=True)
    started = time.monotonic()
    load = loadavg()

    async def drive(url: str, probes: Probes) -> dict:
        with probes:
            dropper = await disconnect_mid_view(url, PAGE, "dataset=digits&seed=901")
            slow = asyncio.create_task(
                slow_reader(url, PAGE, "dataset=digits&seed=902", hold_s=args.slow_hold)
            )
            await asyncio.sleep(1.0)
            during = await _one_view(url, "dataset=digits&seed=903", args.view_timeout)
            slow_result = await slow
            after = await _one_view(url, "dataset=digits&seed=904", args.view_timeout)
        return {"dropper": dropper, "slow": slow_result, "during": during, "after": after}

    def summarize(out: dict, probes: Probes) -> dict:
        views = [out["during"], out["after"]]
        return {
            "scenario": "faults",
            "disconnect_mid_view": out["dropper"].as_dict(),
            "slow_reader": out["slow"],
            "view_during_slow_reader": out["during"].as_dict(),
            "view_after_faults": out["after"].as_dict(),
            **summarize_views(views),
            "error_texts": sorted({e for v in views for e in v.errors}),
            "all_views": latency_stats([v.latency_s for v in views if v.latency_s is not None]),
            **probes.summary(),
        }

    if args.url:
        probes = Probes(args.url, None)
        report = summarize(asyncio.run(drive(args.url, probes)), probes)
        report.update(cpu_s=None, vmhwm_mib=None, idle_cores_after=None)
    else:
        with Server(args.port or free_port(), log_dir) as server:
            asyncio.run(_warm(server.url, args.view_timeout))
            probes = Probes(server.url, server.proc.pid)
            cpu0 = tree_cpu_seconds(server.proc.pid)
            out = asyncio.run(drive(server.url, probes))
            report = summarize(out, probes)
            report["cpu_s"] = tree_cpu_seconds(server.proc.pid) - cpu0
            report["vmhwm_mib"] = status_kib(server.proc.pid, "VmHWM") / 1024
            # Nothing should be left running: cores the tree uses over 5 s of quiet.
            idle0 = tree_cpu_seconds(server.proc.pid)
            time.sleep(5.0)
            report["idle_cores_after"] = (tree_cpu_seconds(server.proc.pid) - idle0) / 5.0
    report["wall_s"] = time.monotonic() - started
    report["loadavg_start"] = load
    report["raw_health"] = probes.health
    print(f"-- faults: done in {report['wall_s']:.0f} s", flush=True)
    return report


async def _one_view(url: str, query: str, timeout: float) -> ViewResult:
    try:
        async with StudentSession(url) as s:
            return await s.open(PAGE, query, timeout=timeout)
    except Exception as err:  # a refused connection is the result
        view = ViewResult("open", PAGE, query, time.monotonic(), status="dropped")
        view.note = f"{type(err).__name__}: {err}"[:300]
        return view


# -- report -----------------------------------------------------------------------------------


def _fmt(v, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown_table(reports: list[dict]) -> str:
    head = (
        "| scenario | window (s) | views | first view p50 / p95 / max (s) "
        "| all views p50 / p95 / max (s) "
        "| health max (s) | health fails | views with error | dropped | no chart | timeouts "
        "| peak RSS tree (MiB) | RSS idle → after (MiB) | VmHWM server (MiB) | CPU (s) | wall (s) "
        "| load avg at start |\n"
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    )
    rows = [head]
    for r in reports:
        fv, av = r.get("first_view", {}), r["all_views"]
        rows.append(
            f"| {r['scenario']} | {_fmt(r.get('window_s'), 'g')} | {r['views']} "
            f"| {_fmt(fv.get('p50'))} / {_fmt(fv.get('p95'))} / {_fmt(fv.get('max'))} "
            f"| {_fmt(av['p50'])} / {_fmt(av['p95'])} / {_fmt(av['max'])} "
            f"| {_fmt(r['health_max_s'], '.2f')} | {r['health_failures']}/{r['health_checks']} "
            f"| {r['with_errors']} | {r.get('dropped_sessions', r['dropped'])} "
            f"| {r['without_chart']} | {r['timeouts']} | {_fmt(r['peak_rss_mib'], '.0f')} "
            f"| {_fmt(r.get('rss_idle_mib'), '.0f')} → {_fmt(r.get('rss_after_mib'), '.0f')} "
            f"| {_fmt(r['vmhwm_mib'], '.0f')} | {_fmt(r['cpu_s'])} | {r['wall_s']:.0f} "
            f"| {_fmt(r.get('loadavg_start'))} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", default="1,10,30", help="comma-separated N (0: none)")
    p.add_argument("--mix", default="teacher,different", help="teacher and/or different")
    p.add_argument(
        "--window",
        type=float,
        default=30.0,
        help="arrivals spread evenly over this many seconds (0: all at once)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="after the last student, wait this long and measure RSS again (s)",
    )
    p.add_argument("--interactions", type=int, default=2, help="widget changes after opening")
    p.add_argument("--think", type=float, default=3.0, help="think time between views (s)")
    p.add_argument("--view-timeout", type=float, default=120.0, help="per view (s)")
    p.add_argument("--deadline", type=float, default=900.0, help="per scenario (s)")
    p.add_argument("--teacher-query", default=TEACHER_QUERY)
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument("--url", default="", help="test this running server (http://127.0.0.1:PORT)")
    p.add_argument("--faults", action="store_true", help="also run the fault scenario")
    p.add_argument("--slow-hold", type=float, default=30.0, help="slow reader holds (s)")
    p.add_argument("--json", default="", help="write raw results here")
    p.add_argument("--from-json", default="", help="only print the table of saved results")
    args = p.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(markdown_table(saved["scenarios"]))
        return 0
    # A SIGTERM unwinds like an error, so every started server's process group is killed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    try:
        sizes = [int(x) for x in args.students.split(",") if x.strip()]
        mixes = [m.strip() for m in args.mix.split(",") if m.strip()]
        for m in mixes:
            student_queries(1, m, args.teacher_query)
    except ValueError as err:
        p.error(f"--students/--mix: {err}")
    if any(n < 0 or n > 200 for n in sizes):
        p.error("--students: each N must be between 0 and 200")
    if args.url:
        try:
            ws_url(args.url)
        except ValueError as err:
            p.error(f"--url: {err}")
        if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            p.error(f"--url {args.url}: only loopback servers may be load-tested")
    if min(args.window, args.think, args.interactions) < 0:
        p.error("--window, --think and --interactions must not be negative")

    log_dir = Path(tempfile.mkdtemp(prefix="kronoscope-load-logs-"))
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "target": args.url or "fresh server per scenario",
        "args": vars(args),
        "server_logs": str(log_dir),
    }
    print(f"{meta['date']} · {meta['machine']} · load average {' '.join(meta['loadavg_at_start'])}")
    reports = []
    for n in sizes:
        for mix in mixes:
            if n:
                reports.append(run_scenario(args, n, mix, log_dir))
    if args.faults:
        reports.append(run_faults(args, log_dir))
    print()
    print(markdown_table(reports))
    for r in reports:
        for text in r["error_texts"]:
            print(f"- {r['scenario']}: {text}")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "scenarios": reports}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
