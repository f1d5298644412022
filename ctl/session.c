/* SPDX-License-Identifier: MIT */
/* acsd's commands: HELLO, OPEN, RESUME, CLOSE, STATUS, SYNC, WATCH, WHO, with session tokens and failed-login limits. */
#include "acsd.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "acs/log.h"
#include "acs/util.h"
#include "list.h"
#include "session-table.h"

/*
 * Each connection has a struct sconn (its protocol state, the session it holds, the
 * command in progress). A session is held by the connections that opened or resumed it
 * (s->holders counts them) and holds one reference on its user's instance (taken by the
 * successful inst_open, released when the session ends: CLOSE or expiry), so the
 * instance's idle timeout starts when the user's last session ends.
 *
 * One command at a time per connection: a command that cannot be answered at once
 * (OPEN waiting for the agent's login, SYNC, a failed login whose answer is delayed,
 * a long STATUS/WHO listing) pauses the connection until it is answered.
 */

#define SWEEP_USEC (1000000ull)
#define RL_MAX_KEYS 65536
#define RL_FORGET_MIN_USEC (15 * 60 * 1000000ull)
#define LIST_BATCH 64

enum pending {
        P_NONE = 0,
        P_OPEN,     /* inst_open running: req */
        P_DELAY,    /* a delayed answer in reply[] waits for the timer */
        P_SYNC,     /* inst_sync running: req */
        P_LIST,     /* STATUS or WHO listing through the producer */
};

struct list_item {
        char *user;
        uid_t uid;
        int64_t since;
        unsigned sessions;
};

struct sconn {
        acsd *d;
        struct acsd_conn *c;
        enum acs_proto_conn_state st;
        acs_session *sess;          /* held by this connection (holders counted) */
        enum pending pending;
        inst_req *req;
        acs_loop_timer *delay;
        char reply[ACS_PROTO_LINE_MAX + 1];
        size_t reply_len;
        char user[ACS_PROTO_USER_MAX + 1]; /* of the OPEN or SYNC in progress */
        uint64_t last_progress;     /* SYNC: monotonic usec of the last DATA line */
        bool watching;
        uint64_t watch_id;
        /* listing */
        enum acs_proto_cmd_type list_cmd;
        struct list_item *items;
        size_t n_items, next_item, count;
        struct sconn *prev, *next;  /* all connections */
};

struct acsd_sessions {
        acs_session_table *table;
        acs_ratelimit *rl;
        acs_loop_timer *sweep;
        struct sconn *conns;
};

static int64_t unix_now(void) { return (int64_t)time(NULL); }

/* ---- replies ---- */

static void send_err(struct sconn *sc, enum acs_proto_err code, const char *text)
{
        acsd_conn_err(sc->c, code, text);
}

static void send_ok_simple(struct sconn *sc, enum acs_proto_cmd_type cmd)
{
        acs_proto_reply r;
        acs_proto_reply_init(&r, ACS_REPLY_OK, cmd, NULL);
        acsd_conn_reply(sc->c, &r);
}

/* The client error code of an inst_* error (see ctl/instance.h). */
static enum acs_proto_err inst_err(int r, const char **text)
{
        switch (r) {
        case -EACCES:
                *text = "user name or password wrong";
                return ACS_ERR_AUTH;
        case -EHOSTUNREACH:
                *text = "the IMAP server cannot be reached or refused the login now; try later";
                return ACS_ERR_UNAVAILABLE;
        case -ETIMEDOUT:
                *text = "the mail agent did not answer in time; try later";
                return ACS_ERR_UNAVAILABLE;
        case -EAGAIN:
                *text = "too many users at once; try later";
                return ACS_ERR_LIMIT;
        case -ENOENT:
                *text = "no such user instance (not opened, or stopped)";
                return ACS_ERR_NOTFOUND;
        case -EINVAL:
                *text = "bad user or mailbox name";
                return ACS_ERR_VALUE;
        case -ESHUTDOWN:
                *text = "acsd is shutting down";
                return ACS_ERR_UNAVAILABLE;
        default:
                *text = "internal error in acsd";
                return ACS_ERR_INTERNAL;
        }
}

static void send_inst_err(struct sconn *sc, int r)
{
        const char *text;
        enum acs_proto_err e = inst_err(r, &text);
        send_err(sc, e, text);
}

/* ---- sessions and holders ---- */

