/* procmond kernel side: counts process and thread creation, exec and exit in BPF maps.
 *
 * Every probe only updates maps (and, while `procmond watch` reads, its ring buffers); Python
 * reads the maps when Prometheus scrapes. Struct offsets come in as -D flags read from the running
 * kernel's BTF, because the installed headers may describe another kernel. Without them
 * (PROCMOND_BTF_OFFSETS undefined) the headers' layout is used.
 *
 * Probes, each attached by name from procmond/kernel/bpf_loader.py:
 *   on_task_newtask        raw tracepoint: one count per task copy_process() creates, on every
 *                          path (fork, vfork, clone, clone3, and the io_uring and vhost workers
 *                          the kernel makes without kernel_clone(), which sched_process_fork
 *                          never sees); the same count as /proc/stat's `processes`; while
 *                          storm_watch is on, also per creating process (creators); and
 *                          while the storm monitor sleeps, its alarm counts down (storm_alarm)
 *   on_sched_process_exec  raw tracepoint: execs
 *   on_sched_process_exit  raw tracepoint: process exits (once per process) and lifetime
 *   on_cgroup_mkdir        tracepoint, only with LABEL_CGROUP: the path of each new cgroup
 *   on_cgroup_rmdir        raw tracepoint, with the pids controller's offsets: the refused-fork
 *                          counts of a removed cgroup, which its pids.events can no longer give
 *   on_sys_{enter,exit}_{clone,clone3,fork,vfork}  tracepoints, only with SYSCALL_PROBES (or
 *                          for `watch`): time spent in the call, and failed calls by error
 */
#include "procmond.h"

#ifndef PROCMOND_BTF_OFFSETS
#include <linux/sched.h>
#include <linux/sched/signal.h>
#define TASK_PID_OFF offsetof(struct task_struct, pid)
#define TASK_TGID_OFF offsetof(struct task_struct, tgid)
#define TASK_REAL_PARENT_OFF offsetof(struct task_struct, real_parent)
#define TASK_GROUP_LEADER_OFF offsetof(struct task_struct, group_leader)
#define TASK_START_TIME_OFF offsetof(struct task_struct, start_time)
#define TASK_COMM_OFF offsetof(struct task_struct, comm)
#define TASK_SIGNAL_OFF offsetof(struct task_struct, signal)
#define SIGNAL_LIVE_OFF offsetof(struct signal_struct, live)
#endif

BPF_HASH(forks_total, struct comm_pair_key, u64, MAX_ENTRIES);
BPF_HASH(threads_created_total, struct comm_pair_key, u64, MAX_ENTRIES);
BPF_HASH(execs_total, struct comm_pair_key, u64, MAX_ENTRIES);
BPF_HASH(exits_total, struct cgroup_comm_key, u64, MAX_ENTRIES);
BPF_HASH(fork_failures_total, struct failure_key, u64, MAX_ENTRIES);
BPF_HASH(process_lifetime_seconds, struct comm_key, struct hist_value, HISTOGRAM_MAX_ENTRIES);
BPF_HASH(fork_duration_seconds, struct comm_key, struct hist_value, HISTOGRAM_MAX_ENTRIES);
#if SYSCALL_PROBES || defined(PROCMOND_WATCH)
/* Per task, so nothing is left behind by a thread killed inside clone(), and no capacity. */
BPF_TASK_STORAGE(inflight, struct inflight);
#endif
/* Per map: events that found the map full (see add_one), and their histogram observations. */
BPF_PERCPU_ARRAY(overflow_events, u64, MAP_ID_COUNT);
BPF_PERCPU_ARRAY(overflow_hist, struct hist_value, MAP_ID_COUNT);
/* A zeroed hist_value to initialise new histogram entries from: it is too big for the stack. */
BPF_ARRAY(hist_zero, struct hist_value, 1);

BPF_TABLE("lru_hash", u64, struct cgroup_path, cgroup_paths, CGROUP_PATHS_MAX_ENTRIES);
BPF_HASH(gone_task_limit_hits, u64, struct gone_pids_cgroup, GONE_TASK_LIMITS_MAX_ENTRIES);

