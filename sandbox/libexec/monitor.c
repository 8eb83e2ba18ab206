/*
 * sandbox-monitor: the long-running part of a detached container's monitor (conmon's role).
 *
 * The Python monitor (sandbox/runtime/monitor.py) starts the container, then execve()s this
 * program in the same process: the same pid (the record's monitor_pid stays true), still the
 * child subreaper and the parent of PID 1. This program relays the container's output to the
 * k8s-file log and to `sandbox attach` clients, and clients' input to the container, until
 * every stream hangs up; it then waits for PID 1 and execve()s back into Python with the wait
 * status (the "finish" argv it was given, plus --status=, --clients=, --reaped=), which tears
 * the container down, records the exit and carries out the restart policy.
 *
 * Usage (every fd inherited, every number decimal):
 *   sandbox-monitor --pid1 PID --log PATH [--out FD --err FD | --pty FD] [--input FD]
 *                   [--listen FD] [--client FD]... [--keep PID]... -- FINISH-ARGV...
 *
 * The container's output is hostile: it is copied as bytes, never used as a format, and every
 * buffer is bounded (a line is cut into 16 KiB partial records; a client more than 4 MiB
 * behind is dropped). Log format: `<RFC 3339 UTC, ns> <stdout|stderr> <F|P> <text>\n`, the
 * same records as sandbox/runtime/logs.py's LogWriter.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PARTIAL (16 * 1024)        /* logs.MAX_PARTIAL */
#define MAX_BEHIND (4 * 1024 * 1024)   /* monitor.Relay.MAX_BEHIND */
#define CHUNK 65536
#define MAX_CLIENTS 64
#define MAX_KEEP 8
#define FLUSH_MS 2000                  /* how long the end waits for slow clients */

struct stream {
    int fd;               /* -1 once it hung up */
    const char *name;     /* "stdout" | "stderr" */
    unsigned char tag;    /* the attach frame's stream byte */
    size_t plen;
    char pending[MAX_PARTIAL]; /* the line so far (never a whole MAX_PARTIAL for long) */
};

struct client {
    int fd;
    char *buf;            /* frames not yet sent: buf[head..len) */
    size_t head, len, cap;
};

static struct stream streams[2];
static int nstreams;
static struct client clients[MAX_CLIENTS];
static int nclients;
static int listen_fd = -1;
static int input_fd = -1;
static int log_fd = -1;
static volatile sig_atomic_t pid1;
static int keep[MAX_KEEP];
static int nkeep;
static int reaped[MAX_KEEP];
static int nreaped;

static char outbuf[4 * MAX_PARTIAL];
static size_t outlen;
static unsigned char chunk[CHUNK];
/* Client input the container has not taken yet: input[in_head..in_len). While any waits, no
 * client is read (they wait in their sockets), so a container that does not read its stdin
 * never stalls this loop: its output is still logged and relayed. */
static unsigned char input[CHUNK];
static size_t in_head, in_len;

