/* loadgen: process and thread creation as fast as the machine allows, or at a steady rate,
 * under command names nothing else on the host has, so every monitor's count can be compared
 * with what was really created.
 *
 *   loadgen burst MODE SECONDS WORKERS NAME_HEX [MIB]
 *       WORKERS processes (forked first, under the program's own name), each renamed to NAME
 *       and released together, create by MODE back to back for SECONDS.
 *       MODE: fork | vfork | clone3 | spawn | thread
 *       MIB: memory each worker writes before it starts (0), which a fork copies the page
 *       tables of, as a server's fork does
 *   loadgen names COUNT PREFIX_HEX EXIT_NAME_HEX
 *       one process renames itself COUNT times (PREFIX + a decimal index) and forks once under
 *       each name; the children rename to EXIT_NAME before exiting, so each name makes one
 *       procmond_forks_total series and nothing else.
 *   loadgen syscalls SECONDS WORKERS
 *       WORKERS processes calling getppid() back to back for SECONDS: what any syscall costs
 *       while a probe is attached to syscall tracepoints (those put every task on the
 *       kernel's syscall-tracing path, not only the callers of the traced syscalls).
 *   loadgen steady SECONDS RATE NAMES NAME_HEX
 *       one process, RATE creations a second for SECONDS, cycling fork, vfork, clone3, spawn
 *       and thread, and cycling through NAMES names (NAME + a decimal index).
 *
 * Prints one JSON object: {"mode": ..., "created": N, "seconds": S, "per_mode": {...}}, where
 * S is the wall time from the release of the first worker to the end of the last one.
 * Exits 1 on any failed creation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

enum mode { FORK, VFORK, CLONE3, SPAWN, THREAD, MODE_COUNT, SYSCALLS = MODE_COUNT };
static const char *const MODE_NAMES[MODE_COUNT + 1] = {"fork",  "vfork",  "clone3",
                                                       "spawn", "thread", "syscalls"};

struct worker_result {
    long created;
    double start;
    double end;
};

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void set_name(const char *name)
{
    if (prctl(PR_SET_NAME, name, 0, 0, 0) != 0)
        die("prctl(PR_SET_NAME)");
}

/* NAME_HEX → bytes (1-15, no NUL), written NUL-terminated into out[16]. */
static void decode_hex(const char *hex, char out[16])
{
    size_t len = strlen(hex) / 2;
    memset(out, 0, 16);
    if (len == 0 || len > 15 || strlen(hex) % 2)
        die("a name must be 1-15 bytes, hex-encoded");
    for (size_t i = 0; i < len; i++) {
        unsigned int byte;
        if (sscanf(hex + 2 * i, "%2x", &byte) != 1 || byte == 0)
            die("bad hex name");
        out[i] = (char)byte;
    }
}

static enum mode parse_mode(const char *name)
{
    for (int m = 0; m < MODE_COUNT; m++)
        if (!strcmp(name, MODE_NAMES[m]))
            return (enum mode)m;
    fprintf(stderr, "loadgen: unknown mode %s\n", name);
    exit(2);
}

static void *thread_body(void *arg)
{
    return arg;
}

static void reap(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) < 0)
        die("waitpid");
}

/* One creation by `mode`, waited for, so the host never holds more than one child per worker
 * and the rate is the creation path's own. */
static void create_one(enum mode mode, const char *exit_name)
{
    pid_t pid = 0;
    int err;
    switch (mode) {
    case FORK:
        pid = fork();
        if (pid == 0) {
            if (exit_name)
                prctl(PR_SET_NAME, exit_name, 0, 0, 0);
            _exit(0);
        }
        break;
    case VFORK:
        pid = vfork();
        if (pid == 0)
            _exit(0); /* the only thing a vfork child may do, besides exec */
        break;
    case CLONE3: {
        struct clone_args args;
        memset(&args, 0, sizeof(args));
        args.exit_signal = SIGCHLD;
        pid = (pid_t)syscall(SYS_clone3, &args, sizeof(args));
        if (pid == 0)
            _exit(0);
        break;
    }
    case SPAWN: {
        char *argv[] = {"/bin/true", NULL};
        err = posix_spawn(&pid, argv[0], NULL, NULL, argv, environ);
        if (err) {
            errno = err;
            pid = -1;
        }
        break;
    }
    case THREAD: {
        pthread_t thread;
        err = pthread_create(&thread, NULL, thread_body, NULL);
        if (err) {
            errno = err;
            die("pthread_create");
        }
        pthread_join(thread, NULL);
        return;
    }
    default:
        errno = EINVAL;
        pid = -1;
    }
    if (pid < 0)
        die(MODE_NAMES[mode]);
    reap(pid);
}

