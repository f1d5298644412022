/* SPDX-License-Identifier: MIT */
/* The agents' end of acsd's bus: handover, hello, password request, results; and the payload formats. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "acs/agent.h"
#include "acs/bus.h"
#include "acs/util.h"
#include "acs/wire.h"

#define FLUSH_TIMEOUT_MS 1000

static void put32(uint8_t *p, uint32_t v)
{
        p[0] = (uint8_t)(v >> 24);
        p[1] = (uint8_t)(v >> 16);
        p[2] = (uint8_t)(v >> 8);
        p[3] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
        put32(p, (uint32_t)(v >> 32));
        put32(p + 4, (uint32_t)v);
}

static uint32_t get32(const uint8_t *p)
{
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64(const uint8_t *p)
{
        return (uint64_t)get32(p) << 32 | get32(p + 4);
}

/* The 8-byte payloads (HELLO, LOGIN_RESULT, STATUS): two big-endian 32-bit fields. */
static void put_pair(uint8_t out[8], uint32_t a, uint32_t b)
{
        put32(out, a);
        put32(out + 4, b);
}

static int get_pair(const uint8_t *p, size_t len, uint32_t *ret_a, uint32_t *ret_b)
{
        if (len != 8)
                return -EBADMSG;
        *ret_a = get32(p);
        *ret_b = get32(p + 4);
        return 0;
}

/* ---- payloads ---- */

void acs_agent_hello_pack(enum acs_agent_kind kind, uint32_t pid, uint8_t out[8])
{
        put_pair(out, (uint32_t)kind, pid);
}

int acs_agent_hello_parse(const uint8_t *p, size_t len, enum acs_agent_kind *ret_kind, uint32_t *ret_pid)
{
        uint32_t kind, pid;
        if (get_pair(p, len, &kind, &pid) < 0 || (kind != ACS_AGENT_SYNCD && kind != ACS_AGENT_FS) || pid == 0 ||
            pid > INT32_MAX)
                return -EBADMSG;
        *ret_kind = (enum acs_agent_kind)kind;
        *ret_pid = pid;
        return 0;
}

int acs_agent_cred_pack(const char *password, size_t len, uint8_t **ret)
{
        if (!password || len == 0 || len > ACS_AGENT_PASSWORD_MAX || memchr(password, 0, len))
                return -EINVAL;
        uint8_t *p = sodium_malloc(ACS_AGENT_CRED_SIZE);
        if (!p)
                return -ENOMEM;
        sodium_memzero(p, ACS_AGENT_CRED_SIZE);
        p[0] = (uint8_t)(len >> 8);
        p[1] = (uint8_t)len;
        memcpy(p + 2, password, len);
        *ret = p;
        return 0;
}

int acs_agent_cred_parse(const uint8_t *p, size_t len, char **ret, size_t *ret_len)
{
        if (len != ACS_AGENT_CRED_SIZE)
                return -EBADMSG;
        size_t n = (size_t)p[0] << 8 | p[1];
        if (n == 0 || n > ACS_AGENT_PASSWORD_MAX || memchr(p + 2, 0, n))
                return -EBADMSG;
        for (size_t i = 2 + n; i < len; i++)
                if (p[i])
                        return -EBADMSG;
        char *s = sodium_malloc(n + 1);
        if (!s)
                return -ENOMEM;
        memcpy(s, p + 2, n);
        s[n] = 0;
        *ret = s;
        *ret_len = n;
        return 0;
}

void acs_agent_login_pack(enum acs_agent_login result, uint32_t exit_status, uint8_t out[8])
{
        put_pair(out, (uint32_t)result, exit_status);
}

int acs_agent_login_parse(const uint8_t *p, size_t len, enum acs_agent_login *ret_result, uint32_t *ret_exit_status)
{
        uint32_t r, st;
        if (get_pair(p, len, &r, &st) < 0 || r > ACS_AGENT_LOGIN_FAILED || st > 255 ||
            (r == ACS_AGENT_LOGIN_OK) != (st == 0))
                return -EBADMSG;
        *ret_result = (enum acs_agent_login)r;
        *ret_exit_status = st;
        return 0;
}

