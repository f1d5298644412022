/* SPDX-License-Identifier: MIT */
/* acsd's credential vault: users' IMAP passwords, only in memory, encrypted under a key in locked memory. */
#pragma once

#include <stddef.h>

/*
 * Each entry is one user's password, encrypted with crypto_secretbox (XSalsa20-Poly1305,
 * fresh random nonce per put) under a per-user key derived from the vault key:
 * BLAKE2b-256(key = vault key, "acs-vault-v1" || 0 || user). So an entry moved to another
 * user's slot does not open. The vault key lives in sodium_malloc'd memory (guard pages,
 * mlock'ed, excluded from core dumps) that is PROT_NONE except during put and get.
 * Plaintext never rests anywhere but in what acs_vault_get() hands out. Not thread-safe.
 */

#define ACS_VAULT_USER_MAX 255
#define ACS_VAULT_SECRET_MAX 4096

typedef struct acs_vault acs_vault;

/* New empty vault with a fresh random key. Needs acs_wire_init() (sodium_init) first.
 * *ret owned by caller. 0, -ENOMEM. */
int acs_vault_new(acs_vault **ret);
/* Wipes every entry and the key, frees; NULL is fine; returns NULL. */
acs_vault *acs_vault_free(acs_vault *v);
static inline void acs_vault_freep(acs_vault **v) { acs_vault_free(*v); }
#define _cleanup_vault_ __attribute__((cleanup(acs_vault_freep)))

/*
 * Stores (or replaces) user's secret: len 1..ACS_VAULT_SECRET_MAX bytes, any bytes; user
 * 1..ACS_VAULT_USER_MAX bytes without NUL. The caller keeps (and wipes) its copy.
 * 0, -EINVAL, -ENOMEM.
 */
int acs_vault_put(acs_vault *v, const char *user, const void *secret, size_t len);

/*
 * Hands out user's secret: *ret_secret is sodium_malloc'd, NUL-terminated one past
 * *ret_len; the caller owns it and frees it with acs_secret_free() (acs/wire.h), which
 * wipes. 0, -ENOENT, -ENOMEM, -EBADMSG (entry does not authenticate: memory corrupted).
 */
int acs_vault_get(acs_vault *v, const char *user, char **ret_secret, size_t *ret_len);

/* Forgets user's entry (wiped). 0 or -ENOENT. */
int acs_vault_delete(acs_vault *v, const char *user);
/* Forgets every entry (wiped); the key stays. */
void acs_vault_wipe_all(acs_vault *v);
/* Number of entries. */
size_t acs_vault_count(const acs_vault *v);

/*
 * Makes this process non-dumpable (prctl PR_SET_DUMPABLE 0: no core dumps, no ptrace
 * attach by same-uid processes, /proc/self owned by root) and checks that it took.
 * The kernel sets the flag back to the default on every change of uid/gid/capabilities
 * (setuid, setresuid, setgroups, capset, execve of a set-id program): CALL IT AGAIN AFTER
 * EVERY PRIVILEGE CHANGE. 0, or -errno of prctl, or -EPERM if it did not take.
 */
int acs_vault_nodump(void);
