/* SPDX-License-Identifier: MIT */
/* Tests of acsd's session table (tokens, limits, expiry) and failed-login rate limiter, with a test clock. */
#include "session-table.h"

#include <errno.h>
#include <sodium.h>

#include "acs/util.h"
#include "test.h"

#define SEC 1000000ull

static acs_session_table *table(size_t total, size_t per_user, uint64_t expiry)
{
        acs_session_table *t = NULL;
        CHECK_INT(acs_session_table_new(total, per_user, expiry, &t), 0);
        return t;
}

TEST(add_find_remove)
{
        acs_session_table *t = table(100, 10, 60 * SEC);
        uint8_t tok[ACS_PROTO_TOKEN_SIZE], tok2[ACS_PROTO_TOKEN_SIZE];
        acs_session *s = NULL, *s2 = NULL, *f = NULL;
        CHECK_INT(acs_session_add(t, "alice", 33, 1 * SEC, 1700000000, tok, &s), 0);
        CHECK_INT(acs_session_add(t, "alice", 33, 1 * SEC, 1700000000, tok2, &s2), 0);
        CHECK(memcmp(tok, tok2, sizeof(tok)) != 0);
        CHECK(s != s2 && s->id != s2->id);
        CHECK_STR(s->user, "alice");
        CHECK_INT(s->uid, 33);
        CHECK_INT(s->created, 1700000000);
        /* the token itself is not kept in the session */
        CHECK(memmem(s, sizeof(*s), tok, 8) == NULL);
        CHECK_INT(acs_session_find(t, tok, 2 * SEC, &f), 0);
        CHECK(f == s);
        CHECK_INT(acs_session_find(t, tok2, 2 * SEC, &f), 0);
        CHECK(f == s2);
        /* one bit off: unknown */
        tok[31] ^= 1;
        CHECK_INT(acs_session_find(t, tok, 2 * SEC, &f), -ENOENT);
        tok[31] ^= 1;
        CHECK_INT(acs_session_count(t), 2);
        CHECK_INT(acs_session_count_user(t, "alice"), 2);
        acs_session_remove(t, s);
        CHECK_INT(acs_session_find(t, tok, 2 * SEC, &f), -ENOENT);
        CHECK_INT(acs_session_count_user(t, "alice"), 1);
        CHECK_INT(acs_session_add(t, "", 33, 1, 1, tok, &s), -EINVAL);
        acs_session_table_free(t);
}

TEST(limits_per_user_and_total)
{
        acs_session_table *t = table(5, 2, 60 * SEC);
        uint8_t tok[ACS_PROTO_TOKEN_SIZE];
        acs_session *s, *first = NULL;
        CHECK_INT(acs_session_add(t, "a", 1, 0, 0, tok, &first), 0);
        CHECK_INT(acs_session_add(t, "a", 1, 0, 0, tok, &s), 0);
        CHECK_INT(acs_session_table_can_add(t, "a"), -EAGAIN);
        CHECK_INT(acs_session_add(t, "a", 1, 0, 0, tok, &s), -EAGAIN);
        CHECK_INT(acs_session_add(t, "b", 1, 0, 0, tok, &s), 0);
        CHECK_INT(acs_session_add(t, "b", 1, 0, 0, tok, &s), 0);
        CHECK_INT(acs_session_add(t, "c", 1, 0, 0, tok, &s), 0);
        CHECK_INT(acs_session_table_can_add(t, "d"), -EAGAIN); /* total 5 */
        CHECK_INT(acs_session_add(t, "d", 1, 0, 0, tok, &s), -EAGAIN);
        acs_session_remove(t, first);
        CHECK_INT(acs_session_table_can_add(t, "a"), 0);
        CHECK_INT(acs_session_add(t, "d", 1, 0, 0, tok, &s), 0);
        CHECK_INT(acs_session_count(t), 5);
        acs_session_table_free(t);
}

static void on_expire(void *ud, acs_session *s)
{
        int *n = ud;
        (*n)++;
        (void)s;
}

static int count_fn(void *ud, acs_session *s)
{
        (*(int *)ud)++;
        (void)s;
        return 0;
}