static void hold(struct sconn *sc, acs_session *s)
{
        sc->sess = s;
        s->holders++;
        s->last_used = acs_loop_now();
        sc->st = ACS_CONN_SESSION;
}

static void unhold(struct sconn *sc)
{
        if (!sc->sess)
                return;
        sc->sess->holders--;
        sc->sess->last_used = acs_loop_now();
        sc->sess = NULL;
}

static void stop_watch(struct sconn *sc)
{
        if (sc->watching) {
                inst_unwatch(sc->d->inst, sc->watch_id);
                sc->watching = false;
        }
}

/*
 * Ends session s: connections holding it lose it (a watcher gets EVENT closed and is
 * closed), the token stops working, the instance reference is released.
 */
static void session_end(acsd *d, acs_session *s, const char *why, struct sconn *except)
{
        struct acsd_sessions *ss = d->sessions;
        for (struct sconn *sc = ss->conns; sc; sc = sc->next) {
                if (sc->sess != s || sc == except)
                        continue;
                unhold(sc);
                if (sc->st == ACS_CONN_WATCHING) {
                        stop_watch(sc);
                        acs_proto_reply r;
                        acs_proto_reply_init(&r, ACS_REPLY_EVENT, 0, "closed");
                        acs_proto_reply_add_str(&r, "reason", why);
                        acsd_conn_reply(sc->c, &r);
                        acsd_conn_close_after_flush(sc->c);
                } else {
                        sc->st = ACS_CONN_READY;
                }
        }
        if (except && except->sess == s)
                unhold(except);
        acs_log(LOG_INFO, "session %" PRIu64 " of %s ended: %s", s->id, s->user, why);
        int r = inst_session_unref(d->inst, s->user);
        if (r < 0 && r != -ENOENT)
                acs_log(LOG_ERR, "session %" PRIu64 ": releasing the instance of %s: %s", s->id, s->user,
                        strerrordesc_np(-r));
        acs_session_remove(ss->table, s);
}

static void on_expire(void *ud, acs_session *s)
{
        session_end(ud, s, "expired", NULL);
}

static void on_sweep(acs_loop_timer *t, void *userdata)
{
        acsd *d = userdata;
        acs_session_expire(d->sessions->table, acs_loop_now(), on_expire, d);
}

int acsd_sessions_start(acsd *d)
{
        struct acsd_sessions *ss = calloc(1, sizeof(*ss));
        if (!ss)
                return -ENOMEM;
        uint64_t delay_max = (uint64_t)d->cfg.limits_login_delay_max * 1000000u;
        uint64_t forget = 10 * delay_max > RL_FORGET_MIN_USEC ? 10 * delay_max : RL_FORGET_MIN_USEC;
        int r = acs_session_table_new(d->cfg.limits_max_sessions, d->cfg.session_max_per_user,
                                      (uint64_t)d->cfg.session_expiry * 1000000u, &ss->table);
        if (r >= 0)
                r = acs_ratelimit_new(d->cfg.limits_login_failures, delay_max, forget, RL_MAX_KEYS, &ss->rl);
        if (r >= 0)
                r = acs_loop_timer_add(d->loop, SWEEP_USEC, SWEEP_USEC, on_sweep, d, &ss->sweep);
        if (r < 0) {
                acs_session_table_free(ss->table);
                acs_ratelimit_free(ss->rl);
                free(ss);
                return r;
        }
        d->sessions = ss;
        return 0;
}

static int end_each(void *ud, acs_session *s)
{
        acs_session **first = ud;
        *first = s;
        return -1;
}

void acsd_sessions_stop(acsd *d, bool release_refs)
{
        struct acsd_sessions *ss = d->sessions;
        if (!ss)
                return;
        for (;;) {
                acs_session *s = NULL;
                acs_session_foreach(ss->table, end_each, &s);
                if (!s)
                        break;
                if (release_refs) {
                        session_end(d, s, "acsd stops", NULL);
                } else {
                        for (struct sconn *sc = ss->conns; sc; sc = sc->next)
                                if (sc->sess == s)
                                        unhold(sc);
                        acs_session_remove(ss->table, s);
                }
        }
        ss->sweep = acs_loop_timer_free(ss->sweep);
}

size_t acsd_sessions_count(const acsd *d)
{
        return d->sessions ? acs_session_count(d->sessions->table) : 0;
}

