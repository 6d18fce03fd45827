"""ARM test fixtures: the emulator, the cross linker, and the builds shared by the tests.

Tests that need qemu, the aarch64 sysroot or a cross linker skip when they are missing, and
fail instead under EMBER_REQUIRE_ARM=1 (CI, after `bash tools/arm_setup.sh`).
`EMBER_ARM_REPORT=FILE` makes the emulated tests append their measurements (JSON lines).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from ember.targets.emulate import Emulator, find_emulator, missing_parts

REQUIRE = os.environ.get("EMBER_REQUIRE_ARM") == "1"


def unavailable(what: str) -> None:
    """Skip, or fail under EMBER_REQUIRE_ARM=1."""
    message = f"{what}; run `bash tools/arm_setup.sh`"
    if REQUIRE:
        pytest.fail(f"EMBER_REQUIRE_ARM=1 but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def emulator() -> Emulator:
    """qemu + sysroot + aarch64 TVM runtime, and a cross linker to build with."""
    emu = find_emulator()
    if emu is None:
        unavailable(f"no aarch64 emulation here (missing {missing_parts()})")
    if not any(shutil.which(n) for n in ("aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ld", "ld.lld")):
        unavailable("no aarch64 cross linker on PATH")
    return emu


def report(**row: Any) -> None:
    """Append one measurement to $EMBER_ARM_REPORT (JSON lines), when set."""
    path = os.environ.get("EMBER_ARM_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def arm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the session's models, artifacts and bundles."""
    return tmp_path_factory.mktemp("arm")
