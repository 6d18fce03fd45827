#!/usr/bin/env bash
# Everything ember needs to cross-compile for aarch64 boards and prove the result under qemu,
# on a Debian/Ubuntu x86_64 machine, without touching the system's Python:
#
#   1. apt: qemu-user-static (qemu-aarch64-static), g++-aarch64-linux-gnu (the cross linker), file
#   2. an aarch64 sysroot (the "board"): Debian's arm64 python3.11 + python3-numpy + libstdc++,
#      downloaded through a private apt configuration and unpacked with dpkg-deb -x
#   3. the aarch64 TVM runtime: apache-tvm / apache-tvm-ffi manylinux aarch64 wheels through the
#      host's pip (nothing executed), unpacked without libtvm_compiler.so
#
# Everything lands under ${EMBER_ARM_HOME:-~/.cache/ember/arm}; the script is idempotent and
# takes a second or two when everything is cached. Prints the paths at the end.
#   bash tools/arm_setup.sh            # set up (or check) everything
#   EMBER_ARM_HOME=/tmp/arm bash tools/arm_setup.sh
set -euo pipefail

HOME_ARM="${EMBER_ARM_HOME:-$HOME/.cache/ember/arm}"
PY="${PYTHON:-python3}"
TVM_VERSION="0.27.0.post1"
FFI_VERSION="0.1.14.post1"
# The sysroot's Python is the one the wheels' binary parts are for.
BOARD_PY="3.11"
# Extra CPython versions whose tvm_ffi extension the bundle also carries (boards with 3.10/3.12).
EXTRA_PYS="${EMBER_ARM_EXTRA_PYTHONS:-3.10 3.12}"
SUITE="bookworm"
MIRROR="${EMBER_ARM_MIRROR:-http://deb.debian.org/debian}"

