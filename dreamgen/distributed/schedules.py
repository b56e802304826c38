"""Scheduled jobs: a schedules file, checked whole, and the firing of one schedule.

    schedules:
      - name: morning-news             # letters, digits, . _ -; names its jobs: morning-news-20261128-0600
        cron: "0 6 * * *"              # minute hour day-of-month month day-of-week, in UTC; or @daily ...
        prompts: news.jsonl            # a prompt file, relative to the schedules file ...
        out: s3://my-bucket/news       # where its jobs are written
        params: {template: news, steps: 30}   # defaults for every prompt, like the flags of `dreamgen run`
      - name: weekly-howto
        cron: "30 9 * * 1"
        prompts:                       # ... or the prompts themselves: text, or items like a .jsonl line
          - How to build a bird house
          - {prompt: How to fix a bicycle chain, seed: 3}
        out: out/weekly
        batch_size: 4                  # optional: batch_size, model, dtype, formats

Cron strings are read as cron reads them (see cron.py: @daily and the like; day-of-month and day-of-week both
given means either). Firing is idempotent per (schedule, fire time): the job id is made of both, and a SET NX in
Redis claims it, so a schedule fired twice for the same time (two beats, a restart) produces one job.

Backpressure (issue 33): a firing while the schedule's previous job is still queued, running or cancelling is
skipped, and logged; the next firing after that job ends submits as usual. A slow or unconsumed schedule so holds
one job on the queue, never one more per fire time.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from dreamgen.exporters import FORMATS, parse_formats

from .. import settings
from ..errors import ParamsError, PromptFileError, ScheduleFileError, ScheduleFileProblems
from ..ids import is_safe_id
from ..jobs.spec import JobConfig
from ..params import GenerationParams
from ..prompts.bounded_yaml import YAMLLimit, load_document
from ..prompts.files import validate_prompt_file
from ..prompts.readers import DEFAULT_FIELDS
from . import broker, cron
from .records import JobRecord, JobStatus, record_ttl
from .submit import ChunkSender, submit_job

log = logging.getLogger(__name__)

REQUIRED = ("name", "cron", "prompts", "out")
OPTIONAL = ("params", "batch_size", "model", "dtype", "formats")
NAME_MAX = 80  # leaves room for "-YYYYmmdd-HHMM" within a job id's 100 characters


@dataclass
class Schedule:
    name: str
    cron: str
    prompts: str | list  # an absolute prompt file path, or inline items
    out: str
    params: dict = field(default_factory=dict)
    batch_size: int = 8
    model: str = settings.DEFAULT_MODEL
    dtype: str = settings.DTYPE.default
    formats: tuple = FORMATS

    def __post_init__(self):
        self.formats = parse_formats(self.formats)

    def to_dict(self) -> dict:
        return {**asdict(self), "formats": list(self.formats)}

    @classmethod
    def from_dict(cls, data: dict) -> "Schedule":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def crontab(self) -> cron.CronSchedule:
        return cron.parse_cron(self.cron)

    def job_id(self, fire_time: datetime) -> str:
        return f"{self.name}-{fire_time:%Y%m%d-%H%M}"

    def prompt_file(self) -> Path:
        """The prompt file of its jobs; inline prompts are written once to a file named by their content
        (under $DREAMGEN_HOME/schedules), so a job's job.json points at a file that stays."""
        if isinstance(self.prompts, str):
            return Path(self.prompts)
        text = "".join(json.dumps({"prompt": p} if isinstance(p, str) else p, ensure_ascii=False, sort_keys=True)
                       + "\n" for p in self.prompts)
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        path = settings.home() / "schedules" / f"{self.name}-{digest}.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_suffix(".tmp")
            temp.write_text(text, encoding="utf-8")
            temp.replace(path)
        return path