static void diag(const char *what)
{
    /* Our own diagnostics go to fd 2 (the container's monitor.log); never container data. */
    char line[256];
    int n = snprintf(line, sizeof line, "sandbox-monitor: %s: %s\n", what, strerror(errno));
    if (n > 0)
        (void)!write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* ---- the k8s-file log ------------------------------------------------------------------- */

static char stamp[64];
static size_t stamplen;

static void take_time(void)
{
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    int m = snprintf(stamp + n, sizeof stamp - n, ".%09ldZ", (long)now.tv_nsec);
    stamplen = n + (m > 0 ? (size_t)m : 0);
}

static void log_flush(void)
{
    if (outlen > 0 && log_fd >= 0 && write_all(log_fd, outbuf, outlen) < 0)
        diag("write the log");
    outlen = 0;
}

static void log_record(const struct stream *s, char tag, const char *text, size_t len)
{
    size_t namelen = strlen(s->name);
    size_t need = stamplen + 1 + namelen + 3 + len + 1;
    if (outlen + need > sizeof outbuf)
        log_flush();
    /* need <= stamp + name + MAX_PARTIAL + a few bytes, far below sizeof outbuf */
    char *p = outbuf + outlen;
    memcpy(p, stamp, stamplen);
    p += stamplen;
    *p++ = ' ';
    memcpy(p, s->name, namelen);
    p += namelen;
    *p++ = ' ';
    *p++ = tag;
    *p++ = ' ';
    memcpy(p, text, len);
    p += len;
    *p++ = '\n';
    outlen += need;
}

/* The records of one read, as LogWriter.write makes them: F ends a line, P is a run of
 * MAX_PARTIAL bytes without a newline (or what is left when the stream ends). */
static void log_data(struct stream *s, const unsigned char *data, size_t len)
{
    size_t i = 0;
    take_time();
    while (i < len) {
        const unsigned char *nl = memchr(data + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - data) : len;
        while (i < end) {
            size_t room = MAX_PARTIAL - s->plen;
            size_t take = end - i < room ? end - i : room;
            memcpy(s->pending + s->plen, data + i, take);
            s->plen += take;
            i += take;
            if (s->plen == MAX_PARTIAL && !(i == end && nl)) {
                log_record(s, 'P', s->pending, s->plen);
                s->plen = 0;
            }
        }
        if (nl) {
            log_record(s, 'F', s->pending, s->plen);
            s->plen = 0;
            i = end + 1;
        }
    }
    log_flush();
}

static void log_end(struct stream *s)
{
    if (s->plen > 0) {
        take_time();
        log_record(s, 'P', s->pending, s->plen);
        s->plen = 0;
        log_flush();
    }
}

/* ---- attach clients ------------------------------------------------------------------------ */

static void drop(int i)
{
    close(clients[i].fd);
    free(clients[i].buf);
    clients[i] = clients[--nclients];
}

static int add_client(int fd)
{
    if (nclients >= MAX_CLIENTS) {
        close(fd);
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0)
        fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    clients[nclients] = (struct client){.fd = fd};
    nclients++;
    return 0;
}

/* Queue one frame (stream byte, 4-byte big-endian length, data); 0, or -1 when the client
 * fell too far behind. */
static int enqueue(struct client *c, unsigned char tag, const unsigned char *data, size_t len)
{
    size_t used = c->len - c->head;
    size_t want = used + 5 + len;
    if (want > MAX_BEHIND)
        return -1;
    if (c->head > 0 && c->len + 5 + len > c->cap) {
        memmove(c->buf, c->buf + c->head, used);
        c->head = 0;
        c->len = used;
    }
    if (c->len + 5 + len > c->cap) {
        size_t cap = c->cap ? c->cap : CHUNK;
        while (cap < c->len + 5 + len)
            cap *= 2;
        char *buf = realloc(c->buf, cap);
        if (buf == NULL)
            return -1;
        c->buf = buf;
        c->cap = cap;
    }
    char *p = c->buf + c->len;
    p[0] = (char)tag;
    p[1] = (char)((len >> 24) & 0xff);
    p[2] = (char)((len >> 16) & 0xff);
    p[3] = (char)((len >> 8) & 0xff);
    p[4] = (char)(len & 0xff);
    memcpy(p + 5, data, len);
    c->len += 5 + len;
    return 0;
}

/* Send what the socket takes now; -1 when the client is gone. */
static int flush_client(struct client *c)
{
    while (c->head < c->len) {
        ssize_t n = send(c->fd, c->buf + c->head, c->len - c->head, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        }
        c->head += (size_t)n;
    }
    c->head = c->len = 0;
    if (c->cap > CHUNK) { /* an idle client holds no big buffer */
        free(c->buf);
        c->buf = NULL;
        c->cap = 0;
    }
    return 0;
}

/* Write what the container's stdin takes now (input_fd is non-blocking). */
static void feed_input(void)
{
    while (in_head < in_len) {
        ssize_t n = write(input_fd, input + in_head, in_len - in_head);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                in_head = in_len; /* a closed stdin is not our error: the input is dropped */
            break;
        }
        in_head += (size_t)n;
    }
    if (in_head == in_len)
        in_head = in_len = 0;
}

static void client_input(int i)
{
    if (in_len > 0) { /* only a hang-up gets here while input waits: the rest is dropped */
        drop(i);
        return;
    }
    ssize_t n = recv(clients[i].fd, input, sizeof input, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        drop(i);
        return;
    }
    if (input_fd >= 0) {
        in_len = (size_t)n;
        feed_input();
    }
}

static void accept_client(void)
{
    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0)
        add_client(fd);
}

/* ---- the relay loop -------------------------------------------------------------------------- */

static void output(struct stream *s)
{
    ssize_t n = read(s->fd, chunk, sizeof chunk);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) { /* EOF, or EIO from a pty master when the last slave closes */
        log_end(s);
        close(s->fd);
        s->fd = -1;
        return;
    }
    log_data(s, chunk, (size_t)n);
    for (int i = nclients - 1; i >= 0; i--)
        if (enqueue(&clients[i], s->tag, chunk, (size_t)n) < 0)
            drop(i); /* too slow: its output is in the log anyway */
}

