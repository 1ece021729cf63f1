"""``python -m bench``: the same entry point as ``make bench``; see ``bench.suite``."""

from bench.suite import main

raise SystemExit(main())