/* Per-process counting for storm reports and `procmond top` (see struct creator): on while
 * storm_watch[0] is non-zero. */
BPF_ARRAY(storm_watch, u32, 1);
/* Which probe counts (procmond/kernel/pins.py): handover[0] is the DUTY of the one probe on duty.
 * A pinned probe shares this map with the probe of the build or config before it (one map,
 * pinned beside them), so that an upgrade switches counting from one to the other with one
 * write: each event reads it once, and is counted by exactly one of them. Unpinned probes
 * (watch, top, doctor) have a map of their own, at 0, and a DUTY of 0: always on duty. */
#ifdef HANDOVER_PATH
BPF_TABLE_PINNED("array", u32, u32, handover, 1, HANDOVER_PATH);
#else
BPF_ARRAY(handover, u32, 1);
#endif
#ifndef DUTY
#define DUTY 0
#endif
BPF_TABLE("lru_hash", u32, struct creator, creators, CREATORS_MAX_ENTRIES);
/* The storm monitor's alarm (procmond/kernel/alarm.py): storm_alarm[0] is the number of creations
 * still to come before the probe wakes the monitor through storm_wake (a ring buffer of one
 * page, drained at each wake-up); 0 while no alarm is set. */
BPF_ARRAY(storm_alarm, u64, 1);
BPF_RINGBUF_OUTPUT(storm_wake, 1);
/* Creations this CPU counted while the alarm was set and has not yet taken off storm_alarm[0]
 * (fewer than ALARM_BATCH): the shared slot is written once per batch, not at every creation. */
BPF_PERCPU_ARRAY(alarm_pending, u32, 1);

/* The event stream of `procmond watch` (procmond/kernel/watch_stream.py), in every probe, so that a
 * watch reads the running daemon's: the leases that switch it on (enum watch_slot), one ring
 * per reader, and per reader the events its full ring refused. */
