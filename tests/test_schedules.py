"""Scheduled jobs: the schedules file is checked with clear errors, fire times are right, and a schedule fired
twice for one time (two beats, a restart) makes one job, through a real worker on a real Redis."""
from __future__ import annotations

import textwrap
import threading
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from dreamgen.cli import cli
from dreamgen.distributed.schedules import Schedule, load_schedules, next_fire_times, previous_fire_time
from dreamgen.errors import ScheduleFileError, ScheduleFileProblems
from tests.celery_support import Namespace, quick_prompts, wait_for_job, write_prompts


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def write_schedules(folder, text: str):
    path = folder / "schedules.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GOOD = """\
    schedules:
      - name: morning-notes
        cron: "30 6 * * 1-5"
        prompts: prompts.jsonl
        out: out/morning
        params: {steps: 2, max_new_tokens: 16}
        model: tiny-random
      - name: inline-notes
        cron: "*/15 * * * *"
        prompts:
          - A note about tides
          - {prompt: A note about lighthouses, seed: 3}
        out: s3://bucket/notes
        batch_size: 2
"""


@pytest.fixture
def schedules_file(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", quick_prompts(2))
    return write_schedules(tmp_path, GOOD)


# -------------------------------------------------------------------------------------------- the file
def test_a_good_file_loads(schedules_file, tmp_path):
    morning, inline = load_schedules(schedules_file)
    assert morning.name == "morning-notes" and morning.prompts == str(tmp_path / "prompts.jsonl")
    assert morning.out == str(tmp_path / "out" / "morning") and morning.params == {"steps": 2, "max_new_tokens": 16}
    assert inline.out == "s3://bucket/notes" and inline.batch_size == 2
    path = inline.prompt_file()
    assert path.read_text().splitlines() == ['{"prompt": "A note about tides"}',
                                             '{"prompt": "A note about lighthouses", "seed": 3}']
    assert inline.prompt_file() == path  # named by content: the same file every time


@pytest.mark.parametrize("entry, message", [
    ('name: a\n    cron: "0 6 * * *"\n    out: o', "schedule 'a': field 'prompts': is missing"),
    ('name: a\n    cron: "0 6 * *"\n    prompts: [x]\n    out: o',
     "schedule 'a': field 'cron': '0 6 * *' needs 5 fields (minute hour day-of-month month day-of-week), got 4"),
    ('name: a\n    cron: "61 6 * * *"\n    prompts: [x]\n    out: o', "schedule 'a': field 'cron': '61 6 * * *': "),
    ('name: a\n    cron: "0 6 * * *"\n    prompts: [x]\n    out: o\n    params: {stepz: 3}',
     "schedule 'a': field 'params.stepz': unknown parameter"),
    ('name: a\n    cron: "0 6 * * *"\n    prompts: [x]\n    out: o\n    params: {steps: 0}',
     "schedule 'a': field 'params.steps': steps=0: must be an integer in [1, 999]"),
    ('name: a\n    cron: "0 6 * * *"\n    prompts: ["fine", {prompt: "x", seed: -1}]\n    out: o',
     "schedule 'a': field 'prompts[1].seed': must be an integer in [0, 2^63), got -1"),
    ('name: a\n    cron: "0 6 * * *"\n    prompts: missing.jsonl\n    out: o', "schedule 'a': field 'prompts': "),
    ('name: "a b"\n    cron: "0 6 * * *"\n    prompts: [x]\n    out: o', "field 'name': 'a b' must be"),
    ('name: a\n    cron: "0 6 * * *"\n    prompts: [x]\n    out: o\n    colour: red', "field 'colour': unknown field"),
])
def test_a_bad_entry_names_file_entry_and_field(tmp_path, entry, message):
    path = write_schedules(tmp_path, "schedules:\n  - " + entry.replace("\n    ", "\n    ") + "\n")
    with pytest.raises(ScheduleFileError) as caught:
        load_schedules(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_file_level_problems(tmp_path):
    assert "file not found" in str(pytest.raises(ScheduleFileError, load_schedules, tmp_path / "none.yaml").value)
    bad = write_schedules(tmp_path, "schedules: [\n")
    assert "not valid YAML" in str(pytest.raises(ScheduleFileError, load_schedules, bad).value)
    bad = write_schedules(tmp_path, "jobs: []\n")
    assert "needs a top-level 'schedules:' list" in str(pytest.raises(ScheduleFileError, load_schedules, bad).value)
    twice = write_schedules(tmp_path, """\
        schedules:
          - {name: a, cron: "0 6 * * *", prompts: [x], out: o}
          - {name: a, cron: "0 7 * * *", prompts: [y], out: o}
    """)
    error = pytest.raises(ScheduleFileError, load_schedules, twice).value
    assert str(error) == f"{twice}: schedule 'a': field 'name': duplicate name: schedule #1 has it"


def test_a_hostile_file_is_an_error_not_a_stalled_scheduler(tmp_path):
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    cases = {"laughs.yaml": (laughs + "schedules: [*i]\n", "values"),
             "deep.yaml": ("schedules: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
             "long.yaml": ("schedules:\n  - {name: a, cron: '@daily', prompts: [x], out: " + "o" * 300_000 + "}\n",
                           "long")}
    for name, (text, reason) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        error = pytest.raises(ScheduleFileError, load_schedules, path).value
        assert str(error).startswith(f"{path}: not usable YAML") and reason in str(error), str(error)


def test_every_bad_schedule_is_reported_at_once(tmp_path):
    path = write_schedules(tmp_path, """\
        schedules:
          - {name: fine, cron: "@daily", prompts: [x], out: o}
          - {name: a, cron: "0 6 * *", prompts: [x], out: o}
          - {name: b, cron: "@reboot", prompts: [x], out: o}
          - {name: c, cron: "0 6 * * *", prompts: [x], out: o, params: {stepz: 3}}
          - {name: fine, cron: "0 7 * * *", prompts: [y], out: o}
    """)
    with pytest.raises(ScheduleFileProblems) as caught:
        load_schedules(path)
    assert str(caught.value).splitlines() == [
        f"{path}: 4 problems:",
        f"{path}: schedule 'a': field 'cron': '0 6 * *' needs 5 fields (minute hour day-of-month month "
        "day-of-week), got 4",
        f"{path}: schedule 'b': field 'cron': '@reboot' is not a time; use five fields (minute hour day-of-month "
        "month day-of-week) or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
        f"{path}: schedule 'c': field 'params.stepz': unknown parameter; known: seed, temperature, top_p, "
        "max_new_tokens, max_images, steps, guidance, scheduler, cache_interval, cache_until, guidance_until, "
        "image_size, negative_prompt, template, chat",
        f"{path}: schedule 'fine': field 'name': duplicate name: schedule #1 has it"]


def test_the_example_schedules_file_is_valid():
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "schedules.yaml"
    assert [s.name for s in load_schedules(example)] == ["morning-shapes", "nightly-notes", "first-and-mondays"]


# -------------------------------------------------------------------------------------------- fire times
def test_fire_times():
    weekdays = Schedule(name="s", cron="30 6 * * 1-5", prompts=[], out="o")
    friday_noon = utc(2026, 11, 27, 12, 0)  # a Friday
    assert previous_fire_time(weekdays, friday_noon) == utc(2026, 11, 27, 6, 30)
    assert previous_fire_time(weekdays, utc(2026, 11, 27, 6, 30, 59)) == utc(2026, 11, 27, 6, 30)
    assert previous_fire_time(weekdays, utc(2026, 11, 30, 6, 0)) == utc(2026, 11, 27, 6, 30)  # Monday, before
    assert next_fire_times(weekdays, 3, friday_noon) == [utc(2026, 11, 30, 6, 30), utc(2026, 12, 1, 6, 30),
                                                         utc(2026, 12, 2, 6, 30)]
    quarter = Schedule(name="q", cron="*/15 * * * *", prompts=[], out="o")
    assert next_fire_times(quarter, 2, utc(2026, 12, 31, 23, 50)) == [utc(2027, 1, 1, 0, 0), utc(2027, 1, 1, 0, 15)]
    assert weekdays.job_id(utc(2026, 11, 27, 6, 30)) == "s-20261127-0630"


@pytest.mark.parametrize("alias, expected", [
    ("@hourly", [utc(2026, 11, 27, 13, 0), utc(2026, 11, 27, 14, 0)]),
    ("@daily", [utc(2026, 11, 28, 0, 0), utc(2026, 11, 29, 0, 0)]),
    ("@midnight", [utc(2026, 11, 28, 0, 0), utc(2026, 11, 29, 0, 0)]),
    ("@weekly", [utc(2026, 11, 29, 0, 0), utc(2026, 12, 6, 0, 0)]),  # Sundays
    ("@monthly", [utc(2026, 12, 1, 0, 0), utc(2027, 1, 1, 0, 0)]),
    ("@yearly", [utc(2027, 1, 1, 0, 0), utc(2028, 1, 1, 0, 0)]),
    ("@annually", [utc(2027, 1, 1, 0, 0), utc(2028, 1, 1, 0, 0)]),
])
def test_cron_aliases(alias, expected):
    schedule = Schedule(name="s", cron=alias, prompts=[], out="o")
    assert next_fire_times(schedule, 2, utc(2026, 11, 27, 12, 0)) == expected  # a Friday noon


def test_day_of_month_and_day_of_week_both_set_mean_either_as_in_cron():
    either = Schedule(name="s", cron="0 6 1 * mon", prompts=[], out="o")  # the 1st, and every Monday
    assert next_fire_times(either, 4, utc(2026, 11, 27, 12, 0)) == [
        utc(2026, 11, 30, 6, 0), utc(2026, 12, 1, 6, 0), utc(2026, 12, 7, 6, 0), utc(2026, 12, 14, 6, 0)]
    assert previous_fire_time(either, utc(2026, 12, 3, 0, 0)) == utc(2026, 12, 1, 6, 0)  # a Tuesday, the 1st
    only_days = Schedule(name="d", cron="0 6 1,15 * *", prompts=[], out="o")  # one field is '*': the other decides
    assert next_fire_times(only_days, 2, utc(2026, 11, 27)) == [utc(2026, 12, 1, 6, 0), utc(2026, 12, 15, 6, 0)]
    stepped = Schedule(name="t", cron="0 6 */10 * 1", prompts=[], out="o")  # '*/10' starts with '*': both
    assert next_fire_times(stepped, 1, utc(2026, 11, 1)) == [utc(2026, 12, 21, 6, 0)]  # a Monday and the 21st
    sundays = Schedule(name="u", cron="0 6 * * 7", prompts=[], out="o")  # cron's other name for Sunday
    assert next_fire_times(sundays, 1, utc(2026, 11, 27)) == [utc(2026, 11, 29, 6, 0)]
    weekend = Schedule(name="w", cron="0 6 * * 6-7", prompts=[], out="o")
    assert next_fire_times(weekend, 2, utc(2026, 11, 27)) == [utc(2026, 11, 28, 6, 0), utc(2026, 11, 29, 6, 0)]


def test_beat_fires_by_the_same_rule(schedules_file):
    """Celery beat's own entry logic, over the schedule dreamgen gives it (Celery's crontab alone would wait for a
    Monday that is also the 1st)."""
    import pickle

    from celery.beat import ScheduleEntry

    from dreamgen.workers.app import app

    tab = Schedule(name="s", cron="0 6 1 * mon", prompts=[], out="o").crontab
    now = [utc(2026, 11, 30, 6, 0, 20)]  # Monday 30 November, 20 s after the fire time
    tab.nowfun = lambda: now[0]
    entry = ScheduleEntry(name="s", task="dreamgen.fire_schedule", schedule=tab, app=app,
                          last_run_at=utc(2026, 11, 29, 6, 0))
    due, next_in = entry.is_due()
    assert due and next_in == pytest.approx((utc(2026, 12, 1, 6, 0) - now[0]).total_seconds())
    entry = entry._next_instance(last_run_at=now[0])
    now[0] = utc(2026, 11, 30, 23, 0)
    assert entry.is_due() == (False, 7 * 3600)  # next: Tuesday the 1st, 06:00
    copy = pickle.loads(pickle.dumps(tab))  # beat keeps its schedule in a shelve file
    assert type(copy) is type(tab) and copy.either_day and copy.day_of_month == {1}


def test_schedule_list_command(schedules_file):
    result = CliRunner().invoke(cli, ["schedule", "list", str(schedules_file), "--count", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("morning-notes  '30 6 * * 1-5'  ") and lines[0].endswith("/out/morning")
    assert lines[1].startswith("  next: ") and lines[1].count("Z") == 2
    assert lines[2] == "inline-notes  '*/15 * * * *'  2 inline prompts -> s3://bucket/notes"


def test_beat_rejects_a_bad_file_before_starting(tmp_path):
    bad = write_schedules(tmp_path, "schedules:\n  - {name: a, cron: nope, prompts: [x], out: o}\n")
    result = CliRunner().invoke(cli, ["beat", "--schedule", str(bad)])
    assert result.exit_code == 1
    assert result.output == f"Error: {bad}: schedule 'a': field 'cron': 'nope' needs 5 fields " \
                            "(minute hour day-of-month month day-of-week), got 1\n"


def test_beat_schedule_from_the_file(schedules_file):
    from celery.schedules import crontab

    from dreamgen.workers.beat import beat_schedule

    entries = beat_schedule(load_schedules(schedules_file))
    assert set(entries) == {"morning-notes", "inline-notes"}
    entry = entries["morning-notes"]
    assert entry["task"] == "dreamgen.fire_schedule" and entry["options"]["queue"] == "dreamgen.light"
    assert isinstance(entry["schedule"], crontab) and entry["schedule"].hour == {6}
    assert Schedule.from_dict(entry["args"][0]).name == "morning-notes"


# -------------------------------------------------------------------------------------------- firing
@pytest.mark.integration
@pytest.mark.slow
def test_a_schedule_fired_twice_makes_one_job(tmp_path, dreamgen_home, installed_tiny):
    """Twice through the light queue of a real worker, and twice at once in this process."""
    from dreamgen.distributed.records import RecentJobs
    from dreamgen.distributed.schedules import fire
    from dreamgen.workers.app import client_app
    from dreamgen.workers.dispatch import send_chunks

    with Namespace(tmp_path, dreamgen_home) as ns:
        write_prompts(tmp_path / "prompts.jsonl", quick_prompts(2))
        morning, _ = load_schedules(write_schedules(tmp_path, GOOD))
        ns.worker("w1")
        sent_at = "2026-11-27T06:30:02+00:00"
        for _ in range(2):
            client_app().send_task("dreamgen.fire_schedule", args=(morning.to_dict(),), kwargs={"sent_at": sent_at},
                                   queue="dreamgen.light")
        report = wait_for_job("morning-notes-20261127-0630")
        assert (report.status, report.done) == ("finished", 2)
        worker_log = ns.workers["w1"].text()
        assert worker_log.count("succeeded") >= 2 and "already fired" in worker_log

        answers = []
        threads = [threading.Thread(target=lambda: answers.append(fire(morning, send_chunks,
                                                                        utc(2026, 11, 30, 6, 45))))
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answers, key=str) == [None, "morning-notes-20261130-0630"]
        ids = [d["id"] for d in RecentJobs(ns.redis).newest(10)]
        assert sorted(ids) == ["morning-notes-20261127-0630", "morning-notes-20261130-0630"]
        wait_for_job("morning-notes-20261130-0630")
