"""The `dreamgen` command: parses options, calls the library, prints. No logic of its own.

Heavy imports (torch, transformers, boto3) happen inside commands, so `dreamgen --help` answers at once.
"""
from __future__ import annotations

import functools
import json
import os
import sys

import click

from dreamgen import settings
from dreamgen.exporters import FORMATS, KNOWN_FORMATS, RESULTS, parse_formats
from dreamgen.generation.config import BATCHING
from dreamgen.model.sizes import MODEL_SIZES
from dreamgen.params import CHAT_FORMATS, FAST, SCHEDULERS
from dreamgen.prompts.templates import available as available_templates
from dreamgen.workers.launcher import POOLS
from dreamgen.workers.settings import GPU_QUEUE, LIGHT_QUEUE

PARAM_OPTIONS = [  # (flag, parameter, type, help)
    ("--seed", "seed", int, "Seed of text sampling and of the first image's noise (default: derived from the "
                            "document's id)."),
    # The unset ones below take the model's defaults: the released checkpoints the reference scripts' (DDPM, 150
    # steps, guidance 3.5, temperature 0.2, top_p 1.0, 1024 new tokens), others their own (dreamgen models inspect).
    ("--steps", "steps", int, "Denoising steps per image (default: the model's, 150 for the released ones)."),
    ("--guidance", "guidance", float, "Classifier-free guidance scale (default: the model's, 3.5 for the released "
                                      "ones; <= 1 turns it off)."),
    ("--scheduler", "scheduler", click.Choice(SCHEDULERS), "Diffusion scheduler (default: the model's, ddpm for "
                                                           "the released ones)."),
    ("--cache-interval", "cache_interval", int, "Run the UNet's deep blocks every Nth denoising step only, reusing "
                                                "their features between (default: the model's, 1 = off for the "
                                                "released ones)."),
    ("--cache-until", "cache_until", float, "With a cache interval: reuse the deep features through this share of "
                                            "the steps only, full UNet passes after (default: the model's, 1)."),
    ("--guidance-until", "guidance_until", float, "Guide through this share of the denoising steps only, the "
                                                  "rest unguided at half the UNet work (default: the model's, 1)."),
    ("--max-images", "max_images", int, "Most images per document (default 4)."),
    ("--max-new-tokens", "max_new_tokens", int, "Most tokens the model writes per document (default: the "
                                                 "model's, 1024 for the released ones)."),
    ("--temperature", "temperature", float, "Sampling temperature; 0 is greedy (default: the model's, 0.2 for "
                                            "the released ones)."),
    ("--top-p", "top_p", float, "Nucleus sampling mass (default: the model's, 1.0 for the released ones)."),
    ("--image-size", "image_size", int, "Image side in pixels, a multiple of 8 (default: the model's)."),
    ("--negative-prompt", "negative_prompt", str, "What the pictures should not show."),
    ("--template", "template", str, f"Prompt template: {', '.join(available_templates())} (default none)."),
    ("--chat", "chat", click.Choice(CHAT_FORMATS), "Chat format around the instruction (default vicuna)."),
]
PARAM_NAMES = [name for _, name, _, _ in PARAM_OPTIONS]
FLAG_OF = {name: flag for flag, name, _, _ in PARAM_OPTIONS}


def counted(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def deprecated_alias(value, old: str, new: str):
    """An old flag still works, and says once that it is old."""
    if value is not None:
        click.echo(f"warning: {old} is deprecated; use {new}", err=True)
    return value


def print_table(headers: tuple[str, ...], rows: list[tuple]) -> None:
    """Rows under a header row, columns padded to their widest cell; a header starting with ">" is right-aligned."""
    names = [h.lstrip(">") for h in headers]
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(name)] + [len(row[i]) for row in cells]) for i, name in enumerate(names)]

    def line(values):
        return "  ".join(v.rjust(w) if h.startswith(">") else v.ljust(w)
                         for h, v, w in zip(headers, values, widths)).rstrip()

    for values in [names] + cells:
        click.echo(line(values))


def param_options(f):
    """The generation parameters as flags, and --fast; only the ones given become job defaults."""
    f = click.option("--fast", is_flag=True, default=False,
                     help="Paint cheaper: DDPM at 25 steps, the UNet's deep blocks every 2nd step, guided through the "
                          "first half of the steps (about a quarter of DDPM 50's UNet work a picture at 512 px; "
                          "what it costs in quality: docs/pictures.md). Painting flags given too win.")(f)
    for flag, name, type_, help_ in reversed(PARAM_OPTIONS):
        f = click.option(flag, name, type=type_, default=None, help=help_)(f)
    return f


def setting_option(*decls, setting: settings.Setting, **kwargs):
    """An option whose environment variable and default are the setting's (dreamgen.settings)."""
    return click.option(*decls, envvar=setting.name, default=setting.default, show_default=setting.default is not None,
                        **kwargs)


def model_option(f):
    return setting_option("-m", "--model", setting=settings.MODEL,
                          help="Checkpoint directory, built-in name, or hub id.")(f)


def dtype_option(f):
    return setting_option("--dtype", setting=settings.DTYPE, type=click.Choice(settings.DTYPES),
                          help="Weights' precision: auto is bf16 on CUDA, fp32 on the CPU (the VAE stays fp32).")(f)


def model_options(f):
    """Which model, in which precision, on which device."""
    options = [model_option, dtype_option,
               setting_option("--device", setting=settings.DEVICE, help="cpu, cuda or cuda:N.")]
    for option in reversed(options):  # decorators apply bottom-up; --help lists them in this order
        f = option(f)
    return f


def backend_option(f):
    """--backend. Default torch: the same documents on every run; auto picks by what is installed and built,
    so its output can change when engines appear in the cache."""
    return setting_option("--backend", setting=settings.BACKEND, type=click.Choice(settings.BACKENDS),
                        help="Where the model runs: torch, onnx (ONNX Runtime), tensorrt, or auto (tensorrt if it "
                             "imports and a GPU holds the model, else onnx if engines are built, else torch).")(f)


def kv_memory_option(f):
    return setting_option("--kv-memory-fraction", setting=settings.KV_MEMORY_FRACTION,
                          type=click.FloatRange(0, 1, min_open=True),
                          help="CUDA: share of the memory free after the weights and one peak step that the KV "
                               "pool takes.")(f)


