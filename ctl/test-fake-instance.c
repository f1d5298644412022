/* SPDX-License-Identifier: MIT */
/* A test double of ctl/instance.h for testing acsd's socket and session code alone (test-server); never part of acsd. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "instance.h"

/*
 * Behaviour, chosen by the password (the real instance.c asks the IMAP server):
 *   "right..."  accepted after 20 ms (async), then at once while the instance runs
 *   "down"      -EHOSTUNREACH after 20 ms
 *   "slow"      accepted after 1.5 s
 *   anything else: -EACCES after 20 ms (or at once for a running instance)
 * A user's instance exists from its first successful open until shutdown (no idle stop
 * here: the real one is tested end to end). SYNC reports 5 progress steps 10 ms apart;
 * watchers get one EVENT change per step. The environment variable ACSD_FAKE_LOG names a
 * file where every session reference change is appended ("ref USER N"), so the test
 * can check that sessions hold and release instance references.
 */

#define MAX_USERS 64
#define MAX_REQS 4096
#define MAX_WATCH 4096

struct fuser {
        bool used;
        char user[256];
        char tree[512];
        unsigned refs;
        int64_t since;
};

struct inst_req {
        bool used;
        inst_mgr *m;
        int kind; /* 1 open, 2 sync */
        char user[256];
        char password[64];
        int step;
        acs_loop_timer *t;
        inst_open_cb ocb;
        inst_progress_cb pcb;
        void *ud;
};

struct fwatch {
        bool used;
        uint64_t id;
        char user[256];
        inst_event_cb cb;
        void *ud;
};

struct inst_mgr {
        acs_loop *loop;
        const acs_config *cfg;
        struct fuser users[MAX_USERS];
        struct inst_req reqs[MAX_REQS];
        struct fwatch watches[MAX_WATCH];
        uint64_t next_watch;
        bool shut;
        acs_loop_timer *shut_timer;
        void (*shut_done)(void *);
        void *shut_ud;
};

static void log_ref(struct fuser *u)
{
        const char *p = getenv("ACSD_FAKE_LOG");
        if (!p)
                return;
        FILE *f = fopen(p, "a");
        if (f) {
                fprintf(f, "ref %s %u\n", u->user, u->refs);
                fclose(f);
        }
}

static struct fuser *find_user(inst_mgr *m, const char *user)
{
        for (int i = 0; i < MAX_USERS; i++)
                if (m->users[i].used && strcmp(m->users[i].user, user) == 0)
                        return &m->users[i];
        return NULL;
}

static struct fuser *add_user(inst_mgr *m, const char *user)
{
        for (int i = 0; i < MAX_USERS; i++)
                if (!m->users[i].used) {
                        struct fuser *u = &m->users[i];
                        memset(u, 0, sizeof(*u));
                        u->used = true;
                        snprintf(u->user, sizeof(u->user), "%s", user);
                        snprintf(u->tree, sizeof(u->tree), "%s/%s", m->cfg->tree_root, user);
                        u->since = (int64_t)time(NULL);
                        return u;
                }
        return NULL;
}

int inst_mgr_new(acs_loop *loop, const acs_config *cfg, const inst_opts *opts, inst_mgr **ret)
{
        inst_mgr *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->loop = loop;
        m->cfg = cfg;
        *ret = m;
        return 0;
}

static void req_free(struct inst_req *q)
{
        q->t = acs_loop_timer_free(q->t);
        sodium_memzero(q, sizeof(*q));
}

inst_mgr *inst_mgr_free(inst_mgr *m)
{
        if (!m)
                return NULL;
        for (int i = 0; i < MAX_REQS; i++)
                if (m->reqs[i].used)
                        req_free(&m->reqs[i]);
        acs_loop_timer_free(m->shut_timer);
        free(m);
        return NULL;
}

