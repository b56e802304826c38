"""The `dreamgen` command: parses options, calls the library, prints. No logic of its own.

Heavy imports (torch, transformers, boto3) happen inside commands, so `dreamgen --help` answers at once.
"""
from __future__ import annotations

import functools
import json
import sys

import click

from dreamgen.registry import DEFAULT_MODEL

PARAM_OPTIONS = [  # (flag, parameter, type, help)
    ("--seed", "seed", int, "Seed of text sampling and of the first image's noise."),
    ("--steps", "steps", int, "Denoising steps per image (default 50)."),
    ("--guidance", "guidance", float, "Classifier-free guidance scale (default 7.5; <= 1 turns it off)."),
    ("--scheduler", "scheduler", click.Choice(["ddpm", "ddim", "dpm-solver"]), "Diffusion scheduler (default ddpm)."),
    ("--max-images", "max_images", int, "Most images per document (default 4)."),
    ("--max-new-tokens", "max_new_tokens", int, "Most tokens the model writes per document (default 256)."),
    ("--temperature", "temperature", float, "Sampling temperature; 0 is greedy (default 0)."),
    ("--top-p", "top_p", float, "Nucleus sampling mass (default 1.0)."),
    ("--image-size", "image_size", int, "Image side in pixels, a multiple of 8 (default: the model's)."),
    ("--negative-prompt", "negative_prompt", str, "What the pictures should not show."),
    ("--template", "template", str, "Prompt template: none, article, howto, news (default none)."),
    ("--chat", "chat", click.Choice(["vicuna", "none"]), "Chat format around the instruction (default vicuna)."),
]
PARAM_NAMES = [name for _, name, _, _ in PARAM_OPTIONS]


def param_options(f):
    """The generation parameters as flags; only the ones given become job defaults."""
    for flag, name, type_, help_ in reversed(PARAM_OPTIONS):
        f = click.option(flag, name, type=type_, default=None, help=help_)(f)
    return f


def model_options(f):
    f = click.option("-m", "--model", default=DEFAULT_MODEL, envvar="DREAMGEN_MODEL", show_default=True,
                     help="Checkpoint directory, built-in name, or hub id.")(f)
    f = click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", envvar="DREAMGEN_DTYPE",
                     show_default=True, help="Weights' precision (the VAE stays fp32).")(f)
    f = click.option("--device", default="cpu", envvar="DREAMGEN_DEVICE", show_default=True,
                     help="cpu, cuda or cuda:N.")(f)
    return f


def given_params(kwargs: dict) -> dict:
    """The parameter flags the user gave (the others stay unset, so file values and defaults apply)."""
    return {name: kwargs[name] for name in PARAM_NAMES if kwargs.get(name) is not None}


