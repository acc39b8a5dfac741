"""``/init`` of the guest's initramfs (busybox sh): from bare kernel to the agent as PID 1.

Disks are found by their virtio serial (``/sys/block/vd*/serial``), not by probe order:

* ``vr-image``  the image, read-only ext4 (shared by every VM of that image)
* ``vr-data``   the sandbox's own ext4 disk: ``upper/`` and ``work/`` of the overlay
* ``vr-agent``  the agent package and its interpreter, read-only, mounted at /opt/voidrun
* ``vr-config`` this boot's settings, NUL-padded text: the hostname, the environment as one
  JSON line, then the agent's argv, one argument per line

The root is overlay(lower=image, upper=sandbox disk); ``switch_root`` then execs the agent,
which serves the virtio-serial port named ``org.voidrun.agent`` and, as ``--control``, the
port ``org.voidrun.control`` (the driver's own way in while a client holds the first). Dirty pages are written back
within about a second (``commit=1``, short dirty expiry) because a stop ends the VM from
outside. Any failure prints ``VOIDRUN_INIT_FAILED`` on the console and powers off.
"""

# ruff: noqa: E501 (the shell script keeps its natural lines)
from __future__ import annotations

__all__ = ["CONTROL_PORT_NAME", "INIT_SCRIPT", "PORT_NAME"]

PORT_NAME = "org.voidrun.agent"
CONTROL_PORT_NAME = "org.voidrun.control"

INIT_SCRIPT = r"""#!/bin/busybox sh
export PATH=/bin
/bin/busybox --install -s /bin
fail() { echo "VOIDRUN_INIT_FAILED: $*"; poweroff -f; }
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev || fail mounts
grep -qw voidrun.probe /proc/cmdline && { echo VOIDRUN_PROBE_OK; poweroff -f; }
for m in virtio_ring virtio virtio_mmio virtio_console virtio_blk overlay; do
  insmod /lib/modules/$m.ko || fail "insmod $m"
done
disk() { for d in /sys/block/vd*; do
  [ "$(cat $d/serial 2>/dev/null)" = "$1" ] && [ -b /dev/${d##*/} ] && { echo /dev/${d##*/}; return 0; }
done; return 1; }
port() { for p in /sys/class/virtio-ports/vport*; do
  [ "$(cat $p/name 2>/dev/null)" = "$1" ] && [ -c /dev/${p##*/} ] && { echo /dev/${p##*/}; return 0; }
done; return 1; }
i=0
until IMG=$(disk vr-image) && DATA=$(disk vr-data) && AGENT=$(disk vr-agent) && CONF=$(disk vr-config) && PORT=$(port @PORT@) && CTRL=$(port @CONTROL@); do
  i=$((i+1)); [ $i -gt 3000 ] && fail "devices did not appear"; sleep 0.01
done
echo 100 > /proc/sys/vm/dirty_expire_centisecs
echo 50 > /proc/sys/vm/dirty_writeback_centisecs
mkdir -p /lower /data /newroot
mount -t ext4 -o ro,noload $IMG /lower || fail "image disk"
mount -t ext4 -o rw,noatime,commit=1 $DATA /data || fail "sandbox disk"
mkdir -p /data/upper /data/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/data/upper,workdir=/data/work /newroot || fail overlay
mkdir -p /newroot/opt/voidrun /newroot/run/voidrun /newroot/dev /newroot/proc /newroot/sys /newroot/tmp
mount -t ext4 -o ro,noload $AGENT /newroot/opt/voidrun || fail "agent disk"
mount -t tmpfs -o mode=0700,size=1m tmpfs /newroot/run/voidrun || fail "run tmpfs"
tr -d '\000' < $CONF > /config
{ read -r HOST; read -r ENVJSON; } < /config
printf '%s\n' "$ENVJSON" > /newroot/run/voidrun/env.json
tail -n +3 /config > /argv
hostname "$HOST"
ifconfig lo 127.0.0.1 netmask 255.0.0.0 up
set --
while IFS= read -r a; do set -- "$@" "$a"; done < /argv
set -- "$@" --serial "$PORT" --control "$CTRL" --env-file /run/voidrun/env.json
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount --move /dev /newroot/dev && mount --move /proc /newroot/proc && mount --move /sys /newroot/sys || fail "move mounts"
exec switch_root /newroot "$@"
""".replace("@PORT@", PORT_NAME).replace("@CONTROL@", CONTROL_PORT_NAME)
