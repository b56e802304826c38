"""A mistake on the command line is said in one line, at once: before torch, transformers or diffusers are imported
(issue 34: each took 5-9 s of imports, some after a "loading model" spinner). Each bad invocation runs in a fresh
interpreter, as a user's would; the modules it imported are written to a file when it exits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "diffusers")
# The `dreamgen` entry point, in this interpreter, noting at exit which heavy modules were imported.
WRAPPER = """
import atexit, json, sys
note = sys.argv.pop(1)
atexit.register(lambda: open(note, "w").write(json.dumps(sorted(
    m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "diffusers")))))
sys.argv[0] = "dreamgen"
from dreamgen.cli import main
main()
"""

EXAMPLES = str(ROOT / "examples" / "prompts.jsonl")
BAD = [  # (arguments, words the one line must hold)
    (["run"], "Error: missing PROMPTS (a prompt file), or --resume JOB (see: dreamgen run --help)"),
    (["run", EXAMPLES, "--steps", "-3"], "Error: Invalid value for '--steps': must be an integer in [1, 999], got -3"),
    (["run", "no-such-prompts.txt"], "Error: no-such-prompts.txt: no such file"),
    (["run", EXAMPLES, "--model", "shapez"],
     "Error: no checkpoint directory at shapez; did you mean 'shapes'? (built-in models: shapes, tiny-random;"),
    (["run", EXAMPLES, "--device", "gpu"], "Error: unknown device 'gpu': use cpu, cuda or cuda:N"),
    (["run", EXAMPLES, "--out", "s3:/bucket"], "Error: 's3:/bucket' is not an S3 URL: did you mean 's3://bucket'?"),
    (["run", "--resume", "job-1", "--out", "s3:/bucket"], "Error: 's3:/bucket' is not an S3 URL"),
    (["generate"], "Error: Missing argument 'PROMPT'. (see: dreamgen generate --help)"),
    (["generate", "a red circle", "--steps", "-3"], "Error: Invalid value for '--steps': must be an integer in"),
    (["generate", "a red circle", "-i", "no-such.png"],
     "Error: Invalid value for '-i' / '--image': File 'no-such.png'"),
    (["generate", "a red circle", "--model", "shapez"], "Error: no checkpoint directory at shapez; did you mean"),
    (["generate", "a red circle", "--device", "gpu"], "Error: unknown device 'gpu'"),
    (["generate", "a red circle", "--out", "s3:/bucket"], "Error: 's3:/bucket' is not an S3 URL"),
]


def bad_invocation(args: list[str], cwd: Path, **env_vars) -> tuple[int, str, list[str], float]:
    """Exit code, everything printed, the heavy modules imported, and the seconds it took."""
    note = cwd / "modules.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "200", **env_vars}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, str(note), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    seconds = time.perf_counter() - started
    return done.returncode, done.stdout + done.stderr, json.loads(note.read_text()), seconds


@pytest.mark.parametrize("args, words", BAD,
                         ids=[" ".join("PROMPTS" if x == EXAMPLES else x for x in a) for a, _ in BAD])
def test_a_bad_invocation_is_one_line_before_torch(args, words, tmp_path):
    code, output, heavy, seconds = bad_invocation(args, tmp_path)
    assert code in (1, 2), output
    assert output.splitlines() == [output.strip()] and output.startswith(words), output
    assert heavy == [], f"{args}: imported {heavy[:5]} before saying: {output.strip()}"
    assert not list(tmp_path.glob("s3:*")), "a folder named s3: was written"
    assert seconds < 5, seconds  # the imports alone took 5 s or more; it is well under a second when idle


@pytest.mark.parametrize("command", [["run", EXAMPLES], ["generate", "a red circle"]], ids=["run", "generate"])
def test_a_hub_model_that_cannot_be_fetched_is_one_line_with_hf_download(command, tmp_path):
    """Offline, a hub id is said once (not a warning and then the same error), with the command today's
    huggingface_hub ships (`hf download`; `huggingface-cli` is gone from it), before torch loads."""
    hub_id = "RunpeiDong/dreamllm-7b-chat-v1.0"
    code, output, heavy, _ = bad_invocation([*command, "--model", hub_id, "--out", str(tmp_path / "out")], tmp_path,
                                            HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert code == 1 and output.splitlines() == [output.strip()], output
    assert output.startswith(f"Error: could not download '{hub_id}'")
    assert f"`hf download {hub_id} --local-dir DIR`" in output and "huggingface-cli" not in output
    assert heavy == [] and not (tmp_path / "out").exists()


def test_the_wrapper_sees_heavy_imports(tmp_path):
    """The check above can fail: a good invocation that loads the model does import torch."""
    code, output, heavy, _ = bad_invocation(["model", "inspect", "shapes"], tmp_path)
    assert code == 0, output
    assert "torch" in heavy