# -------------------------------------------------------------------------------------------- loading
def load_schedules(path, check_prompts: bool = True) -> list[Schedule]:
    """Read and check a schedules file. A problem is a ScheduleFileError naming the file, the schedule and the
    field; problems of several schedules are one ScheduleFileProblems listing them all. With `check_prompts`,
    each schedule's prompts are validated whole too (as `dreamgen run` would)."""
    path = Path(path)
    try:
        data = load_document(path)  # the scheduler reads it on every tick: a hostile file must not stall it
    except FileNotFoundError:
        raise ScheduleFileError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScheduleFileError(path, None, f"cannot read it: {e}") from None
    except YAMLLimit as e:
        where = f" (line {e.line})" if e.line else ""
        raise ScheduleFileError(path, None, f"not usable YAML{where}: {e.reason}") from None
    except RecursionError:  # a last guard: BoundedLoader bounds the nesting well before this
        raise ScheduleFileError(path, None, "not usable YAML: nested too deeply") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ScheduleFileError(path, None, f"not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("schedules"), list):
        raise ScheduleFileError(path, None, "needs a top-level 'schedules:' list")
    if not data["schedules"]:
        raise ScheduleFileError(path, None, "the 'schedules' list is empty")
    unknown_top = sorted(set(data) - {"schedules"})
    if unknown_top:
        raise ScheduleFileError(path, None, f"unknown top-level key(s): {', '.join(map(str, unknown_top))}")
    # Every bad schedule is reported at once (its first problem), as prompt files report every bad line.
    schedules, seen, problems = [], {}, []
    for index, entry in enumerate(data["schedules"], start=1):
        try:
            schedule = _check_entry(path, index, entry, check_prompts)
            if schedule.name in seen:
                raise ScheduleFileError(path, f"'{schedule.name}'",
                                        f"duplicate name: schedule #{seen[schedule.name]} has it", field="name")
        except ScheduleFileError as e:
            problems.append(e)
            continue
        seen[schedule.name] = index
        schedules.append(schedule)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ScheduleFileProblems(problems)
    return schedules


def _check_entry(path: Path, index: int, entry, check_prompts: bool) -> Schedule:
    if not isinstance(entry, dict):
        raise ScheduleFileError(path, f"#{index}", "must be a mapping with name, cron, prompts and out")
    label = f"'{entry['name']}'" if isinstance(entry.get("name"), str) else f"#{index}"

    def fail(reason, field_name=None):
        raise ScheduleFileError(path, label, reason, field=field_name)

    for name in entry:
        if name not in REQUIRED + OPTIONAL:
            fail(f"unknown field; known: {', '.join(REQUIRED + OPTIONAL)}", str(name))
    for name in REQUIRED:
        if entry.get(name) in (None, "", []):
            fail("is missing", name)
    name = entry["name"]
    if not isinstance(name, str) or not is_safe_id(name) or len(name) > NAME_MAX:
        fail(f"{name!r} must be 1-{NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit",
             "name")
    cron_text = entry["cron"]
    if not isinstance(cron_text, str):
        fail(f"must be a cron string ({cron.FIELDS}, or @daily ...), got {cron_text!r}", "cron")
    try:
        cron.parse_cron(cron_text)
    except ValueError as e:
        fail(str(e), "cron")
    out = entry["out"]
    if not isinstance(out, str):
        fail(f"must be a folder or s3://bucket/prefix, got {out!r}", "out")
    if not out.startswith("s3://"):
        out = str((path.resolve().parent / out).resolve())
    params = entry.get("params") or {}
    _check_params(params, fail)
    batch_size = entry.get("batch_size", 8)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        fail(f"must be a positive integer, got {batch_size!r}", "batch_size")
    prompts = entry["prompts"]
    if isinstance(prompts, str):
        prompts = str((path.resolve().parent / prompts).resolve())
    elif not isinstance(prompts, list) or not all(isinstance(p, (str, dict)) for p in prompts):
        fail("must be a prompt file path, or a list of prompts (text, or mappings like a .jsonl line)", "prompts")
    try:
        schedule = Schedule(name=name, cron=cron_text, prompts=prompts, out=out, params=dict(params),
                            batch_size=batch_size, model=str(entry.get("model") or settings.DEFAULT_MODEL),
                            dtype=str(entry.get("dtype") or settings.DTYPE.default),
                            formats=entry.get("formats") or FORMATS)
    except ParamsError as e:
        fail(str(e), "formats")
    if check_prompts or isinstance(prompts, list):
        _check_prompts(schedule, fail)
    return schedule


def _check_params(params, fail) -> None:
    if not isinstance(params, dict):
        fail(f"must be a mapping of parameter: value, got {params!r}", "params")
    for key in params:
        if key not in DEFAULT_FIELDS:
            fail(f"unknown parameter; known: {', '.join(DEFAULT_FIELDS)}", f"params.{key}")
    try:
        GenerationParams(**params)
    except ParamsError as e:
        fail(str(e), f"params.{e.name}" if e.name else "params")


def _check_prompts(schedule: Schedule, fail) -> None:
    try:
        validate_prompt_file(schedule.prompt_file(), schedule.params, schedule.model)
    except PromptFileError as e:
        if isinstance(schedule.prompts, str):
            fail(str(e), "prompts")
        where = f"prompts[{e.line - 1}]" if e.line else "prompts"
        fail(e.reason, f"{where}.{e.field}" if e.field else where)
    except ParamsError as e:
        fail(str(e), "params")


# -------------------------------------------------------------------------------------------- fire times
def previous_fire_time(schedule: Schedule, now: datetime) -> datetime:
    """The latest fire time at or before `now` (UTC, whole minutes): the time a firing stands for, even when
    its task runs a little late."""
    try:
        return cron.previous_fire_time(schedule.crontab, now)
    except ValueError as e:
        raise ValueError(f"schedule {schedule.name}: {e}") from None


def next_fire_times(schedule: Schedule, count: int = 3, now: datetime | None = None) -> list[datetime]:
    """The next `count` fire times after `now` (UTC)."""
    return cron.next_fire_times(schedule.crontab, count, now or datetime.now(timezone.utc))


# -------------------------------------------------------------------------------------------- firing
class ScheduleFire:
    """Owns <prefix>:schedule:<name>:<YYYYmmddHHMM>: the claim of one fire time, holding its job id."""

    TTL_S = 7 * 24 * 3600

    def __init__(self, client, name: str, fire_time: datetime):
        self.client = client
        self.key = f"{broker.key_prefix()}:schedule:{name}:{fire_time:%Y%m%d%H%M}"

    def claim(self, job_id: str) -> bool:
        return bool(self.client.set(self.key, job_id, nx=True, ex=self.TTL_S))

    def release(self) -> None:
        self.client.delete(self.key)


class ScheduleLatest:
    """Owns <prefix>:schedule:<name>:latest: the schedule's latest job ({job, at}), to skip a firing while that
    job is under way. Taking it is one step (WATCH/MULTI), so two fire times fired at once (a backlog of fires
    after a light worker was down) submit one job, not two."""

    SUBMITTING_S = 600  # a latest job with no record yet is being submitted (a large file takes a while)

    def __init__(self, client, name: str):
        self.client = client
        self.key = f"{broker.key_prefix()}:schedule:{name}:latest"

    def take(self, job_id: str) -> str | None:
        """Make `job_id` the latest job, unless the latest is still under way: then its id, and nothing changed."""
        import redis

        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(self.key)
                    latest = json.loads(pipe.get(self.key) or "null")
                    if latest and self._under_way(pipe, latest):
                        pipe.unwatch()
                        return latest["job"]
                    pipe.multi()
                    pipe.set(self.key, json.dumps({"job": job_id, "at": time.time()}), ex=record_ttl())
                    pipe.execute()
                    return None
                except redis.WatchError:  # another firing took it meanwhile: look again
                    continue

    def give_back(self, job_id: str) -> None:
        """After a failed submit of `job_id`: nothing of the schedule is under way. (No other firing can have taken
        the key meanwhile: it saw this job as being submitted.)"""
        latest = json.loads(self.client.get(self.key) or "null")
        if latest and latest["job"] == job_id:
            self.client.delete(self.key)

    def _under_way(self, pipe, latest: dict) -> bool:
        status = pipe.hget(JobRecord(self.client, latest["job"]).key, "status")
        if status is None:  # not submitted yet (or its record expired long ago)
            return time.time() - float(latest.get("at") or 0) < self.SUBMITTING_S
        return not JobStatus(status).final


def fire(schedule: Schedule, send_chunks: ChunkSender, now: datetime | None = None,
         broker_url: str | None = None) -> str | None:
    """Submit the job of `schedule` for its latest fire time at or before `now`, through `send_chunks`. Returns
    its id, or None when that fire time already has its job, or is skipped because the schedule's previous job
    is still under way (queued, running or cancelling)."""
    when = previous_fire_time(schedule, now or datetime.now(timezone.utc))
    job_id = schedule.job_id(when)
    url = broker.broker_url(broker_url)
    client = broker.connect(url)
    claim = ScheduleFire(client, schedule.name, when)
    if not claim.claim(job_id):
        log.info("schedule %s: %s already fired (job %s)", schedule.name, f"{when:%Y-%m-%d %H:%M}", job_id)
        return None
    latest = ScheduleLatest(client, schedule.name)
    busy = latest.take(job_id)
    if busy:  # the fire time stays claimed: a skipped firing is not made up later
        status = JobRecord(client, busy).status
        log.warning("schedule %s: skipped the firing of %s: its previous job %s is still %s", schedule.name,
                    f"{when:%Y-%m-%d %H:%M}", busy, status.value if status else "being submitted")
        return None
    try:
        config = JobConfig(prompts=str(schedule.prompt_file()), out=schedule.out, job_id=job_id, model=schedule.model,
                           defaults=dict(schedule.params), batch_size=schedule.batch_size, formats=schedule.formats,
                           dtype=schedule.dtype)
        submit_job(config, send_chunks, url)
    except BaseException:  # let a later fire of the same time try again
        latest.give_back(job_id)
        claim.release()
        raise
    log.info("schedule %s: submitted job %s", schedule.name, job_id)
    return job_id
