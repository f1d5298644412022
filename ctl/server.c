/* SPDX-License-Identifier: MIT */
/* acsd's client socket: accepting with peer credentials and caps, bounded non-blocking line I/O per connection. */
#include "acsd.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "acs/log.h"
#include "acs/util.h"
#include "list.h"

/*
 * Memory per connection is bounded: the struct with its 4096-byte line reader, plus an
 * output queue of at most OUT_MAX bytes (allocated only while something is queued).
 * A client that lets its queue fill is disconnected. Nothing blocks: the socket and
 * every connection are non-blocking; a connection whose command waits (OPEN until the
 * agent's login, SYNC, a delayed failed login) stops being read until it is answered,
 * so a client can have only one command in progress.
 *
 * Connections are freed only from the server's reap timer, never inside a call that
 * may be running on their behalf: acsd_conn_send() on a connection that failed just
 * drops the line, and session.c hears of the close (acsd_session_conn_closed) from the
 * loop, with the connection still valid during that call.
 */

#define OUT_MAX (64 * 1024)       /* queued output per connection */
#define OUT_LOW (16 * 1024)       /* producers refill below this */
#define OUT_KEEP (8 * 1024)       /* an empty queue keeps at most this much allocated */
#define ACCEPT_BATCH 64
#define IDLE_SWEEP_USEC (5 * 1000000ull)
#define ACCEPT_PAUSE_USEC (200 * 1000ull)
#define OUT_STALL_USEC (60 * 1000000ull) /* queued output not moving this long: drop the client */
#define UID_BUCKETS 256

struct uid_count {
        uid_t uid;
        unsigned n;
        struct uid_count *next;
};

struct acsd_conn {
        acsd *d;
        struct acsd_server *srv;
        int fd;
        acs_loop_io *io;
        uint64_t id;
        struct ucred cred;
        bool admin;
        bool paused;       /* session.c is busy with a command: read nothing */
        bool eof;          /* the peer closed its side */
        bool flush_close;  /* close once the queue is empty */
        bool dead;         /* closed; freed by the reap timer */
        bool on_ready;     /* in srv->ready (lines to process / producer to run) */
        bool keepalive;    /* never closed as idle (WATCH) */
        uint64_t last_active;
        uint64_t out_since;  /* when the queue last went from empty to not empty, or moved */
        acsd_conn_producer producer;
        char *out;
        size_t out_len, out_off, out_cap;
        void *state;       /* session.c's */
        struct acsd_conn *prev, *next;     /* srv->conns */
        struct acsd_conn *ready_next;      /* srv->ready */
        struct acsd_conn *dead_next;       /* srv->dead */
        acs_proto_reader rd;
};

struct acsd_server {
        acsd *d;
        int listen_fd;
        acs_loop_io *listen_io;
        acs_loop_timer *accept_pause;
        acs_loop_timer *sweep;
        acs_loop_timer *kick;  /* 0-delay: process srv->ready and reap srv->dead */
        char *path;
        unsigned n_conns;
        uint64_t next_id;
        struct acsd_conn *conns;
        struct acsd_conn *ready;
        struct acsd_conn *dead;
        struct uid_count *uids[UID_BUCKETS];
};

static void conn_process(struct acsd_conn *c);
static void conn_kill(struct acsd_conn *c, const char *why);

/* ---- per-uid counts ---- */

static struct uid_count **uid_slot(struct acsd_server *s, uid_t uid)
{
        struct uid_count **p = &s->uids[(uid * 2654435761u) % UID_BUCKETS];
        while (*p && (*p)->uid != uid)
                p = &(*p)->next;
        return p;
}

static unsigned uid_conns(struct acsd_server *s, uid_t uid)
{
        struct uid_count **p = uid_slot(s, uid);
        return *p ? (*p)->n : 0;
}

