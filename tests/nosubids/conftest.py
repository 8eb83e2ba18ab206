"""tests/nosubids runs as a user without subordinate ids (scripts/test.sh, as root, creates
`sbnosub` and runs this directory as that user with SANDBOX_TEST_NOSUBIDS=1); in the main run,
as a user who has subordinate ids, it is not collected."""

from __future__ import annotations

import os

collect_ignore = [] if os.environ.get("SANDBOX_TEST_NOSUBIDS") == "1" else ["test_nosubids.py"]
