/* dataflow-harness durability tracer: the interposed C library calls (included by tracer.c).
 *
 * Each wrapper calls the real function (dlsym RTLD_NEXT), then, on success and
 * when tracing, journals one record (rules in tracer.c). errno is preserved.
 */
/* -- opens ------------------------------------------------------------------------ */

#define MODE_ARG(flags) mode_t mode = 0; \
    if ((flags) & (O_CREAT | O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, int); va_end(ap); }

#define OPEN_FN(name) \
    int name(const char *path, int flags, ...) { \
        MODE_ARG(flags); \
        REAL(int, name, (const char *, int, ...)); \
        int fd = real_##name(path, flags, mode); \
        after_open(fd, path, flags); \
        return fd; }
OPEN_FN(open)
OPEN_FN(open64)
int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) { return open64(path, flags); }
#define OPENAT_FN(name) \
    int name(int dirfd, const char *path, int flags, ...) { \
        MODE_ARG(flags); \
        REAL(int, name, (int, const char *, int, ...)); \
        int fd = real_##name(dirfd, path, flags, mode); \
        after_open(fd, (path[0] != '/' && dirfd != AT_FDCWD) ? "" : path, flags); \
        return fd; }
OPENAT_FN(openat)
OPENAT_FN(openat64)
int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
int __openat64_2(int dirfd, const char *path, int flags) { return openat64(dirfd, path, flags); }
int creat(const char *path, mode_t mode) { return open(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }
int creat64(const char *path, mode_t mode) { return open64(path, O_CREAT | O_WRONLY | O_TRUNC, mode); }

/* -- fds ------------------------------------------------------------------------ */

int close(int fd) {
    REAL(int, close, (int));
    if (enabled && fd == jfd) return 0; /* keep the journal open (it is O_CLOEXEC) */
    int r = real_close(fd);
    if (enabled) { int saved = errno; fd_forget(fd); errno = saved; }
    return r;
}

static void copy_entry(int from, int to) {
    if (!enabled || to < 0 || to >= NFD) return;
    int saved = errno;
    struct fdent e;
    char dp[PATH_MAX];
    dp[0] = 0;
    if (fd_lookup(from, &e, dp)) fd_set_entry(to, FD_TRACED, e.isdir, e.dev, e.ino);
    else fd_forget(to);
    errno = saved;
}
int dup(int fd) {
    REAL(int, dup, (int));
    int r = real_dup(fd);
    if (r >= 0) copy_entry(fd, r);
    return r;
}
#define DUPN_FN(name, params, args) \
    int name params { \
        REAL(int, name, params); \
        if (enabled && fd2 == jfd) { errno = EBADF; return -1; } /* the journal's descriptor stays */ \
        int r = real_##name args; \
        if (r >= 0) copy_entry(fd, r); \
        return r; }
DUPN_FN(dup2, (int fd, int fd2), (fd, fd2))
DUPN_FN(dup3, (int fd, int fd2, int flags), (fd, fd2, flags))

/* -- writes ------------------------------------------------------------------------ */

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(ssize_t, write, (int, const void *, size_t));
    ssize_t r = real_write(fd, buf, n);
    if (r > 0 && enabled) { struct iovec v = {(void *)buf, (size_t)r}; after_write(fd, r, &v, 1, -1); }
    return r;
}
#define PWRITE_FN(name) \
    ssize_t name(int fd, const void *buf, size_t n, off_t off) { \
        REAL(ssize_t, name, (int, const void *, size_t, off_t)); \
        ssize_t r = real_##name(fd, buf, n, off); \
        if (r > 0 && enabled) { struct iovec v = {(void *)buf, (size_t)r}; after_write(fd, r, &v, 1, off); } \
        return r; }
PWRITE_FN(pwrite)
PWRITE_FN(pwrite64)

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    REAL(ssize_t, writev, (int, const struct iovec *, int));
    ssize_t r = real_writev(fd, iov, cnt);
    if (r > 0 && enabled && fd != jfd) after_write(fd, r, iov, cnt, -1);
    return r;
}
#define PWRITEV_FN(name) \
    ssize_t name(int fd, const struct iovec *iov, int cnt, off_t off) { \
        REAL(ssize_t, name, (int, const struct iovec *, int, off_t)); \
        ssize_t r = real_##name(fd, iov, cnt, off); \
        if (r > 0 && enabled) after_write(fd, r, iov, cnt, off); \
        return r; }
PWRITEV_FN(pwritev)
PWRITEV_FN(pwritev64)
#define PWRITEV2_FN(name) \
    ssize_t name(int fd, const struct iovec *iov, int cnt, off_t off, int flags) { \
        REAL(ssize_t, name, (int, const struct iovec *, int, off_t, int)); \
        ssize_t r = real_##name(fd, iov, cnt, off, flags); \
        /* off == -1: the file position is used (and advanced) */ \
        if (r > 0 && enabled) after_write(fd, r, iov, cnt, off); \
        return r; }
