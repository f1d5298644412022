/* SPDX-License-Identifier: MIT */
/* acsd's per-user instances: agents started as their own uid, the bus handshake and password hand-out, mounts, idle stop, restarts. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "acs/agent.h"
#include "acs/bus.h"
#include "acs/log.h"
#include "acs/mboxname.h"
#include "acs/util.h"
#include "acs/wire.h"
#include "instance.h"
#include "protocol.h"
#include "vault.h"

#define USEC_PER_SEC UINT64_C(1000000)
#define CACHE_DB_NAME "cache.db"
#define BUS_PID_FILE "acsd-bus.pid" /* in the bus directory: our dbus-daemon, for after a crash */
#define KEY_FD 3          /* the key handover pipe in a child */
#define FUSE_FD 4         /* acs-fs's /dev/fuse descriptor */
#define BACKOFF_MAX 60    /* seconds between restarts of a dying child, at most */
#define STABLE_USEC (60 * USEC_PER_SEC) /* a child that ran this long starts over at 1 s */
#define STOP_TERM_USEC (2 * USEC_PER_SEC) /* STOP on the bus, then SIGTERM after this */
#define SYNC_TIMEOUT_USEC (25 * USEC_PER_SEC) /* of silence from acs-syncd (clients time out at 30 s) */
#define MOUNT_RETRY_USEC (20 * 1000)
#define FS_WATCHDOG_USEC USEC_PER_SEC /* how often acs-fs children are checked for a stuck death */
#define FS_DYING_TICKS 2              /* ticks a dying acs-fs gets before its connection is aborted */
#define MOUNT_WAIT_USEC (10 * USEC_PER_SEC) /* waiting for acs-syncd to create the cache */
#define REJECT_LOG_PER_WINDOW 20
#define REJECT_LOG_WINDOW_USEC (10 * USEC_PER_SEC)

typedef struct inst inst;
typedef struct child child;
typedef struct watch watch;

struct child {
        inst *in;
        enum acs_agent_kind kind;
        const char *name;       /* "acs-syncd" / "acs-fs" */
        pid_t pid;              /* 0: not running */
        uint32_t id;            /* wire id of the current run (0: none) */
        char *bus_name;         /* its unique bus name once its AGENT_HELLO checked out */
        acs_loop_child *watch;  /* exit watch while running */
        acs_loop_timer *timer;  /* restart backoff, or stop escalation */
        unsigned backoff;       /* seconds before the next restart */
        uint64_t started;       /* monotonic usec of the current run */
        int stop_stage;         /* 0 running; 1 STOP sent; 2 SIGTERM sent; 3 SIGKILL sent */
        bool wanted;            /* restart it when it dies */
        unsigned fuse_conn;     /* acs-fs: its FUSE connection (0: unknown) */
        unsigned dying;         /* acs-fs: watchdog ticks seen dying but not gone */
};

struct inst_req {
        inst_req *next;
        inst *in;
        uint64_t id;
        bool is_sync;
        inst_open_cb open_cb;   /* open */
        bool reopen;            /* open waiting for a stopping instance to be gone */
        char key[24];           /* open: its password's name in the pending vault, "#<id>" */
        inst_progress_cb sync_cb; /* sync */
        char *mailbox;          /* sync: "" for all */
        bool round_started;     /* sync: acs-syncd began a round after SYNC_NOW was sent */
        acs_loop_timer *timer;  /* sync: timeout */
        void *ud;
        uint64_t pass;          /* last walk that visited it */
};

struct watch {
        watch *next;
        uint64_t id;
        inst_event_cb cb;       /* NULL once unwatched during a dispatch */
        void *ud;
};

struct inst {
        inst_mgr *m;
        inst *next;
        char *user;
        char *tree;             /* <tree_root>/<user> */
        char *cache_dir;        /* <memory_dir|cache_dir>/<user>, owned by uid, 0700 */
        char *db;               /* <cache_dir>/cache.db */
        uid_t uid;
        gid_t gid;
        bool persistent;
        enum inst_state state;
        bool attempting;        /* acs-syncd runs with a password not yet confirmed by a login */
        bool mounted;           /* a mount (maybe dead) is at tree */
        bool ever_mounted;      /* the vault's password was confirmed once: tree is served */
        bool userdb;            /* acsd wrote a user record for uid (removed when it stops) */
        bool fresh_cache;       /* the cache directory was made for this instance */
        unsigned sessions;
        unsigned restarts;
        int64_t since, last_sync;
        uint64_t mount_wait_start;
        child syncd, fs;
        acs_loop_timer *idle, *login, *mount_timer, *finish;
        inst_req *reqs;         /* pending opens and syncs, oldest first */
        watch *watches;
        unsigned dispatching;   /* > 0 while watch callbacks run */
};

struct inst_mgr {
        acs_loop *loop;
        const acs_config *cfg;
        inst_opts o;
        acs_vault *vault;       /* confirmed-or-being-tried password per user */
        acs_vault *pending;     /* passwords of queued opens, by "#<request id>" */
        acs_wire *wire;
        acs_wire_pub acsd_pub;
        acs_bus *bus;
        acs_loop_io *bus_io;
        acs_loop_timer *bus_timer; /* pending in-memory messages, or a restart after losing the bus */
        unsigned bus_backoff;
        char *bus_address;
        pid_t bus_daemon;       /* 0 when the bus is not ours */
        char **env;             /* children's environment (no secrets) */
        uid_t agent_uid;        /* shared agent user (when no uid range) */
        gid_t agent_gid;
        uid_t tree_uid;
        gid_t tree_gid;
        bool fs_has_bus;        /* acs-fs takes --bus/--key-fd */
        inst *list;
        size_t n_inst;
        uint32_t next_child_id;
        uint64_t next_req_id, next_watch_id;
        /* uids owned by persistent caches (user -> uid), learned at start and on creation */
        struct owned_uid { uid_t uid; char *user; } *owned;
        size_t n_owned, cap_owned;
        bool shutting_down;
        void (*shutdown_done)(void *);
        void *shutdown_ud;
        acs_loop_timer *shutdown_timer;
        acs_loop_timer *fs_watchdog; /* every FS_WATCHDOG_USEC: acs-fs stuck while dying */
        uint64_t rejected, reject_window_start;
        unsigned reject_logged;
        uint64_t pass;          /* request walks (see req_pick) */
        char *run_dir;          /* own bus's directory */
};

static void inst_stop(inst *in);
static void child_stop(child *c);
static int child_spawn(child *c);
static void maybe_finish(inst *in);
static void on_finish(acs_loop_timer *t, void *userdata);
static void update_idle(inst *in);
static void bus_kick(inst_mgr *m);

const char *inst_state_name(enum inst_state s)
{
        switch (s) {
        case INST_STARTING: return "starting";
        case INST_ONLINE: return "online";
        case INST_OFFLINE: return "offline";
        case INST_AUTHFAIL: return "authfail";
        case INST_STOPPING: return "stopping";
        }
        return "unknown";
}

static bool use_uid_range(const inst_mgr *m)
{
        return m->o.uid_min > 0 && m->o.uid_min <= m->o.uid_max;
}

/* A user name that is one safe path component: what the protocol accepts, checked again. */
static bool user_valid(const char *user)
{
        size_t len = user ? strlen(user) : 0;
        if (len < 1 || len > ACS_PROTO_USER_MAX || user[0] == '.' || strchr(user, '/'))
                return false;
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)user[i] < 0x20 || user[i] == 0x7f)
                        return false;
        return acs_proto_utf8_valid(user, len);
}

static bool mailbox_valid(const char *mb)
{
        size_t len = strlen(mb);
        if (len < 1 || len > ACS_AGENT_MAILBOX_MAX)
                return false;
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)mb[i] < 0x20 || mb[i] == 0x7f)
                        return false;
        return acs_proto_utf8_valid(mb, len);
}

static char *path_join(const char *a, const char *b)
{
        char *p = NULL;
        if (asprintf(&p, "%s/%s", a, b) < 0)
                return NULL;
        return p;
}

static inst *inst_find(inst_mgr *m, const char *user)
{
        for (inst *in = m->list; in; in = in->next)
                if (strcmp(in->user, user) == 0)
                        return in;
        return NULL;
}

/* ---- events ---- */

static void emit(inst *in, const inst_event *ev)
{
        in->dispatching++;
        for (watch *w = in->watches; w; w = w->next)
                if (w->cb)
                        w->cb(w->ud, ev);
        in->dispatching--;
        if (in->dispatching == 0) {
                watch **pp = &in->watches;
                while (*pp) {
                        watch *w = *pp;
                        if (!w->cb || ev->kind == INST_EV_CLOSED) {
                                *pp = w->next;
                                free(w);
                        } else
                                pp = &w->next;
                }
        }
}

static void set_state(inst *in, enum inst_state st)
{
        if (in->state == st)
                return;
        acs_log(st == INST_AUTHFAIL ? LOG_WARNING : LOG_INFO, "instance %s: %s -> %s", in->user,
                inst_state_name(in->state), inst_state_name(st));
        in->state = st;
        inst_event ev = { .kind = INST_EV_STATE, .user = in->user, .mailbox = "", .state = st };
        emit(in, &ev);
}

/* ---- requests ---- */

static void req_unlink(inst_req *req)
{
        inst *in = req->in;
        for (inst_req **pp = &in->reqs; *pp; pp = &(*pp)->next)
                if (*pp == req) {
                        *pp = req->next;
                        break;
                }
        req->next = NULL;
}

static void req_free(inst_mgr *m, inst_req *req)
{
        if (!req->is_sync)
                (void)acs_vault_delete(m->pending, req->key);
        acs_loop_timer_free(req->timer);
        free(req->mailbox);
        free(req);
}

/*
 * Walks over requests safely while callbacks run (a callback may cancel or add requests):
 * each call returns the first request of the wanted kind not yet visited in this pass.
 */
static inst_req *req_pick(inst *in, uint64_t pass, bool sync)
{
        for (inst_req *req = in->reqs; req; req = req->next)
                if (req->is_sync == sync && !req->reopen && req->pass != pass) {
                        req->pass = pass;
                        return req;
                }
        return NULL;
}

/* Queues req (owned by the instance from now on) behind in's other requests. */
static void req_append(inst *in, inst_req *req)
{
        inst_req **pp = &in->reqs;
        while (*pp)
                pp = &(*pp)->next;
        req->in = in;
        req->next = NULL;
        *pp = req;
}

/* Unlinks, frees, then calls the open callback (which may call back into inst_*). */
static void open_done(inst *in, inst_req *req, int r)
{
        inst_open_cb cb = req->open_cb;
        void *ud = req->ud;
        req_unlink(req);
        req_free(in->m, req);
        if (r == 0)
                in->sessions++;
        cb(ud, r, r == 0 ? in->tree : NULL);
}

static void sync_done(inst *in, inst_req *req, int r)
{
        inst_progress_cb cb = req->sync_cb;
        void *ud = req->ud;
        _cleanup_free_ char *mb = TAKE_PTR(req->mailbox);
        req_unlink(req);
        req_free(in->m, req);
        cb(ud, mb ? mb : "", 0, 0, true, r);
}

