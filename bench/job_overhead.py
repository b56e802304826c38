"""What storing and exporting cost, as a share of generation, on the tiny model, in one run.

Generates the same 16 documents twice: once with Generator.generate alone (nothing stored), once as a whole
job with run_job (documents, PNGs with parameters, document.json, index.md, index.html, markers, manifest, index).
The overhead is (job time - generation time) / generation time. Target: < 10%.

    python bench/job_overhead.py [--docs 16] [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from dreamgen.generation.generator import DocumentRequest, Generator
from dreamgen.jobs.run import run_job
from dreamgen.jobs.spec import JobConfig
from dreamgen.model.tiny import build_tiny_model
from dreamgen.prompts.files import iter_prompt_file


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    generator = Generator(build_tiny_model(seed=0))
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"article number {i} about the sea", "seed": i}) + "\n"
                                   for i in range(args.docs)))
        defaults = {"steps": args.steps, "max_new_tokens": 96}
        specs = list(iter_prompt_file(prompts, defaults, "tiny-random"))
        requests = [DocumentRequest(prompt=s.prompt, params=s.params, id=s.id) for s in specs]
        generator.generate(requests[:2])  # warm-up, out of both timings

        start = time.perf_counter()
        for i in range(0, len(requests), 8):
            docs = generator.generate(requests[i:i + 8])
        generate_s = time.perf_counter() - start

        start = time.perf_counter()
        summary = run_job(JobConfig(prompts=str(prompts), out=str(Path(tmp) / "out"), job_id="bench", defaults=defaults,
                                    batch_size=8), make_generator=lambda c: generator)
        job_s = time.perf_counter() - start
    images = sum(len(d.images) for d in docs)
    print(f"documents {summary.done}, generation alone {generate_s:.2f}s, whole job {job_s:.2f}s, "
          f"store+export overhead {100 * (job_s - generate_s) / generate_s:.1f}% of generation "
          f"({1000 * (job_s - generate_s) / summary.done:.0f} ms per document; last batch had {images} images)")


if __name__ == "__main__":
    main()