static void relay(void)
{
    struct pollfd fds[2 + 2 + MAX_CLIENTS];
    for (;;) {
        int n = 0, open_streams = 0;
        for (int i = 0; i < nstreams; i++) {
            if (streams[i].fd >= 0)
                open_streams++;
            fds[n++] = (struct pollfd){.fd = streams[i].fd, .events = POLLIN};
        }
        if (open_streams == 0)
            return;
        fds[n++] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = in_len > 0 ? input_fd : -1, .events = POLLOUT};
        int first_client = n, count = nclients;
        for (int i = 0; i < count; i++) {
            short events = in_len > 0 ? 0 : POLLIN;
            if (clients[i].head < clients[i].len)
                events |= POLLOUT;
            fds[n++] = (struct pollfd){.fd = clients[i].fd, .events = events};
        }
        if (poll(fds, (nfds_t)n, -1) < 0) {
            if (errno != EINTR) {
                diag("poll");
                sleep(1);
            }
            continue;
        }
        for (int i = 0; i < nstreams; i++)
            if (streams[i].fd >= 0 && fds[i].revents)
                output(&streams[i]);
        if (in_len > 0 && fds[nstreams + 1].revents)
            feed_input();
        /* Clients are matched by fd: output() may have dropped some and moved others. */
        for (int k = count - 1; k >= 0; k--) {
            struct pollfd *p = &fds[first_client + k];
            int i;
            for (i = 0; i < nclients && clients[i].fd != p->fd; i++)
                ;
            if (i == nclients || !p->revents)
                continue;
            if ((p->revents & POLLOUT) && flush_client(&clients[i]) < 0) {
                drop(i);
                continue;
            }
            if (p->revents & (POLLIN | POLLHUP | POLLERR))
                client_input(i);
        }
        if (listen_fd >= 0 && fds[nstreams].revents & POLLIN)
            accept_client();
    }
}

/* At the end: give clients up to FLUSH_MS to take what is queued; drop the rest. */
static void flush_clients(void)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        struct pollfd fds[MAX_CLIENTS];
        int n = 0;
        for (int i = nclients - 1; i >= 0; i--)
            if (flush_client(&clients[i]) < 0)
                drop(i);
        for (int i = 0; i < nclients; i++)
            if (clients[i].head < clients[i].len)
                fds[n++] = (struct pollfd){.fd = clients[i].fd, .events = POLLOUT};
        if (n == 0)
            return;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (elapsed >= FLUSH_MS)
            break;
        if (poll(fds, (nfds_t)n, (int)(FLUSH_MS - elapsed)) < 0 && errno != EINTR)
            break;
    }
    for (int i = nclients - 1; i >= 0; i--)
        if (clients[i].head < clients[i].len)
            drop(i);
}

/* ---- PID 1 ------------------------------------------------------------------------------------ */

static void forward(int signum)
{
    /* async-signal-safe: kill() only; pid1 is 0 once reaped, so a reused pid is never hit */
    int saved = errno;
    pid_t pid = pid1;
    if (pid > 0)
        kill(pid, signum);
    errno = saved;
}

/* Wait for PID 1; other children that end meanwhile (orphans we inherit as subreaper) are
 * reaped too, and the helpers among them (--keep) are reported, so that nobody signals a pid
 * that may have been reused. */
static int wait_pid1(void)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            diag("waitpid");
            return 0; /* no children: PID 1 was already reaped (wait_pid's answer) */
        }
        if (pid == pid1) {
            pid1 = 0;
            return status;
        }
        for (int i = 0; i < nkeep; i++)
            if (keep[i] == pid && nreaped < MAX_KEEP)
                reaped[nreaped++] = pid;
    }
}

/* ---- arguments -------------------------------------------------------------------------------- */

static long number(const char *text, const char *what)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno || *text == '\0' || *end != '\0' || value < 0 || value > INT_MAX) {
        fprintf(stderr, "sandbox-monitor: bad %s\n", what);
        exit(125);
    }
    return value;
}

static void usage(void)
{
    fprintf(stderr, "usage: sandbox-monitor --pid1 PID --log PATH [--out FD --err FD | --pty FD]"
                    " [--input FD] [--listen FD] [--client FD]... [--keep PID]... -- ARGV...\n");
    exit(125);
}

