"""Set-up shared by every job: arguments and config, logging, connecting to Ray."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import ray
from pydantic import BaseModel

from xdr.config import load_job_config

log = logging.getLogger("xdr")
JobConfig = TypeVar("JobConfig", bound=BaseModel)


def parse_job_args(description: str, argv: list[str] | None, model_cls: type[JobConfig]
                   ) -> tuple[argparse.Namespace, JobConfig]:
    """`--config FILE`, then overrides as `--section.field=value`, `--section.field value` or
    `--set section.field=value`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_argument("--verbose", action="store_true", default=os.environ.get("XDR_VERBOSE") == "1",
                        help="show Ray's own log lines on the terminal (default: they go to a file named in the "
                        "summary; also XDR_VERBOSE=1)")
    parser.add_argument("--check", action="store_true",
                        help="only check the models, inputs, outputs and storage the job needs, then exit")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address; 'local' starts a fresh local Ray (default: RAY_ADDRESS, "
                        "else the cluster `ray start` runs on this machine, else a local Ray)")
    args, rest = parser.parse_known_args(argv)
    overrides = list(args.set)
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            parser.error(f"unexpected argument {token!r}")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if i + 1 >= len(rest):
                parser.error(f"{token} needs a value")
            value, i = rest[i + 1], i + 1
        overrides.append(f"{key.replace('-', '_')}={value}")
        i += 1
    try:
        config = load_job_config(model_cls, args.config, overrides)
    except (OSError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    return args, config


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("XDR_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def ray_log_file(command: str) -> Path:
    """Where a quiet run writes the driver's Ray log lines: a fresh file per run in the temporary folder."""
    folder = Path(os.environ.get("XDR_LOG_DIR", Path(tempfile.gettempdir()) / "xdr-logs"))
    return folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def quiet_ray_logs(log_file: Path) -> dict:
    """Keep Ray's own lines off the terminal: the driver's Ray loggers write to `log_file`, the workers'
    output stays in Ray's session log folder instead of being forwarded. Returns the ray.init keywords
    that go with it; call again after importing Ray libraries (Data, Serve) that add console handlers."""
    import ray.data  # noqa: F401 -- sets up its console logging on import; rerouted below

    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = next((h for h in logging.getLogger("ray").handlers
                    if isinstance(h, logging.FileHandler) and h.baseFilename == str(log_file.resolve())), None)
    if handler is None:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    names = ["ray"] + [n for n in logging.Logger.manager.loggerDict if n.startswith("ray.")]
    for name in names:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if type(h) is not logging.FileHandler
                    and isinstance(h, logging.StreamHandler)]:
            logger.removeHandler(old)
        if name == "ray" or (logger.handlers and not logger.propagate):
            if handler not in logger.handlers:
                logger.addHandler(handler)
    ray.data.DataContext.get_current().enable_progress_bars = False  # xdr prints its own progress
    _cluster_messages_to(log_file)
    return {"log_to_driver": False, "logging_level": logging.INFO}


def _cluster_messages_to(log_file: Path) -> None:
    """Ray prints the cluster's messages to the driver (a task retried, an actor killed while Serve shuts
    down) on its stdout, prefixed "(raylet)", whatever `log_to_driver` says: its error listener calls
    `ray._private.worker.print_to_stdstream`. A quiet run writes them to its log file instead. (No public
    setting does this; if Ray renames the function, the lines show again and nothing breaks.)"""
    from ray._private import worker

    def to_log_file(data: dict, ignore_prefix: bool = False) -> None:
        with open(log_file, "a", encoding="utf-8") as out:
            out.writelines(f"({data.get('pid')}) {line}\n" for line in data.get("lines", []))

    if hasattr(worker, "print_to_stdstream"):
        worker.print_to_stdstream = to_log_file


def ray_log_note(log_file: Path | None) -> str:
    """The summary line that says where Ray's logs went (empty when they were shown)."""
    if log_file is None:
        return ""
    session = workers_logs()
    return f"Ray's logs: {log_file}{'; ' + session if session else ''} (--verbose shows them here)"


def workers_logs() -> str:
    """Where the Ray workers of this session write their logs."""
    if not ray.is_initialized():
        return ""
    from ray._private.worker import global_worker

    return f"workers' logs: {global_worker.node.get_logs_dir_path()}"


def _started_cluster_address() -> str:
    """The cluster `ray start` last ran on this machine if it still answers, else "local". Ray itself would
    try a stopped cluster's stale address (its file outlives a killed head) and hang."""
    import socket

    from ray._private.utils import read_ray_address

    found = read_ray_address(None)
    if found:
        host, _, port = found.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return found
        except (OSError, ValueError):
            log.info("the Ray cluster last started on this machine (%s) does not answer; starting a local Ray",
                     found)
    return "local"


def connect_ray(address: str | None = None, *, log_file: Path | None = None, **init_options) -> None:
    """Join the cluster a `ray job submit` runs in (RAY_ADDRESS), or start a local Ray. With a log file,
    Ray's own lines go there instead of the terminal (see quiet_ray_logs)."""
    if ray.is_initialized():
        return
    kwargs = quiet_ray_logs(log_file) if log_file else {"logging_level": logging.WARNING}
    ray.init(address=address or os.environ.get("RAY_ADDRESS") or _started_cluster_address(), **kwargs,
             **init_options)
    if log_file:
        quiet_ray_logs(log_file)
    log.info("Ray resources: %s", ray.cluster_resources())


def start_local_ray(num_cpus: int | None = 2, *, log_file: Path | None = None, logging_level: str = "WARNING",
                    **init_options) -> None:
    """A fresh local Ray for the demo, benchmarks and tests: address "local" (never a stale cluster's), no
    dashboard; Ray's own log lines to `log_file` when given (quiet_ray_logs), else at `logging_level`."""
    options = quiet_ray_logs(log_file) if log_file else {"logging_level": logging_level}
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **options, **init_options)


