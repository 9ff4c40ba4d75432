/* dataflow-harness durability tracer: an LD_PRELOAD library.
 *
 * Model. Every process of a run loads this library. When DFH_TRACE_ROOT and
 * DFH_TRACE_JOURNAL are set, each mutating file operation and each durability
 * call on a path under the (realpath'd) root is appended to the journal as one
 * binary record with ONE writev() on an O_APPEND descriptor, so the records of
 * all processes form one total order. Without the variables every call passes
 * straight through.
 *
 * Rules (numbered as in journal.py):
 *  1. A record is written after the call succeeded (failed calls leave none),
 *     so a write's record precedes anything that happens after the write
 *     returned, in any process that learns of it.
 *  2. Files are named by (st_dev, st_ino); namespace records also carry paths
 *     (absolute, parent directory resolved with realpath).
 *  3. The write offset of write()/writev() is the file position after the
 *     call minus the bytes written (right for O_APPEND too).
 *  4. A descriptor's file is looked up at open (or lazily via fstat and
 *     /proc/self/fd on first use) and cached per fd; close/dup2/dup3 reset or
 *     copy the cache. The cache is lock-free (a per-entry sequence number), so a
 *     signal handler's write() cannot deadlock, and a fork child inherits it.
 *  5. Paths under a prefix in DFH_TRACE_EXCLUDE (':'-separated, absolute,
 *     realpath'd) are not journaled (the harness's own files).
 *  6. Each record = header, path1, path2, data, then an 8-byte trailer equal to
 *     the header's nonce, so a reader can tell a torn record.
 *
 * Not seen: writes through mmap and stdio (glibc-internal calls), and io_uring.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAGIC 0x4a484644u /* "DFHJ" */
enum {
    OP_HELLO = 1, OP_CREATE = 2, OP_WRITE = 3, OP_TRUNCATE = 4, OP_FALLOCATE = 5,
    OP_RENAME = 6, OP_UNLINK = 7, OP_RMDIR = 8, OP_LINK = 9, OP_MKDIR = 10,
    OP_FSYNC = 11, OP_FDATASYNC = 12, OP_SYNC_FILE_RANGE = 13, OP_SYNCFS = 14, OP_SYNC = 15
};
#define F_ISDIR 1

struct rec {
    uint32_t magic;
    uint16_t op;
    uint16_t flags;
    uint32_t total;
    uint32_t pid;
    int32_t fd;
    uint32_t len1, len2, pad;
    uint64_t nonce, dev, ino, a, b, c, dlen;
} __attribute__((packed));

#define NFD 65536
enum { FD_UNKNOWN = 0, FD_UNTRACED = 1, FD_TRACED = 2 };
struct fdent { uint32_t seq; uint8_t state, isdir; uint64_t dev, ino; };

static struct fdent fdt[NFD];
static int enabled = 0;
static int jfd = -1;
static char root[PATH_MAX];
static size_t rootlen = 0;
static char root_raw[PATH_MAX];
static size_t root_rawlen = 0;
static uint64_t counter = 0;