class ByteSize(click.ParamType):
    """80GiB, 80GB, 512MiB or a number of bytes."""

    name = "size"
    UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
             "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        text = str(value).strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        try:
            size = float(number) * self.UNITS[unit]
        except (ValueError, KeyError):
            self.fail(f"{value!r} is not a size such as 80GiB, 80GB or 512MiB", param, ctx)
        if size <= 0:
            self.fail(f"{value!r} must be more than nothing", param, ctx)
        return int(size)


def given_params(kwargs: dict) -> dict:
    """The parameter flags the user gave (the others stay unset, so file values and defaults apply), checked
    here so that a bad value is reported against its flag."""
    from dreamgen.errors import ParamsError
    from dreamgen.prompts.files import check_job_defaults

    given = {name: kwargs[name] for name in PARAM_NAMES if kwargs.get(name) is not None}
    if kwargs.get("fast"):
        given = {**FAST, **given}
    try:
        check_job_defaults(given)
    except ParamsError as e:
        flag = FLAG_OF.get(e.name)
        if flag is None:
            raise
        raise click.BadParameter(e.rule, param_hint=f"'{flag}'") from None
    return given


def s3_endpoint_option(f):
    return setting_option("--s3-endpoint-url", setting=settings.S3_ENDPOINT_URL,
                          help="Endpoint of an S3-compatible server (default: AWS).")(f)


def formats_option(f):
    return click.option("-f", "--format", "formats", default=",".join(FORMATS), show_default=True,
                        help=f"Exports, comma-separated: {', '.join(KNOWN_FORMATS)} (epub: the whole job as one "
                             f"book, <job>/<job>.epub).")(f)


def results_option(f):
    return click.option("--results", type=click.Choice(RESULTS), default=None,
                        help="openai: also write results.jsonl, a line per document in the OpenAI Batch API's output "
                             "shape [default: none].")(f)


def output_options(f):
    """How a job's documents are exported and where its S3 endpoint is."""
    options = [
        formats_option,
        click.option("--self-contained", is_flag=True, help="Embed images in the HTML pages as data URIs."),
        results_option,
        s3_endpoint_option,
    ]
    for option in reversed(options):  # decorators apply bottom-up; --help lists them in this order
        f = option(f)
    return f