STALL_S = 600.0  # no task finished for this long: say so (a first task can take minutes on a cold GPU node)


def as_finished(refs, label: str, stall_s: float = STALL_S):
    """Yields each object reference as its task finishes; when none finishes for `stall_s` seconds, says so
    on the driver and names the workers' logs (xdr.progress.StallWatch)."""
    from xdr.progress import StallWatch

    pending = list(refs)
    with StallWatch(label, stall_s, log.warning, hint=workers_logs()) as watch:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            watch.touch()
            yield done[0]


def session_processes(sid: int) -> list:
    """The live processes of a session (a process started with start_new_session=True and everything under it
    that did not start a session of its own), as psutil processes."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def gpus_per_actor(configured: float | None) -> float:
    """The configured value, else 1 if the cluster has GPUs now, else 0 (CPU inference)."""
    if configured is not None:
        return configured
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def run_preflight(config, args: argparse.Namespace) -> bool:
    """The job's checks (xdr.preflight) before any Ray work: one line and exit 2 on a problem. True when
    only the checks were asked for (--check)."""
    from xdr.preflight import PreflightError, preflight

    started = time.perf_counter()
    try:
        preflight(config)
    except PreflightError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if args.check:
        print(f"preflight passed in {time.perf_counter() - started:.1f}s: models, inputs, outputs and storage "
              "are reachable", flush=True)
    return args.check


_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$")


def root_cause(err: BaseException) -> str:
    """What a worker raised, as `Type: message`, out of Ray's wrappers. RayTaskError and Ray Data's
    errors chain the original (`.cause`, `__cause__`); an actor that died in `__init__` keeps only the
    text of the remote traceback, whose last `Type: message` line is the original."""
    seen: set[int] = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "cause", None)
        inner = inner if isinstance(inner, BaseException) else err.__cause__
        if inner is None or not str(inner).strip():  # an empty wrapper (Ray Data's SystemException) says nothing
            break
        err = inner
    text = str(err).strip()
    raised = [m for line in text.splitlines() if (m := _RAISED.match(line.strip()))]
    if raised and len(text.splitlines()) > 1:  # a remote traceback: its last exception line
        return f"{raised[-1].group(1).rsplit('.', 1)[-1]}: {raised[-1].group(2)}"
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


_signals_received: list[str] = []


def stop_on_sigterm() -> None:
    """SIGTERM stops the job like Ctrl-C: the `finally` blocks run and the Ray this driver started stops.
    Install it after ray.init, which sets a handler of its own that only logs and dies."""
    def stop(signum, _frame):
        _signals_received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)


def stopped_by(interrupt: KeyboardInterrupt) -> str:
    """The signal that stopped the job: Ray re-raises a bare KeyboardInterrupt after cancelling its work."""
    return _signals_received[-1] if _signals_received else str(interrupt) or "SIGINT"


def fail(err: Exception, log_file: Path | None) -> None:
    """A job's failure as one line on stderr (the root cause) and exit status 1; the traceback goes to the
    log file, or above the line when Ray's logs are shown."""
    if log_file:
        with open(log_file, "a", encoding="utf-8") as out:
            traceback.print_exception(err, file=out)
    else:
        traceback.print_exception(err)
    where = f"(full traceback in {log_file or 'the output above'})"
    if _node_died.is_set():  # the watch said it already
        print(where, file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    cause = root_cause(err)
    if ray_is_down():
        cause = f"{NODE_DIED} ({cause})"
    print(f"error: {cause}\n{where}", file=sys.stderr, flush=True)
    raise SystemExit(1) from None


RESUME_HINT = "rerun the same command to resume"
NODE_DIED = f"the Ray node under this job died; start Ray again (or let a local one start) and {RESUME_HINT}"
_node_died = threading.Event()


# A process that outlives the driver: it reads until the driver's end of the pipe closes. The driver writes
# "done" when it ends by its own code; anything else (Ray's core worker ending it from C++) followed by the
# node's raylet exiting means the node died under the job, and this process says so on the job's stderr.
# The core worker ends the driver as soon as the raylet lets go of it, which can be seconds before the
# raylet's own exit (seen in CI: 12 s of object recovery, then the driver gone with the raylet still up), so
# the raylet is given `grace_s` to exit. A driver that dies with its raylet still running says nothing here.
_LAST_WORD = """
import os, sys, time
said = sys.stdin.buffer.read()
raylet, message, grace_s = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
if said != b"done":
    deadline = time.monotonic() + grace_s
    while alive(raylet) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not alive(raylet):
        print("error: " + message, file=sys.stderr, flush=True)
"""
RAYLET_EXIT_GRACE_S = 60.0


def start_last_word(raylet_pid: int, grace_s: float = RAYLET_EXIT_GRACE_S):
    """The process that says NODE_DIED on stderr if this driver ends without writing "done" to its stdin
    and the raylet `raylet_pid` exits within `grace_s` of that."""
    import subprocess

    return subprocess.Popen([sys.executable, "-c", _LAST_WORD, str(raylet_pid), NODE_DIED, str(grace_s)],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)


class LocalNodeWatch:
    """Watches the raylet of the local Ray this driver started. When that node dies (its raylet, or an agent
    the raylet shares its fate with, was killed), Ray's core worker ends the driver from C++ within a second,
    with exit status 1 and no message. A thread notices when it can, says why and stops the job's main thread;
    when the core worker is faster, a small process that outlives the driver says it instead."""

    def __init__(self, interval_s: float = 0.1):
        from ray._private import ray_constants, worker

        node = worker._global_node
        started = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET) if node else None
        self.raylet = started[0].process if started else None
        self.interval_s, self._stop = interval_s, threading.Event()
        self.last_word = None
        if self.raylet is not None:
            self.last_word = start_last_word(self.raylet.pid)
            threading.Thread(target=self._watch, args=(self.raylet,), daemon=True, name="xdr-node-watch").start()

    def _watch(self, raylet) -> None:
        import _thread

        while not self._stop.wait(self.interval_s):
            if raylet.poll() is not None:
                _node_died.set()
                self._say_done()
                print(f"error: {NODE_DIED} (its raylet exited)", file=sys.stderr, flush=True)
                _thread.interrupt_main()
                return

    def _say_done(self) -> None:
        if self.last_word is not None and self.last_word.stdin and not self.last_word.stdin.closed:
            try:
                self.last_word.stdin.write(b"done")
                self.last_word.stdin.close()
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self._say_done()
        if self.last_word is not None:
            self.last_word.wait(timeout=5)


