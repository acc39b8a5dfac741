"""Running plain commands without the shell, with exactly what the shell would have run.

Every command is ``bash -c COMMAND``. For a simple command (one line of plain words, no
expansions, redirections or operators) bash parses the line, finds the program on ``PATH`` and
``exec``s it in place of itself ("one-shot" mode: the pid, session and process group stay the
shell's). :meth:`DirectExec.plan` does that parsing and lookup itself and returns the
``execve`` bash would make (program, argv, environment), or None whenever it is not sure: then
the command goes through the shell exactly as before. bash's start-up is most of the cost of a
short exec, and it is skipped.

What bash adds to the environment of a program it runs this way (verified on bash 5.2): ``PWD``
(the inherited value if it names the working directory, else the physical path), ``SHLVL``
(unchanged, ``0`` if unset: one-shot exec undoes bash's own increment) and ``_`` (the path it
executed). Variables bash reads or rewrites itself (``BASH_ENV``, ``SHELLOPTS``, ``IFS``,
``BASH_FUNC_*``…) send the command through the shell. The one difference left is the order of
the variables in ``environ`` (bash's is that of its hash table), so ``env`` and ``printenv``
always go through the shell.

In an image with no shell at all (distroless), :func:`without_shell` runs a plain command the
same way (its program found on ``PATH``, the environment as given), so a program can still be
run; anything that needs a shell is refused with an error that says which shell to install.

Only for bash of a verified version (asked once, in the background, on the first plain
command; until it answers, commands go through the shell) and only when the program is found
on a ``PATH`` of absolute directories. If the ``execve`` fails (a script without ``#!``, a
vanished file), the command runs through the shell, which reports or handles it as usual.
"""

from __future__ import annotations

import os

from . import log
from .fdio import Fd
from .paths import find_program
from .tasks import Task

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping

    from .context import AgentContext

PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:,+@%=- ")
# bash's builtins and reserved words: a first word among them is bash's to run.
SHELL_WORDS = frozenset(
    ". : [ alias bg bind break builtin caller cd command compgen complete compopt continue"
    " declare dirs disown echo enable eval exec exit export false fc fg getopts hash help history"
    " jobs kill let local logout mapfile popd printf pushd pwd read readarray readonly return set"
    " shift shopt source suspend test times trap true type typeset ulimit umask unalias unset wait"
    " if then else elif fi case esac for select while until do done in function time { } ! [[ ]]"
    " coproc".split()
)
# Builtins whose program behaves the same while no argument looks like an option.
SAME_AS_PROGRAM = frozenset({"echo", "true", "false"})
# Programs that print their environment, whose order only bash decides.
SHOWS_ENVIRONMENT = frozenset({"env", "printenv"})
# Environment variables bash acts on or rewrites for its children.
BASH_VARIABLES = frozenset(
    "IFS PS1 PS2 PS3 PS4 ENV SHELLOPTS POSIXLY_CORRECT EXECIGNORE OPTIND OPTERR OPTARG PPID UID"
    " EUID GROUPS RANDOM SRANDOM LINENO SECONDS EPOCHREALTIME EPOCHSECONDS FUNCNAME DIRSTACK"
    " PIPESTATUS OLDPWD CDPATH GLOBIGNORE TIMEFORMAT TMOUT HOSTNAME HOSTTYPE MACHTYPE OSTYPE"
    " PROMPT_COMMAND".split()
)
BASH_PREFIXES = ("BASH", "COMP_", "HIST", "READLINE")
VERIFIED_BASH = ("5.2.",)  # BASH_VERSION prefixes whose behaviour the rules above follow
PROBE = 'printf %s "$BASH_VERSION"'


