/* Shared definitions of the procmond probe: map keys and values, map ids, and the defaults
 * that the loader overrides with -D flags. The loader reads key and value layouts from the
 * compiled program (BCC builds ctypes types from them), so Python has no copy of these structs;
 * only the MAP_ID_* order is mirrored in procmond/bpf_loader.py (checked at load time). */
#ifndef PROCMOND_H
#define PROCMOND_H

#define COMM_LEN 16 /* TASK_COMM_LEN: a real comm is always NUL-terminated within it */

/* Capacity of each counter map (one entry per label set) and of each histogram map (one entry
 * per label set, holding every bucket). Events for new label sets that find the map full are
 * counted per map in overflow_events (overflow_hist for histograms) instead. */
#ifndef MAX_ENTRIES
#define MAX_ENTRIES 4096
#endif
#ifndef HISTOGRAM_MAX_ENTRIES
#define HISTOGRAM_MAX_ENTRIES 512
#endif

/* Threads that can be inside clone/fork/vfork at the same time (fork-duration timing). */
#ifndef INFLIGHT_MAX_ENTRIES
#define INFLIGHT_MAX_ENTRIES 16384
#endif

/* Which labels are kept: a dropped label is zeroed in the key, so its series merge. */
#ifndef LABEL_COMM
#define LABEL_COMM 1
#endif
#ifndef LABEL_PARENT_COMM
#define LABEL_PARENT_COMM 1
#endif

/* Offset of `long ret` in the syscalls:sys_exit_* records; the loader reads it from the
 * tracepoint's format file. */
#ifndef SYS_EXIT_RET_OFF
#define SYS_EXIT_RET_OFF 16
#endif

#ifndef HISTOGRAMS
#define HISTOGRAMS 1
#endif

/* Pages (of 4 KiB) of the ring buffer that `procmond watch` reads; a power of two. */
#ifndef WATCH_RINGBUF_PAGES
#define WATCH_RINGBUF_PAGES 256
#endif

/* A histogram keeps one count per power of two of nanoseconds: slot k counts values v with
 * 2^(k-1) < v <= 2^k (slot 0: v <= 1), so slot k is exactly Prometheus' le="2^k ns" step. */
#define HIST_SLOTS 64

struct comm_key {
    char comm[COMM_LEN];
};

struct comm_pair_key {
    char comm[COMM_LEN];
    char parent_comm[COMM_LEN];
};

/* A failed clone/clone3/fork/vfork call: the caller's command and the error (positive errno). */
struct failure_key {
    char comm[COMM_LEN];
    u32 error;
};

struct hist_value {
    u64 slots[HIST_SLOTS];
    u64 sum_ns;
};

/* Which syscall a thread is in, for fork-duration timing and for `watch`. */
enum creation_syscall {
    SYSCALL_UNKNOWN = 0, /* created by the kernel itself (kthreads, io_uring workers) */
    SYSCALL_CLONE = 1,
    SYSCALL_CLONE3 = 2,
    SYSCALL_FORK = 3,
    SYSCALL_VFORK = 4,
};

struct inflight {
    u64 start_ns;
    u32 syscall;
    u32 _pad;
};

/* Ids of the maps whose overflow is counted in overflow_events[]. */
enum map_id {
    MAP_ID_FORKS = 0,
    MAP_ID_THREADS_CREATED = 1,
    MAP_ID_EXECS = 2,
    MAP_ID_EXITS = 3,
    MAP_ID_PROCESS_LIFETIME = 4,
    MAP_ID_FORK_DURATION = 5,
    MAP_ID_FORK_FAILURES = 6,
    MAP_ID_INFLIGHT = 7,
    MAP_ID_COUNT = 8,
};

/* One creation, as streamed to `procmond watch`. */
struct creation_event {
    u64 timestamp_ns;
    u32 pid;       /* the creating process (tgid) */
    u32 ppid;      /* its parent process */
    u32 child_pid; /* the new process, or the new thread's process */
    u32 child_tid; /* the new task */
    u32 syscall;   /* enum creation_syscall */
    u32 is_thread;
    char comm[COMM_LEN];
    char parent_comm[COMM_LEN];
};

#endif /* PROCMOND_H */
