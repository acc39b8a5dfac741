"""Image builds take their Debian mirror from the host's apt sources (both formats)."""

from __future__ import annotations

from pathlib import Path

from voidrun_server.images.mirror import host_debian_mirror


def test_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    assert host_debian_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    assert host_debian_mirror("bookworm-security", tmp_path) == (
        "http://mirror.example/debian-security"
    )
    assert host_debian_mirror("trixie", tmp_path) is None


def test_one_line_sources_win_and_options_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [signed-by=/k.gpg arch=amd64] http://proxy.example:3142/debian bookworm main\n"
    )
    assert host_debian_mirror("bookworm", tmp_path) == "http://proxy.example:3142/debian"


def test_no_apt_config(tmp_path: Path) -> None:
    assert host_debian_mirror("bookworm", tmp_path / "missing") is None
