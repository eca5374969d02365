"""A power-loss simulator for tests against real processes: what survives if the power fails at the moment a set of
processes is killed.

kill -9 never loses what the kernel already holds in its page cache; a power cut loses everything not yet on the
disk. This package records every change processes make under one folder (the *watched root*) and, after they are
killed, rebuilds the folder as a disk could hold it after a power cut at that instant::

    shim = build_shim(tmp_dir)                                    # gcc, once per session (fixture: powerloss_shim)
    simulator = PowerLossSimulator(home, workdir, shim).arm()     # `home` as it is now counts as durable
    process = subprocess.Popen(cmd, env=simulator.env(), start_new_session=True)
    ...; os.killpg(process.pid, signal.SIGKILL)                   # every recorded process must be dead
    report = simulator.cut("strict")                              # or cut("random", seed=n); re-armed afterwards

``PowerLossNode`` (``node.py``) wraps this around ``m3edge scp`` for the DICOM node's durability tests.

How it records
--------------
The recorder is an LD_PRELOAD library (``recorder.c``, ``data.c``, ``names.c``, ``syncs.c``; compiled by
:func:`build_shim` with the machine's gcc into a temporary folder).
It interposes libc's ``open``/``open64``/``openat``/``openat64`` (and ``__open_2``-style fortified variants,
``creat``) when they create, truncate or open ``O_TMPFILE``; ``write``, ``pwrite``, ``pwrite64``, ``writev``,
``pwritev``, ``pwritev64``, ``pwritev2``, ``pwritev64v2`` (with ``RWF_DSYNC``/``RWF_SYNC``/``RWF_APPEND``);
``sendfile``, ``sendfile64``, ``copy_file_range``, ``splice`` (the bytes are read back from the file); ``ftruncate``,
``truncate`` (and 64); ``fallocate``, ``posix_fallocate`` (and 64); ``rename``, ``renameat``, ``renameat2``
(``RENAME_NOREPLACE``, ``RENAME_EXCHANGE``); ``link``, ``linkat`` (``AT_EMPTY_PATH`` and ``/proc/self/fd`` links of
``O_TMPFILE`` files included: only the new name and its inode matter); ``unlink``, ``unlinkat``, ``rmdir``,
``remove``, ``mkdir``, ``mkdirat``; ``fsync``, ``fdatasync``, ``syncfs``, ``sync``, ``sync_file_range``; ``mmap``
(shared writable mappings are noted); ``symlink``, ``mknod`` and ``fopen`` for writing are recorded as unsupported.

CPython reaches all of these through libc's PLT (``os.open`` -> ``open64``/``openat64``, ``os.write`` -> ``write``,
``os.pwrite`` -> ``pwrite64``, ``os.writev``, ``os.pwritev`` -> ``pwritev64v2``, ``os.fsync``, ``os.fdatasync``,
``os.link`` -> ``link``/``linkat``, ``os.replace``/``os.rename`` -> ``rename``/``renameat``, ``os.truncate`` ->
``truncate64``, ``os.posix_fallocate`` -> ``posix_fallocate64``, ``os.sendfile`` -> ``sendfile64``, ``shutil``'s
fast copy -> ``sendfile64``), and ctypes' ``CDLL(None)`` finds the interposed symbols first (the spool's ``linkat``
with ``AT_EMPTY_PATH``). Debian's libsqlite3 imports ``open64``, ``pwrite64``, ``write``, ``fdatasync`` (its unix VFS
syncs files and, after creating a journal or WAL, their directory with ``fdatasync``; ``F_FULLFSYNC`` is macOS only),
``ftruncate64``, ``unlink``, ``mkdir``, ``rmdir``, ``mmap64`` (the WAL index, ``-shm``), all interposed.

Each change is logged with a sequence number from a counter all processes share, taken once the kernel has done it;
a sync takes its number before it calls the kernel and is logged, with its result, when it returns. A change with a
smaller number than a successful sync of its inode completed before that sync began: the sync covers it. Before each
change the recorder also logs its *intent*: a change killed between the kernel doing it and the record being written
is known to have been in flight (the cut drops it; the check below tolerates it). Writes carry their bytes; the
reader (``journal.py``) merges the per-process logs and drops a record SIGKILL cut short.

The cut
-------
The tree when :meth:`PowerLossSimulator.arm` ran is the *baseline*, taken as durable and copied aside. The journal is
replayed against it (``history.py``) as the kernel applied it (the *live* history); the live result must equal the
real tree, inode numbers, sizes and bytes, or the cut raises :class:`RecordingMismatch` (a change was not recorded: a
process ran without the recorder, called something not interposed, or is still running). Then a model chooses which
changes survive, the tree is rebuilt from the baseline and the chosen changes (redo, never undo), and written in place
of the real one. Both models treat inodes, not paths: a data change belongs to an inode, a name change binds or
removes one directory entry.

*strict* (``cut("strict")``) -- only what a sync guarantees:

- a data change (write, truncation, fallocate) survives iff an ``fsync``/``fdatasync`` of its inode (through any
  descriptor, in any process) began after it completed and succeeded, or it was an ``O_SYNC``/``O_DSYNC``/
  ``RWF_DSYNC`` write, or a ``sync``/``syncfs`` came after it. ``fdatasync`` counts as ``fsync``: the model has no
  timestamps, and both make a file's bytes and size durable;
- a name change (create, link, rename, unlink, mkdir, rmdir) survives iff an fsync/fdatasync of a directory it changed
  came after it, or ``sync``/``syncfs``. A rename changing two directories is atomic (as every journaling file system
  commits it): it survives whole if either directory is synced after it. A file's own fsync does not make its name
  durable, nor does a directory's fsync make the directory's own name in its parent durable: an unsynced ``mkdir``
  loses the whole subtree;
- so a name can survive pointing at an empty or stale file (name synced, data not), and synced data can be
  unreachable (data synced, name not); O_TMPFILE + fdatasync + linkat + directory fsync survives whole.

*random* (``cut("random", seed=n, keep_probability=p)``) -- everything strict keeps, plus a random subset of the
rest that a journaling file system (ext4 ``data=ordered``, XFS) can leave:

- name changes survive as a prefix of their order (the journal commits them in order), at least up to the last one a
  sync covers, at most all of them;
- each unsynced write survives page by page (4 KiB of the file, each kept with probability ``p``, independently);
  each unsynced truncation or fallocate survives whole or not at all with probability ``p``; survivors are applied
  in their original order, so a later write wins over an earlier one where both survive;
- data and names are independent (a name may survive with none of its unsynced bytes: ext4's delayed allocation
  does that), so this allows some states ext4 ``data=ordered`` would not (it flushes a file's new blocks before
  committing the transaction that made them part of the file): it errs towards harsher states.

Crash points and a slow disk
----------------------------
A kill lands at one moment; :meth:`PowerLossSimulator.crash_points` lists every moment at which a strict cut can
differ (just after each sync a recorded process completed: each sync also logs a number when it returns), and
``preview("strict", at=points)`` gives the tree for a power cut at each, from one recording, without touching the
disk. ``env(slow_directory_sync_ms=n)`` (``PowerLossNode(..., slow_directory_sync_ms=n)``) injects a fault: every
fsync/fdatasync of a watched directory waits ``n`` ms before it starts, as a disk slow to commit its journal would, so
that what a program wrongly lets run beside a directory sync shows on every run, not once in a while.

What it does not model
----------------------
- Torn sectors or pages *inside* what the model treats as one unit: a write within one page is all or nothing, and
  the disk never returns garbage for a sector it was writing when the power failed; a strict cut never tears writes.
- Reordering by the disk within one fsync, lying disk caches, ``data=writeback``/``nobarrier`` mounts,
  ``sync_file_range`` as a barrier (it is not one: no metadata, no cache flush; recorded, never counted), and failures
  of fsync after a failed write-back (the model counts only syncs that returned success).
- Writes through ``mmap`` (noted per file; the cut rebuilds such a file from its ``write``/``ftruncate`` history only
  and skips its bytes in the check). SQLite's ``-shm`` is the case here: it is rebuilt from the WAL when the first
  connection opens after a crash (SQLite truncates a ``-shm`` no other process holds), so its bytes never matter to
  durability. ``msync`` is not recorded.
- stdio (``fopen``/``fwrite`` write through glibc internals, not the PLT), ``io_uring``, AIO, direct ``syscall()``,
  statically linked programs, and programs that do not load the library (setuid): the check raises if the tree moved
  without a record; ``fopen`` for writing under the root makes the cut refuse.
- Symbolic links, device nodes, FIFOs (refused), file modes, owners, timestamps, extended attributes (the cut keeps the
  modes of inodes still alive and uses 0644/0755 otherwise), files moved in from outside the root (refused), several
  file systems under the root.
- Concurrency inside one file description: two threads ``write()``-ing through one descriptor, or two appenders to one
  ``O_APPEND`` file, may be recorded at slightly wrong offsets (the check would then raise).
- Changes that completed but whose record SIGKILL cut short are dropped, even if a sync in another thread covered them
  (harsher than reality; a window of microseconds).
- The database server: PostgreSQL runs as its own server outside the recorder and is out of scope. The simulation
  covers what the recorded processes write under the root: for m3edge, the spool and SQLite databases in HOME
  (``m3edge.db``, ``broker.db`` with their ``-wal``, ``-journal`` and ``-shm``).
"""

from tests.support.powerloss.build import ShimBuildError, build_shim
from tests.support.powerloss.durability import CutModel
from tests.support.powerloss.history import RecordingMismatch, UnsupportedOperation
from tests.support.powerloss.simulator import CutReport, PowerLossSimulator, StillRecording

__all__ = [
    "build_shim", "ShimBuildError", "PowerLossSimulator", "CutModel", "CutReport", "RecordingMismatch",
    "UnsupportedOperation", "StillRecording",
]