def ray_is_down() -> bool:
    """True when this driver was connected to Ray and its node died (or the cluster no longer answers)."""
    if not ray.is_initialized():
        return False
    alive: list[bool] = []

    def ask() -> None:
        own = ray.get_runtime_context().get_node_id()
        alive.append(any(n["NodeID"] == own and n["Alive"] for n in ray.nodes()))

    probe = threading.Thread(target=ask, daemon=True)
    probe.start()
    probe.join(timeout=10)
    return not (alive and alive[0])


@contextmanager
def job_session(command: str, *, verbose: bool = False, address: str | None = None, uses_ray: bool = True,
                stop_hint: str = RESUME_HINT, **init_options) -> Iterator[Path | None]:
    """The lifecycle every command shares, around its work: Ray's own log lines to a file unless `verbose`
    (yields that file, or None), Ray joined or started (`uses_ray`), SIGTERM handled like Ctrl-C (exit 130
    and `stop_hint`), any failure as one line on stderr and exit 1 (the Ray node's death said as such), and a
    local Ray this command started stopped at the end. A caller's Ray (tests, notebooks) is left running."""
    log_file = None if verbose else ray_log_file(command)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    ours = not ray.is_initialized()
    watch = None
    _node_died.clear()  # of an earlier command in this process
    try:
        if uses_ray:
            connect_ray(address, log_file=log_file, **init_options)
            watch = LocalNodeWatch() if ours and on_main_thread else None
        if on_main_thread:
            stop_on_sigterm()
        yield log_file
    except KeyboardInterrupt as stop:
        if _node_died.is_set():  # said by the watch
            raise SystemExit(1) from None
        print(f"stopped ({stopped_by(stop)}); {stop_hint}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except Exception as err:  # noqa: BLE001 -- every failure is reported the same way
        fail(err, log_file)
    finally:
        if watch is not None:
            watch.stop()
        if ours and ray.is_initialized():
            ray.shutdown()  # a local Ray this driver started stops with it; a cluster is only left
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def run_job(description: str, argv: list[str] | None, model_cls, job, summary, *, uses_ray: bool = True) -> dict:
    """The body of every batch job's main(): arguments and config, logging, the preflight checks, then the
    job in `job_session` and its summary."""
    setup_logging()
    args, config = parse_job_args(description, argv, model_cls)
    if run_preflight(config, args):
        return {}
    command = model_cls.__name__.removesuffix("Config").lower()
    with job_session(command, verbose=args.verbose, address=args.address, uses_ray=uses_ray) as log_file:
        manifest = job(config)
        note = ray_log_note(log_file)
    print(summary(manifest), flush=True)
    if note:
        print(note, flush=True)
    return manifest


def on_terminal() -> bool:
    """Progress as a bar only when a person watches a terminal (not in `ray job logs` or a CI log)."""
    return sys.stderr.isatty() and os.environ.get("CI") is None


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
