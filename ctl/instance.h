/* SPDX-License-Identifier: MIT */
/* acsd's per-user instances: the user's agents (acs-syncd, acs-fs) as their own uid, the bus handshake, the mount, idle stop and restarts. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "acs/config.h"
#include "loop.h"

/*
 * Owner: helper "inst" (ctl/instance.c, ctl/mount.c). User: acsd's session code.
 *
 * One inst_mgr per acsd. It owns, for acsd:
 *   - the credential vault (ctl/vault.h): users' passwords, encrypted, locked memory;
 *   - acsd's bus endpoint (acs_wire, id 0) and the bus connection (its own dbus-daemon,
 *     started in opts->run_dir, unless cfg->bus_mode is ACS_BUS_ADDRESS);
 *   - one instance per user with an open (or starting) session: an agent uid, a cache
 *     path, acs-syncd and acs-fs as children, the FUSE mount at <tree_root>/<user>.
 * It registers its descriptors and timers in acsd's loop (ctl/loop.h) and does all its
 * work from loop callbacks; nothing blocks except the short, bounded bus calls that
 * identify a peer. Not thread-safe (acsd's loop thread only).
 *
 * Callbacks given to inst_* functions are never called from inside the call that
 * registers them; they are called from the loop. A callback may call any inst_*
 * function (including cancelling other requests) except inst_mgr_free().
 *
 * Errors given to callbacks and returned map to client error codes like this:
 *   -EACCES        wrong password (ERR auth)
 *   -EHOSTUNREACH  IMAP server unreachable, or the agent could not log in for a reason
 *                  other than the password (ERR unavailable)
 *   -ETIMEDOUT     the agent did not answer in time (ERR unavailable)
 *   -EAGAIN        a limit (limits.max_users instances, no free agent uid) (ERR limit)
 *   -ENOENT        no such instance (ERR notfound)
 *   -EINVAL        a malformed user or mailbox name (ERR value)
 *   -ESHUTDOWN     acsd is shutting down (ERR unavailable)
 *   -EIO           acs-syncd died before telling its login result (ERR internal)
 *   other -errno   a resource failure in acsd (ERR internal)
 */

typedef struct inst_mgr inst_mgr;
typedef struct inst_req inst_req; /* a pending open or sync, until its callback ran */

typedef struct inst_opts {
        const char *syncd_path; /* the acs-syncd program (absolute path) */
        const char *fs_path;    /* the acs-fs program (absolute path) */
        const char *run_dir;    /* the own bus's directory (bus.conf, bus.sock; created 0755);
                                 * NULL: cfg->bus_dir, else DIR(cfg->socket_path)/bus */
        const char *dbus_daemon; /* NULL: "dbus-daemon" through PATH */
        /* Agent uids: when uid_min <= uid_max (both > 0), each user gets a distinct uid
         * (and gid, same number) from this range, so one user's agents cannot open
         * another's cache. Both 0: cfg->agent_uid_min/max; if those are 0 too, every agent
         * runs as cfg->agent_user. */
        uid_t uid_min, uid_max;
        unsigned login_timeout;    /* seconds to wait for the agent's login result; 0 = 30 */
        unsigned stop_grace;       /* seconds between STOP/SIGTERM and SIGKILL; 0 = 5 */
        bool keep_env_sanitizers;  /* pass ASAN_/UBSAN_/LSAN_OPTIONS to children (tests) */
} inst_opts;

/*
 * Creates the manager: the vault, acsd's wire keys, the bus (starts dbus-daemon or
 * connects to cfg->bus_address), resolves the tree owner/group and agent user, creates
 * tree_root and the cache directories; cleans up after an acsd that died (detaches its
 * fuse.acs mounts below tree_root, removes its memory caches, /run/userdb records of the
 * uid range and its dbus-daemon); learns which agent uids persistent caches under
 * cache_dir already own. cfg and
 * opts (and their strings) must outlive the manager. Must run as root, after
 * acs_loop_signals() (children are watched through the loop).
 * 0, -EPERM (not root), -ENOENT (a user or group in cfg does not exist, a program is
 * missing), -errno.  *ret is owned by the caller (inst_mgr_free).
 */
int inst_mgr_new(acs_loop *loop, const acs_config *cfg, const inst_opts *opts, inst_mgr **ret);

/*
 * Stops everything at once (synchronously: unmounts, SIGKILLs and reaps children, deletes
 * memory caches, stops the dbus-daemon), wipes the vault, frees. Pending callbacks are
 * not called. Prefer inst_shutdown_all() first for a clean stop. NULL is fine; returns NULL.
 */
