/*
 * sandbox-pause: PID 1 of a pod's infra container (sandbox/kube.py), podman's `catatonit -P`.
 *
 * The infra container holds the pod's network namespace (and the published ports that lead
 * into it) for the pod's whole life, so that the app containers, which join it, may exit and
 * restart on their own. This program is its whole root filesystem: built statically, it needs
 * no libc, no /etc, no shell from any image.
 *
 * It sleeps until SIGTERM or SIGINT (exit 0) and reaps any child that ends up with it (a
 * process that joins the infra's PID namespace and dies would otherwise stay a zombie).
 * Other signals keep their default action (which, for a PID 1, the kernel applies only to
 * signals sent from an ancestor namespace: SIGKILL from the host still ends it). Usage: `sandbox-pause` with no argument; with any
 * argument it prints its usage and exits 125 (the build's check that it runs at all).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *text) {
    ssize_t ignored = write(STDERR_FILENO, text, strlen(text));
    (void)ignored;
}

int main(int argc, char **argv) {
    (void)argv;
    if (argc > 1) {
        say("usage: sandbox-pause (PID 1 of a pod's infra container: sleeps until SIGTERM)\n");
        return 125;
    }
    sigset_t wanted;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGINT);
    sigaddset(&wanted, SIGCHLD);
    /* Blocked, then taken with sigwaitinfo: no handler, so no signal is lost between a check
     * and a sleep, and a PID 1 (which ignores signals it has no handler for) still sees them. */
    if (sigprocmask(SIG_BLOCK, &wanted, NULL) != 0) {
        say("sandbox-pause: sigprocmask failed\n");
        return 125;
    }
    /* Children that ended before this program ran (a parent that exec'd it) sent their
     * SIGCHLD to a program that discarded it: reap them now. */
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&wanted, &info);
        if (sig < 0) {
            if (errno == EINTR)
                continue;
            say("sandbox-pause: sigwaitinfo failed\n");
            return 125;
        }
        /* Reap every child that has ended: SIGCHLD is not queued, one may stand for many. */
        while (waitpid(-1, NULL, WNOHANG) > 0) {
        }
        if (sig == SIGTERM || sig == SIGINT)
            return 0;
    }
}
