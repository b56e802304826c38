"""One `dreamgen run` of a job at a time (issue 33): two runs on the same --out and job id both generated every
document; after kill -9, job.json and `status` said "running" forever. Now the job holds a lock (pid, host,
heartbeat): a second run is refused, naming the live one, and a stale lock shows the job as stopped, with the
command that resumes it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreamgen.cli import cli
from dreamgen.errors import JobLocked
from dreamgen.jobs import lock as job_lock
from dreamgen.jobs.lock import JobLock, current_holder
from dreamgen.jobs.output import JobOutput
from dreamgen.jobs.storage import LocalStorage, open_storage

REDIS = "redis://127.0.0.1:6379/13"


def write_jsonl(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "prompt": f"topic number {i}", "seed": i}) + "\n"
                            for i in range(n)))
    return path


def manifest_ids(job_dir: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (job_dir / "manifest.jsonl").read_text().splitlines()]


def wait_for(condition, process, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before {what}: {process.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


def test_a_second_run_is_refused_and_a_killed_one_shows_stopped_then_resumes(tmp_path, installed_tiny):
    count = 30
    prompts = write_jsonl(tmp_path / "p.jsonl", count)
    dreamgen = Path(sys.executable).parent / "dreamgen"
    out = tmp_path / "out"
    first = subprocess.Popen([str(dreamgen), "run", str(prompts), "--out", str(out), "--job-id", "lk",
                              "--model", "tiny-random", "--steps", "12", "--max-new-tokens", "30", "--slots", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "COLUMNS": "120"})
    try:
        done = out / "lk" / "_done"
        wait_for(lambda: done.exists() and any(done.iterdir()), first, "a finished document")

        # the second run on the same folder and job id is refused before it loads a model, naming the first
        second = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(out), "--job-id", "lk",
                                          "--model", "tiny-random"])
        assert second.exit_code == 1, second.output
        assert (f"Error: job lk is already being run by pid {first.pid} on {socket.gethostname()} (started "
                in second.output) and "last heartbeat" in second.output
        resumed_too = CliRunner().invoke(cli, ["run", "--resume", "lk", "--out", str(out)])
        assert resumed_too.exit_code == 1 and f"pid {first.pid}" in resumed_too.output

        first.send_signal(signal.SIGKILL)  # no handler runs: job.json keeps saying "running"
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert json.loads((out / "lk" / "job.json").read_text())["status"] == "running"
    partial = len(list((out / "lk" / "_done").iterdir()))
    assert 1 <= partial < count

    status = CliRunner().invoke(cli, ["status", "lk", "--out", str(out), "--broker-url", REDIS])
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    assert lines[0] == "Job lk: stopped"
    assert f"pid {first.pid} on {socket.gethostname()} is gone (last heartbeat " in status.output
    assert "job.json still says running" in status.output
    assert lines[-1] == f"  resume with: dreamgen run --resume lk --out {out}"

    resumed = subprocess.run([str(dreamgen), "run", "--resume", "lk", "--out", str(out)], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ids = manifest_ids(out / "lk")
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(count)) and len(set(ids)) == count
    assert f"({partial} already done before)" in resumed.stdout
    assert not list((out / "lk" / "_lock").iterdir())  # released at the end
    after = CliRunner().invoke(cli, ["status", "lk", "--out", str(out), "--broker-url", REDIS])
    assert after.output.splitlines()[0] == "Job lk: finished"


def test_of_runs_that_start_together_exactly_one_gets_the_lock(tmp_path):
    output = JobOutput(LocalStorage(tmp_path), "race")
    locks = [JobLock(output) for _ in range(8)]
    won, refused = [], []
    start = threading.Barrier(len(locks))

    def take(lock):
        start.wait()
        try:
            won.append(lock.acquire())
        except JobLocked as e:
            refused.append(str(e))

    threads = [threading.Thread(target=take, args=(lock,)) for lock in locks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == 7, (won, refused)
    won[0].release()
    assert current_holder(output) is None


def test_a_holder_on_another_host_is_stale_once_its_heartbeat_stops(tmp_path, monkeypatch):
    output = JobOutput(LocalStorage(tmp_path), "far")
    entry = {"pid": 1, "host": "another-machine", "started": time.time() - 30, "heartbeat": time.time() - 5}
    output.storage.write_bytes("far/_lock/4.json", json.dumps(entry).encode())
    with pytest.raises(JobLocked, match=r"job far is already being run by pid 1 on another-machine"):
        JobLock(output).acquire()
    entry["heartbeat"] = time.time() - job_lock.STALE_S - 1
    output.storage.write_bytes("far/_lock/4.json", json.dumps(entry).encode())
    taken = JobLock(output).acquire()
    try:
        assert taken.number == 5 and current_holder(output)[1]["pid"] == os.getpid()
        assert output.storage.list("far/_lock/") == ["far/_lock/5.json"]  # the stale one removed
    finally:
        taken.release()


def test_a_holder_whose_lock_was_taken_over_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(job_lock, "HEARTBEAT_S", 0.05)
    output = JobOutput(LocalStorage(tmp_path), "over")
    held = JobLock(output).acquire()
    entry = {"pid": 1, "host": "another-machine", "started": time.time(), "heartbeat": time.time()}
    output.storage.create_once(f"over/_lock/{held.number + 1}.json", json.dumps(entry).encode())
    deadline = time.monotonic() + 10
    while not held.lost and time.monotonic() < deadline:
        time.sleep(0.05)
    held.release()
    assert held.lost
    assert output.storage.exists("over/_lock/2.json")  # the new holder's lock is left alone


def test_the_lock_of_a_job_on_s3_is_a_conditional_write(tmp_path, s3_endpoint, s3_bucket):
    output = JobOutput(open_storage(f"s3://{s3_bucket}/jobs", s3_endpoint), "s3job")
    first = JobLock(output).acquire()
    try:
        with pytest.raises(JobLocked, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
            JobLock(output).acquire()
    finally:
        first.release()
    again = JobLock(output).acquire()
    again.release()
