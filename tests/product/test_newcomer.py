"""A newcomer's path, as the docs write it: the demo, then the serving guide's build, serve and search
commands, run word for word (from the guide itself) in a fresh folder, each in its own process with its own
Ray."""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.jobs import processes_left
from tests.support.paths import REPO

XDR = str(Path(sys.executable).parent / "xdr")


def doc_commands(doc: str, section: str) -> list[list[str]]:
    """The commands of the first bash block under a heading of a doc, comments dropped."""
    text = (REPO / doc).read_text(encoding="utf-8")
    block = re.search(rf"## {re.escape(section)}\n+```bash\n(.*?)```", text, re.S)
    assert block, f"{doc} has no bash block under '## {section}'"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _run(argv: list[str], cwd: Path, env: dict, timeout: int = 300) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.mark.slow
def test_the_demo_and_the_serving_guides_commands_work_as_written(tmp_path):
    if not _port_free(8000):
        pytest.skip("port 8000, which the serving guide's commands use, is taken on this machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(XDR_LOG_DIR=str(tmp_path / "logs"), PYTHONUNBUFFERED="1")

    demo = _run([XDR, "demo"], tmp_path, env, timeout=600)  # what scripts/demo.sh runs after the set-up
    assert "demo-024  Penicillin" in demo and "Ray's logs:" in demo
    # quiet by default: Ray's controller, proxy and replica lines are in the log file, not on the terminal
    for noise in ("Removing 1 replica", "CALL search", "logging_progress", "Writing model shards", "(raylet)",
                  "graceful_shutdown"):
        assert noise not in demo, noise
    assert len(demo.splitlines()) < 80, demo

    build, serve_cmd, search = doc_commands("docs/guides/serving.md", "The index and the endpoint")
    assert build[0] == serve_cmd[0] == search[0] == "xdr" and "--index=demo-output/run/index" in serve_cmd
    out = _run([XDR, *build[1:]], tmp_path, env)  # a rerun of the demo's build: resumes, same settings
    assert "shards: 2" in out

    server = subprocess.Popen([XDR, *serve_cmd[1:]], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                break
            lines.append(line)
            if line.startswith("serving "):
                break
        assert lines and lines[-1].startswith("serving "), "".join(lines)
        answer = _run([XDR, *search[1:]], tmp_path, env, timeout=120)
        first = answer.splitlines()[1]
        assert answer.startswith("? Wer hat das Penicillin entdeckt?") and "demo-024  Penicillin" in first, answer
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C, as the guide says
        stopped = time.monotonic()
        try:
            server.wait(timeout=90)
            assert time.monotonic() - stopped < 15
            assert not processes_left(server.pid), "Ray processes of the stopped endpoint survive"
        finally:
            try:
                os.killpg(server.pid, signal.SIGKILL)  # whatever Ray processes outlived it
            except ProcessLookupError:
                pass
            server.wait()
    assert server.returncode == 0, server.stdout.read()[-3000:]
