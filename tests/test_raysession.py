"""The embedded Ray: every server it starts listens on loopback only."""
from __future__ import annotations

import ipaddress
import json
import shutil
import signal
import subprocess
import sys
import tempfile

from conftest import REPO, lth_env

_LISTENERS = r'''
import json, os, psutil, ray
from ray._raylet import AuthenticationMode, get_authentication_mode
from orchestrator.raysession import RayCluster

with RayCluster(None):
    token_auth = get_authentication_mode() == AuthenticationMode.TOKEN
    @ray.remote
    class Probe:
        def pid(self):
            return os.getpid()

    probe = Probe.remote()
    ray.get(probe.pid.remote())  # a worker is up: its server listens too
    found, blocked = [], {}
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                mask = int(next(ln for ln in f if ln.startswith("SigBlk:")).split()[1], 16)
            blocked[f"{proc.name()}-{proc.pid}"] = sorted(n + 1 for n in range(64) if mask >> n & 1)
            for c in proc.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.append([proc.name(), c.laddr.ip, c.laddr.port])
        except psutil.Error:
            pass
print(json.dumps({"listening": found, "token_auth": token_auth, "blocked": blocked}))
'''


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def test_embedded_ray_listens_on_loopback_only_with_token_auth_and_no_notice():
    """Also: no process of the embedded Ray blocks SIGTERM. The driver once blocked it while
    ray.init ran, and every server and worker inherited the mask: a preemption's SIGTERM did not
    stop them, and ray.shutdown waited a second for each before killing it (5 s per `lth run`)."""
    ray_tmp = tempfile.mkdtemp(prefix="lthr-", dir="/tmp")  # short: Ray's socket paths fit 107 bytes
    env = lth_env(LTH_RAY_TMPDIR=ray_tmp)
    env.pop("RAY_AUTH_MODE", None)  # Ray's default, under which it turns token auth on and says so
    try:
        proc = subprocess.run([sys.executable, "-c", _LISTENERS], cwd=REPO, capture_output=True, text=True,
                              timeout=240, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # token authentication stays on (other users of the machine can reach loopback); only the
    # notice that Ray printed on every run is gone
    assert result["token_auth"] is True
    assert "Token authentication" not in proc.stderr, proc.stderr[-3000:]
    listening = result["listening"]
    names = {name for name, _, _ in listening}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), listening
    exposed = [entry for entry in listening if not _is_loopback(entry[1])]
    assert exposed == [], f"listening beyond loopback: {exposed}"
    blocked = result["blocked"]
    assert any("raylet" in p for p in blocked) and any("gcs_server" in p for p in blocked), blocked
    assert {p: sigs for p, sigs in blocked.items() if signal.SIGTERM in sigs} == {}, blocked


def test_the_cli_leaves_its_callers_sigterm_handler(tmp_path):
    """`main()` called as a function (a notebook, a test runner) restores the SIGTERM handler it
    found: otherwise its caller could no longer be stopped by SIGTERM."""
    import signal

    from conftest import DEMO, tiny_args
    from orchestrator.cli import main

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        import os
        import socket

        from orchestrator.lock import _process_started
        from orchestrator.store import Store

        store = Store(str(tmp_path / "store"))  # the experiment is locked by a live driver: this one
        store.write_json("locks/demo.lock", {"host": socket.gethostname(), "pid": os.getpid(), "token": "t",
                                             "started": _process_started(os.getpid()), "beat": 0})
        assert main(["run", DEMO, "--store", store.root, *tiny_args("tracking.wandb=disabled")]) == 1
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_local_ray_that_does_not_start_is_tried_once_more_then_named_in_one_line(monkeypatch, tmp_path):
    """On a loaded machine Ray's servers can miss their start-up deadline (seen at load 15 on 2
    cores): the embedded start is tried a second time, and a second failure is one line for the
    user (RayStartError, which `lth run` prints and exits on), not Ray's traceback; each failed
    try leaves no session directory behind."""
    import pytest
    import ray

    from orchestrator import raysession

    calls = []

    def failing_init(**kwargs):
        calls.append(kwargs)
        raise RuntimeError("The current node timed out during startup.\nThis could happen because ...")

    monkeypatch.setenv("LTH_RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", failing_init)
    with pytest.raises(raysession.RayStartError) as info:
        with raysession.RayCluster(None):
            pass
    assert len(calls) == 2
    message = str(info.value)
    assert "\n" not in message and "did not start, twice" in message and "timed out during startup" in message
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(raysession.SESSION_PREFIX)]

    calls.clear()
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw) if len(calls) else failing_init(**kw))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with raysession.RayCluster(None):
        assert len(calls) == 2  # the second try started