static int uid_inc(struct acsd_server *s, uid_t uid)
{
        struct uid_count **p = uid_slot(s, uid);
        if (!*p) {
                *p = calloc(1, sizeof(**p));
                if (!*p)
                        return -ENOMEM;
                (*p)->uid = uid;
        }
        (*p)->n++;
        return 0;
}

static void uid_dec(struct acsd_server *s, uid_t uid)
{
        struct uid_count **p = uid_slot(s, uid);
        if (*p && --(*p)->n == 0) {
                struct uid_count *u = *p;
                *p = u->next;
                free(u);
        }
}

/* ---- scheduling: the kick timer runs ready connections and frees dead ones ---- */

static void kick(struct acsd_server *s)
{
        if (!acs_loop_timer_armed(s->kick))
                acs_loop_timer_arm(s->kick, 0, 0);
}

static void make_ready(struct acsd_conn *c)
{
        if (c->on_ready || c->dead)
                return;
        c->on_ready = true;
        c->ready_next = c->srv->ready;
        c->srv->ready = c;
        kick(c->srv);
}

static void conn_free(struct acsd_conn *c)
{
        acs_proto_reader_wipe(&c->rd);
        if (c->out) {
                explicit_bzero(c->out, c->out_cap);
                free(c->out);
        }
        free(c);
}

static void on_kick(acs_loop_timer *t, void *userdata)
{
        struct acsd_server *s = userdata;
        /* take the list: connections made ready meanwhile go on a fresh one */
        struct acsd_conn *ready = s->ready;
        s->ready = NULL;
        while (ready) {
                struct acsd_conn *c = ready;
                ready = c->ready_next;
                c->on_ready = false;
                if (!c->dead)
                        conn_process(c);
        }
        while (s->dead) {
                struct acsd_conn *c = s->dead;
                s->dead = c->dead_next;
                /* session.c lets go of it (the connection is still valid here) */
                acsd_session_conn_closed(s->d, c);
                c->state = NULL;
                /* made ready (again) before it died: take it off the new list */
                if (c->on_ready)
                        for (struct acsd_conn **p = &s->ready; *p; p = &(*p)->ready_next)
                                if (*p == c) {
                                        *p = c->ready_next;
                                        break;
                                }
                conn_free(c);
        }
}

/* ---- output ---- */

static void update_events(struct acsd_conn *c)
{
        if (c->dead)
                return;
        unsigned ev = 0;
        if (!c->paused && !c->eof && !c->flush_close)
                ev |= ACS_LOOP_IN;
        if (c->out_len > c->out_off)
                ev |= ACS_LOOP_OUT;
        acs_loop_io_set(c->io, ev);
}

/* Writes what the socket takes now. 0, or -errno when the connection failed. */
static int conn_flush(struct acsd_conn *c)
{
        while (c->out_off < c->out_len) {
                ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN || errno == EWOULDBLOCK)
                                break;
                        return -errno;
                }
                c->out_off += (size_t)n;
                c->out_since = acs_loop_now();
        }
        if (c->out_off == c->out_len) {
                c->out_off = c->out_len = 0;
                if (c->out_cap > OUT_KEEP) {
                        free(c->out);
                        c->out = NULL;
                        c->out_cap = 0;
                }
        }
        return 0;
}

/* After output moved: close when asked, refill from a producer, fix the events. */
static void after_output(struct acsd_conn *c)
{
        if (c->dead)
                return;
        if (c->out_len == c->out_off && c->flush_close) {
                conn_kill(c, NULL);
                return;
        }
        if (c->producer && c->out_len - c->out_off < OUT_LOW)
                make_ready(c);
        update_events(c);
}

