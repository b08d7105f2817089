/*
 * tonebridge-dr-walfast: the compiled front door of wal-push / wal-fetch.
 *
 *   archive_command = '.../tonebridge-dr-walfast .../tonebridge-dr wal-push %p'
 *   restore_command = '.../tonebridge-dr-walfast .../python .../wal/spool.py wal-fetch ... %f %p'
 *
 * Everything before the verb (`wal-push` / `wal-fetch`) is the command it stands in
 * front of. It answers exit status 0 itself only for what the spool proves, exactly
 * as spool.py's fast path does (same files, same checks, same order):
 *
 *   wal-push:  a push marker in <spool>/pushed/ records this file (name, repository,
 *              size, mtime_ns, inode all equal): the marker is consumed. Or, while the
 *              background pusher of the same repository holds pusher.lock and
 *              PostgreSQL has the file .ready, such a marker appears within
 *              TONEBRIDGE_DR_WAL_PUSH_WAIT seconds (default 60).
 *   wal-fetch: a prefetched segment of the same repository waits in
 *              <spool>/prefetch/ and the prefetcher runs (or prefetching is off):
 *              `.wanted` is written, the file is renamed to %p.
 *
 * Anything else, including every error of its own, execs the command it stands in
 * front of with the same arguments, which decides and reports (wal-fetch's 0 / 1 / 255
 * contract lives there). It never answers 1 and never talks to a repository; it
 * exits 255 only when that command cannot be executed at all.
 *
 * Why: PostgreSQL runs one archive_command / restore_command per WAL file and waits
 * for it. A spool hit through Python costs an interpreter start (~10 ms here); this
 * costs a fork/exec and a few system calls (~1 ms), which is what pgBackRest's async
 * archive-push / archive-get cost (bench/README.md).
 *
 * Build: cc -O2 -o tonebridge-dr-walfast walfast.c (make venv does; the image too).
 * restore postgres writes it into restore_command when it is installed next to the
 * Python it runs with. tests/runner/wal/test_walfast.py checks it decides like spool.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SPOOL_ENV "TONEBRIDGE_DR_WAL_SPOOL"
#define REPO_ENV "TONEBRIDGE_DR_REPO"
#define PREFETCH_ENV "TONEBRIDGE_DR_WAL_PREFETCH"
#define PUSH_WAIT_ENV "TONEBRIDGE_DR_WAL_PUSH_WAIT"
#define SPOOL_NAME "tonebridge-dr"
#define DEFAULT_WINDOW 16
#define DEFAULT_PUSH_WAIT 60.0
#define PUSH_POLL_NS 3000000L /* spool.PUSH_POLL: 3 ms */
#define MAX_FILE 65536

static char **fallback; /* the command this stands in front of, NULL-terminated */

/* Run the command we stand in front of, with every argument unchanged. */
static int run_fallback(void) {
    execvp(fallback[0], fallback);
    fprintf(stderr, "tonebridge-dr-walfast: cannot run %s: %s\n", fallback[0], strerror(errno));
    return 255;
}

static int is_hex_upper(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); }

/* spool._is_segment_name */
static int is_segment_name(const char *name) {
    if (strlen(name) != 24) return 0;
    for (const char *p = name; *p; p++)
        if (!is_hex_upper(*p)) return 0;
    return 1;
}

/* spool._plausible_wal_name */
static int plausible_wal_name(const char *name) {
    if (strlen(name) < 16 || strchr(name, '/') != NULL) return 0;
    for (int i = 0; i < 8; i++)
        if (!is_hex_upper(name[i])) return 0;
    return 1;
}

/* An absolute path for `arg` (cwd + arg when relative); 0 when it has a component
 * `.`, `..` or an empty one, which os.path.abspath would normalise: those go the slow
 * way instead of being normalised twice in two languages. */
static int absolute(const char *arg, char *out, size_t size) {
    if (*arg == '\0') return 0;
    if (arg[0] == '/') {
        if ((size_t)snprintf(out, size, "%s", arg) >= size) return 0;
    } else {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof cwd) == NULL) return 0;
        if ((size_t)snprintf(out, size, "%s/%s", strcmp(cwd, "/") == 0 ? "" : cwd, arg) >= size)
            return 0;
    }
    const char *p = out + 1;
    while (*p) {
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        if (!end) break;
        p = end + 1;
        if (*p == '\0') return 0; /* trailing slash */
    }
    return 1;
}

