/*
 * The power-loss simulator's recorder: an LD_PRELOAD library that logs every libc call which changes durable state
 * under one watched directory, so that tests/support/powerloss can rebuild the directory as a disk could hold it
 * after a power cut.  The model, its limits and the record format are described in tests/support/powerloss/__init__.py
 * and journal.py; this file only records.
 *
 * Environment: POWERLOSS_ROOT (the watched directory), POWERLOSS_LOG_DIR (outside the root: holds "seq", an 8-byte
 * counter every process maps shared, and one "<pid>-<ns>.log" per process).  Without both, every call passes through.
 * POWERLOSS_SLOW_DIRECTORY_SYNC_MS (fault injection): each fsync/fdatasync of a watched directory first waits that
 * long, as a disk slow to commit its journal would, so tests can show what depends on a directory sync being quick.
 *
 * Ordering: a call that changes state takes its sequence number after the kernel has done it; a sync takes its number
 * before calling the kernel and another when it returns, and is logged then, with whether it succeeded.  So "sync number > change
 * number" means the change completed before the sync started: the sync covers it.  Each record is one writev() to a
 * per-process O_APPEND file; a record cut short by SIGKILL can only be the file's last, and the reader drops it.
 *
 * Built by tests/support/powerloss/build.py with the machine's gcc into a temporary folder; never committed as a binary.
 */
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

/* -- state ------------------------------------------------------------------------------------------------------- */

static int active;
static struct timespec slow_directory_sync;
static char root[PATH_MAX];
static size_t root_len;
static dev_t root_dev;
static char log_dir[PATH_MAX];
static uint64_t *seq_counter;
static int log_fd = -1;
static pid_t log_pid;
static ino_t log_ino;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

/* What each descriptor refers to, keyed by the inode it had when classified: a descriptor closed behind our back
 * (fclose, closedir) and reused for another file is classified again because its inode differs. */
#define FD_TABLE 65536
enum { FD_UNKNOWN = 0, FD_WATCHED = 1, FD_OTHER = 2, FD_DSYNC = 4, FD_APPEND = 8 };
static unsigned char fd_state[FD_TABLE];
static uint64_t fd_ino[FD_TABLE];

