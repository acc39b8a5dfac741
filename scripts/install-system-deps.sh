#!/usr/bin/env bash
# Install the Debian packages the server (runtime) or the test suite (test) needs, if missing.
# Safe to run repeatedly: it only calls apt-get when something is actually missing.
set -euo pipefail
tier=${1:-runtime}

missing=()
need() { # need PACKAGE CHECK-COMMAND...
  local pkg=$1; shift
  "$@" >/dev/null 2>&1 || missing+=("$pkg")
}
python=${PYTHON:-python3}
need python3-venv "$python" -c "import ensurepip, venv"
need debootstrap command -v debootstrap
need e2fsprogs command -v mkfs.ext4
need util-linux command -v losetup
need ca-certificates test -d /etc/ssl/certs
need nftables command -v nft            # sandbox egress rules (docs/network.md)
need dnsmasq command -v dnsmasq        # the sandboxes' resolver
need iproute2 command -v ip
need skopeo command -v skopeo          # registry pulls (docs/images.md, Registries)
need runsc command -v runsc            # the gvisor driver (docs/isolation.md)
need qemu-system-x86 command -v qemu-system-x86_64   # the microvm driver (docs/microvm.md)
need busybox-static dpkg -s busybox-static           # its guest initramfs (static /bin/busybox)
need npm command -v npm                # the dashboard's third-party assets (dashboard/package.json)
if [ "$tier" = test ]; then
  need postgresql bash -c 'ls -d /usr/lib/postgresql/*/bin/initdb'
  need docker-registry command -v docker-registry   # the loopback registry tests pull from
  need apache2-utils command -v htpasswd            # its users
  need chromium command -v chromium                 # the browser tier (tests/browser)
fi

[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "Missing system packages: ${missing[*]}" >&2
  echo "Install them (e.g. sudo apt-get install ${missing[*]}) and run make again." >&2
  exit 1
fi
echo "Installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
