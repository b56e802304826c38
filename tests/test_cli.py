"""The commands as a user meets them: exit codes and the exact lines they print."""
import json
from pathlib import Path

from click.testing import CliRunner

from dreamgen.cli import cli
from dreamgen.model.loader import load_model
from tests.helpers import tiny_model

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_every_command_has_help_with_an_example():
    for command in (["run"], ["generate"], ["export"], ["model", "init-tiny"], ["model", "inspect"]):
        result = invoke(*command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output, command


def test_model_init_tiny_writes_a_loadable_deterministic_checkpoint(tmp_path):
    result = invoke("model", "init-tiny", str(tmp_path / "a"))
    assert result.exit_code == 0
    assert result.output == f"Wrote a tiny DreamLLM to {tmp_path / 'a'}\n"
    invoke("model", "init-tiny", str(tmp_path / "b"), "--safetensors")
    a, b = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    for (key, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert x.equal(y), key  # same seed, same weights, whatever the file format
    # and the same weights as the built-in tiny-random model
    assert a.dream.dream_queries.equal(tiny_model().dream.dream_queries)


def test_model_init_tiny_writes_its_default_folder_which_git_ignores(tmp_path, monkeypatch):
    import shutil
    import subprocess
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    result = invoke("model", "init-tiny")
    assert result.exit_code == 0 and result.output == "Wrote a tiny DreamLLM to models/tiny\n"
    assert (tmp_path / "models" / "tiny" / "config.json").is_file()
    repo = Path(__file__).resolve().parent.parent
    if shutil.which("git") and (repo / ".git").exists():
        ignored = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", "models/tiny/config.json"])
        assert ignored.returncode == 0  # made in a checkout, it never shows up as a change


def test_model_inspect_prints_parts_shapes_and_token_ids(tmp_path):
    invoke("model", "init-tiny", str(tmp_path / "ck"))
    result = invoke("model", "inspect", str(tmp_path / "ck"))
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == f"Checkpoint {tmp_path / 'ck'}"
    assert "  LLM: vocab 32008, hidden 64, 2 layers, 4 heads, 1024 positions" in lines
    assert "      dream_queries (1, 8, 64)" in lines
    assert "    dream_embedding.bin: 1 tensors, 512 parameters, float32" in lines
    assert ("  special tokens: [PAD]=32000 <im_start>=32001 <dream_end>=32002 <dream_start>=32003 <im_patch>=32004 "
            "<im_end>=32005 <image>=32006 <dream>=32007") in lines
    # a model dreamgen builds keeps the defaults dreamgen painted and wrote with before checkpoints named them
    assert ("  defaults where a request names none: scheduler ddpm, steps 50, guidance 7.5, temperature 0.0, "
            "top_p 1.0, max_new_tokens 256, cache_interval 1, cache_until 1.0, guidance_until 1.0") in lines
    data = json.loads(invoke("model", "inspect", str(tmp_path / "ck"), "--json").output)
    assert data["parts"]["stable_diffusion_head"]["shapes"]["projector.projector.weight"] == [32, 64]
    assert data["defaults"] == {"scheduler": "ddpm", "steps": 50, "guidance": 7.5, "temperature": 0.0,
                                "top_p": 1.0, "max_new_tokens": 256, "cache_interval": 1,
                                "cache_until": 1.0, "guidance_until": 1.0}


def test_model_inspect_names_a_missing_part(tmp_path):
    invoke("model", "init-tiny", str(tmp_path / "ck"))
    (tmp_path / "ck" / "dream_embedding.bin").unlink()
    result = invoke("model", "inspect", str(tmp_path / "ck"))
    assert "    dream_embedding: MISSING (" in result.output


def test_generate_writes_one_document_folder_as_its_help_says(tmp_path, installed_tiny):
    out = tmp_path / "birdhouse"
    result = invoke("generate", "How to build a bird house", "--out", str(out), "--steps", "2",
                    "--max-new-tokens", "40", "--seed", "3")
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    doc_id = first.split(":")[0]
    doc = json.loads((out / "document.json").read_text())
    assert doc["id"] == doc_id and doc["job_id"] is None
    assert doc["prompt"] == "How to build a bird house" and doc["params"]["seed"] == 3
    images = [b for b in doc["blocks"] if b["type"] == "image"]
    words = len(''.join(b['text'] for b in doc['blocks'] if b['type'] == 'text').split())
    assert first == f"{doc_id}: {words} word{'' if words == 1 else 's'}, " \
                    f"{len(images)} image{'' if len(images) == 1 else 's'} ({doc['stop_reason']})."
    assert result.output.splitlines()[1] == f"Open: {(out / 'index.html').as_uri()}"
    # what the help promises, and nothing of a job's (no manifest, markers, job index)
    expected = {"document.json", "index.md", "index.html"} | {b["path"] for b in images}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == expected
    help_text = " ".join(invoke("generate", "--help").output.split())
    assert "DIR/document.json, images/, index.md, index.html" in help_text
    assert '../index.html' not in (out / "index.html").read_text()  # no job index to go back to

    # another document in the same folder replaces the first, leaving none of its pictures behind
    (out / "images").mkdir(exist_ok=True)
    (out / "images" / "03.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # as if it had had four pictures
    again = invoke("generate", "--image-only", "a red circle", "--out", str(out), "--steps", "2")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00.png"]
    assert json.loads((out / "document.json").read_text())["prompt"] == "a red circle"


def test_generate_image_only_paints_one_picture(tmp_path, installed_tiny):
    result = invoke("generate", "--image-only", "a red circle", "--out", str(tmp_path / "g"), "--steps", "2")
    assert result.exit_code == 0
    assert result.output.splitlines()[0].endswith(": 0 words, 1 image (image_only).")


def test_bad_flags_name_the_flag(tmp_path):
    result = CliRunner().invoke(cli, ["generate", "x", "--steps", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2  # a usage error, as click gives for a value of the wrong type
    assert "Error: Invalid value for '--steps': must be an integer in [1, 999], got 0" in result.output
    for args, words in [(["run", "p.txt", "--image-size", "100"], "'--image-size': must be a multiple of 8"),
                        (["submit", "p.txt", "--template", "sonnet"], "'--template': unknown prompt template 'sonnet'"),
                        (["eval", "--top-p", "0"], "'--top-p': must be a number in (0, 1], got 0.0")]:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and f"Error: Invalid value for {words}" in result.output, result.output
    result = CliRunner().invoke(cli, ["run", "--resume", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "Error: no job nope in" in result.output
    result = CliRunner().invoke(cli, ["generate", "x", "--model", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no checkpoint directory at" in result.output


def test_command_groups_are_plural_nouns_that_list_by_default_and_old_names_still_answer(tmp_path):
    """As simonw/llm names them: `dreamgen models` is `dreamgen models list`; `model`, `schedule` still work."""
    top = CliRunner().invoke(cli, ["--help"]).output
    for name in ("models", "engines", "schedules", "jobs"):
        assert f"\n  {name} " in top, name
    assert "\n  model " not in top and "\n  schedule " not in top  # the old names answer, unlisted

    listed = invoke("models", "list").output
    assert listed.startswith("shapes (default): ") and "tiny-random: " in listed
    assert invoke("models").output == listed and invoke("model", "list").output == listed
    assert invoke("model").output == listed

    schedules = str(ROOT / "examples" / "schedules.yaml")
    shown = invoke("schedules", "list", schedules, "-n", "1")
    assert shown.exit_code == 0 and shown.output.startswith("morning-shapes  '0 6 * * 1-5'")
    assert invoke("schedules", schedules, "-n", "1").output == shown.output
    assert invoke("schedule", "list", schedules, "-n", "1").output == shown.output

    home = {"DREAMGEN_HOME": str(tmp_path)}
    engines = CliRunner(env=home).invoke(cli, ["engines"])
    assert engines.output == CliRunner(env=home).invoke(cli, ["engines", "list"]).output
    assert engines.output == f"No engines in {tmp_path / 'engines'}.\n"

    # `jobs` lists by default, its options included (here it reaches for a broker that is not there)
    for args in (["jobs"], ["jobs", "list"], ["jobs", "--limit", "2"]):
        result = CliRunner().invoke(cli, [*args, "--broker-url", "redis://127.0.0.1:1/0"])
        assert result.exit_code == 1 and "Error: cannot reach the broker at redis://127.0.0.1:1/0" in result.output
    typo = CliRunner().invoke(cli, ["models", "lst"])
    assert typo.exit_code == 2 and typo.output.startswith("Error: No such command 'lst'.")


def test_old_names_of_run_flags_still_work_and_say_they_are_old(tmp_path, installed_tiny):
    """`run -b` (the old name of --slots) and `--schedule` (of --batching) work, each with one warning; the job
    records the batching policy under its own name."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("Write about a red circle\n")
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "out"), "--job-id", "old",
                                      "--model", str(installed_tiny), "-b", "2", "--schedule", "lockstep",
                                      "--max-new-tokens", "4", "--max-images", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "warning: -b/--batch-size is deprecated; use --slots" in result.output
    assert "warning: --schedule is deprecated; use --batching" in result.output
    record = json.loads((tmp_path / "out" / "old" / "job.json").read_text())
    assert record["slots"] == 2 and record["batching"] == "lockstep" and "schedule" not in record


def test_a_job_json_written_before_batching_had_its_name_resumes_with_its_policy(tmp_path):
    from dreamgen.jobs.spec import JobConfig

    prompts = tmp_path / "p.txt"
    prompts.write_text("Write about a red circle\n")
    assert JobConfig.from_record({"prompts": str(prompts), "schedule": "lockstep"}).batching == "lockstep"
    assert JobConfig.from_record({"prompts": str(prompts)}).batching == "continuous"