int acs_agent_sync_now_parse(const uint8_t *p, size_t len, char **ret_mailbox)
{
        if (len > ACS_AGENT_MAILBOX_MAX || (len && memchr(p, 0, len)))
                return -EBADMSG;
        char *s = NULL;
        if (len) {
                s = strndup((const char *)p, len);
                if (!s)
                        return -ENOMEM;
        }
        *ret_mailbox = s;
        return 0;
}

void acs_agent_progress_pack(enum acs_agent_progress ev, uint64_t done, uint64_t total, uint8_t out[20])
{
        put32(out, (uint32_t)ev);
        put64(out + 4, done);
        put64(out + 12, total);
}

int acs_agent_progress_parse(const uint8_t *p, size_t len, enum acs_agent_progress *ret_ev, uint64_t *ret_done,
                             uint64_t *ret_total)
{
        if (len != 20)
                return -EBADMSG;
        uint32_t ev = get32(p);
        uint64_t done = get64(p + 4), total = get64(p + 12);
        if (ev < ACS_AGENT_PROGRESS_SYNCING || ev > ACS_AGENT_PROGRESS_RECONNECT || done > total)
                return -EBADMSG;
        *ret_ev = (enum acs_agent_progress)ev;
        *ret_done = done;
        *ret_total = total;
        return 0;
}

void acs_agent_status_pack(enum acs_agent_state st, uint32_t pending, uint8_t out[8])
{
        put_pair(out, (uint32_t)st, pending);
}

int acs_agent_status_parse(const uint8_t *p, size_t len, enum acs_agent_state *ret_state, uint32_t *ret_pending)
{
        uint32_t st, pending;
        if (get_pair(p, len, &st, &pending) < 0 || st < ACS_AGENT_STATE_CONNECTING || st > ACS_AGENT_STATE_STOPPING)
                return -EBADMSG;
        *ret_state = (enum acs_agent_state)st;
        *ret_pending = pending;
        return 0;
}

void acs_agent_change_pack(uint64_t seq, uint8_t out[8])
{
        put64(out, seq);
}

int acs_agent_change_parse(const uint8_t *p, size_t len, uint64_t *ret_seq)
{
        if (len != 8)
                return -EBADMSG;
        uint64_t seq = get64(p);
        if (seq > INT64_MAX)
                return -EBADMSG;
        *ret_seq = seq;
        return 0;
}

/* ---- the connection ---- */

struct acs_agent {
        acs_bus *bus;
        acs_wire *wire;
        uint32_t id;
        char *acsd_name;      /* unique name owning ACS_BUS_NAME when we connected */
        unsigned events;      /* ACS_AGENT_EV_* not yet reported */
        bool sync_all;        /* a SYNC_NOW without mailbox is pending */
        char *sync_mailbox;   /* the last SYNC_NOW's mailbox */
        bool cred_wanted;     /* a CRED_REQUEST is outstanding: CRED is acceptable */
        char *cred;           /* sodium_malloc'd password, once CRED arrived */
        size_t cred_len;
        uint64_t rejected;
        const char *last_error;
};

static void reject(acs_agent *a, const char *why)
{
        a->rejected++;
        a->last_error = why;
}