int acsd_conn_send(struct acsd_conn *c, const char *line, size_t len)
{
        if (c->dead || c->flush_close)
                return -EPIPE;
        size_t queued = c->out_len - c->out_off;
        if (queued + len > OUT_MAX) {
                conn_kill(c, "output queue full (the client does not read)");
                return -ENOBUFS;
        }
        if (c->out_off > 0 && c->out_len + len > c->out_cap) {
                memmove(c->out, c->out + c->out_off, queued);
                c->out_len = queued;
                c->out_off = 0;
        }
        if (c->out_len + len > c->out_cap) {
                size_t cap = c->out_cap ? c->out_cap : 4096;
                while (cap < c->out_len + len)
                        cap *= 2;
                if (cap > OUT_MAX)
                        cap = OUT_MAX;
                char *n = realloc(c->out, cap);
                if (!n) {
                        conn_kill(c, "out of memory");
                        return -ENOBUFS;
                }
                c->out = n;
                c->out_cap = cap;
        }
        memcpy(c->out + c->out_len, line, len);
        c->out_len += len;
        bool was_empty = queued == 0;
        if (was_empty)
                c->out_since = acs_loop_now();
        if (was_empty) {
                int r = conn_flush(c);
                if (r < 0) {
                        conn_kill(c, NULL);
                        return -EPIPE;
                }
        }
        update_events(c);
        return 0;
}

int acsd_conn_reply(struct acsd_conn *c, const acs_proto_reply *r)
{
        char buf[ACS_PROTO_LINE_MAX + 1];
        size_t len;
        if (acs_proto_format_reply(r, buf, sizeof(buf), &len) < 0) {
                acs_log(LOG_ERR, "connection %" PRIu64 ": a reply did not format (a bug)", c->id);
                acs_proto_format_err(ACS_ERR_INTERNAL, "reply too long", buf, sizeof(buf), &len);
        }
        return acsd_conn_send(c, buf, len);
}

int acsd_conn_err(struct acsd_conn *c, enum acs_proto_err code, const char *text)
{
        char buf[ACS_PROTO_LINE_MAX + 1];
        size_t len;
        if (acs_proto_format_err(code, text, buf, sizeof(buf), &len) < 0)
                acs_proto_format_err(ACS_ERR_INTERNAL, "error", buf, sizeof(buf), &len);
        return acsd_conn_send(c, buf, len);
}

size_t acsd_conn_queued(const struct acsd_conn *c) { return c->out_len - c->out_off; }

void acsd_conn_close_after_flush(struct acsd_conn *c)
{
        if (c->dead)
                return;
        c->flush_close = true;
        c->producer = NULL;
        after_output(c);
}

void acsd_conn_pause(struct acsd_conn *c)
{
        c->paused = true;
        update_events(c);
}

void acsd_conn_resume(struct acsd_conn *c)
{
        if (c->dead)
                return;
        c->paused = false;
        c->last_active = acs_loop_now();
        update_events(c);
        make_ready(c); /* lines may be buffered already */
}

void acsd_conn_set_producer(struct acsd_conn *c, acsd_conn_producer fn)
{
        c->producer = fn;
        if (fn)
                make_ready(c);
}

void acsd_conn_set_keepalive(struct acsd_conn *c, bool on) { c->keepalive = on; }
bool acsd_conn_dead(const struct acsd_conn *c) { return c->dead; }
uid_t acsd_conn_uid(const struct acsd_conn *c) { return c->cred.uid; }
gid_t acsd_conn_gid(const struct acsd_conn *c) { return c->cred.gid; }
pid_t acsd_conn_pid(const struct acsd_conn *c) { return c->cred.pid; }
uint64_t acsd_conn_id(const struct acsd_conn *c) { return c->id; }
bool acsd_conn_is_admin(const struct acsd_conn *c) { return c->admin; }
void *acsd_conn_state(const struct acsd_conn *c) { return c->state; }
void acsd_conn_set_state(struct acsd_conn *c, void *state) { c->state = state; }

/* ---- closing ---- */