/* Split an absolute path into its folder (no trailing slash; "/" for the root) and name. */
static void split_path(const char *path, char *dir, size_t size, const char **name) {
    const char *slash = strrchr(path, '/');
    size_t len = (size_t)(slash - path);
    if (len == 0) len = 1;
    snprintf(dir, size, "%.*s", (int)len, path);
    *name = slash + 1;
}

/* spool.spool_root: $TONEBRIDGE_DR_WAL_SPOOL, else <wal_dir>/tonebridge-dr. */
static int spool_root(const char *wal_dir, char *out, size_t size) {
    const char *env = getenv(SPOOL_ENV);
    int n = (env && *env) ? snprintf(out, size, "%s", env)
                          : snprintf(out, size, "%s/%s", wal_dir, SPOOL_NAME);
    return n > 0 && (size_t)n < size;
}

/* The whole content of a small file, NUL-terminated; -1 when unreadable or too big. */
static ssize_t read_small(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t used = 0;
    for (;;) {
        ssize_t n = read(fd, buf + used, size - 1 - used);
        if (n < 0) {
            if (errno == EINTR) continue;
            close(fd);
            return -1;
        }
        if (n == 0) break;
        used += (size_t)n;
        if (used == size - 1) { /* too big for what it should hold */
            close(fd);
            return -1;
        }
    }
    close(fd);
    buf[used] = '\0';
    return (ssize_t)used;
}

/* Python's str.strip() for ASCII whitespace, in place. */
static char *strip(char *text) {
    while (*text == ' ' || *text == '\t' || *text == '\n' || *text == '\r' || *text == '\v' ||
           *text == '\f')
        text++;
    size_t len = strlen(text);
    while (len > 0 && strchr(" \t\n\r\v\f", text[len - 1]) != NULL) text[--len] = '\0';
    return text;
}

/* spool.lock_held: another process holds the flock() on `path`. */
static int lock_held(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return 0;
    int held = flock(fd, LOCK_EX | LOCK_NB) != 0;
    close(fd); /* closing releases a lock we may just have taken */
    return held;
}

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --- argv: spool._split ------------------------------------------------------------ */

struct options {
    const char *repo, *decrypt_key;
    int allow_partial, no_prefetch;
    const char *positional[3];
    int count; /* positional arguments (at most 3 kept; more is an error anyway) */
};

/* 0 for anything spool._split does not understand. `fetch`: the verb is wal-fetch. */
static int parse(int argc, char **argv, int fetch, struct options *o) {
    memset(o, 0, sizeof *o);
    for (int i = 0; i < argc; i++) {
        const char *item = argv[i];
        if (strncmp(item, "--", 2) == 0) {
            const char *eq = strchr(item, '=');
            size_t klen = eq ? (size_t)(eq - item) : strlen(item);
            const char *value = eq ? eq + 1 : NULL;
            int is_repo = klen == 6 && strncmp(item, "--repo", 6) == 0;
            int is_key = fetch && klen == 13 && strncmp(item, "--decrypt-key", 13) == 0;
            if (fetch && !eq && strcmp(item, "--allow-partial") == 0) {
                o->allow_partial = 1;
            } else if (fetch && !eq && strcmp(item, "--no-prefetch") == 0) {
                o->no_prefetch = 1;
            } else if (is_repo || is_key) {
                if (!eq) value = i + 1 < argc ? argv[++i] : "";
                if (*value == '\0') return 0;
                if (is_repo) o->repo = value;
                else o->decrypt_key = value;
            } else {
                return 0;
            }
        } else if (item[0] == '-' && strcmp(item, "-") != 0) {
            return 0;
        } else {
            if (o->count < 3) o->positional[o->count] = item;
            o->count++;
        }
    }
    return 1;
}

static const char *repository(const struct options *o) {
    if (o->repo) return o->repo;
    const char *env = getenv(REPO_ENV);
    return env ? env : "";
}

/* --- wal-push ------------------------------------------------------------------------- */

