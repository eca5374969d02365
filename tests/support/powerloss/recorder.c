/*
 * The power-loss simulator's recorder: an LD_PRELOAD library that logs every libc call which changes durable state
 * under one watched directory, so that tests/support/powerloss can rebuild the directory as a disk could hold it
 * after a power cut.  The model, its limits and the record format are described in tests/support/powerloss/__init__.py
 * and journal.py; these files only record.
 *
 * recorder.c: set-up from the environment, the per-process log and the shared sequence counter, paths under the
 * root, and what each descriptor refers to.
 *
 * Environment: POWERLOSS_ROOT (the watched directory), POWERLOSS_LOG_DIR (outside the root: holds "seq", an 8-byte
 * counter every process maps shared, and one "<pid>-<ns>.log" per process).  Without both, every call passes through.
 * POWERLOSS_SLOW_DIRECTORY_SYNC_MS (fault injection): each fsync/fdatasync of a watched directory first waits that
 * long, as a disk slow to commit its journal would, so tests can show what depends on a directory sync being quick.
 *
 * Ordering: a call that changes state takes its sequence number after the kernel has done it; a sync takes its
 * number before calling the kernel and another when it returns, and is logged then, with whether it succeeded.  So
 * "sync number > change number" means the change completed before the sync started: the sync covers it.  Each record
 * is one writev() to a per-process O_APPEND file; a record cut short by SIGKILL can only be the file's last, and the
 * reader drops it.
 *
 * Built by tests/support/powerloss/build.py with the machine's gcc into a temporary folder; never committed as a
 * binary.
 */
#include "recorder.h"

/* -- state ------------------------------------------------------------------------------------------------------- */

int active;
struct timespec slow_directory_sync;
static char root[PATH_MAX];
static size_t root_len;
dev_t root_dev;
static char log_dir[PATH_MAX];
static uint64_t *seq_counter;
int log_fd = -1;
static pid_t log_pid;
static ino_t log_ino;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

/* What each descriptor refers to, keyed by the inode it had when classified: a descriptor closed behind our back
 * (fclose, closedir) and reused for another file is classified again because its inode differs. */
#define FD_TABLE 65536
static unsigned char fd_state[FD_TABLE];
static uint64_t fd_ino[FD_TABLE];

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

uint64_t next_seq(void) { return __atomic_add_fetch(seq_counter, 1, __ATOMIC_SEQ_CST); }

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
void append_record(struct record_header *h, const char *p1, const char *p2, const struct iovec *data,
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

void record(uint16_t type, uint16_t flags, uint64_t seq, uint64_t intent, const struct stat *st,
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
uint64_t announce(int type, const struct stat *st, const char *p1, const char *p2) {
    int saved = errno;
    uint64_t seq = next_seq();
    record(R_INTENT, 0, seq, 0, st, 0, type, 0, p1, p2);
    errno = saved;
    return seq;
}

void abandon(uint64_t intent) {
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
int resolve_path(int dirfd, const char *path, char *out) {
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

void forget_fd(int fd) {
    if (fd >= 0 && fd < FD_TABLE) __atomic_store_n(&fd_state[fd], FD_UNKNOWN, __ATOMIC_RELAXED);
}

void remember_fd(int fd, unsigned char state, uint64_t ino) {
    if (fd < 0 || fd >= FD_TABLE) return;
    __atomic_store_n(&fd_ino[fd], ino, __ATOMIC_RELAXED);
    __atomic_store_n(&fd_state[fd], state, __ATOMIC_RELAXED);
}

unsigned char state_from_flags(int flags) {
    return (unsigned char)(FD_WATCHED | ((flags & O_DSYNC) ? FD_DSYNC : 0) | ((flags & O_APPEND) ? FD_APPEND : 0));
}

/* Whether `fd` is a regular file or directory under the root; fills `st` (as it is now) and returns the FD_* state,
 * 0 when not watched. */
unsigned char watched_fd(int fd, struct stat *st) {
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

void record_unsupported(int dirfd, const char *path, const char *what) {
    char abs[PATH_MAX];
    int saved = errno;
    if (resolve_path(dirfd, path, abs)) record(R_UNSUPPORTED, 0, next_seq(), 0, NULL, 0, 0, 0, abs, what);
    errno = saved;
}
