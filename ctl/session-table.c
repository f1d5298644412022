/* SPDX-License-Identifier: MIT */
/* acsd's session table (tokens kept as keyed hashes) and failed-login rate limiter; pure logic, time passed in. */
#include "session-table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "acs/util.h"

#define HASH_KEY_SIZE crypto_generichash_KEYBYTES

/* ---- sessions ---- */

/* Per-user session counts: a small open hash of user -> count. */
struct user_count {
        char *user;
        size_t n;
        struct user_count *next;
};

struct acs_session_table {
        unsigned char key[HASH_KEY_SIZE];
        acs_session **buckets;
        size_t n_buckets;
        size_t n;
        size_t max_total, max_per_user;
        uint64_t expiry;
        uint64_t next_id;
        struct user_count **ubuckets; /* n_buckets of them too */
};

static uint64_t fnv1a(const char *s)
{
        uint64_t h = 1469598103934665603ull;
        for (; *s; s++)
                h = (h ^ (unsigned char)*s) * 1099511628211ull;
        return h;
}

int acs_session_table_new(size_t max_total, size_t max_per_user, uint64_t expiry_usec,
                          acs_session_table **ret)
{
        acs_session_table *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        /* about one bucket per session at the limit, a power of two, bounded */
        size_t nb = 64;
        while (nb < max_total && nb < (1u << 20))
                nb *= 2;
        t->buckets = calloc(nb, sizeof(*t->buckets));
        t->ubuckets = calloc(nb, sizeof(*t->ubuckets));
        if (!t->buckets || !t->ubuckets) {
                free(t->buckets);
                free(t->ubuckets);
                free(t);
                return -ENOMEM;
        }
        t->n_buckets = nb;
        t->max_total = max_total;
        t->max_per_user = max_per_user;
        t->expiry = expiry_usec;
        crypto_generichash_keygen(t->key);
        *ret = t;
        return 0;
}

static struct user_count **ucount_slot(const acs_session_table *t, const char *user)
{
        struct user_count **p = &t->ubuckets[fnv1a(user) & (t->n_buckets - 1)];
        while (*p && strcmp((*p)->user, user) != 0)
                p = &(*p)->next;
        return p;
}

/* Removes the count *up points at from its chain and frees it. */
static void ucount_unlink(struct user_count **up)
{
        struct user_count *uc = *up;
        *up = uc->next;
        free(uc->user);
        free(uc);
}

size_t acs_session_count_user(const acs_session_table *t, const char *user)
{
        struct user_count **p = ucount_slot(t, user);
        return *p ? (*p)->n : 0;
}

size_t acs_session_count(const acs_session_table *t) { return t->n; }

int acs_session_table_can_add(const acs_session_table *t, const char *user)
{
        if (t->n >= t->max_total || acs_session_count_user(t, user) >= t->max_per_user)
                return -EAGAIN;
        return 0;
}

static void token_hash(const acs_session_table *t, const uint8_t token[ACS_PROTO_TOKEN_SIZE], uint8_t out[32])
{
        crypto_generichash(out, 32, token, ACS_PROTO_TOKEN_SIZE, t->key, sizeof(t->key));
}

static size_t bucket_of(const acs_session_table *t, const uint8_t hash[32])
{
        uint64_t b;
        memcpy(&b, hash, sizeof(b));
        return (size_t)(b & (t->n_buckets - 1));
}

int acs_session_add(acs_session_table *t, const char *user, uid_t uid, uint64_t now, int64_t unix_now,
                    uint8_t ret_token[ACS_PROTO_TOKEN_SIZE], acs_session **ret)
{
        size_t ulen = user ? strlen(user) : 0;
        if (ulen == 0 || ulen > ACS_PROTO_USER_MAX)
                return -EINVAL;
        if (acs_session_table_can_add(t, user) < 0)
                return -EAGAIN;
        struct user_count **up = ucount_slot(t, user);
        struct user_count *uc = *up;
        if (!uc) {
                uc = calloc(1, sizeof(*uc));
                if (!uc || !(uc->user = strdup(user))) {
                        free(uc);
                        return -ENOMEM;
                }
                *up = uc;
        }
        acs_session *s = calloc(1, sizeof(*s));
        if (!s) {
                if (uc->n == 0)
                        ucount_unlink(up);
                return -ENOMEM;
        }
        uint8_t token[ACS_PROTO_TOKEN_SIZE];
        acs_proto_token_new(token);
        token_hash(t, token, s->hash);
        memcpy(s->user, user, ulen + 1);
        s->uid = uid;
        s->id = ++t->next_id;
        s->created = unix_now;
        s->last_used = now;
        size_t b = bucket_of(t, s->hash);
        s->hnext = t->buckets[b];
        t->buckets[b] = s;
        t->n++;
        uc->n++;
        memcpy(ret_token, token, sizeof(token));
        sodium_memzero(token, sizeof(token));
        *ret = s;
        return 0;
}

