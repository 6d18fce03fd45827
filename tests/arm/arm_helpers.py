"""ARM test helpers: skip-or-fail when tools are missing, and the measurement report.

(A helper module the tests import, not a conftest.py: a second conftest.py in the tree
would shadow `from conftest import ...` in other test folders.)

Tests that need qemu, the aarch64 sysroot or a cross linker skip when they are missing, and
fail instead under EMBER_REQUIRE_ARM=1 (CI, after `bash tools/arm_setup.sh`).
`EMBER_ARM_REPORT=FILE` makes the emulated tests append their measurements (JSON lines).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

REQUIRE = os.environ.get("EMBER_REQUIRE_ARM") == "1"


def unavailable(what: str) -> None:
    """Skip, or fail under EMBER_REQUIRE_ARM=1."""
    message = f"{what}; run `bash tools/arm_setup.sh`"
    if REQUIRE:
        pytest.fail(f"EMBER_REQUIRE_ARM=1 but {message}", pytrace=False)
    pytest.skip(message)


def report(**row: Any) -> None:
    """Append one measurement to $EMBER_ARM_REPORT (JSON lines), when set."""
    path = os.environ.get("EMBER_ARM_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
