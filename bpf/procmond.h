/* Shared definitions of the procmond probe: map keys and values, map ids, and the defaults
 * that the loader overrides with -D flags.
 *
 * This file is the one source of truth between C and Python. Python never restates it:
 *   - struct layouts (keys, values, events) come from the compiled program: the loader child
 *     reads BCC's types of every map and hands their field offsets to the daemon;
 *   - the enums are read from this file by procmond/kernel/header.py, by the naming rules stated at
 *     each enum; enum probe_map is the one list of the maps and their roles
 *     (procmond/kernel/inventory.py);
 *   - the #ifndef defaults only let this file compile alone: the loader always passes the
 *     config's values, and a test keeps these defaults equal to procmond/config.py's. */
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
#define HISTOGRAM_MAX_ENTRIES 256
#endif

/* Which labels are kept: a dropped label is zeroed in the key, so its series merge.
 * LABEL_CGROUP keys counters by the creating task's cgroup v2 id, from which user space
 * derives the unit, namespace, pod and container labels. */
#ifndef LABEL_COMM
#define LABEL_COMM 1
#endif
#ifndef LABEL_PARENT_COMM
#define LABEL_PARENT_COMM 1
#endif
#ifndef LABEL_CGROUP
#define LABEL_CGROUP 1
#endif

/* Paths of the cgroups created while the probe runs, by id (an LRU map: the newest are kept),
 * so that a cgroup gone before the next scrape is still named. */
#ifndef CGROUP_PATHS_MAX_ENTRIES
#define CGROUP_PATHS_MAX_ENTRIES 4096
#endif
#define CGROUP_PATH_LEN 256

/* Cgroups removed since the daemon last read gone_task_limit_hits, that had refused forks
 * (their pids controller's count; see on_cgroup_rmdir). The daemon takes each entry at its
 * next scrape. When it is full, the refused forks of the next removed cgroups are counted in
 * overflow_events[MAP_ID_GONE_TASK_LIMIT_HITS] instead (one event per refused fork). A fixed
 * capacity (~280 KB): only cgroups that refused a fork, removed within one scrape interval. */
#define GONE_TASK_LIMITS_MAX_ENTRIES 1024

/* Offset of `long ret` in the syscalls:sys_exit_* records; the loader reads it from the
 * tracepoint's format file. */
#ifndef SYS_EXIT_RET_OFF
#define SYS_EXIT_RET_OFF 16
#endif

#ifndef HISTOGRAMS
#define HISTOGRAMS 1
#endif

/* The clone/clone3/fork/vfork syscall probes (fork durations, failures by errno): opt-in,
 * because any syscall tracepoint slows every syscall of every task on the host. */
#ifndef SYSCALL_PROBES
#define SYSCALL_PROBES 0
#endif

/* Creations counted per creating process, for storm reports and `procmond top`: only while
 * storm_watch[0] holds a non-zero generation (the daemon sets it while it suspects a storm;
 * `top` keeps it set), so that outside storms a creation pays one array lookup. An LRU map:
 * this is forensics, not a counter, and the busiest creators are the ones kept. */
#ifndef CREATORS_MAX_ENTRIES
#define CREATORS_MAX_ENTRIES 1024
#endif

/* The storm alarm is counted down per CPU and taken off the shared slot ALARM_BATCH creations
 * at a time: two CPUs creating at full speed passed that cache line back and forth at every
 * creation (~+200 ns a creation on the development machine). The alarm then rings up to
 * ALARM_BATCH - 1 creations per CPU early or late. */
#define ALARM_BATCH 16

/* `procmond watch` readers at once: each has a ring buffer of its own (watch_events_<i>),
 * because a BPF ring buffer has one consumer position; two readers of one ring would each see
 * only part of the events. The probe writes to a reader's ring only while that reader's lease
 * (watch_leases) runs, and to none while WATCH_SLOT_ANY is 0: a creation then pays one array
 * lookup. procmond.bpf.c declares the rings one by one: change both together. */
#define WATCH_READERS 4
/* Pages (of 4 KiB) of each reader's ring buffer; a power of two. */
#ifndef WATCH_RINGBUF_PAGES
#define WATCH_RINGBUF_PAGES 64
#endif

/* A histogram keeps one count per power of two of nanoseconds: slot k counts values v with
 * 2^(k-1) < v <= 2^k (slot 0: v <= 1), so slot k is exactly Prometheus' le="2^k ns" step. */
#define HIST_SLOTS 64

/* Histogram keys: the command only (a histogram entry is 65 counters; no cgroup). */
struct comm_key {
    char comm[COMM_LEN];
};