void acsd_sessions_free(acsd *d)
{
        struct acsd_sessions *ss = d->sessions;
        if (!ss)
                return;
        acs_session_table_free(ss->table);
        acs_ratelimit_free(ss->rl);
        acs_loop_timer_free(ss->sweep);
        free(ss);
        d->sessions = NULL;
}

/* ---- connections ---- */

void acsd_session_conn_new(acsd *d, struct acsd_conn *c)
{
        struct acsd_sessions *ss = d->sessions;
        struct sconn *sc = calloc(1, sizeof(*sc));
        if (!sc) {
                acsd_conn_err(c, ACS_ERR_INTERNAL, "out of memory");
                acsd_conn_close_after_flush(c);
                return;
        }
        sc->d = d;
        sc->c = c;
        sc->st = ACS_CONN_NEW;
        ACS_LIST_PREPEND(ss->conns, sc);
        acsd_conn_set_state(c, sc);
}

static void list_free(struct sconn *sc)
{
        for (size_t i = 0; i < sc->n_items; i++)
                free(sc->items[i].user);
        free(sc->items);
        sc->items = NULL;
        sc->n_items = sc->next_item = sc->count = 0;
}

/* Cancels whatever the connection was waiting for. */
static void cancel_pending(struct sconn *sc)
{
        switch (sc->pending) {
        case P_OPEN:
        case P_SYNC:
                if (sc->req)
                        inst_req_cancel(sc->d->inst, sc->req);
                sc->req = NULL;
                break;
        case P_DELAY:
                sc->delay = acs_loop_timer_free(sc->delay);
                sodium_memzero(sc->reply, sizeof(sc->reply));
                break;
        case P_LIST:
                acsd_conn_set_producer(sc->c, NULL);
                list_free(sc);
                break;
        case P_NONE:
                break;
        }
        sc->pending = P_NONE;
}

void acsd_session_conn_closed(acsd *d, struct acsd_conn *c)
{
        struct sconn *sc = acsd_conn_state(c);
        if (!sc)
                return;
        cancel_pending(sc);
        sc->delay = acs_loop_timer_free(sc->delay);
        stop_watch(sc);
        unhold(sc);
        ACS_LIST_REMOVE(d->sessions->conns, sc);
        acsd_conn_set_state(c, NULL);
        sodium_memzero(sc, sizeof(*sc));
        free(sc);
}

/* The command in progress was answered: take the next line. */
static void done(struct sconn *sc)
{
        sc->pending = P_NONE;
        sc->req = NULL;
        acsd_conn_resume(sc->c);
}

/* ---- HELLO ---- */

static void cmd_hello(struct sconn *sc, const acs_proto_cmd *cmd)
{
        unsigned v;
        if (acs_proto_negotiate(cmd->vmin, cmd->vmax, &v) < 0) {
                char text[96];
                snprintf(text, sizeof(text), "acsd speaks versions %d to %d", ACS_PROTO_VERSION_MIN,
                         ACS_PROTO_VERSION);
                send_err(sc, ACS_ERR_VERSION, text);
                return;
        }
        acs_proto_reply r;
        acs_proto_reply_init(&r, ACS_REPLY_OK, ACS_CMD_HELLO, NULL);
        acs_proto_reply_add_u64(&r, "version", v);
        acsd_conn_reply(sc->c, &r);
        sc->st = ACS_CONN_READY;
}

/* ---- OPEN ---- */

static void send_open_ok(struct sconn *sc, const uint8_t token[ACS_PROTO_TOKEN_SIZE], const char *user,
                         const char *tree)
{
        char hex[ACS_PROTO_TOKEN_HEX + 1];
        acs_proto_token_to_hex(token, hex);
        acs_proto_reply r;
        acs_proto_reply_init(&r, ACS_REPLY_OK, ACS_CMD_OPEN, NULL);
        acs_proto_reply_add_str(&r, "token", hex);
        acs_proto_reply_add_str(&r, "user", user);
        acs_proto_reply_add_str(&r, "path", tree);
        acsd_conn_reply(sc->c, &r);
        sodium_memzero(hex, sizeof(hex));
        sodium_memzero(&r, sizeof(r));
}

