"""Every libc function the power-loss recorder interposes, called once by a real program: the strict cut gives exactly
the expected tree; and with that one function left un-interposed (a mutant of the library), the outcome differs, so
these tests fail if the recorder ever stops recording an operation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.powerloss import PowerLossSimulator, RecordingMismatch, UnsupportedOperation, build_shim
from tests.support.powerloss.build import interposed_functions
from tests.support.powerloss.programs import run_program, write_tree_at

REFUSED = "refused"  # the cut raises UnsupportedOperation
MISMATCH = "mismatch"  # the cut raises RecordingMismatch

OPEN_DIR = "d = os.open('.', os.O_RDONLY | os.O_DIRECTORY)\n"
WRITE_AND_SYNC = "os.write(fd, b'x'); os.fsync(fd); fsync_dir()"
OPEN_OLD = "fd = os.open('f', os.O_RDWR)\n"
SUBSTITUTE_MMAP = (OPEN_OLD + "p = libc.{call}(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)\n"
                   "ctypes.memmove(p, b'mapped', 6); os.fsync(fd)")


@dataclass(frozen=True)
class Case:
    code: str
    expected: dict[str, bytes | None] | str
    baseline: dict[str, bytes | None] = field(default_factory=dict)


OLD = {"f": b"old"}

CASES: dict[str, Case] = {
    # opening: creation, truncation, O_TMPFILE
    "open": Case(f"fd = check(libc.open(b'f', os.O_WRONLY | os.O_CREAT, 0o644)); {WRITE_AND_SYNC}", {"f": b"x"}),
    "open64": Case(f"fd = create('f'); {WRITE_AND_SYNC}", {"f": b"x"}),
    "openat": Case(f"fd = check(libc.openat(AT_FDCWD, b'f', os.O_WRONLY | os.O_CREAT, 0o644)); {WRITE_AND_SYNC}",
                   {"f": b"x"}),
    "openat64": Case(OPEN_DIR + "fd = create('f', dir_fd=d); os.write(fd, b'x'); os.fsync(fd); os.fsync(d)",
                     {"f": b"x"}),
    "__open_2": Case("fd = check(libc.__open_2(b'f', os.O_WRONLY | os.O_TRUNC)); os.fsync(fd)", {"f": b""}, OLD),
    "__open64_2": Case("fd = check(libc.__open64_2(b'f', os.O_WRONLY | os.O_TRUNC)); os.fsync(fd)", {"f": b""},
                       OLD),
    "__openat_2": Case("fd = check(libc.__openat_2(AT_FDCWD, b'f', os.O_WRONLY | os.O_TRUNC)); os.fsync(fd)",
                       {"f": b""}, OLD),
    "__openat64_2": Case("fd = check(libc.__openat64_2(AT_FDCWD, b'f', os.O_WRONLY | os.O_TRUNC)); os.fsync(fd)",
                         {"f": b""}, OLD),
    "creat": Case(f"fd = check(libc.creat(b'f', 0o644)); {WRITE_AND_SYNC}", {"f": b"x"}),
    "creat64": Case(f"fd = check(libc.creat64(b'f', 0o644)); {WRITE_AND_SYNC}", {"f": b"x"}),
    # writing
    "write": Case(OPEN_OLD + "os.write(fd, b'new'); os.fsync(fd)", {"f": b"new"}, OLD),
    "pwrite": Case(OPEN_OLD + "check(libc.pwrite(fd, b'NE', 2, 1)); os.fsync(fd)", {"f": b"oNE"}, OLD),
    "pwrite64": Case(OPEN_OLD + "os.pwrite(fd, b'NE', 1); os.fsync(fd)", {"f": b"oNE"}, OLD),
    "writev": Case(OPEN_OLD + "os.writev(fd, [b'n', b'ew']); os.fsync(fd)", {"f": b"new"}, OLD),
    "pwritev": Case(OPEN_OLD + "v, n = iovecs(b'N', b'E'); check(libc.pwritev(fd, v, n, 1)); os.fsync(fd)",
                    {"f": b"oNE"}, OLD),
    "pwritev64": Case(OPEN_OLD + "v, n = iovecs(b'N', b'E'); check(libc.pwritev64(fd, v, n, 1)); os.fsync(fd)",
                      {"f": b"oNE"}, OLD),
    "pwritev2": Case(OPEN_OLD + "v, n = iovecs(b'N', b'E'); check(libc.pwritev2(fd, v, n, 1, 0)); os.fsync(fd)",
                     {"f": b"oNE"}, OLD),
    "pwritev64v2": Case(OPEN_OLD + "os.pwritev(fd, [b'N', b'E'], 1); os.fsync(fd)", {"f": b"oNE"}, OLD),
    "sendfile": Case(OPEN_OLD + "src = os.open('src', os.O_RDONLY); check(libc.sendfile(fd, src, None, 3)); "
                     "os.fsync(fd)", {"f": b"abc", "src": b"abc"}, {"f": b"old", "src": b"abc"}),
    "sendfile64": Case(OPEN_OLD + "src = os.open('src', os.O_RDONLY); os.sendfile(fd, src, None, 3); os.fsync(fd)",
                       {"f": b"abc", "src": b"abc"}, {"f": b"old", "src": b"abc"}),
    "copy_file_range": Case(OPEN_OLD + "src = os.open('src', os.O_RDONLY); os.copy_file_range(src, fd, 2, 0, 1); "
                            "os.fsync(fd)", {"f": b"oab", "src": b"abc"}, {"f": b"old", "src": b"abc"}),
    "splice": Case(OPEN_OLD + "r, w = os.pipe(); os.write(w, b'abc'); os.splice(r, fd, 3); os.fsync(fd)",
                   {"f": b"abc"}, OLD),
    # sizes
    "ftruncate": Case(OPEN_OLD + "check(libc.ftruncate(fd, 1)); os.fsync(fd)", {"f": b"o"}, OLD),
    "ftruncate64": Case(OPEN_OLD + "os.ftruncate(fd, 1); os.fsync(fd)", {"f": b"o"}, OLD),
    "truncate": Case("check(libc.truncate(b'f', 1)); fd = os.open('f', os.O_RDONLY); os.fsync(fd)", {"f": b"o"}, OLD),
    "truncate64": Case("os.truncate('f', 1); fd = os.open('f', os.O_RDONLY); os.fsync(fd)", {"f": b"o"}, OLD),
    "fallocate": Case(OPEN_OLD + "check(libc.fallocate(fd, 0, 0, 5)); os.fsync(fd)", {"f": b"old\0\0"}, OLD),
    "fallocate64": Case(OPEN_OLD + "check(libc.fallocate64(fd, 0, 0, 5)); os.fsync(fd)", {"f": b"old\0\0"}, OLD),
    "posix_fallocate": Case(OPEN_OLD + "assert libc.posix_fallocate(fd, 0, 5) == 0; os.fsync(fd)",
                            {"f": b"old\0\0"}, OLD),
    "posix_fallocate64": Case(OPEN_OLD + "os.posix_fallocate(fd, 0, 5); os.fsync(fd)", {"f": b"old\0\0"}, OLD),
    # names
    "rename": Case("os.rename('f', 'g'); fsync_dir()", {"g": b"old"}, OLD),
    "renameat": Case(OPEN_DIR + "os.rename('f', 'g', src_dir_fd=d, dst_dir_fd=d); os.fsync(d)", {"g": b"old"}, OLD),
    "renameat2": Case("check(libc.renameat2(AT_FDCWD, b'f', AT_FDCWD, b'g', 2)); fsync_dir()",
                      {"f": b"new", "g": b"old"}, {"f": b"old", "g": b"new"}),
    "link": Case("os.link('f', 'g'); fsync_dir()", {"f": b"old", "g": b"old"}, OLD),
    "linkat": Case("fd = os.open('.', os.O_TMPFILE | os.O_WRONLY, 0o644); os.write(fd, b'x'); os.fdatasync(fd)\n"
                   "check(libc.linkat(fd, b'', AT_FDCWD, b'f', AT_EMPTY_PATH)); fsync_dir()", {"f": b"x"}),
    "unlink": Case("os.unlink('f'); fsync_dir()", {}, OLD),
    "unlinkat": Case(OPEN_DIR + "os.unlink('f', dir_fd=d); os.fsync(d)", {}, OLD),
    "remove": Case("check(libc.remove(b'f')); fsync_dir()", {}, OLD),
    "rmdir": Case("os.rmdir('e'); fsync_dir()", {}, {"e": None}),
    "mkdir": Case("os.mkdir('e'); fsync_dir()", {"e": None}),
    "mkdirat": Case(OPEN_DIR + "os.mkdir('e', dir_fd=d); os.fsync(d)", {"e": None}),
    "symlink": Case("os.symlink('f', 'g')", REFUSED, OLD),
    "symlinkat": Case(OPEN_DIR + "os.symlink('f', 'g', dir_fd=d)", REFUSED, OLD),
    "mknod": Case("check(libc.mknod(b'p', 0o10600, 0))", REFUSED),
    "mknodat": Case("check(libc.mknodat(AT_FDCWD, b'p', 0o10600, 0))", REFUSED),
    "fopen": Case("libc.fclose(libc.fopen(b'f', b'w'))", REFUSED),
    "fopen64": Case("libc.fclose(libc.fopen64(b'f', b'w'))", REFUSED),
    "freopen": Case("libc.fclose(libc.freopen(b'f', b'w', libc.fopen(b'/dev/null', b'r')))", REFUSED),
    "freopen64": Case("libc.fclose(libc.freopen64(b'f', b'w', libc.fopen(b'/dev/null', b'r')))", REFUSED),
    # syncs: without the barrier's record, the strict cut loses the write
    "fsync": Case(OPEN_OLD + "os.write(fd, b'new'); os.fsync(fd)", {"f": b"new"}, OLD),
    "fdatasync": Case(OPEN_OLD + "os.write(fd, b'new'); os.fdatasync(fd)", {"f": b"new"}, OLD),
    "syncfs": Case(OPEN_OLD + "os.write(fd, b'new'); check(libc.syncfs(fd))", {"f": b"new"}, OLD),
    "sync": Case(OPEN_OLD + "os.write(fd, b'new'); os.sync()", {"f": b"new"}, OLD),
    # not a barrier: recorded for the reader, never counted
    "sync_file_range": Case(OPEN_OLD + "os.write(fd, b'new'); check(libc.sync_file_range(fd, 0, 0, 7))",
                            {"f": b"old"}, OLD),
    # shared writable mappings: their bytes are not modelled, the file is rebuilt from its writes
    "mmap": Case(SUBSTITUTE_MMAP.format(call="mmap"), {"f": bytes(4096)}, {"f": bytes(4096)}),
    "mmap64": Case(SUBSTITUTE_MMAP.format(call="mmap64"), {"f": bytes(4096)}, {"f": bytes(4096)}),
    # closing changes nothing durable
    "close": Case(OPEN_OLD + "os.write(fd, b'new'); os.close(fd); fd = os.open('f', os.O_RDONLY); os.fsync(fd)",
                  {"f": b"new"}, OLD),
}

# Interposed for bookkeeping only: left out, the outcome is the same (the descriptor table re-checks inode numbers;
# sync_file_range is never a barrier).
NOT_MUTATED = {"close", "sync_file_range"}
# sync() and syncfs() cover every change before them, in every case's folder: each runs in a recording of its own.
ALONE = ("sync", "syncfs")


def _program(names: list[str], root: Path) -> str:
    """One program running each case in its own folder (``root/<name>``), each in its own function."""
    parts = []
    for number, name in enumerate(names):
        body = "\n".join(f"    {line}" for line in CASES[name].code.splitlines())
        parts.append(f"def case_{number}():\n    os.chdir({str(root / name)!r})\n{body}\ncase_{number}()\n")
    return "\n".join(parts)


def _arm(names: list[str], shim: Path, workdir: Path) -> PowerLossSimulator:
    root = workdir / "root"
    for name in names:
        (root / name).mkdir(parents=True)
        write_tree_at(root / name, CASES[name].baseline)
    simulator = PowerLossSimulator(root, workdir / "recording", shim).arm()
    run_program(simulator, _program(names, root))
    return simulator


def modelled_outcomes(shim: Path, workdir: Path, *, including: str | None = None,
                      ) -> dict[str, dict[str, bytes | None] | str]:
    """The modelled cases run under ``shim`` (all, or those recorded together with ``including``), then a strict cut
    (previewed): each case's folder afterwards, or MISMATCH for the cases of a recording that does not explain its
    tree."""
    rest = sorted(name for name, case in CASES.items() if case.expected != REFUSED and name not in ALONE)
    outcomes: dict[str, dict[str, bytes | None] | str] = {}
    for number, names in enumerate([*([name] for name in ALONE), rest]):
        if including is not None and including not in names:
            continue
        simulator = _arm(names, shim, workdir / str(number))
        try:
            (tree,) = simulator.preview("strict")
        except RecordingMismatch:
            outcomes.update(dict.fromkeys(names, MISMATCH))
            continue
        for name in names:
            outcomes[name] = {path[len(name) + 1:]: content for path, content in tree.items()
                              if path.startswith(f"{name}/")}
    return outcomes


def refused_outcomes(shim: Path, workdir: Path) -> set[str] | str:
    """Every case the cut must refuse run in one program: the cases whose folders the refusal names."""
    names = sorted(name for name, case in CASES.items() if case.expected == REFUSED)
    simulator = _arm(names, shim, workdir)
    try:
        simulator.preview("strict")
    except UnsupportedOperation as refusal:
        return {name for name in names if any(f"/{name}/" in operation for operation in refusal.operations)}
    except RecordingMismatch:
        return MISMATCH
    return set()


EXPECTED_MODELLED = {name: case.expected for name, case in CASES.items() if case.expected != REFUSED}
EXPECTED_REFUSED = {name for name, case in CASES.items() if case.expected == REFUSED}


def test_every_interposed_function_has_a_case(powerloss_shim):
    assert set(CASES) == set(interposed_functions(powerloss_shim.parent))


def test_strict_cut_after_each_call(powerloss_shim, tmp_path):
    assert modelled_outcomes(powerloss_shim, tmp_path) == EXPECTED_MODELLED


def test_the_cut_refuses_what_the_model_does_not_cover(powerloss_shim, tmp_path):
    assert refused_outcomes(powerloss_shim, tmp_path) == EXPECTED_REFUSED


@pytest.mark.slow
@pytest.mark.parametrize("function", sorted(set(CASES) - NOT_MUTATED))
def test_the_cases_fail_without_each_function(function, powerloss_shim, tmp_path):
    mutant = build_shim(powerloss_shim.parent, unrecorded=[function])
    if CASES[function].expected == REFUSED:
        assert refused_outcomes(mutant, tmp_path) != EXPECTED_REFUSED
    else:
        outcomes = modelled_outcomes(mutant, tmp_path, including=function)
        assert outcomes != {name: EXPECTED_MODELLED[name] for name in outcomes}
