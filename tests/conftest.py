import os
import sys

import pytest

# contract.py is imported as a plain module by the test files
sys.path.insert(0, os.path.dirname(__file__))


def missing_service(reason: str) -> None:
    """A test's outside service (Chromium, PostgreSQL, a mount) is absent: skip with the reason, fail under CI=true.

    ``tests/services.sh`` (run by the README's test command) installs and starts them where it can;
    CI must run every test, so there a missing service is a failure, not a skip.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: every test must run)")
    pytest.skip(reason)
