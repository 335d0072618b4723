/* The benchmark's child: stamps CLOCK_MONOTONIC (ns) as the first thing main does,
 * writes "TAG PID NS\n" into the FIFO given as argv[1] (one write, shorter than
 * PIPE_BUF, so atomic among concurrent probes), then sleeps until killed.
 *
 * Usage: probe FIFO TAG
 * Built by bench/supervision.py with gcc -O2 -static (static: no dynamic loader
 * between exec and main).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (argc >= 3) {
        char line[256];
        int n = snprintf(line, sizeof line, "%s %d %lld\n", argv[2], (int)getpid(),
                         (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        /* O_NONBLOCK: fail (ENXIO) instead of hanging if the bench is gone. */
        int fd = open(argv[1], O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0 && n > 0 && n < (int)sizeof line) {
            fcntl(fd, F_SETFL, 0); /* blocking write: never drop a stamp on a full pipe */
            (void)!write(fd, line, (size_t)n);
        }
        if (fd >= 0) close(fd);
    }
    for (;;) pause();
}