/* The instance said yes (one instance reference taken for us): make the session. */
static void open_succeeded(struct sconn *sc, const char *user, const char *tree)
{
        acsd *d = sc->d;
        struct acsd_sessions *ss = d->sessions;
        uint8_t token[ACS_PROTO_TOKEN_SIZE];
        acs_session *s;

        acs_ratelimit_success(ss->rl, user);
        if (acsd_conn_dead(sc->c)) {
                inst_session_unref(d->inst, user);
                return;
        }
        int r = acs_session_add(ss->table, user, acsd_conn_uid(sc->c), acs_loop_now(), unix_now(), token, &s);
        if (r < 0) {
                inst_session_unref(d->inst, user);
                if (r == -EAGAIN)
                        send_err(sc, ACS_ERR_LIMIT, "too many sessions; close some or try later");
                else
                        send_err(sc, ACS_ERR_INTERNAL, "out of memory");
                return;
        }
        hold(sc, s);
        acs_log(LOG_INFO, "session %" PRIu64 " opened for %s by uid %u pid %d", s->id, user,
                (unsigned)acsd_conn_uid(sc->c), (int)acsd_conn_pid(sc->c));
        send_open_ok(sc, token, user, tree);
        sodium_memzero(token, sizeof(token));
}

static void on_delay(acs_loop_timer *t, void *userdata)
{
        struct sconn *sc = userdata;
        acsd_conn_send(sc->c, sc->reply, sc->reply_len);
        sodium_memzero(sc->reply, sizeof(sc->reply));
        sc->delay = acs_loop_timer_free(sc->delay);
        done(sc);
}

/* A failed login of sc->user: count it, answer now or after the delay. */
static void open_failed_auth(struct sconn *sc)
{
        acsd *d = sc->d;
        uint64_t delay = acs_ratelimit_fail(d->sessions->rl, sc->user, acsd_conn_uid(sc->c), acs_loop_now());
        acs_log(LOG_NOTICE, "failed login for %s from uid %u pid %d%s", sc->user,
                (unsigned)acsd_conn_uid(sc->c), (int)acsd_conn_pid(sc->c),
                delay ? " (answer delayed)" : "");
        if (delay == 0) {
                send_err(sc, ACS_ERR_AUTH, "user name or password wrong");
                done(sc);
                return;
        }
        acs_proto_format_err(ACS_ERR_AUTH, "user name or password wrong", sc->reply, sizeof(sc->reply),
                             &sc->reply_len);
        int r = acs_loop_timer_add(d->loop, delay, 0, on_delay, sc, &sc->delay);
        if (r < 0) {
                acsd_conn_send(sc->c, sc->reply, sc->reply_len);
                done(sc);
                return;
        }
        sc->pending = P_DELAY;
}

static void on_open_done(void *ud, int r, const char *tree)
{
        struct sconn *sc = ud;
        sc->req = NULL;
        if (r == 0) {
                open_succeeded(sc, sc->user, tree);
                done(sc);
        } else if (r == -EACCES) {
                open_failed_auth(sc);
        } else {
                acs_log(LOG_NOTICE, "login for %s failed: %s", sc->user, strerrordesc_np(-r));
                send_inst_err(sc, r);
                done(sc);
        }
}

static void cmd_open(struct sconn *sc, acs_proto_cmd *cmd)
{
        acsd *d = sc->d;
        struct acsd_sessions *ss = d->sessions;
        uint64_t retry;

        if (acs_ratelimit_check(ss->rl, cmd->user, acsd_conn_uid(sc->c), acs_loop_now(), &retry) < 0) {
                char text[128];
                snprintf(text, sizeof(text), "too many failed logins; retry in %" PRIu64 " s",
                         (retry + 999999) / 1000000);
                acs_log(LOG_NOTICE, "login for %s from uid %u refused: failed logins (retry in %" PRIu64 " s)",
                        cmd->user, (unsigned)acsd_conn_uid(sc->c), (retry + 999999) / 1000000);
                send_err(sc, ACS_ERR_LIMIT, text);
                return;
        }
        if (acs_session_table_can_add(ss->table, cmd->user) < 0) {
                send_err(sc, ACS_ERR_LIMIT, "too many sessions; close some or try later");
                return;
        }
        if (d->stopping) {
                send_err(sc, ACS_ERR_UNAVAILABLE, "acsd is shutting down");
                return;
        }
        memcpy(sc->user, cmd->user, cmd->user_len + 1);
        inst_req *req = NULL;
        const char *tree = NULL;
        int r = inst_open(d->inst, cmd->user, cmd->password, cmd->password_len, on_open_done, sc, &req, &tree);
        if (r == 1) {
                open_succeeded(sc, sc->user, tree);
        } else if (r == 0) {
                sc->pending = P_OPEN;
                sc->req = req;
                acsd_conn_pause(sc->c);
        } else if (r == -EACCES) {
                acsd_conn_pause(sc->c);
                open_failed_auth(sc);
        } else {
                send_inst_err(sc, r);
        }
}

