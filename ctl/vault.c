/* SPDX-License-Identifier: MIT */
/* The credential vault: per-user passwords sealed with crypto_secretbox under a locked, guarded key. */
#include "vault.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include <sodium.h>

#include "acs/util.h"

#define KEY_BYTES crypto_secretbox_KEYBYTES
#define NONCE_BYTES crypto_secretbox_NONCEBYTES
#define MAC_BYTES crypto_secretbox_MACBYTES

static const char kdf_label[] = "acs-vault-v1";

struct entry {
        char *user;     /* malloc'd */
        uint8_t *box;   /* malloc'd: nonce || ciphertext (MAC + secret) */
        size_t box_len;
};

struct acs_vault {
        uint8_t *key; /* sodium_malloc'd KEY_BYTES, PROT_NONE while idle */
        struct entry *entries;
        size_t n, cap;
};

int acs_vault_new(acs_vault **ret)
{
        acs_vault *v = calloc(1, sizeof(*v));
        if (!v)
                return -ENOMEM;
        v->key = sodium_malloc(KEY_BYTES);
        if (!v->key) {
                free(v);
                return -ENOMEM;
        }
        crypto_secretbox_keygen(v->key);
        sodium_mprotect_noaccess(v->key);
        *ret = v;
        return 0;
}

static void entry_clear(struct entry *e)
{
        if (e->user)
                sodium_memzero(e->user, strlen(e->user));
        free(e->user);
        if (e->box)
                sodium_memzero(e->box, e->box_len);
        free(e->box);
        *e = (struct entry){ 0 };
}

void acs_vault_wipe_all(acs_vault *v)
{
        for (size_t i = 0; i < v->n; i++)
                entry_clear(&v->entries[i]);
        v->n = 0;
}

acs_vault *acs_vault_free(acs_vault *v)
{
        if (!v)
                return NULL;
        acs_vault_wipe_all(v);
        free(v->entries);
        sodium_free(v->key); /* lifts the protection itself, wipes, unmaps */
        free(v);
        return NULL;
}

size_t acs_vault_count(const acs_vault *v)
{
        return v->n;
}

static struct entry *find(acs_vault *v, const char *user)
{
        for (size_t i = 0; i < v->n; i++)
                if (strcmp(v->entries[i].user, user) == 0)
                        return &v->entries[i];
        return NULL;
}

static bool user_ok(const char *user)
{
        if (!user)
                return false;
        size_t n = strnlen(user, ACS_VAULT_USER_MAX + 1);
        return n >= 1 && n <= ACS_VAULT_USER_MAX;
}

/* The per-user key; needs the vault key readable. */
static void subkey(const acs_vault *v, const char *user, uint8_t out[KEY_BYTES])
{
        crypto_generichash_state st;
        crypto_generichash_init(&st, v->key, KEY_BYTES, KEY_BYTES);
        crypto_generichash_update(&st, (const uint8_t *)kdf_label, sizeof(kdf_label)); /* with its NUL */
        crypto_generichash_update(&st, (const uint8_t *)user, strlen(user));
        crypto_generichash_final(&st, out, KEY_BYTES);
        sodium_memzero(&st, sizeof(st));
}

int acs_vault_put(acs_vault *v, const char *user, const void *secret, size_t len)
{
        if (!user_ok(user) || !secret || len == 0 || len > ACS_VAULT_SECRET_MAX)
                return -EINVAL;
        size_t box_len = NONCE_BYTES + MAC_BYTES + len;
        _cleanup_free_ uint8_t *box = malloc(box_len);
        _cleanup_free_ char *name = strdup(user);
        if (!box || !name)
                return -ENOMEM;
        struct entry *e = find(v, user);
        if (!e && ACS_GROW(v->entries, v->cap, v->n, 8) < 0)
                return -ENOMEM;

        uint8_t k[KEY_BYTES];
        randombytes_buf(box, NONCE_BYTES);
        sodium_mprotect_readonly(v->key);
        subkey(v, user, k);
        sodium_mprotect_noaccess(v->key);
        crypto_secretbox_easy(box + NONCE_BYTES, secret, len, box, k);
        sodium_memzero(k, sizeof(k));

        if (e)
                entry_clear(e);
        else
                e = &v->entries[v->n++];
        e->user = TAKE_PTR(name);
        e->box = TAKE_PTR(box);
        e->box_len = box_len;
        return 0;
}

int acs_vault_get(acs_vault *v, const char *user, char **ret_secret, size_t *ret_len)
{
        if (!user_ok(user))
                return -EINVAL;
        struct entry *e = find(v, user);
        if (!e)
                return -ENOENT;
        size_t len = e->box_len - NONCE_BYTES - MAC_BYTES;
        char *out = sodium_malloc(len + 1);
        if (!out)
                return -ENOMEM;
        uint8_t k[KEY_BYTES];
        sodium_mprotect_readonly(v->key);
        subkey(v, user, k);
        sodium_mprotect_noaccess(v->key);
        int r = crypto_secretbox_open_easy((uint8_t *)out, e->box + NONCE_BYTES, e->box_len - NONCE_BYTES,
                                           e->box, k);
        sodium_memzero(k, sizeof(k));
        if (r != 0) {
                sodium_free(out);
                return -EBADMSG;
        }
        out[len] = 0;
        *ret_secret = out;
        *ret_len = len;
        return 0;
}

int acs_vault_delete(acs_vault *v, const char *user)
{
        if (!user_ok(user))
                return -EINVAL;
        struct entry *e = find(v, user);
        if (!e)
                return -ENOENT;
        entry_clear(e);
        size_t i = (size_t)(e - v->entries);
        memmove(e, e + 1, (v->n - i - 1) * sizeof(*e));
        v->n--;
        return 0;
}

int acs_vault_nodump(void)
{
        if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
                return -errno;
        int d = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
        if (d < 0)
                return -errno;
        return d == 0 ? 0 : -EPERM;
}