#define REAL(name) real_##name
#define DECLARE_REAL(ret, name, ...)                                                                                \
    static ret (*real_##name)(__VA_ARGS__);                                                                         \
    static void resolve_##name(void) {                                                                              \
        if (!real_##name) real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name);                                \
    }
#define CALL(name) (resolve_##name(), real_##name)

DECLARE_REAL(int, open, const char *, int, ...)
DECLARE_REAL(int, open64, const char *, int, ...)
DECLARE_REAL(int, openat, int, const char *, int, ...)
DECLARE_REAL(int, openat64, int, const char *, int, ...)
DECLARE_REAL(int, __open_2, const char *, int)
DECLARE_REAL(int, __open64_2, const char *, int)
DECLARE_REAL(int, __openat_2, int, const char *, int)
DECLARE_REAL(int, __openat64_2, int, const char *, int)
DECLARE_REAL(int, creat, const char *, mode_t)
DECLARE_REAL(int, creat64, const char *, mode_t)
DECLARE_REAL(int, close, int)
DECLARE_REAL(ssize_t, write, int, const void *, size_t)
DECLARE_REAL(ssize_t, pwrite, int, const void *, size_t, off_t)
DECLARE_REAL(ssize_t, pwrite64, int, const void *, size_t, off64_t)
DECLARE_REAL(ssize_t, writev, int, const struct iovec *, int)
DECLARE_REAL(ssize_t, pwritev, int, const struct iovec *, int, off_t)
DECLARE_REAL(ssize_t, pwritev64, int, const struct iovec *, int, off64_t)
DECLARE_REAL(ssize_t, pwritev2, int, const struct iovec *, int, off_t, int)
DECLARE_REAL(ssize_t, pwritev64v2, int, const struct iovec *, int, off64_t, int)
DECLARE_REAL(int, ftruncate, int, off_t)
DECLARE_REAL(int, ftruncate64, int, off64_t)
DECLARE_REAL(int, truncate, const char *, off_t)
DECLARE_REAL(int, truncate64, const char *, off64_t)
DECLARE_REAL(int, fallocate, int, int, off_t, off_t)
DECLARE_REAL(int, fallocate64, int, int, off64_t, off64_t)
DECLARE_REAL(int, posix_fallocate, int, off_t, off_t)
DECLARE_REAL(int, posix_fallocate64, int, off64_t, off64_t)
DECLARE_REAL(ssize_t, sendfile, int, int, off_t *, size_t)
DECLARE_REAL(ssize_t, sendfile64, int, int, off64_t *, size_t)
DECLARE_REAL(ssize_t, copy_file_range, int, off64_t *, int, off64_t *, size_t, unsigned int)
DECLARE_REAL(ssize_t, splice, int, off64_t *, int, off64_t *, size_t, unsigned int)
DECLARE_REAL(int, rename, const char *, const char *)
DECLARE_REAL(int, renameat, int, const char *, int, const char *)
DECLARE_REAL(int, renameat2, int, const char *, int, const char *, unsigned int)
DECLARE_REAL(int, link, const char *, const char *)
DECLARE_REAL(int, linkat, int, const char *, int, const char *, int)
DECLARE_REAL(int, unlink, const char *)
DECLARE_REAL(int, unlinkat, int, const char *, int)
DECLARE_REAL(int, remove, const char *)
DECLARE_REAL(int, rmdir, const char *)
DECLARE_REAL(int, mkdir, const char *, mode_t)
DECLARE_REAL(int, mkdirat, int, const char *, mode_t)
DECLARE_REAL(int, symlink, const char *, const char *)
DECLARE_REAL(int, symlinkat, const char *, int, const char *)
DECLARE_REAL(int, mknod, const char *, mode_t, dev_t)
DECLARE_REAL(int, mknodat, int, const char *, mode_t, dev_t)
DECLARE_REAL(int, fsync, int)
DECLARE_REAL(int, fdatasync, int)
DECLARE_REAL(int, sync_file_range, int, off64_t, off64_t, unsigned int)
DECLARE_REAL(int, syncfs, int)
DECLARE_REAL(void, sync, void)
DECLARE_REAL(void *, mmap, void *, size_t, int, int, int, off_t)
DECLARE_REAL(void *, mmap64, void *, size_t, int, int, int, off64_t)
DECLARE_REAL(FILE *, fopen, const char *, const char *)
DECLARE_REAL(FILE *, fopen64, const char *, const char *)
DECLARE_REAL(FILE *, freopen, const char *, const char *, FILE *)
DECLARE_REAL(FILE *, freopen64, const char *, const char *, FILE *)

/* -- set-up ------------------------------------------------------------------------------------------------------ */

static void after_fork_in_child(void) {
    pthread_mutex_init(&log_lock, NULL);
    if (log_fd >= 0) syscall(SYS_close, log_fd);
    log_fd = -1; /* the child writes its own log */
}

__attribute__((constructor)) static void powerloss_init(void) {
    const char *watched = getenv("POWERLOSS_ROOT");
    const char *logs = getenv("POWERLOSS_LOG_DIR");
    struct stat st;
    char seq_path[PATH_MAX];
    if (!watched || !logs || !realpath(watched, root) || stat(root, &st) != 0) return;
    if (snprintf(log_dir, sizeof log_dir, "%s", logs) >= (int)sizeof log_dir) return;
    if (snprintf(seq_path, sizeof seq_path, "%s/seq", log_dir) >= (int)sizeof seq_path) return;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, seq_path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return;
    void *shared = (void *)syscall(SYS_mmap, NULL, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    syscall(SYS_close, fd);
    if (shared == MAP_FAILED) return;
    seq_counter = shared;
    root_len = strlen(root);
    root_dev = st.st_dev;
    const char *slow = getenv("POWERLOSS_SLOW_DIRECTORY_SYNC_MS");
    if (slow) {
        long ms = strtol(slow, NULL, 10);
        if (ms > 0) slow_directory_sync = (struct timespec){ms / 1000, (ms % 1000) * 1000000L};
    }
    pthread_atfork(NULL, NULL, after_fork_in_child);
    active = 1;
}

static uint64_t next_seq(void) { return __atomic_add_fetch(seq_counter, 1, __ATOMIC_SEQ_CST); }

/* -- the log ----------------------------------------------------------------------------------------------------- */

static void shim_failed(const char *what) {
    char path[PATH_MAX + 64];
    char message[256];
    int n = snprintf(message, sizeof message, "powerloss shim: %s (errno %d): records are missing\n", what, errno);
    syscall(SYS_write, 2, message, (size_t)n);
    snprintf(path, sizeof path, "%s/%d.broken", log_dir, (int)getpid());
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
        syscall(SYS_write, fd, message, (size_t)n);
        syscall(SYS_close, fd);
    }
}

/* Caller holds log_lock.  The log is reopened when this is a forked child, or when the program closed our
 * descriptor (some close every descriptor they did not open) and perhaps reused its number. */
static int ensure_log(void) {
    struct stat st;
    pid_t pid = getpid();
    if (log_fd >= 0 && pid == log_pid && fstat(log_fd, &st) == 0 && st.st_ino == log_ino) return 0;
    struct timespec now;
    char path[PATH_MAX + 64];
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(path, sizeof path, "%s/%d-%lld%09ld.log", log_dir, (int)pid, (long long)now.tv_sec, now.tv_nsec);
    log_fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (log_fd < 0 || fstat(log_fd, &st) != 0) {
        shim_failed("cannot open its log");
        log_fd = -1;
        return -1;
    }
    log_pid = pid;
    log_ino = st.st_ino;
    return 0;
}

static void write_all(struct iovec *iov, int count) {
    while (count > 0) {
        ssize_t n = (ssize_t)syscall(SYS_writev, log_fd, iov, count);
        if (n < 0) {
            if (errno == EINTR) continue;
            shim_failed("cannot write its log");
            return;
        }
        while (count > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            count--;
        }
        if (count > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
}

#define RECORD_PIECES 64

/* One record in one writev: header, the two paths, then `data_len` bytes taken from `data` (an iovec array). */
static void append_record(struct record_header *h, const char *p1, const char *p2, const struct iovec *data,
                          int data_count, uint64_t data_len) {
    h->magic = RECORD_MAGIC;
    h->path1_len = p1 ? (uint32_t)strlen(p1) : 0;
    h->path2_len = p2 ? (uint32_t)strlen(p2) : 0;
    h->data_len = data_len;
    struct iovec iov[RECORD_PIECES];
    char *copy = NULL;
    int count = 0;
    iov[count++] = (struct iovec){h, sizeof *h};
    if (h->path1_len) iov[count++] = (struct iovec){(void *)p1, h->path1_len};
    if (h->path2_len) iov[count++] = (struct iovec){(void *)p2, h->path2_len};
    if (data_len) {
        if (data_count > RECORD_PIECES - 3) { /* more pieces than fit: gather them */
            copy = malloc(data_len);
            if (!copy) {
                shim_failed("cannot allocate");
                return;
            }
            uint64_t at = 0;
            for (int i = 0; i < data_count && at < data_len; i++) {
                size_t take = data[i].iov_len < data_len - at ? data[i].iov_len : (size_t)(data_len - at);
                memcpy(copy + at, data[i].iov_base, take);
                at += take;
            }
            iov[count++] = (struct iovec){copy, data_len};
        } else {
            uint64_t left = data_len;
            for (int i = 0; i < data_count && left; i++) {
                size_t take = data[i].iov_len < left ? data[i].iov_len : (size_t)left;
                if (take) iov[count++] = (struct iovec){data[i].iov_base, take};
                left -= take;
            }
        }
    }
    pthread_mutex_lock(&log_lock);
    if (ensure_log() == 0) write_all(iov, count);
    pthread_mutex_unlock(&log_lock);
    free(copy);
}

static void record(uint16_t type, uint16_t flags, uint64_t seq, uint64_t intent, const struct stat *st,
                   uint64_t ino2, int64_t a, int64_t b, const char *p1, const char *p2) {
    struct record_header h = {0};
    h.type = type;
    h.flags = flags;
    h.seq = seq;
    h.intent = intent;
    h.dev = st ? (uint64_t)st->st_dev : 0;
    h.ino = st ? (uint64_t)st->st_ino : 0;
    h.ino2 = ino2;
    h.a = a;
    h.b = b;
    append_record(&h, p1, p2, NULL, 0, 0);
}

/* Logged before a change is attempted; returns its number, which the change's own record (or R_ABANDONED) names.
 * A change whose intent has no completion was in flight when the process died: the kernel may or may not have
 * done it, and the reader does not hold the live tree to either outcome there. */
static uint64_t announce(int type, const struct stat *st, const char *p1, const char *p2) {
    int saved = errno;
    uint64_t seq = next_seq();
    record(R_INTENT, 0, seq, 0, st, 0, type, 0, p1, p2);
    errno = saved;
    return seq;
}

static void abandon(uint64_t intent) {
    int saved = errno;
    if (intent) record(R_ABANDONED, 0, next_seq(), intent, NULL, 0, 0, 0, NULL, NULL);
    errno = saved;
}

/* -- paths ------------------------------------------------------------------------------------------------------- */

static int is_under_root(const char *path) {
    return strncmp(path, root, root_len) == 0 && (path[root_len] == '/' || path[root_len] == '\0');
}

/* Lexical clean-up of an absolute path: no "//", ".", "..". */
static void normalise(char *path) {
    char out[PATH_MAX];
    size_t n = 0;
    const char *p = path;
    while (*p) {
        while (*p == '/') p++;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || (len == 1 && p[0] == '.')) {
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            while (n > 0 && out[n - 1] != '/') n--;
            if (n > 0) n--;
        } else if (n + 1 + len < sizeof out) {
            out[n++] = '/';
            memcpy(out + n, p, len);
            n += len;
        }
        p += len;
    }
    if (n == 0) out[n++] = '/';
    out[n] = '\0';
    memcpy(path, out, n + 1);
}

static int fd_path(int fd, char *out, size_t size) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, size - 1);
    if (n < 0) return -1;
    out[n] = '\0';
    return 0;
}

