#!/usr/bin/env bash
# Installs the host tools that `make image` and `make test` need, from Debian's
# packages, only when one is missing. Idempotent; safe to run on every build.
# Usage: image/deps.sh [build|image|vm|flash|integration|all]
set -euo pipefail

want=${1:-all}
# command -> Debian package that ships it
declare -A build_tools=(
  [strip]=binutils
)
declare -A image_tools=(
  [mmdebstrap]=mmdebstrap
  [mksquashfs]=squashfs-tools
  [mkfs.vfat]=dosfstools
  [mcopy]=mtools
  [sfdisk]=fdisk
  [mkfs.ext4]=e2fsprogs
  [objcopy]=binutils
  [strip]=binutils
  [zstd]=zstd
  [xz]=xz-utils
  [arch-test]=arch-test
  [/usr/sbin/veritysetup]=cryptsetup-bin
)
declare -A vm_tools=(
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-img]=qemu-utils
  [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
  [socat]=socat
  [udhcpc]=udhcpc
)
# make flash: the data partition's offset, the bundle into its ext4, the
# kernel's cached copy dropped before the read-back.
declare -A flash_tools=(
  [sfdisk]=fdisk
  [debugfs]=e2fsprogs
  [blockdev]=util-linux
)
declare -A integration_tools=(
  [losetup]=mount
  [sfdisk]=fdisk
  [debugfs]=e2fsprogs
  [mkfs.ext4]=e2fsprogs
  [blockdev]=util-linux
  [ip]=iproute2
  [nft]=nftables
  [openssl]=openssl
  [tinyproxy]=tinyproxy
  [danted]=dante-server
  [openvpn]=openvpn
  [nmap]=nmap
)

missing=()
check() {
  local -n tools=$1
  local t
  for t in "${!tools[@]}"; do
    if [[ $t == /* ]]; then [[ -e $t ]] && continue
    else command -v "$t" >/dev/null 2>&1 && continue; fi
    missing+=("${tools[$t]}")
  done
}
case $want in
  build) check build_tools ;;
  image) check image_tools ;;
  vm) check image_tools; check vm_tools ;;
  flash) check flash_tools ;;
  integration) check integration_tools ;;
  all) check build_tools; check image_tools; check vm_tools; check flash_tools; check integration_tools ;;
  *) echo "deps.sh: unknown set '$want' (expected build, image, vm, flash, integration or all)" >&2; exit 2 ;;
esac
((${#missing[@]} == 0)) && exit 0

mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if [[ $(id -u) != 0 ]]; then
  echo "deps.sh: missing packages: ${missing[*]}; run as root or: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "==> installing build dependencies: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Parallel make targets (or two checkouts on one machine) may install at the same
# time: wait for dpkg's lock instead of failing on it.
apt=(apt-get -o DPkg::Lock::Timeout=600)
# An apt index that was never fetched makes every install fail; refresh once.
"${apt[@]}" update -qq
"${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