def friendly_errors(f):
    """Domain errors become one-line messages; no traceback reaches a user for a mistake of theirs."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from dreamgen.errors import DreamgenError
        try:
            return f(*args, **kwargs)
        except DreamgenError as e:  # surrogates (undecodable bytes of a path or an argument) printed escaped
            raise click.ClickException(str(e).encode("utf-8", "backslashreplace").decode("utf-8")) from None
    return wrapper


class NounGroup(click.Group):
    """A plural noun's commands, as simonw/llm names them (`models`, `engines`, `schedules`, `jobs`): `list` is
    what the noun alone does, so `dreamgen models` lists the models and `dreamgen jobs --limit 5` the jobs."""

    def parse_args(self, ctx, args):
        # `list`'s options, or its argument where it takes one (a schedules file); any other word stays a command
        # name, so a typo is "No such command", not an argument `list` does not take
        takes_argument = any(isinstance(p, click.Argument) for p in self.commands["list"].params)
        if not args or (args[0] not in self.commands and args[0] not in self.get_help_option_names(ctx)
                        and (args[0].startswith("-") or takes_argument)):
            args = ["list", *args]
        return super().parse_args(ctx, args)


class OneLineErrors(click.Group):
    """A usage error (a bad flag, a missing argument) is one line, "Error: ... (see: dreamgen run --help)", not
    click's usage block above it: the line that says what is wrong is the one a user sees. Old names of the
    command groups still answer (not listed in --help)."""

    ALIASES = {"model": "models", "schedule": "schedules", "engine": "engines", "job": "jobs"}

    def get_command(self, ctx, name):
        return super().get_command(ctx, self.ALIASES.get(name, name))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:  # `dreamgen model`: its help, as before
            raise
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx else ctx.command_path
            raise OneLineUsageError(f"{e.format_message()} (see: {where} --help)") from None


class OneLineUsageError(click.ClickException):
    exit_code = 2  # click's code for a usage error


@click.group(cls=OneLineErrors)
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


def log_console(stderr: bool = False):
    """Where progress bars and their log lines go: a line names its source file only with -v."""
    import logging

    from rich.console import Console

    return Console(stderr=stderr, log_path=logging.getLogger().isEnabledFor(logging.INFO))


def out_option(help_text: str = "Output folder or s3://bucket/prefix."):
    return lambda f: setting_option("-o", "--out", setting=settings.OUT, help=help_text)(f)


# ------------------------------------------------------------------------------------------------ run
@cli.command()
@click.argument("prompts", required=False, type=click.Path(dir_okay=False))
@out_option()
@click.option("--job-id", default=None, help="Name the job (default: a new time-stamped id). Same id = skip done documents.")
@click.option("--resume", "resume", default=None, metavar="JOB", help="Finish a stopped job from its job.json.")
@model_options
@backend_option
@click.option("-s", "--slots", "slots", default=None, type=click.IntRange(min=1),
              help="Documents in flight at once; a finished one's slot takes the next document at once "
                   "(default: 32 on a CPU, 64 on a GPU).")
@click.option("-b", "--batch-size", "old_slots", default=None, type=click.IntRange(min=1), hidden=True,
              callback=lambda ctx, param, value: deprecated_alias(value, "-b/--batch-size", "--slots"))
@click.option("--batching", type=click.Choice(BATCHING), default="continuous", show_default=True,
              help="continuous: slots refill as documents end; lockstep: fixed batches of --slots documents, "
                   "each batch waiting for its slowest (for comparison).")
@click.option("--schedule", "old_batching", default=None, type=click.Choice(BATCHING), hidden=True,
              callback=lambda ctx, param, value: deprecated_alias(value, "--schedule", "--batching"))
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the LM's decode steps and the UNet (default: on CUDA; on a CPU it does not pay).")
@kv_memory_option
@output_options
@param_options
@friendly_errors
def run(prompts, out, job_id, resume, model, dtype, device, backend, slots, old_slots, batching, old_batching,
        compile_, kv_memory_fraction, formats, self_contained, results, s3_endpoint_url, **params):
    """Generate a document for every prompt in PROMPTS, in this process.

    PROMPTS is a .txt (one prompt a line), .jsonl, .csv or .yaml file. The whole file is checked first;
    a bad one is rejected with its file, line and field, and nothing is written. Ctrl-C stops cleanly:
    finish later with --resume.

    \b
    Examples:
        dreamgen run examples/prompts.jsonl --out out
        dreamgen run topics.txt --template howto --steps 30 --out s3://my-bucket/articles
        dreamgen run --resume job-20261128-101500-3fa9c1 --out out
        dreamgen run topics.txt --backend onnx --out out
    """
    from dreamgen.errors import JobFailed, JobInterrupted
    from dreamgen.jobs.progress import JobProgress
    from dreamgen.jobs.spec import JobConfig, check_job, stored_config

    defaults = given_params(params)
    slots, batching = slots or old_slots, old_batching or batching
    if resume:
        if prompts:
            raise click.UsageError("give PROMPTS or --resume JOB, not both")
        check_where(out=out)
        config = stored_config(resume, out, s3_endpoint_url, slots=slots, results=results)
    elif not prompts:
        raise click.UsageError("missing PROMPTS (a prompt file), or --resume JOB")
    elif not os.path.isfile(prompts):  # before the model's card is read for the file's check (transformers)
        raise click.ClickException(f"{prompts}: no such file" if not os.path.exists(prompts)
                                   else f"{prompts}: not a file")
    else:
        config = JobConfig(prompts=prompts, out=out, job_id=job_id, model=model, defaults=defaults,
                           slots=slots, batching=batching, formats=formats, self_contained=self_contained,
                           endpoint_url=s3_endpoint_url, dtype=dtype, device=device, backend=backend,
                           results=results or "none")
    check_where(config.model, config.device, config.out)
    checked = check_job(config)  # the whole prompt file: every mistake is said before torch loads (seconds)
    from dreamgen.jobs.run import job_generator, run_job

    with JobProgress(log_console()) as progress:
        try:
            # markup off: the backend line may hold "[tensorrt]" (the pip extra), which is not a rich style
            report = functools.partial(progress.log, markup=False) if config.backend != "torch" else None
            summary = run_job(config, on_event=progress.event,
                              make_generator=functools.partial(job_generator, report=report,
                                                               kv_fraction=kv_memory_fraction, compile=compile_),
                              checked=checked)
        except (JobInterrupted, JobFailed) as e:
            summary = e.summary
    print_summary(summary, open_line(config, summary.job_id))
    if summary.status == "failed":  # issue 16: said, recorded in job.json, and resumable like a Ctrl-C
        said = summary.error if summary.failures else f"the job stopped: {summary.error}"
        click.echo(f"Error: {said}".encode("utf-8", "backslashreplace").decode(), err=True)
    if summary.status in ("interrupted", "failed"):
        click.echo(f"Resume with: dreamgen run --resume {summary.job_id} --out {config.out}")
        sys.exit(130 if summary.status == "interrupted" else 1)


def check_where(model: str | None = None, device: str | None = None, out: str | None = None) -> None:
    """The model's name, the device and the output location, checked by name (no torch, no network), so a typo
    is one line in a blink, not after seconds of imports and a "loading model" spinner."""
    from dreamgen.jobs.storage import check_location
    from dreamgen.model.device import check_device
    from dreamgen.model.locate import CARD_FILES, check_model_name, is_hub_id, resolve_checkpoint

    if model is not None:
        check_model_name(model)
        if is_hub_id(model):  # this process loads it: one that cannot be fetched is an error now, said once
            resolve_checkpoint(model, files=CARD_FILES)
    if device is not None:
        check_device(device)
    if out is not None:
        check_location(out)


def open_line(config, job_id: str) -> str:
    """"Open: LINK", where the link opens: on S3 a presigned one, or why there is none (a private bucket answers
    an object's plain URL with 403)."""
    from dreamgen.jobs.output import JobOutput
    from dreamgen.jobs.storage import open_storage

    output = JobOutput(open_storage(config.out, config.endpoint_url), job_id)
    link, note = output.open_link(config.formats, config.self_contained)
    return f"Open: {link}" + (f"\n  ({note})" if note else "")


def print_summary(summary, open_text: str | None = None):
    # documents the context cut short are not plain successes: counted apart
    cut = f"{summary.context_full} stopped at the context limit, " if summary.context_full else ""
    click.echo(f"Job {summary.job_id}: {summary.done - summary.context_full} done, {cut}{summary.failed} failed"
               + (f" ({summary.skipped} already done before)" if summary.skipped else "")
               + f", {summary.total} in the file, {summary.seconds:.1f}s.")
    click.echo(open_text or f"Open: {summary.location}")
    if summary.failures:  # issue 33: every document failed: each error once, with the prompts it hit
        print_failures(summary.failures)


def print_failures(entries, groups: int = 5, prompts: int = 3) -> None:
    from dreamgen.errors import preview, printable
    from dreamgen.jobs.output import grouped_failures

    grouped = grouped_failures(entries)
    click.echo("Failures, by error:")
    for error, members in grouped[:groups]:
        click.echo(f"  {len(members)} x {printable(error, 300)}")
        for entry in members[:prompts]:
            click.echo(f"      {entry['id']}: {preview(entry.get('prompt', '?'), 100)}")
        if len(members) > prompts:
            click.echo(f"      and {len(members) - prompts} more")
    if len(grouped) > groups:
        click.echo(f"  and {len(grouped) - groups} other errors (errors.jsonl lists them all)")


# ------------------------------------------------------------------------------------------------ generate
@cli.command()
@click.argument("prompt")
@click.option("-o", "--out", default=None, metavar="DIR",
              help="Folder for the document: DIR/document.json, images/, index.md, index.html "
                   "(default: out/generate/<document id>).")
@click.option("--image-only", is_flag=True, help="Text-to-image: paint one picture from PROMPT as a caption.")
@click.option("-i", "--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An input picture for the model to read (repeatable; placed at <image> or before the prompt).")
@model_options
@backend_option
@param_options
@friendly_errors
def generate(prompt, out, image_only, images, model, dtype, device, backend, **params):
    """Write one illustrated document for PROMPT into a folder (document.json, images/, index.md, index.html).

    \b
    Examples:
        dreamgen generate "Write about a large orange diamond at the top" --out out/diamond
        dreamgen generate --image-only "a small red circle at the left on a white background" --seed 7
        dreamgen generate "Could you draw a small red circle on the left?" --backend auto
        dreamgen generate "How to build a bird house" --model RunpeiDong/dreamllm-7b-chat-v1.0
    """
    from rich.console import Console

    from dreamgen.params import GenerationParams
    from dreamgen.pictures import header_size
    from dreamgen.prompts.limits import text_problem

    if text_problem(prompt):  # e.g. an argument of bytes that are not UTF-8: the document could not be stored
        raise click.BadParameter(text_problem(prompt), param_hint="'PROMPT'")
    given = given_params(params)
    gen_params = GenerationParams(**given)
    check_where(model, device, out)
    for path in images:  # a picture too large or no picture at all is said before the model loads
        header_size(path, path)
    from dreamgen.jobs.run import generate_document, load_generator  # torch: after every cheap check

    console = Console(stderr=True)
    heard = []
    with console.status("loading model"):
        generator = load_generator(model, dtype, device, backend, report=heard.append)
    if backend != "torch":  # say what auto chose, or where the engines came from; plain torch needs no word
        click.echo(heard[0], err=True)
    with console.status("writing") as status:
        doc, output = generate_document(generator, prompt, gen_params, out, model, image_only=image_only,
                                        images=list(images), on_progress=lambda kind: status.update(f"{kind} done"),
                                        derive_seed="seed" not in given)
    click.echo(f"{doc.id}: {counted(len(doc.text.split()), 'word')}, {counted(len(doc.images), 'image')} "
               f"({doc.stop_reason}).")
    click.echo(f"Open: {output.url_for('index.html')}")


# ------------------------------------------------------------------------------------------------ export
@cli.command()
@click.argument("job")
@formats_option
@click.option("--self-contained", is_flag=True, help="Embed images in the HTML pages as data URIs.")
@results_option
@click.option("--hugo", "hugo_dir", default=None, metavar="DIR",
              help="Instead, write the job as a Hugo section DIR/<job>/ (_index.md, <doc>/index.md, <doc>/images/): "
                   "give a site's content/ folder or one below it.")
@s3_endpoint_option
@friendly_errors
def export(job, formats, self_contained, results, hugo_dir, s3_endpoint_url):
    """Re-render a stored job's Markdown and HTML from its documents, or write it as a Hugo section.

    JOB is a job folder: out/job-... or s3://bucket/prefix/job-...

    \b
    Examples:
        dreamgen export out/job-20261128-101500-3fa9c1 --format html --self-contained
        dreamgen export out/job-20261128-101500-3fa9c1 --hugo my-site/content/articles
        dreamgen export out/job-20261128-101500-3fa9c1 --format epub
    """
    from dreamgen.jobs.output import export_job, open_job_output

    output = open_job_output(job, s3_endpoint_url)
    if hugo_dir:
        from dreamgen.jobs.hugo import export_hugo
        from dreamgen.jobs.storage import open_storage

        dest = open_storage(hugo_dir, s3_endpoint_url)
        count = export_hugo(output, dest)
        click.echo(f"Exported {count} documents of {output.job_id} as a Hugo section: {dest.location}/{output.job_id}")
        return
    count = export_job(output.storage, output.job_id, formats, self_contained, results)
    click.echo(f"Exported {count} documents of {output.job_id} ({formats}).")
    if "epub" in parse_formats(formats):
        click.echo(f"Book: {output.storage.url_for(output.book_key())}")
    link, note = output.open_link(formats, self_contained)
    click.echo(f"Open: {link}" + (f"\n  ({note})" if note else ""))


# ------------------------------------------------------------------------------------------------ models
@cli.group(cls=NounGroup)
def models():
    """Models: the built-in names (list, what `dreamgen models` alone does), a tiny random one to make, what a
    checkpoint holds, its memory plan on a card. `dreamgen model ...` is the old name.

    \b
    Examples:
        dreamgen models
        dreamgen models inspect shapes
    """


@models.command("init-tiny")
@click.argument("directory", type=click.Path(file_okay=False), default="models/tiny")
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--safetensors", is_flag=True, help="Write .safetensors instead of .bin files.")
@click.option("--size", type=click.Choice(list(MODEL_SIZES)), default="tiny", show_default=True,
              help="tiny: the tests' model (hidden 64, 2 layers); small: the benchmarks' (hidden 512, 8 layers, "
                   "512 px pictures), where compute dominates.")
@friendly_errors
def model_init_tiny(directory, seed, safetensors, size):
    """Write a random DreamLLM of the real classes in the released checkpoint layout (offline, deterministic)
    into DIRECTORY (default models/tiny, which git ignores).

    \b
    Examples:
        dreamgen models init-tiny models/tiny
        dreamgen models init-tiny models/small --size small      # then: bench/continuous.py --model models/small
    """
    from dreamgen.model.checkpoint import save_checkpoint
    from dreamgen.model.sizes import SIZES
    from dreamgen.model.tiny import build_tiny_model

    model = build_tiny_model(seed=seed, name=f"{size}-random-seed{seed}", sizes=SIZES[size])
    out = save_checkpoint(model, directory, safetensors=safetensors)
    click.echo(f"Wrote a {size} DreamLLM to {out}")


@models.command("inspect")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def model_inspect(path, as_json):
    """Print a checkpoint's parts, tensor shapes and special token ids.

    \b
    Example:
        dreamgen models inspect models/tiny
    """
    from dreamgen.model.inspection import inspect_checkpoint

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
    click.echo("  defaults where a request names none: "
               + ", ".join(f"{k} {v}" for k, v in info["defaults"].items()))


@models.command("plan")
@click.argument("path", envvar=settings.MODEL.name, default=settings.MODEL.default)
@click.option("--device-memory", type=ByteSize(), required=True, help="The card's memory, e.g. 80GiB.")
@click.option("-s", "--slots", default=None, type=click.IntRange(min=1),
              help="Documents in flight (default: a GPU's, 64); the peak step paints one picture each.")
@kv_memory_option
@friendly_errors
def model_plan(path, device_memory, slots, kv_memory_fraction):
    """Print the memory plan of a checkpoint on a CUDA card of --device-memory: weights (bf16, the VAE fp32), KV
    bytes per token, the KV pool and how many documents of the full context it holds at once. Reads the
    checkpoint's files, not its weights; the peak step is estimated here (on the card, `dreamgen run` measures it).

    \b
    Example:
        dreamgen models plan shapes --device-memory 80GiB
    """
    from dreamgen.generation.config import DEFAULT_SLOTS
    from dreamgen.generation.memory import checkpoint_card_plan

    plan = checkpoint_card_plan(path, device_memory, slots or DEFAULT_SLOTS["cuda"],
                                settings.kv_memory_fraction(kv_memory_fraction))
    for line in plan.lines():
        click.echo(line)


@models.command("list")
def model_list():
    """List the built-in model names (the default of --model first).

    \b
    Example:
        dreamgen models
    """
    from dreamgen.model.builtin import BUILTIN
    for name, what in BUILTIN.items():
        click.echo(f"{name}{' (default)' if name == settings.DEFAULT_MODEL else ''}: {what}")


# ------------------------------------------------------------------------------------------------ engines
@cli.group(cls=NounGroup)
def engines():
    """Compiled engines: ONNX graphs for ONNX Runtime and TensorRT engines, kept in DREAMGEN_HOME/engines.

    They run the UNet, the VAE decoder and the vision encoder; the LM runs on torch on every backend.
    `dreamgen engines` alone lists them.

    \b
    Example:
        dreamgen engines build --model tiny-random --backend onnx
    """


@engines.command("build")
@model_options
@click.option("--backend", type=click.Choice(settings.ENGINE_BACKENDS), required=True,
              help="onnx: export the graphs; tensorrt: export them and build engines for this GPU.")
@click.option("--precision", type=click.Choice(settings.PRECISIONS), default=None,
              help="Graph precision (default: fp32 for --dtype fp32, else fp16). The VAE is always fp32.")
@click.option("--max-batch", default=4, show_default=True, type=click.IntRange(min=1),
              help="TensorRT: most documents in lockstep (the UNet takes twice as many, for guidance).")
@click.option("--image-size", type=click.IntRange(min=8), default=None,
              help="TensorRT: largest image side in pixels (default: the model's).")
@friendly_errors
def engines_build(model, dtype, device, backend, precision, max_batch, image_size):
    """Export a model's graphs into the engine cache, and for tensorrt build engines from them.

    Each engine is keyed by what it was built from; one already in the cache is reused. ONNX graphs take any
    batch and image size; --max-batch and --image-size set the TensorRT optimization profiles.

    \b
    Examples:
        dreamgen engines build --model tiny-random --backend onnx
        dreamgen engines build -m models/dreamllm-7b --dtype fp16 --device cuda --backend tensorrt --max-batch 8
    """
    from dreamgen.engines import EngineLimits, build_engines
    from dreamgen.model.loader import load_model

    loaded = load_model(model, dtype=dtype, device=device)
    built = build_engines(loaded, backend, precision, limits=EngineLimits(max_batch, image_size))
    for part, engine in built.items():
        how = f"built in {engine.seconds:.1f} s" if engine.built else "already built"
        click.echo(f"{backend} {part} ({engine.entry.precision}): {how}: {engine.path}")


@engines.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON.")
def engines_list(as_json):
    """List the engines in the cache: backend, part, precision, model, size, and where they are.

    \b
    Example:
        dreamgen engines list
    """
    from dreamgen.engines import EngineCache

    cache = EngineCache()
    rows = cache.listing()
    if as_json:
        click.echo(json.dumps([{"path": str(path), "manifest": manifest, "problem": problem}
                               for path, manifest, problem in rows], indent=2))
        return
    if not rows:
        click.echo(f"No engines in {cache.root}.")
        return
    table = []
    for path, manifest, problem in rows:
        if manifest is None:
            continue
        megabytes = sum(f.get("bytes", 0) for f in manifest.get("files", {}).values()) / 1e6
        # onnx graphs: their flavour (onnxruntime | portable); TensorRT engines: the GPU they were built for
        flavor = manifest.get("key_inputs", {}).get("compute_capability", "?") \
            if manifest.get("backend") == "tensorrt" else manifest.get("flavor", "?")
        table.append((manifest.get("backend", "?"), manifest.get("part", "?"), manifest.get("precision", "?"), flavor,
                      manifest.get("label") or "?", f"{megabytes:.1f} MB", manifest.get("created", "?"), path))
    if table:
        print_table(("BACKEND", "PART", "PRECISION", "FLAVOR", "MODEL", ">SIZE", "CREATED", "PATH"), table)
    for path, manifest, problem in rows:
        if manifest is None:
            click.echo(f"{path}: unusable ({problem})")


@engines.command("verify")
@model_options
@click.option("--precision", type=click.Choice(settings.PRECISIONS), default=None,
              help="Only this precision (default: both).")
@friendly_errors
def engines_verify(model, dtype, device, precision):
    """Run every built graph of a model against torch on random inputs and print each part's largest error.

    Files are checked against their manifests' sha256 first. Exits with 1 if an error is over its tolerance.

    \b
    Example:
        dreamgen engines verify --model tiny-random
    """
    from dreamgen.engines import EngineCache, verify_cache
    from dreamgen.model.loader import load_model

    loaded = load_model(model, dtype=dtype, device=device)
    cache = EngineCache()
    checks = verify_cache(loaded, cache, precisions=(precision,) if precision else settings.PRECISIONS)
    if not checks:
        raise click.ClickException(f"no engines of {model} in {cache.root}; build them with: "
                                   f"dreamgen engines build --model {model} --backend onnx")
    for check in checks:
        click.echo(check.line())
    if any(not c.ok and not c.skipped for c in checks):
        sys.exit(1)


# ------------------------------------------------------------------------------------------------ distributed jobs
def broker_option(f):
    # No default here: the library falls back to settings.BROKER_URL, and a worker's children inherit it unset.
    return click.option("--broker-url", envvar=settings.BROKER_URL.name, default=None, metavar="URL",
                        help="Redis of the workers: redis[s]://[:password@]host:port/db "
                             f"(default {settings.BROKER_URL.default}).")(f)


@cli.command()
@click.argument("prompts", type=click.Path(dir_okay=False))
@out_option("Output folder the workers share, or s3://bucket/prefix.")
@click.option("--job-id", default=None,
              help="Name the job (default: a new time-stamped id). Same id = skip done documents.")
@setting_option("-m", "--model", setting=settings.MODEL,
                help="Checkpoint directory (as the workers see it), built-in name, or hub id.")
@dtype_option
@backend_option
@click.option("-b", "--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Documents per chunk, one Celery task; a worker streams the documents of the chunks it holds "
                   "through one slot pool, so a chunk's documents need not wait for each other.")
@output_options
@broker_option
@click.option("-w", "--wait", is_flag=True, help="Show progress until the job ends.")
@param_options
@friendly_errors
def submit(prompts, out, job_id, model, dtype, backend, batch_size, formats, self_contained, results, s3_endpoint_url,
           broker_url, wait, **params):
    """Send a job to the Celery workers and print its id.

    The whole of PROMPTS is checked first, as by `dreamgen run`; a bad file is rejected and nothing is
    queued. Workers run the job on their own device (see `dreamgen worker`). They receive the prompts
    themselves, but must be able to write --out (a shared folder or S3) and read any input images at
    the same paths, through their own S3 endpoint, in the buckets and folders their settings allow
    (DREAMGEN_WORKER_S3_WRITE, DREAMGEN_WORKER_S3_READ, DREAMGEN_WORKER_INPUT_DIRS); --s3-endpoint-url is
    this command's own.

    \b
    Examples:
        dreamgen submit examples/prompts.jsonl --out s3://my-bucket/articles
        dreamgen submit topics.txt --steps 30 --out /shared/out --wait
        JOB=$(dreamgen submit topics.txt --out /shared/out) && dreamgen status $JOB --watch
    """
    from dreamgen.distributed.broker import connect
    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig

    connect(broker_url)  # a down broker answers in a second, before Celery's imports
    from dreamgen.workers.dispatch import send_chunks

    config = JobConfig(prompts=prompts, out=out, job_id=job_id, model=model, defaults=given_params(params),
                       batch_size=batch_size, formats=formats, self_contained=self_contained,
                       endpoint_url=s3_endpoint_url, dtype=dtype, backend=backend, results=results or "none")
    job = submit_job(config, send_chunks, broker_url)
    click.echo(job)
    if wait:
        report = watch_job(job, broker_url)
        print_job_report(report)
        if report.status == "cancelled":
            sys.exit(1)


JOB_QUEUES = (GPU_QUEUE, LIGHT_QUEUE)  # a job's chunks, its finalizing: `status` says when nobody consumes one


def watch_job(job: str, broker_url: str | None, out: str | None = None, endpoint_url: str | None = None,
              poll_s: float = 0.5):
    """A progress bar over the job's counts until it ends; Ctrl-C stops watching, not the job. Returns the last
    report."""
    import time

    from dreamgen.distributed.status import job_status
    from dreamgen.jobs.progress import DocumentProgress

    report = job_status(job, broker_url, out, endpoint_url, queues=JOB_QUEUES)
    warned = set()  # each "no worker is consuming" once; again only if a worker came and went meanwhile
    try:
        with DocumentProgress(log_console(stderr=True), transient=True) as progress:
            progress.start(f"job {job}: {report.total} documents", report.total, report.done + report.failed)
            while True:
                for note in set(report.no_worker) - warned:
                    click.echo(f"Warning: {note}", err=True)
                warned = set(report.no_worker)
                progress.update(total=report.total, completed=report.done + report.failed,
                                note=f"{report.failed} failed · {_chunk_line(report)}")
                if report.final:
                    break
                time.sleep(poll_s)
                report = job_status(job, broker_url, out, endpoint_url, queues=JOB_QUEUES)
    except KeyboardInterrupt:
        click.echo(f"Stopped watching; the job goes on. Follow it with: dreamgen status {job} --watch", err=True)
        sys.exit(130)
    return report


def _chunk_line(report) -> str:
    chunks = ", ".join(f"{n} {state}" for state, n in sorted(report.chunks.items()))
    return report.status + (f" · chunks: {chunks}" if chunks else "")


def print_job_report(report) -> None:
    from dreamgen.clock import utc_text
    from dreamgen.distributed.status import redelivery_by

    click.echo(f"Job {report.id}: {report.status}")
    cut = f" ({report.context_full} stopped at the context limit)" if report.context_full else ""
    pending = f"{report.pending} pending"
    if report.status == "cancelled" and report.pending:  # not waiting for anything: say what finishes them
        pending = f"{report.pending} cancelled (resume with: dreamgen retry {report.id}" \
                  + (f" --out {report.out}" if report.source == "storage" else "") + ")"
    click.echo(f"  documents: {report.done} done{cut}, {report.failed} failed, {pending}, {report.total} in all")
    if report.chunks:
        click.echo("  chunks: " + ", ".join(f"{n} {state}" for state, n in sorted(report.chunks.items())))
    for chunk in report.running:
        click.echo(f"    {chunk['chunk']} on {chunk['worker']}: {chunk['done'] + chunk['skipped']}/{chunk['total']} "
                   f"done, {chunk['failed']} failed (attempt {chunk['attempt']})")
    for chunk in report.lost:  # issue 16: a killed worker's chunk is not "running" forever
        click.echo(f"    {chunk['chunk']} lost: {chunk['worker']} stopped renewing its lock (last news "
                   f"{utc_text(chunk['updated'])}); Redis hands it to another worker by "
                   f"{utc_text(redelivery_by(chunk))} at the latest")
    if report.lost_queue:
        click.echo(f"  {report.lost_queue}")
    for note in report.no_worker:
        click.echo(f"  {note}")
    if report.error:
        click.echo(f"  error: {report.error}")
    if report.failures:
        click.echo("  failures:" + (f" (first {len(report.failures)})" if report.failed > len(report.failures) else ""))
        for doc_id, error in sorted(report.failures.items()):
            click.echo(f"    {doc_id}: {error}")
    if report.finished:
        click.echo(f"  finished: {report.finished}")
    if report.location:
        click.echo(f"  open: {report.location}")
    if report.resume:
        click.echo(f"  resume with: {report.resume}")


@cli.command()
@click.argument("job")
@click.option("--watch", is_flag=True, help="Refresh until the job ends.")
@click.option("-o", "--out", default=None, help="The job's output (folder or s3://...), to read its job.json once "
                                                "its record in Redis has expired.")
@s3_endpoint_option
@broker_option
@friendly_errors
def status(job, watch, out, s3_endpoint_url, broker_url):
    """Show where a job stands: documents done and failed, chunks by state, failures, where to open it.

    \b
    Examples:
        dreamgen status job-20261128-101500-3fa9c1
        dreamgen status job-20261128-101500-3fa9c1 --watch
        dreamgen status job-20261001-080000-1b2c3d --out s3://my-bucket/articles
    """
    from dreamgen.distributed.status import job_status

    if watch:
        report = watch_job(job, broker_url, out, s3_endpoint_url, poll_s=1.0)
    else:
        report = job_status(job, broker_url, out, s3_endpoint_url, queues=JOB_QUEUES)
    print_job_report(report)


@cli.command()
@click.argument("job")
@broker_option
@friendly_errors
def cancel(job, broker_url):
    """Cancel a job: running chunks stop at their next step, queued chunks generate nothing.

    Documents already stored stay; `dreamgen retry JOB` finishes the rest later.

    \b
    Example:
        dreamgen cancel job-20261128-101500-3fa9c1
    """
    from dreamgen.distributed.status import cancel_job

    report = cancel_job(job, broker_url)
    click.echo(f"Cancelling job {report.id}: {report.done} documents done, {report.pending} will not run "
               f"(cancelled; resume with: dreamgen retry {report.id}). Follow it with: dreamgen status {report.id} "
               "--watch")


@cli.command()
@click.argument("job")
@click.option("-o", "--out", default=None, help="The job's output, if its record in Redis has expired.")
@s3_endpoint_option
@broker_option
@friendly_errors
def retry(job, out, s3_endpoint_url, broker_url):
    """Queue again the documents of an ended job that are not done: those that failed, and those a cancel
    skipped. Done documents are never generated again. The job's prompt file must still be there.

    \b
    Example:
        dreamgen retry job-20261128-101500-3fa9c1
    """
    from dreamgen.distributed.submit import retry_job
    from dreamgen.workers.dispatch import send_chunks

    count = retry_job(job, send_chunks, broker_url, out, s3_endpoint_url)
    if count:
        click.echo(f"Re-queued {count} documents of job {job}.")
    else:
        click.echo(f"Nothing to retry: every document of job {job} is done.")


@cli.group(cls=NounGroup)
def jobs():
    """Distributed jobs: `dreamgen jobs` lists the recent ones (see also status, cancel, retry).

    \b
    Example:
        dreamgen jobs --limit 5
    """


@jobs.command("list")
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(min=1), help="How many jobs.")
@broker_option
@friendly_errors
def jobs_list(limit, broker_url):
    """List recent distributed jobs, newest first, with their state.

    \b
    Example:
        dreamgen jobs --limit 5
    """
    from dreamgen.distributed.status import list_jobs

    found = list_jobs(broker_url, limit)
    if not found:
        click.echo(f"No jobs (records expire after a week; see {settings.JOB_TTL.name}).")
        return
    print_table(("JOB", "STATUS", ">DONE", ">FAILED", ">TOTAL", "CREATED"),
                [(r.id, r.status, r.done, r.failed, r.total, r.created or "") for r in found])