bool acs_session_expired(const acs_session_table *t, const acs_session *s, uint64_t now)
{
        return s->holders == 0 && now >= s->last_used && now - s->last_used >= t->expiry;
}

int acs_session_find(acs_session_table *t, const uint8_t token[ACS_PROTO_TOKEN_SIZE], uint64_t now,
                     acs_session **ret)
{
        uint8_t h[32];
        acs_session *found = NULL;
        token_hash(t, token, h);
        /* the whole chain is compared: its length is what an attacker could time, and it
         * depends on hashes under a key he does not know */
        for (acs_session *s = t->buckets[bucket_of(t, h)]; s; s = s->hnext)
                if (sodium_memcmp(s->hash, h, sizeof(h)) == 0)
                        found = s;
        sodium_memzero(h, sizeof(h));
        if (!found || acs_session_expired(t, found, now))
                return -ENOENT;
        *ret = found;
        return 0;
}

void acs_session_remove(acs_session_table *t, acs_session *s)
{
        acs_session **p = &t->buckets[bucket_of(t, s->hash)];
        while (*p && *p != s)
                p = &(*p)->hnext;
        if (!*p)
                return;
        *p = s->hnext;
        t->n--;
        struct user_count **up = ucount_slot(t, s->user);
        if (*up && --(*up)->n == 0)
                ucount_unlink(up);
        sodium_memzero(s, sizeof(*s));
        free(s);
}

size_t acs_session_expire(acs_session_table *t, uint64_t now, void (*fn)(void *ud, acs_session *s),
                          void *ud)
{
        size_t removed = 0;
        for (size_t b = 0; b < t->n_buckets; b++) {
                acs_session *s = t->buckets[b];
                while (s) {
                        acs_session *next = s->hnext;
                        if (acs_session_expired(t, s, now)) {
                                uint64_t id = s->id;
                                if (fn)
                                        fn(ud, s);
                                /* still there (by id: s may have been freed) */
                                for (acs_session *q = t->buckets[b]; q; q = q->hnext)
                                        if (q->id == id) {
                                                acs_session_remove(t, q);
                                                break;
                                        }
                                removed++;
                                /* fn may only have removed s itself; restart the bucket to be safe */
                                next = t->buckets[b];
                        }
                        s = next;
                }
        }
        return removed;
}

int acs_session_foreach(acs_session_table *t, int (*fn)(void *ud, acs_session *s), void *ud)
{
        for (size_t b = 0; b < t->n_buckets; b++)
                for (acs_session *s = t->buckets[b]; s; s = s->hnext) {
                        int r = fn(ud, s);
                        if (r < 0)
                                return r;
                }
        return 0;
}

acs_session_table *acs_session_table_free(acs_session_table *t)
{
        if (!t)
                return NULL;
        for (size_t b = 0; b < t->n_buckets; b++) {
                while (t->buckets[b]) {
                        acs_session *s = t->buckets[b];
                        t->buckets[b] = s->hnext;
                        sodium_memzero(s, sizeof(*s));
                        free(s);
                }
                while (t->ubuckets[b])
                        ucount_unlink(&t->ubuckets[b]);
        }
        free(t->buckets);
        free(t->ubuckets);
        sodium_memzero(t->key, sizeof(t->key));
        free(t);
        return NULL;
}

/* ---- rate limiter ---- */

struct rl_key {
        enum acs_rl_kind kind;
        uid_t uid;
        char *user;
        unsigned failures;
        uint64_t last_failure;  /* monotonic usec */
        uint64_t blocked_until; /* new attempts refused before this */
        struct rl_key *next;
};

struct acs_ratelimit {
        unsigned limit;
        uint64_t max_delay, forget;
        size_t max_keys, n;
        struct rl_key **buckets;
        size_t n_buckets;
};

int acs_ratelimit_new(unsigned limit, uint64_t max_delay_usec, uint64_t forget_usec, size_t max_keys,
                      acs_ratelimit **ret)
{
        if (limit == 0 || max_keys == 0)
                return -EINVAL;
        acs_ratelimit *rl = calloc(1, sizeof(*rl));
        if (!rl)
                return -ENOMEM;
        rl->n_buckets = 1024;
        rl->buckets = calloc(rl->n_buckets, sizeof(*rl->buckets));
        if (!rl->buckets) {
                free(rl);
                return -ENOMEM;
        }
        rl->limit = limit;
        rl->max_delay = max_delay_usec;
        rl->forget = forget_usec;
        rl->max_keys = max_keys;
        *ret = rl;
        return 0;
}

static size_t rl_bucket(const acs_ratelimit *rl, enum acs_rl_kind kind, const char *user, uid_t uid)
{
        uint64_t h = kind == ACS_RL_USER ? fnv1a(user) : (uint64_t)uid * 0x9e3779b97f4a7c15ull;
        return (size_t)((h ^ kind) & (rl->n_buckets - 1));
}