/* ---- RESUME, CLOSE ---- */

static void cmd_resume(struct sconn *sc, const acs_proto_cmd *cmd)
{
        acsd *d = sc->d;
        acs_session *s;
        uint64_t now = acs_loop_now();
        if (acs_session_find(d->sessions->table, cmd->token, now, &s) < 0 ||
            (s->uid != acsd_conn_uid(sc->c) && acsd_conn_uid(sc->c) != 0)) {
                /* the same answer for a token of another uid: it says nothing about it */
                send_err(sc, ACS_ERR_TOKEN, "unknown or expired session token");
                return;
        }
        inst_status st;
        if (inst_status_get(d->inst, s->user, &st) < 0) {
                /* the instance is gone (cannot happen while a session holds it, unless it
                 * failed for good): the session is of no use */
                session_end(d, s, "instance gone", NULL);
                send_err(sc, ACS_ERR_TOKEN, "session ended: its instance stopped");
                return;
        }
        hold(sc, s);
        acs_proto_reply r;
        acs_proto_reply_init(&r, ACS_REPLY_OK, ACS_CMD_RESUME, NULL);
        acs_proto_reply_add_str(&r, "user", s->user);
        acs_proto_reply_add_str(&r, "path", st.tree);
        acsd_conn_reply(sc->c, &r);
}

static void cmd_close(struct sconn *sc)
{
        acs_session *s = sc->sess;
        if (!s) {
                /* the session ended meanwhile (another connection closed it, or it expired) */
                sc->st = ACS_CONN_READY;
                send_err(sc, ACS_ERR_STATE, "no session on this connection (it ended)");
                return;
        }
        session_end(sc->d, s, "closed by the client", sc);
        sc->st = ACS_CONN_READY;
        send_ok_simple(sc, ACS_CMD_CLOSE);
}

/* ---- who may see a user ---- */

struct uid_user {
        uid_t uid;
        const char *user;
        bool found;
};

static int find_uid_user(void *ud, acs_session *s)
{
        struct uid_user *u = ud;
        if (s->uid == u->uid && strcmp(s->user, u->user) == 0) {
                u->found = true;
                return -1;
        }
        return 0;
}

/* Admins see everyone; others the users of sessions their uid opened. */
static bool may_see(struct sconn *sc, const char *user)
{
        if (acsd_conn_is_admin(sc->c))
                return true;
        if (sc->sess && strcmp(sc->sess->user, user) == 0)
                return true;
        struct uid_user u = { .uid = acsd_conn_uid(sc->c), .user = user };
        acs_session_foreach(sc->d->sessions->table, find_uid_user, &u);
        return u.found;
}

/* ---- STATUS and WHO: listings through the producer ---- */

static int add_item(struct sconn *sc, size_t *cap, const char *user, uid_t uid, int64_t since)
{
        if (ACS_GROW(sc->items, *cap, sc->n_items, 16) < 0)
                return -ENOMEM;
        char *u = strdup(user);
        if (!u)
                return -ENOMEM;
        sc->items[sc->n_items++] = (struct list_item){ .user = u, .uid = uid, .since = since, .sessions = 1 };
        return 0;
}

struct collect {
        struct sconn *sc;
        size_t cap;
        bool all;
        uid_t uid;
        int r;
};

static int collect_inst(void *ud, const inst_status *st)
{
        struct collect *co = ud;
        co->r = add_item(co->sc, &co->cap, st->user, 0, st->since);
        return co->r;
}

static int collect_session(void *ud, acs_session *s)
{
        struct collect *co = ud;
        if (!co->all && s->uid != co->uid)
                return 0;
        co->r = add_item(co->sc, &co->cap, s->user, s->uid, s->created);
        return co->r;
}

