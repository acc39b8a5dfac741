"""The sandbox's seccomp policy, compiled once to BPF for ``bwrap --seccomp FD``.

Namespaces and a user-namespace-only capability set already stop most escapes; seccomp removes
the kernel attack surface that remains reachable *without* privileges, or that is only guarded
by a capability check we do not want to rely on alone. The policy is a deny list on top of
default-allow (like Docker's, but shorter), so ordinary software, compilers, language runtimes
and package managers run unchanged. bubblewrap loads the filter after its own mount setup, right
before it executes the agent, so the ``mount``/``pivot_root`` it needs are not affected.

Denied with EPERM unless noted:

* kernel and boot: kexec_load, kexec_file_load, init_module, finit_module, delete_module,
  reboot, swapon, swapoff, acct, iopl, ioperm, syslog, quotactl, quotactl_fd, nfsservctl,
  lookup_dcookie, vhangup, settimeofday, clock_settime, clock_adjtime
* eBPF, perf, keyrings, userfaultfd: bpf, perf_event_open, keyctl, add_key, request_key,
  userfaultfd
* file handles (the classic container escape): open_by_handle_at, name_to_handle_at
* other processes' memory and fds: ptrace, process_vm_readv, process_vm_writev, kcmp,
  pidfd_getfd, process_madvise
* mounts (old and new API): mount, umount2, pivot_root, fsopen, fsconfig, fsmount, fspick,
  move_mount, open_tree, mount_setattr
* nested user namespaces: unshare and clone with CLONE_NEWUSER, setns; clone3 -> ENOSYS (its
  flags live in memory a filter cannot read, and ENOSYS makes libc fall back to clone)
* io_uring_setup/enter/register -> ENOSYS (a large, frequently exploited surface; runtimes such
  as libuv fall back to the thread pool on ENOSYS)
* socket(AF_VSOCK): vsock is not network-namespaced, so it would bypass the loopback-only net.

Syscalls of foreign ABIs (32-bit x86, x32) hit libseccomp's bad-arch action and kill the
process, so the deny list cannot be bypassed through ``int 0x80``.
"""

from __future__ import annotations

import errno
import functools
import os

from voidrun_server.drivers.base import DriverUnavailableError

__all__ = ["DENIED_SYSCALLS", "ENOSYS_SYSCALLS", "compile_bpf", "open_bpf_fd"]

CLONE_NEWUSER = 0x10000000
AF_VSOCK = 40

DENIED_SYSCALLS: tuple[str, ...] = (
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "iopl",
    "ioperm",
    "syslog",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    "lookup_dcookie",
    "vhangup",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "setns",
)
ENOSYS_SYSCALLS: tuple[str, ...] = (
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
)


@functools.lru_cache(maxsize=1)
def compile_bpf() -> bytes:
    """The BPF program (cached: building it costs ~0.2 ms, loading it per sandbox costs 0)."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:  # OSError: libseccomp.so.2 missing
        raise DriverUnavailableError(
            f"seccomp support unavailable: {exc}",
            hint="pip install pyseccomp==0.1.2 and apt-get install libseccomp2",
        ) from exc

    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    eperm, enosys = sc.ERRNO(errno.EPERM), sc.ERRNO(errno.ENOSYS)

    def deny(action: int, name: str, *args: object) -> None:
        try:
            flt.add_rule(action, name, *args)
        except OSError:
            pass  # name unknown to this libseccomp/arch (e.g. quotactl_fd on old versions)

    for name in DENIED_SYSCALLS:
        deny(eperm, name)
    for name in ENOSYS_SYSCALLS:
        deny(enosys, name)
    newuser = sc.Arg(0, sc.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)
    deny(eperm, "unshare", newuser)
    deny(eperm, "clone", newuser)  # x86_64: flags are the first argument
    deny(eperm, "socket", sc.Arg(0, sc.EQ, AF_VSOCK))

    fd = os.memfd_create("voidrun-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as f:
        flt.export_bpf(f)
        f.seek(0)
        program = f.read()
    if not program or len(program) % 8:
        raise DriverUnavailableError("libseccomp exported an invalid BPF program")
    return program


def open_bpf_fd(program: bytes) -> int:
    """A readable fd holding ``program`` for ``bwrap --seccomp``; the caller closes it."""
    if len(program) > 60000:  # must fit the pipe buffer, or this write would block
        raise ValueError("seccomp program too large for a pipe")
    r, w = os.pipe()
    try:
        os.write(w, program)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return r