@cli.command()
@click.option("--gpus", default=None, metavar="0,1",
              help="GPUs to use: one worker process per GPU, pinned with CUDA_VISIBLE_DEVICES.")
@click.option("-c", "--concurrency", default=None, type=click.IntRange(min=1),
              help="threads pool: chunk tasks a process holds at once, sharing its slot pool (default 3); "
                   "prefork: processes, each with its own copy of the model (default 1).")
@click.option("--slots", default=None, type=click.IntRange(min=1),
              help="Documents in flight per process (default: the device's).")
@click.option("-Q", "--queues", default=f"{GPU_QUEUE},{LIGHT_QUEUE}", show_default=True,
              help=f"Queues to consume: {GPU_QUEUE} (generation), {LIGHT_QUEUE} (finalizing, schedules).")
@click.option("-n", "--name", default="dreamgen", show_default=True,
              help="Node name prefix; give each worker on one machine its own.")
@setting_option("-m", "--model", setting=settings.MODEL,
                help="Model to load at start (jobs asking for another one load theirs).")
@dtype_option
@setting_option("--device", setting=settings.WORKER_DEVICE, help="Device without --gpus: cpu, cuda or cuda:N.")
@click.option("-P", "--pool", type=click.Choice(POOLS), default="threads", show_default=True,
              help="threads: one slot pool across the chunks a process holds; prefork: one chunk at a time per "
                   "process, with hard time limits and a dead process's chunk handed back at once; solo: neither.")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              help="Celery's log level: DEBUG, INFO, WARNING, ERROR.")