inst_mgr *inst_mgr_free(inst_mgr *m);

/*
 * Done callback of an open: r = 0 and tree (the mount point, "<tree_root>/<user>",
 * valid during the call only) on success, which also took ONE session reference for the
 * caller (release it with inst_session_unref); otherwise r < 0 (see the list above) and
 * tree NULL, no reference taken.
 */
typedef void (*inst_open_cb)(void *ud, int r, const char *tree);

/*
 * Opens user's instance with password (len bytes, 1..ACS_AGENT_PASSWORD_MAX (1024), any
 * bytes but NUL; the caller keeps and wipes its copy).
 *
 * - Running instance whose agent is logged in: the password is compared in constant time
 *   with the vault's (a mismatch is -EACCES). Answered at once: returns 1, *ret_tree set
 *   (points into the manager, valid until the next call to inst_*), a session reference
 *   taken, no callback, *ret_req untouched.
 * - No instance yet (or one whose last login failed): the password goes into the vault,
 *   the agents start, and the answer waits for the agent's IMAP login: returns 0, *ret_req
 *   (not owned: valid until cb runs or inst_req_cancel) and cb runs later exactly once.
 *   Wrong password: the children are stopped, nothing is mounted, a fresh memory cache
 *   is deleted, the password is dropped from the vault.
 * - An instance still starting: the request waits for that start and is then checked
 *   against its outcome (returns 0, cb later).
 * Errors returned at once (no callback): -EINVAL (user not 1..255 bytes of a safe path
 * component, bad password length), -EAGAIN (limits.max_users), -ESHUTDOWN, -ENOMEM.
 *
 * A password changed on the IMAP server: the instance keeps running on its cache; when
 * acs-syncd next logs in (reconnect, restart) the login fails, the instance goes to state
 * "authfail" (sessions keep reading the tree, nothing syncs), and the next open with
 * another password tries that one with a fresh acs-syncd (a success replaces the vault's
 * entry). While the old password still works, an open with the new one is -EACCES.
 */
int inst_open(inst_mgr *m, const char *user, const char *password, size_t len, inst_open_cb cb,
              void *ud, inst_req **ret_req, const char **ret_tree);

/* Forgets a pending request: its callback will not run (an open's start goes on). */
void inst_req_cancel(inst_mgr *m, inst_req *req);

/*
 * Session references: while an instance has one, it stays; when the last is released,
 * the idle timer (cfg->session_idle_timeout) starts; when it fires with none taken in
 * between, the tree is unmounted, the children are stopped (STOP, SIGTERM, then SIGKILL
 * after the grace), a memory cache is deleted and the password leaves the vault.
 * inst_session_ref: 0 or -ENOENT. inst_session_unref: 0, -ENOENT, -EINVAL (count is 0).
 */
int inst_session_ref(inst_mgr *m, const char *user);
int inst_session_unref(inst_mgr *m, const char *user);

/* ---- sync and events ---- */

/*
 * Progress of a sync: mailbox (UTF-8, NUL-terminated, valid during the call; "" for
 * "all"), messages done and total. finished: this is the last call for this request;
 * then r is 0 (sync done) or < 0 (-EHOSTUNREACH server unreachable, -ENOENT no such
 * mailbox, -ETIMEDOUT, -ESHUTDOWN instance stopped).
 */
typedef void (*inst_progress_cb)(void *ud, const char *mailbox, uint64_t done, uint64_t total,
                                 bool finished, int r);

/*
 * Asks user's acs-syncd to sync mailbox now (NULL: all mailboxes) and reports its
 * progress. The request ends with the first sync round that acs-syncd begins after
 * SYNC_NOW was sent (STATUS or PROGRESS "syncing", then PROGRESS "synced"): a round
 * already running when the request came may have missed what the client waits for. No
 * word from acs-syncd for 25 s (clients give up at 30): -ETIMEDOUT. 0 and *ret_req (cb runs later, at least once with finished = true, unless
 * cancelled), -ENOENT (no running instance), -EINVAL (mailbox not 1..1024 bytes of
 * UTF-8 without control characters), -EHOSTUNREACH (agent not connected now), -ENOMEM.
 */
int inst_sync(inst_mgr *m, const char *user, const char *mailbox, inst_progress_cb cb, void *ud,
              inst_req **ret_req);

enum inst_event_kind {
        INST_EV_CHANGE = 1,   /* something in mailbox changed */
        INST_EV_PROGRESS = 2, /* sync progress: mailbox, done, total */
        INST_EV_STATE = 3,    /* the instance changed state: state */
        INST_EV_CLOSED = 4,   /* the instance is gone (idle stop, shutdown): last event */
};