/* Constant-time comparison of two byte strings of any length (hash, then sodium_memcmp). */
static bool secret_equal(const void *a, size_t alen, const void *b, size_t blen)
{
        uint8_t ha[crypto_generichash_BYTES], hb[crypto_generichash_BYTES];
        crypto_generichash(ha, sizeof(ha), a, alen, NULL, 0);
        crypto_generichash(hb, sizeof(hb), b, blen, NULL, 0);
        bool eq = sodium_memcmp(ha, hb, sizeof(ha)) == 0;
        sodium_memzero(ha, sizeof(ha));
        sodium_memzero(hb, sizeof(hb));
        return eq;
}

/* Whether the queued open req carries the password now in the vault. -errno on failure. */
static int req_matches_vault(inst *in, inst_req *req)
{
        _cleanup_secret_ char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        int r = acs_vault_get(in->m->pending, req->key, &a, &alen);
        if (r < 0)
                return r;
        r = acs_vault_get(in->m->vault, in->user, &b, &blen);
        if (r < 0)
                return r;
        return secret_equal(a, alen, b, blen) ? 1 : 0;
}

/* Calls every pending open with r (syncs stay). */
static void fail_opens(inst *in, int r)
{
        uint64_t pass = ++in->m->pass;
        for (inst_req *req; (req = req_pick(in, pass, false)); )
                open_done(in, req, r);
}

static void fail_syncs(inst *in, int r)
{
        uint64_t pass = ++in->m->pass;
        for (inst_req *req; (req = req_pick(in, pass, true)); )
                sync_done(in, req, r);
}

static bool has_open_reqs(const inst *in)
{
        for (inst_req *req = in->reqs; req; req = req->next)
                if (!req->is_sync)
                        return true;
        return false;
}

/* ---- children ---- */

static int bus_send_to(inst_mgr *m, const child *c, enum acs_wire_purpose p, const void *payload,
                       size_t len)
{
        if (!m->bus || !c->bus_name || !c->id)
                return -ENOTCONN;
        _cleanup_free_ uint8_t *msg = NULL;
        size_t mlen = 0;
        int r = acs_wire_seal(m->wire, c->id, p, payload, len, &msg, &mlen);
        if (r < 0)
                return r;
        r = acs_bus_send(m->bus, c->bus_name, msg, mlen);
        bus_kick(m);
        return r;
}

static void child_forget_run(child *c)
{
        inst_mgr *m = c->in->m;
        if (c->id)
                (void)acs_wire_remove_peer(m->wire, c->id);
        c->id = 0;
        c->bus_name = acs_free(c->bus_name);
        c->pid = 0;
        c->watch = NULL;
        c->stop_stage = 0;
}

/* Builds argv for a child (strings malloc'd; NULL-terminated). */
static char **child_argv(child *c)
{
        inst *in = c->in;
        inst_mgr *m = in->m;
        const acs_config *cfg = m->cfg;
        char **v = calloc(32, sizeof(char *));
        size_t n = 0;
        char num[32];
        bool ok = v != NULL;
#define ADD(s) do { const char *_s = (s); if (ok && (!_s || !(v[n++] = strdup(_s)))) ok = false; } while (0)
        if (c->kind == ACS_AGENT_SYNCD) {
                ADD(m->o.syncd_path);
                ADD("--db"); ADD(in->db);
                ADD("--url"); ADD(cfg->imap_url);
                ADD("--user"); ADD(in->user);
                if (cfg->imap_ca) {
                        ADD("--ca"); ADD(cfg->imap_ca);
                }
                if (cfg->imap_insecure_plaintext)
                        ADD("--insecure-plaintext");
                ADD("--bus"); ADD(m->bus_address);
                snprintf(num, sizeof(num), "%d", KEY_FD);
                ADD("--key-fd"); ADD(num);
        } else {
                ADD(m->o.fs_path);
                ADD("--db"); ADD(in->db);
                ADD("--layout"); ADD(cfg->tree_layout == ACS_LAYOUT_MAILDIRPP ? "maildir++" : "fs");
                snprintf(num, sizeof(num), "%u:%u", (unsigned)m->tree_uid, (unsigned)m->tree_gid);
                ADD("--owner"); ADD(num);
                snprintf(num, sizeof(num), "0%o", cfg->tree_mode & 07777);
                ADD("--mode"); ADD(num);
                if (m->fs_has_bus && m->bus_address) {
                        ADD("--bus"); ADD(m->bus_address);
                        snprintf(num, sizeof(num), "%d", KEY_FD);
                        ADD("--key-fd"); ADD(num);
                }
                ADD("-f");
                snprintf(num, sizeof(num), "/dev/fd/%d", FUSE_FD);
                ADD(num);
        }
#undef ADD
        if (!ok) {
                for (size_t i = 0; v && i < n; i++)
                        free(v[i]);
                free(v);
                return NULL;
        }
        return v;
}

static void strv_free(char **v)
{
        for (size_t i = 0; v && v[i]; i++)
                free(v[i]);
        free(v);
}

static void on_child_exit(pid_t pid, int status, void *userdata);
static void on_child_timer(acs_loop_timer *t, void *userdata);

/*
 * In the forked child: descriptors, credentials, exec. Only async-signal-safe calls.
 * Never returns.
 */
ACS_NORETURN static void child_exec(int key_fd, int fuse_fd, uid_t uid, gid_t gid, pid_t parent,
                                     char **argv, char **env)
{
        acs_loop_child_reset();
        int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (devnull > 0)
                dup2(devnull, 0);
        else if (devnull == 0)
                fcntl(0, F_SETFD, 0);
        /* move the two descriptors out of the way, then down to their numbers */
        int k = key_fd >= 0 ? fcntl(key_fd, F_DUPFD, 10) : -1;
        int f = fuse_fd >= 0 ? fcntl(fuse_fd, F_DUPFD, 10) : -1;
        if ((key_fd >= 0 && k < 0) || (fuse_fd >= 0 && f < 0))
                _exit(EX_OSERR);
        if (k >= 0 && dup2(k, KEY_FD) < 0)
                _exit(EX_OSERR);
        if (f >= 0 && dup2(f, FUSE_FD) < 0)
                _exit(EX_OSERR);
        if (close_range(FUSE_FD + 1, ~0U, 0) < 0)
                _exit(EX_OSERR);
        if (setgroups(1, &gid) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
                _exit(EX_OSERR);
        uid_t ru, eu, su;
        if (getresuid(&ru, &eu, &su) < 0 || ru != uid || eu != uid || su != uid)
                _exit(EX_OSERR);
        /* after the uid change (which clears it): die with acsd */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
                _exit(EX_OSERR);
        if (chdir("/") < 0)
                _exit(EX_OSERR);
        umask(077);
        execve(argv[0], argv, env);
        _exit(127);
}

/* Starts c (acs-syncd or acs-fs) with fresh keys. 0 or -errno. */
static int child_spawn(child *c)
{
        inst *in = c->in;
        inst_mgr *m = in->m;
        /* acs-syncd needs the bus (its password comes over it); acs-fs runs without */
        if (c->kind == ACS_AGENT_SYNCD && !m->bus_address)
                return -EHOSTUNREACH;
        bool with_keys = c->kind == ACS_AGENT_SYNCD || (m->fs_has_bus && m->bus_address);
        _cleanup_wire_keys_ acs_wire_keys *keys = NULL;
        _cleanup_close_ int fuse_fd = -1;
        int pipefd[2] = { -1, -1 };
        uint32_t id = 0;
        int r;

        if (c->kind == ACS_AGENT_FS) {
                r = inst_mount_fuse(in->tree, in->uid, m->tree_gid, &fuse_fd);
                if (r < 0) {
                        acs_log(LOG_ERR, "instance %s: cannot mount %s: %s", in->user, in->tree, strerror(-r));
                        return r;
                }
                in->mounted = true;
                in->ever_mounted = true;
                c->fuse_conn = 0;
                if (inst_fuse_conn(in->tree, &c->fuse_conn) < 0)
                        acs_log(LOG_WARNING, "instance %s: FUSE connection of %s not found", in->user, in->tree);
        }
        if (with_keys) {
                acs_wire_pub pub;
                r = acs_wire_keys_new(&keys);
                if (r < 0)
                        return r;
                acs_wire_keys_public(keys, &pub);
                do
                        id = m->next_child_id++;
                while (id == ACS_WIRE_ID_ACSD);
                r = acs_wire_add_peer(m->wire, id, &pub);
                if (r < 0)
                        return r;
                if (pipe2(pipefd, O_CLOEXEC) < 0) {
                        r = -errno;
                        (void)acs_wire_remove_peer(m->wire, id);
                        return r;
                }
        }
        char **argv = child_argv(c);
        if (!argv) {
                r = -ENOMEM;
                goto fail;
        }
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0) {
                r = -errno;
                strv_free(argv);
                goto fail;
        }
        if (pid == 0)
                child_exec(pipefd[0], fuse_fd, in->uid, in->gid, parent, argv, m->env);
        strv_free(argv);
        if (pipefd[0] >= 0)
                close(pipefd[0]);
        if (with_keys) {
                /* the child's secret keys go to it and are forgotten here at once */
                r = acs_wire_handover_write(pipefd[1], id, keys, &m->acsd_pub);
                close(pipefd[1]);
                keys = acs_wire_keys_free(keys);
                if (r < 0)
                        acs_log(LOG_ERR, "instance %s: key handover to %s failed: %s", in->user, c->name,
                                strerror(-r));
        }
        c->pid = pid;
        c->id = id;
        c->started = acs_loop_now();
        c->stop_stage = 0;
        c->dying = 0;
        r = acs_loop_child_add(m->loop, pid, on_child_exit, c, &c->watch);
        if (r < 0) {
                /* cannot watch it: do not leave it running unwatched */
                kill(pid, SIGKILL);
                (void)waitpid(pid, NULL, 0);
                child_forget_run(c);
                return r;
        }
        acs_log(LOG_INFO, "instance %s: started %s (pid %d, uid %u, id %" PRIu32 ")", in->user, c->name,
                (int)pid, (unsigned)in->uid, id);
        return 0;
fail:
        if (pipefd[0] >= 0)
                close(pipefd[0]);
        if (pipefd[1] >= 0)
                close(pipefd[1]);
        if (id)
                (void)acs_wire_remove_peer(m->wire, id);
        return r;
}

/* Stop escalation: STOP on the bus (acs-syncd), SIGTERM, then SIGKILL. */
static void child_stop(child *c)
{
        inst_mgr *m = c->in->m;
        c->wanted = false;
        if (!c->pid) {
                acs_loop_timer_disarm(c->timer);
                return;
        }
        if (c->stop_stage == 0) {
                if (c->kind == ACS_AGENT_SYNCD && bus_send_to(m, c, ACS_WIRE_P_STOP, NULL, 0) == 0) {
                        c->stop_stage = 1;
                        (void)acs_loop_timer_arm(c->timer, STOP_TERM_USEC, 0);
                        return;
                }
                c->stop_stage = 1;
        }
        if (c->stop_stage == 1) {
                kill(c->pid, SIGTERM);
                c->stop_stage = 2;
                unsigned grace = m->o.stop_grace ? m->o.stop_grace : 5;
                (void)acs_loop_timer_arm(c->timer, grace * USEC_PER_SEC, 0);
                return;
        }
        kill(c->pid, SIGKILL);
        c->stop_stage = 3;
}