/* The absolute path `path` names (relative to `dirfd`), in `out`; 1 if it lies under the watched root.  Symbolic
 * links inside the root are not followed (the model has none); a root reached through a link is recognised by
 * resolving the parent directory. */
static int resolve_path(int dirfd, const char *path, char *out) {
    char base[PATH_MAX];
    if (!active || !path) return 0;
    if (path[0] == '/') {
        if (snprintf(out, PATH_MAX, "%s", path) >= PATH_MAX) return 0;
    } else {
        if (dirfd == AT_FDCWD) {
            if (!getcwd(base, sizeof base)) return 0;
        } else if (fd_path(dirfd, base, sizeof base) != 0) {
            return 0;
        }
        if (snprintf(out, PATH_MAX, "%s/%s", base, path) >= PATH_MAX) return 0;
    }
    normalise(out);
    if (is_under_root(out)) return 1;
    char *slash = strrchr(out, '/');
    if (!slash || slash == out) return 0;
    *slash = '\0';
    char parent[PATH_MAX];
    int found = realpath(out, parent) != NULL;
    *slash = '/';
    if (!found) return 0;
    char joined[PATH_MAX];
    if (snprintf(joined, sizeof joined, "%s%s", strcmp(parent, "/") == 0 ? "" : parent, slash) >= PATH_MAX) return 0;
    if (!is_under_root(joined)) return 0;
    memcpy(out, joined, strlen(joined) + 1);
    return 1;
}