@click.option("--events/--no-events", default=True, show_default=True,
              help="Send task events (sent, started, succeeded, ...) for celery events, Flower and Prometheus "
                   "exporters.")
@click.option("--dry-run", is_flag=True, help="Print the commands and exit.")
@broker_option
@friendly_errors
def worker(gpus, concurrency, slots, queues, name, model, dtype, device, pool, loglevel, events, dry_run, broker_url):
    """Start the Celery workers of this machine: one process per GPU, or one on the CPU.

    Each process loads the model once, after it starts, and keeps it for every chunk. Stop with Ctrl-C
    (running chunks finish first).

    \b
    Examples:
        dreamgen worker                       # CPU: one process for both queues
        dreamgen worker --gpus 0,1            # one process per GPU, and one for the light queue
        dreamgen worker --gpus 0 --model /models/dreamllm-7b --dtype fp16
    """
    from dreamgen.workers.launcher import plan_workers, run_workers

    gpu_list = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    plan = plan_workers(gpu_list, [q.strip() for q in queues.split(",") if q.strip()], concurrency, name, model,
                        dtype, device, broker_url, pool, loglevel, slots, events)
    if dry_run:
        for process in plan:
            click.echo(process.describe())
        return
    sys.exit(run_workers(plan, echo=lambda line: click.echo(line, err=True)))


