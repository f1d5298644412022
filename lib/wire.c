/* SPDX-License-Identifier: MIT */
/* Sealed bus messages (sign / box / verify / replay check) and key handover, on libsodium. */
#include "acs/wire.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "acs/util.h"

static const uint8_t wire_magic[4] = { 'A', 'C', 'S', 'W' };
static const uint8_t handover_magic[4] = { 'A', 'C', 'S', 'K' };

#define AD_SIZE (ACS_WIRE_HEADER_SIZE + ACS_WIRE_NONCE_SIZE)

struct purpose_info {
        const char *name;
        enum acs_wire_kind kind;
        bool to_acsd;
};

#define P(x, k, t) [ACS_WIRE_P_##x] = { #x, ACS_WIRE_KIND_##k, t }
static const struct purpose_info purposes[_ACS_WIRE_P_MAX] = {
        P(AGENT_HELLO, SIGNED, true),
        P(CRED_REQUEST, SIGNED, true),
        P(CRED, BOXED, false),
        P(LOGIN_RESULT, SIGNED, true),
        P(SYNC_NOW, SIGNED, false),
        P(PROGRESS, SIGNED, true),
        P(CHANGE, SIGNED, true),
        P(STOP, SIGNED, false),
        P(STATUS, SIGNED, true),
};
#undef P

const char *acs_wire_purpose_name(int p)
{
        if (p <= ACS_WIRE_P_INVALID || p >= _ACS_WIRE_P_MAX)
                return NULL;
        return purposes[p].name;
}

int acs_wire_purpose_info(int p, enum acs_wire_kind *ret_kind, bool *ret_to_acsd)
{
        if (!acs_wire_purpose_name(p))
                return -EINVAL;
        *ret_kind = purposes[p].kind;
        *ret_to_acsd = purposes[p].to_acsd;
        return 0;
}

int acs_wire_init(void)
{
        return sodium_init() < 0 ? -EIO : 0;
}

void *acs_secret_free(void *p)
{
        sodium_free(p);
        return NULL;
}