PWRITEV2_FN(pwritev2)
PWRITEV2_FN(pwritev64v2)

/* copy_file_range / sendfile: the bytes written are read back from the target. */
static void after_copy(int out_fd, ssize_t n, long long off_after) {
    if (n <= 0 || !enabled) return;
    struct fdent e;
    if (!fd_lookup(out_fd, &e, NULL) || e.isdir) return;
    int saved = errno;
    long long start = off_after >= 0 ? off_after - n : (long long)lseek(out_fd, 0, SEEK_CUR) - n;
    char *buf = malloc((size_t)n);
    int rfd = out_fd, got = buf && start >= 0 && pread(out_fd, buf, (size_t)n, start) == n;
    if (buf && start >= 0 && !got) { /* a write-only descriptor: read through /proc */
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", out_fd);
        REAL(int, open, (const char *, int, ...));
        rfd = real_open(link, O_RDONLY | O_CLOEXEC);
        if (rfd >= 0) {
            got = pread(rfd, buf, (size_t)n, start) == n;
            REAL(int, close, (int));
            real_close(rfd);
        }
    }
    if (got) {
        struct iovec v = {buf, (size_t)n};
        emit(OP_WRITE, 0, out_fd, e.dev, e.ino, (uint64_t)start, (uint64_t)n, 1, NULL, NULL, &v, 1);
    }
    free(buf);
    errno = saved;
}
ssize_t copy_file_range(int in, loff_t *inoff, int out, loff_t *outoff, size_t n, unsigned int flags) {
    REAL(ssize_t, copy_file_range, (int, loff_t *, int, loff_t *, size_t, unsigned int));
    ssize_t r = real_copy_file_range(in, inoff, out, outoff, n, flags);
    after_copy(out, r, outoff ? (long long)*outoff : -1);
    return r;
}
#define SENDFILE_FN(name) \
    ssize_t name(int out, int in, off_t *off, size_t n) { \
        REAL(ssize_t, name, (int, int, off_t *, size_t)); \
        ssize_t r = real_##name(out, in, off, n); \
        after_copy(out, r, -1); \
        return r; }
SENDFILE_FN(sendfile)
SENDFILE_FN(sendfile64)

/* -- sizes ------------------------------------------------------------------------ */

static void after_ftruncate(int fd, off_t len) {
    struct fdent e;
    if (enabled && fd_lookup(fd, &e, NULL) && !e.isdir)
        emit(OP_TRUNCATE, 0, fd, e.dev, e.ino, (uint64_t)len, 0, 0, NULL, NULL, NULL, 0);
}
#define FTRUNCATE_FN(name) \
    int name(int fd, off_t len) { \
        REAL(int, name, (int, off_t)); \
        int r = real_##name(fd, len); \
        if (r == 0) after_ftruncate(fd, len); \
        return r; }
FTRUNCATE_FN(ftruncate)
FTRUNCATE_FN(ftruncate64)
static void after_truncate(const char *path, off_t len) {
    char p[PATH_MAX];
    if (resolve(AT_FDCWD, path, p) != 0) return;
    int saved = errno;
    struct stat st;
    if (stat(p, &st) == 0)
        emit(OP_TRUNCATE, 0, -1, st.st_dev, st.st_ino, (uint64_t)len, 0, 0, p, NULL, NULL, 0);
    errno = saved;
}
#define TRUNCATE_FN(name) \
    int name(const char *path, off_t len) { \
        REAL(int, name, (const char *, off_t)); \
        int r = real_##name(path, len); \
        if (r == 0 && enabled) after_truncate(path, len); \
        return r; }
TRUNCATE_FN(truncate)
TRUNCATE_FN(truncate64)
static void after_falloc(int fd, int mode, off_t off, off_t len) {
    struct fdent e;
    if (enabled && fd_lookup(fd, &e, NULL) && !e.isdir)
        emit(OP_FALLOCATE, 0, fd, e.dev, e.ino, (uint64_t)off, (uint64_t)len, (uint64_t)mode, NULL, NULL, NULL, 0);
}
#define FALLOCATE_FN(name) \
    int name(int fd, int mode, off_t off, off_t len) { \
        REAL(int, name, (int, int, off_t, off_t)); \
        int r = real_##name(fd, mode, off, len); \
        if (r == 0) after_falloc(fd, mode, off, len); \
        return r; }
FALLOCATE_FN(fallocate)
FALLOCATE_FN(fallocate64)
/* posix_fallocate returns an error number; glibc calls fallocate internally (not seen) */
#define POSIX_FALLOCATE_FN(name) \
    int name(int fd, off_t off, off_t len) { \
        REAL(int, name, (int, off_t, off_t)); \
        int r = real_##name(fd, off, len); \
        if (r == 0) after_falloc(fd, 0, off, len); \
        return r; }