/* Kills c at once (a failed login attempt: nothing to finish). */
static void child_kill_now(child *c)
{
        c->wanted = false;
        if (c->pid) {
                kill(c->pid, SIGKILL);
                c->stop_stage = 3;
        }
}

static void restart_later(child *c)
{
        inst *in = c->in;
        if (acs_loop_now() - c->started >= STABLE_USEC)
                c->backoff = 1;
        unsigned delay = c->backoff ? c->backoff : 1;
        c->backoff = delay * 2 > BACKOFF_MAX ? BACKOFF_MAX : delay * 2;
        acs_log(LOG_NOTICE, "instance %s: restarting %s in %u s", in->user, c->name, delay);
        (void)acs_loop_timer_arm(c->timer, delay * USEC_PER_SEC, 0);
}

/*
 * acs-fs killed while the kernel holds a directory lock for a call it will never answer
 * (a rename, say) and while its watcher thread waits in fuse_reverse_inval_entry for that
 * very lock cannot finish dying: its main thread is a zombie, the watcher sleeps
 * uninterruptibly, and the connection (which would fail the call) stays open because the
 * dying process still holds /dev/fuse. Aborting the connection breaks the circle. Seen
 * when acs-fs is SIGKILLed in the middle of a write (OOM killer, an administrator).
 */
static char proc_state(pid_t pid)
{
        char path[64], buf[512];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return 0;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        if (n <= 0)
                return 0;
        buf[n] = 0;
        const char *p = strrchr(buf, ')');
        return p && p[1] == ' ' ? p[2] : 0;
}

static void on_fs_watchdog(acs_loop_timer *t, void *userdata)
{
        inst_mgr *m = userdata;
        (void)t;
        for (inst *in = m->list; in; in = in->next) {
                child *c = &in->fs;
                if (!c->pid || proc_state(c->pid) != 'Z') {
                        c->dying = 0;
                        continue;
                }
                /* a zombie the loop has not reaped yet is normal for one tick */
                if (++c->dying != FS_DYING_TICKS)
                        continue;
                int r = c->fuse_conn ? inst_fuse_abort(c->fuse_conn) : -ENOENT;
                acs_log(LOG_WARNING, "instance %s: %s (pid %d) is stuck while dying; aborting its FUSE connection %u: %s",
                        in->user, c->name, (int)c->pid, c->fuse_conn, r < 0 ? strerror(-r) : "done");
        }
}

static void on_child_timer(acs_loop_timer *t, void *userdata)
{
        child *c = userdata;
        inst *in = c->in;
        if (c->pid) {
                child_stop(c); /* next stage */
                return;
        }
        if (!c->wanted || in->state == INST_STOPPING)
                return;
        in->restarts++;
        if (c->kind == ACS_AGENT_FS) {
                /* a dead acs-fs leaves a dead mount (ENOTCONN): detach it, mount afresh */
                int r = inst_umount(in->tree);
                if (r < 0)
                        acs_log(LOG_ERR, "instance %s: cannot detach %s: %s", in->user, in->tree, strerror(-r));
                in->mounted = false;
        }
        int r = child_spawn(c);
        if (r < 0) {
                acs_log(LOG_ERR, "instance %s: cannot start %s: %s", in->user, c->name, strerror(-r));
                restart_later(c);
        }
}

static const char *exit_str(int status, char *buf, size_t size)
{
        if (WIFEXITED(status))
                snprintf(buf, size, "exit status %d", WEXITSTATUS(status));
        else if (WIFSIGNALED(status))
                snprintf(buf, size, "signal %d", WTERMSIG(status));
        else
                snprintf(buf, size, "status 0x%x", (unsigned)status);
        return buf;
}

static void login_failed(inst *in, int r);
static void login_rejected(inst *in);

static void on_child_exit(pid_t pid, int status, void *userdata)
{
        child *c = userdata;
        inst *in = c->in;
        char buf[64];
        bool asked = c->stop_stage > 0;
        acs_log(asked ? LOG_INFO : LOG_WARNING, "instance %s: %s (pid %d) ended: %s", in->user, c->name,
                (int)pid, exit_str(status, buf, sizeof(buf)));
        child_forget_run(c);
        acs_loop_timer_disarm(c->timer);

        if (in->state == INST_STOPPING) {
                maybe_finish(in);
                return;
        }
        if (asked) {
                /* we stopped it; wanted again: a new login attempt waited for it to go */
                if (c->wanted) {
                        int r = child_spawn(c);
                        if (r < 0 && c->kind == ACS_AGENT_SYNCD && in->attempting)
                                login_failed(in, r);
                        else if (r < 0)
                                restart_later(c);
                }
                return;
        }
        if (c->kind == ACS_AGENT_SYNCD && in->attempting) {
                /* died before telling the login result: its exit status says why */
                int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
                if (code == EX_NOPERM)
                        login_rejected(in);
                else if (code == EX_TEMPFAIL || code == EX_UNAVAILABLE || code == EX_PROTOCOL ||
                         code == EX_CONFIG)
                        login_failed(in, -EHOSTUNREACH); /* network, certificate, protocol, URL */
                else
                        login_failed(in, -EIO); /* a crash, the cache: acsd's side of things */
                return;
        }
        if (c->kind == ACS_AGENT_SYNCD && WIFEXITED(status) && WEXITSTATUS(status) == EX_NOPERM) {
                c->wanted = false;
                set_state(in, INST_AUTHFAIL);
                return;
        }
        if (c->wanted)
                restart_later(c);
}

/* ---- start, login outcome, mount ---- */

static void arm_login_timer(inst *in)
{
        unsigned t = in->m->o.login_timeout ? in->m->o.login_timeout : 30;
        (void)acs_loop_timer_arm(in->login, t * USEC_PER_SEC, 0);
}

/* Starts acs-syncd for a login attempt with the vault's password. */
static int attempt_start(inst *in)
{
        child *c = &in->syncd;
        in->attempting = true;
        arm_login_timer(in);
        c->wanted = true;
        if (c->pid) {
                /* a stale run (stopping, or one whose login failed): the new one starts when it is gone */
                child_kill_now(c);
                c->wanted = true;
                return 0;
        }
        acs_loop_timer_disarm(c->timer);
        return child_spawn(c);
}

/*
 * The attempt failed with r (-EHOSTUNREACH, -ETIMEDOUT, ...): waiting opens get r. A
 * fresh instance stops; a served one (AUTHFAIL retry) goes back to AUTHFAIL.
 */
/* The login attempt has its answer (or none will come). */
static void attempt_end(inst *in)
{
        in->attempting = false;
        acs_loop_timer_disarm(in->login);
}

/* No password works now: a fresh instance stops; a served one stays, in authfail, without acs-syncd. */
static void no_login(inst *in)
{
        if (!in->ever_mounted) {
                inst_stop(in);
                return;
        }
        child_stop(&in->syncd);
        set_state(in, INST_AUTHFAIL);
        update_idle(in);
}

static void login_failed(inst *in, int r)
{
        attempt_end(in);
        fail_opens(in, r);
        no_login(in);
}

/* Answers the waiting opens after a login with the vault's password succeeded (ok) or was refused. */
static void resolve_opens(inst *in, bool ok, bool *ret_leftover)
{
        bool leftover = false;
        uint64_t pass = ++in->m->pass;
        for (inst_req *req; (req = req_pick(in, pass, false)); ) {
                int eq = req_matches_vault(in, req);
                if (eq < 0)
                        open_done(in, req, eq);
                else if (eq)
                        open_done(in, req, ok ? 0 : -EACCES);
                else if (ok)
                        open_done(in, req, -EACCES);
                else
                        leftover = true;
        }
        *ret_leftover = leftover;
}

static void login_rejected(inst *in)
{
        bool leftover = false;
        attempt_end(in);
        acs_log(LOG_NOTICE, "instance %s: the IMAP server refused the password", in->user);
        resolve_opens(in, false, &leftover);
        if (leftover) {
                /* another waiting open brought a different password: try that one next */
                for (inst_req *req = in->reqs; req; req = req->next) {
                        if (req->is_sync || req->reopen)
                                continue;
                        _cleanup_secret_ char *pw = NULL;
                        size_t len = 0;
                        int r = acs_vault_get(in->m->pending, req->key, &pw, &len);
                        if (r == 0)
                                r = acs_vault_put(in->m->vault, in->user, pw, len);
                        if (r == 0)
                                r = attempt_start(in);
                        if (r < 0)
                                login_failed(in, r);
                        return;
                }
        }
        no_login(in);
}

static void on_login_timeout(acs_loop_timer *t, void *userdata)
{
        inst *in = userdata;
        if (!in->attempting)
                return;
        acs_log(LOG_WARNING, "instance %s: no login result from acs-syncd in time", in->user);
        login_failed(in, -ETIMEDOUT);
}

/* Mounts and starts acs-fs once acs-syncd made the cache; then answers the opens. */
static void mount_and_answer(inst *in)
{
        struct stat st;
        if (lstat(in->db, &st) < 0) {
                if (acs_loop_now() - in->mount_wait_start < MOUNT_WAIT_USEC) {
                        (void)acs_loop_timer_arm(in->mount_timer, MOUNT_RETRY_USEC, 0);
                        return;
                }
                acs_log(LOG_ERR, "instance %s: acs-syncd created no cache at %s", in->user, in->db);
                fail_opens(in, -EIO);
                inst_stop(in);
                return;
        }
        int r = inst_umount(in->tree); /* anything left there */
        if (r == 0) {
                in->fs.wanted = true;
                r = child_spawn(&in->fs);
        }
        if (r < 0) {
                fail_opens(in, r);
                inst_stop(in);
                return;
        }
        bool leftover;
        set_state(in, INST_ONLINE);
        resolve_opens(in, true, &leftover);
        update_idle(in);
}

static void on_mount_timer(acs_loop_timer *t, void *userdata)
{
        inst *in = userdata;
        if (in->state == INST_STARTING && !in->mounted)
                mount_and_answer(in);
}

static void login_ok(inst *in)
{
        bool leftover;
        bool was_attempt = in->attempting;
        attempt_end(in);
        in->syncd.backoff = 1;
        if (!in->ever_mounted) {
                in->mount_wait_start = acs_loop_now();
                mount_and_answer(in);
                return;
        }
        set_state(in, INST_ONLINE);
        if (was_attempt)
                resolve_opens(in, true, &leftover);
        update_idle(in);
}

/* ---- the bus ---- */

static child *child_by_id(inst_mgr *m, uint32_t id)
{
        if (id == 0)
                return NULL;
        for (inst *in = m->list; in; in = in->next) {
                if (in->syncd.id == id)
                        return &in->syncd;
                if (in->fs.id == id)
                        return &in->fs;
        }
        return NULL;
}

/* Counts and logs (a bounded number per window) a message acsd did not take. */
static void reject_msg(inst_mgr *m, const char *sender, const char *why, bool quiet)
{
        uint64_t now = acs_loop_now();
        m->rejected++;
        if (now - m->reject_window_start > REJECT_LOG_WINDOW_USEC) {
                m->reject_window_start = now;
                m->reject_logged = 0;
        }
        if (m->reject_logged++ < REJECT_LOG_PER_WINDOW)
                acs_log(quiet ? LOG_INFO : LOG_WARNING, "bus: rejected a message from %s: %s (%" PRIu64 " so far)", sender, why,
                        m->rejected);
}