static void on_message(void *userdata, const char *sender, const uint8_t *msg, size_t len)
{
        acs_agent *a = userdata;
        if (strcmp(sender, a->acsd_name) != 0) {
                reject(a, "sender is not acsd's connection");
                return;
        }
        uint64_t accept = ACS_WIRE_MASK(ACS_WIRE_P_SYNC_NOW) | ACS_WIRE_MASK(ACS_WIRE_P_STOP);
        if (a->cred_wanted)
                accept |= ACS_WIRE_MASK(ACS_WIRE_P_CRED);
        acs_wire_msg m = {0};
        const char *err = NULL;
        int r = acs_wire_open(a->wire, msg, len, accept, &m, &err);
        if (r < 0) {
                reject(a, err ? err : "message rejected");
                return;
        }
        switch (m.purpose) {
        case ACS_WIRE_P_STOP:
                if (m.len != 0)
                        reject(a, "STOP with a payload");
                else
                        a->events |= ACS_AGENT_EV_STOP;
                break;
        case ACS_WIRE_P_SYNC_NOW: {
                char *mb = NULL;
                if (acs_agent_sync_now_parse(m.payload, m.len, &mb) < 0) {
                        reject(a, "malformed SYNC_NOW");
                        break;
                }
                if (!mb)
                        a->sync_all = true;
                free(a->sync_mailbox);
                a->sync_mailbox = mb;
                a->events |= ACS_AGENT_EV_SYNC_NOW;
                break;
        }
        case ACS_WIRE_P_CRED: {
                char *pw = NULL;
                size_t n = 0;
                if (acs_agent_cred_parse(m.payload, m.len, &pw, &n) < 0) {
                        reject(a, "malformed CRED");
                        break;
                }
                acs_secret_free(a->cred);
                a->cred = pw;
                a->cred_len = n;
                a->cred_wanted = false;
                break;
        }
        default:
                reject(a, "unexpected purpose");
                break;
        }
        acs_wire_msg_clear(&m);
}

static int send_signed(acs_agent *a, enum acs_wire_purpose purpose, const void *payload, size_t len)
{
        _cleanup_free_ uint8_t *msg = NULL;
        size_t mlen = 0;
        int r = acs_wire_seal(a->wire, ACS_WIRE_ID_ACSD, purpose, payload, len, &msg, &mlen);
        if (r < 0)
                return r;
        r = acs_bus_send(a->bus, a->acsd_name, msg, mlen);
        if (r < 0)
                return r;
        return acs_bus_flush(a->bus, FLUSH_TIMEOUT_MS);
}

int acs_agent_open(const char *address, int key_fd, enum acs_agent_kind kind, acs_agent **ret)
{
        if (!address || key_fd < 0 || (kind != ACS_AGENT_SYNCD && kind != ACS_AGENT_FS)) {
                if (key_fd >= 0)
                        close(key_fd);
                return -EINVAL;
        }
        int r = acs_wire_init();
        if (r < 0) {
                close(key_fd);
                return r;
        }
        uint32_t id = 0;
        acs_wire_keys *keys = NULL;
        acs_wire_pub acsd_pub;
        r = acs_wire_handover_read(key_fd, &id, &keys, &acsd_pub);
        close(key_fd);
        if (r < 0)
                return r;
        acs_agent *a = calloc(1, sizeof(*a));
        if (!a) {
                acs_wire_keys_free(keys);
                return -ENOMEM;
        }
        a->id = id;
        r = acs_wire_new(id, &keys, &a->wire);
        if (r < 0) {
                acs_wire_keys_free(keys);
                free(a);
                return r;
        }
        r = acs_wire_add_peer(a->wire, ACS_WIRE_ID_ACSD, &acsd_pub);
        if (r < 0)
                goto fail;
        r = acs_bus_connect(address, &a->bus);
        if (r < 0)
                goto fail;
        r = acs_bus_name_owner(a->bus, ACS_BUS_NAME, &a->acsd_name);
        if (r < 0)
                goto fail;
        /*
         * On acsd's own bus only acsd's uid may own the name. On a bus acsd did not start
         * (an address in its config), anyone may have taken it first: accept only an owner
         * running as root or being our parent (acsd starts its agents itself).
         */
        pid_t owner_pid = 0;
        uid_t owner_uid = 0;
        r = acs_bus_peer_creds(a->bus, a->acsd_name, &owner_pid, &owner_uid);
        if (r < 0)
                goto fail;
        if (owner_uid != 0 && owner_pid != getppid()) {
                r = -EPERM;
                goto fail;
        }
        acs_bus_set_handlers(a->bus, on_message, NULL, a);
        uint8_t hello[8];
        acs_agent_hello_pack(kind, (uint32_t)getpid(), hello);
        r = send_signed(a, ACS_WIRE_P_AGENT_HELLO, hello, sizeof(hello));
        if (r < 0)
                goto fail;
        *ret = a;
        return 0;
fail:
        acs_agent_free(a);
        return r;
}