@cli.command()
@click.option("-s", "--schedule", "schedule_file", required=True, type=click.Path(dir_okay=False),
              help="The schedules file (YAML).")
@click.option("--state", default=None, help="Beat's state file (default: DREAMGEN_HOME/beat-schedule).")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              help="Celery's log level: DEBUG, INFO, WARNING, ERROR.")
@broker_option
@friendly_errors
def beat(schedule_file, state, loglevel, broker_url):
    """Run Celery beat with the schedules of a file: each firing submits one job. Run one beat only.

    The file is checked whole first (names, cron strings, prompts, parameters).

    \b
    Example:
        dreamgen beat --schedule schedules.yaml
    """
    from dreamgen.workers.beat import run_beat

    run_beat(schedule_file, broker_url, state, loglevel)


@cli.group(cls=NounGroup)
def schedules():
    """Scheduled jobs: a schedules.yaml of named cron entries, each a prompt file or inline prompts, an output
    and parameters (the format: README, "Schedules"; examples/schedules.yaml). `dreamgen beat` fires them.
    `dreamgen schedules FILE` is `dreamgen schedules list FILE`; `dreamgen schedule ...` is the old name.

    \b
    Example:
        dreamgen schedules examples/schedules.yaml
    """


@schedules.command("list")
@click.argument("schedule_file", type=click.Path(dir_okay=False))
@click.option("-n", "--count", default=3, show_default=True, type=click.IntRange(min=1),
              help="Fire times to show per schedule.")