static int item_cmp(const void *a, const void *b)
{
        const struct list_item *x = a, *y = b;
        int c = strcmp(x->user, y->user);
        if (c)
                return c;
        return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* Sorts and merges equal (user[, uid]) items, counting sessions and keeping the earliest since. */
static void list_merge(struct sconn *sc, bool by_uid)
{
        if (sc->n_items == 0)
                return;
        qsort(sc->items, sc->n_items, sizeof(sc->items[0]), item_cmp);
        size_t o = 0;
        for (size_t i = 1; i < sc->n_items; i++) {
                struct list_item *a = &sc->items[o], *b = &sc->items[i];
                if (strcmp(a->user, b->user) == 0 && (!by_uid || a->uid == b->uid)) {
                        a->sessions += b->sessions;
                        if (b->since < a->since)
                                a->since = b->since;
                        free(b->user);
                        continue;
                }
                sc->items[++o] = *b;
        }
        sc->n_items = o + 1;
}

static void status_line(struct sconn *sc, const char *user)
{
        acsd *d = sc->d;
        inst_status st;
        acs_proto_reply r;
        acs_proto_reply_init(&r, ACS_REPLY_DATA, ACS_CMD_STATUS, NULL);
        acs_proto_reply_add_str(&r, "user", user);
        bool admin = acsd_conn_is_admin(sc->c);
        if (inst_status_get(d->inst, user, &st) == 0) {
                acs_proto_reply_add_str(&r, "state", inst_state_name(st.state));
                acs_proto_reply_add_u64(&r, "sessions", acs_session_count_user(d->sessions->table, user));
                acs_proto_reply_add_u64(&r, "last_sync", st.last_sync > 0 ? (uint64_t)st.last_sync : 0);
                acs_proto_reply_add_str(&r, "path", st.tree);
                acs_proto_reply_add_str(&r, "mounted", st.mounted ? "yes" : "no");
                acs_proto_reply_add_str(&r, "cache", st.persistent ? "persistent" : "memory");
                acs_proto_reply_add_u64(&r, "since", st.since > 0 ? (uint64_t)st.since : 0);
                acs_proto_reply_add_u64(&r, "restarts", st.restarts);
                acs_proto_reply_add_u64(&r, "instance_refs", st.sessions);
                if (admin) {
                        acs_proto_reply_add_u64(&r, "uid", st.uid);
                        acs_proto_reply_add_u64(&r, "syncd_pid", (uint64_t)(st.syncd_pid > 0 ? st.syncd_pid : 0));
                        acs_proto_reply_add_u64(&r, "fs_pid", (uint64_t)(st.fs_pid > 0 ? st.fs_pid : 0));
                }
        } else {
                acs_proto_reply_add_str(&r, "state", "stopped");
                acs_proto_reply_add_u64(&r, "sessions", acs_session_count_user(d->sessions->table, user));
                acs_proto_reply_add_u64(&r, "last_sync", 0);
        }
        acsd_conn_reply(sc->c, &r);
}

static void who_line(struct sconn *sc, const struct list_item *it)
{
        acs_proto_reply r;
        acs_proto_reply_init(&r, ACS_REPLY_DATA, ACS_CMD_WHO, NULL);
        acs_proto_reply_add_str(&r, "user", it->user);
        acs_proto_reply_add_u64(&r, "uid", it->uid);
        acs_proto_reply_add_u64(&r, "since", it->since > 0 ? (uint64_t)it->since : 0);
        acs_proto_reply_add_u64(&r, "sessions", it->sessions);
        acsd_conn_reply(sc->c, &r);
}

static int list_producer(acsd *d, struct acsd_conn *c)
{
        struct sconn *sc = acsd_conn_state(c);
        if (!sc)
                return 1;
        for (int i = 0; i < LIST_BATCH && sc->next_item < sc->n_items; i++) {
                const struct list_item *it = &sc->items[sc->next_item++];
                if (sc->list_cmd == ACS_CMD_STATUS)
                        status_line(sc, it->user);
                else
                        who_line(sc, it);
                sc->count++;
                if (acsd_conn_dead(c))
                        return 1;
        }
        if (sc->next_item < sc->n_items)
                return 0;
        acs_proto_reply r;
        acs_proto_reply_init(&r, ACS_REPLY_OK, sc->list_cmd, NULL);
        acs_proto_reply_add_u64(&r, "count", sc->count);
        acsd_conn_reply(c, &r);
        list_free(sc);
        done(sc);
        return 1;
}

static void start_list(struct sconn *sc, enum acs_proto_cmd_type cmd)
{
        sc->list_cmd = cmd;
        sc->next_item = sc->count = 0;
        sc->pending = P_LIST;
        acsd_conn_pause(sc->c);
        acsd_conn_set_producer(sc->c, list_producer);
}

static void cmd_status(struct sconn *sc, const acs_proto_cmd *cmd)
{
        acsd *d = sc->d;
        if (cmd->has_user) {
                inst_status st;
                bool known = inst_status_get(d->inst, cmd->user, &st) == 0 ||
                             acs_session_count_user(d->sessions->table, cmd->user) > 0;
                if (!may_see(sc, cmd->user)) {
                        send_err(sc, ACS_ERR_DENIED, "you may see only users you hold a session of");
                        return;
                }
                if (!known) {
                        send_err(sc, ACS_ERR_NOTFOUND, "no such user instance or session");
                        return;
                }
                status_line(sc, cmd->user);
                acs_proto_reply r;
                acs_proto_reply_init(&r, ACS_REPLY_OK, ACS_CMD_STATUS, NULL);
                acs_proto_reply_add_u64(&r, "count", 1);
                acsd_conn_reply(sc->c, &r);
                return;
        }
        struct collect co = { .sc = sc, .all = acsd_conn_is_admin(sc->c), .uid = acsd_conn_uid(sc->c) };
        if (co.all)
                inst_status_foreach(d->inst, collect_inst, &co);
        if (co.r >= 0)
                acs_session_foreach(d->sessions->table, collect_session, &co);
        if (co.r >= 0 && !co.all && sc->sess)
                co.r = add_item(sc, &co.cap, sc->sess->user, sc->sess->uid, sc->sess->created);
        if (co.r < 0) {
                list_free(sc);
                send_err(sc, ACS_ERR_INTERNAL, "out of memory");
                return;
        }
        list_merge(sc, false);
        start_list(sc, ACS_CMD_STATUS);
}

static void cmd_who(struct sconn *sc)
{
        if (!acsd_conn_is_admin(sc->c)) {
                send_err(sc, ACS_ERR_DENIED, "WHO is for admins (root or session.admin_group)");
                return;
        }
        struct collect co = { .sc = sc, .all = true };
        acs_session_foreach(sc->d->sessions->table, collect_session, &co);
        if (co.r < 0) {
                list_free(sc);
                send_err(sc, ACS_ERR_INTERNAL, "out of memory");
                return;
        }
        list_merge(sc, true);
        start_list(sc, ACS_CMD_WHO);
}

/* ---- SYNC ---- */

static void on_sync_progress(void *ud, const char *mailbox, uint64_t done_n, uint64_t total, bool finished,
                             int r)
{
        struct sconn *sc = ud;
        uint64_t now = acs_loop_now();
        /* progress lines for a slow reader are thinned out rather than queued without end */
        if (!finished || r == 0) {
                if (finished || acsd_conn_queued(sc->c) < 16 * 1024 || now - sc->last_progress >= 1000000) {
                        acs_proto_reply rep;
                        acs_proto_reply_init(&rep, ACS_REPLY_DATA, ACS_CMD_SYNC, NULL);
                        acs_proto_reply_add_str(&rep, "mailbox", mailbox ? mailbox : "");
                        acs_proto_reply_add_u64(&rep, "done", done_n);
                        acs_proto_reply_add_u64(&rep, "total", total);
                        acsd_conn_reply(sc->c, &rep);
                        sc->last_progress = now;
                }
        }
        if (!finished)
                return;
        sc->req = NULL;
        if (r == 0) {
                send_ok_simple(sc, ACS_CMD_SYNC);
        } else {
                const char *text;
                enum acs_proto_err e = inst_err(r, &text);
                if (r == -ENOENT)
                        text = "no such mailbox or user instance";
                send_err(sc, e, text);
        }
        done(sc);
}

static void cmd_sync(struct sconn *sc, const acs_proto_cmd *cmd)
{
        acsd *d = sc->d;
        if (!may_see(sc, cmd->user)) {
                send_err(sc, ACS_ERR_DENIED, "you may sync only users you hold a session of");
                return;
        }
        inst_req *req = NULL;
        int r = inst_sync(d->inst, cmd->user, cmd->has_mailbox ? cmd->mailbox : NULL, on_sync_progress, sc, &req);
        if (r < 0) {
                send_inst_err(sc, r);
                return;
        }
        memcpy(sc->user, cmd->user, cmd->user_len + 1);
        sc->pending = P_SYNC;
        sc->req = req;
        sc->last_progress = 0;
        acsd_conn_pause(sc->c);
}

/* ---- WATCH ---- */

static void on_event(void *ud, const inst_event *ev)
{
        struct sconn *sc = ud;
        acs_proto_reply r;
        switch (ev->kind) {
        case INST_EV_CHANGE:
                acs_proto_reply_init(&r, ACS_REPLY_EVENT, 0, "change");
                acs_proto_reply_add_str(&r, "mailbox", ev->mailbox ? ev->mailbox : "");
                break;
        case INST_EV_PROGRESS:
                acs_proto_reply_init(&r, ACS_REPLY_EVENT, 0, "sync");
                acs_proto_reply_add_str(&r, "mailbox", ev->mailbox ? ev->mailbox : "");
                acs_proto_reply_add_u64(&r, "done", ev->done);
                acs_proto_reply_add_u64(&r, "total", ev->total);
                break;
        case INST_EV_STATE:
                acs_proto_reply_init(&r, ACS_REPLY_EVENT, 0, "state");
                acs_proto_reply_add_str(&r, "state", inst_state_name(ev->state));
                break;
        case INST_EV_CLOSED:
                sc->watching = false; /* the watch is gone by itself */
                acs_proto_reply_init(&r, ACS_REPLY_EVENT, 0, "closed");
                acs_proto_reply_add_str(&r, "reason", "instance stopped");
                acsd_conn_reply(sc->c, &r);
                acsd_conn_close_after_flush(sc->c);
                return;
        default:
                return;
        }
        acsd_conn_reply(sc->c, &r);
}

static void cmd_watch(struct sconn *sc)
{
        if (!sc->sess) {
                sc->st = ACS_CONN_READY;
                send_err(sc, ACS_ERR_STATE, "no session on this connection (it ended)");
                return;
        }
        int r = inst_watch(sc->d->inst, sc->sess->user, on_event, sc, &sc->watch_id);
        if (r < 0) {
                send_inst_err(sc, r);
                return;
        }
        sc->watching = true;
        sc->st = ACS_CONN_WATCHING;
        acsd_conn_set_keepalive(sc->c, true);
        send_ok_simple(sc, ACS_CMD_WATCH);
}

/* ---- dispatch ---- */

/* A watching connection sent a line: it is refused and the connection closed. */
static void refuse_while_watching(struct sconn *sc)
{
        send_err(sc, ACS_ERR_STATE, "watching: the connection only carries events now");
        acsd_conn_close_after_flush(sc->c);
}

void acsd_session_toolong(acsd *d, struct acsd_conn *c)
{
        struct sconn *sc = acsd_conn_state(c);
        if (sc && sc->st == ACS_CONN_WATCHING) {
                refuse_while_watching(sc);
                return;
        }
        acsd_conn_err(c, ACS_ERR_TOOLONG, "line longer than 4096 bytes (dropped)");
}

void acsd_session_line(acsd *d, struct acsd_conn *c, const char *line, size_t len)
{
        struct sconn *sc = acsd_conn_state(c);
        _cleanup_proto_cmd_ acs_proto_cmd cmd;
        enum acs_proto_err e;
        const char *why = NULL;

        if (!sc)
                return;
        if (sc->st == ACS_CONN_WATCHING) {
                refuse_while_watching(sc);
                return;
        }
        if (acs_proto_parse_cmd(line, len, &cmd, &e, &why) < 0) {
                send_err(sc, e, why);
                return;
        }
        /* a session that ended elsewhere leaves this connection without one */
        if (sc->st == ACS_CONN_SESSION && !sc->sess)
                sc->st = ACS_CONN_READY;
        e = acs_proto_check_state(sc->st, cmd.type, &why);
        if (e != ACS_ERR_NONE) {
                send_err(sc, e, why);
                return;
        }
        if (sc->sess)
                sc->sess->last_used = acs_loop_now();
        switch (cmd.type) {
        case ACS_CMD_HELLO:
                cmd_hello(sc, &cmd);
                break;
        case ACS_CMD_OPEN:
                cmd_open(sc, &cmd);
                break;
        case ACS_CMD_RESUME:
                cmd_resume(sc, &cmd);
                break;
        case ACS_CMD_CLOSE:
                cmd_close(sc);
                break;
        case ACS_CMD_STATUS:
                cmd_status(sc, &cmd);
                break;
        case ACS_CMD_SYNC:
                cmd_sync(sc, &cmd);
                break;
        case ACS_CMD_WATCH:
                cmd_watch(sc);
                break;
        case ACS_CMD_WHO:
                cmd_who(sc);
                break;
        default:
                send_err(sc, ACS_ERR_UNKNOWN, "no such command");
                break;
        }
}
