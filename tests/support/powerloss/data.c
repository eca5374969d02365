/*
 * The power-loss simulator's recorder: an LD_PRELOAD library that logs every libc call which changes durable state
 * under one watched directory, so that tests/support/powerloss can rebuild the directory as a disk could hold it
 * after a power cut.  The model, its limits and the record format are described in tests/support/powerloss/__init__.py
 * and journal.py; these files only record.
 *
 * data.c: what changes a file's bytes or size (open with O_CREAT/O_TRUNC/O_TMPFILE, the write family, copies into a
 * file, truncation, allocation), shared writable mappings, and stdio opens for writing (refused by the cut).
 */
#include "recorder.h"

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
DECLARE_REAL(void *, mmap, void *, size_t, int, int, int, off_t)
DECLARE_REAL(void *, mmap64, void *, size_t, int, int, int, off64_t)
DECLARE_REAL(FILE *, fopen, const char *, const char *)
DECLARE_REAL(FILE *, fopen64, const char *, const char *)
DECLARE_REAL(FILE *, freopen, const char *, const char *, FILE *)
DECLARE_REAL(FILE *, freopen64, const char *, const char *, FILE *)

/* -- recording changes ------------------------------------------------------------------------------------------- */

/* A change through a descriptor: `before_fd_change` logs the intent when `fd` is a watched regular file (else the
 * intent stays 0), the after_* functions log the change itself, or that it failed. */
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
