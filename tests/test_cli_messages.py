"""What the commands say: help for every option, progress that fits an 80-column terminal, log lines without
source locations."""
from __future__ import annotations

import io
import json

import click
from click.testing import CliRunner
from rich.console import Console

from dreamgen.cli import cli
from dreamgen.jobs.progress import DocumentProgress, JobProgress


def commands(group: click.Group, path=()):
    for name, command in group.commands.items():
        yield path + (name,), command
        if isinstance(command, click.Group):
            yield from commands(command, path + (name,))


def test_every_option_of_every_command_has_help_text():
    missing = [f"dreamgen {' '.join(path)} {param.opts[0]}" for path, command in commands(cli)
               for param in command.params
               if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert missing == []
    for path, command in commands(cli):  # and every command a help page with an example
        if not isinstance(command, click.Group):
            assert "Example" in (command.help or ""), path


def rendered(progress: DocumentProgress, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True, color_system=None).print(
        progress.progress.make_tasks_table(progress.progress.tasks))
    return out.getvalue().splitlines()


def test_the_progress_bar_fits_an_80_column_terminal():
    quiet = Console(file=io.StringIO(), width=80)
    run = JobProgress(quiet)
    run.event("start", {"job_id": "job-20261128-101500-3fa9c1", "total": 100000, "skipped": 12345})
    for _ in range(4321):
        run.event("image", {})
    run.event("document", {"id": "d", "images": 2})
    for width in (80, 120):
        lines = rendered(run, width)
        assert len(lines) == 1 and len(lines[0]) <= width and "…" not in lines[0], lines
        assert "12346/100000 docs · 4321 images" in lines[0] and "ETA" in lines[0]
    watch = DocumentProgress(quiet)
    watch.start("job x", 100000, 99999, note="1234 failed · running")
    lines = rendered(watch, 80)
    assert len(lines) == 1 and len(lines[0]) <= 80 and "…" not in lines[0], lines


def test_run_logs_without_source_locations(tmp_path, installed_tiny):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "a walk"}) + "\n")
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "out"), "--model", "tiny-random",
                                      "--steps", "1", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    logged = [line for line in result.output.splitlines() if "loading model" in line or "job a" in line]
    assert any("loading model tiny-random" in line for line in logged), result.output
    assert not [line for line in result.output.splitlines() if ".py:" in line], result.output


def test_eval_shows_progress_on_stderr_and_keeps_json_clean(installed_tiny):
    result = CliRunner().invoke(cli, ["eval", "--model", "tiny-random", "-n", "2", "--steps", "1",
                                      "--max-new-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["summary"]["ablation"] == "none"
    assert "eval tiny-random, combos, ablation none: 2 prompts" in result.stderr
    assert "eval tiny-random, phrasings, ablation none: 2 prompts" in result.stderr
    assert "2/2 docs" in result.stderr


def test_a_run_to_s3_prints_a_link_that_opens_or_says_why_not(tmp_path, installed_tiny, s3_endpoint, s3_bucket):
    """A bucket is usually private: its objects' plain URLs answer 403. A self-contained job gets a presigned link
    to its index (pictures inside the page); any other says why it has none (issue 34)."""
    import urllib.request

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "a red circle", "max_new_tokens": 8}) + "\n")
    common = [str(prompts), "--model", "tiny-random", "--steps", "2", "--s3-endpoint-url", s3_endpoint]
    result = CliRunner().invoke(cli, ["run", *common, "--out", f"s3://{s3_bucket}/jobs", "--job-id", "j1",
                                      "--self-contained"])
    assert result.exit_code == 0, result.output
    link = next(line for line in result.output.splitlines() if line.startswith("Open: "))[len("Open: "):]
    assert link.startswith(f"{s3_endpoint}/{s3_bucket}/jobs/j1/index.html?") and "X-Amz-Signature=" in link
    assert "  (presigned: opens without credentials for 7 days; the document pages it links to need access to the " \
           "bucket)" in result.output.splitlines()
    with urllib.request.urlopen(link) as page:  # what a browser gets: the index page, whole
        html = page.read().decode()
    assert html.startswith("<!doctype html>") and '<a href="a/index.html">a red circle</a>' in html

    result = CliRunner().invoke(cli, ["run", *common, "--out", f"s3://{s3_bucket}/jobs", "--job-id", "j2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    opened = lines.index(f"Open: {s3_endpoint}/{s3_bucket}/jobs/j2/index.html")
    assert "answers this link with 403" in lines[opened + 1] and "--self-contained" in lines[opened + 1]

    result = CliRunner().invoke(cli, ["run", *common, "--out", str(tmp_path / "out"), "--job-id", "j3"])
    assert result.output.splitlines()[-1] == f"Open: {(tmp_path / 'out' / 'j3' / 'index.html').as_uri()}"