static void reject(inst_mgr *m, const char *sender, const char *why)
{
        reject_msg(m, sender, why, false);
}

static uint64_t accept_mask(const child *c)
{
        if (!c->bus_name)
                return ACS_WIRE_MASK(ACS_WIRE_P_AGENT_HELLO);
        if (c->kind == ACS_AGENT_SYNCD)
                return ACS_WIRE_MASK(ACS_WIRE_P_CRED_REQUEST) | ACS_WIRE_MASK(ACS_WIRE_P_LOGIN_RESULT) |
                       ACS_WIRE_MASK(ACS_WIRE_P_PROGRESS) | ACS_WIRE_MASK(ACS_WIRE_P_CHANGE) |
                       ACS_WIRE_MASK(ACS_WIRE_P_STATUS);
        return ACS_WIRE_MASK(ACS_WIRE_P_CHANGE) | ACS_WIRE_MASK(ACS_WIRE_P_STATUS);
}

static void handle_hello(inst_mgr *m, child *c, const char *sender, const acs_wire_msg *wm)
{
        enum acs_agent_kind kind;
        uint32_t pid;
        pid_t peer_pid;
        uid_t peer_uid;
        if (acs_agent_hello_parse(wm->payload, wm->len, &kind, &pid) < 0)
                return reject(m, sender, "malformed AGENT_HELLO");
        if (kind != c->kind || (pid_t)pid != c->pid)
                return reject(m, sender, "AGENT_HELLO names another kind or pid");
        /* the daemon's word on who is behind sender: any error means deny */
        int r = acs_bus_peer_creds(m->bus, sender, &peer_pid, &peer_uid);
        bus_kick(m);
        if (r < 0)
                return reject(m, sender, "cannot identify the sender on the bus");
        if (peer_pid != c->pid || peer_uid != c->in->uid)
                return reject(m, sender, "sender is not the child acsd started");
        c->bus_name = strdup(sender);
        if (!c->bus_name)
                return reject(m, sender, "out of memory");
        acs_log(LOG_DEBUG, "instance %s: %s (pid %d) is %s on the bus", c->in->user, c->name, (int)c->pid,
                sender);
}

static void handle_cred_request(inst_mgr *m, child *c, const char *sender)
{
        inst *in = c->in;
        if (in->state == INST_STOPPING || (in->state == INST_AUTHFAIL && !in->attempting))
                return reject(m, sender, "CRED_REQUEST while no login is wanted");
        _cleanup_secret_ char *pw = NULL;
        _cleanup_secret_ uint8_t *payload = NULL;
        size_t len = 0;
        int r = acs_vault_get(m->vault, in->user, &pw, &len);
        if (r == 0)
                r = acs_agent_cred_pack(pw, len, &payload);
        if (r == 0)
                r = bus_send_to(m, c, ACS_WIRE_P_CRED, payload, ACS_AGENT_CRED_SIZE);
        if (r < 0)
                acs_log(LOG_ERR, "instance %s: cannot send the password to acs-syncd: %s", in->user, strerror(-r));
}

static void handle_login_result(inst_mgr *m, child *c, const char *sender, const acs_wire_msg *wm)
{
        enum acs_agent_login res;
        uint32_t code;
        inst *in = c->in;
        if (acs_agent_login_parse(wm->payload, wm->len, &res, &code) < 0)
                return reject(m, sender, "malformed LOGIN_RESULT");
        if (in->state == INST_STOPPING)
                return;
        switch (res) {
        case ACS_AGENT_LOGIN_OK:
                acs_log(LOG_DEBUG, "instance %s: %s (pid %d) logged in", in->user, c->name, (int)c->pid);
                login_ok(in);
                break;
        case ACS_AGENT_LOGIN_REJECTED:
                if (in->attempting)
                        login_rejected(in);
                else {
                        /* the password changed on the server: serve the cache, stop trying */
                        acs_log(LOG_WARNING, "instance %s: the IMAP server now refuses the password", in->user);
                        no_login(in);
                }
                break;
        case ACS_AGENT_LOGIN_UNAVAILABLE:
        case ACS_AGENT_LOGIN_FAILED:
                acs_log(LOG_NOTICE, "instance %s: acs-syncd cannot log in (%s, status %" PRIu32 ")", in->user,
                        res == ACS_AGENT_LOGIN_UNAVAILABLE ? "server unavailable" : "failed", code);
                if (in->attempting)
                        login_failed(in, -EHOSTUNREACH);
                else if (in->state == INST_ONLINE)
                        set_state(in, INST_OFFLINE);
                break;
        }
}

static void handle_progress(inst_mgr *m, child *c, const char *sender, const acs_wire_msg *wm)
{
        enum acs_agent_progress ev;
        uint64_t done, total;
        inst *in = c->in;
        if (acs_agent_progress_parse(wm->payload, wm->len, &ev, &done, &total) < 0)
                return reject(m, sender, "malformed PROGRESS");
        if (done > total)
                return reject(m, sender, "PROGRESS with done > total");
        if (ev == ACS_AGENT_PROGRESS_SYNCED)
                in->last_sync = time(NULL);
        if (ev == ACS_AGENT_PROGRESS_RECONNECT) {
                if (in->state == INST_ONLINE)
                        set_state(in, INST_OFFLINE);
                return;
        }
        if (in->state == INST_OFFLINE)
                set_state(in, INST_ONLINE);
        inst_event e = { .kind = INST_EV_PROGRESS, .user = in->user, .mailbox = "", .done = done,
                         .total = total };
        emit(in, &e);
        /* a SYNCED ends only the requests whose round began after they were sent: one
         * that was already running may have missed what the client wants to see */
        uint64_t pass = ++m->pass;
        for (inst_req *req; (req = req_pick(in, pass, true)); ) {
                (void)acs_loop_timer_arm(req->timer, SYNC_TIMEOUT_USEC, 0);
                if (ev == ACS_AGENT_PROGRESS_SYNCED) {
                        if (req->round_started)
                                sync_done(in, req, 0);
                } else {
                        req->round_started = true;
                        req->sync_cb(req->ud, req->mailbox, done, total, false, 0);
                }
        }
}

static void handle_status(inst_mgr *m, child *c, const char *sender, const acs_wire_msg *wm)
{
        enum acs_agent_state st;
        uint32_t pending;
        inst *in = c->in;
        if (acs_agent_status_parse(wm->payload, wm->len, &st, &pending) < 0)
                return reject(m, sender, "malformed STATUS");
        if (c->kind != ACS_AGENT_SYNCD || in->attempting)
                return;
        if (st == ACS_AGENT_STATE_SYNCING)
                for (inst_req *req = in->reqs; req; req = req->next)
                        if (req->is_sync) {
                                req->round_started = true;
                                (void)acs_loop_timer_arm(req->timer, SYNC_TIMEOUT_USEC, 0);
                        }
        if ((st == ACS_AGENT_STATE_ONLINE || st == ACS_AGENT_STATE_SYNCING) && in->state == INST_OFFLINE)
                set_state(in, INST_ONLINE);
        else if (st == ACS_AGENT_STATE_OFFLINE && in->state == INST_ONLINE)
                set_state(in, INST_OFFLINE);
}

static void on_bus_message(void *userdata, const char *sender, const uint8_t *msg, size_t len)
{
        inst_mgr *m = userdata;
        if (len < ACS_WIRE_HEADER_SIZE)
                return reject(m, sender, "shorter than a header");
        /* the claimed sender id picks the child and what it may send now; acs_wire_open
         * then checks the signature with that id's key, so a false claim fails there */
        uint32_t id = (uint32_t)msg[8] << 24 | (uint32_t)msg[9] << 16 | (uint32_t)msg[10] << 8 | msg[11];
        child *c = child_by_id(m, id);
        if (!c) /* an id acsd gave out before: a late message of a child that is gone */
                return reject_msg(m, sender, "unknown sender id", id != 0 && id < m->next_child_id);
        if (c->bus_name && strcmp(c->bus_name, sender) != 0)
                return reject(m, sender, "sender id bound to another bus name");
        acs_wire_msg wm = { 0 };
        const char *why = NULL;
        int r = acs_wire_open(m->wire, msg, len, accept_mask(c), &wm, &why);
        if (r < 0)
                return reject(m, sender, why ? why : strerror(-r));
        if (wm.sender != id) {
                acs_wire_msg_clear(&wm);
                return reject(m, sender, "sender id changed");
        }
        switch (wm.purpose) {
        case ACS_WIRE_P_AGENT_HELLO: handle_hello(m, c, sender, &wm); break;
        case ACS_WIRE_P_CRED_REQUEST:
                if (wm.len != 0)
                        reject(m, sender, "CRED_REQUEST with a payload");
                else
                        handle_cred_request(m, c, sender);
                break;
        case ACS_WIRE_P_LOGIN_RESULT: handle_login_result(m, c, sender, &wm); break;
        case ACS_WIRE_P_PROGRESS: handle_progress(m, c, sender, &wm); break;
        case ACS_WIRE_P_CHANGE: {
                uint64_t seq;
                if (acs_agent_change_parse(wm.payload, wm.len, &seq) < 0) {
                        reject(m, sender, "malformed CHANGE");
                        break;
                }
                inst_event e = { .kind = INST_EV_CHANGE, .user = c->in->user, .mailbox = "" };
                emit(c->in, &e);
                break;
        }
        case ACS_WIRE_P_STATUS: handle_status(m, c, sender, &wm); break;
        default: reject(m, sender, "unexpected purpose"); break;
        }
        acs_wire_msg_clear(&wm);
}

static void on_bus_gone(void *userdata, const char *name)
{
        inst_mgr *m = userdata;
        for (inst *in = m->list; in; in = in->next) {
                child *cs[] = { &in->syncd, &in->fs };
                for (size_t i = 0; i < ACS_ARRAY_SIZE(cs); i++)
                        if (cs[i]->bus_name && strcmp(cs[i]->bus_name, name) == 0) {
                                acs_log(LOG_DEBUG, "instance %s: %s left the bus", in->user, cs[i]->name);
                                cs[i]->bus_name = acs_free(cs[i]->bus_name);
                        }
        }
}

static void bus_kick(inst_mgr *m)
{
        if (!m->bus || !m->bus_io)
                return;
        unsigned ev = ACS_LOOP_IN;
        if (acs_bus_poll_events(m->bus) & POLLOUT)
                ev |= ACS_LOOP_OUT;
        if (acs_loop_io_events(m->bus_io) != ev)
                (void)acs_loop_io_set(m->bus_io, ev);
}

static int start_bus(inst_mgr *m);

/* The bus connection (or its dbus-daemon) is gone: drop it, start over after a pause. */
static void bus_lost(inst_mgr *m, int r)
{
        acs_log(LOG_CRIT, "bus: connection lost (%s); agents cannot get passwords until it is back",
                strerror(-r));
        m->bus_io = acs_loop_io_free(m->bus_io);
        m->bus = acs_bus_free(m->bus);
        m->bus_address = acs_free(m->bus_address);
        for (inst *in = m->list; in; in = in->next) {
                in->syncd.bus_name = acs_free(in->syncd.bus_name);
                in->fs.bus_name = acs_free(in->fs.bus_name);
        }
        m->bus_backoff = 1;
        if (!m->shutting_down)
                (void)acs_loop_timer_arm(m->bus_timer, USEC_PER_SEC, 0);
}