class DirectExec:
    """Per agent: whether this sandbox's shell is a verified bash, and the plans."""

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.shell = ctx.shell or ""
        # None: not asked yet (or asking); then True or False for the agent's life.
        self.verified: bool | None = None if os.path.basename(self.shell) == "bash" else False
        self._probe: Task[None] | None = None

    def plan(
        self, command: str, env: Mapping[str, str], cwd: str
    ) -> tuple[str, list[str], dict[str, str]] | None:
        """``(program, argv, environment)`` to ``execve`` instead of ``shell -c command``."""
        if self.verified is not True:
            if self.verified is None and self._probe is None:
                self._probe = Task(self._ask_version())
            return None
        argv = plain_words(command)
        if argv is None:
            return None
        name = argv[0]
        if "=" in name or name in SHOWS_ENVIRONMENT:
            return None
        if name in SHELL_WORDS and not (
            name in SAME_AS_PROGRAM and not any(arg.startswith("-") for arg in argv[1:])
        ):
            return None
        if "/" in name:
            program: str | None = name  # run as given, relative to the working directory
        else:
            program = find_program(name, env.get("PATH", ""))
        if program is None:
            return None
        child_env = bash_environment(env, cwd, program)
        return None if child_env is None else (program, argv, child_env)

    async def _ask_version(self) -> None:
        read_end, write_end = os.pipe()
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        reader: Fd | None = None
        answer = b""
        try:
            try:
                pid, _ = self.ctx.start(
                    [self.shell, "-c", PROBE], self.shell, {}, "/", (devnull, write_end, devnull)
                )
                self.ctx.finished(pid)  # nothing to wait for or kill: it prints and exits
            finally:
                os.close(write_end)
                os.close(devnull)
            reader = Fd(read_end)
            while len(answer) < 200:
                chunk = await reader.read_some(200)
                if not chunk:
                    break
                answer += chunk
        except Exception as exc:  # then plain commands keep going through the shell
            log.warning("cannot ask %s for its version: %s", self.shell, exc)
        finally:
            if reader is not None:
                reader.close()
            else:
                os.close(read_end)
        version = answer.decode("ascii", "replace")
        self.verified = version.startswith(VERIFIED_BASH)


def without_shell(command: str, env: Mapping[str, str]) -> tuple[str, list[str]] | None:
    """``(program, argv)`` for a plain command in an image without a shell, or None when the
    command needs one (shell syntax, a builtin, an assignment) or its program is not on PATH."""
    argv = plain_words(command)
    if argv is None or "=" in argv[0] or argv[0] in SHELL_WORDS - SAME_AS_PROGRAM:
        return None
    if "/" in argv[0]:
        return argv[0], argv
    program = find_program(argv[0], env.get("PATH", ""))
    return None if program is None else (program, argv)


def plain_words(command: str) -> list[str] | None:
    """The words of a command made only of plain characters and spaces, else None."""
    if not PLAIN.issuperset(command):
        return None
    words = command.split()
    return words or None


def bash_environment(env: Mapping[str, str], cwd: str, program: str) -> dict[str, str] | None:
    """The environment bash 5.2 gives a program it runs in one-shot mode, or None if unsure."""
    for name in env:
        if name in BASH_VARIABLES or name.startswith(BASH_PREFIXES) or not _identifier(name):
            return None
    level = env.get("SHLVL")
    if level is None:
        level = "0"
    elif level.isascii() and level.isdigit() and int(level) < 999:
        level = str(int(level))
    else:
        return None  # bash would warn, or parse it in ways not worth copying
    pwd = env.get("PWD")
    if pwd is None or not pwd.startswith("/") or not _same_file(pwd, cwd):
        if os.path.realpath(cwd) != cwd:
            return None  # bash would use getcwd(); not guessed through symlinks
        pwd = cwd
    child = dict(env)
    child["PWD"] = pwd
    child["SHLVL"] = level
    child["_"] = program
    return child


def _identifier(name: str) -> bool:
    return (
        name.isascii()
        and (name[:1].isalpha() or name[:1] == "_")
        and name.replace("_", "a").isalnum()
    )


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