POSIX_FALLOCATE_FN(posix_fallocate)
POSIX_FALLOCATE_FN(posix_fallocate64)

/* -- namespace ------------------------------------------------------------------------ */

#define TWO_PATHS(kind, odir, opath, ndir, npath, flags, CALL) do { \
    char a[PATH_MAX], b[PATH_MAX]; \
    int ta = enabled ? resolve(odir, opath, a) : -1; \
    int tb = enabled ? resolve(ndir, npath, b) : -1; \
    int r = CALL; \
    if (r == 0 && (ta == 0 || tb == 0)) emit_path(kind, ta == 0 ? a : "", tb == 0 ? b : "", flags, 0); \
    return r; } while (0)

int rename(const char *o, const char *n) {
    REAL(int, rename, (const char *, const char *));
    TWO_PATHS(OP_RENAME, AT_FDCWD, o, AT_FDCWD, n, 0, real_rename(o, n));
}
int renameat(int od, const char *o, int nd, const char *n) {
    REAL(int, renameat, (int, const char *, int, const char *));
    TWO_PATHS(OP_RENAME, od, o, nd, n, 0, real_renameat(od, o, nd, n));
}
int renameat2(int od, const char *o, int nd, const char *n, unsigned int flags) {
    REAL(int, renameat2, (int, const char *, int, const char *, unsigned int));
    TWO_PATHS(OP_RENAME, od, o, nd, n, flags, real_renameat2(od, o, nd, n, flags));
}
int link(const char *o, const char *n) {
    REAL(int, link, (const char *, const char *));
    TWO_PATHS(OP_LINK, AT_FDCWD, o, AT_FDCWD, n, 0, real_link(o, n));
}
int linkat(int od, const char *o, int nd, const char *n, int flags) {
    REAL(int, linkat, (int, const char *, int, const char *, int));
    TWO_PATHS(OP_LINK, od, o, nd, n, (uint64_t)flags, real_linkat(od, o, nd, n, flags));
}

#define ONE_PATH(kind, dir, path, CALL) do { \
    char a[PATH_MAX]; \
    int ta = enabled ? resolve(dir, path, a) : -1; \
    int r = CALL; \
    if (r == 0 && ta == 0) emit_path(kind, a, NULL, 0, 0); \
    return r; } while (0)

int unlink(const char *p) {
    REAL(int, unlink, (const char *));
    ONE_PATH(OP_UNLINK, AT_FDCWD, p, real_unlink(p));
}
int unlinkat(int d, const char *p, int flags) {
    REAL(int, unlinkat, (int, const char *, int));
    ONE_PATH((flags & AT_REMOVEDIR) ? OP_RMDIR : OP_UNLINK, d, p, real_unlinkat(d, p, flags));
}
int rmdir(const char *p) {
    REAL(int, rmdir, (const char *));
    ONE_PATH(OP_RMDIR, AT_FDCWD, p, real_rmdir(p));
}
int mkdir(const char *p, mode_t m) {
    REAL(int, mkdir, (const char *, mode_t));
    ONE_PATH(OP_MKDIR, AT_FDCWD, p, real_mkdir(p, m));
}
int mkdirat(int d, const char *p, mode_t m) {
    REAL(int, mkdirat, (int, const char *, mode_t));
    ONE_PATH(OP_MKDIR, d, p, real_mkdirat(d, p, m));
}

/* -- durability calls ------------------------------------------------------------------ */

#define FSYNC_FN(name, op) \
    int name(int fd) { \
        REAL(int, name, (int)); \
        int r = real_##name(fd); \
        if (r == 0) after_sync(op, fd, 0, 0, 0); \
        return r; }
FSYNC_FN(fsync, OP_FSYNC)
FSYNC_FN(fdatasync, OP_FDATASYNC)
int sync_file_range(int fd, off_t off, off_t n, unsigned int flags) {
    REAL(int, sync_file_range, (int, off_t, off_t, unsigned int));
    int r = real_sync_file_range(fd, off, n, flags);
    if (r == 0) after_sync(OP_SYNC_FILE_RANGE, fd, (uint64_t)off, (uint64_t)n, flags);
    return r;
}
int syncfs(int fd) {
    REAL(int, syncfs, (int));
    int r = real_syncfs(fd);
    if (r == 0 && enabled) {
        int saved = errno;
        struct stat st;
        if (fstat(fd, &st) == 0) emit(OP_SYNCFS, 0, fd, st.st_dev, st.st_ino, 0, 0, 0, NULL, NULL, NULL, 0);
        errno = saved;
    }
    return r;
}
void sync(void) {
    REAL(void, sync, (void));
    real_sync();
    if (enabled) emit(OP_SYNC, 0, -1, 0, 0, 0, 0, 0, NULL, NULL, NULL, 0);
}
