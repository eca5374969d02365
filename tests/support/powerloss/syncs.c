/*
 * The power-loss simulator's recorder: an LD_PRELOAD library that logs every libc call which changes durable state
 * under one watched directory, so that tests/support/powerloss can rebuild the directory as a disk could hold it
 * after a power cut.  The model, its limits and the record format are described in tests/support/powerloss/__init__.py
 * and journal.py; these files only record.
 *
 * syncs.c: the barriers (fsync, fdatasync, syncfs, sync) and sync_file_range, which is recorded but is none.
 */
#include "recorder.h"

DECLARE_REAL(int, fsync, int)
DECLARE_REAL(int, fdatasync, int)
DECLARE_REAL(int, sync_file_range, int, off64_t, off64_t, unsigned int)
DECLARE_REAL(int, syncfs, int)
DECLARE_REAL(void, sync, void)

/* A sync of one descriptor: the number is taken before the call, the record written after it. */
static int synced(int fd, int kind, int (*call)(int)) {
    struct stat st;
    int saved = errno;
    if (!watched_fd(fd, &st)) {
        errno = saved;
        return call(fd);
    }
    if (S_ISDIR(st.st_mode) && (slow_directory_sync.tv_sec || slow_directory_sync.tv_nsec))
        nanosleep(&slow_directory_sync, NULL); /* before its number: the sync covers what completed meanwhile */
    uint64_t seq = next_seq();
    errno = saved;
    int result = call(fd);
    saved = errno;
    record(R_SYNC, result == 0 ? F_OK_ : 0, seq, 0, &st, 0, kind, (int64_t)next_seq(), NULL, NULL);
    errno = saved;
    return result;
}

/* -- syncs ------------------------------------------------------------------------------------------------------- */

static int call_fsync(int fd) { return CALL(fsync)(fd); }
static int call_fdatasync(int fd) { return CALL(fdatasync)(fd); }

int fsync(int fd) { return synced(fd, SYNC_FSYNC, call_fsync); }
int fdatasync(int fd) { return synced(fd, SYNC_FDATASYNC, call_fdatasync); }

int sync_file_range(int fd, off64_t offset, off64_t count, unsigned int flags) {
    /* Recorded so a reader can see it was used; it makes nothing durable (no metadata, no disk cache flush). */
    struct stat st;
    int saved = errno;
    unsigned char state = watched_fd(fd, &st);
    uint64_t seq = state ? next_seq() : 0;
    errno = saved;
    int r = CALL(sync_file_range)(fd, offset, count, flags);
    saved = errno;
    if (state)
        record(R_SYNC, r == 0 ? F_OK_ : 0, seq, 0, &st, 0, SYNC_FILE_RANGE, (int64_t)next_seq(), NULL, NULL);
    errno = saved;
    return r;
}

int syncfs(int fd) {
    struct stat st;
    int saved = errno;
    int ours = active && fstat(fd, &st) == 0 && st.st_dev == root_dev;
    uint64_t seq = ours ? next_seq() : 0;
    errno = saved;
    int r = CALL(syncfs)(fd);
    saved = errno;
    if (ours) record(R_SYNC_ALL, r == 0 ? F_OK_ : 0, seq, 0, NULL, 0, SYNC_SYNCFS, (int64_t)next_seq(), NULL, NULL);
    errno = saved;
    return r;
}

void sync(void) {
    uint64_t seq = active ? next_seq() : 0;
    CALL(sync)();
    if (active) record(R_SYNC_ALL, F_OK_, seq, 0, NULL, 0, SYNC_SYNC, (int64_t)next_seq(), NULL, NULL);
}