/* Restarts the bus (own: a new dbus-daemon); agents that lost it reconnect when acsd restarts them. */
static void on_bus_timer(acs_loop_timer *t, void *userdata)
{
        inst_mgr *m = userdata;
        if (m->bus_io) {
                /* in-memory messages left after a round: dispatch them (the fd will not tell) */
                int r = acs_bus_dispatch(m->bus);
                if (r < 0)
                        return bus_lost(m, r);
                if (acs_bus_has_pending(m->bus))
                        (void)acs_loop_timer_arm(m->bus_timer, 0, 0);
                bus_kick(m);
                return;
        }
        if (m->shutting_down)
                return;
        if (m->bus_daemon > 0) {
                (void)acs_bus_daemon_stop(m->bus_daemon);
                m->bus_daemon = 0;
        }
        int r = start_bus(m);
        if (r < 0) {
                m->bus_io = acs_loop_io_free(m->bus_io);
                m->bus = acs_bus_free(m->bus);
                m->bus_address = acs_free(m->bus_address);
                m->bus_backoff = m->bus_backoff * 2 > 30 ? 30 : m->bus_backoff * 2;
                acs_log(LOG_ERR, "bus: cannot restart it (%s); trying again in %u s", strerror(-r), m->bus_backoff);
                (void)acs_loop_timer_arm(m->bus_timer, m->bus_backoff * USEC_PER_SEC, 0);
                return;
        }
        acs_log(LOG_NOTICE, "bus: back at %s", m->bus_address);
}

static void on_bus_io(acs_loop_io *io, int fd, unsigned events, void *userdata)
{
        inst_mgr *m = userdata;
        /* a handler's blocking call (peer credentials) may leave complete messages in
         * memory, which polling the fd would not report: drain a few rounds, then the rest
         * from a zero timer, so one busy bus cannot hold the loop */
        for (unsigned i = 0; i < 16; i++) {
                int r = acs_bus_dispatch(m->bus);
                if (r < 0)
                        return bus_lost(m, r);
                if (!acs_bus_has_pending(m->bus))
                        break;
                if (i == 15)
                        (void)acs_loop_timer_arm(m->bus_timer, 0, 0);
        }
        bus_kick(m);
}

/* ---- instances ---- */

/*
 * Walks the tree below the directory dfd (owned by the caller; closed here) without ever
 * following a symlink or leaving the file system: every step is relative to a descriptor
 * opened with O_NOFOLLOW, so an agent that swaps a directory for a symlink meanwhile
 * cannot steer root's unlink or chown elsewhere. remove: unlinks everything below (the
 * caller removes dfd's directory); else chowns everything below to uid:gid.
 * 0 or the first -errno (the walk goes on).
 */
