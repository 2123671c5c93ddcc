"""Where the tests' files are, for the processes they start. serve looks
for a handler ("recorder:on_packet") where `python -m` would, its working
directory then PYTHONPATH, so the tests start it in HANDLERS (and may add
a folder of their own to PYTHONPATH)."""

import os

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)  # the repository
HANDLERS = os.path.join(TESTS, "handlers")
EXAMPLES = os.path.join(ROOT, "examples")