acs_agent *acs_agent_free(acs_agent *a)
{
        if (!a)
                return NULL;
        acs_bus_free(a->bus);
        acs_wire_free(a->wire);
        acs_secret_free(a->cred);
        free(a->sync_mailbox);
        free(a->acsd_name);
        free(a);
        return NULL;
}

uint32_t acs_agent_id(const acs_agent *a)
{
        return a->id;
}

uint64_t acs_agent_rejected(const acs_agent *a)
{
        return a->rejected;
}

const char *acs_agent_last_error(const acs_agent *a)
{
        return a->last_error;
}

int acs_agent_fd(const acs_agent *a)
{
        return acs_bus_fd(a->bus);
}

short acs_agent_poll_events(const acs_agent *a)
{
        return acs_bus_poll_events(a->bus);
}

bool acs_agent_has_pending(const acs_agent *a)
{
        return acs_bus_has_pending(a->bus);
}

int acs_agent_dispatch(acs_agent *a, unsigned *ret_events)
{
        int r = acs_bus_dispatch(a->bus);
        *ret_events = a->events;
        a->events = 0;
        /* a STOP that arrived is reported even when the bus is gone right after */
        if (r == -ECONNRESET && (*ret_events & ACS_AGENT_EV_STOP))
                return 0;
        return r;
}

char *acs_agent_take_sync_mailbox(acs_agent *a)
{
        char *mb = a->sync_all ? NULL : a->sync_mailbox;
        if (a->sync_all)
                free(a->sync_mailbox);
        a->sync_mailbox = NULL;
        a->sync_all = false;
        return mb;
}