static int walk_below(int dfd, bool remove, uid_t uid, gid_t gid, unsigned depth)
{
        DIR *d = fdopendir(dfd);
        if (!d) {
                close(dfd);
                return -errno;
        }
        int ret = 0;
        struct stat dst;
        if (fstat(dirfd(d), &dst) < 0 || depth > 64)
                ret = depth > 64 ? -ELOOP : -errno;
        struct dirent *de;
        while (ret == 0 && (de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                struct stat st;
                int r = 0;
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        r = errno == ENOENT ? 0 : -errno;
                else if (S_ISDIR(st.st_mode) && st.st_dev == dst.st_dev) {
                        int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                        r = sub < 0 ? -errno : walk_below(sub, remove, uid, gid, depth + 1);
                        if (r == 0 && remove && unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0)
                                r = -errno;
                } else if (S_ISDIR(st.st_mode))
                        r = -EXDEV; /* a mount below a cache: leave it alone */
                else if (remove && unlinkat(dirfd(d), de->d_name, 0) < 0)
                        r = -errno;
                if (!remove && r == 0 && fchownat(dirfd(d), de->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
                        r = -errno;
                if (r < 0 && ret == 0)
                        ret = r;
        }
        closedir(d);
        return ret;
}

/* Removes the directory path and everything in it (see walk_below). 0 also if it is gone. */
static int rm_rf(const char *path)
{
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOENT ? 0 : -errno;
        int r = walk_below(fd, true, 0, 0, 0);
        if (r == 0 && rmdir(path) < 0 && errno != ENOENT)
                r = -errno;
        return r;
}

/* Gives the directory path and everything in it to uid:gid (see walk_below). */
static int chown_r(const char *path, uid_t uid, gid_t gid)
{
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        if (fchown(fd, uid, gid) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        return walk_below(fd, false, uid, gid, 0);
}

/*
 * Agent uids of the range usually have no entry in /etc/passwd, but dbus-daemon refuses a
 * connection whose uid it cannot look up (it wants the groups for its policy). acsd gives
 * each such uid a transient user and group record while its instance runs: a JSON
 * drop-in in /run/userdb, which nss-systemd ("systemd" in nsswitch.conf's passwd and
 * group lines) serves without any daemon. Nothing is written to /etc.
 */
#define USERDB_DIR "/run/userdb"

static int write_file_atomic(const char *path, const char *text)
{
        _cleanup_free_ char *tmp = NULL;
        if (asprintf(&tmp, "%s.tmp", path) < 0)
                return -ENOMEM;
        _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0)
                return -errno;
        size_t len = strlen(text);
        if (write(fd, text, len) != (ssize_t)len || fchmod(fd, 0644) < 0) {
                int r = errno ? -errno : -EIO;
                unlink(tmp);
                return r;
        }
        if (rename(tmp, path) < 0) {
                int r = -errno;
                unlink(tmp);
                return r;
        }
        return 0;
}

static void userdb_remove(uid_t uid)
{
        static const char *const prefix[] = { "", "acs-" }, *const kind[] = { "user", "group" };
        for (size_t i = 0; i < 2; i++)
                for (size_t j = 0; j < 2; j++) {
                        char p[64];
                        snprintf(p, sizeof(p), USERDB_DIR "/%s%u.%s", prefix[i], (unsigned)uid, kind[j]);
                        (void)unlink(p);
                }
}

/* Makes uid (and gid uid) resolvable by name service lookups. *ret_added: a record was written. */
static int userdb_add(uid_t uid, bool *ret_added)
{
        *ret_added = false;
        if (getpwuid(uid)) /* a real entry (the admin created the range's users): use it */
                return 0;
        if (mkdir(USERDB_DIR, 0755) < 0 && errno != EEXIST)
                return -errno;
        char user[160], group[160], p[64], link[64];
        snprintf(user, sizeof(user),
                 "{\"userName\":\"acs-%u\",\"uid\":%u,\"gid\":%u,\"realName\":\"acs agent\","
                 "\"homeDirectory\":\"/\",\"shell\":\"/usr/sbin/nologin\",\"locked\":true}\n",
                 (unsigned)uid, (unsigned)uid, (unsigned)uid);
        snprintf(group, sizeof(group), "{\"groupName\":\"acs-%u\",\"gid\":%u}\n", (unsigned)uid,
                 (unsigned)uid);
        const char *kinds[] = { "user", "group" };
        const char *texts[] = { user, group };
        for (size_t i = 0; i < 2; i++) {
                snprintf(p, sizeof(p), USERDB_DIR "/acs-%u.%s", (unsigned)uid, kinds[i]);
                snprintf(link, sizeof(link), USERDB_DIR "/%u.%s", (unsigned)uid, kinds[i]);
                char target[32];
                snprintf(target, sizeof(target), "acs-%u.%s", (unsigned)uid, kinds[i]);
                int r = write_file_atomic(p, texts[i]);
                if (r == 0 && symlink(target, link) < 0 && errno != EEXIST)
                        r = -errno;
                if (r < 0) {
                        userdb_remove(uid);
                        return r;
                }
        }
        *ret_added = true;
        if (!getpwuid(uid)) {
                userdb_remove(uid);
                *ret_added = false;
                return -ENOENT;
        }
        return 0;
}

/* Records left by an earlier acsd for uids of the range. */
static void userdb_clean(uid_t lo, uid_t hi)
{
        DIR *d = opendir(USERDB_DIR);
        if (!d)
                return;
        struct dirent *de;
        while ((de = readdir(d))) {
                unsigned u;
                char kind[8];
                if (sscanf(de->d_name, "acs-%u.%7s", &u, kind) == 2 && u >= lo && u <= hi &&
                    (strcmp(kind, "user") == 0 || strcmp(kind, "group") == 0))
                        userdb_remove(u);
        }
        closedir(d);
}

/* Kills every process of uid (the user's agents and anything they left), uid-range mode only. */
static void kill_uid(uid_t uid)
{
        pid_t pid = fork();
        if (pid == 0) {
                acs_loop_child_reset();
                if (setresgid(uid, uid, uid) < 0 || setresuid(uid, uid, uid) < 0)
                        _exit(1);
                kill(-1, SIGKILL); /* as uid: every process of uid but this one */
                _exit(0);
        }
        if (pid > 0)
                while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                        ;
}

static bool uid_taken(inst_mgr *m, uid_t uid, const char *user)
{
        for (inst *in = m->list; in; in = in->next)
                if (in->uid == uid && strcmp(in->user, user) != 0)
                        return true;
        for (size_t i = 0; i < m->n_owned; i++)
                if (m->owned[i].uid == uid && strcmp(m->owned[i].user, user) != 0)
                        return true;
        return false;
}

static void forget_owned(inst_mgr *m, const char *user)
{
        for (size_t i = 0; i < m->n_owned; i++)
                if (strcmp(m->owned[i].user, user) == 0) {
                        free(m->owned[i].user);
                        m->owned[i] = m->owned[--m->n_owned];
                        return;
                }
}

static int remember_owned(inst_mgr *m, uid_t uid, const char *user)
{
        for (size_t i = 0; i < m->n_owned; i++)
                if (strcmp(m->owned[i].user, user) == 0) {
                        m->owned[i].uid = uid;
                        return 0;
                }
        if (ACS_GROW(m->owned, m->cap_owned, m->n_owned, 16) < 0)
                return -ENOMEM;
        char *u = strdup(user);
        if (!u)
                return -ENOMEM;
        m->owned[m->n_owned++] = (struct owned_uid){ .uid = uid, .user = u };
        return 0;
}

/* Picks the agent uid for a user: its persistent cache's owner if that is free, else the lowest free. */
static int pick_uid(inst_mgr *m, const char *user, uid_t existing, bool has_existing, uid_t *ret)
{
        if (!use_uid_range(m)) {
                *ret = m->agent_uid;
                return 0;
        }
        if (has_existing && existing >= m->o.uid_min && existing <= m->o.uid_max && !uid_taken(m, existing, user)) {
                *ret = existing;
                return 0;
        }
        for (uid_t u = m->o.uid_min; u <= m->o.uid_max && u >= m->o.uid_min; u++)
                if (!uid_taken(m, u, user)) {
                        *ret = u;
                        return 0;
                }
        return -EAGAIN;
}

/* The cache directory, owned by the agent uid, mode 0700. */
static int prepare_cache(inst *in)
{
        inst_mgr *m = in->m;
        const char *parent = in->persistent ? m->cfg->cache_dir : m->cfg->cache_memory_dir;
        struct stat st = { 0 };
        bool exists = false;
        int r;

        if (mkdir(parent, 0755) < 0 && errno != EEXIST)
                return -errno;
        if (lstat(in->cache_dir, &st) == 0) {
                if (!S_ISDIR(st.st_mode))
                        return -ENOTDIR; /* a symlink or file planted there: refuse */
                exists = true;
                if (!in->persistent) {
                        /* a memory cache is fresh for every instance */
                        r = rm_rf(in->cache_dir);
                        if (r < 0)
                                return r;
                        exists = false;
                }
        } else if (errno != ENOENT)
                return -errno;

        r = pick_uid(m, in->user, exists ? st.st_uid : 0, exists, &in->uid);
        if (r < 0)
                return r;
        in->gid = use_uid_range(m) ? (gid_t)in->uid : m->agent_gid;
        if (use_uid_range(m)) {
                r = userdb_add(in->uid, &in->userdb);
                if (r < 0) {
                        acs_log(LOG_ERR, "agent uid %u has no user entry and none could be made in "
                                USERDB_DIR " (is \"systemd\" in the passwd and group lines of "
                                "/etc/nsswitch.conf?): %s", (unsigned)in->uid, strerror(-r));
                        return r;
                }
        }

        if (!exists) {
                if (mkdir(in->cache_dir, 0700) < 0)
                        return -errno;
                in->fresh_cache = true;
                if (lchown(in->cache_dir, in->uid, in->gid) < 0)
                        return -errno;
        } else if (st.st_uid != in->uid || st.st_gid != in->gid) {
                /* the persistent cache of a user whose uid changed: hand it over */
                r = chown_r(in->cache_dir, in->uid, in->gid);
                if (r < 0)
                        return r;
        }
        if (chmod(in->cache_dir, 0700) < 0)
                return -errno;
        if (in->persistent && use_uid_range(m))
                return remember_owned(m, in->uid, in->user);
        return 0;
}

static void inst_free(inst *in)
{
        if (!in)
                return;
        if (in->userdb)
                userdb_remove(in->uid);
        for (inst_req *req = in->reqs, *next; req; req = next) {
                next = req->next;
                req_free(in->m, req);
        }
        for (watch *w = in->watches, *next; w; w = next) {
                next = w->next;
                free(w);
        }
        acs_loop_timer_free(in->idle);
        acs_loop_timer_free(in->login);
        acs_loop_timer_free(in->mount_timer);
        acs_loop_timer_free(in->finish);
        acs_loop_timer_free(in->syncd.timer);
        acs_loop_timer_free(in->fs.timer);
        acs_loop_child_free(in->syncd.watch);
        acs_loop_child_free(in->fs.watch);
        free(in->syncd.bus_name);
        free(in->fs.bus_name);
        free(in->user);
        free(in->tree);
        free(in->cache_dir);
        free(in->db);
        free(in);
}

static void on_idle(acs_loop_timer *t, void *userdata)
{
        inst *in = userdata;
        if (in->sessions == 0 && !has_open_reqs(in)) {
                acs_log(LOG_INFO, "instance %s: idle for %u s, stopping", in->user, in->m->cfg->session_idle_timeout);
                inst_stop(in);
        }
}

static void update_idle(inst *in)
{
        bool idle = in->sessions == 0 && !has_open_reqs(in) && in->state != INST_STOPPING &&
                    in->state != INST_STARTING;
        if (!idle)
                acs_loop_timer_disarm(in->idle);
        else if (!acs_loop_timer_armed(in->idle))
                (void)acs_loop_timer_arm(in->idle, (uint64_t)in->m->cfg->session_idle_timeout * USEC_PER_SEC, 0);
}

static int inst_create(inst_mgr *m, const char *user, inst **ret)
{
        inst *in = calloc(1, sizeof(*in));
        if (!in)
                return -ENOMEM;
        in->m = m;
        in->persistent = m->cfg->cache_mode == ACS_CACHE_PERSISTENT;
        in->state = INST_STARTING;
        in->since = time(NULL);
        in->syncd = (child){ .in = in, .kind = ACS_AGENT_SYNCD, .name = "acs-syncd", .backoff = 1 };
        in->fs = (child){ .in = in, .kind = ACS_AGENT_FS, .name = "acs-fs", .backoff = 1 };
        int r = -ENOMEM;
        in->user = strdup(user);
        in->tree = path_join(m->cfg->tree_root, user);
        in->cache_dir = path_join(in->persistent ? m->cfg->cache_dir : m->cfg->cache_memory_dir, user);
        in->db = in->cache_dir ? path_join(in->cache_dir, CACHE_DB_NAME) : NULL;
        if (!in->user || !in->tree || !in->cache_dir || !in->db)
                goto fail;
        if ((r = acs_loop_timer_add(m->loop, 0, 0, on_idle, in, &in->idle)) < 0 ||
            (r = acs_loop_timer_add(m->loop, 0, 0, on_login_timeout, in, &in->login)) < 0 ||
            (r = acs_loop_timer_add(m->loop, 0, 0, on_mount_timer, in, &in->mount_timer)) < 0 ||
            (r = acs_loop_timer_add(m->loop, 0, 0, on_finish, in, &in->finish)) < 0 ||
            (r = acs_loop_timer_add(m->loop, 0, 0, on_child_timer, &in->syncd, &in->syncd.timer)) < 0 ||
            (r = acs_loop_timer_add(m->loop, 0, 0, on_child_timer, &in->fs, &in->fs.timer)) < 0)
                goto fail;
        acs_loop_timer_disarm(in->idle);
        acs_loop_timer_disarm(in->login);
        acs_loop_timer_disarm(in->mount_timer);
        acs_loop_timer_disarm(in->finish);
        acs_loop_timer_disarm(in->syncd.timer);
        acs_loop_timer_disarm(in->fs.timer);

        r = prepare_cache(in);
        if (r < 0) {
                acs_log(LOG_ERR, "instance %s: cannot prepare the cache %s: %s", user, in->cache_dir, strerror(-r));
                goto fail;
        }
        if (mkdir(m->cfg->tree_root, 0755) < 0 && errno != EEXIST) {
                r = -errno;
                goto fail;
        }
        (void)inst_umount(in->tree);
        /* while nothing is mounted, the mount point lets nobody but root in */
        if (mkdir(in->tree, 0) < 0 && errno != EEXIST) {
                r = -errno;
                goto fail;
        }
        in->next = m->list;
        m->list = in;
        m->n_inst++;
        *ret = in;
        return 0;
fail:
        inst_free(in);
        return r;
}

static void inst_unlink(inst *in)
{
        inst_mgr *m = in->m;
        for (inst **pp = &m->list; *pp; pp = &(*pp)->next)
                if (*pp == in) {
                        *pp = in->next;
                        m->n_inst--;
                        return;
                }
}

static void shutdown_step(inst_mgr *m);
static int open_new(inst_mgr *m, const char *user, const char *password, size_t len, inst_req *req);

/* Once both children are gone after a stop, finish from the loop (never inside a caller's call). */
static void maybe_finish(inst *in)
{
        if (in->state == INST_STOPPING && !in->syncd.pid && !in->fs.pid)
                (void)acs_loop_timer_arm(in->finish, 0, 0);
}

/* Removes what a stopped instance leaves behind and frees it. */
static void on_finish(acs_loop_timer *t, void *userdata)
{
        inst *in = userdata;
        inst_mgr *m = in->m;
        if (in->state != INST_STOPPING || in->syncd.pid || in->fs.pid)
                return;
        if (use_uid_range(m))
                kill_uid(in->uid);
        if (in->mounted)
                (void)inst_umount(in->tree);
        if (rmdir(in->tree) < 0 && errno != ENOENT && errno != EBUSY)
                acs_log(LOG_WARNING, "instance %s: cannot remove %s: %m", in->user, in->tree);
        /* a memory cache goes; so does a persistent one made for a start whose login failed
         * (else every failed OPEN of a new name would keep a directory and an agent uid) */
        if (!in->persistent || (in->fresh_cache && !in->ever_mounted)) {
                int r = rm_rf(in->cache_dir);
                if (r < 0)
                        acs_log(LOG_ERR, "instance %s: cannot delete the cache %s: %s", in->user,
                                in->cache_dir, strerror(-r));
                if (in->persistent)
                        forget_owned(m, in->user);
        }
        (void)acs_vault_delete(m->vault, in->user);
        inst_event ev = { .kind = INST_EV_CLOSED, .user = in->user, .mailbox = "", .state = INST_STOPPING };
        emit(in, &ev);
        inst_unlink(in);
        acs_log(LOG_INFO, "instance %s: stopped", in->user);

        /* opens that came while it stopped start a new instance */
        inst_req *reopen = NULL, **tail = &reopen;
        for (inst_req *req = in->reqs, *next; req; req = next) {
                next = req->next;
                if (!req->is_sync && req->reopen) {
                        req_unlink(req);
                        *tail = req;
                        tail = &req->next;
                }
        }
        _cleanup_free_ char *user = TAKE_PTR(in->user);
        inst_free(in);
        for (inst_req *req = reopen, *next; req; req = next) {
                next = req->next;
                req->next = NULL;
                req->reopen = false;
                _cleanup_secret_ char *pw = NULL;
                size_t len = 0;
                int r = m->shutting_down ? -ESHUTDOWN : acs_vault_get(m->pending, req->key, &pw, &len);
                inst *fresh = r == 0 ? inst_find(m, user) : NULL;
                if (fresh) /* the first of them started it: wait for its login like any open */
                        req_append(fresh, req);
                else if (r == 0)
                        r = open_new(m, user, pw, len, req);
                if (r < 0) {
                        inst_open_cb cb = req->open_cb;
                        void *ud = req->ud;
                        req_free(m, req);
                        cb(ud, r, NULL);
                }
        }
        if (m->shutting_down)
                shutdown_step(m);
}

/* Idle timeout, failed start, shutdown: unmount, stop the children; maybe_finish does the rest. */
static void inst_stop(inst *in)
{
        if (in->state == INST_STOPPING)
                return;
        set_state(in, INST_STOPPING);
        in->attempting = false;
        acs_loop_timer_disarm(in->idle);
        acs_loop_timer_disarm(in->login);
        acs_loop_timer_disarm(in->mount_timer);
        fail_opens(in, -ESHUTDOWN);
        fail_syncs(in, -ESHUTDOWN);
        if (in->mounted) {
                int r = inst_umount(in->tree);
                if (r < 0)
                        acs_log(LOG_ERR, "instance %s: cannot unmount %s: %s", in->user, in->tree, strerror(-r));
                in->mounted = false;
        }
        child_stop(&in->syncd);
        if (in->fs.pid) {
                /* unmounted already: acs-fs has nothing left to finish */
                in->fs.stop_stage = 1;
        }
        child_stop(&in->fs);
        maybe_finish(in);
}

/* ---- public API ---- */

/* Creates an instance for user and starts the login attempt; req (an open) waits on it. */
static int open_new(inst_mgr *m, const char *user, const char *password, size_t len, inst_req *req)
{
        if (m->cfg->limits_max_users && m->n_inst >= m->cfg->limits_max_users)
                return -EAGAIN;
        inst *in = NULL;
        int r = inst_create(m, user, &in);
        if (r < 0)
                return r;
        r = acs_vault_put(m->vault, user, password, len);
        if (r == 0)
                r = attempt_start(in);
        if (r < 0) {
                in->attempting = false;
                inst_stop(in);
                return r;
        }
        req_append(in, req);
        return 0;
}

int inst_open(inst_mgr *m, const char *user, const char *password, size_t len, inst_open_cb cb, void *ud,
              inst_req **ret_req, const char **ret_tree)
{
        if (!user_valid(user) || !password || len < 1 || len > ACS_AGENT_PASSWORD_MAX ||
            memchr(password, 0, len) || !cb)
                return -EINVAL;
        if (m->shutting_down)
                return -ESHUTDOWN;
        inst *in = inst_find(m, user);

        /* served and confirmed: compare with the vault, answer now */
        if (in && !in->attempting && in->ever_mounted &&
            (in->state == INST_ONLINE || in->state == INST_OFFLINE || in->state == INST_AUTHFAIL)) {
                _cleanup_secret_ char *pw = NULL;
                size_t pwlen = 0;
                int r = acs_vault_get(m->vault, user, &pw, &pwlen);
                if (r < 0)
                        return r;
                bool eq = secret_equal(password, len, pw, pwlen);
                if (in->state != INST_AUTHFAIL) {
                        if (!eq)
                                return -EACCES;
                        in->sessions++;
                        update_idle(in);
                        *ret_tree = in->tree;
                        return 1;
                }
                if (eq)
                        return -EACCES; /* the password the server refused */
                /* AUTHFAIL and another password: try it with a fresh acs-syncd below */
        }

        inst_req *req = calloc(1, sizeof(*req));
        if (!req)
                return -ENOMEM;
        req->id = ++m->next_req_id;
        req->open_cb = cb;
        req->ud = ud;
        snprintf(req->key, sizeof(req->key), "#%" PRIu64, req->id);
        int r = acs_vault_put(m->pending, req->key, password, len);
        if (r < 0) {
                free(req);
                return r;
        }

        if (!in) {
                r = open_new(m, user, password, len, req);
                if (r < 0) {
                        req_free(m, req);
                        return r;
                }
                *ret_req = req;
                return 0;
        }
        req->reopen = in->state == INST_STOPPING;
        req_append(in, req);
        if (in->state == INST_AUTHFAIL && !in->attempting) {
                r = acs_vault_put(m->vault, user, password, len);
                if (r == 0)
                        r = attempt_start(in);
                if (r < 0) {
                        req_unlink(req);
                        req_free(m, req);
                        in->attempting = false;
                        return r;
                }
        }
        update_idle(in);
        *ret_req = req;
        return 0;
}

void inst_req_cancel(inst_mgr *m, inst_req *req)
{
        if (!req)
                return;
        inst *in = req->in;
        if (in)
                req_unlink(req);
        req_free(m, req);
        if (in)
                update_idle(in);
}

int inst_session_ref(inst_mgr *m, const char *user)
{
        inst *in = inst_find(m, user);
        if (!in || in->state == INST_STOPPING)
                return -ENOENT;
        in->sessions++;
        update_idle(in);
        return 0;
}

int inst_session_unref(inst_mgr *m, const char *user)
{
        inst *in = inst_find(m, user);
        if (!in)
                return -ENOENT;
        if (in->sessions == 0)
                return -EINVAL;
        in->sessions--;
        update_idle(in);
        return 0;
}

static void on_sync_timeout(acs_loop_timer *t, void *userdata)
{
        inst_req *req = userdata;
        sync_done(req->in, req, -ETIMEDOUT);
}

int inst_sync(inst_mgr *m, const char *user, const char *mailbox, inst_progress_cb cb, void *ud,
              inst_req **ret_req)
{
        if (!cb || (mailbox && !mailbox_valid(mailbox)))
                return -EINVAL;
        inst *in = inst_find(m, user);
        if (!in || in->state == INST_STOPPING || in->state == INST_STARTING)
                return -ENOENT;
        if (!in->syncd.bus_name || in->state == INST_AUTHFAIL)
                return -EHOSTUNREACH;
        inst_req *req = calloc(1, sizeof(*req));
        if (!req)
                return -ENOMEM;
        req->id = ++m->next_req_id;
        req->is_sync = true;
        req->sync_cb = cb;
        req->ud = ud;
        req->in = in;
        req->mailbox = strdup(mailbox ? mailbox : "");
        int r = req->mailbox ? acs_loop_timer_add(m->loop, SYNC_TIMEOUT_USEC, 0, on_sync_timeout, req, &req->timer)
                             : -ENOMEM;
        if (r == 0)
                r = bus_send_to(m, &in->syncd, ACS_WIRE_P_SYNC_NOW, mailbox, mailbox ? strlen(mailbox) : 0);
        if (r < 0) {
                req_free(m, req);
                return r == -ENOTCONN ? -EHOSTUNREACH : r;
        }
        req_append(in, req);
        *ret_req = req;
        return 0;
}

int inst_watch(inst_mgr *m, const char *user, inst_event_cb cb, void *ud, uint64_t *ret_id)
{
        inst *in = inst_find(m, user);
        if (!in || in->state == INST_STOPPING)
                return -ENOENT;
        watch *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->id = ++m->next_watch_id;
        w->cb = cb;
        w->ud = ud;
        w->next = in->watches;
        in->watches = w;
        *ret_id = w->id;
        return 0;
}

int inst_unwatch(inst_mgr *m, uint64_t id)
{
        for (inst *in = m->list; in; in = in->next)
                for (watch **pp = &in->watches; *pp; pp = &(*pp)->next) {
                        watch *w = *pp;
                        if (w->id != id || !w->cb)
                                continue;
                        if (in->dispatching)
                                w->cb = NULL; /* swept after the dispatch */
                        else {
                                *pp = w->next;
                                free(w);
                        }
                        return 0;
                }
        return -ENOENT;
}

static void fill_status(const inst *in, inst_status *st)
{
        *st = (inst_status){
                .user = in->user,
                .tree = in->tree,
                .state = in->state,
                .sessions = in->sessions,
                .uid = in->uid,
                .syncd_pid = in->syncd.pid,
                .fs_pid = in->fs.pid,
                .restarts = in->restarts,
                .since = in->since,
                .last_sync = in->last_sync,
                .mounted = in->mounted,
                .persistent = in->persistent,
        };
}

int inst_status_get(inst_mgr *m, const char *user, inst_status *ret)
{
        inst *in = inst_find(m, user);
        if (!in)
                return -ENOENT;
        fill_status(in, ret);
        return 0;
}

int inst_status_foreach(inst_mgr *m, int (*cb)(void *ud, const inst_status *st), void *ud)
{
        for (inst *in = m->list; in; in = in->next) {
                inst_status st;
                fill_status(in, &st);
                int r = cb(ud, &st);
                if (r < 0)
                        return r;
        }
        return 0;
}

size_t inst_count(const inst_mgr *m)
{
        return m->n_inst;
}

static void on_shutdown_timer(acs_loop_timer *t, void *userdata)
{
        inst_mgr *m = userdata;
        void (*done)(void *) = m->shutdown_done;
        m->shutdown_done = NULL;
        if (done)
                done(m->shutdown_ud);
}

static void shutdown_step(inst_mgr *m)
{
        if (m->list)
                return;
        m->bus_io = acs_loop_io_free(m->bus_io);
        m->bus = acs_bus_free(m->bus);
        if (m->bus_daemon > 0) {
                (void)acs_bus_daemon_stop(m->bus_daemon);
                m->bus_daemon = 0;
                _cleanup_free_ char *pf = path_join(m->run_dir, BUS_PID_FILE);
                if (pf)
                        (void)unlink(pf);
        }
        if (!m->shutdown_timer)
                (void)acs_loop_timer_add(m->loop, 0, 0, on_shutdown_timer, m, &m->shutdown_timer);
        else
                (void)acs_loop_timer_arm(m->shutdown_timer, 0, 0);
}

void inst_shutdown_all(inst_mgr *m, void (*done)(void *ud), void *ud)
{
        m->shutting_down = true;
        m->shutdown_done = done;
        m->shutdown_ud = ud;
        for (inst *in = m->list; in; in = in->next)
                inst_stop(in); /* finishes later, from the loop */
        shutdown_step(m);
}

/* ---- setup ---- */

/* What `prog --help` prints (malloc'd; NULL if it cannot run): which options this build takes. */
static char *fs_help(inst_mgr *m, const char *prog)
{
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
                return NULL;
        pid_t pid = fork();
        if (pid == 0) {
                acs_loop_child_reset();
                dup2(p[1], 1);
                int devnull = open("/dev/null", O_WRONLY);
                if (devnull >= 0)
                        dup2(devnull, 2);
                char *argv[] = { (char *)prog, (char *)"--help", NULL };
                execve(prog, argv, m->env);
                _exit(127);
        }
        close(p[1]);
        size_t size = 16384, n = 0;
        char *buf = malloc(size);
        while (pid > 0 && buf && n < size - 1) {
                ssize_t k = read(p[0], buf + n, size - 1 - n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                n += (size_t)k;
        }
        close(p[0]);
        if (pid > 0)
                while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                        ;
        if (buf)
                buf[n] = 0;
        return buf;
}

static int build_env(inst_mgr *m)
{
        static const char *const keep[] = { "ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS" };
        size_t n = 0;
        m->env = calloc(8, sizeof(char *));
        if (!m->env)
                return -ENOMEM;
        if (!(m->env[n++] = strdup("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")))
                return -ENOMEM;
        const char *js = getenv("JOURNAL_STREAM"); /* children log to acsd's journal stream */
        if (js && asprintf(&m->env[n++], "JOURNAL_STREAM=%s", js) < 0)
                return -ENOMEM;
        for (size_t i = 0; m->o.keep_env_sanitizers && i < ACS_ARRAY_SIZE(keep); i++) {
                const char *v = getenv(keep[i]);
                if (v && asprintf(&m->env[n++], "%s=%s", keep[i], v) < 0)
                        return -ENOMEM;
        }
        return 0;
}

/* Memory caches left by an earlier acsd (which stopped without cleaning up) are stale. */
static void clean_memory_dir(inst_mgr *m)
{
        const char *dir = m->cfg->cache_memory_dir;
        DIR *d = opendir(dir);
        if (!d)
                return;
        struct dirent *de;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                struct stat st;
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
                        continue;
                /* only what an agent owned: a misconfigured memory_dir must not lose other data */
                bool agents = use_uid_range(m) ? st.st_uid >= m->o.uid_min && st.st_uid <= m->o.uid_max
                                               : st.st_uid == m->agent_uid;
                if (!agents)
                        continue;
                _cleanup_free_ char *p = path_join(dir, de->d_name);
                if (p && rm_rf(p) == 0)
                        acs_log(LOG_NOTICE, "removed the stale memory cache %s", p);
        }
        closedir(d);
}

/* uids that persistent caches own (uid-range mode): never handed to another user. */
static int scan_persistent(inst_mgr *m)
{
        if (!use_uid_range(m))
                return 0;
        DIR *d = opendir(m->cfg->cache_dir);
        if (!d)
                return errno == ENOENT ? 0 : -errno;
        struct dirent *de;
        int r = 0;
        while (r == 0 && (de = readdir(d))) {
                struct stat st;
                if (de->d_name[0] == '.' || fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
                    !S_ISDIR(st.st_mode) || st.st_uid < m->o.uid_min || st.st_uid > m->o.uid_max)
                        continue;
                if (!uid_taken(m, st.st_uid, de->d_name))
                        r = remember_owned(m, st.st_uid, de->d_name);
                else
                        acs_log(LOG_WARNING, "persistent cache %s/%s shares uid %u with another; it gets a new "
                                "uid when its user opens", m->cfg->cache_dir, de->d_name, (unsigned)st.st_uid);
        }
        closedir(d);
        return r;
}



/*
 * The dbus-daemon of an acsd that died without stopping it (it forks away: no parent-death
 * signal reaches it) still holds the bus socket: stop it, if the pid file names a
 * dbus-daemon running on this directory's config.
 */
static void stop_stale_bus(const char *dir)
{
        _cleanup_free_ char *pf = path_join(dir, BUS_PID_FILE), *conf = path_join(dir, "bus.conf");
        if (!pf || !conf)
                return;
        FILE *f = fopen(pf, "re");
        if (!f)
                return;
        int pid = 0;
        bool ok = fscanf(f, "%d", &pid) == 1 && pid > 1;
        fclose(f);
        (void)unlink(pf);
        if (!ok)
                return;
        char path[64], cmdline[4096];
        snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, cmdline, sizeof(cmdline) - 1) : -1;
        if (n <= 0)
                return;
        cmdline[n] = 0;
        for (ssize_t i = 0; i < n; i++)
                if (!cmdline[i])
                        cmdline[i] = ' ';
        if (!strstr(cmdline, "dbus-daemon") || !strstr(cmdline, conf))
                return;
        acs_log(LOG_NOTICE, "stopping the dbus-daemon (pid %d) left by an earlier acsd", pid);
        (void)acs_bus_daemon_stop(pid);
}

static void write_bus_pid(const char *dir, pid_t pid)
{
        _cleanup_free_ char *pf = path_join(dir, BUS_PID_FILE);
        char text[32];
        snprintf(text, sizeof(text), "%d\n", (int)pid);
        if (!pf || write_file_atomic(pf, text) < 0)
                acs_log(LOG_WARNING, "cannot write %s/" BUS_PID_FILE ": a crash would leave the bus running",
                        dir);
}

static int start_bus(inst_mgr *m)
{
        const acs_config *cfg = m->cfg;
        int r;
        if (cfg->bus_mode == ACS_BUS_ADDRESS) {
                if (!cfg->bus_address)
                        return -EINVAL;
                m->bus_address = strdup(cfg->bus_address);
                if (!m->bus_address)
                        return -ENOMEM;
        } else {
                if (mkdir(m->run_dir, 0755) < 0 && errno != EEXIST)
                        return -errno;
                stop_stale_bus(m->run_dir);
                acs_bus_daemon_opts bo = {
                        .dir = m->run_dir,
                        .max_agents = cfg->bus_max_connections ? cfg->bus_max_connections
                                                               : 2 * cfg->limits_max_users + 16,
                        .owner_uid = getuid(),
                        .daemon_path = m->o.dbus_daemon,
                };
                r = acs_bus_daemon_start(&bo, &m->bus_address, &m->bus_daemon);
                if (r < 0) {
                        acs_log(LOG_ERR, "cannot start the bus daemon in %s: %s", m->run_dir, strerror(-r));
                        return r;
                }
                write_bus_pid(m->run_dir, m->bus_daemon);
        }
        r = acs_bus_connect(m->bus_address, &m->bus);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot connect to the bus %s: %s", m->bus_address, strerror(-r));
                return r;
        }
        r = acs_bus_request_name(m->bus, ACS_BUS_NAME);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot own %s on the bus: %s", ACS_BUS_NAME, strerror(-r));
                return r;
        }
        r = acs_bus_watch_departures(m->bus);
        if (r < 0)
                return r;
        acs_bus_set_handlers(m->bus, on_bus_message, on_bus_gone, m);
        r = acs_loop_io_add(m->loop, acs_bus_fd(m->bus), ACS_LOOP_IN, on_bus_io, m, &m->bus_io);
        if (r < 0)
                return r;
        bus_kick(m);
        return 0;
}

