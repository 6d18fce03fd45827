"""`python -m ember.runtime ARTIFACT ...`: run or self-check an artifact with the runtime alone.

For the machine an artifact lands on, where the compiler (and click, onnx) may be absent:

    python -m ember.runtime digits.ember --self-check
    python -m ember.runtime digits.ember --inputs x.npz -o y.npz [--threads 4]

Errors are one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ember.runtime import RUNTIME_ERRORS, load


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _main(args: argparse.Namespace) -> int:
    model = load(args.artifact, threads=args.threads)
    if args.self_check:
        rows = model.self_check()
        for row in rows:
            print(f"  {row.text()}")
        ok = all(row.ok for row in rows)
        print("self-check passed" if ok else "self-check FAILED: outputs differ from the reference beyond tolerance")
        return 0 if ok else 1
    outputs = model(**_npz(args.inputs))
    if args.output is not None:
        np.savez(args.output, **outputs)
        print(f"wrote {args.output}")
    else:
        for name, value in outputs.items():
            print(f"{name}: {value.dtype}{list(value.shape)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m ember.runtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact", type=Path)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--self-check", action="store_true", help="run the bundled sample against the bundled reference")
    mode.add_argument("--inputs", type=Path, help=".npz keyed by input name")
    parser.add_argument("-o", "--output", type=Path, help="write the outputs to this .npz")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every CPU this process may use)")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except (*RUNTIME_ERRORS, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return getattr(err, "exit_code", 1)


if __name__ == "__main__":
    sys.exit(main())
