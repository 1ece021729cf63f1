"""``python -m job``: the same CLI as the ``trainjob`` console script."""

from job.cli import run

run()
