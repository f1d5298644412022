/* SPDX-License-Identifier: MIT */
/* acsd's event loop: one thread, epoll over fd watches, monotonic timers, signals as fd events, child exits. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>
#include <sys/types.h>

/*
 * Owner: helper "acsd" (ctl/loop.c, tests in ctl/test-loop.c). Users: all of acsd
 * (server.c, session.c, instance.c).
 *
 * Everything in acsd runs in this loop's one thread: no callback may block (sockets are
 * non-blocking; a slow peer is queued or dropped, never waited for). Times are
 * CLOCK_MONOTONIC microseconds.
 *
 * Ownership: the loop owns every watch, timer and child watch it hands out; the caller
 * keeps the pointer as a handle and frees it with the matching *_free() (which accepts
 * NULL and returns NULL: `w = acs_loop_io_free(w);`). Freeing is allowed at any time,
 * also from inside any callback, including the watch's own: the loop never touches a
 * freed handle again (freed fd watches are released after the current round of events).
 * acs_loop_free() frees whatever is left; it does not close the watched fds (the fds
 * belong to the caller, always).
 *
 * Signals: acs_loop_signals() blocks SIGTERM, SIGINT, SIGHUP and SIGCHLD in the calling
 * process (call it before starting threads) and delivers them through a signalfd;
 * SIGPIPE is ignored (writes to a closed socket return EPIPE). A forked child must call
 * acs_loop_child_reset() before exec, which restores the default mask and dispositions.
 *
 * Children: acs_loop_child_add(pid) calls back once when that child exits, with its
 * wait status; the loop reaps exactly the pids registered (waitpid(pid, WNOHANG) on each
 * SIGCHLD), never others, so code waiting for its own helper processes is not disturbed.
 */

typedef struct acs_loop acs_loop;
typedef struct acs_loop_io acs_loop_io;
typedef struct acs_loop_timer acs_loop_timer;
typedef struct acs_loop_child acs_loop_child;

/* Event bits for fd watches (ACS_LOOP_ERR is always reported, never needs asking for). */
enum {
        ACS_LOOP_IN = 1u << 0,  /* readable (or EOF / peer hung up) */
        ACS_LOOP_OUT = 1u << 1, /* writable */
        ACS_LOOP_ERR = 1u << 2, /* EPOLLERR / EPOLLHUP: the fd is dead or hung up */
};

/* fd is readable/writable; events = the ACS_LOOP_* bits that happened. */
typedef void (*acs_loop_io_fn)(acs_loop_io *io, int fd, unsigned events, void *userdata);
/* The timer expired (a one-shot timer is disarmed before this is called, may be re-armed). */
typedef void (*acs_loop_timer_fn)(acs_loop_timer *t, void *userdata);
/* One signal arrived (SIGCHLD also reaps registered children first). */
typedef void (*acs_loop_signal_fn)(acs_loop *l, const struct signalfd_siginfo *si, void *userdata);
/* Child pid exited with wait status status; the handle is already freed when this runs. */
typedef void (*acs_loop_child_fn)(pid_t pid, int status, void *userdata);

/* A new loop (epoll fd close-on-exec). *ret owned by caller. 0, -errno. */
int acs_loop_new(acs_loop **ret);
/* Frees the loop and every handle still registered; NULL is fine; returns NULL. */
acs_loop *acs_loop_free(acs_loop *l);
static inline void acs_loop_freep(acs_loop **l) { acs_loop_free(*l); }
#define _cleanup_loop_ __attribute__((cleanup(acs_loop_freep)))

/*
 * Runs until acs_loop_quit(); returns the code given to it. Returns -errno if epoll
 * itself fails (a bug; EINTR is retried).
 */
int acs_loop_run(acs_loop *l);
/* Makes acs_loop_run() return code after the current round of events. */
void acs_loop_quit(acs_loop *l, int code);
/* Runs one round: waits at most timeout_ms (-1 = until an event or timer) and dispatches. 0, -errno. */
int acs_loop_run_once(acs_loop *l, int timeout_ms);

/* CLOCK_MONOTONIC now, in microseconds (read fresh, not cached). */
uint64_t acs_loop_now(void);

/* ---- fd watches ---- */

/*
 * Watches fd for events (ACS_LOOP_IN | ACS_LOOP_OUT, or 0 to only hear of errors). Level
 * triggered: a readable fd is reported again until it is read. The fd must stay open
 * while watched (free the watch before closing it). *ret owned by the loop (see above).
 * 0, -EEXIST (fd watched already), -ENOMEM, -errno of epoll_ctl.
 */
int acs_loop_io_add(acs_loop *l, int fd, unsigned events, acs_loop_io_fn fn, void *userdata,
                    acs_loop_io **ret);
/* Changes the events asked for. 0, -errno. */
int acs_loop_io_set(acs_loop_io *io, unsigned events);
unsigned acs_loop_io_events(const acs_loop_io *io);
int acs_loop_io_fd(const acs_loop_io *io);
/* Stops watching (the fd stays open). NULL is fine; returns NULL. */
acs_loop_io *acs_loop_io_free(acs_loop_io *io);

/* ---- timers ---- */

/*
 * A timer firing after_usec from now, then every interval_usec (0 = once; a one-shot
 * timer stays allocated, disarmed, until freed, and may be re-armed). A periodic timer
 * that falls behind fires once per loop round, not once per missed interval.
 * *ret owned by the loop. 0, -ENOMEM, -EINVAL (fn NULL).
 */
int acs_loop_timer_add(acs_loop *l, uint64_t after_usec, uint64_t interval_usec,
                       acs_loop_timer_fn fn, void *userdata, acs_loop_timer **ret);
/* (Re-)arms t: first expiry after_usec from now, then every interval_usec (0 = once). 0, -ENOMEM. */
int acs_loop_timer_arm(acs_loop_timer *t, uint64_t after_usec, uint64_t interval_usec);
/* Disarms t (it stays allocated). */
void acs_loop_timer_disarm(acs_loop_timer *t);
bool acs_loop_timer_armed(const acs_loop_timer *t);
/* Monotonic time of the next expiry (0 when disarmed). */
uint64_t acs_loop_timer_due(const acs_loop_timer *t);
/* Disarms and frees. NULL is fine; returns NULL. */
acs_loop_timer *acs_loop_timer_free(acs_loop_timer *t);

/* ---- signals and children ---- */

/*
 * Blocks SIGTERM, SIGINT, SIGHUP, SIGCHLD, ignores SIGPIPE, and delivers those four
 * through a signalfd to fn (fn may be NULL: then only children are reaped). Once per
 * loop. 0, -EALREADY, -errno.
 */
int acs_loop_signals(acs_loop *l, acs_loop_signal_fn fn, void *userdata);

/*
 * In a forked child, before exec: unblocks all signals and sets the default disposition
 * of SIGPIPE and the four signals above. Async-signal-safe.
 */
void acs_loop_child_reset(void);

/*
 * Calls fn once when child pid (ours, from fork) exits; needs acs_loop_signals(). Also
 * checks at once whether the child has already exited (the callback then runs in the
 * next round, never from inside this call). *ret (may be NULL if never cancelled) owned
 * by the loop until fn runs; acs_loop_child_free() cancels without reaping.
 * 0, -ENOMEM, -EINVAL.
 */
int acs_loop_child_add(acs_loop *l, pid_t pid, acs_loop_child_fn fn, void *userdata,
                       acs_loop_child **ret);
acs_loop_child *acs_loop_child_free(acs_loop_child *c);