#define REAL(ret, name, args) \
    static ret(*real_##name) args = NULL; \
    if (!real_##name) real_##name = (ret(*) args)dlsym(RTLD_NEXT, #name)

/* -- the journal ------------------------------------------------------------ */

static ssize_t raw_writev(int fd, const struct iovec *iov, int n) {
    REAL(ssize_t, writev, (int, const struct iovec *, int));
    return real_writev(fd, iov, n);
}

static void emit(uint16_t op, uint16_t flags, int fd, uint64_t dev, uint64_t ino, uint64_t a, uint64_t b,
                 uint64_t c, const char *p1, const char *p2, const struct iovec *data, int ndata) {
    if (!enabled || jfd < 0) return;
    struct rec h;
    memset(&h, 0, sizeof h);
    size_t l1 = p1 ? strlen(p1) : 0, l2 = p2 ? strlen(p2) : 0, dl = 0;
    for (int i = 0; i < ndata; i++) dl += data[i].iov_len;
    uint64_t pid = (uint64_t)getpid();
    h.magic = MAGIC; h.op = op; h.flags = flags; h.pid = (uint32_t)pid; h.fd = fd;
    h.len1 = (uint32_t)l1; h.len2 = (uint32_t)l2;
    h.nonce = (pid << 32) ^ (__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) & 0xffffffffu) ^ 0x5a5a000000000000ull;
    h.dev = dev; h.ino = ino; h.a = a; h.b = b; h.c = c; h.dlen = dl;
    size_t total = sizeof h + l1 + l2 + dl + 8;
    if (total > 0xffffffffu) return; /* a single write over 4 GiB: not journaled */
    h.total = (uint32_t)total;
    uint64_t trailer = h.nonce;
    int saved = errno;
    char *buf = NULL;
    struct iovec v[1024];
    int n = 0;
    v[n].iov_base = &h; v[n++].iov_len = sizeof h;
    if (l1) { v[n].iov_base = (void *)p1; v[n++].iov_len = l1; }
    if (l2) { v[n].iov_base = (void *)p2; v[n++].iov_len = l2; }
    if (ndata + 4 > 1024) { /* too many pieces for one writev: gather the data */
        if (!(buf = malloc(dl ? dl : 1))) { errno = saved; return; }
        size_t o = 0;
        for (int i = 0; i < ndata; i++) { memcpy(buf + o, data[i].iov_base, data[i].iov_len); o += data[i].iov_len; }
        v[n].iov_base = buf; v[n++].iov_len = dl;
    } else {
        for (int i = 0; i < ndata; i++)
            if (data[i].iov_len) v[n++] = data[i];
    }
    v[n].iov_base = &trailer; v[n++].iov_len = 8;
    raw_writev(jfd, v, n); /* one call on an O_APPEND descriptor: one place in the total order */
    free(buf);
    errno = saved;
}

/* -- paths and the fd table ------------------------------------------------------ */

#define NEXCL 8
static char excl[NEXCL][PATH_MAX]; /* DFH_TRACE_EXCLUDE: absolute prefixes under the root, ':'-separated */
static size_t excllen[NEXCL];
static int nexcl = 0;

static int under(const char *p, const char *dir, size_t n) {
    return strncmp(p, dir, n) == 0 && (p[n] == '/' || p[n] == 0);
}
static int under_root(const char *p) {
    if (!under(p, root, rootlen)) return 0;
    for (int i = 0; i < nexcl; i++)
        if (under(p, excl[i], excllen[i])) return 0;
    return 1;
}

/* Could `path` (as given, relative to dirfd) name something under the root? */
static int maybe_under(const char *path) {
    if (!enabled || !path) return 0;
    return path[0] != '/' || strncmp(path, root, rootlen) == 0 ||
           (root_rawlen && strncmp(path, root_raw, root_rawlen) == 0);
}

static int fd_path(int fd, char *out) {
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, PATH_MAX - 1);
    if (n <= 0) return -1;
    out[n] = 0;
    return 0;
}

/* Absolute path of (dirfd, path), the parent resolved with realpath and the
 * last component kept (it may not exist). 0 if resolved and under the root. */
static int resolve(int dirfd, const char *path, char *out) {
    if (!maybe_under(path)) return -1;
    char full[PATH_MAX * 2], parent[PATH_MAX];
    if (path[0] == '/') snprintf(full, sizeof full, "%s", path);
    else {
        char base[PATH_MAX];
        if (dirfd == AT_FDCWD ? !getcwd(base, sizeof base) : fd_path(dirfd, base) < 0) return -1;
        snprintf(full, sizeof full, "%s/%s", base, path);
    }
    size_t n = strlen(full);
    while (n > 1 && full[n - 1] == '/') full[--n] = 0;
    char *slash = strrchr(full, '/');
    if (!slash) return -1;
    const char *last = slash + 1;
    if (strcmp(last, ".") == 0 || strcmp(last, "..") == 0 || *last == 0)
        return realpath(full, out) && under_root(out) ? 0 : -1;
    if (slash == full) snprintf(parent, sizeof parent, "/");
    else { *slash = 0; if (!realpath(full, parent)) return -1; }
    if (strlen(parent) + strlen(last) + 2 > PATH_MAX) return -1;
    if (strcmp(parent, "/") == 0) snprintf(out, PATH_MAX, "/%s", last);
    else snprintf(out, PATH_MAX, "%s/%s", parent, last);
    return under_root(out) ? 0 : -1;
}

