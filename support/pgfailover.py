"""A replicated PostgreSQL that fails over by itself, for tests and benchmarks: Debian's
``pg_auto_failover`` (``postgresql-15-auto-failover`` and ``pg-auto-failover-cli``), a monitor and
two nodes on loopback, each node supervised by its ``pg_autoctl`` keeper.

Why pg_auto_failover rather than Patroni with etcd: one Debian package and one binary per node,
the monitor is a PostgreSQL of its own (no consensus store to run beside it), two nodes suffice
(Patroni's etcd wants three members for a quorum), and its primary keeps a synchronous standby
by default (``synchronous_standby_names = 'ANY 1 (...)'``), which is what "an acknowledged
correction survives the primary's death" needs. The price: the monitor is a single point for
*failover decisions* (not for serving; the nodes keep running while it is down).

The ports are free ones picked when the cluster starts (no fixed ports). The monitor's health
checks are tightened (a check a second, a node unhealthy after 2 s without one) and the demote
timeout, the wait for an unreachable old primary to stop by itself before its standby is
promoted, is 5 s instead of 30: here the old primary is killed, never partitioned. A production
formation keeps the defaults (``docs/operations.md``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from support.pg import pg_bin

MONITOR_SETTINGS = {
    "health_check_period": "1000",
    "health_check_timeout": "1000",
    "health_check_max_retries": "1",
    "health_check_retry_delay": "200",
    "node_considered_unhealthy_timeout": "2000",
    "primary_demote_timeout": "5000",
}


def available() -> bool:
    return shutil.which("pg_autoctl") is not None and pg_bin() is not None


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class AutoFailoverCluster:
    """A monitor and two nodes (``node1``, ``node2``); ``uri`` names both, and libpq finds the
    primary by itself (``target_session_attrs=read-write``)."""

    def __init__(self, database: str = "cad") -> None:
        bindir = pg_bin()
        if bindir is None or shutil.which("pg_autoctl") is None:
            raise FileNotFoundError("pg_auto_failover (pg_autoctl) is not installed")
        self.database = database
        self.base = Path(tempfile.mkdtemp(prefix="cadpaf-"))
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.env = {
            **os.environ,
            "PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.base),
        }
        self.monitor_port, *ports = free_ports(3)
        self.ports = {"node1": ports[0], "node2": ports[1]}
        self.keepers: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ processes

    def _ctl(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            [*self.prefix, "pg_autoctl", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pg_autoctl {args[0]} {args[1]} failed: {done.stderr[-2000:]}")
        return done.stdout

    def _keep(self, name: str, *args: str) -> None:
        log = (self.base / f"{name}.log").open("ab")
        self.keepers[name] = subprocess.Popen(
            [*self.prefix, "pg_autoctl", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a kill takes the whole keeper
        )

    @property
    def monitor_uri(self) -> str:
        return (
            f"postgres://autoctl_node@127.0.0.1:{self.monitor_port}/pg_auto_failover"
            "?sslmode=disable"
        )

    @property
    def uri(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports.values())
        return (
            f"postgresql://postgres@{hosts}/{self.database}"
            "?target_session_attrs=read-write&connect_timeout=2"
        )

    def node_uri(self, name: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.ports[name]}/{self.database}"

    def start(self, timeout: float = 180) -> AutoFailoverCluster:
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # nothing left running from a formation that did not come up
            raise

    def _start(self, timeout: float) -> AutoFailoverCluster:
        monitor = str(self.base / "monitor")
        self._ctl("create", "monitor", "--pgdata", monitor, "--pgport", str(self.monitor_port),
                  "--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl")  # fmt: skip
        self._keep("monitor", "run", "--pgdata", monitor)
        self.wait("the monitor", lambda: self._sql(self.monitor_port, "pg_auto_failover", "SELECT 1"),
                  timeout)  # fmt: skip
        for key, value in MONITOR_SETTINGS.items():
            self._sql(self.monitor_port, "pg_auto_failover",
                      f"ALTER SYSTEM SET pgautofailover.{key} = {value}")  # fmt: skip
        self._sql(self.monitor_port, "pg_auto_failover", "SELECT pg_reload_conf()")
        for name in self.ports:
            self._keep(name, "create", "postgres", "--pgdata", str(self.base / name),
                       "--pgport", str(self.ports[name]), "--hostname", "127.0.0.1",
                       "--listen", "127.0.0.1", "--monitor", self.monitor_uri, "--auth", "trust",
                       "--no-ssl", "--name", name, "--dbname", self.database, "--run")  # fmt: skip
            if name == "node1":
                self.wait("node1 to be primary", lambda: "node1" in self.primaries(), timeout)
        # the standby's base backup waits for a checkpoint on the primary: ask for one
        self.wait("node2 to be a synchronous standby", lambda: self._standby_ready(), timeout)
        return self

    def _standby_ready(self) -> bool:
        states = self.states()
        if states == {"node1": "primary", "node2": "secondary"}:
            return True
        for name in self.primaries():
            self._sql(self.ports[name], self.database, "CHECKPOINT")
        return False

    def _sql(self, port: int, database: str, text: str) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                f"postgresql://postgres@127.0.0.1:{port}/{database}",
                autocommit=True,
                connect_timeout=2,
            ) as conn:
                conn.execute(text)
            return True
        except psycopg.Error:
            return False

    # ------------------------------------------------------------------ state

    def states(self) -> dict[str, str]:
        """Each node's state where the node has reached what the monitor assigned it (primary,
        secondary, wait_primary, ...); "moving" while it has not (a dead node stays there)."""
        try:
            out = self._ctl("show", "state", "--pgdata", str(self.base / "monitor"), "--json",
                            timeout=20)  # fmt: skip
        except (RuntimeError, subprocess.TimeoutExpired):
            return {}
        return {
            n["nodename"]: n["current_group_state"]
            if n["current_group_state"] == n["assigned_group_state"]
            else "moving"
            for n in json.loads(out)
        }

    def primaries(self) -> list[str]:
        """The nodes that take writes now (the monitor's word)."""
        return [n for n, s in self.states().items() if s in ("primary", "wait_primary", "single")]

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 120) -> float:
        """Poll ``check`` until it holds; the seconds it took (RuntimeError after ``timeout``)."""
        t0 = time.monotonic()
        while not check():
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.1)
        return time.monotonic() - t0

    # ------------------------------------------------------------------ failures

    def kill(self, name: str) -> None:
        """The node's host dies: its keeper and its postmaster are killed (SIGKILL). Killing the
        postmaster alone is a restart, not a failover: the keeper starts it again."""
        keeper = self.keepers.pop(name, None)
        if keeper is not None:
            os.killpg(keeper.pid, signal.SIGKILL)
            keeper.wait(timeout=30)
        pid_file = self.base / name / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def rejoin(self, name: str) -> None:
        """Start a killed node's keeper again: it rejoins as a standby of the new primary
        (pg_rewind where its history diverged)."""
        self._keep(name, "run", "--pgdata", str(self.base / name))

    def switchover(self) -> None:
        """A planned switchover: the primary hands over to its standby, nothing lost."""
        self._ctl("perform", "switchover", "--pgdata", str(self.base / "monitor"), timeout=180)

    def stop(self) -> None:
        for name in list(self.keepers):
            self.kill(name)
        subprocess.run(["pkill", "-9", "-f", str(self.base)], check=False)
        shutil.rmtree(self.base, ignore_errors=True)
