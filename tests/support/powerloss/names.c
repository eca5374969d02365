/*
 * The power-loss simulator's recorder: an LD_PRELOAD library that logs every libc call which changes durable state
 * under one watched directory, so that tests/support/powerloss can rebuild the directory as a disk could hold it
 * after a power cut.  The model, its limits and the record format are described in tests/support/powerloss/__init__.py
 * and journal.py; these files only record.
 *
 * names.c: what changes directory entries: renames, links (O_TMPFILE files included), removals, new directories;
 * symbolic links and device nodes are recorded as unsupported.
 */
#include "recorder.h"

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