/* Lock-free (a signal handler may write to a pipe while the interrupted code
 * updates the table): a per-entry sequence number, odd while being written. */
static void fd_set_entry(int fd, uint8_t state, uint8_t isdir, uint64_t dev, uint64_t ino) {
    if (fd < 0 || fd >= NFD) return;
    struct fdent *e = &fdt[fd];
    __atomic_add_fetch(&e->seq, 1, __ATOMIC_ACQ_REL);
    e->state = state; e->isdir = isdir; e->dev = dev; e->ino = ino;
    __atomic_add_fetch(&e->seq, 1, __ATOMIC_ACQ_REL);
}

static void fd_forget(int fd) { fd_set_entry(fd, FD_UNKNOWN, 0, 0, 0); }

static int fd_read_entry(int fd, struct fdent *out) {
    struct fdent *e = &fdt[fd];
    for (int tries = 0; tries < 64; tries++) {
        uint32_t s1 = __atomic_load_n(&e->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) continue;
        out->state = e->state; out->isdir = e->isdir; out->dev = e->dev; out->ino = e->ino;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&e->seq, __ATOMIC_ACQUIRE) == s1) return 1;
    }
    return 0; /* being written (maybe by the code this signal handler interrupted): look it up */
}

/* Look fd up; resolve lazily. Returns 1 (and fills e; dirpath for a directory) if traced. */
static int fd_lookup(int fd, struct fdent *e, char *dirpath) {
    if (!enabled || fd < 0 || fd == jfd) return 0;
    int saved = errno;
    if (fd < NFD && fd_read_entry(fd, e) && e->state != FD_UNKNOWN) {
        if (e->state == FD_TRACED && e->isdir && dirpath && fd_path(fd, dirpath) < 0) dirpath[0] = 0;
        errno = saved;
        return e->state == FD_TRACED;
    }
    struct stat st;
    char p[PATH_MAX];
    int traced = fstat(fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)) && fd_path(fd, p) == 0 &&
                 under_root(p);
    if (traced) {
        e->state = FD_TRACED; e->isdir = S_ISDIR(st.st_mode); e->dev = st.st_dev; e->ino = st.st_ino;
        if (dirpath) snprintf(dirpath, PATH_MAX, "%s", p);
        fd_set_entry(fd, FD_TRACED, e->isdir, e->dev, e->ino);
    } else {
        fd_set_entry(fd, FD_UNTRACED, 0, 0, 0);
    }
    errno = saved;
    return traced;
}

/* After a successful open of `path` (as given) returning fd. */
static void after_open(int fd, const char *path, int flags) {
    if (fd < 0 || !enabled) return;
    int saved = errno;
    char p[PATH_MAX];
    struct stat st;
    if (!maybe_under(path) || fd_path(fd, p) < 0 || !under_root(p) || fstat(fd, &st) != 0 ||
        !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) {
        fd_set_entry(fd, FD_UNTRACED, 0, 0, 0);
        errno = saved;
        return;
    }
    int isdir = S_ISDIR(st.st_mode);
    fd_set_entry(fd, FD_TRACED, isdir, st.st_dev, st.st_ino);
    if (!isdir && (flags & (O_CREAT | O_TRUNC)))
        emit(OP_CREATE, 0, fd, st.st_dev, st.st_ino, 0, 0, (uint64_t)flags, p, NULL, NULL, 0);
    errno = saved;
}

static void after_write(int fd, ssize_t n, const struct iovec *iov, int niov, long long off) {
    if (n <= 0 || !enabled) return;
    struct fdent e;
    if (!fd_lookup(fd, &e, NULL) || e.isdir) return;
    int saved = errno;
    if (off < 0) {
        off_t pos = lseek(fd, 0, SEEK_CUR);
        if (pos < 0) { errno = saved; return; }
        off = (long long)pos - n;
    }
    /* only the bytes actually written */
    struct iovec v[1024];
    int k = 0;
    size_t left = (size_t)n;
    struct iovec *heap = NULL, *dst = v;
    if (niov > 1024) { heap = malloc(sizeof(struct iovec) * niov); if (!heap) { errno = saved; return; } dst = heap; }
    for (int i = 0; i < niov && left; i++) {
        size_t take = iov[i].iov_len < left ? iov[i].iov_len : left;
        dst[k].iov_base = iov[i].iov_base; dst[k++].iov_len = take;
        left -= take;
    }
    emit(OP_WRITE, 0, fd, e.dev, e.ino, (uint64_t)off, (uint64_t)n, 0, NULL, NULL, dst, k);
    free(heap);
    errno = saved;
}

