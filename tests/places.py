"""Where the tests' files are, for the processes they start: serve imports
its handlers ("recorder:on_packet") from HANDLERS, so that folder goes on
every master's PYTHONPATH (its workers run `python -I` and inherit it only
through the master's configuration)."""

import os

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)  # the repository
HANDLERS = os.path.join(TESTS, "handlers")
EXAMPLES = os.path.join(ROOT, "examples")
