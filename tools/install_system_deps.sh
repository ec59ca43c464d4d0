#!/usr/bin/env bash
# System packages for cross-compiling to ARM and for the emulated Raspberry Pi board:
# Debian's cross toolchains, the dynamically linked qemu-user (its -plugin option counts
# instructions), a host C compiler for that plugin, and the arm64 package lists that the
# board's set-up downloads its aarch64 Python from (apt-get download, no install), the armhf lists
# for the armv7 Python that tests a standalone library through ctypes under qemu-arm, and LLVM's
# tools for llvm-mca (the Cortex-A53 cycle estimates of `bench --count-instructions`).
# Idempotent: when everything is present it only checks and returns (well under a second).
set -euo pipefail

PACKAGES=(g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user gcc binfmt-support llvm)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
has_arm64=0
dpkg --print-foreign-architectures | grep -qx arm64 && has_arm64=1
has_armhf=0
dpkg --print-foreign-architectures | grep -qx armhf && has_armhf=1
# The arm64 (armhf) lists exist once apt-get update ran after the architecture was added.
arm64_lists=0
if [[ $has_arm64 == 1 && $has_armhf == 1 ]] && compgen -G "/var/lib/apt/lists/*binary-arm64_Packages*" >/dev/null \
        && compgen -G "/var/lib/apt/lists/*binary-armhf_Packages*" >/dev/null; then
    arm64_lists=1
fi

if [[ ${#missing[@]} == 0 && $arm64_lists == 1 ]]; then
    exit 0
fi

SUDO=""
if [[ $(id -u) != 0 ]]; then
    if command -v sudo >/dev/null; then
        SUDO="sudo"
    else
        echo "install_system_deps.sh: needs root (or sudo) to install: ${missing[*]:-arm64 package lists}" >&2
        exit 1
    fi
fi

echo "install_system_deps.sh: installing ${missing[*]:-} (and the arm64 package lists)"
[[ $has_arm64 == 1 ]] || $SUDO dpkg --add-architecture arm64
[[ $has_armhf == 1 ]] || $SUDO dpkg --add-architecture armhf
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
if [[ ${#missing[@]} != 0 ]]; then
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install_system_deps.sh: done"
