/* creator: creates processes or threads by one chosen path, under chosen command names that no
 * other program on the host has, so tests can count them exactly and the benchmarks can compare
 * every monitor's count with what was really created. One program for both: the tests use the
 * first form, the benchmarks (benchmarks/loadgen.py) the other four.
 *
 *   creator MODE COUNT [options] NAME_HEX...
 *     MODE         fork | vfork | clone3 | spawn | thread, or badclone3 (a clone3 call that
 *                  fails with EINVAL: its args are too short), or iouring (an io_uring that
 *                  runs one NOP asynchronously: the kernel makes an io-wq worker thread for it
 *                  without kernel_clone(), then the ring is closed)
 *     COUNT        creations per name
 *     NAME_HEX     each name, hex-encoded (any bytes but NUL); the creator sets its own comm to
 *                  it with prctl(PR_SET_NAME) and then makes COUNT creations under it
 *   options:
 *     --child-sleep-ms M   fork/clone3 children sleep M ms before exiting
 *     --together           start all COUNT children, then reap them (lifetimes overlap)
 *     --exec PATH          spawn mode: the program the children run (default /bin/true)
 *     --exit-name-hex H    rename to H before exiting, so the creator's own exit is not
 *                          counted under a test name
 *     --generate K         the one NAME_HEX is a prefix: use K names, prefix + a counter
 *                          (cut to 15 bytes), without putting K names on the command line
 *     --tolerate-failures  count failed creations instead of stopping at the first one
 *     --signal-every-us U  a SIGALRM every U microseconds (interval timer, SA_RESTART
 *                          handler) while creating: clone() calls it interrupts are restarted
 *                          by the kernel, invisibly to the program; prints "signals S" too
 *     --wait               print "ready" and wait for a line on stdin before creating;
 *                          after "done", stay alive until stdin closes
 *     --rate R             at most R creations a second: creation i is made no earlier
 *                          than i/R seconds after the first (a workload of known rate)
 *     --max-ms M           stop creating M ms after the first creation, even short of COUNT
 *                          (with a large COUNT: create for M ms at full speed, or at --rate)
 *     --clone3-enosys      before creating, install a seccomp filter that answers clone3 with
 *                          ENOSYS, as Docker 20.10's default profile does: glibc then falls
 *                          back to clone (for pthread_create, fork and posix_spawn alike)
 *   Prints "done N" with N the creations made (with --tolerate-failures: "done N failed M").
 *   Exits 1 on any failed creation otherwise (badclone3 must fail with EINVAL).
 *
 *   creator burst MODE SECONDS WORKERS NAME_HEX [MIB]
 *       WORKERS processes (forked first, under the program's own name), each renamed to NAME
 *       and released together, create by MODE (fork | vfork | clone3 | spawn | thread) back
 *       to back for SECONDS. MIB: memory each worker writes before it starts (0), which a
 *       fork copies the page tables of, as a server's fork does
 *   creator names COUNT PREFIX_HEX EXIT_NAME_HEX
 *       one process renames itself COUNT times (PREFIX + a decimal index) and forks once under
 *       each name; the children rename to EXIT_NAME before exiting, so each name makes one
 *       procmond_forks_total series and nothing else.
 *   creator syscalls SECONDS WORKERS
 *       WORKERS processes calling getppid() back to back for SECONDS: what any syscall costs
 *       while a probe is attached to syscall tracepoints (those put every task on the
 *       kernel's syscall-tracing path, not only the callers of the traced syscalls).
 *   creator steady SECONDS RATE NAMES NAME_HEX
 *       one process, RATE creations a second for SECONDS, cycling fork, vfork, clone3, spawn
 *       and thread, and cycling through NAMES names (NAME + a decimal index).
 *   These four print one JSON object: {"mode": ..., "created": N, "seconds": S,
 *   "per_mode": {...}}, where S is the wall time from the release of the first worker to the
 *   end of the last one. They exit 1 on any failed creation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <linux/filter.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* The paths of creation; the first five are the ones a program takes to make a process or a
 * thread (the benchmarks' paths, which `steady` cycles through). */