static int64_t mono_ms(void)
{
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int acs_agent_get_password(acs_agent *a, int timeout_ms, char **ret, size_t *ret_len)
{
        a->cred = acs_secret_free(a->cred);
        int r = send_signed(a, ACS_WIRE_P_CRED_REQUEST, NULL, 0);
        if (r < 0)
                return r;
        a->cred_wanted = true;
        int64_t deadline = timeout_ms < 0 ? INT64_MAX : mono_ms() + timeout_ms;
        while (!a->cred) {
                if (a->events & ACS_AGENT_EV_STOP) {
                        a->cred_wanted = false;
                        return -ECANCELED;
                }
                int64_t left = deadline - mono_ms();
                if (left <= 0) {
                        a->cred_wanted = false;
                        return -ETIMEDOUT;
                }
                r = acs_bus_wait(a->bus, left > 1000 ? 1000 : (int)left);
                if (r < 0 && r != -EINTR) {
                        a->cred_wanted = false;
                        return r;
                }
        }
        *ret = TAKE_PTR(a->cred);
        *ret_len = a->cred_len;
        a->cred_len = 0;
        return 0;
}

int acs_agent_send_login_result(acs_agent *a, enum acs_agent_login result, uint32_t exit_status)
{
        uint8_t p[8];
        acs_agent_login_pack(result, exit_status, p);
        return send_signed(a, ACS_WIRE_P_LOGIN_RESULT, p, sizeof(p));
}

int acs_agent_send_progress(acs_agent *a, enum acs_agent_progress ev, uint64_t done, uint64_t total)
{
        uint8_t p[20];
        acs_agent_progress_pack(ev, done, total, p);
        return send_signed(a, ACS_WIRE_P_PROGRESS, p, sizeof(p));
}

int acs_agent_send_change(acs_agent *a, uint64_t seq)
{
        uint8_t p[8];
        acs_agent_change_pack(seq, p);
        return send_signed(a, ACS_WIRE_P_CHANGE, p, sizeof(p));
}

int acs_agent_send_status(acs_agent *a, enum acs_agent_state st, uint32_t pending)
{
        uint8_t p[8];
        acs_agent_status_pack(st, pending, p);
        return send_signed(a, ACS_WIRE_P_STATUS, p, sizeof(p));
}

/* ---- the agent in a thread of its own ---- */

struct acs_agent_thread {
        acs_agent *a;
        pthread_t thread;
        pthread_mutex_t lock;
        int quit[2];
        void (*on_stop)(void *);
        void (*on_sync)(void *, const char *);
        void *userdata;
};

static void *agent_thread_main(void *arg)
{
        acs_agent_thread *t = arg;
        for (;;) {
                pthread_mutex_lock(&t->lock);
                /* a send of another thread may have read messages into memory */
                bool pending = acs_agent_has_pending(t->a);
                pthread_mutex_unlock(&t->lock);
                struct pollfd p[2] = {
                        {.fd = acs_agent_fd(t->a), .events = POLLIN},
                        {.fd = t->quit[0], .events = POLLIN},
                };
                int n = poll(p, 2, pending ? 0 : 1000);
                if (n < 0 && errno != EINTR)
                        break;
                if (p[1].revents)
                        return NULL;
                unsigned ev = 0;
                pthread_mutex_lock(&t->lock);
                int r = acs_agent_dispatch(t->a, &ev);
                char *mb = (ev & ACS_AGENT_EV_SYNC_NOW) ? acs_agent_take_sync_mailbox(t->a) : NULL;
                pthread_mutex_unlock(&t->lock);
                if ((ev & ACS_AGENT_EV_SYNC_NOW) && t->on_sync)
                        t->on_sync(t->userdata, mb);
                free(mb);
                if ((ev & ACS_AGENT_EV_STOP) || r < 0)
                        break;
        }
        if (t->on_stop)
                t->on_stop(t->userdata);
        return NULL;
}

int acs_agent_thread_start(acs_agent *a, void (*on_stop)(void *userdata),
                           void (*on_sync)(void *userdata, const char *mailbox), void *userdata,
                           acs_agent_thread **ret)
{
        acs_agent_thread *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        *t = (acs_agent_thread){.a = a, .on_stop = on_stop, .on_sync = on_sync, .userdata = userdata};
        if (pipe2(t->quit, O_CLOEXEC) < 0) {
                int e = -errno;
                free(t);
                return e;
        }
        pthread_mutex_init(&t->lock, NULL);
        int r = pthread_create(&t->thread, NULL, agent_thread_main, t);
        if (r != 0) {
                close(t->quit[0]);
                close(t->quit[1]);
                pthread_mutex_destroy(&t->lock);
                free(t);
                return -r;
        }
        *ret = t;
        return 0;
}

acs_agent_thread *acs_agent_thread_stop(acs_agent_thread *t)
{
        if (!t)
                return NULL;
        (void)!write(t->quit[1], "x", 1);
        pthread_join(t->thread, NULL);
        close(t->quit[0]);
        close(t->quit[1]);
        pthread_mutex_destroy(&t->lock);
        free(t);
        return NULL;
}

int acs_agent_thread_get_password(acs_agent_thread *t, int timeout_ms, char **ret, size_t *ret_len)
{
        pthread_mutex_lock(&t->lock);
        int r = acs_agent_get_password(t->a, timeout_ms, ret, ret_len);
        pthread_mutex_unlock(&t->lock);
        return r;
}

int acs_agent_thread_send_login_result(acs_agent_thread *t, enum acs_agent_login result, uint32_t exit_status)
{
        pthread_mutex_lock(&t->lock);
        int r = acs_agent_send_login_result(t->a, result, exit_status);
        pthread_mutex_unlock(&t->lock);
        return r;
}

int acs_agent_thread_send_progress(acs_agent_thread *t, enum acs_agent_progress ev, uint64_t done, uint64_t total)
{
        pthread_mutex_lock(&t->lock);
        int r = acs_agent_send_progress(t->a, ev, done, total);
        pthread_mutex_unlock(&t->lock);
        return r;
}

int acs_agent_thread_send_change(acs_agent_thread *t, uint64_t seq)
{
        pthread_mutex_lock(&t->lock);
        int r = acs_agent_send_change(t->a, seq);
        pthread_mutex_unlock(&t->lock);
        return r;
}

int acs_agent_thread_send_status(acs_agent_thread *t, enum acs_agent_state st, uint32_t pending)
{
        pthread_mutex_lock(&t->lock);
        int r = acs_agent_send_status(t->a, st, pending);
        pthread_mutex_unlock(&t->lock);
        return r;
}