/* -- descriptors ------------------------------------------------------------------------------------------------- */

static void forget_fd(int fd) {
    if (fd >= 0 && fd < FD_TABLE) __atomic_store_n(&fd_state[fd], FD_UNKNOWN, __ATOMIC_RELAXED);
}

static void remember_fd(int fd, unsigned char state, uint64_t ino) {
    if (fd < 0 || fd >= FD_TABLE) return;
    __atomic_store_n(&fd_ino[fd], ino, __ATOMIC_RELAXED);
    __atomic_store_n(&fd_state[fd], state, __ATOMIC_RELAXED);
}

static unsigned char state_from_flags(int flags) {
    return (unsigned char)(FD_WATCHED | ((flags & O_DSYNC) ? FD_DSYNC : 0) | ((flags & O_APPEND) ? FD_APPEND : 0));
}

/* Whether `fd` is a regular file or directory under the root; fills `st` (as it is now) and returns the FD_* state,
 * 0 when not watched. */
static unsigned char watched_fd(int fd, struct stat *st) {
    if (!active || fd < 0 || fstat(fd, st) != 0) return 0;
    if (st->st_dev != root_dev || !(S_ISREG(st->st_mode) || S_ISDIR(st->st_mode))) return 0;
    if (fd < FD_TABLE && __atomic_load_n(&fd_ino[fd], __ATOMIC_RELAXED) == (uint64_t)st->st_ino) {
        unsigned char state = __atomic_load_n(&fd_state[fd], __ATOMIC_RELAXED);
        if (state & FD_WATCHED) return state;
        if (state == FD_OTHER) return 0;
    }
    char path[PATH_MAX + 16];
    unsigned char state = FD_OTHER;
    if (fd_path(fd, path, sizeof path) == 0) {
        size_t n = strlen(path);
        static const char deleted[] = " (deleted)";
        if (n > sizeof deleted - 1 && strcmp(path + n - (sizeof deleted - 1), deleted) == 0)
            path[n - (sizeof deleted - 1)] = '\0';
        if (is_under_root(path)) state = state_from_flags((int)syscall(SYS_fcntl, fd, F_GETFL));
    }
    remember_fd(fd, state, (uint64_t)st->st_ino);
    return state == FD_OTHER ? 0 : state;
}

/* -- recording changes ------------------------------------------------------------------------------------------- */

/* A change through a descriptor: `before_fd_change` logs the intent when `fd` is a watched regular file (returns 0
 * otherwise), the after_* functions log the change itself, or that it failed. */
struct fd_change {
    uint64_t intent;
    unsigned char state;
    struct stat st;
};

static void before_fd_change(int fd, int type, struct fd_change *change) {
    change->intent = 0;
    if (!active) return;
    int saved = errno;
    change->state = watched_fd(fd, &change->st);
    if (change->state && S_ISREG(change->st.st_mode)) change->intent = announce(type, &change->st, NULL, NULL);
    errno = saved;
}

/* After a write of `written` bytes from `iov` through `fd`: `offset` < 0 means "at the file position". */
static void after_write(const struct fd_change *change, int fd, const struct iovec *iov, int count, ssize_t written,
                        off64_t offset, int rwf) {
    if (!change->intent) return;
    if (written <= 0) {
        abandon(change->intent);
        return;
    }
    int saved = errno;
    off64_t at;
    struct stat now;
    if ((change->state & FD_APPEND) || (rwf & RWF_APPEND)) /* appends land at the end, whatever offset was given */
        at = (fstat(fd, &now) == 0 ? (off64_t)now.st_size : 0) - written;
    else if (offset >= 0)
        at = offset;
    else
        at = lseek64(fd, 0, SEEK_CUR) - written;
    struct record_header h = {0};
    h.type = R_WRITE;
    h.flags = ((change->state & FD_DSYNC) || (rwf & (RWF_DSYNC | RWF_SYNC))) ? F_DSYNC : 0;
    h.seq = next_seq();
    h.intent = change->intent;
    h.dev = change->st.st_dev;
    h.ino = change->st.st_ino;
    h.a = at;
    append_record(&h, NULL, NULL, iov, count, (uint64_t)written);
    errno = saved;
}

