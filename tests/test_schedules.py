"""Scheduled jobs: the schedules file is checked with clear errors, fire times are right, and a schedule fired
twice for one time (two beats, a restart) makes one job, through a real worker on a real Redis."""
from __future__ import annotations

import textwrap
import threading
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from cli import cli
from dreamgen.distributed.schedules import Schedule, load_schedules, next_fire_times, previous_fire_time
from dreamgen.errors import ScheduleFileError
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

    from workers.beat import beat_schedule

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
    from workers.app import client_app
    from workers.dispatch import send_chunks

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