/* Closes now (queued output is dropped); the memory goes at the next kick. */
static void conn_kill(struct acsd_conn *c, const char *why)
{
        if (c->dead)
                return;
        struct acsd_server *s = c->srv;
        if (why)
                acs_log(LOG_INFO, "connection %" PRIu64 " (uid %u pid %d) closed: %s", c->id,
                        (unsigned)c->cred.uid, (int)c->cred.pid, why);
        c->dead = true;
        c->producer = NULL;
        c->io = acs_loop_io_free(c->io);
        close(c->fd);
        c->fd = -1;
        ACS_LIST_REMOVE(s->conns, c);
        uid_dec(s, c->cred.uid);
        s->n_conns--;
        c->dead_next = s->dead;
        s->dead = c;
        kick(s);
}

/* ---- input ---- */

/* Hands complete lines to session.c while the connection is not busy. */
static void conn_process(struct acsd_conn *c)
{
        while (!c->dead && !c->paused && !c->flush_close) {
                const char *line;
                size_t len;
                int r = acs_proto_reader_next(&c->rd, &line, &len);
                if (r == -EMSGSIZE) {
                        acsd_session_toolong(c->d, c);
                        continue;
                }
                if (r == 0)
                        break;
                c->last_active = acs_loop_now();
                acsd_session_line(c->d, c, line, len);
        }
        if (c->dead)
                return;
        /* a producer refills the queue (STATUS, WHO listings) */
        if (c->producer && !c->flush_close && c->out_len - c->out_off < OUT_LOW) {
                acsd_conn_producer fn = c->producer;
                if (fn(c->d, c) != 0 && c->producer == fn)
                        c->producer = NULL;
        }
        if (c->dead)
                return;
        if (c->eof && !c->paused && !c->producer && !c->flush_close)
                acsd_conn_close_after_flush(c);
        else
                update_events(c);
}

static void on_conn(acs_loop_io *io, int fd, unsigned events, void *userdata)
{
        struct acsd_conn *c = userdata;

        if (events & ACS_LOOP_OUT) {
                if (conn_flush(c) < 0) {
                        conn_kill(c, NULL);
                        return;
                }
                after_output(c);
                if (c->dead)
                        return;
        }
        if ((events & ACS_LOOP_IN) && !c->paused && !c->eof && !c->flush_close) {
                char *space;
                size_t room;
                acs_proto_reader_space(&c->rd, &space, &room);
                ssize_t n = recv(fd, space, room, 0);
                if (n < 0) {
                        if (errno == EAGAIN || errno == EINTR)
                                return;
                        conn_kill(c, NULL);
                        return;
                }
                if (n == 0) {
                        c->eof = true;
                } else {
                        acs_proto_reader_commit(&c->rd, (size_t)n);
                        c->last_active = acs_loop_now();
                }
                conn_process(c);
                return;
        }
        if (events & ACS_LOOP_ERR)
                conn_kill(c, NULL);
}

/* ---- accepting ---- */

/* Best effort one-line refusal on a fresh socket, then close. */
static void refuse(int fd, const char *text)
{
        char buf[ACS_PROTO_LINE_MAX + 1];
        size_t len;
        if (acs_proto_format_err(ACS_ERR_LIMIT, text, buf, sizeof(buf), &len) == 0)
                (void)!send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        close(fd);
}

/*
 * Refusals are logged at most once a second (with the number left out since), so a peer
 * hammering the socket cannot flood the log.
 */
static bool refusal_log_ok(unsigned *ret_suppressed)
{
        static uint64_t last;
        static unsigned suppressed;
        uint64_t now = acs_loop_now();
        if (last && now - last < 1000000) {
                suppressed++;
                return false;
        }
        last = now;
        *ret_suppressed = suppressed;
        suppressed = 0;
        return true;
}

static bool in_groups(gid_t want, gid_t primary, const gid_t *groups, size_t n)
{
        if (primary == want)
                return true;
        for (size_t i = 0; i < n; i++)
                if (groups[i] == want)
                        return true;
        return false;
}

/*
 * Who is on the other end: 0 and the credentials, or -errno (any error = deny). The
 * supplementary groups are needed only when the config names a group.
 */
