"""Atomic writes: all or nothing, and files a person (or another user) can open."""

import os
import stat

import pytest

from brainseg.fileio import write_atomic


def test_written_file_has_the_usual_mode_not_owner_only(tmp_path):
    old = os.umask(0o022)
    os.umask(old)
    path = tmp_path / "sub" / "mask.png"
    write_atomic(path, b"\x89PNG")
    assert path.read_bytes() == b"\x89PNG"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~old


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.csv"
    write_atomic(path, "old\n")
    with pytest.raises(TypeError):
        write_atomic(path, 12345)  # not str or bytes: fails while writing
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]