enum mode { FORK, VFORK, CLONE3, SPAWN, THREAD, PATH_COUNT, BADCLONE3 = PATH_COUNT, IOURING,
            MODE_COUNT, SYSCALLS = MODE_COUNT };
static const char *const MODE_NAMES[MODE_COUNT + 1] = {
    "fork", "vfork", "clone3", "spawn", "thread", "badclone3", "iouring", "syscalls"};

static int child_sleep_ms;
static const char *child_exit_name; /* fork/clone3 children rename to it before exiting */
static const char *exec_path = "/bin/true";

static void die(const char *what)
{
    fprintf(stderr, "creator: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void child_body(void)
{
    if (child_exit_name)
        prctl(PR_SET_NAME, child_exit_name, 0, 0, 0);
    if (child_sleep_ms) {
        struct timespec ts = {child_sleep_ms / 1000, (long)(child_sleep_ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
    }
    _exit(0);
}

static void decode_hex(const char *hex, char name[16])
{
    size_t len = strlen(hex) / 2;
    memset(name, 0, 16);
    if (len > 15 || strlen(hex) % 2)
        die("name must be 1-15 bytes, hex-encoded");
    for (size_t i = 0; i < len; i++) {
        unsigned int byte;
        if (sscanf(hex + 2 * i, "%2x", &byte) != 1 || byte == 0)
            die("bad hex name");
        name[i] = (char)byte;
    }
}

static void set_name(const char *name)
{
    if (prctl(PR_SET_NAME, name, 0, 0, 0) != 0)
        die("prctl(PR_SET_NAME)");
}

static void set_name_hex(const char *hex)
{
    char name[16];
    decode_hex(hex, name);
    set_name(name);
}

/* Name number `n` of a generated series: prefix followed by n in decimal, cut to 15 bytes. */
static void set_generated_name(const char *prefix_hex, long n)
{
    char prefix[16], name[48];
    decode_hex(prefix_hex, prefix);
    snprintf(name, sizeof(name), "%s%ld", prefix, n);
    name[15] = 0;
    set_name(name);
}

static volatile sig_atomic_t signals;

static void on_alarm(int signum)
{
    (void)signum;
    signals++;
}

static void signal_every(long usec)
{
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = on_alarm;
    action.sa_flags = SA_RESTART;
    if (sigaction(SIGALRM, &action, NULL) != 0)
        die("sigaction");
    struct itimerval timer = {{usec / 1000000, usec % 1000000}, {usec / 1000000, usec % 1000000}};
    if (setitimer(ITIMER_REAL, &timer, NULL) != 0)
        die("setitimer");
}

/* One io_uring with one NOP forced to io-wq (IOSQE_ASYNC), waited for, then closed. */
static int iouring_nop(void)
{
    struct io_uring_params params;
    memset(&params, 0, sizeof(params));
    int fd = (int)syscall(__NR_io_uring_setup, 4, &params);
    if (fd < 0)
        return -1;
    size_t sq_size = params.sq_off.array + params.sq_entries * sizeof(unsigned);
    size_t sqes_size = params.sq_entries * sizeof(struct io_uring_sqe);
    char *sq = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, IORING_OFF_SQ_RING);
    struct io_uring_sqe *sqes =
        mmap(NULL, sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || sqes == MAP_FAILED)
        die("mmap io_uring");
    unsigned *tail = (unsigned *)(sq + params.sq_off.tail);
    unsigned index = *tail & *(unsigned *)(sq + params.sq_off.ring_mask);
    memset(&sqes[index], 0, sizeof(sqes[index]));
    sqes[index].opcode = IORING_OP_NOP;
    sqes[index].flags = IOSQE_ASYNC;
    ((unsigned *)(sq + params.sq_off.array))[index] = index;
    __atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
    int done = (int)syscall(__NR_io_uring_enter, fd, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    munmap(sqes, sqes_size);
    munmap(sq, sq_size);
    close(fd);
    return done == 1 ? 0 : -1;
}

static double monotonic_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double when)
{
    struct timespec ts = {(time_t)when, (long)((when - (double)(time_t)when) * 1e9)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

static void *thread_body(void *arg)
{
    return arg;
}

static int parse_mode(const char *name, int paths_only)
{
    for (int m = 0; m < (paths_only ? PATH_COUNT : MODE_COUNT); m++)
        if (!strcmp(name, MODE_NAMES[m]))
            return m;
    return -1;
}

/* One creation by `mode`: the child's pid (to reap), 0 when nothing is left to reap (a thread
 * joined, an io_uring closed, badclone3), -1 with errno on failure. */
static pid_t create_one(enum mode mode)
{
    pid_t pid;
    switch (mode) {
    case FORK:
        pid = fork();
        if (pid == 0)
            child_body();
        return pid;
    case VFORK:
        pid = vfork();
        if (pid == 0)
            _exit(0); /* the only thing a vfork child may do, besides exec */
        return pid;
    case CLONE3: {
        struct clone_args args;
        memset(&args, 0, sizeof(args));
        args.exit_signal = SIGCHLD;
        pid = (pid_t)syscall(SYS_clone3, &args, sizeof(args));
        if (pid == 0)
            child_body();
        return pid;
    }
    case BADCLONE3: {
        struct clone_args args;
        memset(&args, 0, sizeof(args));
        if (syscall(SYS_clone3, &args, 8) != -1 || errno != EINVAL)
            die("badclone3 did not fail with EINVAL");
        return 0;
    }
    case SPAWN: {
        char *argv[] = {(char *)exec_path, NULL};
        int err = posix_spawn(&pid, exec_path, NULL, NULL, argv, environ);
        if (err) {
            errno = err;
            return -1;
        }
        return pid;
    }
    case IOURING:
        return iouring_nop();
    case THREAD: {
        pthread_t thread;
        int err = pthread_create(&thread, NULL, thread_body, NULL);
        if (err) {
            errno = err;
            return -1;
        }
        pthread_join(thread, NULL);
        return 0;
    }
    default:
        errno = EINVAL;
        return -1;
    }
}

static void reap(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) < 0)
        die("waitpid");
}

/* One creation, waited for, so the host never holds more than one child per worker and the
 * rate is the creation path's own; any failure ends the program. */
static void create_and_reap(enum mode mode)
{
    pid_t pid = create_one(mode);
    if (pid < 0)
        die(MODE_NAMES[mode]);
    if (pid > 0)
        reap(pid);
}

/* NAME_HEX → bytes (1-15, no NUL), for the benchmarks' forms, which need a name. */
static void decode_name(const char *hex, char out[16])
{
    decode_hex(hex, out);
    if (!out[0]) {
        errno = EINVAL;
        die("a name must be 1-15 bytes, hex-encoded");
    }
}

struct worker_result {
    long created;
    double start;
    double end;
};

static int burst(int argc, char **argv, int mode)
{
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: creator burst MODE SECONDS WORKERS NAME_HEX [MIB]\n");
        return 2;
    }
    if (mode < 0) {
        fprintf(stderr, "creator: unknown mode %s\n", argv[2]);
        return 2;
    }
    double seconds = atof(argv[3]);
    int workers = atoi(argv[4]);
    size_t memory = argc == 7 ? (size_t)atol(argv[6]) << 20 : 0;
    char name[16];
    decode_name(argv[5], name);
    if (workers < 1 || seconds <= 0) {
        fprintf(stderr, "creator: WORKERS >= 1 and SECONDS > 0\n");
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
            r->start = monotonic_seconds();
            double deadline = r->start + seconds;
            long made = 0;
            if (mode == SYSCALLS) {
                do { /* 1,000 calls between clock reads: the clock would cost as much */
                    for (int i = 0; i < 1000; i++)
                        syscall(SYS_getppid);
                    made += 1000;
                } while (monotonic_seconds() < deadline);
            } else {
                do {
                    create_and_reap((enum mode)mode);
                    made++;
                } while (monotonic_seconds() < deadline);
            }
            r->end = monotonic_seconds();
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
        fprintf(stderr, "usage: creator names COUNT PREFIX_HEX EXIT_NAME_HEX\n");
        return 2;
    }
    long count = atol(argv[2]);
    char prefix[16], exit_name[16], name[48];
    decode_name(argv[3], prefix);
    decode_name(argv[4], exit_name);
    child_exit_name = exit_name;
    double start = monotonic_seconds();
    for (long i = 0; i < count; i++) {
        snprintf(name, sizeof(name), "%s%ld", prefix, i);
        if (strlen(name) > 15) {
            fprintf(stderr, "creator: prefix too long for %ld names\n", count);
            return 2;
        }
        set_name(name);
        create_and_reap(FORK);
    }
    set_name(exit_name);
    printf("{\"mode\": \"names\", \"workers\": 1, \"created\": %ld, \"seconds\": %.6f, "
           "\"per_mode\": {\"fork\": %ld}}\n",
           count, monotonic_seconds() - start, count);
    return 0;
}

static int steady(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: creator steady SECONDS RATE NAMES NAME_HEX\n");
        return 2;
    }
    double seconds = atof(argv[2]);
    double rate = atof(argv[3]);
    long name_count = atol(argv[4]);
    char base[16], name[48];
    decode_name(argv[5], base);
    if (rate <= 0 || name_count < 1) {
        fprintf(stderr, "creator: RATE > 0 and NAMES >= 1\n");
        return 2;
    }
    long per_mode[PATH_COUNT] = {0};
    double start = monotonic_seconds(), deadline = start + seconds;
    long made = 0;
    for (;;) {
        double due = start + (double)made / rate; /* paced from the start: no drift */
        double t = monotonic_seconds();
        if (t >= deadline)
            break;
        if (due > t) {
            struct timespec ts = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};
            nanosleep(&ts, NULL);
        }
        snprintf(name, sizeof(name), "%s%ld", base, made % name_count);
        name[15] = 0;
        set_name(name);
        enum mode mode = (enum mode)(made % PATH_COUNT);
        create_and_reap(mode);
        per_mode[mode]++;
        made++;
    }
    printf("{\"mode\": \"steady\", \"workers\": 1, \"created\": %ld, \"seconds\": %.6f, "
           "\"per_mode\": {",
           made, monotonic_seconds() - start);
    for (int m = 0; m < PATH_COUNT; m++)
        printf("%s\"%s\": %ld", m ? ", " : "", MODE_NAMES[m], per_mode[m]);
    printf("}}\n");
    return 0;
}