TEST(expiry_and_holders)
{
        acs_session_table *t = table(100, 100, 10 * SEC);
        uint8_t ta[ACS_PROTO_TOKEN_SIZE], tb[ACS_PROTO_TOKEN_SIZE], tc[ACS_PROTO_TOKEN_SIZE];
        acs_session *a, *b, *c, *f;
        CHECK_INT(acs_session_add(t, "u", 1, 100 * SEC, 0, ta, &a), 0);
        CHECK_INT(acs_session_add(t, "u", 1, 100 * SEC, 0, tb, &b), 0);
        CHECK_INT(acs_session_add(t, "v", 1, 105 * SEC, 0, tc, &c), 0);
        b->holders = 1; /* held by a connection: never expires */
        CHECK_INT(acs_session_find(t, ta, 109 * SEC, &f), 0);
        /* expired but not yet swept: not found all the same */
        CHECK_INT(acs_session_find(t, ta, 110 * SEC, &f), -ENOENT);
        int n = 0;
        CHECK_INT(acs_session_expire(t, 110 * SEC, on_expire, &n), 1);
        CHECK_INT(n, 1);
        CHECK_INT(acs_session_count(t), 2);
        CHECK_INT(acs_session_find(t, tb, 1000 * SEC, &f), 0);
        CHECK_INT(acs_session_find(t, tc, 114 * SEC, &f), 0);
        f->last_used = 114 * SEC; /* used: lives on */
        CHECK_INT(acs_session_expire(t, 120 * SEC, on_expire, &n), 0);
        CHECK_INT(acs_session_expire(t, 124 * SEC, on_expire, &n), 1);
        CHECK_INT(n, 2);
        b->holders = 0;
        b->last_used = 500 * SEC;
        CHECK_INT(acs_session_expire(t, 509 * SEC, NULL, NULL), 0);
        CHECK_INT(acs_session_expire(t, 510 * SEC, NULL, NULL), 1);
        CHECK_INT(acs_session_count(t), 0);
        CHECK_INT(acs_session_count_user(t, "u"), 0);
        int cnt = 0;
        CHECK_INT(acs_session_foreach(t, count_fn, &cnt), 0);
        CHECK_INT(cnt, 0);
        acs_session_table_free(t);
}

TEST(many_sessions)
{
        acs_session_table *t = table(20000, 20000, 60 * SEC);
        static uint8_t toks[10000][ACS_PROTO_TOKEN_SIZE];
        acs_session *ss[10000], *f;
        for (int i = 0; i < 10000; i++)
                CHECK_INT(acs_session_add(t, i % 2 ? "odd" : "even", 1, 0, 0, toks[i], &ss[i]), 0);
        int bad = 0;
        for (int i = 0; i < 10000; i++)
                if (acs_session_find(t, toks[i], 1, &f) != 0 || f != ss[i])
                        bad++;
        CHECK_INT(bad, 0);
        int cnt = 0;
        CHECK_INT(acs_session_foreach(t, count_fn, &cnt), 0);
        CHECK_INT(cnt, 10000);
        CHECK_INT(acs_session_count_user(t, "odd"), 5000);
        acs_session_table_free(t);
}