int inst_mgr_new(acs_loop *loop, const acs_config *cfg, const inst_opts *opts, inst_mgr **ret)
{
        if (!loop || !cfg || !opts || !opts->syncd_path || !opts->fs_path ||
            !cfg->imap_url || !cfg->tree_root || !cfg->cache_dir || !cfg->cache_memory_dir)
                return -EINVAL;
        if (geteuid() != 0)
                return -EPERM;
        if (access(opts->syncd_path, X_OK) < 0 || access(opts->fs_path, X_OK) < 0)
                return -ENOENT;
        int r = acs_wire_init();
        if (r < 0)
                return r;
        inst_mgr *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->loop = loop;
        m->cfg = cfg;
        m->o = *opts;
        m->next_child_id = 1;
        if (m->o.uid_min == 0 && m->o.uid_max == 0) {
                m->o.uid_min = cfg->agent_uid_min;
                m->o.uid_max = cfg->agent_uid_max;
        }
        if (opts->run_dir)
                m->run_dir = strdup(opts->run_dir);
        else if (cfg->bus_dir)
                m->run_dir = strdup(cfg->bus_dir);
        else {
                const char *sp = cfg->socket_path ? cfg->socket_path : "/run/acsd/acsd.sock";
                const char *slash = strrchr(sp, '/');
                if (asprintf(&m->run_dir, "%.*s/bus", slash ? (int)(slash - sp) : 1, slash ? sp : ".") < 0)
                        m->run_dir = NULL;
        }
        if (!m->run_dir) {
                r = -ENOMEM;
                goto fail;
        }

        struct passwd *pw = getpwnam(cfg->tree_owner ? cfg->tree_owner : "root");
        struct group *gr = getgrnam(cfg->tree_group ? cfg->tree_group : "root");
        if (!pw || !gr) {
                acs_log(LOG_ERR, "tree owner '%s' or group '%s' does not exist", cfg->tree_owner, cfg->tree_group);
                r = -ENOENT;
                goto fail;
        }
        m->tree_uid = pw->pw_uid;
        m->tree_gid = gr->gr_gid;
        if (!use_uid_range(m)) {
                pw = getpwnam(cfg->agent_user ? cfg->agent_user : "");
                if (!pw) {
                        acs_log(LOG_ERR, "agent user '%s' does not exist", cfg->agent_user);
                        r = -ENOENT;
                        goto fail;
                }
                m->agent_uid = pw->pw_uid;
                m->agent_gid = pw->pw_gid;
                if (m->agent_uid == 0) {
                        acs_log(LOG_ERR, "agent user '%s' is root: agents must not run as root", cfg->agent_user);
                        r = -EPERM;
                        goto fail;
                }
        }
        if ((r = build_env(m)) < 0)
                goto fail;
        char *help = fs_help(m, opts->fs_path);
        m->fs_has_bus = help && strstr(help, "--key-fd");
        free(help);

        if ((r = acs_vault_new(&m->vault)) < 0 || (r = acs_vault_new(&m->pending)) < 0)
                goto fail;
        acs_wire_keys *keys = NULL;
        if ((r = acs_wire_keys_new(&keys)) < 0)
                goto fail;
        acs_wire_keys_public(keys, &m->acsd_pub);
        r = acs_wire_new(ACS_WIRE_ID_ACSD, &keys, &m->wire);
        acs_wire_keys_free(keys);
        if (r < 0)
                goto fail;

        if (mkdir(cfg->tree_root, 0755) < 0 && errno != EEXIST) {
                r = -errno;
                acs_log(LOG_ERR, "cannot create the tree root %s: %m", cfg->tree_root);
                goto fail;
        }
        unsigned stale = 0;
        if (inst_umount_stale(cfg->tree_root, &stale) == 0 && stale)
                acs_log(LOG_NOTICE, "detached %u stale mounts under %s", stale, cfg->tree_root);
        clean_memory_dir(m);
        if (use_uid_range(m))
                userdb_clean(m->o.uid_min, m->o.uid_max);
        if ((r = scan_persistent(m)) < 0)
                goto fail;
        if ((r = acs_loop_timer_add(loop, 0, 0, on_bus_timer, m, &m->bus_timer)) < 0)
                goto fail;
        if ((r = acs_loop_timer_add(loop, FS_WATCHDOG_USEC, FS_WATCHDOG_USEC, on_fs_watchdog, m,
                                    &m->fs_watchdog)) < 0)
                goto fail;
        acs_loop_timer_disarm(m->bus_timer);
        if ((r = start_bus(m)) < 0)
                goto fail;
        *ret = m;
        return 0;
fail:
        inst_mgr_free(m);
        return r;
}

