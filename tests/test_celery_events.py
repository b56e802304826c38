"""Task events as `celery events`, Flower and Prometheus exporters see them: a real worker (started with no -E
flag), a real job, and the real event consumers: Celery's event Receiver and the `celery events --dump` process."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
from click.testing import CliRunner

from dreamgen.cli import cli
from tests.celery_support import CELERY, ROOT, SLOW, Namespace, quick_prompts, wait_for_job, wait_until, write_prompts

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Events:
    """Every event on the broker's event exchange, captured by Celery's own Receiver in a thread."""

    def __init__(self):
        from dreamgen.workers.app import client_app

        self.app, self.seen, self.ready = client_app(), [], threading.Event()
        self.receiver = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "the event receiver did not start"

    def _run(self):
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.seen.append})
            self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, task_id: str) -> list[str]:
        return [e["type"] for e in self.seen if e.get("uuid") == task_id]

    def stop(self):
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(5)


def test_a_job_s_tasks_send_events_with_readable_ids(tmp_path, dreamgen_home, installed_tiny):
    with Namespace(tmp_path, dreamgen_home) as ns:
        ns.worker("w1")
        events = Events()
        dump_log = tmp_path / "events.log"
        with open(dump_log, "wb") as log:  # the command people run to watch a cluster
            dump = subprocess.Popen([str(CELERY), "-A", "dreamgen.workers.app", "events", "--dump"], cwd=ROOT,
                                    env={**os.environ, **ns.env}, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            time.sleep(2)  # `celery events` subscribes once its app is up
            prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(3))
            result = CliRunner().invoke(cli, ["submit", str(prompts), "--out", str(tmp_path / "out"), "-b", "2",
                                              "--job-id", "ev-1"])
            assert result.exit_code == 0, result.output
            assert wait_for_job("ev-1").status == "finished"

            def chunk_and_finalize_ids():
                ids = {e["uuid"] for e in events.seen if e["type"] == "task-succeeded"}
                return ids if len(ids) >= 3 else None

            task_ids = wait_until(chunk_and_finalize_ids, SLOW, what="three tasks to succeed")
            chunks = sorted(i for i in task_ids if i.startswith("ev-1.1."))
            finalize = [i for i in task_ids if i.startswith("ev-1.finalize.1.")]
            assert len(chunks) == 2 and len(finalize) == 1, task_ids  # job.round.index.token, job.finalize.round.token
            for task_id in chunks + finalize:
                kinds = events.of(task_id)
                for kind in ("task-sent", "task-received", "task-started", "task-succeeded"):
                    assert kind in kinds, (task_id, kinds)
            sent = next(e for e in events.seen if e["type"] == "task-sent" and e["uuid"] == finalize[0])
            assert sent["name"] == "dreamgen.finalize" and sent["args"] == "('ev-1', round 1)"

            def dumped():
                text = dump_log.read_text(errors="replace")
                return text if finalize[0] in text and all(c in text for c in chunks) else None

            text = wait_until(dumped, 30, what="celery events --dump to show the tasks")
            for chunk in chunks:
                assert f"task started: dreamgen.chunk({chunk})" in text
                assert f"task succeeded: dreamgen.chunk({chunk})" in text
            assert f"task succeeded: dreamgen.finalize({finalize[0]}) args=('ev-1', round 1)" in text
        finally:
            events.stop()
            os.killpg(dump.pid, signal.SIGTERM)
            dump.wait(10)