/* After data reached `fd` without passing through our buffers (sendfile, copy_file_range, splice): read it back. */
static void after_copy_into(const struct fd_change *change, int fd, ssize_t written, off64_t offset) {
    if (!change->intent) return;
    if (written <= 0) {
        abandon(change->intent);
        return;
    }
    int saved = errno;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int reader = (int)syscall(SYS_openat, AT_FDCWD, link, O_RDONLY | O_CLOEXEC);
    char *buffer = malloc((size_t)written);
    off64_t at = offset >= 0 ? offset : lseek64(fd, 0, SEEK_CUR) - written;
    if (reader >= 0 && buffer && syscall(SYS_pread64, reader, buffer, (size_t)written, at) == written) {
        struct iovec iov = {buffer, (size_t)written};
        struct record_header h = {0};
        h.type = R_WRITE;
        h.seq = next_seq();
        h.intent = change->intent;
        h.dev = change->st.st_dev;
        h.ino = change->st.st_ino;
        h.a = at;
        append_record(&h, NULL, NULL, &iov, 1, (uint64_t)written);
    } else {
        record(R_UNSUPPORTED, 0, next_seq(), change->intent, &change->st, 0, 0, 0, "",
               "a copy into a file that cannot be read back");
    }
    if (reader >= 0) syscall(SYS_close, reader);
    free(buffer);
    errno = saved;
}

static void after_fd_resize(const struct fd_change *change, int result, int type, int64_t a, int64_t b,
                            uint64_t mode) {
    if (!change->intent) return;
    if (result != 0) {
        abandon(change->intent);
        return;
    }
    int saved = errno;
    record((uint16_t)type, 0, next_seq(), change->intent, &change->st, mode, a, b, NULL, NULL);
    errno = saved;
}

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

static void record_unsupported(int dirfd, const char *path, const char *what) {
    char abs[PATH_MAX];
    int saved = errno;
    if (resolve_path(dirfd, path, abs)) record(R_UNSUPPORTED, 0, next_seq(), 0, NULL, 0, 0, 0, abs, what);
    errno = saved;
}

/* -- open -------------------------------------------------------------------------------------------------------- */

struct open_change {
    uint64_t intent;
    char path[PATH_MAX];
};

static int changes_names_or_data(int flags) {
    return (flags & (O_CREAT | O_TRUNC)) || (flags & O_TMPFILE) == O_TMPFILE;
}

static void before_open(int dirfd, const char *path, int flags, struct open_change *change) {
    change->intent = 0;
    if (!active || !changes_names_or_data(flags)) return;
    int saved = errno;
    if (resolve_path(dirfd, path, change->path)) change->intent = announce(R_OPEN, NULL, change->path, NULL);
    errno = saved;
}

static void after_open(const struct open_change *change, int flags, int fd) {
    if (!active || fd < 0) {
        abandon(change->intent);
        return;
    }
    int saved = errno;
    forget_fd(fd);
    struct stat st;
    if (change->intent) {
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
            remember_fd(fd, state_from_flags(flags), (uint64_t)st.st_ino);
            record(R_OPEN, 0, next_seq(), change->intent, &st, 0, flags, (int64_t)st.st_size, change->path, NULL);
        } else {
            abandon(change->intent); /* a directory or device opened with O_CREAT: nothing created */
        }
    }
    errno = saved;
}

#define MODE_ARG(flags)                                                                                              \
    mode_t mode = 0;                                                                                                \
    if (__OPEN_NEEDS_MODE(flags)) {                                                                                 \
        va_list ap;                                                                                                 \
        va_start(ap, flags);                                                                                        \
        mode = va_arg(ap, mode_t);                                                                                  \
        va_end(ap);                                                                                                 \
    }

#define OPEN_BODY(dirfd, path, flags, call)                                                                          \
    struct open_change change;                                                                                      \
    before_open(dirfd, path, flags, &change);                                                                       \
    int fd = call;                                                                                                  \
    after_open(&change, flags, fd);                                                                                 \
    return fd;

int open(const char *path, int flags, ...) {
    MODE_ARG(flags);
    OPEN_BODY(AT_FDCWD, path, flags, CALL(open)(path, flags, mode));
}

int open64(const char *path, int flags, ...) {
    MODE_ARG(flags);
    OPEN_BODY(AT_FDCWD, path, flags, CALL(open64)(path, flags, mode));
}

int openat(int dirfd, const char *path, int flags, ...) {
    MODE_ARG(flags);
    OPEN_BODY(dirfd, path, flags, CALL(openat)(dirfd, path, flags, mode));
}

int openat64(int dirfd, const char *path, int flags, ...) {
    MODE_ARG(flags);
    OPEN_BODY(dirfd, path, flags, CALL(openat64)(dirfd, path, flags, mode));
}

int __open_2(const char *path, int flags) { OPEN_BODY(AT_FDCWD, path, flags, CALL(__open_2)(path, flags)); }

int __open64_2(const char *path, int flags) { OPEN_BODY(AT_FDCWD, path, flags, CALL(__open64_2)(path, flags)); }

int __openat_2(int dirfd, const char *path, int flags) {
    OPEN_BODY(dirfd, path, flags, CALL(__openat_2)(dirfd, path, flags));
}

int __openat64_2(int dirfd, const char *path, int flags) {
    OPEN_BODY(dirfd, path, flags, CALL(__openat64_2)(dirfd, path, flags));
}