@friendly_errors
def schedule_list(schedule_file, count):
    """Check a schedules file and show each schedule's next fire times (UTC).

    \b
    Example:
        dreamgen schedules list schedules.yaml
    """
    from dreamgen.distributed.schedules import load_schedules, next_fire_times

    for entry in load_schedules(schedule_file):
        source = entry.prompts if isinstance(entry.prompts, str) else f"{len(entry.prompts)} inline prompts"
        click.echo(f"{entry.name}  '{entry.cron}'  {source} -> {entry.out}")
        times = next_fire_times(entry, count)
        click.echo("  next: " + ", ".join(f"{t:%Y-%m-%d %H:%M}Z" for t in times))


# ------------------------------------------------------------------------------------------------ train
@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override optim.steps.")
@click.option("--output-dir", default=None, help="Override output_dir.")
@click.option("--fresh", is_flag=True, help="Delete the run's checkpoints, final model and log, and start over.")
@friendly_errors
def train(config, steps, output_dir, fresh):
    """Train a DreamLLM (stage: igpt) or a VAE for one (stage: vae) as the YAML file CONFIG says.

    Checkpoints go to the config's output_dir, and a stopped run goes on from the last one. The finished
    model is OUTPUT_DIR/final, in the released layout: give it to --model.

    \b
    Examples:
        dreamgen train configs/shapes-vae.yaml
        dreamgen train configs/shapes.yaml --steps 200 --output-dir runs/try
        dreamgen generate "Write about a red circle" --model runs/try/final
    """
    import os

    from dreamgen.training import load_config
    from dreamgen.training import train as run_training
    from dreamgen.training.progress import TrainProgress

    overrides = {"optim.steps": steps} if steps else {}
    if output_dir:
        overrides["output_dir"] = os.path.abspath(output_dir)  # relative to here, not to the config
    cfg = load_config(config, overrides)
    with TrainProgress() as progress:
        result = run_training(cfg, on_event=progress.event, resume=not fresh)
    losses = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k in TrainProgress.LOSS_KEYS)
    click.echo(f"Trained {result.steps} steps in {result.seconds:.0f}s ({losses}).")
    click.echo(f"Model: {result.output}")


