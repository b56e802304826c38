"""Check-ins of a worker process for the queues it consumes (dreamgen.distributed.consumers): what lets `status`
and `submit --wait` say "no worker is consuming <queue>". Started when the worker is ready, in its main process
(for any pool: a prefork parent touches no model, only Redis), stopped when it shuts down."""
from __future__ import annotations

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

_running = []  # this process's CheckIns, if started


@worker_ready.connect
def start_check_ins(sender, **_):
    from dreamgen.distributed.broker import connect
    from dreamgen.distributed.consumers import CheckIns

    queues = sorted(sender.app.amqp.queues.consume_from)
    # An impatient client: a check-in that fails is simply retried at the next beat, and a shutdown with Redis down
    # must not wait out a patient client's retries.
    client = connect(check=False, patient=False)
    _running.append(CheckIns(client, sender.hostname, queues).start())


@worker_shutting_down.connect
def stop_checking_in(**_):
    for check_ins in _running:  # a signal handler: only set the flag; leaving talks to Redis, below
        check_ins.stop_soon()


@worker_shutdown.connect
def leave(**_):
    while _running:
        _running.pop().stop()