static int peer_identify(acsd *d, int fd, struct ucred *ret_cred, bool *ret_admin, bool *ret_allowed)
{
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        if (len != sizeof(cred) || cred.pid <= 0 || cred.uid == (uid_t)-1 || cred.gid == (gid_t)-1)
                return -EPROTO;
        gid_t small[64], *groups = small;
        _cleanup_free_ gid_t *big = NULL;
        size_t n_groups = 0;
        if (d->has_admin_gid || d->has_allow_gid) {
                socklen_t glen = sizeof(small);
                if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, small, &glen) < 0) {
                        /* more groups than fit: the kernel said how many bytes it needs */
                        if (errno != ERANGE || glen == 0 || glen > 65536 * sizeof(gid_t))
                                return -errno;
                        big = malloc(glen);
                        if (!big)
                                return -ENOMEM;
                        if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, big, &glen) < 0)
                                return -errno;
                        groups = big;
                }
                n_groups = glen / sizeof(gid_t);
        }
        bool root = cred.uid == 0;
        *ret_admin = root || (d->has_admin_gid && in_groups(d->admin_gid, cred.gid, groups, n_groups));
        *ret_allowed = root || !d->has_allow_gid || in_groups(d->allow_gid, cred.gid, groups, n_groups);
        *ret_cred = cred;
        return 0;
}

static void accept_one(struct acsd_server *s, int fd)
{
        acsd *d = s->d;
        struct ucred cred;
        bool admin = false, allowed = false;
        int r = peer_identify(d, fd, &cred, &admin, &allowed);
        unsigned sup = 0;
        if (r < 0) {
                if (refusal_log_ok(&sup))
                        acs_log(LOG_WARNING, "refused a connection: cannot identify the peer: %s "
                                "(%u more refusals not logged)", strerrordesc_np(-r), sup);
                close(fd);
                return;
        }
        if (!allowed) {
                if (refusal_log_ok(&sup))
                        acs_log(LOG_NOTICE, "refused a connection of uid %u pid %d: not in group %s "
                                "(%u more refusals not logged)", (unsigned)cred.uid, (int)cred.pid,
                                d->cfg.socket_allow_group, sup);
                char buf[ACS_PROTO_LINE_MAX + 1];
                size_t len;
                acs_proto_format_err(ACS_ERR_DENIED, "this user may not use acsd", buf, sizeof(buf), &len);
                (void)!send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
                close(fd);
                return;
        }
        if (s->n_conns >= d->cfg.socket_max_connections) {
                if (refusal_log_ok(&sup))
                        acs_log(LOG_WARNING, "refused a connection of uid %u: %u connections "
                                "(socket.max_connections) (%u more refusals not logged)",
                                (unsigned)cred.uid, s->n_conns, sup);
                refuse(fd, "too many connections to acsd");
                return;
        }
        if (cred.uid != 0 && uid_conns(s, cred.uid) >= d->cfg.socket_max_per_uid) {
                if (refusal_log_ok(&sup))
                        acs_log(LOG_NOTICE, "refused a connection of uid %u: %u connections of that uid "
                                "(socket.max_per_uid) (%u more refusals not logged)",
                                (unsigned)cred.uid, uid_conns(s, cred.uid), sup);
                refuse(fd, "too many connections from this user");
                return;
        }
        struct acsd_conn *c = calloc(1, sizeof(*c));
        if (!c || uid_inc(s, cred.uid) < 0) {
                free(c);
                refuse(fd, "out of memory");
                return;
        }
        c->d = d;
        c->srv = s;
        c->fd = fd;
        c->cred = cred;
        c->admin = admin;
        c->id = ++s->next_id;
        c->last_active = acs_loop_now();
        acs_proto_reader_init(&c->rd);
        r = acs_loop_io_add(d->loop, fd, ACS_LOOP_IN, on_conn, c, &c->io);
        if (r < 0) {
                uid_dec(s, cred.uid);
                free(c);
                refuse(fd, "internal error");
                return;
        }
        ACS_LIST_PREPEND(s->conns, c);
        s->n_conns++;
        acs_log(LOG_DEBUG, "connection %" PRIu64 " from uid %u pid %d%s", c->id, (unsigned)cred.uid,
                (int)cred.pid, admin ? " (admin)" : "");
        acsd_session_conn_new(d, c);
}

