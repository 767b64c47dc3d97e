/* Filesystem fault injection for tfckpt's tests, loaded with LD_PRELOAD.
 *
 * Wraps the libc calls that Python, TensorFlow and tfckpt reach the disk
 * through, and counts those that touch paths under a prefix. Controlled from
 * Python through ctypes (the library is in the process):
 *
 *   fault_watch(prefix)          count calls on paths under prefix (NULL: stop)
 *   fault_arm(op, nth, err, kill) make the nth call of op fail with errno err,
 *                                or SIGKILL the process there (kill != 0);
 *                                nth counts from the arming
 *   fault_count(op)              calls of op since the last fault_watch
 *   fault_fired()                whether the armed fault happened
 *
 * ops: 0 open (open, openat, fopen and their 64 forms), 1 write (write,
 * pwrite, fwrite, fflush), 2 fsync (fsync, fdatasync), 3 rename (rename,
 * renameat, renameat2), 4 remove (unlink, unlinkat, rmdir, remove), 5 listdir
 * (opendir), 6 stat (stat, lstat, fstatat, statx, access and glibc's __xstat
 * forms), 7 mkdir, 8 close (close, fclose), 9 read (read, pread), 10 link
 * (link, linkat). Not
 * wrapped: mmap, fread, fstat, statfs, ftruncate, readdir. A failed call does nothing and returns the error, as the
 * kernel does for ENOSPC/EIO/EACCES before any byte moves.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define NOPS 11
#define MAXFD 65536

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char prefix[4096];
static size_t prefix_len = 0;
static long counts[NOPS];
static int armed_op = -1, armed_err = 0, armed_kill = 0, fired = 0;
static long armed_nth = 0, armed_seen = 0;
static unsigned char watched_fd[MAXFD];

void fault_watch(const char *p) {
  pthread_mutex_lock(&mu);
  memset(counts, 0, sizeof counts);
  memset(watched_fd, 0, sizeof watched_fd);
  prefix_len = 0;
  if (p) {
    strncpy(prefix, p, sizeof prefix - 1);
    prefix_len = strlen(prefix);
  }
  pthread_mutex_unlock(&mu);
}

void fault_arm(int op, long nth, int err, int kill) {
  pthread_mutex_lock(&mu);
  armed_op = op; armed_nth = nth; armed_err = err; armed_kill = kill;
  armed_seen = 0; fired = 0;
  pthread_mutex_unlock(&mu);
}

long fault_count(int op) { return (op >= 0 && op < NOPS) ? counts[op] : -1; }
int fault_fired(void) { return fired; }

static int under(const char *path) {
  if (!prefix_len || !path) return 0;
  if (path[0] == '/') return strncmp(path, prefix, prefix_len) == 0;
  /* A relative path: resolve against the working directory. */
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) return 0;
  size_t n = strlen(cwd);
  if (n >= prefix_len) return strncmp(cwd, prefix, prefix_len) == 0;
  return strncmp(cwd, prefix, n) == 0 && prefix[n] == '/' &&
         strncmp(path, prefix + n + 1, prefix_len - n - 1) == 0;
}

/* Counts a watched call; returns 0 to go on, or -1 with errno set to fail. */
static int hit(int op) {
  int fail = 0;
  pthread_mutex_lock(&mu);
  counts[op]++;
  if (op == armed_op && !fired && ++armed_seen == armed_nth) {
    fired = 1;
    fail = 1;
  }
  int kill_now = fail && armed_kill, err = armed_err;
  pthread_mutex_unlock(&mu);
  if (kill_now) raise(SIGKILL);
  if (fail) { errno = err; return -1; }
  return 0;
}

#define REAL(name) static __typeof__(name) *real_##name; \
  if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

static void watch_fd(int fd, int on) { if (fd >= 0 && fd < MAXFD) watched_fd[fd] = on; }
static int is_watched(int fd) { return fd >= 0 && fd < MAXFD && watched_fd[fd]; }