static void after_sync(uint16_t op, int fd, uint64_t a, uint64_t b, uint64_t c) {
    if (!enabled) return;
    struct fdent e;
    char dp[PATH_MAX];
    dp[0] = 0;
    if (!fd_lookup(fd, &e, dp)) return;
    emit(op, e.isdir ? F_ISDIR : 0, fd, e.dev, e.ino, a, b, c, e.isdir ? dp : NULL, NULL, NULL, 0);
}

static void emit_path(uint16_t op, const char *p1, const char *p2, uint64_t c, int follow) {
    int saved = errno;
    struct stat st;
    memset(&st, 0, sizeof st);
    const char *target = p2 ? p2 : p1;
    if (target && op != OP_UNLINK && op != OP_RMDIR) (follow ? stat : lstat)(target, &st);
    emit(op, S_ISDIR(st.st_mode) ? F_ISDIR : 0, -1, st.st_dev, st.st_ino, 0, 0, c, p1, p2, NULL, 0);
    errno = saved;
}

/* -- init, fork ------------------------------------------------------------------- */


__attribute__((constructor)) static void dfh_init(void) {
    const char *r = getenv("DFH_TRACE_ROOT"), *j = getenv("DFH_TRACE_JOURNAL");
    if (!r || !*r || !j || !*j) return;
    if (!realpath(r, root)) { fprintf(stderr, "dfh-tracer: trace root %s: %s; not tracing\n", r, strerror(errno)); return; }
    rootlen = strlen(root);
    snprintf(root_raw, sizeof root_raw, "%s", r);
    root_rawlen = strlen(root_raw);
    while (root_rawlen > 1 && root_raw[root_rawlen - 1] == '/') root_raw[--root_rawlen] = 0;
    const char *x = getenv("DFH_TRACE_EXCLUDE");
    nexcl = 0;
    while (x && *x && nexcl < NEXCL) {
        const char *end = strchr(x, ':');
        size_t n = end ? (size_t)(end - x) : strlen(x);
        if (n > 1 && n < PATH_MAX) {
            memcpy(excl[nexcl], x, n);
            excl[nexcl][n] = 0;
            while (n > 1 && excl[nexcl][n - 1] == '/') excl[nexcl][--n] = 0;
            excllen[nexcl++] = n;
        }
        x = end ? end + 1 : NULL;
    }
    REAL(int, open, (const char *, int, ...));
    int fd = real_open(j, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) { fprintf(stderr, "dfh-tracer: journal %s: %s; not tracing\n", j, strerror(errno)); return; }
    char jp[PATH_MAX];
    if (fd_path(fd, jp) == 0 && under_root(jp)) {
        fprintf(stderr, "dfh-tracer: journal %s is inside the traced root %s; not tracing\n", jp, root);
        close(fd);
        return;
    }
    int hi = fcntl(fd, F_DUPFD_CLOEXEC, 1000);
    if (hi >= 0) { REAL(int, close, (int)); real_close(fd); fd = hi; }
    jfd = fd;
    enabled = 1;
    emit(OP_HELLO, 0, -1, 0, 0, 0, 0, 0, root, NULL, NULL, 0);
}

/* -- a process forked from a long-lived parent (a zygote) re-reads its environment ------ */

/* Re-read DFH_TRACE_ROOT / DFH_TRACE_JOURNAL (after a fork whose child changed its
 * environment): closes the old journal, forgets every cached fd. Returns 1 if now tracing. */
int dfh_tracer_reconfigure(void) {
    for (int i = 0; i < NFD; i++) fd_forget(i);
    if (jfd >= 0) { REAL(int, close, (int)); real_close(jfd); }
    enabled = 0; jfd = -1; rootlen = root_rawlen = 0;
    dfh_init();
    return enabled;
}

int dfh_tracer_active(void) { return enabled; }

#include "tracer_calls.c"