def friendly_errors(f):
    """Domain errors become one-line messages; no traceback reaches a user for a mistake of theirs."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from dreamgen.errors import DreamgenError
        try:
            return f(*args, **kwargs)
        except DreamgenError as e:
            raise click.ClickException(str(e)) from None
    return wrapper


@click.group()
@click.version_option(package_name="dreamgen")
@click.option("-v", "--verbose", is_flag=True, help="Log what the library does.")
def cli(verbose):
    """dreamgen: illustrated documents in bulk, written and painted by DreamLLM.

    \b
    Example:
        dreamgen run examples/prompts.jsonl --out out
    """
    import logging
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# ------------------------------------------------------------------------------------------------ run
@cli.command()
@click.argument("prompts", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--out", default="out", envvar="DREAMGEN_OUT", show_default=True,
              help="Output folder or s3://bucket/prefix.")
@click.option("--job-id", default=None, help="Name the job (default: a new time-stamped id). Same id = skip done documents.")
@click.option("--resume", "resume", default=None, metavar="JOB", help="Finish a stopped job from its job.json.")
@model_options
@click.option("-b", "--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Documents generated together in lockstep.")
@click.option("-f", "--format", "formats", default="md,html", show_default=True, help="Exports: md, html or both.")
@click.option("--self-contained", is_flag=True, help="Embed images in the HTML pages as data URIs.")
@click.option("--s3-endpoint-url", envvar="DREAMGEN_S3_ENDPOINT_URL", default=None,
              help="Endpoint of an S3-compatible server.")
@param_options
@friendly_errors
def run(prompts, out, job_id, resume, model, dtype, device, batch_size, formats, self_contained, s3_endpoint_url,
        **params):
    """Generate a document for every prompt in PROMPTS, in this process.

    PROMPTS is a .txt (one prompt a line), .jsonl, .csv or .yaml file. The whole file is checked first;
    a bad one is rejected with its file, line and field, and nothing is written. Ctrl-C stops cleanly:
    finish later with --resume.

    \b
    Examples:
        dreamgen run examples/prompts.jsonl --out out
        dreamgen run topics.txt --template howto --steps 30 --out s3://my-bucket/articles
        dreamgen run --resume job-20261128-101500-3fa9c1 --out out
    """
    from dreamgen.runner import JobConfig, JobInterrupted, resume_config, run_job

    defaults = given_params(params)
    if resume:
        if prompts:
            raise click.UsageError("give PROMPTS or --resume JOB, not both")
        config = resume_config(resume, out, s3_endpoint_url)
    elif not prompts:
        raise click.UsageError("missing PROMPTS (a prompt file), or --resume JOB")
    else:
        config = JobConfig(prompts=prompts, out=out, job_id=job_id, model=model, defaults=defaults,
                           batch_size=batch_size, formats=formats, self_contained=self_contained,
                           endpoint_url=s3_endpoint_url, dtype=dtype, device=device)
    with JobProgress() as progress:
        try:
            summary = run_job(config, on_event=progress.event)
        except JobInterrupted as e:
            summary = e.summary
    print_summary(summary)
    if summary.status == "interrupted":
        click.echo(f"Resume with: dreamgen run --resume {summary.job_id} --out {config.out}")
        sys.exit(130)


class JobProgress:
    """A rich progress bar over the runner's events: documents and images done, rate, ETA."""

    def __enter__(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
        self.images = 0
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("docs · {task.fields[images]} images · {task.fields[rate]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 transient=False)
        self.progress.__enter__()
        self.task = None
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def event(self, kind: str, info: dict):
        if kind == "start":
            self.task = self.progress.add_task(info["job_id"], total=info["total"], completed=info["skipped"],
                                               images=0, rate="")
        elif kind == "loading":
            self.progress.console.log(f"loading model {info['model']}")
        elif kind == "image":
            self.images += 1
            self.progress.update(self.task, images=self.images)
        elif kind in ("document", "failed"):
            if kind == "failed":
                self.progress.console.log(f"[red]failed[/red] {info['id']}: {info['error']}")
            self.progress.advance(self.task)
            task = self.progress.tasks[0]
            if task.elapsed:
                self.progress.update(self.task, rate=f"{60 * task.completed / task.elapsed:.1f} docs/min")


def print_summary(summary):
    click.echo(f"Job {summary.job_id}: {summary.done} done, {summary.failed} failed"
               + (f" ({summary.skipped} already done before)" if summary.skipped else "")
               + f", {summary.total} in the file, {summary.seconds:.1f}s.")
    click.echo(f"Open: {summary.location}")


# ------------------------------------------------------------------------------------------------ generate
@cli.command()
@click.argument("prompt")
@click.option("-o", "--out", default="out/generate", show_default=True, help="Folder for the document.")
@click.option("--image-only", is_flag=True, help="Text-to-image: paint one picture from PROMPT as a caption.")
@click.option("-i", "--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An input picture for the model to read (repeatable; placed at <image> or before the prompt).")
@model_options
@param_options
@friendly_errors
def generate(prompt, out, image_only, images, model, dtype, device, **params):
    """Write one illustrated document for PROMPT into a folder (document.json, images/, index.md, index.html).

    \b
    Examples:
        dreamgen generate "How to build a bird house" --out out/birdhouse
        dreamgen generate --image-only "a red circle on a blue background" --seed 7
    """
    from rich.console import Console

    from dreamgen.checkpoint import load_model
    from dreamgen.generation import DocumentRequest, Generator
    from dreamgen.ids import document_id
    from dreamgen.joboutput import open_job_output
    from dreamgen.params import GenerationParams
    from dreamgen.runner import load_input_image

    gen_params = GenerationParams(**given_params(params))
    console = Console(stderr=True)
    with console.status("loading model"):
        generator = Generator(load_model(model, dtype=dtype, device=device))
    request = DocumentRequest(prompt=prompt, params=gen_params, image_only=image_only,
                              images=[load_input_image(p) for p in images],
                              id=document_id(model, prompt, gen_params, list(images)))
    output = open_job_output(out)
    with console.status("writing") as status:
        doc = generator.generate([request], on_progress=lambda kind, _: status.update(f"{kind} done"))[0]
    output.save_document(doc)
    output.finalize()
    click.echo(f"{doc.id}: {len(doc.text.split())} words, {len(doc.images)} images ({doc.stop_reason}).")
    click.echo(f"Open: {output.url_for(doc.id, 'index.html')}")


# ------------------------------------------------------------------------------------------------ export
@cli.command()
@click.argument("job")
@click.option("-f", "--format", "formats", default="md,html", show_default=True, help="md, html or both.")
@click.option("--self-contained", is_flag=True, help="Embed images in the HTML pages as data URIs.")
@click.option("--s3-endpoint-url", envvar="DREAMGEN_S3_ENDPOINT_URL", default=None)
@friendly_errors
def export(job, formats, self_contained, s3_endpoint_url):
    """Re-render a stored job's Markdown and HTML from its documents.

    JOB is a job folder: out/job-... or s3://bucket/prefix/job-...

    \b
    Example:
        dreamgen export out/job-20261128-101500-3fa9c1 --format html --self-contained
    """
    from exporters import export_job
    from dreamgen.joboutput import open_job_output

    output = open_job_output(job, s3_endpoint_url)
    count = export_job(output.storage, output.job_id, formats, self_contained)
    click.echo(f"Exported {count} documents of {output.job_id} ({formats}).")
    click.echo(f"Open: {output.url_for('index.html')}")


# ------------------------------------------------------------------------------------------------ model
@cli.group()
def model():
    """Checkpoints: make the tiny one, look inside one."""


@model.command("init-tiny")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--safetensors", is_flag=True, help="Write .safetensors instead of .bin files.")
@friendly_errors
def model_init_tiny(directory, seed, safetensors):
    """Write a tiny random DreamLLM in the released checkpoint layout (offline, deterministic).

    \b
    Example:
        dreamgen model init-tiny models/tiny
    """
    from dreamgen.checkpoint import save_checkpoint
    from dreamgen.tiny import build_tiny_model

    out = save_checkpoint(build_tiny_model(seed=seed, name=f"tiny-random-seed{seed}"), directory, safetensors=safetensors)
    click.echo(f"Wrote a tiny DreamLLM to {out}")


@model.command("inspect")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def model_inspect(path, as_json):
    """Print a checkpoint's parts, tensor shapes and special token ids.

    \b
    Example:
        dreamgen model inspect models/tiny
    """
    from dreamgen.inspection import inspect_checkpoint

    info = inspect_checkpoint(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"Checkpoint {info['path']}")
    llm = info["llm"]
    click.echo(f"  LLM: vocab {llm['vocab_size']}, hidden {llm['hidden_size']}, {llm['num_hidden_layers']} layers, "
               f"{llm['num_attention_heads']} heads, {llm['max_position_embeddings']} positions")
    for name, kwargs in info["plugins"].items():
        click.echo(f"  plugin {name}: " + ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    click.echo("  parts:")
    for part, p in info["parts"].items():
        if "error" in p:
            click.echo(f"    {part}: MISSING ({p['error']})")
            continue
        click.echo(f"    {p['file']}: {p['tensors']} tensors, {p['parameters']:,} parameters, {'/'.join(p['dtypes'])}")
        for key, shape in p["shapes"].items():
            click.echo(f"      {key} {tuple(shape)}")
    click.echo("  special tokens: " + " ".join(f"{t}={i}" for t, i in info["special_tokens"].items()))
    click.echo("  tokenizer files: " + ", ".join(info["tokenizer"]))


@model.command("list")
def model_list():
    """List the built-in model names."""
    from dreamgen.registry import BUILTIN
    for name, what in BUILTIN.items():
        click.echo(f"{name}{' (default)' if name == DEFAULT_MODEL else ''}: {what}")


def main():
    cli()


if __name__ == "__main__":
    main()