/* ---- byte order ---- */

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v)
{
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t)(v >> (24 - 8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p)
{
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

/* ---- keys ---- */

struct acs_wire_keys {
        uint8_t sign_sk[crypto_sign_SECRETKEYBYTES];
        uint8_t sign_pk[crypto_sign_PUBLICKEYBYTES];
        uint8_t box_sk[crypto_box_SECRETKEYBYTES];
        uint8_t box_pk[crypto_box_PUBLICKEYBYTES];
};

_Static_assert(crypto_sign_SECRETKEYBYTES == 64 && crypto_sign_PUBLICKEYBYTES == 32, "ed25519");
_Static_assert(crypto_box_SECRETKEYBYTES == 32 && crypto_box_PUBLICKEYBYTES == 32, "x25519");
_Static_assert(crypto_sign_BYTES == ACS_WIRE_SIG_SIZE, "signature size");
_Static_assert(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES == ACS_WIRE_NONCE_SIZE, "nonce");
_Static_assert(crypto_aead_xchacha20poly1305_ietf_ABYTES == ACS_WIRE_MAC_SIZE, "mac");
_Static_assert(crypto_box_BEFORENMBYTES == crypto_aead_xchacha20poly1305_ietf_KEYBYTES, "key");

static acs_wire_keys *keys_alloc(void)
{
        acs_wire_keys *k = sodium_malloc(sizeof(*k));
        if (k)
                sodium_memzero(k, sizeof(*k));
        return k;
}

int acs_wire_keys_new(acs_wire_keys **ret)
{
        acs_wire_keys *k = keys_alloc();
        if (!k)
                return -ENOMEM;
        crypto_sign_keypair(k->sign_pk, k->sign_sk);
        crypto_box_keypair(k->box_pk, k->box_sk);
        *ret = k;
        return 0;
}

acs_wire_keys *acs_wire_keys_free(acs_wire_keys *k)
{
        sodium_free(k);
        return NULL;
}

void acs_wire_keys_public(const acs_wire_keys *k, acs_wire_pub *ret)
{
        memcpy(ret->sign_pk, k->sign_pk, sizeof(ret->sign_pk));
        memcpy(ret->box_pk, k->box_pk, sizeof(ret->box_pk));
}

/* ---- handover ---- */

int acs_wire_handover_write(int fd, uint32_t child_id, const acs_wire_keys *child,
                            const acs_wire_pub *acsd_pub)
{
        _cleanup_secret_ uint8_t *buf = sodium_malloc(ACS_WIRE_HANDOVER_SIZE);
        if (!buf)
                return -ENOMEM;
        uint8_t *p = buf;
        memcpy(p, handover_magic, 4), p += 4;
        *p++ = ACS_WIRE_VERSION, *p++ = 0, *p++ = 0, *p++ = 0;
        put32(p, child_id), p += 4;
        memcpy(p, child->sign_sk, 64), p += 64;
        memcpy(p, child->box_sk, 32), p += 32;
        memcpy(p, acsd_pub->sign_pk, 32), p += 32;
        memcpy(p, acsd_pub->box_pk, 32), p += 32;

        size_t done = 0;
        while (done < ACS_WIRE_HANDOVER_SIZE) {
                ssize_t n = write(fd, buf + done, ACS_WIRE_HANDOVER_SIZE - done);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO;
                done += (size_t)n;
        }
        return 0;
}

int acs_wire_handover_read(int fd, uint32_t *ret_child_id, acs_wire_keys **ret_keys,
                           acs_wire_pub *ret_acsd_pub)
{
        /* One spare byte so that a longer blob is noticed. */
        enum { CAP = ACS_WIRE_HANDOVER_SIZE + 1 };
        _cleanup_secret_ uint8_t *buf = sodium_malloc(CAP);
        if (!buf)
                return -ENOMEM;
        size_t got = 0;
        for (;;) {
                ssize_t n = read(fd, buf + got, CAP - got);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                got += (size_t)n;
                if (got == CAP)
                        return -EBADMSG;
        }
        if (got != ACS_WIRE_HANDOVER_SIZE || memcmp(buf, handover_magic, 4) != 0 ||
            buf[4] != ACS_WIRE_VERSION || buf[5] || buf[6] || buf[7])
                return -EBADMSG;
        uint32_t id = get32(buf + 8);
        if (id == ACS_WIRE_ID_ACSD)
                return -EBADMSG;

        _cleanup_wire_keys_ acs_wire_keys *k = keys_alloc();
        if (!k)
                return -ENOMEM;
        const uint8_t *p = buf + 12;
        memcpy(k->sign_sk, p, 64), p += 64;
        memcpy(k->box_sk, p, 32), p += 32;
        crypto_sign_ed25519_sk_to_pk(k->sign_pk, k->sign_sk);
        if (crypto_scalarmult_base(k->box_pk, k->box_sk) != 0)
                return -EBADMSG;
        /* An Ed25519 secret key carries its public key; both halves must agree. */
        uint8_t seed[32], pk[32], sk[64];
        crypto_sign_ed25519_sk_to_seed(seed, k->sign_sk);
        crypto_sign_seed_keypair(pk, sk, seed);
        int same = sodium_memcmp(sk, k->sign_sk, 64);
        sodium_memzero(seed, sizeof(seed));
        sodium_memzero(sk, sizeof(sk));
        if (same != 0)
                return -EBADMSG;

        memcpy(ret_acsd_pub->sign_pk, p, 32), p += 32;
        memcpy(ret_acsd_pub->box_pk, p, 32);
        *ret_child_id = id;
        *ret_keys = TAKE_PTR(k);
        return 0;
}

/* ---- endpoints ---- */

struct peer {
        uint32_t id;
        acs_wire_pub pub;
        uint64_t last_rx; /* last counter accepted; 0 = none yet */
};

struct acs_wire {
        uint32_t self_id;
        acs_wire_keys *keys; /* sodium_malloc'd */
        uint64_t tx_counter; /* last counter sent */
        struct peer *peers;  /* sorted by id */
        size_t n_peers, cap_peers;
};

int acs_wire_new(uint32_t self_id, acs_wire_keys **keys, acs_wire **ret)
{
        if (!keys || !*keys)
                return -EINVAL;
        acs_wire *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->self_id = self_id;
        w->keys = TAKE_PTR(*keys);
        *ret = w;
        return 0;
}

acs_wire *acs_wire_free(acs_wire *w)
{
        if (!w)
                return NULL;
        acs_wire_keys_free(w->keys);
        free(w->peers);
        free(w);
        return NULL;
}

static struct peer *peer_find(acs_wire *w, uint32_t id, size_t *ret_pos)
{
        size_t lo = 0, hi = w->n_peers;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (w->peers[mid].id == id)
                        return &w->peers[mid];
                if (w->peers[mid].id < id)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        if (ret_pos)
                *ret_pos = lo;
        return NULL;
}

int acs_wire_add_peer(acs_wire *w, uint32_t id, const acs_wire_pub *pub)
{
        if (id == w->self_id)
                return -EINVAL;
        size_t pos = 0;
        struct peer *p = peer_find(w, id, &pos);
        if (p) {
                p->pub = *pub;
                p->last_rx = 0;
                return 0;
        }
        if (w->n_peers == w->cap_peers) {
                size_t cap = w->cap_peers ? w->cap_peers * 2 : 4;
                struct peer *np = reallocarray(w->peers, cap, sizeof(*np));
                if (!np)
                        return -ENOMEM;
                w->peers = np;
                w->cap_peers = cap;
        }
        memmove(&w->peers[pos + 1], &w->peers[pos], (w->n_peers - pos) * sizeof(*w->peers));
        w->peers[pos] = (struct peer){ .id = id, .pub = *pub };
        w->n_peers++;
        return 0;
}

int acs_wire_remove_peer(acs_wire *w, uint32_t id)
{
        struct peer *p = peer_find(w, id, NULL);
        if (!p)
                return -ENOENT;
        size_t pos = (size_t)(p - w->peers);
        memmove(p, p + 1, (w->n_peers - pos - 1) * sizeof(*p));
        w->n_peers--;
        return 0;
}

/* Whether this party may send (send=true) or receive a message of purpose p with peer. */
static bool direction_ok(uint32_t sender, uint32_t recipient, bool to_acsd)
{
        if (to_acsd)
                return recipient == ACS_WIRE_ID_ACSD && sender != ACS_WIRE_ID_ACSD;
        return sender == ACS_WIRE_ID_ACSD && recipient != ACS_WIRE_ID_ACSD;
}

int acs_wire_seal(acs_wire *w, uint32_t to, enum acs_wire_purpose purpose, const void *payload,
                  size_t len, uint8_t **ret_msg, size_t *ret_len)
{
        enum acs_wire_kind kind;
        bool to_acsd;
        if (acs_wire_purpose_info((int)purpose, &kind, &to_acsd) < 0 ||
            len > ACS_WIRE_PAYLOAD_MAX || (len && !payload) ||
            !direction_ok(w->self_id, to, to_acsd))
                return -EINVAL;
        struct peer *p = peer_find(w, to, NULL);
        if (!p)
                return -ENOENT;
        if (w->tx_counter == UINT64_MAX)
                return -EOVERFLOW;

        size_t size = ACS_WIRE_HEADER_SIZE + len +
                      (kind == ACS_WIRE_KIND_SIGNED ? ACS_WIRE_SIG_SIZE
                                                    : ACS_WIRE_NONCE_SIZE + ACS_WIRE_MAC_SIZE);
        _cleanup_free_ uint8_t *m = malloc(size);
        if (!m)
                return -ENOMEM;
        uint64_t counter = w->tx_counter + 1;
        memcpy(m, wire_magic, 4);
        m[4] = ACS_WIRE_VERSION;
        m[5] = (uint8_t)kind;
        put16(m + 6, (uint16_t)purpose);
        put32(m + 8, w->self_id);
        put32(m + 12, to);
        put64(m + 16, counter);
        put32(m + 24, (uint32_t)len);

        if (kind == ACS_WIRE_KIND_SIGNED) {
                if (len)
                        memcpy(m + ACS_WIRE_HEADER_SIZE, payload, len);
                crypto_sign_detached(m + ACS_WIRE_HEADER_SIZE + len, NULL, m,
                                     ACS_WIRE_HEADER_SIZE + len, w->keys->sign_sk);
        } else {
                uint8_t *nonce = m + ACS_WIRE_HEADER_SIZE;
                randombytes_buf(nonce, ACS_WIRE_NONCE_SIZE);
                uint8_t key[crypto_box_BEFORENMBYTES];
                if (crypto_box_beforenm(key, p->pub.box_pk, w->keys->box_sk) != 0) {
                        sodium_memzero(key, sizeof(key));
                        return -EINVAL;
                }
                crypto_aead_xchacha20poly1305_ietf_encrypt(m + AD_SIZE, NULL, payload, len, m,
                                                           AD_SIZE, NULL, nonce, key);
                sodium_memzero(key, sizeof(key));
        }
        w->tx_counter = counter;
        *ret_msg = TAKE_PTR(m);
        *ret_len = size;
        return 0;
}

void acs_wire_msg_clear(acs_wire_msg *m)
{
        if (!m)
                return;
        if (m->secret) {
                sodium_free(m->payload);
        } else if (m->payload) {
                sodium_memzero(m->payload, m->len);
                free(m->payload);
        }
        *m = (acs_wire_msg){ 0 };
}

#define REJECT(err, why)                   \
        do {                               \
                if (error_r)               \
                        *error_r = (why);  \
                return (err);              \
        } while (0)

int acs_wire_open(acs_wire *w, const uint8_t *msg, size_t len, uint64_t accept, acs_wire_msg *ret,
                  const char **error_r)
{
        if (!msg || len < ACS_WIRE_HEADER_SIZE)
                REJECT(-EBADMSG, "truncated header");
        if (memcmp(msg, wire_magic, 4) != 0)
                REJECT(-EBADMSG, "bad magic");
        if (msg[4] != ACS_WIRE_VERSION)
                REJECT(-EPROTONOSUPPORT, "unsupported version");
        uint8_t kind = msg[5];
        uint16_t purpose = get16(msg + 6);
        uint32_t sender = get32(msg + 8), recipient = get32(msg + 12);
        uint64_t counter = get64(msg + 16);
        uint32_t plen = get32(msg + 24);

        if (kind != ACS_WIRE_KIND_SIGNED && kind != ACS_WIRE_KIND_BOXED)
                REJECT(-EPERM, "unknown kind");
        enum acs_wire_kind want_kind;
        bool to_acsd;
        if (acs_wire_purpose_info(purpose, &want_kind, &to_acsd) < 0)
                REJECT(-EPERM, "unknown purpose");
        if (kind != want_kind)
                REJECT(-EPERM, "kind does not match purpose");
        if (purpose >= 64 || !(accept & ACS_WIRE_MASK(purpose)))
                REJECT(-EPERM, "purpose not expected");
        if (recipient != w->self_id)
                REJECT(-EPERM, "wrong recipient");
        if (!direction_ok(sender, recipient, to_acsd))
                REJECT(-EPERM, "wrong direction for purpose");
        struct peer *p = peer_find(w, sender, NULL);
        if (!p)
                REJECT(-EPERM, "unknown sender");
        if (plen > ACS_WIRE_PAYLOAD_MAX)
                REJECT(-EBADMSG, "payload length too big");
        size_t want = ACS_WIRE_HEADER_SIZE + plen +
                      (kind == ACS_WIRE_KIND_SIGNED ? ACS_WIRE_SIG_SIZE
                                                    : ACS_WIRE_NONCE_SIZE + ACS_WIRE_MAC_SIZE);
        if (len < want)
                REJECT(-EBADMSG, "truncated");
        if (len > want)
                REJECT(-EBADMSG, "trailing bytes");
        if (counter == 0)
                REJECT(-EBADMSG, "counter zero");

        _cleanup_free_ uint8_t *clear = NULL;
        _cleanup_secret_ uint8_t *secret = NULL;
        uint8_t *out;
        if (kind == ACS_WIRE_KIND_SIGNED) {
                if (crypto_sign_verify_detached(msg + ACS_WIRE_HEADER_SIZE + plen, msg,
                                                ACS_WIRE_HEADER_SIZE + plen, p->pub.sign_pk) != 0)
                        REJECT(-EKEYREJECTED, "bad signature");
                out = clear = malloc((size_t)plen + 1);
                if (!out)
                        return -ENOMEM;
                memcpy(out, msg + ACS_WIRE_HEADER_SIZE, plen);
        } else {
                out = secret = sodium_malloc((size_t)plen + 1);
                if (!out)
                        return -ENOMEM;
                uint8_t key[crypto_box_BEFORENMBYTES];
                if (crypto_box_beforenm(key, p->pub.box_pk, w->keys->box_sk) != 0) {
                        sodium_memzero(key, sizeof(key));
                        REJECT(-EKEYREJECTED, "bad peer key");
                }
                int r = crypto_aead_xchacha20poly1305_ietf_decrypt(
                        out, NULL, NULL, msg + AD_SIZE, (unsigned long long)plen + ACS_WIRE_MAC_SIZE,
                        msg, AD_SIZE, msg + ACS_WIRE_HEADER_SIZE, key);
                sodium_memzero(key, sizeof(key));
                if (r != 0)
                        REJECT(-EKEYREJECTED, "authentication failed");
        }
        /* Only an authentic message may move the counter. */
        if (counter <= p->last_rx)
                REJECT(-ESTALE, "replayed or reordered counter");
        p->last_rx = counter;
        out[plen] = 0;
        *ret = (acs_wire_msg){
                .sender = sender,
                .purpose = (enum acs_wire_purpose)purpose,
                .counter = counter,
                .payload = kind == ACS_WIRE_KIND_BOXED ? TAKE_PTR(secret) : TAKE_PTR(clear),
                .len = plen,
                .secret = kind == ACS_WIRE_KIND_BOXED,
        };
        return 0;
}
