"""Jobs on Celery workers behind Redis: the broker, job records, chunk bodies, submit, status, schedules.

    broker.py     the Redis URL, a client that fails fast, the key namespace
    records.py    a job's live state in Redis (JobRecord, RecentJobs)
    chunks.py     what a chunk task carries (JobWire) and how a worker runs it (run_chunk)
    submit.py     submit_job, retry_job, finalize_job (the sender of chunk tasks is passed in)
    status.py     job_status, list_jobs, cancel_job
    schedules.py  the schedules file and the firing of one schedule
    cron.py       cron strings as cron reads them (@daily, either-day rule), and the schedule beat runs

May import jobs and everything below it; never workers/ (the Celery process side, which imports this).
"""