static int burst(int argc, char **argv, enum mode mode)
{
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: loadgen burst MODE SECONDS WORKERS NAME_HEX [MIB]\n");
        return 2;
    }
    double seconds = atof(argv[3]);
    int workers = atoi(argv[4]);
    size_t memory = argc == 7 ? (size_t)atol(argv[6]) << 20 : 0;
    char name[16];
    decode_hex(argv[5], name);
    if (workers < 1 || seconds <= 0) {
        fprintf(stderr, "loadgen: WORKERS >= 1 and SECONDS > 0\n");
        return 2;
    }
    struct worker_result *results = mmap(NULL, sizeof(*results) * (size_t)workers,
                                         PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (results == MAP_FAILED)
        die("mmap");
    int ready[2], go[2];
    if (pipe(ready) || pipe(go))
        die("pipe");
    pid_t *pids = calloc((size_t)workers, sizeof(pid_t));
    for (int w = 0; w < workers; w++) {
        pids[w] = fork();
        if (pids[w] < 0)
            die("fork worker");
        if (pids[w] == 0) {
            char byte = 0;
            if (memory) {
                char *heap = malloc(memory);
                if (!heap)
                    die("malloc");
                memset(heap, 1, memory); /* every page present, so a fork copies its tables */
            }
            set_name(name); /* from here on, every creation counts under NAME */
            close(ready[0]);
            close(go[1]);
            if (write(ready[1], &byte, 1) != 1 || read(go[0], &byte, 1) != 0)
                die("start barrier");
            struct worker_result *r = &results[w];
            r->start = now();
            double deadline = r->start + seconds;
            long made = 0;
            if (mode == SYSCALLS) {
                do { /* 1,000 calls between clock reads: the clock would cost as much */
                    for (int i = 0; i < 1000; i++)
                        syscall(SYS_getppid);
                    made += 1000;
                } while (now() < deadline);
            } else {
                do {
                    create_one(mode, NULL);
                    made++;
                } while (now() < deadline);
            }
            r->end = now();
            r->created = made;
            _exit(0);
        }
    }
    close(ready[1]);
    close(go[0]);
    for (int w = 0; w < workers; w++) {
        char byte;
        if (read(ready[0], &byte, 1) != 1)
            die("worker did not start");
    }
    close(go[1]); /* every worker's read() returns 0: all start together */
    long created = 0;
    double first = 0, last = 0;
    int failed = 0;
    for (int w = 0; w < workers; w++) {
        int status;
        if (waitpid(pids[w], &status, 0) < 0)
            die("waitpid worker");
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        created += results[w].created;
        if (w == 0 || results[w].start < first)
            first = results[w].start;
        if (results[w].end > last)
            last = results[w].end;
    }
    if (failed)
        return 1;
    printf("{\"mode\": \"%s\", \"workers\": %d, \"created\": %ld, \"seconds\": %.6f, "
           "\"per_mode\": {\"%s\": %ld}}\n",
           MODE_NAMES[mode], workers, created, last - first, MODE_NAMES[mode], created);
    return 0;
}

static int names(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: loadgen names COUNT PREFIX_HEX EXIT_NAME_HEX\n");
        return 2;
    }
    long count = atol(argv[2]);
    char prefix[16], exit_name[16], name[48];
    decode_hex(argv[3], prefix);
    decode_hex(argv[4], exit_name);
    double start = now();
    for (long i = 0; i < count; i++) {
        snprintf(name, sizeof(name), "%s%ld", prefix, i);
        if (strlen(name) > 15) {
            fprintf(stderr, "loadgen: prefix too long for %ld names\n", count);
            return 2;
        }
        set_name(name);
        create_one(FORK, exit_name);
    }
    set_name(exit_name);
    printf("{\"mode\": \"names\", \"workers\": 1, \"created\": %ld, \"seconds\": %.6f, "
           "\"per_mode\": {\"fork\": %ld}}\n",
           count, now() - start, count);
    return 0;
}

static int steady(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: loadgen steady SECONDS RATE NAMES NAME_HEX\n");
        return 2;
    }
    double seconds = atof(argv[2]);
    double rate = atof(argv[3]);
    long name_count = atol(argv[4]);
    char base[16], name[48];
    decode_hex(argv[5], base);
    if (rate <= 0 || name_count < 1) {
        fprintf(stderr, "loadgen: RATE > 0 and NAMES >= 1\n");
        return 2;
    }
    long per_mode[MODE_COUNT] = {0};
    double start = now(), deadline = start + seconds;
    long made = 0;
    for (;;) {
        double due = start + (double)made / rate; /* paced from the start: no drift */
        double t = now();
        if (t >= deadline)
            break;
        if (due > t) {
            struct timespec ts = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};
            nanosleep(&ts, NULL);
        }
        snprintf(name, sizeof(name), "%s%ld", base, made % name_count);
        name[15] = 0;
        set_name(name);
        enum mode mode = (enum mode)(made % MODE_COUNT);
        create_one(mode, NULL);
        per_mode[mode]++;
        made++;
    }
    printf("{\"mode\": \"steady\", \"workers\": 1, \"created\": %ld, \"seconds\": %.6f, "
           "\"per_mode\": {",
           made, now() - start);
    for (int m = 0; m < MODE_COUNT; m++)
        printf("%s\"%s\": %ld", m ? ", " : "", MODE_NAMES[m], per_mode[m]);
    printf("}}\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "burst"))
        return burst(argc, argv, parse_mode(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "syscalls")) {
        char *args[] = {argv[0], argv[1], "syscalls", argv[2], argv[3], "73797363616c6c73"};
        return burst(6, args, SYSCALLS); /* named "syscalls" */
    }
    if (argc >= 2 && !strcmp(argv[1], "names"))
        return names(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "steady"))
        return steady(argc, argv);
    fprintf(stderr, "usage: loadgen burst|syscalls|names|steady ...\n");
    return 2;
}