/* Kills and reaps a child at once (inst_mgr_free). */
static void child_kill_sync(child *c)
{
        if (!c->pid)
                return;
        c->watch = acs_loop_child_free(c->watch);
        kill(c->pid, SIGKILL);
        while (waitpid(c->pid, NULL, 0) < 0 && errno == EINTR)
                ;
        child_forget_run(c);
}

inst_mgr *inst_mgr_free(inst_mgr *m)
{
        if (!m)
                return NULL;
        while (m->list) {
                inst *in = m->list;
                m->list = in->next;
                /* acs-fs stuck dying would make the wait below endless: end its connection */
                if (in->fs.pid && in->fs.fuse_conn)
                        (void)inst_fuse_abort(in->fs.fuse_conn);
                if (in->mounted)
                        (void)inst_umount(in->tree);
                child_kill_sync(&in->syncd);
                child_kill_sync(&in->fs);
                if (use_uid_range(m))
                        kill_uid(in->uid);
                (void)rmdir(in->tree);
                if (!in->persistent || (in->fresh_cache && !in->ever_mounted))
                        (void)rm_rf(in->cache_dir);
                inst_free(in);
        }
        m->bus_io = acs_loop_io_free(m->bus_io);
        acs_bus_free(m->bus);
        if (m->bus_daemon > 0) {
                (void)acs_bus_daemon_stop(m->bus_daemon);
                _cleanup_free_ char *pf = m->run_dir ? path_join(m->run_dir, BUS_PID_FILE) : NULL;
                if (pf)
                        (void)unlink(pf);
        }
        free(m->bus_address);
        free(m->run_dir);
        acs_loop_timer_free(m->bus_timer);
        acs_loop_timer_free(m->shutdown_timer);
        acs_loop_timer_free(m->fs_watchdog);
        acs_wire_free(m->wire);
        acs_vault_free(m->vault);
        acs_vault_free(m->pending);
        strv_free(m->env);
        for (size_t i = 0; i < m->n_owned; i++)
                free(m->owned[i].user);
        free(m->owned);
        free(m);
        return NULL;
}