int creat(const char *path, mode_t mode) {
    OPEN_BODY(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, CALL(creat)(path, mode));
}

int creat64(const char *path, mode_t mode) {
    OPEN_BODY(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, CALL(creat64)(path, mode));
}

int close(int fd) {
    forget_fd(fd);
    if (fd == log_fd && fd >= 0) log_fd = -1; /* someone closes every descriptor: the log reopens on its next record */
    return CALL(close)(fd);
}

static int writes_through_stdio(const char *mode) { return mode && strpbrk(mode, "wa+") != NULL; }

FILE *fopen(const char *path, const char *mode) {
    if (writes_through_stdio(mode)) record_unsupported(AT_FDCWD, path, "fopen for writing (stdio)");
    return CALL(fopen)(path, mode);
}

FILE *fopen64(const char *path, const char *mode) {
    if (writes_through_stdio(mode)) record_unsupported(AT_FDCWD, path, "fopen for writing (stdio)");
    return CALL(fopen64)(path, mode);
}

FILE *freopen(const char *path, const char *mode, FILE *stream) {
    if (path && writes_through_stdio(mode)) record_unsupported(AT_FDCWD, path, "freopen for writing (stdio)");
    return CALL(freopen)(path, mode, stream);
}

FILE *freopen64(const char *path, const char *mode, FILE *stream) {
    if (path && writes_through_stdio(mode)) record_unsupported(AT_FDCWD, path, "freopen for writing (stdio)");
    return CALL(freopen64)(path, mode, stream);
}

/* -- writes ------------------------------------------------------------------------------------------------------ */

#define WRITE_BODY(fd, iov, count, offset, rwf, call)                                                                \
    struct fd_change change;                                                                                        \
    before_fd_change(fd, R_WRITE, &change);                                                                         \
    ssize_t n = call;                                                                                               \
    after_write(&change, fd, iov, count, n, offset, rwf);                                                           \
    return n;

ssize_t write(int fd, const void *buf, size_t count) {
    struct iovec iov = {(void *)buf, count};
    WRITE_BODY(fd, &iov, 1, -1, 0, CALL(write)(fd, buf, count));
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    struct iovec iov = {(void *)buf, count};
    WRITE_BODY(fd, &iov, 1, offset, 0, CALL(pwrite)(fd, buf, count, offset));
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    struct iovec iov = {(void *)buf, count};
    WRITE_BODY(fd, &iov, 1, offset, 0, CALL(pwrite64)(fd, buf, count, offset));
}

ssize_t writev(int fd, const struct iovec *iov, int count) {
    WRITE_BODY(fd, iov, count, -1, 0, CALL(writev)(fd, iov, count));
}

ssize_t pwritev(int fd, const struct iovec *iov, int count, off_t offset) {
    WRITE_BODY(fd, iov, count, offset, 0, CALL(pwritev)(fd, iov, count, offset));
}

ssize_t pwritev64(int fd, const struct iovec *iov, int count, off64_t offset) {
    WRITE_BODY(fd, iov, count, offset, 0, CALL(pwritev64)(fd, iov, count, offset));
}

ssize_t pwritev2(int fd, const struct iovec *iov, int count, off_t offset, int flags) {
    WRITE_BODY(fd, iov, count, offset, flags, CALL(pwritev2)(fd, iov, count, offset, flags));
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int count, off64_t offset, int flags) {
    WRITE_BODY(fd, iov, count, offset, flags, CALL(pwritev64v2)(fd, iov, count, offset, flags));
}

#define COPY_BODY(out, out_offset, call)                                                                             \
    struct fd_change change;                                                                                        \
    before_fd_change(out, R_WRITE, &change);                                                                        \
    ssize_t n = call;                                                                                               \
    after_copy_into(&change, out, n, (out_offset) && n > 0 ? *(out_offset) - n : -1);                               \
    return n;

ssize_t sendfile(int out, int in, off_t *offset, size_t count) {
    COPY_BODY(out, (off64_t *)NULL, CALL(sendfile)(out, in, offset, count));
}

ssize_t sendfile64(int out, int in, off64_t *offset, size_t count) {
    COPY_BODY(out, (off64_t *)NULL, CALL(sendfile64)(out, in, offset, count));
}

ssize_t copy_file_range(int in, off64_t *in_offset, int out, off64_t *out_offset, size_t count, unsigned int flags) {
    COPY_BODY(out, out_offset, CALL(copy_file_range)(in, in_offset, out, out_offset, count, flags));
}

ssize_t splice(int in, off64_t *in_offset, int out, off64_t *out_offset, size_t count, unsigned int flags) {
    COPY_BODY(out, out_offset, CALL(splice)(in, in_offset, out, out_offset, count, flags));
}

#define RESIZE_BODY(fd, type, a, b, mode, call)                                                                      \
    struct fd_change change;                                                                                        \
    before_fd_change(fd, type, &change);                                                                            \
    int r = call;                                                                                                   \
    after_fd_resize(&change, r, type, a, b, mode);                                                                  \
    return r;