int main(int argc, char **argv)
{
    const char *log_path = NULL;
    int out = -1, err = -1, pty = -1, finish = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            finish = i + 1;
            break;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (strcmp(a, "--pid1") == 0)
            pid1 = (pid_t)number(v, "--pid1");
        else if (strcmp(a, "--log") == 0)
            log_path = v;
        else if (strcmp(a, "--out") == 0)
            out = (int)number(v, "--out");
        else if (strcmp(a, "--err") == 0)
            err = (int)number(v, "--err");
        else if (strcmp(a, "--pty") == 0)
            pty = (int)number(v, "--pty");
        else if (strcmp(a, "--input") == 0)
            input_fd = (int)number(v, "--input");
        else if (strcmp(a, "--listen") == 0)
            listen_fd = (int)number(v, "--listen");
        else if (strcmp(a, "--client") == 0)
            add_client((int)number(v, "--client"));
        else if (strcmp(a, "--keep") == 0 && nkeep < MAX_KEEP)
            keep[nkeep++] = (int)number(v, "--keep");
        else if (strcmp(a, "--keep") != 0)
            usage();
    }
    if (finish < 0 || finish >= argc || pid1 <= 0 || log_path == NULL)
        usage();

    signal(SIGCHLD, SIG_DFL); /* an inherited SIG_IGN would let the kernel reap PID 1 */
    signal(SIGHUP, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = forward, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    const int forwarded[] = {SIGTERM, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGCONT};
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaction(forwarded[i], &sa, NULL);

    log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (log_fd < 0)
        diag("open the log");
    if (pty >= 0) { /* with a terminal both streams are the pty */
        streams[nstreams++] = (struct stream){.fd = pty, .name = "stdout", .tag = 1};
        if (input_fd < 0)
            input_fd = pty;
    } else {
        if (out >= 0)
            streams[nstreams++] = (struct stream){.fd = out, .name = "stdout", .tag = 1};
        if (err >= 0)
            streams[nstreams++] = (struct stream){.fd = err, .name = "stderr", .tag = 2};
    }
    for (int i = 0; i < nstreams; i++)
        fcntl(streams[i].fd, F_SETFD, FD_CLOEXEC);
    if (input_fd >= 0 && input_fd != pty)
        fcntl(input_fd, F_SETFD, FD_CLOEXEC);
    int input_flags = input_fd >= 0 ? fcntl(input_fd, F_GETFL) : -1;
    if (input_flags >= 0)
        fcntl(input_fd, F_SETFL, input_flags | O_NONBLOCK);

    relay();
    if (pty >= 0)
        input_fd = -1; /* closed with the stream */
    int status = wait_pid1();
    flush_clients();
    if (log_fd >= 0)
        close(log_fd);

    /* Back to Python: the finish argv, then what happened here. The listener, the clients and
     * the container's stdin (not a pty's) live on across a restart: keep them open. */
    char status_arg[32], clients_arg[16 + MAX_CLIENTS * 12], reaped_arg[16 + MAX_KEEP * 12];
    snprintf(status_arg, sizeof status_arg, "--status=%d", status);
    size_t n = (size_t)snprintf(clients_arg, sizeof clients_arg, "--clients=");
    for (int i = 0; i < nclients && n < sizeof clients_arg; i++) {
        fcntl(clients[i].fd, F_SETFD, 0);
        n += (size_t)snprintf(clients_arg + n, sizeof clients_arg - n, "%s%d", i ? "," : "",
                              clients[i].fd);
    }
    n = (size_t)snprintf(reaped_arg, sizeof reaped_arg, "--reaped=");
    for (int i = 0; i < nreaped && n < sizeof reaped_arg; i++)
        n += (size_t)snprintf(reaped_arg + n, sizeof reaped_arg - n, "%s%d", i ? "," : "",
                              reaped[i]);
    if (input_fd >= 0) { /* as it came: the Python monitor writes to it blocking */
        fcntl(input_fd, F_SETFD, 0);
        if (input_flags >= 0)
            fcntl(input_fd, F_SETFL, input_flags);
    }
    int count = argc - finish;
    char **next = calloc((size_t)count + 4, sizeof *next);
    if (next == NULL) {
        diag("calloc");
        return 125;
    }
    for (int i = 0; i < count; i++)
        next[i] = argv[finish + i];
    next[count] = status_arg;
    next[count + 1] = clients_arg;
    next[count + 2] = reaped_arg;
    execv(next[0], next);
    diag("execv the finish");
    return 125;
}
