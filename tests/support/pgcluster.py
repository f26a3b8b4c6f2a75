"""A private, restartable PostgreSQL cluster for fault tests (issue #16: a database restart under load).

It runs the binaries the ``pgserver`` package ships, driven directly with initdb / pg_ctl, because a
fault test needs what pgserver hides: a TCP port that stays the same across restarts (the gateway's
pool reconnects to the URL it was given) and ``pg_ctl stop -m immediate``, a crash without a
checkpoint that the next start recovers from.

PostgreSQL refuses to run as root. Like pgserver, as root every server binary runs as the
``pgserver`` system user (created with useradd when missing), so the cluster's root directory must be
reachable by that user: pytest's ``tmp_path`` is not (``/tmp/pytest-of-root`` is 0700), a new
``tempfile.mkdtemp()`` directory is (``create`` opens ``root`` itself to that user). As any other
user, the binaries run as that user.

The API is synchronous (subprocesses); async callers run it in a thread.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

PG_USER = "pgserver"  # the user pgserver itself runs PostgreSQL as when started by root
SUPERUSER = "postgres"
READY_DEADLINE = 60.0  # crash recovery of a test-sized cluster takes well under a second

# Small and test-sized; fsync stays on so that an immediate stop is a real crash to recover from.
SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = ''
max_connections = 200
shared_buffers = 16MB
fsync = on
logging_collector = off
log_min_messages = warning
"""


@functools.cache
def _bin() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver package (payhub[embedded]) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


@functools.cache
def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server binaries: None (the current user) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        # A concurrent useradd may win the race; either way the user exists afterwards.
        subprocess.run(["useradd", "-s", "/bin/bash", PG_USER], capture_output=True, check=False)
        return pwd.getpwnam(PG_USER)


def _check_reachable(root: Path, user: pwd.struct_passwd) -> None:
    for directory in root.resolve().parents:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH and directory.stat().st_uid != user.pw_uid:
            raise RuntimeError(
                f"{directory} (mode {stat.filemode(mode)}) is not reachable by the {user.pw_name} user "
                "that runs PostgreSQL; use a new directory as root, e.g. Path(tempfile.mkdtemp())"
            )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Restart(threading.Thread):
    """A background restart whose failure is raised by ``join`` instead of being lost in the thread."""

    def __init__(self, cluster: Cluster, down_for: float, mode: str) -> None:
        super().__init__(name=f"pg-restart-{cluster.port}", daemon=True)
        self._restart = functools.partial(cluster.restart, down_for, mode)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._restart()
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None and not self.is_alive():
            raise self.error


class Cluster:
    """One PostgreSQL cluster under ``root``: data in ``root/data``, server log in ``root/postgres.log``."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = port
        self.url = self._url(SUPERUSER)

    def _url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    @classmethod
    def create(cls, root: Path) -> Cluster:
        """initdb into ``root/data``, start, and wait until it accepts connections."""
        user = _server_user()
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        if user is not None:
            _check_reachable(root, user)
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = cls(root, _free_port())
        cluster._run(
            "initdb",
            f"--pgdata={cluster.data}",
            f"--username={SUPERUSER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",  # speed; an immediate stop loses no page cache, so nothing depends on it
            "--no-instructions",
        )
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.write(SETTINGS.format(port=cluster.port))
        try:
            cluster.start()
        except BaseException:
            cluster.destroy()  # the caller has no cluster to destroy
            raise
        return cluster

    def start(self) -> None:
        """Start on the same port; returns once connections are accepted (after crash recovery)."""
        self._run("pg_ctl", "start", f"--pgdata={self.data}", f"--log={self.log}", "--wait", "--timeout=60")
        self._wait_accepting()

    def stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m mode``; "immediate" is a crash (no checkpoint). Stopped already: nothing."""
        if self._running():
            self._run("pg_ctl", "stop", f"--pgdata={self.data}", f"--mode={mode}", "--wait", "--timeout=60")

    def restart(self, down_for: float = 0.0, mode: str = "immediate") -> None:
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def restart_in_background(self, down_for: float, mode: str = "immediate") -> threading.Thread:
        """The same restart in a thread (already started); its ``join`` raises what the restart raised."""
        thread = _Restart(self, down_for, mode)
        thread.start()
        return thread

    def create_database(self, name: str) -> str:
        identifier = '"' + name.replace('"', '""') + '"'
        self._run(
            "psql",
            f"--dbname={self.url}",
            "--no-psqlrc",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            f"--command=CREATE DATABASE {identifier}",
        )
        return self._url(name)

    def destroy(self) -> None:
        """Stop (immediate) and remove the data directory; a second call does nothing."""
        if self.data.exists():
            self.stop("immediate")
            shutil.rmtree(self.data)

    # ---- processes ---------------------------------------------------------------------------

    def _running(self) -> bool:
        # pg_ctl status: 0 running, 3 not running, 4 no usable data directory.
        return self._run("pg_ctl", "status", f"--pgdata={self.data}", check=False).returncode == 0

    def _wait_accepting(self) -> None:
        started = time.monotonic()
        while True:
            ready = self._run(
                "pg_isready",
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--username={SUPERUSER}",
                check=False,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() - started > READY_DEADLINE:
                raise RuntimeError(
                    f"PostgreSQL on port {self.port} not accepting connections:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a pginstall binary as the server user. Output goes to a file, not a pipe: the postmaster
        that ``pg_ctl start`` forks would otherwise hold the pipe open (pgserver does the same)."""
        user = _server_user()
        with tempfile.TemporaryFile("w+") as output:
            done = subprocess.run(
                [str(_bin() / program), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=self.root,  # the server user may not be allowed into the caller's directory
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
                check=False,
                timeout=120,
            )
            output.seek(0)
            text = output.read()
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{program} {' '.join(args)} exited with {done.returncode}:\n{text}\n{self._log_tail()}"
            )
        return subprocess.CompletedProcess(done.args, done.returncode, text)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