enum inst_state {
        INST_STARTING = 0, /* agents started, waiting for the IMAP login */
        INST_ONLINE = 1,   /* logged in, mounted */
        INST_OFFLINE = 2,  /* mounted, the IMAP server is unreachable now (agent retries) */
        INST_AUTHFAIL = 3, /* mounted, the last login was refused (password changed?) */
        INST_STOPPING = 4, /* idle timeout or shutdown: unmounting, children stopping */
};
/* "starting", "online", "offline", "authfail", "stopping". */
const char *inst_state_name(enum inst_state s);

typedef struct inst_event {
        enum inst_event_kind kind;
        const char *user;
        const char *mailbox; /* CHANGE, PROGRESS ("" when unknown) */
        uint64_t done, total; /* PROGRESS */
        enum inst_state state; /* STATE */
} inst_event;

/* Event callback; ev and its strings are valid during the call only. */
typedef void (*inst_event_cb)(void *ud, const inst_event *ev);

/*
 * Subscribes to user's events (for WATCH). 0 and *ret_id (for inst_unwatch), -ENOENT,
 * -ENOMEM. After an INST_EV_CLOSED event the watch is gone (do not unwatch it).
 */
int inst_watch(inst_mgr *m, const char *user, inst_event_cb cb, void *ud, uint64_t *ret_id);
/* 0 or -ENOENT. */
int inst_unwatch(inst_mgr *m, uint64_t id);

/* ---- status ---- */

typedef struct inst_status {
        const char *user;        /* valid until the next inst_* call */
        const char *tree;        /* mount point */
        enum inst_state state;
        unsigned sessions;       /* session references */
        uid_t uid;               /* the agents' uid */
        pid_t syncd_pid, fs_pid; /* 0 while not running */
        unsigned restarts;       /* child restarts since the instance started */
        int64_t since;           /* unix time the instance started */
        int64_t last_sync;       /* unix time of the last completed sync round; 0 = none */
        bool mounted;
        bool persistent;         /* cache mode of this instance */
} inst_status;

/* Status of user's instance: 0 and *ret, or -ENOENT. */
int inst_status_get(inst_mgr *m, const char *user, inst_status *ret);
/* Calls cb for every instance (stop early by returning < 0, which is returned). */
int inst_status_foreach(inst_mgr *m, int (*cb)(void *ud, const inst_status *st), void *ud);
/* Number of instances (any state). */
size_t inst_count(const inst_mgr *m);

/*
 * Clean stop of every instance (as the idle timeout does, all at once), then of the
 * dbus-daemon; done runs from the loop when everything is gone (at most stop_grace + 1
 * seconds later). From then on inst_open fails with -ESHUTDOWN. Pending opens and syncs
 * get -ESHUTDOWN; watches get INST_EV_CLOSED.
 */
void inst_shutdown_all(inst_mgr *m, void (*done)(void *ud), void *ud);

/* ---- ctl/mount.c (internal to instance.c; root only) ---- */

/*
 * Opens /dev/fuse and mounts it at mountpoint as FUSE type "fuse.acs" (nosuid, nodev,
 * noexec, allow_other, default_permissions: the kernel checks the modes acs-fs reports),
 * the connection owned by user_id/group_id. *ret_fd: the FUSE descriptor (close-on-exec),
 * for acs-fs as "/dev/fd/N". 0, -errno of open or mount.
 */
int inst_mount_fuse(const char *mountpoint, uid_t user_id, gid_t group_id, int *ret_fd);
/* Detaches whatever is mounted at mountpoint (MNT_DETACH; dead mounts too). 0 also when
 * nothing was mounted; -errno. */
int inst_umount(const char *mountpoint);
/* Detaches every fuse.acs mount directly below tree_root (left by an earlier acsd).
 * 0 and *ret_count (may be NULL), or the first -errno (the others are still tried). */
int inst_umount_stale(const char *tree_root, unsigned *ret_count);
/* The FUSE connection number (the minor of the device) of the fuse.acs mount at
 * mountpoint, from /proc/self/mountinfo. 0, -ENOENT, -errno. */
int inst_fuse_conn(const char *mountpoint, unsigned *ret);
/* Aborts FUSE connection conn (/sys/fs/fuse/connections/<conn>/abort): every request
 * waiting on it fails with ENOTCONN, and a daemon stuck in the kernel on it can finish
 * dying. Mounts the fusectl filesystem there first when it is not mounted. 0 or -errno. */
int inst_fuse_abort(unsigned conn);