TEST(ratelimit_delays_grow_and_cap)
{
        acs_ratelimit *rl = NULL;
        CHECK_INT(acs_ratelimit_new(3, 8 * SEC, 900 * SEC, 100, &rl), 0);
        uint64_t now = 1000 * SEC, retry = 0;
        /* three free failures */
        for (int i = 0; i < 3; i++) {
                CHECK_INT(acs_ratelimit_check(rl, "bob", 1000, now, &retry), 0);
                CHECK_INT(acs_ratelimit_fail(rl, "bob", 1000, now), 0);
        }
        CHECK_INT(acs_ratelimit_failures(rl, ACS_RL_USER, "bob", 0, now), 3);
        CHECK_INT(acs_ratelimit_failures(rl, ACS_RL_UID, NULL, 1000, now), 3);
        /* then 1, 2, 4, 8, 8 s */
        static const uint64_t want[] = { 1, 2, 4, 8, 8 };
        for (size_t i = 0; i < ACS_ARRAY_SIZE(want); i++) {
                CHECK_INT(acs_ratelimit_check(rl, "bob", 1000, now, &retry), 0);
                uint64_t d = acs_ratelimit_fail(rl, "bob", 1000, now);
                CHECK_INT(d, want[i] * SEC);
                /* meanwhile new attempts for bob are refused, from any uid; other users
                 * from uid 1000 may still try (their failures are delayed: see below) */
                CHECK_INT(acs_ratelimit_check(rl, "bob", 1000, now + 1, &retry), -EAGAIN);
                CHECK_INT(retry, want[i] * SEC - 1);
                CHECK_INT(acs_ratelimit_check(rl, "bob", 2000, now + 1, &retry), -EAGAIN);
                CHECK_INT(acs_ratelimit_check(rl, "carol", 1000, now + 1, &retry), 0);
                CHECK_INT(acs_ratelimit_check(rl, "carol", 2000, now + 1, &retry), 0);
                now += want[i] * SEC;
        }
        /* uid 1000's count is past the limit: carol's first failure from it is delayed
         * (the cap), carol's first from another uid is not */
        CHECK_INT(acs_ratelimit_fail(rl, "carol", 1000, now), 8 * SEC);
        CHECK_INT(acs_ratelimit_fail(rl, "dave", 2000, now), 0);
        acs_ratelimit_free(rl);
}

TEST(ratelimit_success_resets_user_not_uid)
{
        acs_ratelimit *rl = NULL;
        CHECK_INT(acs_ratelimit_new(2, 60 * SEC, 900 * SEC, 100, &rl), 0);
        uint64_t now = 5 * SEC, retry;
        acs_ratelimit_fail(rl, "bob", 7, now);
        acs_ratelimit_fail(rl, "bob", 7, now);
        CHECK_INT(acs_ratelimit_fail(rl, "bob", 7, now), 1 * SEC);
        now += 1 * SEC;
        acs_ratelimit_success(rl, "bob");
        CHECK_INT(acs_ratelimit_failures(rl, ACS_RL_USER, "bob", 0, now), 0);
        CHECK_INT(acs_ratelimit_failures(rl, ACS_RL_UID, NULL, 7, now), 3);
        /* the uid's next failure is delayed still (2 s) */
        CHECK_INT(acs_ratelimit_fail(rl, "mallory", 7, now), 2 * SEC);
        CHECK_INT(acs_ratelimit_check(rl, "bob", 8, now, &retry), 0);
        acs_ratelimit_free(rl);
}

TEST(ratelimit_forgets_and_bounds_keys)
{
        acs_ratelimit *rl = NULL;
        CHECK_INT(acs_ratelimit_new(1, 60 * SEC, 100 * SEC, 10, &rl), 0);
        uint64_t now = 1 * SEC, retry;
        acs_ratelimit_fail(rl, "x", 1, now);
        CHECK_INT(acs_ratelimit_fail(rl, "x", 1, now), 1 * SEC);
        CHECK_INT(acs_ratelimit_failures(rl, ACS_RL_USER, "x", 0, now + 99 * SEC), 2);
        CHECK_INT(acs_ratelimit_failures(rl, ACS_RL_USER, "x", 0, now + 100 * SEC), 0);
        CHECK_INT(acs_ratelimit_check(rl, "x", 1, now + 100 * SEC, &retry), 0);
        /* many users: never more than 10 keys */
        char name[32];
        for (int i = 0; i < 100; i++) {
                snprintf(name, sizeof(name), "user%d", i);
                acs_ratelimit_fail(rl, name, (uid_t)(100 + i), now + (uint64_t)i);
                CHECK(acs_ratelimit_keys(rl) <= 10);
        }
        /* the newest are kept */
        CHECK_INT(acs_ratelimit_failures(rl, ACS_RL_USER, "user99", 0, now + 200), 1);
        acs_ratelimit_free(rl);
}


__attribute__((constructor(101))) static void init_sodium(void)
{
        if (sodium_init() < 0)
                abort();
}

TEST_MAIN()