static void on_accept_pause_over(acs_loop_timer *t, void *userdata)
{
        struct acsd_server *s = userdata;
        if (s->listen_io)
                acs_loop_io_set(s->listen_io, ACS_LOOP_IN);
}

static void on_listen(acs_loop_io *io, int fd, unsigned events, void *userdata)
{
        struct acsd_server *s = userdata;
        for (int i = 0; i < ACCEPT_BATCH; i++) {
                int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (c < 0) {
                        if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
                                return;
                        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                                /* out of descriptors: stop accepting for a moment (the backlog
                                 * waits) instead of spinning on the readable listener */
                                acs_log(LOG_WARNING, "accept: %m; pausing for 200 ms");
                                acs_loop_io_set(io, 0);
                                acs_loop_timer_arm(s->accept_pause, ACCEPT_PAUSE_USEC, 0);
                                return;
                        }
                        acs_log(LOG_ERR, "accept: %m");
                        return;
                }
                accept_one(s, c);
        }
}

/* Closes connections with nothing going on for CONN_IDLE_USEC. */
static void on_sweep(acs_loop_timer *t, void *userdata)
{
        struct acsd_server *s = userdata;
        uint64_t now = acs_loop_now();
        for (struct acsd_conn *c = s->conns, *next; c; c = next) {
                next = c->next;
                if (c->out_len > c->out_off) {
                        if (now - c->out_since >= OUT_STALL_USEC)
                                conn_kill(c, "output not taken for 60 s (the client does not read)");
                        continue;
                }
                if (c->keepalive || c->paused || c->producer)
                        continue;
                if (now - c->last_active >= ACSD_CONN_IDLE_USEC)
                        conn_kill(c, "idle");
        }
}

/* ---- the socket file ---- */

int acsd_mkdir_parents(const char *path, mode_t mode)
{
        char buf[PATH_MAX];
        if (strlen(path) >= sizeof(buf))
                return -ENAMETOOLONG;
        strcpy(buf, path);
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = 0;
                if (mkdir(buf, mode) < 0 && errno != EEXIST)
                        return -errno;
                *p = '/';
        }
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

/* Whether something answers on the socket at path (another acsd). */
static bool socket_alive(const struct sockaddr_un *sa)
{
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return false;
        bool alive = connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0;
        close(fd);
        return alive;
}

