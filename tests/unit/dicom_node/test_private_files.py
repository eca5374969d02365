"""Patient data and secrets are created 0640/0600 (folders 0750) whatever the umask: checked under umask 000, the
loosest there is, for the helpers and for the spool that writes received instances with them."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.private_files import (
    SECRET_FILE_MODE,
    create_private_file,
    looser_than_private,
    make_private_dirs,
    restrict_umask,
)
from dicom_node.intake.spool import InstanceLocation, SpoolWriter


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_folder_made_is_0750_and_existing_ones_are_left_alone(tmp_path, open_umask):
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    made = make_private_dirs(existing / "a" / "b" / "c")
    assert made.is_dir()
    assert [mode(p) for p in (existing / "a", existing / "a" / "b", made)] == [0o750] * 3
    assert mode(existing) == 0o755
    make_private_dirs(made)  # already there: nothing to do


def test_a_private_file_is_created_once_with_its_mode(tmp_path, open_umask):
    path = tmp_path / "home" / "m3edge.db"
    assert create_private_file(path, SECRET_FILE_MODE)
    assert (mode(path), mode(path.parent)) == (0o600, 0o750)
    path.write_bytes(b"data")
    assert not create_private_file(path)  # an existing file is neither truncated nor changed
    assert path.read_bytes() == b"data" and mode(path) == 0o600


def test_restrict_umask_adds_no_group_write_and_nothing_for_others(tmp_path, open_umask):
    previous = restrict_umask()
    try:
        assert previous == 0
        (tmp_path / "f").write_text("x")
        (tmp_path / "d").mkdir()
        assert (mode(tmp_path / "f"), mode(tmp_path / "d")) == (0o640, 0o750)
    finally:
        os.umask(0)


@pytest.mark.parametrize(("bits", "is_dir", "loose"), [
    (0o600, False, False), (0o640, False, False), (0o644, False, True), (0o660, False, True),
    (0o700, True, False), (0o750, True, False), (0o755, True, True), (0o770, True, True),
])
def test_looser_than_private_names_what_grants_too_much(tmp_path, bits, is_dir, loose):
    path = tmp_path / "entry"
    path.mkdir() if is_dir else path.write_text("x")
    path.chmod(bits)
    assert looser_than_private(path) == (bits if loose else None)


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed-files", "named-temporary-files"])
def test_the_spool_writes_0640_files_in_0750_folders_under_any_umask(tmp_path, open_umask, unnamed):
    spool = SpoolWriter(tmp_path / "spool", unnamed_files=unnamed)
    spool.prepare()
    first = spool.write(InstanceLocation("1.2.3", "1.2.3.4", "1.2.3.4.5"), [b"first"])
    conflict = spool.write(InstanceLocation("1.2.3", "1.2.3.4", "1.2.3.4.5"), [b"other bytes"])
    assert conflict.conflict
    folders = [tmp_path / "spool", *(p for p in (tmp_path / "spool").rglob("*") if p.is_dir())]
    files = [spool.path_of(first.relative_path), spool.path_of(conflict.relative_path)]
    assert {mode(p) for p in folders} == {0o750}, [(str(p), oct(mode(p))) for p in folders]
    assert {mode(p) for p in files} == {0o640}


def test_the_pipelines_work_and_result_files_are_private_under_any_umask(tmp_path, open_umask):
    from dicom_node.private_files import write_atomically

    target = tmp_path / "home" / "work" / "1.2.3" / "run-1" / "input.npz"
    with write_atomically(target) as handle:
        handle.write(b"arrays")
    folders = [tmp_path / "home" / "work", target.parent.parent, target.parent]
    assert [mode(p) for p in folders] == [0o750] * 3 and mode(target) == 0o600


def test_an_atomic_write_that_fails_leaves_the_old_content_and_no_temporary_file(tmp_path):
    from dicom_node.private_files import write_atomically, write_bytes_atomically

    target = write_bytes_atomically(tmp_path / "rules.yaml", b"old")
    with pytest.raises(RuntimeError, match="half-way"):
        with write_atomically(target, text=True) as handle:
            handle.write("new, but never finished")
            raise RuntimeError("half-way")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["rules.yaml"]
    with write_atomically(target, text=True, durable=False) as handle:
        handle.write("new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["rules.yaml"]
