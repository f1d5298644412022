/* SPDX-License-Identifier: MIT */
/* acsd's session tokens (stored only as keyed hashes, looked up in constant time) and its failed-login rate limiter. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "protocol.h"

/*
 * Pure bookkeeping for ctl/session.c, no I/O and no clock: every call takes `now`
 * (monotonic microseconds), so the unit tests (ctl/test-session.c) drive time.
 * Not thread-safe (acsd is one thread). Owner: helper acsd.
 */

/* ---- sessions ---- */

/*
 * A session: made by OPEN, found again by RESUME <token>. The token itself is never
 * stored: the table keeps BLAKE2b-256(key = a random table key, token), compares it with
 * sodium_memcmp, and indexes by its first bytes, so neither memory nor lookup timing
 * tells anything about a token.
 */
typedef struct acs_session {
        uint8_t hash[32];     /* keyed hash of the token */
        char user[ACS_PROTO_USER_MAX + 1];
        uid_t uid;            /* peer uid that opened it; only that uid may RESUME it */
        uint64_t id;          /* unique while acsd runs (for logs, never a secret) */
        int64_t created;      /* unix time (for WHO) */
        uint64_t last_used;   /* monotonic usec: OPEN, RESUME, or a command on a holder */
        unsigned holders;     /* connections holding it now: it does not expire meanwhile */
        struct acs_session *hnext; /* hash chain */
} acs_session;

typedef struct acs_session_table acs_session_table;

/* New empty table with a fresh random hash key (sodium_init first). 0, -ENOMEM. */
int acs_session_table_new(size_t max_total, size_t max_per_user, uint64_t expiry_usec,
                          acs_session_table **ret);
/* Frees every session (no callback); NULL is fine; returns NULL. */
acs_session_table *acs_session_table_free(acs_session_table *t);

/*
 * Makes a session for user opened by uid: a fresh token in ret_token (the only copy the
 * caller gets: send it to the client and forget it) and the session in *ret (owned by
 * the table). -EAGAIN when max_total or user's max_per_user is reached (checked first:
 * see acs_session_table_can_add), -EINVAL (bad user), -ENOMEM.
 */
int acs_session_add(acs_session_table *t, const char *user, uid_t uid, uint64_t now, int64_t unix_now,
                    uint8_t ret_token[ACS_PROTO_TOKEN_SIZE], acs_session **ret);
/* 0 if a session for user could be added now, -EAGAIN if a limit is reached. */
int acs_session_table_can_add(const acs_session_table *t, const char *user);

/*
 * Finds the session of a token: 0 and *ret, or -ENOENT (unknown, or expired: an expired
 * session is never returned even before acs_session_expire removed it). Does not touch it
 * (the caller sets last_used / holders).
 */
int acs_session_find(acs_session_table *t, const uint8_t token[ACS_PROTO_TOKEN_SIZE], uint64_t now,
                     acs_session **ret);
/* Removes and frees s. */
void acs_session_remove(acs_session_table *t, acs_session *s);
/* Whether s has expired at now (never while held). */
bool acs_session_expired(const acs_session_table *t, const acs_session *s, uint64_t now);

/*
 * Calls fn for each expired session (fn must remove it, or it is removed after fn
 * returns if fn did not). Returns the number removed.
 */
size_t acs_session_expire(acs_session_table *t, uint64_t now, void (*fn)(void *ud, acs_session *s),
                          void *ud);

size_t acs_session_count(const acs_session_table *t);
size_t acs_session_count_user(const acs_session_table *t, const char *user);
/* Iterates all sessions (no changes to the table from fn); stops early when fn returns < 0. */
int acs_session_foreach(acs_session_table *t, int (*fn)(void *ud, acs_session *s), void *ud);

/* ---- failed-login rate limiter ---- */

/*
 * Counts failed logins per key (a user name, or a peer uid) and says how long the answer
 * to the next failure must wait:
 *   failures 1..limit:  no delay;
 *   failure limit+k:    delay min(2^(k-1) s, max_delay) (1 s, 2 s, 4 s, ...);
 * the larger of the user's and the uid's delay applies. After a delayed failure, new
 * attempts for that USER are refused ("ERR limit", from any uid) until the delay has
 * passed. A uid's count only delays its failures' answers: it does not refuse the uid's
 * other attempts, since one uid (a webmail's) may carry the logins of many people, and
 * one of them mistyping must not lock out the others. A key is forgotten `forget` after its last
 * failure (failures decay), or when a login for that user succeeds (user keys only: a
 * peer uid's count is not reset by a success, so an attacker cannot launder its own
 * failures with logins to an account of its own). The table holds at most max_keys keys;
 * when full the oldest key is evicted.
 */
typedef struct acs_ratelimit acs_ratelimit;

enum acs_rl_kind { ACS_RL_USER = 0, ACS_RL_UID = 1 };

int acs_ratelimit_new(unsigned limit, uint64_t max_delay_usec, uint64_t forget_usec, size_t max_keys,
                      acs_ratelimit **ret);
acs_ratelimit *acs_ratelimit_free(acs_ratelimit *rl);

/*
 * Whether an attempt for user (from uid) may go ahead now: 0, or -EAGAIN with
 * *ret_retry_usec = how long until it may (user's delay still running).
 */
int acs_ratelimit_check(acs_ratelimit *rl, const char *user, uid_t uid, uint64_t now,
                        uint64_t *ret_retry_usec);
/*
 * Records a failed login of user from uid; returns how long the failure's answer must be
 * delayed (the larger of the two keys' delays; 0 below the limit).
 */
uint64_t acs_ratelimit_fail(acs_ratelimit *rl, const char *user, uid_t uid, uint64_t now);
/* Records a successful login: forgets user's failures (not uid's). */
void acs_ratelimit_success(acs_ratelimit *rl, const char *user);
/* Failures counted for a key now (0 when unknown or forgotten). */
unsigned acs_ratelimit_failures(acs_ratelimit *rl, enum acs_rl_kind kind, const char *user, uid_t uid,
                                uint64_t now);
size_t acs_ratelimit_keys(const acs_ratelimit *rl);