/* Counter keys carry the cgroup v2 id of the task that made the event (0 when LABEL_CGROUP is
 * off): the same id is the inode number of the cgroup's directory. */
struct cgroup_comm_key {
    u64 cgroup_id;
    char comm[COMM_LEN];
};

struct comm_pair_key {
    u64 cgroup_id;
    char comm[COMM_LEN];
    char parent_comm[COMM_LEN];
};

/* A failed clone/clone3/fork/vfork call: the caller's command and the error (positive errno). */
struct failure_key {
    u64 cgroup_id;
    char comm[COMM_LEN];
    u32 error;
};

struct cgroup_path {
    char path[CGROUP_PATH_LEN]; /* below the cgroup2 mount, as "/system.slice/cron.service" */
};

/* A removed cgroup of the pids controller's hierarchy (gone_task_limit_hits, keyed by the
 * cgroup's id in that hierarchy: its directory's inode number): the forks it refused, as its
 * pids.events.local (v2) or pids.events (v1) showed them at removal, and its path from the
 * hierarchy's root (whatever the remover's cgroup namespace), which names it only if whole. */
struct gone_pids_cgroup {
    u64 hits;
    u64 path_len; /* bytes read into path, its NUL included: CGROUP_PATH_LEN if cut short */
    char path[CGROUP_PATH_LEN]; /* as "/system.slice/cron.service" */
};

struct hist_value {
    u64 slots[HIST_SLOTS];
    u64 sum_ns;
};

/* One creating process (creators map, keyed by its pid), as it was at its first creation of
 * this generation. A pid reused by a new process starts afresh: its start time differs. */
struct creator {
    u64 forks;      /* processes created */
    u64 threads;    /* threads created */
    u64 cgroup_id;  /* cgroup v2 id of the creating task */
    u64 start_ns;   /* the process's start time (its leader's), which tells a reused pid */
    u32 ppid;       /* its parent process */
    u32 generation; /* storm_watch[0] when the entry was started: older ones are stale */
    char comm[COMM_LEN];
    char parent_comm[COMM_LEN];
};

/* Which syscall a thread is in, for fork-duration timing and for `watch`. Python names each
 * value by its member without the SYSCALL_ prefix, in lower case (`watch` prints it). */
enum creation_syscall {
    SYSCALL_KERNEL_CLONE = 0, /* made by the kernel itself (kthreads, io_uring workers) */
    SYSCALL_SYS_CLONE = 1,
    SYSCALL_SYS_CLONE3 = 2,
    SYSCALL_SYS_FORK = 3,
    SYSCALL_SYS_VFORK = 4,
    SYSCALL_UNKNOWN = 5, /* the probe has no syscall probes to tell (a daemon's, by default) */
};

/* The creation syscall a thread is in: per-task storage, freed with the task. */
struct inflight {
    u64 start_ns;   /* first entry of the call; 0 when no call is being timed */
    u32 syscall;    /* enum creation_syscall */
    u32 restarting; /* the call returned a restart code: its re-entry keeps start_ns */
};

/* Index of each map's slot in overflow_events[] and overflow_hist[]. Python names each slot
 * by its member without the MAP_ID_ prefix, in lower case: the map of that name (the
 * `map` label of procmond_map_overflow_events_total). MAP_ID_INFLIGHT counts fork-duration
 * samples lost because the task's storage could not be had. */
enum map_id {
    MAP_ID_FORKS_TOTAL,
    MAP_ID_THREADS_CREATED_TOTAL,
    MAP_ID_EXECS_TOTAL,
    MAP_ID_EXITS_TOTAL,
    MAP_ID_PROCESS_LIFETIME_SECONDS,
    MAP_ID_FORK_DURATION_SECONDS,
    MAP_ID_FORK_FAILURES_TOTAL,
    MAP_ID_INFLIGHT,
    MAP_ID_GONE_TASK_LIMIT_HITS,
    MAP_ID_COUNT, /* not a map: the number of slots */
};

/* What procmond's Python side does with a map: the bits of each enum probe_map value. */
enum map_role {
    MAP_ROLE_KERNEL = 0,     /* the probe's own scratch: no process opens it */
    MAP_ROLE_COUNTER = 1,    /* a counter metric's map: a u64 count by key */
    MAP_ROLE_HISTOGRAM = 2,  /* a histogram metric's map: a struct hist_value by key */
    MAP_ROLE_HANDED = 4,     /* handed to the daemon and pinned with the probe */
    MAP_ROLE_LAYOUT = 8,     /* handed with its key and value layouts (a ring: its record's) */
    MAP_ROLE_ALARM = 16,     /* the storm monitor's alarm (procmond/kernel/alarm.py) */
    MAP_ROLE_STREAM = 32,    /* `procmond watch`'s event stream (procmond/kernel/watch_stream.py) */
    MAP_ROLE_RING = 64,      /* a ring buffer, one per `procmond watch` reader */
    MAP_ROLE_STORMS = 128,   /* per-process counting for storm reports and `procmond top` */
    MAP_ROLE_SHARED = 256,   /* pinned beside the probes' folders, shared by them (handover) */
};

