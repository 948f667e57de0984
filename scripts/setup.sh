#!/usr/bin/env bash
# The one place that installs what nbdts needs on a fresh Debian machine (Node 20, as root).
# `npm test`, `npm run demo` and `npm run bench` all call it first; each step is skipped when
# its result is already there, so a second run costs about a second.
#
#   bash scripts/setup.sh           system packages, npm packages, build
#   bash scripts/setup.sh --bench   the same, plus bench/'s own npm packages (peers)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

# 1. System packages: the servers the tests start, the reference clients, the FUSE and disk tools.
#    command -> Debian package that provides it.
declare -A NEED=(
  [nbdkit]=nbdkit
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbdfuse]=libnbd-bin
  [qemu-nbd]=qemu-utils
  [qemu-img]=qemu-utils
  [nbd-server]=nbd-server
  [fusermount3]=fuse3
  [fio]=fio
  [certtool]=gnutls-bin
  [psktool]=gnutls-bin
  [openssl]=openssl
  [mkfs.ext4]=e2fsprogs
  [losetup]=mount
  [setpriv]=util-linux
  [tmux]=tmux
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" != 0 ]; then
    log "missing system packages: ${missing[*]}"
    log "run as root, or: sudo apt-get install -y ${missing[*]}"
    exit 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The kernel side of FUSE. /dev/fuse exists on these machines; load the module where it is not.
if [ ! -e /dev/fuse ] && [ "$(id -u)" = 0 ]; then
  modprobe fuse 2>/dev/null || log "no /dev/fuse and no fuse module: mounts will fail"
fi

# 2. npm packages, reinstalled only when the lockfile changed.
lock_hash() { sha256sum "$1/package-lock.json" | cut -d' ' -f1; }
npm_install() {
  local dir=$1
  local stamp="$dir/node_modules/.nbdts-lock-hash"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(lock_hash "$dir")" ]; then
    log "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    lock_hash "$dir" >"$stamp"
  fi
}
npm_install .

# 3. Build dist/ (the CLI and the package entry points) when a source file is newer than it.
if [ ! -f dist/.build-stamp ] || [ -n "$(find src tsconfig.json tsconfig.build.json package.json scripts/bundle-cli.ts -newer dist/.build-stamp -print -quit)" ]; then
  log "building dist/"
  rm -rf dist
  ./node_modules/.bin/tsc -p tsconfig.build.json
  node --import tsx scripts/bundle-cli.ts
  chmod +x dist/cli/bin.cjs dist/cli/main.js
  touch dist/.build-stamp
fi

if [ "${1:-}" = --bench ]; then
  npm_install bench
fi