/* The kernel's own mechanism, as a container runtime installs it: a classic-BPF seccomp filter
 * that fails clone3 with ENOSYS and allows everything else. No architecture check: clone3 has
 * the same number (435) in the native and compat tables of every architecture that has it. */
static void deny_clone3_with_enosys(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog program = {sizeof(filter) / sizeof(filter[0]), filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        die("prctl(PR_SET_NO_NEW_PRIVS)");
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program))
        die("prctl(PR_SET_SECCOMP)");
    if (syscall(SYS_clone3, NULL, 0) != -1 || errno != ENOSYS)
        die("the seccomp filter does not answer clone3 with ENOSYS");
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "burst"))
        return burst(argc, argv, parse_mode(argv[2], 1));
    if (argc == 4 && !strcmp(argv[1], "syscalls")) {
        char *args[] = {argv[0], argv[1], "syscalls", argv[2], argv[3], "73797363616c6c73"};
        return burst(6, args, SYSCALLS); /* named "syscalls" */
    }
    if (argc >= 2 && !strcmp(argv[1], "names"))
        return names(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "steady"))
        return steady(argc, argv);
    if (argc < 4) {
        fprintf(stderr, "usage: creator MODE COUNT [options] NAME_HEX...\n");
        return 2;
    }
    int mode = parse_mode(argv[1], 0);
    long count = strtol(argv[2], NULL, 10);
    const char *exit_name = NULL;
    int together = 0, wait_go = 0, tolerate = 0, first_name = 3;
    long generate = 0, signal_usec = 0;
    double rate = 0, max_seconds = 0;

    for (; first_name < argc && !strncmp(argv[first_name], "--", 2); first_name++) {
        const char *opt = argv[first_name];
        if (!strcmp(opt, "--together"))
            together = 1;
        else if (!strcmp(opt, "--wait"))
            wait_go = 1;
        else if (!strcmp(opt, "--tolerate-failures"))
            tolerate = 1;
        else if (!strcmp(opt, "--child-sleep-ms") && first_name + 1 < argc)
            child_sleep_ms = atoi(argv[++first_name]);
        else if (!strcmp(opt, "--exec") && first_name + 1 < argc)
            exec_path = argv[++first_name];
        else if (!strcmp(opt, "--generate") && first_name + 1 < argc)
            generate = strtol(argv[++first_name], NULL, 10);
        else if (!strcmp(opt, "--signal-every-us") && first_name + 1 < argc)
            signal_usec = strtol(argv[++first_name], NULL, 10);
        else if (!strcmp(opt, "--rate") && first_name + 1 < argc)
            rate = strtod(argv[++first_name], NULL);
        else if (!strcmp(opt, "--max-ms") && first_name + 1 < argc)
            max_seconds = strtod(argv[++first_name], NULL) / 1000;
        else if (!strcmp(opt, "--clone3-enosys"))
            deny_clone3_with_enosys();
        else if (!strcmp(opt, "--exit-name-hex") && first_name + 1 < argc)
            exit_name = argv[++first_name];
        else {
            fprintf(stderr, "creator: unknown option %s\n", opt);
            return 2;
        }
    }
    if (wait_go) {
        char line[16];
        printf("ready\n");
        fflush(stdout);
        if (!fgets(line, sizeof(line), stdin))
            return 1;
    }
    if (signal_usec > 0)
        signal_every(signal_usec);
    pid_t *pids = calloc((size_t)count, sizeof(pid_t));
    long made = 0, failed = 0, attempts = 0;
    long names = generate ? generate : argc - first_name;
    if (generate && argc - first_name != 1)
        die("--generate takes exactly one NAME_HEX, the prefix");
    double start = monotonic_seconds();
    int out_of_time = 0;
    for (long n = 0; n < names && !out_of_time; n++) {
        if (generate)
            set_generated_name(argv[first_name], n);
        else
            set_name_hex(argv[first_name + n]);
        for (long i = 0; i < count; i++) {
            if (rate > 0)
                sleep_until(start + (double)attempts / rate);
            if (max_seconds > 0 && monotonic_seconds() - start >= max_seconds) {
                out_of_time = 1;
                count = i; /* reap only what was made */
                break;
            }
            attempts++;
            pid_t pid = create_one((enum mode)mode);
            pids[i] = pid;
            if (pid < 0 && tolerate) {
                failed++;
                continue;
            }
            if (pid < 0)
                die(argv[1]);
            made++;
            if (pid > 0 && !together)
                reap(pid);
        }
        for (long i = 0; together && i < count; i++)
            if (pids[i] > 0)
                reap(pids[i]);
    }
    if (signal_usec > 0) {
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, NULL);
        printf("signals %ld\n", (long)signals);
    }
    if (exit_name)
        set_name_hex(exit_name);
    if (tolerate)
        printf("done %ld failed %ld\n", made, failed);
    else
        printf("done %ld\n", made);
    fflush(stdout);
    if (wait_go)
        while (getchar() != EOF)
            ;
    return 0;
}
