"""Every example a newcomer copies comes out as shown: each prompt of the README and of examples/ that is not marked
"needs a released model" is run with the default model (shapes), and the shapes checker reads every picture back
(dreamgen/shapes/asked.py): the shapes, colours, sizes, places and background the prompt asks for."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from dreamgen.shapes.asked import asked_of, problems

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
RELEASED = "needs a released model"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def readme_generate_lines() -> list[tuple[str, bool, dict]]:
    """(prompt, image_only, flags) of every `dreamgen generate` line in the README's shell blocks that needs no
    released model."""
    found = []
    for block in code_blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if len(words) < 3 or Path(words[0]).name != "dreamgen" or words[1] != "generate" or RELEASED in line:
                continue
            args, image_only, flags, rest = iter(words[2:]), False, {}, []
            for arg in args:
                if arg == "--image-only":
                    image_only = True
                elif arg.startswith("-"):
                    flags[arg] = next(args)
                else:
                    rest.append(arg)
            assert len(rest) == 1, f"README: cannot read this generate line: {line}"
            found.append((rest[0], image_only, flags))
    return found


def schedule_jobs(text: str, base: Path, tmp_path: Path, name: str) -> list[tuple[Path, dict]]:
    """(prompt file, defaults) of every schedule of a schedules file: its file, or its inline prompts written to
    one. A file that is not there (the README's news.jsonl, an illustration) is left out."""
    jobs = []
    for n, entry in enumerate(yaml.safe_load(text)["schedules"]):
        prompts, params = entry["prompts"], entry.get("params", {})
        if isinstance(prompts, str):
            if (base / prompts).is_file():
                jobs.append(((base / prompts).resolve(), params))
            continue
        path = tmp_path / f"{name}-{n}.jsonl"
        path.write_text("".join(json.dumps(p if isinstance(p, dict) else {"prompt": p}) + "\n" for p in prompts))
        jobs.append((path, params))
    return jobs


def test_the_readme_marks_what_needs_a_released_model():
    """The readers above see what they should: the README's runnable generate lines, the marked ones apart."""
    runnable = readme_generate_lines()
    assert len(runnable) >= 3, runnable
    assert ("a small red circle at the left on a white background", True, {"--seed": "7"}) in runnable
    marked = [line for block in code_blocks("bash") for line in block.splitlines() if RELEASED in line]
    assert any("bird house" in line for line in marked)
    assert all(asked_of(prompt).shapes for prompt, _, _ in runnable)


@pytest.mark.slow
def test_every_readme_and_examples_prompt_comes_out_as_shown(tmp_path):
    from dreamgen.jobs.run import generate_document, load_generator, run_job
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.params import GenerationParams

    generator = load_generator("shapes")
    failures, checked = [], 0
    for n, (prompt, image_only, flags) in enumerate(readme_generate_lines()):
        params = GenerationParams(**{k.lstrip("-").replace("-", "_"): int(v) for k, v in flags.items()
                                     if k in ("--seed", "--steps")})
        out = tmp_path / f"generate-{n}"
        generate_document(generator, prompt, params, str(out), "shapes", image_only=image_only,
                          derive_seed="--seed" not in flags)  # as `dreamgen generate` does
        failures += [f"README generate {prompt!r}: {p}" for p in problems(out, prompt, image_only)]
        checked += 1

    jobs = [(EXAMPLES / "prompts.jsonl", {}), (EXAMPLES / "openai-batch.jsonl", {})]
    jobs += schedule_jobs((EXAMPLES / "schedules.yaml").read_text(), EXAMPLES, tmp_path, "examples-schedules")
    for block in code_blocks("yaml"):
        jobs += schedule_jobs(block, ROOT, tmp_path, "readme-schedules")
    seen = []
    for n, (path, defaults) in enumerate(jobs):
        if (path, defaults) in seen:
            continue
        seen.append((path, defaults))
        run_job(JobConfig(prompts=str(path), out=str(tmp_path / "jobs"), job_id=f"j{n}", defaults=defaults),
                make_generator=lambda config: generator)
        lines = (tmp_path / "jobs" / f"j{n}" / "manifest.jsonl").read_text().splitlines()
        assert len(lines) == sum(1 for line in path.read_text().splitlines() if line.strip()), path
        for line in lines:
            entry = json.loads(line)
            folder = tmp_path / "jobs" / f"j{n}" / entry["id"]
            failures += [f"{path.name} {entry['id']}: {p}" for p in problems(folder, entry["prompt"])]
            checked += 1
    # README: 3 generate lines, 2 inline schedule prompts; examples: 4 + 3 lines, prompts.jsonl again with steps 30,
    # 2 inline schedule prompts
    assert checked >= 18, checked
    assert failures == []


def test_the_readme_first_screen_shows_the_quick_start_and_how_to_run_dreamgen():
    """Issue 34: `dreamgen: command not found` right after `make demo`. The first screen (40 lines) says what it is,
    the quick start, the test command CI runs, and how to reach the command afterwards; every docs/ page the
    README links to exists."""
    text = README.read_text()
    first = "\n".join(text.splitlines()[:40])
    for needed in ("## Quick start", "make demo", "make test", ".venv/bin/dreamgen", "source .venv/bin/activate"):
        assert needed in first, needed
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert {"docs/shapes-model.md", "docs/speed.md", "docs/gpu.md"} <= set(links)
    assert [link for link in links if not (ROOT / link).is_file()] == []
    assert len(text.splitlines()) < 450  # usage, not the record: that is in docs/