int open(const char *path, int flags, ...) {
  REAL(open);
  mode_t mode = 0;
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) { va_list a; va_start(a, flags); mode = va_arg(a, int); va_end(a); }
  int w = under(path);
  if (w && hit(0)) return -1;
  int fd = real_open(path, flags, mode);
  watch_fd(fd, w);  /* also clears a number reused outside the watch */
  return fd;
}
int open64(const char *path, int flags, ...) {
  REAL(open64);
  mode_t mode = 0;
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) { va_list a; va_start(a, flags); mode = va_arg(a, int); va_end(a); }
  int w = under(path);
  if (w && hit(0)) return -1;
  int fd = real_open64(path, flags, mode);
  watch_fd(fd, w);  /* also clears a number reused outside the watch */
  return fd;
}
int openat(int dirfd, const char *path, int flags, ...) {
  REAL(openat);
  mode_t mode = 0;
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) { va_list a; va_start(a, flags); mode = va_arg(a, int); va_end(a); }
  int w = under(path);
  if (w && hit(0)) return -1;
  int fd = real_openat(dirfd, path, flags, mode);
  watch_fd(fd, w);  /* also clears a number reused outside the watch */
  return fd;
}
int openat64(int dirfd, const char *path, int flags, ...) {
  REAL(openat64);
  mode_t mode = 0;
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) { va_list a; va_start(a, flags); mode = va_arg(a, int); va_end(a); }
  int w = under(path);
  if (w && hit(0)) return -1;
  int fd = real_openat64(dirfd, path, flags, mode);
  watch_fd(fd, w);  /* also clears a number reused outside the watch */
  return fd;
}
FILE *fopen(const char *path, const char *mode) {
  REAL(fopen);
  int w = under(path);
  if (w && hit(0)) return NULL;
  FILE *f = real_fopen(path, mode);
  if (f) watch_fd(fileno(f), w);
  return f;
}
FILE *fopen64(const char *path, const char *mode) {
  REAL(fopen64);
  int w = under(path);
  if (w && hit(0)) return NULL;
  FILE *f = real_fopen64(path, mode);
  if (f) watch_fd(fileno(f), w);
  return f;
}
ssize_t write(int fd, const void *buf, size_t n) {
  REAL(write);
  if (is_watched(fd) && hit(1)) return -1;
  return real_write(fd, buf, n);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
  REAL(pwrite);
  if (is_watched(fd) && hit(1)) return -1;
  return real_pwrite(fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
  REAL(pwrite64);
  if (is_watched(fd) && hit(1)) return -1;
  return real_pwrite64(fd, buf, n, off);
}
size_t fwrite(const void *buf, size_t size, size_t n, FILE *f) {
  REAL(fwrite);
  if (is_watched(fileno(f)) && hit(1)) return 0;
  return real_fwrite(buf, size, n, f);
}
int fflush(FILE *f) {
  REAL(fflush);
  if (f && is_watched(fileno(f)) && hit(1)) return EOF;
  return real_fflush(f);
}
ssize_t read(int fd, void *buf, size_t n) {
  REAL(read);
  if (is_watched(fd) && hit(9)) return -1;
  return real_read(fd, buf, n);
}
ssize_t pread(int fd, void *buf, size_t n, off_t off) {
  REAL(pread);
  if (is_watched(fd) && hit(9)) return -1;
  return real_pread(fd, buf, n, off);
}
ssize_t pread64(int fd, void *buf, size_t n, off_t off) {
  REAL(pread64);
  if (is_watched(fd) && hit(9)) return -1;
  return real_pread64(fd, buf, n, off);
}
int access(const char *p, int mode) {
  REAL(access);
  if (under(p) && hit(6)) return -1;
  return real_access(p, mode);
}
int fsync(int fd) {
  REAL(fsync);
  if (is_watched(fd) && hit(2)) return -1;
  return real_fsync(fd);
}
int fdatasync(int fd) {
  REAL(fdatasync);
  if (is_watched(fd) && hit(2)) return -1;
  return real_fdatasync(fd);
}
int close(int fd) {
  REAL(close);
  int w = is_watched(fd);
  watch_fd(fd, 0);
  if (w && hit(8)) { int e = errno; real_close(fd); errno = e; return -1; }
  return real_close(fd);
}
int fclose(FILE *f) {
  REAL(fclose);
  int fd = f ? fileno(f) : -1;
  int w = is_watched(fd);
  watch_fd(fd, 0);
  if (w && hit(8)) { int e = errno; real_fclose(f); errno = e; return EOF; }
  return real_fclose(f);
}
int rename(const char *a, const char *b) {
  REAL(rename);
  if ((under(a) || under(b)) && hit(3)) return -1;
  return real_rename(a, b);
}
int renameat(int da, const char *a, int db, const char *b) {
  REAL(renameat);
  if ((under(a) || under(b)) && hit(3)) return -1;
  return real_renameat(da, a, db, b);
}
int renameat2(int da, const char *a, int db, const char *b, unsigned int flags) {
  REAL(renameat2);
  if ((under(a) || under(b)) && hit(3)) return -1;
  return real_renameat2(da, a, db, b, flags);
}
int link(const char *a, const char *b) {
  REAL(link);
  if ((under(a) || under(b)) && hit(10)) return -1;
  return real_link(a, b);
}
int linkat(int da, const char *a, int db, const char *b, int flags) {
  REAL(linkat);
  if ((under(a) || under(b)) && hit(10)) return -1;
  return real_linkat(da, a, db, b, flags);
}
int unlink(const char *p) {
  REAL(unlink);
  if (under(p) && hit(4)) return -1;
  return real_unlink(p);
}
int unlinkat(int d, const char *p, int flags) {
  REAL(unlinkat);
  if (under(p) && hit(4)) return -1;
  return real_unlinkat(d, p, flags);
}
int rmdir(const char *p) {
  REAL(rmdir);
  if (under(p) && hit(4)) return -1;
  return real_rmdir(p);
}
int remove(const char *p) {
  REAL(remove);
  if (under(p) && hit(4)) return -1;
  return real_remove(p);
}
DIR *opendir(const char *p) {
  REAL(opendir);
  if (under(p) && hit(5)) return NULL;
  return real_opendir(p);
}
int stat(const char *p, struct stat *s) {
  REAL(stat);
  if (under(p) && hit(6)) return -1;
  return real_stat(p, s);
}
int lstat(const char *p, struct stat *s) {
  REAL(lstat);
  if (under(p) && hit(6)) return -1;
  return real_lstat(p, s);
}
int stat64(const char *p, struct stat64 *s) {
  REAL(stat64);
  if (under(p) && hit(6)) return -1;
  return real_stat64(p, s);
}
int lstat64(const char *p, struct stat64 *s) {
  REAL(lstat64);
  if (under(p) && hit(6)) return -1;
  return real_lstat64(p, s);
}
int fstatat(int d, const char *p, struct stat *s, int flags) {
  REAL(fstatat);
  if (under(p) && hit(6)) return -1;
  return real_fstatat(d, p, s, flags);
}
int fstatat64(int d, const char *p, struct stat64 *s, int flags) {
  REAL(fstatat64);
  if (under(p) && hit(6)) return -1;
  return real_fstatat64(d, p, s, flags);
}
/* Binaries built against glibc < 2.33 (TensorFlow's) stat through these. */
int __xstat(int v, const char *p, struct stat *s) {
  REAL(__xstat);
  if (under(p) && hit(6)) return -1;
  return real___xstat(v, p, s);
}
int __xstat64(int v, const char *p, struct stat64 *s) {
  REAL(__xstat64);
  if (under(p) && hit(6)) return -1;
  return real___xstat64(v, p, s);
}
int __lxstat(int v, const char *p, struct stat *s) {
  REAL(__lxstat);
  if (under(p) && hit(6)) return -1;
  return real___lxstat(v, p, s);
}
int __lxstat64(int v, const char *p, struct stat64 *s) {
  REAL(__lxstat64);
  if (under(p) && hit(6)) return -1;
  return real___lxstat64(v, p, s);
}
int statx(int d, const char *p, int flags, unsigned int mask, struct statx *s) {
  REAL(statx);
  if (under(p) && hit(6)) return -1;
  return real_statx(d, p, flags, mask, s);
}
int mkdir(const char *p, mode_t m) {
  REAL(mkdir);
  if (under(p) && hit(7)) return -1;
  return real_mkdir(p, m);
}
