"""Jobs in one process: what a job is, where its files go, and running it.

    spec.py     JobConfig (job.json), the checks before anything is written, JobSummary (light)
    output.py   the job folder's layout over a Storage, export_job; DocumentFolder (`dreamgen generate`)
    hugo.py     a stored job as a Hugo section (export --hugo)
    progress.py the progress bar of run, status --watch and eval
    storage.py  a local folder or an S3 bucket behind one interface
    png.py      PNG files that carry their generation parameters
    run.py      run_job and generate_documents: the one room here that imports generation (and torch)

May import prompts, model, generation, engines, exporters and the shared vocabulary; never distributed or workers.
"""