int acsd_server_start(acsd *d)
{
        const char *path = d->cfg.socket_path;
        struct sockaddr_un sa = { .sun_family = AF_UNIX }, tmp = { .sun_family = AF_UNIX };
        int r;

        if (!path)
                return -EINVAL;
        if (strlen(path) >= sizeof(sa.sun_path) - 16) {
                acs_log(LOG_ERR, "socket.path %s is too long for a Unix socket (at most %zu bytes)",
                        path, sizeof(sa.sun_path) - 17);
                return -ENAMETOOLONG;
        }
        strcpy(sa.sun_path, path);
        snprintf(tmp.sun_path, sizeof(tmp.sun_path), "%s.%d.tmp", path, (int)getpid());

        _cleanup_free_ char *dir = strdup(path);
        if (!dir)
                return -ENOMEM;
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
                *slash = 0;
                r = acsd_mkdir_parents(dir, 0755);
                if (r < 0) {
                        acs_log(LOG_ERR, "cannot create %s: %s", dir, strerrordesc_np(-r));
                        return r;
                }
        }
        struct stat st;
        if (lstat(path, &st) == 0) {
                if (!S_ISSOCK(st.st_mode)) {
                        acs_log(LOG_ERR, "%s exists and is not a socket; not touching it", path);
                        return -EEXIST;
                }
                if (socket_alive(&sa)) {
                        acs_log(LOG_ERR, "another acsd is listening on %s", path);
                        return -EADDRINUSE;
                }
                unlink(path);
        }

        struct acsd_server *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->d = d;
        s->listen_fd = -1;
        d->server = s;
        if (!(s->path = strdup(path)))
                goto nomem;
        if ((r = acs_loop_timer_add(d->loop, 0, 0, on_kick, s, &s->kick)) < 0 ||
            (r = acs_loop_timer_add(d->loop, 0, 0, on_accept_pause_over, s, &s->accept_pause)) < 0 ||
            (r = acs_loop_timer_add(d->loop, IDLE_SWEEP_USEC, IDLE_SWEEP_USEC, on_sweep, s, &s->sweep)) < 0)
                goto fail;
        acs_loop_timer_disarm(s->kick);
        acs_loop_timer_disarm(s->accept_pause);

        s->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (s->listen_fd < 0) {
                r = -errno;
                goto fail;
        }
        unlink(tmp.sun_path);
        mode_t old = umask(0777 & ~d->cfg.socket_mode);
        r = bind(s->listen_fd, (struct sockaddr *)&tmp, sizeof(tmp));
        umask(old);
        if (r < 0) {
                r = -errno;
                acs_log(LOG_ERR, "bind %s: %m", tmp.sun_path);
                goto fail;
        }
        if (chmod(tmp.sun_path, d->cfg.socket_mode) < 0 ||
            (d->has_allow_gid && chown(tmp.sun_path, 0, d->allow_gid) < 0)) {
                r = -errno;
                acs_log(LOG_ERR, "setting owner/mode of %s: %m", tmp.sun_path);
                unlink(tmp.sun_path);
                goto fail;
        }
        if (listen(s->listen_fd, SOMAXCONN) < 0 || rename(tmp.sun_path, path) < 0) {
                r = -errno;
                acs_log(LOG_ERR, "listen on %s: %m", path);
                unlink(tmp.sun_path);
                goto fail;
        }
        r = acs_loop_io_add(d->loop, s->listen_fd, ACS_LOOP_IN, on_listen, s, &s->listen_io);
        if (r < 0) {
                unlink(path);
                goto fail;
        }
        acs_log(LOG_INFO, "listening on %s (mode %04o%s%s)", path, d->cfg.socket_mode,
                d->has_allow_gid ? ", group " : "", d->has_allow_gid ? d->cfg.socket_allow_group : "");
        return 0;

nomem:
        r = -ENOMEM;
fail:
        acsd_server_stop(d);
        return r;
}

unsigned acsd_server_connections(const acsd *d) { return d->server ? d->server->n_conns : 0; }

void acsd_server_close_listener(acsd *d)
{
        struct acsd_server *s = d->server;
        if (!s || s->listen_fd < 0)
                return;
        s->listen_io = acs_loop_io_free(s->listen_io);
        close(s->listen_fd);
        s->listen_fd = -1;
        if (s->path)
                unlink(s->path);
}

void acsd_server_stop(acsd *d)
{
        struct acsd_server *s = d->server;
        if (!s)
                return;
        acsd_server_close_listener(d);
        while (s->conns)
                conn_kill(s->conns, NULL);
        s->ready = NULL;
        while (s->dead) {
                struct acsd_conn *c = s->dead;
                s->dead = c->dead_next;
                acsd_session_conn_closed(d, c);
                conn_free(c);
        }
        s->kick = acs_loop_timer_free(s->kick);
        s->accept_pause = acs_loop_timer_free(s->accept_pause);
        s->sweep = acs_loop_timer_free(s->sweep);
        for (size_t i = 0; i < UID_BUCKETS; i++)
                while (s->uids[i]) {
                        struct uid_count *u = s->uids[i];
                        s->uids[i] = u->next;
                        free(u);
                }
        free(s->path);
        free(s);
        d->server = NULL;
}
