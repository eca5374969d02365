/*
 * The power-loss simulator's recorder: an LD_PRELOAD library that logs every libc call which changes durable state
 * under one watched directory, so that tests/support/powerloss can rebuild the directory as a disk could hold it
 * after a power cut.  The model, its limits and the record format are described in tests/support/powerloss/__init__.py
 * and journal.py; these files only record.
 *
 * recorder.h: what recorder.c (set-up, the log, paths, descriptors), data.c (opening, writing, sizes), names.c
 * (renames, links, removals, directories) and syncs.c share.  Everything here is hidden: the library exports only the
 * libc functions it interposes.
 */
#ifndef POWERLOSS_RECORDER_H
#define POWERLOSS_RECORDER_H

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define RECORD_MAGIC 0x31524c50u /* "PLR1" */

enum record_type {
    R_OPEN = 1,        /* path1, ino, a = open flags, b = size after open */
    R_WRITE = 2,       /* ino, a = offset, data; flags & F_DSYNC: O_SYNC/O_DSYNC/RWF_DSYNC write */
    R_TRUNCATE = 3,    /* ino, a = new size */
    R_FALLOCATE = 4,   /* ino, a = offset, b = length, ino2 = mode */
    R_LINK = 5,        /* path1 = source (may be empty or outside), path2 = new name, ino = its inode */
    R_RENAME = 6,      /* path1 = old, path2 = new (either may be empty: outside), ino = inode at new, ino2 = at old
                          after RENAME_EXCHANGE, a = renameat2 flags */
    R_UNLINK = 7,      /* path1 */
    R_RMDIR = 8,       /* path1 */
    R_MKDIR = 9,       /* path1, ino */
    R_SYNC = 10,       /* ino, a = kind (SYNC_*), b = number taken when it returned, flags & F_OK: it succeeded;
                          seq taken before the call */
    R_SYNC_ALL = 11,   /* a = kind (sync, syncfs), b = number taken when it returned, flags & F_OK */
    R_MMAP_WRITE = 12, /* ino: a shared writable mapping (its writes are not recorded) */
    R_UNSUPPORTED = 13, /* path1, path2 = what was done: the cut refuses to run */
    R_INTENT = 14,      /* logged before a change is attempted: a = the change's type, ino or path1/path2 */
    R_ABANDONED = 15    /* the change announced by `intent` failed: nothing happened */
};

enum { F_DSYNC = 1, F_OK_ = 1 };
enum { SYNC_FSYNC = 1, SYNC_FDATASYNC = 2, SYNC_FILE_RANGE = 3, SYNC_SYNCFS = 4, SYNC_SYNC = 5 };

struct __attribute__((packed)) record_header {
    uint32_t magic;
    uint16_t type;
    uint16_t flags;
    uint64_t seq;
    uint64_t intent; /* the R_INTENT record this change completes (0: none) */
    uint64_t dev;
    uint64_t ino;
    uint64_t ino2;
    int64_t a;
    int64_t b;
    uint32_t path1_len;
    uint32_t path2_len;
    uint64_t data_len;
};

#define INTERNAL __attribute__((visibility("hidden")))

/* Interposition: real_<name> is libc's <name>, looked up on first use. */
#define DECLARE_REAL(ret, name, ...)                                                                                \
    static ret (*real_##name)(__VA_ARGS__);                                                                         \
    static void resolve_##name(void) {                                                                              \
        if (!real_##name) real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name);                                \
    }
#define CALL(name) (resolve_##name(), real_##name)

enum { FD_UNKNOWN = 0, FD_WATCHED = 1, FD_OTHER = 2, FD_DSYNC = 4, FD_APPEND = 8 };

INTERNAL extern int active;                        /* POWERLOSS_ROOT and POWERLOSS_LOG_DIR were usable */
INTERNAL extern dev_t root_dev;                    /* the watched root's file system */
INTERNAL extern int log_fd;                        /* this process's log (-1: not open) */
INTERNAL extern struct timespec slow_directory_sync; /* POWERLOSS_SLOW_DIRECTORY_SYNC_MS */

INTERNAL uint64_t next_seq(void);
INTERNAL void append_record(struct record_header *h, const char *p1, const char *p2, const struct iovec *data,
                            int data_count, uint64_t data_len);
INTERNAL void record(uint16_t type, uint16_t flags, uint64_t seq, uint64_t intent, const struct stat *st,
                     uint64_t ino2, int64_t a, int64_t b, const char *p1, const char *p2);
INTERNAL uint64_t announce(int type, const struct stat *st, const char *p1, const char *p2);
INTERNAL void abandon(uint64_t intent);
INTERNAL void record_unsupported(int dirfd, const char *path, const char *what);
INTERNAL int resolve_path(int dirfd, const char *path, char *out);
INTERNAL void forget_fd(int fd);
INTERNAL void remember_fd(int fd, unsigned char state, uint64_t ino);
INTERNAL unsigned char state_from_flags(int flags);
INTERNAL unsigned char watched_fd(int fd, struct stat *st);

#endif