int ftruncate(int fd, off_t length) { RESIZE_BODY(fd, R_TRUNCATE, length, 0, 0, CALL(ftruncate)(fd, length)); }

int ftruncate64(int fd, off64_t length) {
    RESIZE_BODY(fd, R_TRUNCATE, length, 0, 0, CALL(ftruncate64)(fd, length));
}

int fallocate(int fd, int mode, off_t offset, off_t length) {
    RESIZE_BODY(fd, R_FALLOCATE, offset, length, (uint64_t)mode, CALL(fallocate)(fd, mode, offset, length));
}

int fallocate64(int fd, int mode, off64_t offset, off64_t length) {
    RESIZE_BODY(fd, R_FALLOCATE, offset, length, (uint64_t)mode, CALL(fallocate64)(fd, mode, offset, length));
}

/* posix_fallocate returns an error number instead of setting errno. */
int posix_fallocate(int fd, off_t offset, off_t length) {
    RESIZE_BODY(fd, R_FALLOCATE, offset, length, 0, CALL(posix_fallocate)(fd, offset, length));
}

int posix_fallocate64(int fd, off64_t offset, off64_t length) {
    RESIZE_BODY(fd, R_FALLOCATE, offset, length, 0, CALL(posix_fallocate64)(fd, offset, length));
}

static int truncate_path(const char *path, off64_t length, int (*call)(const char *, off64_t)) {
    char abs[PATH_MAX];
    struct stat st;
    int saved = errno;
    uint64_t intent = 0;
    if (active && resolve_path(AT_FDCWD, path, abs) && stat(abs, &st) == 0 && S_ISREG(st.st_mode))
        intent = announce(R_TRUNCATE, &st, NULL, NULL);
    errno = saved;
    int r = call(path, length);
    saved = errno;
    if (intent && r == 0)
        record(R_TRUNCATE, 0, next_seq(), intent, &st, 0, length, 0, NULL, NULL);
    else
        abandon(intent);
    errno = saved;
    return r;
}

static int call_truncate(const char *path, off64_t length) { return CALL(truncate)(path, (off_t)length); }
static int call_truncate64(const char *path, off64_t length) { return CALL(truncate64)(path, length); }

int truncate(const char *path, off_t length) { return truncate_path(path, length, call_truncate); }
int truncate64(const char *path, off64_t length) { return truncate_path(path, length, call_truncate64); }

static void after_mmap(void *p, int prot, int flags, int fd, off64_t offset, size_t length) {
    struct stat st;
    int saved = errno;
    if (p != MAP_FAILED && fd >= 0 && (prot & PROT_WRITE) && (flags & MAP_SHARED) && watched_fd(fd, &st))
        record(R_MMAP_WRITE, 0, next_seq(), 0, &st, 0, offset, (int64_t)length, NULL, NULL);
    errno = saved;
}

void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    void *p = CALL(mmap)(addr, length, prot, flags, fd, offset);
    after_mmap(p, prot, flags, fd, offset, length);
    return p;
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off64_t offset) {
    void *p = CALL(mmap64)(addr, length, prot, flags, fd, offset);
    after_mmap(p, prot, flags, fd, offset, length);
    return p;
}

/* -- names ------------------------------------------------------------------------------------------------------- */

/* A change of names: paths are resolved (and the intent logged) before the call, inodes looked up after it. */
struct name_change {
    uint64_t intent;
    int first_inside, second_inside;
    char first[PATH_MAX], second[PATH_MAX];
};

static void before_names(int type, int dir1, const char *p1, int dir2, const char *p2, struct name_change *change) {
    change->intent = 0;
    change->first_inside = change->second_inside = 0;
    if (!active) return;
    int saved = errno;
    if (p1) change->first_inside = resolve_path(dir1, p1, change->first);
    if (p2) change->second_inside = resolve_path(dir2, p2, change->second);
    if (change->first_inside || change->second_inside)
        change->intent = announce(type, NULL, change->first_inside ? change->first : "",
                                  change->second_inside ? change->second : "");
    errno = saved;
}

static void after_rename(const struct name_change *change, int result, unsigned int flags) {
    if (!change->intent) return;
    if (result != 0) {
        abandon(change->intent);
        return;
    }
    int saved = errno;
    struct stat st = {0}, other = {0};
    if (change->second_inside) lstat(change->second, &st);
    if (change->first_inside && (flags & RENAME_EXCHANGE)) lstat(change->first, &other);
    record(R_RENAME, 0, next_seq(), change->intent, change->second_inside ? &st : NULL, (uint64_t)other.st_ino,
           flags, 0, change->first_inside ? change->first : "", change->second_inside ? change->second : "");
    errno = saved;
}

#define RENAME_BODY(olddir, old, newdir, new, flags, call)                                                           \
    struct name_change change;                                                                                      \
    before_names(R_RENAME, olddir, old, newdir, new, &change);                                                      \
    int r = call;                                                                                                   \
    after_rename(&change, r, flags);                                                                                \
    return r;

