"""BENCHMARKS.md's ARM section from the ARM tests' measurements.

    bash tools/arm_setup.sh
    EMBER_ARM_REPORT=/tmp/arm.jsonl EMBER_REQUIRE_ARM=1 pytest -q -m arm tests/arm
    python tools/arm_report.py /tmp/arm.jsonl [--write]

Prints the section (bundle sizes, compile and emulated run times, errors against onnxruntime
per preset and model); --write replaces the text between `<!-- arm:begin -->` and
`<!-- arm:end -->` in BENCHMARKS.md (appends the section when the markers are absent).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- arm:begin -->", "<!-- arm:end -->"
MODELS = ("digits_cnn", "mobile_attn")


def _qemu_version() -> str:
    try:
        out = subprocess.run(["qemu-aarch64-static", "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "?"
    return out.split("version")[1].split()[0] if "version" in out else "?"


def section(rows: list[dict]) -> str:
    """The markdown section (markers included)."""
    by = {(r["kind"], r["preset"], r["model"]): r for r in rows if "preset" in r}
    presets = list(dict.fromkeys(r["preset"] for r in rows if r.get("kind") == "run"))
    lines = [
        BEGIN,
        "## ARM (aarch64 boards, under emulation)",
        "",
        f"Command: `EMBER_ARM_REPORT=/tmp/arm.jsonl EMBER_REQUIRE_ARM=1 pytest -q -m arm tests/arm && "
        f"python tools/arm_report.py /tmp/arm.jsonl --write` (qemu {_qemu_version()} user mode on this "
        f"{platform.machine()} machine, sysroot Debian 12 arm64 python3.11 + numpy, TVM 0.27 runtime only).",
        "",
        "**Emulation proves ISA, linking and numbers, not speed**: qemu translates every aarch64",
        "instruction (roughly 10-20x slower than a board, differently for each instruction mix), so the",
        "times below only bound how long the tests take; measure on the board with `./run --repeat 20`.",
        "",
        "Models: `digits_cnn` (examples/, 1x1x8x8) and `mobile_attn` (tests/arm/arm_models.py: MobileNetV2-style",
        "blocks, one attention block, Softmax, TopK(3); 1x3x32x32). Errors: max |ember under qemu - onnxruntime",
        "on x86| over each model's float outputs on fresh random inputs (tolerance rtol 1e-3, atol 1e-4; TopK",
        "indices equal exactly). Bundle: `ember bundle` .tar.gz (artifact + aarch64 TVM runtime + tvm_ffi for",
        "CPython 3.10-3.12 + loader). Compile: `ember compile` including its run under qemu. Run: one",
        "`--inputs` process under qemu (start, import numpy and tvm_ffi, load, 1 warm-up + 3 timed + 1 call); per",
        "call: median of the 3 timed calls, one thread. Measured on a shared 2-vCPU machine under load: noisy.",
        "",
        "| preset | qemu core | model | bundle MB | unpacked MB | compile s | run s (process) | per call ms (emulated) | max abs error | self-check s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in presets:
        for model in MODELS:
            run, bundle, comp = by.get(("run", preset, model)), by.get(("bundle", preset, model)), by.get(("compile", preset, model))
            if run is None:
                continue
            err = max(v for k, v in run["max_abs"].items() if k != "top_indices")
            lines.append(
                f"| {preset} | {run['qemu_cpu']} | {model} | {bundle['bytes'] / 1e6:.2f} | {bundle['unpacked'] / 1e6:.2f} | "
                f"{comp['seconds']:.1f} | {run['wall_s']:.1f} | {run['median_ms']:.1f} | {err:.1e} | "
                f"{bundle['self_check_wall_s']:.1f} |" if bundle and comp else
                f"| {preset} | {run['qemu_cpu']} | {model} | | | | {run['wall_s']:.1f} | {run['median_ms']:.1f} | {err:.1e} | |")
    rules: dict[str, int] = {}
    for r in rows:
        if r.get("kind") == "compile":
            for name, count in (r.get("rules") or {}).items():
                rules[name] = rules.get(name, 0) + count
    if rules:
        lines += ["", "Schedule rules that took the kernels (all presets and models; `none`: TVM's default code): "
                      + ", ".join(f"{name} {count}" for name, count in sorted(rules.items(), key=lambda kv: -kv[1])) + "."]
    some = next((r for r in rows if r.get("kind") == "bundle"), None)
    if some:
        lines += ["", f"Board requirements recorded in every bundle: aarch64 Linux, glibc >= {some['glibc']}, CPython "
                      f"{' / '.join(some['python'])} with numpy >= 1.22."]
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="the JSON lines EMBER_ARM_REPORT collected")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]
    text = section(rows)
    print(text)
    if args.write:
        path = ROOT / "BENCHMARKS.md"
        old = path.read_text()
        if BEGIN in old and END in old:
            new = old[: old.index(BEGIN)] + text + old[old.index(END) + len(END):]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        path.write_text(new)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