mkdir -p "$HOME_ARM"
say() { printf '== arm_setup: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- 1. host tools -------------------------------------------------------------------------
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v file >/dev/null || need+=(file)  # the tests check `file` says aarch64
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    say "qemu-aarch64-static and aarch64-linux-gnu-g++ present"
fi

# --- 2. aarch64 sysroot with python3.11 + numpy ----------------------------------------------
SYSROOT="$HOME_ARM/sysroot"
if [ -x "$SYSROOT/usr/bin/python$BOARD_PY" ] && [ -f "$SYSROOT/.ember-complete" ]; then
    say "sysroot cached: $SYSROOT"
else
    say "building the aarch64 sysroot (python$BOARD_PY, numpy) in $SYSROOT"
    APT="$HOME_ARM/apt"
    mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/etc/preferences.d" "$APT/etc/apt.conf.d"
    : > "$APT/status"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    signed=""
    [ -f "$keyring" ] && signed="signed-by=$keyring"
    cat > "$APT/sources.list" <<EOF
deb [arch=arm64 $signed] $MIRROR $SUITE main
deb [arch=arm64 $signed] $MIRROR $SUITE-updates main
EOF
    cat > "$APT/apt.conf" <<EOF
APT::Architecture "arm64";
APT::Architectures { "arm64"; };
Dir::State "$APT";
Dir::State::Lists "$APT/lists";
Dir::State::status "$APT/status";
Dir::Cache "$APT/cache";
Dir::Etc::SourceList "$APT/sources.list";
Dir::Etc::SourceParts "$APT/none";
Dir::Etc::Preferences "$APT/etc/preferences";
Dir::Etc::PreferencesParts "$APT/etc/preferences.d";
Dir::Etc::Parts "$APT/etc/apt.conf.d";
Debug::NoLocking "true";
EOF
    # As root, apt drops to the _apt user for downloads, which cannot write under $HOME.
    if [ "$(id -u)" = 0 ]; then echo 'APT::Sandbox::User "root";' >> "$APT/apt.conf"; fi
    export APT_CONFIG="$APT/apt.conf"
    apt-get update -qq
    apt-get install -y -qq --download-only --no-install-recommends \
        "python$BOARD_PY" python3-numpy libstdc++6 >/dev/null
    unset APT_CONFIG
    rm -rf "$SYSROOT.tmp"
    mkdir -p "$SYSROOT.tmp"
    for deb in "$APT"/cache/archives/*.deb; do
        dpkg-deb -x "$deb" "$SYSROOT.tmp"
    done
    # Debian's python3-numpy lives in dist-packages, which python3.11 finds through its
    # site.py patch; nothing else to configure. Mark complete only once fully unpacked.
    touch "$SYSROOT.tmp/.ember-complete"
    rm -rf "$SYSROOT"
    mv "$SYSROOT.tmp" "$SYSROOT"
    rm -f "$APT"/cache/archives/*.deb
fi

# Debian points libblas.so.3 / liblapack.so.3 at their implementation through
# update-alternatives, which dpkg-deb -x does not run: make those links (idempotent).
for alt in blas lapack; do
    for lib in "$SYSROOT"/usr/lib/aarch64-linux-gnu/"$alt"/lib*.so.*; do
        [ -e "$lib" ] || continue
        link="$SYSROOT/usr/lib/aarch64-linux-gnu/$(basename "$lib")"
        [ -e "$link" ] || ln -s "$alt/$(basename "$lib")" "$link"
    done
done

# --- 3. aarch64 TVM runtime wheels -----------------------------------------------------------
WHEELS="$HOME_ARM/wheels"
SITE="$HOME_ARM/site-packages"
mkdir -p "$WHEELS"
pyver_nodot() { echo "${1/./}"; }
fetch_wheels() {  # fetch_wheels PYVER PACKAGES...
    local v="$1"; shift
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --python-version "$v" --implementation cp \
        --abi "cp$(pyver_nodot "$v")" --abi abi3 --abi none --dest "$WHEELS" "$@"
}
have_wheel() { compgen -G "$WHEELS/$1" >/dev/null; }
if have_wheel "apache_tvm-$TVM_VERSION-*aarch64*.whl" && have_wheel "apache_tvm_ffi-$FFI_VERSION-cp$(pyver_nodot $BOARD_PY)-*aarch64*.whl"; then
    say "wheels cached: $WHEELS"
else
    say "downloading aarch64 wheels (apache-tvm $TVM_VERSION, apache-tvm-ffi $FFI_VERSION)"
    fetch_wheels "$BOARD_PY" "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$FFI_VERSION"
fi
# tvm_ffi's one pure-Python dependency.
if ! have_wheel "typing_extensions-*.whl"; then
    fetch_wheels "$BOARD_PY" "typing-extensions>=4.13"
fi
for v in $EXTRA_PYS; do
    if ! have_wheel "apache_tvm_ffi-$FFI_VERSION-cp$(pyver_nodot "$v")-*aarch64*.whl" && [ ! -f "$WHEELS/.no-ffi-$v" ]; then
        say "downloading the apache-tvm-ffi $FFI_VERSION wheel for CPython $v (aarch64)"
        fetch_wheels "$v" "apache-tvm-ffi==$FFI_VERSION" || { say "no apache-tvm-ffi wheel for CPython $v; skipped"; touch "$WHEELS/.no-ffi-$v"; }
    fi
done

if [ -f "$SITE/.ember-complete" ] && [ -f "$SITE/typing_extensions.py" ]; then
    say "aarch64 runtime cached: $SITE"
else
    say "unpacking the aarch64 runtime into $SITE (without libtvm_compiler.so)"
    rm -rf "$SITE.tmp"
    mkdir -p "$SITE.tmp"
    "$PY" - "$WHEELS" "$SITE.tmp" "$TVM_VERSION" "$FFI_VERSION" "$(pyver_nodot $BOARD_PY)" <<'EOF'
import sys, zipfile
from pathlib import Path
wheels, site, tvm_v, ffi_v, board = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
chosen = sorted(wheels.glob(f"apache_tvm-{tvm_v}-*aarch64*.whl"))[:1]
ffi = sorted(wheels.glob(f"apache_tvm_ffi-{ffi_v}-*aarch64*.whl"))
main = [w for w in ffi if f"-cp{board}-" in w.name][:1]
chosen += sorted(wheels.glob("typing_extensions-*.whl"))[-1:]
for wheel in chosen + main:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.filename.endswith("libtvm_compiler.so"):
                continue  # the compiler: the board never needs it (proves runtime-only works)
            z.extract(info, site)
            mode = info.external_attr >> 16
            if mode:
                (site / info.filename).chmod(mode & 0o777)
# other CPython versions: only their tvm_ffi extension module (core.cpython-3XX-...so / abi3)
for wheel in ffi:
    if wheel in main:
        continue
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if name.startswith("tvm_ffi/core.") and name.endswith(".so") and not (site / name).exists():
                z.extract(info, site)
EOF
    touch "$SITE.tmp/.ember-complete"
    rm -rf "$SITE"
    mv "$SITE.tmp" "$SITE"
fi

say "ready"
echo "EMBER_ARM_SYSROOT=$SYSROOT"
echo "EMBER_ARM_RUNTIME=$SITE"
echo "qemu: $(command -v qemu-aarch64-static)  cross linker: $(command -v aarch64-linux-gnu-g++)"
