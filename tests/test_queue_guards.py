"""Issue 33, workers shared by many jobs, against a real Redis (and a real worker where one runs): two submits of
one job id at once queue one round; a schedule does not pile up jobs while its previous one is under way; a job
whose queue nobody consumes says so."""
from __future__ import annotations

import threading

import pytest

from tests.celery_support import MODEL, Namespace, quick_prompts, write_prompts

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ns(tmp_path_factory, dreamgen_home, installed_tiny):
    with Namespace(tmp_path_factory.mktemp("guards"), dreamgen_home) as namespace:
        yield namespace


def _at_once(calls: list) -> list:
    """Run the calls in threads released together; each one's result, or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    answers = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        try:
            answers[index] = call()
        except Exception as e:  # the answer under test
            answers[index] = e

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def test_two_submits_of_one_job_id_at_once_queue_one_round(ns, tmp_path):
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import submit_job
    from dreamgen.errors import JobStateError
    from dreamgen.jobs.spec import JobConfig
    from workers.dispatch import send_chunks

    # No worker consumes: every chunk message either submit sent stays on the queue, to be counted.
    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(16))
    for attempt in range(3):
        job_id = f"twice-{attempt}"
        before = ns.queue_length()
        answers = _at_once([lambda: submit_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"),
                                                         job_id=job_id, model=MODEL, batch_size=4), send_chunks)
                            for _ in range(2)])
        accepted = [a for a in answers if a == job_id]
        refused = [a for a in answers if isinstance(a, JobStateError)]
        assert (len(accepted), len(refused)) == (1, 1), answers
        assert str(refused[0]) == (f"job {job_id} is queued; wait for it to end, or cancel it, "
                                   "before you submit it again")
        assert ns.queue_length() - before == 4  # 16 documents in chunks of 4, once
        record = JobRecord(ns.redis, job_id).read()
        assert (record["round"], record["queued"], record["chunks"]) == ("1", "16", "4")