/* Every map procmond.bpf.c declares, by name: Python names each by its member without the
 * PROBE_MAP_ prefix, in lower case (procmond/kernel/inventory.py), and reads what it does with
 * it from the value's MAP_ROLE_ bits. A test keeps this list and the declarations the same. */
enum probe_map {
    PROBE_MAP_FORKS_TOTAL = MAP_ROLE_COUNTER | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_THREADS_CREATED_TOTAL = MAP_ROLE_COUNTER | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_EXECS_TOTAL = MAP_ROLE_COUNTER | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_EXITS_TOTAL = MAP_ROLE_COUNTER | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_FORK_FAILURES_TOTAL = MAP_ROLE_COUNTER | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_PROCESS_LIFETIME_SECONDS = MAP_ROLE_HISTOGRAM | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_FORK_DURATION_SECONDS = MAP_ROLE_HISTOGRAM | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_INFLIGHT = MAP_ROLE_KERNEL,
    PROBE_MAP_OVERFLOW_EVENTS = MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_OVERFLOW_HIST = MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_HIST_ZERO = MAP_ROLE_KERNEL,
    PROBE_MAP_CGROUP_PATHS = MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_GONE_TASK_LIMIT_HITS = MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_STORM_WATCH = MAP_ROLE_STORMS | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_HANDOVER = MAP_ROLE_SHARED,
    PROBE_MAP_CREATORS = MAP_ROLE_STORMS | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_STORM_ALARM = MAP_ROLE_ALARM | MAP_ROLE_HANDED,
    PROBE_MAP_STORM_WAKE = MAP_ROLE_ALARM | MAP_ROLE_HANDED,
    PROBE_MAP_ALARM_PENDING = MAP_ROLE_KERNEL,
    PROBE_MAP_WATCH_LEASES = MAP_ROLE_STREAM | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_WATCH_EVENTS_0 = MAP_ROLE_STREAM | MAP_ROLE_RING | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_WATCH_EVENTS_1 = MAP_ROLE_STREAM | MAP_ROLE_RING | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_WATCH_EVENTS_2 = MAP_ROLE_STREAM | MAP_ROLE_RING | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_WATCH_EVENTS_3 = MAP_ROLE_STREAM | MAP_ROLE_RING | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
    PROBE_MAP_WATCH_LOST = MAP_ROLE_STREAM | MAP_ROLE_HANDED | MAP_ROLE_LAYOUT,
};

/* What a `procmond watch` event reports. Python names each value by its member without the
 * EVENT_ prefix, in lower case. */
enum event_kind {
    EVENT_CREATION = 0, /* a process or thread created */
    EVENT_EXEC = 1,     /* a successful exec (only while watch_leases[WATCH_SLOT_EXECS] runs) */
};

/* Slots of watch_leases, each a CLOCK_MONOTONIC time in ns (bpf_ktime_get_ns) until which it
 * is on; 0 is off. A reader refreshes its lease while it reads, so one killed with SIGKILL
 * turns nothing on for longer than a lease: the first creation after the last lease ran out
 * switches WATCH_SLOT_ANY back to 0. Reader i's slot is WATCH_SLOT_READER + i. */
enum watch_slot {
    WATCH_SLOT_ANY = 0,    /* the latest lease of any reader: the stream's one switch */
    WATCH_SLOT_EXECS = 1,  /* the latest lease of a reader that wants exec events */
    WATCH_SLOT_READER = 2, /* the first reader's own lease */
};

/* One creation (or exec), as streamed to `procmond watch`. For an exec, pid is the process
 * that exec'd, comm its new command, and child_pid and child_tid are pid. */
struct creation_event {
    u64 timestamp_ns;
    u64 cgroup_id; /* cgroup v2 id of the creating (or exec'ing) task */
    u32 pid;       /* the creating process (tgid) */
    u32 ppid;      /* its parent process */
    u32 child_pid; /* the new process, or the new thread's process */
    u32 child_tid; /* the new task */
    u32 syscall;   /* enum creation_syscall */
    u32 is_thread;
    u32 kind; /* enum event_kind */
    char comm[COMM_LEN];
    char parent_comm[COMM_LEN];
};

#endif /* PROCMOND_H */
