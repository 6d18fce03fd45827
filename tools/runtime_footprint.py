"""The thin runtime's footprint: MB on disk of what a deployment needs besides numpy.

    python tools/runtime_footprint.py [--write]

Copies the installed `tvm` package without the compiler (lib/libtvm_compiler.so, 3rdparty/,
src/, include/, web/), `tvm_ffi` and `ember.runtime` into a scratch directory, as
tests/runtime/test_runtime.py::test_runtime_works_without_the_compiler_library does, and
measures each piece (and a .tar.gz of all three). `--write` replaces the table between the
footprint markers in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- footprint:start -->", "<!-- footprint:end -->"
COMPILER_ONLY = ("libtvm_compiler.so", "3rdparty", "src", "include", "web", "__pycache__")


def _mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(p.stat().st_size for p in files) / 1e6


def measure() -> list[tuple[str, float, str]]:
    """(piece, MB, note) rows."""
    import tvm
    import tvm_ffi

    tvm_dir = Path(tvm.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(tvm_dir, site / "tvm", ignore=shutil.ignore_patterns(*COMPILER_ONLY))
        shutil.copytree(Path(tvm_ffi.__file__).parent, site / "tvm_ffi", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "runtime", site / "ember" / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
        libs = ", ".join(f"{p.name} {_mb(p):.2f}" for p in sorted((site / "tvm" / "lib").glob("*.so")))
        ffi_libs = ", ".join(f"{p.name} {_mb(p):.2f}" for p in sorted((site / "tvm_ffi").rglob("*.so")))
        archive = Path(tmp) / "runtime.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(site, arcname="site")
        rows = [
            ("`tvm` without the compiler", _mb(site / "tvm"), f"shared libraries: {libs}"),
            ("`tvm_ffi`", _mb(site / "tvm_ffi"), ffi_libs),
            ("`ember.runtime`", _mb(site / "ember"), ""),
            ("total", _mb(site), f"{_mb(archive):.1f} MB as .tar.gz"),
            ("for comparison: the full `tvm` install", _mb(tvm_dir), f"libtvm_compiler.so {_mb(tvm_dir / 'lib' / 'libtvm_compiler.so'):.1f}"),
        ]
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) the footprint table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args(argv)
    lines = ["| piece | MB on disk | notes |", "|---|---|---|"]
    lines += [f"| {name} | {mb:.2f} | {note} |" for name, mb, note in measure()]
    table = "\n".join(lines)
    print(table)
    if args.write:
        command = "python tools/runtime_footprint.py " + " ".join(argv if argv is not None else sys.argv[1:])
        bench_md = ROOT / "BENCHMARKS.md"
        text = bench_md.read_text()
        if START not in text:
            raise SystemExit(f"BENCHMARKS.md has no {START} marker")
        before, _, rest = text.partition(START)
        _, _, after = rest.partition(END)
        bench_md.write_text(f"{before}{START}\nCommand: `{command.strip()}`\n\n{table}\n{END}{after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