/* spool._valid_marker + the consuming unlink of try_push_fast: 1 when consumed. */
static int try_push_fast(const char *path, const char *wal_dir, const char *name,
                         const char *repo) {
    if (!plausible_wal_name(name) || *repo == '\0') return 0;
    char root[PATH_MAX], marker[PATH_MAX], text[MAX_FILE];
    if (!spool_root(wal_dir, root, sizeof root)) return 0;
    if ((size_t)snprintf(marker, sizeof marker, "%s/pushed/%s", root, name) >= sizeof marker)
        return 0;
    if (read_small(marker, text, sizeof text) < 0) return 0;
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    char size[32], mtime[32], ino[32];
    snprintf(size, sizeof size, "%lld", (long long)st.st_size);
    snprintf(mtime, sizeof mtime, "%lld",
             (long long)st.st_mtim.tv_sec * 1000000000LL + (long long)st.st_mtim.tv_nsec);
    snprintf(ino, sizeof ino, "%llu", (unsigned long long)st.st_ino);
    /* Every field must be present and equal; a later line of a key wins (dict update). */
    const char *want[5][2] = {{"name", name}, {"repo", repo}, {"size", size},
                              {"mtime_ns", mtime}, {"ino", ino}};
    const char *seen[5] = {NULL, NULL, NULL, NULL, NULL};
    char *line = text;
    while (line && *line) {
        char *next = strchr(line, '\n');
        if (next) *next++ = '\0';
        char *eq = strchr(line, '=');
        if (eq) {
            *eq = '\0';
            for (int k = 0; k < 5; k++)
                if (strcmp(line, want[k][0]) == 0) seen[k] = eq + 1;
        }
        line = next;
    }
    for (int k = 0; k < 5; k++)
        if (seen[k] == NULL || strcmp(seen[k], want[k][1]) != 0) return 0;
    unlink(marker);
    return 1;
}

static double push_wait(void) {
    const char *raw = getenv(PUSH_WAIT_ENV);
    if (raw == NULL) return DEFAULT_PUSH_WAIT;
    char copy[64];
    if ((size_t)snprintf(copy, sizeof copy, "%s", raw) >= sizeof copy) return DEFAULT_PUSH_WAIT;
    char *text = strip(copy), *end = NULL;
    if (*text == '\0') return DEFAULT_PUSH_WAIT;
    double value = strtod(text, &end);
    return (end && *end == '\0') ? value : DEFAULT_PUSH_WAIT;
}

/* spool.wait_for_pusher: 1 once the running background pusher stored the file. */
static int wait_for_pusher(const char *path, const char *wal_dir, const char *name,
                           const char *repo) {
    if (*repo == '\0' || !plausible_wal_name(name)) return 0;
    char ready[PATH_MAX], root[PATH_MAX], lock[PATH_MAX], text[MAX_FILE];
    if ((size_t)snprintf(ready, sizeof ready, "%s/archive_status/%s.ready", wal_dir, name) >=
        sizeof ready)
        return 0;
    if (access(ready, F_OK) != 0) return 0;
    if (!spool_root(wal_dir, root, sizeof root)) return 0;
    if ((size_t)snprintf(lock, sizeof lock, "%s/pusher.lock", root) >= sizeof lock) return 0;
    if (read_small(lock, text, sizeof text) < 0) return 0;
    char *described = strip(text);
    char *newline = strchr(described, '\n');
    if (newline) *newline = '\0';
    if (*described == '\0' || strcmp(described, repo) != 0) return 0;
    double deadline = monotonic() + push_wait();
    struct timespec poll = {0, PUSH_POLL_NS};
    while (lock_held(lock)) {
        if (try_push_fast(path, wal_dir, name, repo)) return 1;
        if (monotonic() >= deadline) return 0;
        nanosleep(&poll, NULL);
    }
    return try_push_fast(path, wal_dir, name, repo); /* stored just before it exited */
}

static int push(int argc, char **argv) {
    struct options o;
    if (!parse(argc, argv, 0, &o) || o.count != 1) return run_fallback();
    char path[PATH_MAX], wal_dir[PATH_MAX];
    const char *name;
    if (!absolute(o.positional[0], path, sizeof path)) return run_fallback();
    split_path(path, wal_dir, sizeof wal_dir, &name);
    const char *repo = repository(&o);
    if (try_push_fast(path, wal_dir, name, repo) || wait_for_pusher(path, wal_dir, name, repo))
        return 0;
    return run_fallback();
}