static struct rl_key **rl_slot(acs_ratelimit *rl, enum acs_rl_kind kind, const char *user, uid_t uid)
{
        struct rl_key **p = &rl->buckets[rl_bucket(rl, kind, user, uid)];
        for (; *p; p = &(*p)->next) {
                struct rl_key *k = *p;
                if (k->kind == kind && (kind == ACS_RL_UID ? k->uid == uid : strcmp(k->user, user) == 0))
                        break;
        }
        return p;
}

static void rl_unlink(acs_ratelimit *rl, struct rl_key **p)
{
        struct rl_key *k = *p;
        *p = k->next;
        free(k->user);
        free(k);
        rl->n--;
}

/* The key, or NULL; a key past its forget time is removed on the way. */
static struct rl_key *rl_get(acs_ratelimit *rl, enum acs_rl_kind kind, const char *user, uid_t uid,
                             uint64_t now)
{
        struct rl_key **p = rl_slot(rl, kind, user, uid);
        if (*p && now >= (*p)->last_failure && now - (*p)->last_failure >= rl->forget &&
            now >= (*p)->blocked_until) {
                rl_unlink(rl, p);
                return NULL;
        }
        return *p;
}

static void rl_evict_oldest(acs_ratelimit *rl)
{
        struct rl_key **oldest = NULL;
        for (size_t b = 0; b < rl->n_buckets; b++)
                for (struct rl_key **p = &rl->buckets[b]; *p; p = &(*p)->next)
                        if (!oldest || (*p)->last_failure < (*oldest)->last_failure)
                                oldest = p;
        if (oldest)
                rl_unlink(rl, oldest);
}

static uint64_t rl_delay(const acs_ratelimit *rl, unsigned failures)
{
        if (failures <= rl->limit)
                return 0;
        unsigned k = failures - rl->limit - 1;
        uint64_t d = 1000000;
        for (unsigned i = 0; i < k && d < rl->max_delay; i++)
                d *= 2;
        return d < rl->max_delay ? d : rl->max_delay;
}

/* Records one failure on a key; returns its delay. */
static uint64_t rl_fail_key(acs_ratelimit *rl, enum acs_rl_kind kind, const char *user, uid_t uid,
                            uint64_t now)
{
        struct rl_key *k = rl_get(rl, kind, user, uid, now);
        if (!k) {
                if (rl->n >= rl->max_keys)
                        rl_evict_oldest(rl);
                k = calloc(1, sizeof(*k));
                if (!k)
                        return rl->max_delay; /* no memory: be slow rather than forget */
                k->kind = kind;
                k->uid = uid;
                if (kind == ACS_RL_USER && !(k->user = strdup(user))) {
                        free(k);
                        return rl->max_delay;
                }
                struct rl_key **p = &rl->buckets[rl_bucket(rl, kind, user, uid)];
                k->next = *p;
                *p = k;
                rl->n++;
        }
        if (k->failures < UINT32_MAX)
                k->failures++;
        k->last_failure = now;
        uint64_t d = rl_delay(rl, k->failures);
        if (d && now + d > k->blocked_until)
                k->blocked_until = now + d;
        return d;
}

uint64_t acs_ratelimit_fail(acs_ratelimit *rl, const char *user, uid_t uid, uint64_t now)
{
        uint64_t a = rl_fail_key(rl, ACS_RL_USER, user, uid, now);
        uint64_t b = rl_fail_key(rl, ACS_RL_UID, user, uid, now);
        return a > b ? a : b;
}

int acs_ratelimit_check(acs_ratelimit *rl, const char *user, uid_t uid, uint64_t now,
                        uint64_t *ret_retry_usec)
{
        uint64_t wait = 0;
        struct rl_key *ku = rl_get(rl, ACS_RL_USER, user, uid, now);
        if (ku && ku->blocked_until > now)
                wait = ku->blocked_until - now;
        if (wait == 0)
                return 0;
        if (ret_retry_usec)
                *ret_retry_usec = wait;
        return -EAGAIN;
}

void acs_ratelimit_success(acs_ratelimit *rl, const char *user)
{
        struct rl_key **p = rl_slot(rl, ACS_RL_USER, user, 0);
        if (*p)
                rl_unlink(rl, p);
}

unsigned acs_ratelimit_failures(acs_ratelimit *rl, enum acs_rl_kind kind, const char *user, uid_t uid,
                                uint64_t now)
{
        struct rl_key *k = rl_get(rl, kind, user, uid, now);
        return k ? k->failures : 0;
}

size_t acs_ratelimit_keys(const acs_ratelimit *rl) { return rl->n; }

acs_ratelimit *acs_ratelimit_free(acs_ratelimit *rl)
{
        if (!rl)
                return NULL;
        for (size_t b = 0; b < rl->n_buckets; b++)
                while (rl->buckets[b])
                        rl_unlink(rl, &rl->buckets[b]);
        free(rl->buckets);
        free(rl);
        return NULL;
}
