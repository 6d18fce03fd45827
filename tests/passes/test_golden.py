"""Golden dumps: the default pipeline on tiny models gives exactly the committed dumps.

Regenerate with `python tools/golden.py` when a pass is meant to change them (and read the
diff: it is the review of what the change does to real graphs).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import golden


def test_default_pipeline_matches_golden_dumps(tmp_path: Path) -> None:
    golden.write(tmp_path)
    diff = golden.compare(golden.GOLDEN, tmp_path)
    assert not diff, "".join(diff[:200])