/* --- wal-fetch ------------------------------------------------------------------------ */

static int prefetch_window(void) {
    const char *raw = getenv(PREFETCH_ENV);
    if (raw == NULL) return DEFAULT_WINDOW;
    char copy[32];
    if ((size_t)snprintf(copy, sizeof copy, "%s", raw) >= sizeof copy) return DEFAULT_WINDOW;
    char *text = strip(copy);
    if (*text == '\0') return DEFAULT_WINDOW;
    for (const char *p = text; *p; p++)
        if (*p < '0' || *p > '9') return DEFAULT_WINDOW;
    return atoi(text);
}

/* spool.note_wanted (best effort). */
static void note_wanted(const char *folder, const char *name) {
    char tmp[PATH_MAX], wanted[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s/.wanted.%ld.tmp", folder, (long)getpid()) >=
            sizeof tmp ||
        (size_t)snprintf(wanted, sizeof wanted, "%s/.wanted", folder) >= sizeof wanted)
        return;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) return;
    size_t len = strlen(name);
    int ok = write(fd, name, len) == (ssize_t)len;
    if (close(fd) != 0) ok = 0;
    if (!ok || rename(tmp, wanted) != 0) unlink(tmp);
}

static int fetch(int argc, char **argv) {
    struct options o;
    if (!parse(argc, argv, 1, &o) || o.count != 2) return run_fallback();
    const char *name = o.positional[0], *repo = repository(&o);
    if (*repo == '\0' || !is_segment_name(name) || o.no_prefetch) return run_fallback();
    char dest[PATH_MAX], wal_dir[PATH_MAX], root[PATH_MAX], folder[PATH_MAX];
    const char *dest_name;
    if (!absolute(o.positional[1], dest, sizeof dest)) return run_fallback();
    split_path(dest, wal_dir, sizeof wal_dir, &dest_name);
    if (!spool_root(wal_dir, root, sizeof root) ||
        (size_t)snprintf(folder, sizeof folder, "%s/prefetch", root) >= sizeof folder)
        return run_fallback();
    struct stat st;
    if (stat(folder, &st) != 0 || !S_ISDIR(st.st_mode)) return run_fallback();
    note_wanted(folder, name);
    char lock[PATH_MAX], source[PATH_MAX], repo_file[PATH_MAX], text[MAX_FILE];
    if ((size_t)snprintf(lock, sizeof lock, "%s/.lock", folder) >= sizeof lock ||
        (size_t)snprintf(source, sizeof source, "%s/%s", folder, name) >= sizeof source ||
        (size_t)snprintf(repo_file, sizeof repo_file, "%s/.repo", folder) >= sizeof repo_file)
        return run_fallback();
    /* No prefetcher while prefetching is on: the slow way takes the file and starts one. */
    if (prefetch_window() > 0 && !lock_held(lock)) return run_fallback();
    if (access(source, F_OK) != 0) return run_fallback();
    if (read_small(repo_file, text, sizeof text) < 0 || strcmp(strip(text), repo) != 0)
        return run_fallback();
    if (rename(source, dest) != 0) return run_fallback();
    return 0;
}

int main(int argc, char **argv) {
    int verb = 1;
    while (verb < argc && strcmp(argv[verb], "wal-push") != 0 &&
           strcmp(argv[verb], "wal-fetch") != 0)
        verb++;
    if (verb == 1 || verb >= argc) {
        fprintf(stderr, "usage: tonebridge-dr-walfast COMMAND... (wal-push|wal-fetch) ARGS...\n"
                        "  COMMAND is what runs when the spool cannot answer, e.g. "
                        "/opt/tonebridge-dr/bin/tonebridge-dr\n");
        return 255;
    }
    fallback = argv + 1;
    int rest = argc - verb - 1;
    char **args = argv + verb + 1;
    return strcmp(argv[verb], "wal-push") == 0 ? push(rest, args) : fetch(rest, args);
}