BPF_ARRAY(watch_leases, u64, WATCH_SLOT_READER + WATCH_READERS);
BPF_RINGBUF_OUTPUT(watch_events_0, WATCH_RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(watch_events_1, WATCH_RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(watch_events_2, WATCH_RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(watch_events_3, WATCH_RINGBUF_PAGES);
_Static_assert(WATCH_READERS == 4, "one watch_events_<i> ring per reader, declared above");
BPF_PERCPU_ARRAY(watch_lost, u64, WATCH_READERS);

static __always_inline int on_duty(void)
{
    u32 zero = 0;
    u32 *duty = handover.lookup(&zero);
    return duty && *duty == DUTY;
}

/* Reads of a task that is not the current one (a raw tracepoint's arguments are untyped):
 * bpf_probe_read_kernel(), a helper call that costs ~60 ns on this project's test machines. */
static __always_inline void *read_ptr(void *base, u32 offset)
{
    void *value = NULL;
    bpf_probe_read_kernel(&value, sizeof(value), (char *)base + offset);
    return value;
}

static __always_inline u32 read_u32(void *base, u32 offset)
{
    u32 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (char *)base + offset);
    return value;
}

static __always_inline u64 read_u64(void *base, u32 offset)
{
    u64 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (char *)base + offset);
    return value;
}

static __always_inline void read_comm(void *task, char *dst)
{
    bpf_probe_read_kernel(dst, COMM_LEN, (char *)task + TASK_COMM_OFF);
}

/* The process a task belongs to is named by its thread-group leader: threads may rename
 * themselves, the process keeps counting under one name. */
static __always_inline void *leader_of(void *task)
{
    return read_ptr(task, TASK_GROUP_LEADER_OFF);
}

/* The leader of the process that created `task`'s process. Every thread of a process has
 * the same real_parent (clone copies it into new threads, reparenting moves all of them), so
 * it is read from `task` itself, without a detour through its leader. */
static __always_inline void *parent_leader_of(void *task)
{
    return leader_of(read_ptr(task, TASK_REAL_PARENT_OFF));
}

/* Reads of the current task, which every counting program keys on. With PROCMOND_TASK_BTF
 * (the offsets come from the kernel's BTF and the kernel has bpf_get_current_task_btf(),
 * 5.11+) the task is a typed pointer: the verifier checks each load against BTF and the JIT
 * makes it a plain load with a fault fixup, so a program's five to eight reads cost a few ns
 * instead of ~60 ns each, and the cgroup id needs no helper call either. Otherwise they are
 * probe reads, as above. */
#ifdef PROCMOND_TASK_BTF
#define current_task() ((char *)bpf_get_current_task_btf())
#define cur_ptr(base, offset) (*(char **)((base) + (offset)))
#define cur_u32(base, offset) (*(u32 *)((base) + (offset)))
#define cur_u64(base, offset) (*(u64 *)((base) + (offset)))
#else
#define current_task() ((char *)bpf_get_current_task())
#define cur_ptr(base, offset) ((char *)read_ptr((base), (offset)))
#define cur_u32(base, offset) read_u32((base), (offset))
#define cur_u64(base, offset) read_u64((base), (offset))
#endif

/* comm[16] as two 8-byte loads: a typed pointer is read by loads, not by copies. */
static __always_inline void cur_comm(char *task, char *dst)
{
#ifdef PROCMOND_TASK_BTF
    *(u64 *)dst = cur_u64(task, TASK_COMM_OFF);
    *(u64 *)(dst + 8) = cur_u64(task, TASK_COMM_OFF + 8);
#else
    read_comm(task, dst);
#endif
}

/* The cgroup v2 id of `task` (the current one): what bpf_get_current_cgroup_id() returns,
 * task->cgroups->dfl_cgrp->kn->id, read without the helper call where the task is typed. */
static __always_inline u64 cgroup_of_current(char *task)
{
#ifdef PROCMOND_TASK_BTF
    char *cgroup = cur_ptr(cur_ptr(task, TASK_CGROUPS_OFF), CSS_SET_DFL_CGRP_OFF);
    return cur_u64(cur_ptr(cgroup, CGROUP_KN_OFF), KERNFS_NODE_ID_OFF);
#else
    return bpf_get_current_cgroup_id();
#endif
}

/* The cgroup part of a counter key: 0 when no cgroup label is kept. */
static __always_inline u64 current_cgroup(char *task)
{
    return LABEL_CGROUP ? cgroup_of_current(task) : 0;
}

/* The command of the current task's process: its leader's. */
static __always_inline void current_process_comm(char *task, char *dst)
{
    cur_comm(cur_ptr(task, TASK_GROUP_LEADER_OFF), dst);
}

/* The key of a creation or exec by the current task. */
static __always_inline void fill_pair_key(char *task, struct comm_pair_key *key)
{
    key->cgroup_id = current_cgroup(task);
    if (LABEL_COMM)
        current_process_comm(task, key->comm);
    if (LABEL_PARENT_COMM)
        current_process_comm(cur_ptr(task, TASK_REAL_PARENT_OFF), key->parent_comm);
}

static __always_inline void count_overflow(u32 map_id)
{
    u64 *events = overflow_events.lookup(&map_id);
    if (events)
        (*events)++; /* per-CPU slot: no other CPU writes it */
}

/* Smallest k with v <= 2^k: the histogram slot whose upper bound (le) is 2^k ns. */
static __always_inline u32 log2_ceil(u64 v)
{
    if (v <= 1)
        return 0;
    u32 slot = bpf_log2l(v - 1);
    return slot < HIST_SLOTS ? slot : HIST_SLOTS - 1;
}

/* One more event for a counter map's entry. `value` is NULL when the key was new and the map
 * full: the event is then counted in overflow_events[map_id], which the collector exposes as
 * the `__overflow__` series, so totals stay exact and no live counter is ever evicted. */
static __always_inline void add_one(u64 *value, u32 map_id)
{
    if (value)
        __sync_fetch_and_add(value, 1);
    else
        count_overflow(map_id);
}

/* One observation of `ns` nanoseconds; a full map's events go to overflow_hist[map_id]. */
static __always_inline void observe(struct hist_value *hist, u32 map_id, u64 ns)
{
    if (!hist) {
        count_overflow(map_id);
        hist = overflow_hist.lookup(&map_id);
        if (!hist)
            return;
    }
    u32 slot = log2_ceil(ns) & (HIST_SLOTS - 1);
    __sync_fetch_and_add(&hist->slots[slot], 1);
    __sync_fetch_and_add(&hist->sum_ns, ns);
}

static __always_inline struct hist_value *zeroed_hist(void)
{
    u32 zero = 0;
    return hist_zero.lookup(&zero);
}

/* BCC allows map calls neither in macros nor through map pointers: one line per map. */
static __always_inline void count_fork(struct comm_pair_key *key)
{
    u64 zero = 0;
    add_one(forks_total.lookup_or_try_init(key, &zero), MAP_ID_FORKS_TOTAL);
}

static __always_inline void count_thread(struct comm_pair_key *key)
{
    u64 zero = 0;
    add_one(threads_created_total.lookup_or_try_init(key, &zero), MAP_ID_THREADS_CREATED_TOTAL);
}

static __always_inline void count_exec(struct comm_pair_key *key)
{
    u64 zero = 0;
    add_one(execs_total.lookup_or_try_init(key, &zero), MAP_ID_EXECS_TOTAL);
}

static __always_inline void count_exit(struct cgroup_comm_key *key)
{
    u64 zero = 0;
    add_one(exits_total.lookup_or_try_init(key, &zero), MAP_ID_EXITS_TOTAL);
}

static __always_inline void count_failure(struct failure_key *key)
{
    u64 zero = 0;
    add_one(fork_failures_total.lookup_or_try_init(key, &zero), MAP_ID_FORK_FAILURES_TOTAL);
}

/* A histogram entry is looked up first; only a new label set needs the zeroed value. */
static __always_inline void observe_lifetime(struct comm_key *key, u64 ns)
{
    struct hist_value *hist = process_lifetime_seconds.lookup(key);
    struct hist_value *zero = hist ? NULL : zeroed_hist();
    if (zero)
        hist = process_lifetime_seconds.lookup_or_try_init(key, zero);
    observe(hist, MAP_ID_PROCESS_LIFETIME_SECONDS, ns);
}

static __always_inline void observe_fork_duration(struct comm_key *key, u64 ns)
{
    struct hist_value *hist = fork_duration_seconds.lookup(key);
    struct hist_value *zero = hist ? NULL : zeroed_hist();
    if (zero)
        hist = fork_duration_seconds.lookup_or_try_init(key, zero);
    observe(hist, MAP_ID_FORK_DURATION_SECONDS, ns);
}

/* The generation of per-process counting in progress, or 0 when it is off. */
static __always_inline u32 storm_generation(void)
{
    u32 zero = 0;
    u32 *generation = storm_watch.lookup(&zero);
    return generation ? *generation : 0;
}

/* One more creation by the current process, while storm_watch is on. An entry of an older
 * generation, or of an earlier process with the same pid, is started afresh; two CPUs
 * starting one entry at once may lose a creation or two, which a report of rates can bear.
 * (A reused pid is told by the start time, read here, rather than by marking entries at
 * exit, which would cost every exit a lookup.) */
static __always_inline void count_creator(char *creator, u32 is_thread)
{
    u32 generation = storm_generation();
    if (!generation)
        return;
    u32 tgid = cur_u32(creator, TASK_TGID_OFF);
    char *leader = cur_ptr(creator, TASK_GROUP_LEADER_OFF);
    u64 start_ns = cur_u64(leader, TASK_START_TIME_OFF);
    struct creator *entry = creators.lookup(&tgid);
    if (!entry || entry->generation != generation || entry->start_ns != start_ns) {
        struct creator fresh = {
            .cgroup_id = cgroup_of_current(creator),
            .start_ns = start_ns,
            .generation = generation,
        };
        char *parent = cur_ptr(creator, TASK_REAL_PARENT_OFF);
        fresh.ppid = cur_u32(parent, TASK_TGID_OFF);
        cur_comm(leader, fresh.comm);
        current_process_comm(parent, fresh.parent_comm);
        creators.update(&tgid, &fresh);
        entry = creators.lookup(&tgid);
        if (!entry)
            return;
    }
    if (is_thread)
        __sync_fetch_and_add(&entry->threads, 1);
    else
        __sync_fetch_and_add(&entry->forks, 1);
}

/* One more task created on the host: counts the storm monitor's alarm down, and rings it at
 * zero. The monitor sleeps on it, with no timer, while the host is quiet; while it is awake (a
 * storm suspected) or storm reports are off, no alarm is set and a creation only reads the
 * slot, so the cache line is never written where creations are many. Two CPUs taking the last
 * count together take it below zero: either rings. If the ring is full (it cannot be: the
 * monitor drains it before it sets an alarm), the next creation tries again. */
static __always_inline void count_down_alarm(void)
{
    u32 zero = 0;
    u64 *left = storm_alarm.lookup(&zero);
    if (!left || !*left)
        return;
    u32 *pending = alarm_pending.lookup(&zero);
    if (!pending || ++*pending < ALARM_BATCH)
        return;
    *pending = 0;
    __sync_fetch_and_add(left, -ALARM_BATCH);
    if ((s64)*left > 0)
        return;
    if (storm_wake.ringbuf_output(&zero, sizeof(zero), BPF_RB_FORCE_WAKEUP) == 0)
        *left = 0;
    else
        *left = 1;
}

/* The time now if the watch stream is on, else 0. Off, a creation pays this one lookup. The
 * first creation after the last lease ran out (its reader killed, not closed) switches it
 * off; compare-and-swap, so that a lease a reader has just renewed is kept. Kernels before
 * 5.12 have no BPF compare-and-swap (HAVE_BPF_ATOMICS unset): there the switch stays set, and
 * costs a clock read per creation, until the next watch that stops cleanly clears it. */
static __always_inline u64 watching(void)
{
    u32 slot = WATCH_SLOT_ANY;
    u64 *until = watch_leases.lookup(&slot);
    if (!until || !*until)
        return 0;
    u64 seen = *until;
    u64 now = bpf_ktime_get_ns();
    if (now < seen)
        return now;
#ifdef HAVE_BPF_ATOMICS
    __sync_val_compare_and_swap(until, seen, 0);
#endif
    return 0;
}

static __always_inline int leased(u32 slot, u64 now)
{
    u64 *until = watch_leases.lookup(&slot);
    return until && now < *until;
}

static __always_inline void count_lost(u32 reader)
{
    u64 *lost = watch_lost.lookup(&reader);
    if (lost)
        (*lost)++; /* per-CPU slot: no other CPU writes it */
}

/* The event to the ring of every reader whose lease runs (BCC: one line per map). */
static __always_inline void emit(struct creation_event *event, u64 now)
{
    if (leased(WATCH_SLOT_READER + 0, now) &&
        watch_events_0.ringbuf_output(event, sizeof(*event), 0) != 0)
        count_lost(0);
    if (leased(WATCH_SLOT_READER + 1, now) &&
        watch_events_1.ringbuf_output(event, sizeof(*event), 0) != 0)
        count_lost(1);
    if (leased(WATCH_SLOT_READER + 2, now) &&
        watch_events_2.ringbuf_output(event, sizeof(*event), 0) != 0)
        count_lost(2);
    if (leased(WATCH_SLOT_READER + 3, now) &&
        watch_events_3.ringbuf_output(event, sizeof(*event), 0) != 0)
        count_lost(3);
}

/* Which creation syscall the current task is in, where the syscall probes tell. */
static __always_inline u32 creation_syscall(void)
{
#if SYSCALL_PROBES || defined(PROCMOND_WATCH)
    struct inflight *call =
        inflight.task_storage_get((struct task_struct *)bpf_get_current_task_btf(), 0, 0);
    return call && call->start_ns ? call->syscall : SYSCALL_KERNEL_CLONE;
#else
    return SYSCALL_UNKNOWN;
#endif
}

/* A creation by `creator`, the current task; `child` is the new task. */
static __always_inline void emit_creation(char *creator, void *child, u32 is_thread, u64 now)
{
    struct creation_event event = {};
    void *leader = leader_of(creator);

    event.timestamp_ns = now;
    event.cgroup_id = cgroup_of_current(creator); /* as the counters read it */
    event.kind = EVENT_CREATION;
    event.pid = read_u32(creator, TASK_TGID_OFF);
    event.ppid = read_u32(read_ptr(leader, TASK_REAL_PARENT_OFF), TASK_TGID_OFF);
    event.child_pid = read_u32(child, TASK_TGID_OFF);
    event.child_tid = read_u32(child, TASK_PID_OFF);
    event.syscall = creation_syscall();
    event.is_thread = is_thread;
    read_comm(leader, event.comm);
    read_comm(parent_leader_of(creator), event.parent_comm);
    emit(&event, now);
}

/* An exec by `task` (the current task, already the new program), if a reader asked for them. */
static __always_inline void emit_exec(void *task, u64 now)
{
    if (!leased(WATCH_SLOT_EXECS, now))
        return;
    struct creation_event event = {};
    void *parent = read_ptr(task, TASK_REAL_PARENT_OFF);

    event.timestamp_ns = now;
    event.cgroup_id = cgroup_of_current(current_task()); /* the exec'ing task is current */
    event.kind = EVENT_EXEC;
    event.pid = read_u32(task, TASK_TGID_OFF);
    event.ppid = read_u32(parent, TASK_TGID_OFF);
    event.child_pid = event.pid;
    event.child_tid = event.pid;
    read_comm(task, event.comm);
    read_comm(leader_of(parent), event.parent_comm);
    emit(&event, now);
}

#ifndef CLONE_THREAD
#define CLONE_THREAD 0x00010000
#endif

/* task_newtask(struct task_struct *task, u64 clone_flags): runs in the creating thread at the
 * end of copy_process(), once the new task is sure to exist, where the kernel counts it in
 * /proc/stat too. The creator is the current task: the caller of fork/clone, or for a worker
 * the kernel makes on a process's behalf (io_uring), a thread of that process. */
int on_task_newtask(struct bpf_raw_tracepoint_args *ctx)
{
    struct comm_pair_key key = {};

    if (!on_duty())
        return 0;
    u32 is_thread = (ctx->args[1] & CLONE_THREAD) != 0;
    char *creator = current_task();

    fill_pair_key(creator, &key);
    if (is_thread)
        count_thread(&key);
    else
        count_fork(&key);
    count_creator(creator, is_thread);
    count_down_alarm();
    u64 now = watching();
    if (now)
        emit_creation(creator, (void *)ctx->args[0], is_thread, now);
    return 0;
}

/* sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm): after
 * the new program is in place, so p's comm is already the new command. */
int on_sched_process_exec(struct bpf_raw_tracepoint_args *ctx)
{
    struct comm_pair_key key = {};

    if (!on_duty())
        return 0;
    fill_pair_key(current_task(), &key); /* the exec'ing task is current */
    count_exec(&key);
    u64 now = watching();
    if (now)
        emit_exec((void *)ctx->args[0], now);
    return 0;
}

/* sched_process_exit(struct task_struct *p[, bool group_dead]): once per exiting thread. A
 * process has exited when its last thread does (group_dead). Kernels before group_dead was
 * added decrement signal->live just before this tracepoint, so live == 0 means the same
 * thing there, except when two threads of one process exit at the same instant. */
int on_sched_process_exit(struct bpf_raw_tracepoint_args *ctx)
{
#ifdef EXIT_HAS_GROUP_DEAD
    if (!(ctx->args[1] & 0xff))
        return 0;
#endif
    if (!on_duty())
        return 0;
    char *task = current_task(); /* the exiting task, ctx->args[0], is current */
#ifndef EXIT_HAS_GROUP_DEAD
    if (cur_u32(cur_ptr(task, TASK_SIGNAL_OFF), SIGNAL_LIVE_OFF) != 0)
        return 0;
#endif
    char *leader = cur_ptr(task, TASK_GROUP_LEADER_OFF);
    struct cgroup_comm_key key = {.cgroup_id = current_cgroup(task)};
    if (LABEL_COMM)
        cur_comm(leader, key.comm);
    count_exit(&key);
#if HISTOGRAMS
    struct comm_key command = {};
    __builtin_memcpy(command.comm, key.comm, COMM_LEN);
    u64 lifetime_ns = bpf_ktime_get_ns() - cur_u64(leader, TASK_START_TIME_OFF);
    observe_lifetime(&command, lifetime_ns);
#endif
    return 0;
}

#if LABEL_CGROUP
/* cgroup_mkdir(struct cgroup *cgrp, const char *path): a new cgroup, on any hierarchy; root 0
 * is the cgroup v2 one, whose ids bpf_get_current_cgroup_id() returns. Rare: a plain
 * tracepoint does. */
int on_cgroup_mkdir(struct tracepoint__cgroup__cgroup_mkdir *args)
{
    struct cgroup_path entry = {};
    u64 id = args->id;

    if (args->root != 0)
        return 0;
    TP_DATA_LOC_READ_STR(entry.path, path, sizeof(entry.path));
    cgroup_paths.update(&id, &entry);
    return 0;
}
#endif

#ifdef PIDS_EVENTS_OFF
/* cgroup_rmdir(struct cgroup *cgrp, const char *path), on any hierarchy, once the cgroup is
 * dead but before its controllers' state is freed (cgroup_mutex is held: the pids state cannot
 * go offline meanwhile), and with no task left in it to be refused a fork. A cgroup with a
 * pids state (the pids hierarchy's, v1 or v2) that refused any fork leaves its count here for
 * the daemon; the rest, most cgroups, leave nothing. Rare: two probe reads per rmdir. The
 * offsets come from BTF (procmond/kernel/btf.py): CGROUP_PIDS_CSS_OFF is &cgrp->subsys[pids_cgrp_id],
 * PIDS_EVENTS_OFF the count its pids.events file shows, from the css (the first member of
 * struct pids_cgroup). */
int on_cgroup_rmdir(struct bpf_raw_tracepoint_args *ctx)
{
    if (!on_duty())
        return 0;
    char *cgrp = (char *)ctx->args[0];
    char *pids = read_ptr(cgrp, CGROUP_PIDS_CSS_OFF);
    if (!pids)
        return 0;
    struct gone_pids_cgroup gone = {.hits = read_u64(pids, PIDS_EVENTS_OFF)};
    if (!gone.hits)
        return 0;
    u64 id = read_u64(read_ptr(cgrp, CGROUP_KN_OFF), KERNFS_NODE_ID_OFF);
    long len = bpf_probe_read_kernel_str(gone.path, sizeof(gone.path), (void *)ctx->args[1]);
    gone.path_len = len > 0 ? len : 0;
    if (gone_task_limit_hits.update(&id, &gone) != 0) {
        u32 map_id = MAP_ID_GONE_TASK_LIMIT_HITS;
        u64 *events = overflow_events.lookup(&map_id);
        if (events)
            *events += gone.hits; /* per-CPU slot: no other CPU writes it */
    }
    return 0;
}
#endif

#if SYSCALL_PROBES || defined(PROCMOND_WATCH)
/* What a syscall tracepoint program returns: non-zero hands the event on to perf and to every
 * other perf user of this tracepoint (perf stat, perf record); 0 would drop it for all of them. */
#define PASS_ON 1

/* The kernel's restart codes (include/linux/errno.h). copy_process() gives up with
 * -ERESTARTNOINTR when a signal arrives; the kernel then runs the signal handler and
 * re-issues the call, and user space never sees a failure. */
static __always_inline int is_restart(long ret)
{
    return ret == -512 /* ERESTARTSYS */ || ret == -513 /* ERESTARTNOINTR */ ||
           ret == -514 /* ERESTARTNOHAND */ || ret == -516 /* ERESTART_RESTARTBLOCK */;
}

static __always_inline struct inflight *inflight_of_current(u64 flags)
{
    return inflight.task_storage_get((struct task_struct *)bpf_get_current_task_btf(), 0, flags);
}

static __always_inline int enter_creation(u32 syscall)
{
    struct inflight *call = inflight_of_current(BPF_LOCAL_STORAGE_GET_F_CREATE);

    if (!call) {
        count_overflow(MAP_ID_INFLIGHT);
        return PASS_ON;
    }
    if (call->restarting && call->syscall == syscall) {
        call->restarting = 0; /* the same call, re-issued: its clock runs from the first entry */
        return PASS_ON;
    }
    call->start_ns = bpf_ktime_get_ns();
    call->syscall = syscall;
    call->restarting = 0;
    return PASS_ON;
}

#ifndef ENOSYS
#define ENOSYS 38 /* include/uapi/asm-generic/errno.h (x86, arm64, riscv, ...) */
#endif

/* Runs in the creating thread as the call returns, and in each new task as it first returns
 * to user space (with 0: nothing to do). A call the kernel restarts is one call: no failure and
 * no duration sample until it returns for good. Failed calls are counted by error. For vfork
 * the time includes waiting until the child has exec'd or exited, as the caller is suspended
 * until then.
 *
 * ENOSYS from clone3 is not a failure but the fallback protocol: a seccomp filter (Docker
 * 20.10's default profile) answers clone3 so, and the C library then calls clone, which is
 * counted and timed as a call of its own. The clone3 attempt gives no duration sample: seccomp
 * answers before the syscall-entry tracepoint, so it started no clock, and a clock it did
 * start (ENOSYS from anywhere else) is dropped. */
static __always_inline int exit_creation(void *ctx, u32 syscall)
{
    long ret = *(long *)((char *)ctx + SYS_EXIT_RET_OFF);

    if (ret == 0 || !on_duty())
        return PASS_ON;
    struct inflight *call = inflight_of_current(0);
    if (syscall == SYSCALL_SYS_CLONE3 && ret == -ENOSYS) {
        if (call && call->syscall == SYSCALL_SYS_CLONE3)
            call->start_ns = 0;
        return PASS_ON;
    }
    if (is_restart(ret)) {
        if (call)
            call->restarting = 1;
        return PASS_ON;
    }
    if (ret < 0) {
        char *task = current_task();
        struct failure_key failure = {.cgroup_id = current_cgroup(task), .error = (u32)-ret};
        if (LABEL_COMM)
            current_process_comm(task, failure.comm);
        count_failure(&failure);
    }
    if (!call || !call->start_ns)
        return PASS_ON;
    u64 duration_ns = bpf_ktime_get_ns() - call->start_ns;
    call->start_ns = 0;
#if HISTOGRAMS
    struct comm_key key = {};
    if (LABEL_COMM)
        current_process_comm(current_task(), key.comm);
    observe_fork_duration(&key, duration_ns);
#endif
    return PASS_ON;
}

int on_sys_enter_clone(void *ctx) { return enter_creation(SYSCALL_SYS_CLONE); }
int on_sys_enter_clone3(void *ctx) { return enter_creation(SYSCALL_SYS_CLONE3); }
int on_sys_enter_fork(void *ctx) { return enter_creation(SYSCALL_SYS_FORK); }
int on_sys_enter_vfork(void *ctx) { return enter_creation(SYSCALL_SYS_VFORK); }
int on_sys_exit_clone(void *ctx) { return exit_creation(ctx, SYSCALL_SYS_CLONE); }
int on_sys_exit_clone3(void *ctx) { return exit_creation(ctx, SYSCALL_SYS_CLONE3); }
int on_sys_exit_fork(void *ctx) { return exit_creation(ctx, SYSCALL_SYS_FORK); }
int on_sys_exit_vfork(void *ctx) { return exit_creation(ctx, SYSCALL_SYS_VFORK); }
#endif