static void on_req_timer(acs_loop_timer *t, void *userdata)
{
        struct inst_req *q = userdata;
        inst_mgr *m = q->m;
        if (q->kind == 1) {
                inst_open_cb cb = q->ocb;
                void *ud = q->ud;
                int r;
                struct fuser *u = find_user(m, q->user);
                if (strncmp(q->password, "right", 5) == 0 || strcmp(q->password, "slow") == 0) {
                        if (!u)
                                u = add_user(m, q->user);
                        if (!u) {
                                r = -EAGAIN;
                        } else {
                                u->refs++;
                                log_ref(u);
                                r = 0;
                        }
                } else if (strcmp(q->password, "down") == 0) {
                        r = -EHOSTUNREACH;
                } else {
                        r = -EACCES;
                }
                char tree[512];
                snprintf(tree, sizeof(tree), "%s", r == 0 ? u->tree : "");
                req_free(q);
                cb(ud, r, r == 0 ? tree : NULL);
                return;
        }
        /* sync */
        q->step++;
        struct fuser *u = find_user(m, q->user);
        for (int i = 0; i < MAX_WATCH; i++) {
                struct fwatch *w = &m->watches[i];
                if (w->used && u && strcmp(w->user, q->user) == 0) {
                        inst_event ev = { .kind = INST_EV_CHANGE, .user = q->user, .mailbox = "INBOX" };
                        w->cb(w->ud, &ev);
                }
        }
        inst_progress_cb cb = q->pcb;
        void *ud = q->ud;
        if (q->step >= 5) {
                req_free(q);
                cb(ud, "INBOX", 5, 5, true, 0);
        } else {
                acs_loop_timer_arm(t, 10000, 0);
                cb(ud, "INBOX", (uint64_t)q->step, 5, false, 0);
        }
}

static struct inst_req *req_new(inst_mgr *m, int kind, const char *user, uint64_t after)
{
        for (int i = 0; i < MAX_REQS; i++)
                if (!m->reqs[i].used) {
                        struct inst_req *q = &m->reqs[i];
                        memset(q, 0, sizeof(*q));
                        q->used = true;
                        q->m = m;
                        q->kind = kind;
                        snprintf(q->user, sizeof(q->user), "%s", user);
                        if (acs_loop_timer_add(m->loop, after, 0, on_req_timer, q, &q->t) < 0) {
                                q->used = false;
                                return NULL;
                        }
                        return q;
                }
        return NULL;
}

int inst_open(inst_mgr *m, const char *user, const char *password, size_t len, inst_open_cb cb, void *ud,
              inst_req **ret_req, const char **ret_tree)
{
        if (m->shut)
                return -ESHUTDOWN;
        if (len == 0 || len > 4096 || !user[0])
                return -EINVAL;
        struct fuser *u = find_user(m, user);
        if (u && strcmp(password, "slow") != 0) {
                if (strncmp(password, "right", 5) != 0)
                        return -EACCES;
                u->refs++;
                log_ref(u);
                *ret_tree = u->tree;
                return 1;
        }
        struct inst_req *q = req_new(m, 1, user, strcmp(password, "slow") == 0 ? 1500000 : 20000);
        if (!q)
                return -ENOMEM;
        snprintf(q->password, sizeof(q->password), "%.*s", (int)(len < 63 ? len : 63), password);
        q->ocb = cb;
        q->ud = ud;
        *ret_req = q;
        return 0;
}

void inst_req_cancel(inst_mgr *m, inst_req *req)
{
        if (req && req->used)
                req_free(req);
}

int inst_session_ref(inst_mgr *m, const char *user)
{
        struct fuser *u = find_user(m, user);
        if (!u)
                return -ENOENT;
        u->refs++;
        log_ref(u);
        return 0;
}

int inst_session_unref(inst_mgr *m, const char *user)
{
        struct fuser *u = find_user(m, user);
        if (!u)
                return -ENOENT;
        if (u->refs == 0)
                return -EINVAL;
        u->refs--;
        log_ref(u);
        return 0;
}

