"""The agent's own Python, mounted read-only into every sandbox.

The agent must never be found through the sandbox's ``PATH``, nor run on the sandbox's own
interpreter: root inside can replace ``/usr/bin/python3`` (or put a ``python3`` earlier in
``PATH``) and, after the next start, a program of its choice would be PID 1 speaking for the
agent. So the server bundles the interpreter it runs on — the binary, the shared libraries it
and its extension modules link against, its dynamic loader, and the standard library without
tests, GUI toolkits and site-packages — into ``<data dir>/agent-runtime/<hash>``, and the driver
bind-mounts that read-only at ``RUNTIME_MOUNT``. The agent starts through the bundled loader
with ``--library-path``, so neither the image's libc nor its Python is used (which is also what
lets the agent run in images with no Python, an old one, or musl).

The sandbox can still influence a process it shares a kernel namespace with (``/etc/
ld.so.preload`` is read by every glibc loader, and root inside could ``ptrace`` its PID 1): the
agent is inside the sandbox's trust boundary by design, and the server treats whatever it says
as hostile input (``agentclient``, ``services/agents.py``).
"""

from __future__ import annotations

import compileall
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voidrun_server.drivers.namespace.zygote import ZygoteConfig

RUNTIME_MOUNT = "/opt/voidrun/runtime"
LAYOUT = 2  # bumped when the bundle's contents change: 2 added bin/cat
# The sandbox's PID 1 when the agent is forked by the zygote (agent/zygote.py): it reads the
# life line until the agent, its only writer, is gone. From the host, like the interpreter.
HOLDER = "cat"
# Parts of the standard library the agent never imports: left out of every sandbox.
SKIPPED = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "pydoc_data",
        "__pycache__",
    }
)
_LDD_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")


@dataclass(frozen=True)
class Runtime:
    """Where the bundle is on the host, and the agent's interpreter argv inside a sandbox."""

    host_dir: Path
    loader: str  # file name of the dynamic loader in lib/
    version: str  # "3.11"

    def python_argv(self, mount: str = RUNTIME_MOUNT) -> list[str]:
        return self.program_argv("python3", mount)

    def holder_argv(self, mount: str = RUNTIME_MOUNT) -> list[str]:
        return self.program_argv(HOLDER, mount)

    def program_argv(self, program: str, mount: str) -> list[str]:
        """A program of the bundle, started through the bundle's own loader and libraries."""
        return [
            f"{mount}/lib/{self.loader}",
            "--library-path",
            f"{mount}/lib",
            f"{mount}/bin/{program}",
        ]


def _shared_libraries(binary: Path) -> list[Path]:
    """Absolute paths of everything ``binary`` loads (its loader included), via ldd."""
    out = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    return [Path(m.group(1)) for line in out.splitlines() if (m := _LDD_LINE.match(line))]


def _fingerprint(executable: Path, stdlib: Path) -> str:
    digest = hashlib.sha256()
    for path in (executable, stdlib / "os.py"):
        st = path.stat()
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    digest.update(sys.version.encode())
    digest.update(f"layout {LAYOUT}".encode())
    return digest.hexdigest()[:16]


def install_runtime(root: Path) -> Runtime:
    """Build (once per interpreter) and return the bundle under ``root``; world-readable."""
    executable = Path(os.path.realpath(sys.executable))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dynload = Path(sysconfig.get_config_var("DESTSHARED") or stdlib / "lib-dynload")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = root / _fingerprint(executable, stdlib)
    libs = _shared_libraries(executable)
    loader = next((lib for lib in libs if lib.name.startswith("ld-")), None)
    if loader is None:
        raise RuntimeError(f"cannot find the dynamic loader of {executable} (is it static?)")
    runtime = Runtime(target, loader.name, version)
    if (target / "bin" / "python3").is_file():
        return runtime
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
    try:
        _populate(staging, executable, stdlib, dynload, version, libs)
        os.rename(staging, target)
    except OSError:
        if not (target / "bin" / "python3").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return runtime


def _populate(
    dest: Path, executable: Path, stdlib: Path, dynload: Path, version: str, libs: list[Path]
) -> None:
    (dest / "bin").mkdir()
    shutil.copy2(executable, dest / "bin" / "python3")
    holder = shutil.which(HOLDER, path="/usr/bin:/bin")
    if holder is None:
        raise RuntimeError(f"{HOLDER} (coreutils) not found on the host")
    shutil.copy2(holder, dest / "bin" / HOLDER)
    libs = [*libs, *_shared_libraries(Path(holder))]
    lib_dest = dest / "lib" / f"python{version}"

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIPPED or n.startswith("config-")}

    shutil.copytree(stdlib, lib_dest, ignore=ignore, symlinks=False)
    if not (lib_dest / "lib-dynload").is_dir() and dynload.is_dir():
        shutil.copytree(dynload, lib_dest / "lib-dynload")
    needed = {lib.name: lib for lib in libs}
    for module in (lib_dest / "lib-dynload").glob("_tkinter*.so"):
        module.unlink()  # a GUI toolkit: would drag in X11
    for module in (lib_dest / "lib-dynload").glob("*.so"):
        needed.update((lib.name, lib) for lib in _shared_libraries(module))
    gcc_s = Path("/lib/x86_64-linux-gnu/libgcc_s.so.1")  # glibc dlopens it for thread exit
    for candidate in (gcc_s, Path("/usr/lib64/libgcc_s.so.1"), Path("/lib64/libgcc_s.so.1")):
        if candidate.is_file():
            needed.setdefault(candidate.name, candidate)
            break
    for name, path in needed.items():
        shutil.copy2(path, dest / "lib" / name)  # follows symlinks: the real file
    compileall.compile_dir(str(lib_dest), quiet=1, workers=1)
    for dirpath, _dirs, files in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for name in files:
            full = os.path.join(dirpath, name)
            os.chmod(full, 0o755 if os.access(full, os.X_OK) else 0o644)
    os.chmod(dest / "bin" / "python3", 0o755)


def zygote_config(runtime: Runtime, agent_dir: Path) -> ZygoteConfig:
    """How the namespace driver runs the agent's fork server on this runtime (host paths) and
    what the agent it forks finds inside the sandbox (mount paths)."""
    from voidrun_server.agent_launch import DEFAULT_MOUNT_DIR, PACKAGE_NAME
    from voidrun_server.drivers.namespace.zygote import ZygoteConfig

    stdlib = f"{RUNTIME_MOUNT}/lib/python{runtime.version}"
    return ZygoteConfig(
        home=str(runtime.host_dir),
        agent_dir=str(agent_dir),
        holder=tuple(runtime.holder_argv()),
        sys_path=(f"{DEFAULT_MOUNT_DIR}/{PACKAGE_NAME}", stdlib, f"{stdlib}/lib-dynload"),
    )
