"""`dreamgen beat`: Celery beat with its schedule built from a schedules file (see dreamgen.distributed.schedules).

Run one beat only. Each entry sends `dreamgen.fire_schedule` to the light queue with the time beat sent it;
the worker that takes it submits the job for the fire time at or before then (once: see schedules.fire), so
the prompt files named in the schedules file must be readable by the light workers too.
"""
from __future__ import annotations

from celery.beat import BeatLazyFunc

from dreamgen.clock import utc_now

from .settings import FIRE_SCHEDULE_TASK, LIGHT_QUEUE

FIRE_EXPIRES_S = 3600  # a fire no worker took within the hour is dropped rather than run for the wrong time


def beat_schedule(schedules) -> dict:
    """Celery's beat_schedule for a list of dreamgen.distributed.schedules.Schedule."""
    return {s.name: {"task": FIRE_SCHEDULE_TASK, "schedule": s.crontab, "args": (s.to_dict(),),
                     "kwargs": {"sent_at": BeatLazyFunc(utc_now)},
                     "options": {"queue": LIGHT_QUEUE, "expires": FIRE_EXPIRES_S}}
            for s in schedules}


def run_beat(schedule_file: str, broker_url: str | None = None, state_file: str | None = None,
             loglevel: str = "INFO") -> None:
    """Check the schedules file whole, then run beat in this process until interrupted."""
    from dreamgen.distributed.broker import connect
    from dreamgen.distributed.schedules import load_schedules
    from dreamgen.settings import home

    from .app import app
    from .settings import celery_settings

    schedules = load_schedules(schedule_file)
    connect(broker_url)  # a clear error now rather than beat's retry loop
    if broker_url:
        app.conf.update(celery_settings(broker_url))
    app.conf.beat_schedule = beat_schedule(schedules)
    state = state_file or str(home() / "beat-schedule")
    home().mkdir(parents=True, exist_ok=True)
    app.Beat(schedule=state, loglevel=loglevel).run()
