/* creator: creates processes or threads by one chosen path, under chosen command names, so
 * tests can count them exactly (no other program on the host has these names) and benchmarks
 * can drive load.
 *
 *   creator MODE COUNT [options] NAME_HEX...
 *     MODE         fork | vfork | clone3 | spawn | thread, or badclone3 (a clone3 call that
 *                  fails with EINVAL: its args are too short)
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
 *     --wait               print "ready" and wait for a line on stdin before creating;
 *                          after "done", stay alive until stdin closes
 *
 * Prints "done N" with N the creations made (with --tolerate-failures: "done N failed M").
 * Exits 1 on any failed creation otherwise (badclone3 must fail with EINVAL).
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
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int child_sleep_ms;
static const char *exec_path = "/bin/true";

static void die(const char *what)
{
    fprintf(stderr, "creator: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void child_body(void)
{
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

static void *thread_body(void *arg)
{
    return arg;
}

static pid_t create_one(const char *mode)
{
    pid_t pid;
    if (!strcmp(mode, "fork")) {
        pid = fork();
        if (pid == 0)
            child_body();
    } else if (!strcmp(mode, "vfork")) {
        pid = vfork();
        if (pid == 0)
            _exit(0); /* the only thing a vfork child may do, besides exec */
    } else if (!strcmp(mode, "clone3")) {
        struct clone_args args;
        memset(&args, 0, sizeof(args));
        args.exit_signal = SIGCHLD;
        pid = (pid_t)syscall(SYS_clone3, &args, sizeof(args));
        if (pid == 0)
            child_body();
    } else if (!strcmp(mode, "badclone3")) {
        struct clone_args args;
        memset(&args, 0, sizeof(args));
        if (syscall(SYS_clone3, &args, 8) != -1 || errno != EINVAL)
            die("badclone3 did not fail with EINVAL");
        return 0;
    } else if (!strcmp(mode, "spawn")) {
        char *argv[] = {(char *)exec_path, NULL};
        int err = posix_spawn(&pid, exec_path, NULL, NULL, argv, environ);
        if (err) {
            errno = err;
            return -1;
        }
    } else if (!strcmp(mode, "thread")) {
        pthread_t thread;
        int err = pthread_create(&thread, NULL, thread_body, NULL);
        if (err) {
            errno = err;
            return -1;
        }
        pthread_join(thread, NULL);
        return 0;
    } else {
        errno = EINVAL;
        return -1;
    }
    return pid;
}

static void reap(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) < 0)
        die("waitpid");
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: creator MODE COUNT [options] NAME_HEX...\n");
        return 2;
    }
    const char *mode = argv[1];
    long count = strtol(argv[2], NULL, 10);
    const char *exit_name = NULL;
    int together = 0, wait_go = 0, tolerate = 0, first_name = 3;
    long generate = 0;

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
    pid_t *pids = calloc((size_t)count, sizeof(pid_t));
    long made = 0, failed = 0;
    long names = generate ? generate : argc - first_name;
    if (generate && argc - first_name != 1)
        die("--generate takes exactly one NAME_HEX, the prefix");
    for (long n = 0; n < names; n++) {
        if (generate)
            set_generated_name(argv[first_name], n);
        else
            set_name_hex(argv[first_name + n]);
        for (long i = 0; i < count; i++) {
            pid_t pid = create_one(mode);
            pids[i] = pid;
            if (pid < 0 && tolerate) {
                failed++;
                continue;
            }
            if (pid < 0)
                die(mode);
            made++;
            if (pid > 0 && !together)
                reap(pid);
        }
        for (long i = 0; together && i < count; i++)
            if (pids[i] > 0)
                reap(pids[i]);
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
