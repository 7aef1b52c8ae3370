"""gunicorn's settings file (Procfile: `gunicorn -c config/gunicorn.conf.py ...`); the
web's other settings stay on its command line. gunicorn reads every top-level name
here as a setting: keep helpers underscored."""

import os as _os

from prometheus_client import multiprocess as _multiprocess


def child_exit(server, worker) -> None:  # noqa: ANN001  gunicorn's Arbiter and Worker
    """A web worker that ended (recycled, or killed) takes its live gauges (open
    streams) out of /metrics' sum; its counters stay counted (docs/metrics.md)."""
    if _os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(worker.pid)
