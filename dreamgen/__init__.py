"""dreamgen: illustrated documents in bulk, written and painted by DreamLLM.

The public face. Light on purpose: `import dreamgen` imports no torch, so the CLI answers --help at once; each
name below is imported on first use.

    load_model(name_or_path, dtype, device)    a DreamLLM from a checkpoint directory, built-in name or hub id
    Generator(model).generate([DocumentRequest(prompt)])    illustrated Documents
    run_job(JobConfig(prompts, out))            a whole prompt file, in this process
    submit_job(JobConfig(...), send_chunks)     the same job for Celery workers (send_chunks: workers.dispatch)

The rooms, lowest first (each may import only the ones before it): errors, settings, clock; document, params,
ids; prompts; model; generation; engines; jobs, training; distributed, shapes. See each package's docstring.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "load_model": "dreamgen.model.loader",
    "Generator": "dreamgen.generation.generator",
    "DocumentRequest": "dreamgen.generation.generator",
    "GenerationParams": "dreamgen.params",
    "Document": "dreamgen.document",
    "JobConfig": "dreamgen.jobs.spec",
    "run_job": "dreamgen.jobs.run",
    "submit_job": "dreamgen.distributed.submit",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dreamgen' has no attribute {name!r}")