int inst_sync(inst_mgr *m, const char *user, const char *mailbox, inst_progress_cb cb, void *ud,
              inst_req **ret_req)
{
        if (!find_user(m, user))
                return -ENOENT;
        if (mailbox && strcmp(mailbox, "INBOX") != 0)
                return -ENOENT;
        struct inst_req *q = req_new(m, 2, user, 10000);
        if (!q)
                return -ENOMEM;
        q->pcb = cb;
        q->ud = ud;
        *ret_req = q;
        return 0;
}

int inst_watch(inst_mgr *m, const char *user, inst_event_cb cb, void *ud, uint64_t *ret_id)
{
        if (!find_user(m, user))
                return -ENOENT;
        for (int i = 0; i < MAX_WATCH; i++)
                if (!m->watches[i].used) {
                        struct fwatch *w = &m->watches[i];
                        w->used = true;
                        w->id = ++m->next_watch;
                        snprintf(w->user, sizeof(w->user), "%s", user);
                        w->cb = cb;
                        w->ud = ud;
                        *ret_id = w->id;
                        return 0;
                }
        return -ENOMEM;
}

int inst_unwatch(inst_mgr *m, uint64_t id)
{
        for (int i = 0; i < MAX_WATCH; i++)
                if (m->watches[i].used && m->watches[i].id == id) {
                        m->watches[i].used = false;
                        return 0;
                }
        return -ENOENT;
}

const char *inst_state_name(enum inst_state s)
{
        static const char *const names[] = { "starting", "online", "offline", "authfail", "stopping" };
        return (unsigned)s < 5 ? names[s] : "unknown";
}

static void fill_status(const struct fuser *u, inst_status *st)
{
        *st = (inst_status){ .user = u->user, .tree = u->tree, .state = INST_ONLINE, .sessions = u->refs,
                             .uid = 4242, .syncd_pid = 100, .fs_pid = 101, .since = u->since,
                             .last_sync = u->since, .mounted = true };
}

int inst_status_get(inst_mgr *m, const char *user, inst_status *ret)
{
        struct fuser *u = find_user(m, user);
        if (!u)
                return -ENOENT;
        fill_status(u, ret);
        return 0;
}

int inst_status_foreach(inst_mgr *m, int (*cb)(void *ud, const inst_status *st), void *ud)
{
        for (int i = 0; i < MAX_USERS; i++)
                if (m->users[i].used) {
                        inst_status st;
                        fill_status(&m->users[i], &st);
                        int r = cb(ud, &st);
                        if (r < 0)
                                return r;
                }
        return 0;
}

size_t inst_count(const inst_mgr *m)
{
        size_t n = 0;
        for (int i = 0; i < MAX_USERS; i++)
                n += m->users[i].used;
        return n;
}

static void on_shut(acs_loop_timer *t, void *userdata)
{
        inst_mgr *m = userdata;
        m->shut_done(m->shut_ud);
}

void inst_shutdown_all(inst_mgr *m, void (*done)(void *ud), void *ud)
{
        m->shut = true;
        for (int i = 0; i < MAX_REQS; i++) {
                struct inst_req *q = &m->reqs[i];
                if (!q->used)
                        continue;
                int kind = q->kind;
                inst_open_cb ocb = q->ocb;
                inst_progress_cb pcb = q->pcb;
                void *qud = q->ud;
                req_free(q);
                if (kind == 1)
                        ocb(qud, -ESHUTDOWN, NULL);
                else
                        pcb(qud, "", 0, 0, true, -ESHUTDOWN);
        }
        for (int i = 0; i < MAX_WATCH; i++) {
                struct fwatch *w = &m->watches[i];
                if (!w->used)
                        continue;
                w->used = false;
                inst_event ev = { .kind = INST_EV_CLOSED, .user = w->user };
                w->cb(w->ud, &ev);
        }
        memset(m->users, 0, sizeof(m->users));
        m->shut_done = done;
        m->shut_ud = ud;
        acs_loop_timer_add(m->loop, 10000, 0, on_shut, m, &m->shut_timer);
}