int rename(const char *old, const char *new) {
    RENAME_BODY(AT_FDCWD, old, AT_FDCWD, new, 0, CALL(rename)(old, new));
}

int renameat(int olddir, const char *old, int newdir, const char *new) {
    RENAME_BODY(olddir, old, newdir, new, 0, CALL(renameat)(olddir, old, newdir, new));
}

int renameat2(int olddir, const char *old, int newdir, const char *new, unsigned int flags) {
    RENAME_BODY(olddir, old, newdir, new, flags, CALL(renameat2)(olddir, old, newdir, new, flags));
}

/* link and linkat: only the new name matters (a link binds it to an inode, whatever named that inode before); an
 * unnamed O_TMPFILE file is named by AT_EMPTY_PATH or through /proc/self/fd. */
static void after_link(const struct name_change *change, int result, int flags) {
    if (!change->intent) return;
    struct stat st;
    if (result != 0 || !change->second_inside || lstat(change->second, &st) != 0) {
        abandon(change->intent);
        return;
    }
    int saved = errno;
    record(R_LINK, 0, next_seq(), change->intent, &st, 0, flags, 0, change->first_inside ? change->first : "",
           change->second);
    errno = saved;
}

int link(const char *old, const char *new) {
    struct name_change change;
    before_names(R_LINK, AT_FDCWD, old, AT_FDCWD, new, &change);
    int r = CALL(link)(old, new);
    after_link(&change, r, 0);
    return r;
}

int linkat(int olddir, const char *old, int newdir, const char *new, int flags) {
    struct name_change change;
    int empty = (flags & AT_EMPTY_PATH) && old[0] == '\0';
    before_names(R_LINK, olddir, empty ? NULL : old, newdir, new, &change);
    int r = CALL(linkat)(olddir, old, newdir, new, flags);
    after_link(&change, r, flags);
    return r;
}

static int removed(int type, int result_of_call, struct name_change *change) {
    if (change->intent) {
        int saved = errno;
        if (result_of_call == 0)
            record((uint16_t)type, 0, next_seq(), change->intent, NULL, 0, 0, 0, change->first, NULL);
        else
            abandon(change->intent);
        errno = saved;
    }
    return result_of_call;
}

int unlink(const char *path) {
    struct name_change change;
    before_names(R_UNLINK, AT_FDCWD, path, AT_FDCWD, NULL, &change);
    return removed(R_UNLINK, CALL(unlink)(path), &change);
}

int unlinkat(int dirfd, const char *path, int flags) {
    struct name_change change;
    int type = (flags & AT_REMOVEDIR) ? R_RMDIR : R_UNLINK;
    before_names(type, dirfd, path, AT_FDCWD, NULL, &change);
    return removed(type, CALL(unlinkat)(dirfd, path, flags), &change);
}

int rmdir(const char *path) {
    struct name_change change;
    before_names(R_RMDIR, AT_FDCWD, path, AT_FDCWD, NULL, &change);
    return removed(R_RMDIR, CALL(rmdir)(path), &change);
}

int remove(const char *path) {
    struct stat st;
    struct name_change change;
    int saved = errno;
    int type = lstat(path, &st) == 0 && S_ISDIR(st.st_mode) ? R_RMDIR : R_UNLINK;
    errno = saved;
    before_names(type, AT_FDCWD, path, AT_FDCWD, NULL, &change);
    return removed(type, CALL(remove)(path), &change);
}

static int made_dir(int result, struct name_change *change) {
    if (change->intent) {
        int saved = errno;
        struct stat st;
        if (result == 0 && lstat(change->first, &st) == 0)
            record(R_MKDIR, 0, next_seq(), change->intent, &st, 0, 0, 0, change->first, NULL);
        else
            abandon(change->intent);
        errno = saved;
    }
    return result;
}

int mkdir(const char *path, mode_t mode) {
    struct name_change change;
    before_names(R_MKDIR, AT_FDCWD, path, AT_FDCWD, NULL, &change);
    return made_dir(CALL(mkdir)(path, mode), &change);
}

int mkdirat(int dirfd, const char *path, mode_t mode) {
    struct name_change change;
    before_names(R_MKDIR, dirfd, path, AT_FDCWD, NULL, &change);
    return made_dir(CALL(mkdirat)(dirfd, path, mode), &change);
}

int symlink(const char *target, const char *path) {
    int r = CALL(symlink)(target, path);
    if (r == 0) record_unsupported(AT_FDCWD, path, "symlink");
    return r;
}

int symlinkat(const char *target, int dirfd, const char *path) {
    int r = CALL(symlinkat)(target, dirfd, path);
    if (r == 0) record_unsupported(dirfd, path, "symlink");
    return r;
}

int mknod(const char *path, mode_t mode, dev_t dev) {
    int r = CALL(mknod)(path, mode, dev);
    if (r == 0) record_unsupported(AT_FDCWD, path, "mknod");
    return r;
}

int mknodat(int dirfd, const char *path, mode_t mode, dev_t dev) {
    int r = CALL(mknodat)(dirfd, path, mode, dev);
    if (r == 0) record_unsupported(dirfd, path, "mknod");
    return r;
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