# ------------------------------------------------------------------------------------------------ eval
@cli.command("eval")
@model_options
@click.option("-n", "--prompts", "count", default=40, show_default=True, type=click.IntRange(min=1),
              help="How many held-out prompts per split.")
@click.option("--split", "splits", type=click.Choice(["combos", "phrasings", "pairs"]), multiple=True,
              default=("combos", "phrasings", "pairs"), show_default=True,
              help="combos: shapes of colour-kind pairs never seen in training, in the first five verbs; "
                   "phrasings: training pairs asked in phrasings and verbs never seen in training; pairs: two "
                   "shapes, each asked its own size (and often place), in those phrasings. Repeat for several.")
@click.option("--ablate", "ablations", type=click.Choice(["none", "queries", "condition"]), multiple=True,
              default=("none",), show_default=True,
              help="Cut a path from text to pictures: queries (zero the dream queries), condition (zero the "
                   "condition projector). Repeat for several rows.")
@click.option("-b", "--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Documents generated together in lockstep.")
@click.option("--prompt-seed", type=click.IntRange(min=0), default=None,
              help="Draw each split's prompts with this seed, not the split's own: a validation set, for choosing "
                   "settings (such as --guidance) without looking at the eval's prompts.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report (every document) as JSON.")
@param_options
@friendly_errors
def eval_command(model, dtype, device, count, splits, ablations, batch_size, prompt_seed, as_json, **params):
    """Measure whether a model follows its prompt and draws what its text says, on the shapes world's held-out
    prompts.

    A pixel checker reads each picture's colour, shape, size, position and background; the text before it
    names what it should show. Reports pictures whose attributes match the text, documents that are well
    formed (one picture per shape asked for, each after its description, ending with </s>) and documents
    whose text follows the prompt (names the colours and kinds asked for, in order).

    \b
    Examples:
        dreamgen eval
        dreamgen eval --split phrasings --ablate none --ablate queries --ablate condition
        dreamgen eval --model tiny-random -n 10 --steps 20 --scheduler ddim
        dreamgen eval -n 200 --prompt-seed 1001 --guidance 2
    """
    from dreamgen.jobs.progress import DocumentProgress
    from dreamgen.model.loader import load_model
    from dreamgen.params import GenerationParams
    from dreamgen.shapes.dataset import eval_prompts
    from dreamgen.shapes.evaluation import ablate, evaluate

    gen_params = GenerationParams(**given_params(params))
    prompt_sets = {split: eval_prompts(count, split, seed=prompt_seed) for split in dict.fromkeys(splits)}
    reports = []
    for ablation in dict.fromkeys(ablations):
        loaded = ablate(load_model(model, dtype=dtype, device=device), ablation)
        for split, prompts in prompt_sets.items():
            with DocumentProgress(log_console(stderr=True)) as progress:  # stderr: --json output stays clean
                progress.start(f"eval {model}, {split}, ablation {ablation}: {len(prompts)} prompts", len(prompts),
                               note="0 images")
                images = []

                def seen(doc, score):
                    images.append(len(doc.images))
                    progress.update(advance=1, note=f"{sum(images)} images")

                reports.append(evaluate(loaded, prompts, gen_params, batch_size=batch_size, ablation=ablation,
                                        on_document=seen, split=split))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in reports], indent=2))
        return
    columns = ("follows_prompt", "colour", "shape", "size", "position", "size_asked", "position_asked",
               "colour_asked", "background", "well_formed")
    header = "".join(f"{c.replace('_', ' '):>15}" for c in columns)
    click.echo(f"{'model':<14}{'split':<11}{'ablation':<10}{'docs':>5}{'images':>7}{header}")
    for report in reports:
        s = report.summary()
        click.echo(f"{s['model'][:13]:<14}{s['split']:<11}{s['ablation']:<10}{s['documents']:>5}{s['images']:>7}"
                   + "".join(f"{100 * s[c]:>14.1f}%" for c in columns))
    used = reports[0].params  # the same for every row; guidance as resolved (the model's own unless given)
    said = [used["scheduler"], f"{used['steps']} steps", f"guidance {used['guidance']}"]
    if used.get("guidance_until") not in (None, 1):
        said[-1] += f" through {used['guidance_until']:g} of the steps"
    if used.get("cache_interval") not in (None, 1):
        said.append(f"cache interval {used['cache_interval']}" + (
            f" through {used['cache_until']:g} of the steps" if used.get("cache_until") not in (None, 1) else ""))
    click.echo(f"({', '.join(said)}" + (f"; prompts drawn with seed {prompt_seed})" if prompt_seed is not None else ")"))


def main():
    cli()


if __name__ == "__main__":
    main()
