/*
 * netlab's CNI plugin executable: a runtime execs this, as it would any plugin.
 *
 * It hands the call (plugin name, environment, stdin) to the node's netlab CNI
 * daemon (`netlab cni serve`, cni/daemon.py) over the abstract unix socket
 * "@netlab-cni/1", which exists per network namespace: the daemon of the
 * namespace the runtime runs plugins in. The daemon runs the same code as the
 * Python executable, already started and imported, and sends back the exit
 * code and stdout. As Cilium's cilium-cni hands calls to its agent and Multus'
 * thick plugin to its daemon: a CPython start per call costs more than the
 * reference Go plugin's whole DEL (BENCHMARKS.md, "CNI plugin").
 *
 * No daemon (nothing listens, or the listener is not root or our own uid:
 * never hand a call to an impostor), or a daemon that would not serve us
 * (we are neither root nor its user; or it answers REFUSED): the call runs
 * in a Python process of its own, exactly as the plain executable does, with
 * the same stdin. The daemon gone mid-call: the spec's "try again later"
 * error (code 11).
 *
 * Built by `netlab cni install`, once per plugin, with shim_config.h giving
 * PLUGIN (the plugin's short name), PYTHON (the interpreter) and FALLBACK_CODE
 * (the Python the plain executable runs).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "shim_config.h"

/* cni.registry.MARKER: a delegating plugin that finds this file on CNI_PATH
 * runs the same plugin in-process (cni.registry.is_ours reads it). */
const char netlab_marker[] __attribute__((used)) = "netlab-cni-plugin";

#define SOCKET_NAME "netlab-cni/1" /* cni.daemon.SOCKET_NAME */
#define MAGIC "NLCNI\x01"           /* cni.daemon.MAGIC */
#define MAGIC_LEN 6
#define REFUSED (-1)                /* cni.daemon.REFUSED: "not served here, run it yourself" */

extern char **environ;

static void fallback(void)
{
    char *argv[] = {(char *)PYTHON, (char *)"-IS", (char *)"-c", (char *)FALLBACK_CODE, NULL};
    execv(PYTHON, argv);
    fprintf(stderr, "netlab-%s: exec %s: %s\n", PLUGIN, PYTHON, strerror(errno));
    _exit(1);
}

static int daemon_socket(void)
{
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path + 1, SOCKET_NAME, sizeof SOCKET_NAME - 1); /* abstract: leading NUL */
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + 1 + sizeof SOCKET_NAME - 1;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    if (connect(s, (struct sockaddr *)&a, len) < 0) {
        close(s);
        return -1;
    }
    struct ucred cr;
    socklen_t crlen = sizeof cr;
    /* The listener must be root or us; and the daemon serves only root and its own user. */
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &crlen) < 0 || (cr.uid != 0 && cr.uid != geteuid()) ||
        (geteuid() != 0 && geteuid() != cr.uid)) {
        close(s);
        return -1;
    }
    return s;
}

struct buf {
    char *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *data, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            fprintf(stderr, "netlab-%s: out of memory\n", PLUGIN);
            _exit(1);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void put_u32(struct buf *b, uint32_t v) { put(b, &v, sizeof v); }

/* All of p[0..n) out. To the daemon's socket with send(2) and MSG_NOSIGNAL (`sock`), so a
 * daemon gone mid-call is an error (reported as code 11), not a SIGPIPE that kills this
 * process without a word. */
static int write_all(int fd, const char *p, size_t n, int sock)
{
    while (n) {
        ssize_t w = sock ? send(fd, p, n, MSG_NOSIGNAL) : write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n)
{
    char *c = p;
    while (n) {
        ssize_t r = read(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            errno = ECONNRESET; /* closed before the whole answer */
        if (r <= 0)
            return -1;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

/* The fallback after stdin was read: the bytes go back in as fd 0 (a memfd), then fallback(). */
static void fallback_with(const char *in, size_t n)
{
    int fd = memfd_create("netlab-cni-stdin", 0);
    if (fd < 0 || write_all(fd, in, n, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0 || dup2(fd, 0) < 0) {
        fprintf(stderr, "netlab-%s: replaying stdin: %s\n", PLUGIN, strerror(errno));
        _exit(1);
    }
    close(fd);
    fallback();
}

/* The daemon went away mid-call: what it did is unknown, so the runtime is told to retry. */
static int gone(const char *what)
{
    printf("{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"netlab CNI daemon: %s\",\"details\":\"%s\"}\n",
           what, strerror(errno));
    return 1;
}

int main(void)
{
    int s = daemon_socket();
    if (s < 0)
        fallback();

    /* Request: MAGIC, then plugin, environment (NUL-separated KEY=VALUE), stdin; each u32-length-prefixed. */
    struct buf req = {0};
    put(&req, MAGIC, MAGIC_LEN);
    put_u32(&req, sizeof PLUGIN - 1);
    put(&req, PLUGIN, sizeof PLUGIN - 1);
    struct buf env = {0};
    for (char **e = environ; *e; e++)
        put(&env, *e, strlen(*e) + 1);
    put_u32(&req, (uint32_t)env.n);
    if (env.n)
        put(&req, env.p, env.n);
    struct buf in = {0};
    char chunk[65536];
    for (;;) {
        ssize_t r = read(0, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fprintf(stderr, "netlab-%s: reading stdin: %s\n", PLUGIN, strerror(errno));
            return 1;
        }
        if (r == 0)
            break;
        put(&in, chunk, (size_t)r);
    }
    put_u32(&req, (uint32_t)in.n);
    if (in.n)
        put(&req, in.p, in.n);
    if (write_all(s, req.p, req.n, 1) < 0)
        return gone("sending the call");

    /* Answer: i32 exit code, u32 stdout length, stdout. */
    int32_t code;
    uint32_t n;
    if (read_all(s, &code, sizeof code) < 0 || read_all(s, &n, sizeof n) < 0)
        return gone("no answer");
    if (code == REFUSED)
        fallback_with(in.p ? in.p : "", in.n);
    char *out = malloc(n ? n : 1);
    if (!out || read_all(s, out, n) < 0)
        return gone("answer cut short");
    if (write_all(1, out, n, 0) < 0)
        return 1;
    return code;
}
