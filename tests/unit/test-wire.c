/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/wire.c: sealing, opening, the tampered-message table, key handover. */
#include "test.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sodium.h>

#include "acs/util.h"
#include "acs/wire.h"

#define ALL UINT64_MAX

/*
 * Raw keys the test knows, turned into an acs_wire_keys through the documented handover
 * blob (so the blob layout of docs/credentials.md is checked by hand-writing it here).
 */
struct raw_keys {
        uint8_t sign_pk[32], sign_sk[64], box_pk[32], box_sk[32];
};

static void raw_keys_gen(struct raw_keys *r)
{
        crypto_sign_keypair(r->sign_pk, r->sign_sk);
        crypto_box_keypair(r->box_pk, r->box_sk);
}

static void raw_pub(const struct raw_keys *r, acs_wire_pub *pub)
{
        memcpy(pub->sign_pk, r->sign_pk, 32);
        memcpy(pub->box_pk, r->box_pk, 32);
}

static void handover_blob(uint8_t blob[ACS_WIRE_HANDOVER_SIZE], uint32_t id, const struct raw_keys *child,
                          const struct raw_keys *acsd)
{
        uint8_t *p = blob;
        memcpy(p, "ACSK", 4), p += 4;
        *p++ = 1, *p++ = 0, *p++ = 0, *p++ = 0;
        *p++ = (uint8_t)(id >> 24), *p++ = (uint8_t)(id >> 16), *p++ = (uint8_t)(id >> 8), *p++ = (uint8_t)id;
        memcpy(p, child->sign_sk, 64), p += 64;
        memcpy(p, child->box_sk, 32), p += 32;
        memcpy(p, acsd->sign_pk, 32), p += 32;
        memcpy(p, acsd->box_pk, 32), p += 32;
        CHECK_INT(p - blob, ACS_WIRE_HANDOVER_SIZE);
}

/* Feeds bytes through a pipe into acs_wire_handover_read. */
static int read_blob(const uint8_t *blob, size_t len, uint32_t *id, acs_wire_keys **keys, acs_wire_pub *acsd)
{
        int fds[2];
        if (pipe(fds) < 0)
                return -errno;
        if (len && write(fds[1], blob, len) != (ssize_t)len) {
                close(fds[0]), close(fds[1]);
                return -EIO;
        }
        close(fds[1]);
        int r = acs_wire_handover_read(fds[0], id, keys, acsd);
        close(fds[0]);
        return r;
}

static acs_wire_keys *keys_from_raw(const struct raw_keys *r)
{
        uint8_t blob[ACS_WIRE_HANDOVER_SIZE];
        struct raw_keys dummy;
        raw_keys_gen(&dummy);
        handover_blob(blob, 1, r, &dummy);
        uint32_t id = 0;
        acs_wire_keys *k = NULL;
        acs_wire_pub pub;
        CHECK_INT(read_blob(blob, sizeof(blob), &id, &k, &pub), 0);
        return k;
}

/* A little world: acsd (id 0, raw keys A) and children 1, 2 (raw keys C1, C2). */
struct world {
        struct raw_keys a, c1, c2;
        acs_wire *acsd, *child1, *child2;
};

static void world_init(struct world *w)
{
        CHECK_INT(acs_wire_init(), 0);
        raw_keys_gen(&w->a);
        raw_keys_gen(&w->c1);
        raw_keys_gen(&w->c2);
        acs_wire_keys *ka = keys_from_raw(&w->a), *k1 = keys_from_raw(&w->c1), *k2 = keys_from_raw(&w->c2);
        CHECK_INT(acs_wire_new(ACS_WIRE_ID_ACSD, &ka, &w->acsd), 0);
        CHECK_INT(acs_wire_new(1, &k1, &w->child1), 0);
        CHECK_INT(acs_wire_new(2, &k2, &w->child2), 0);
        CHECK(!ka && !k1 && !k2);
        acs_wire_pub pa, p1, p2;
        raw_pub(&w->a, &pa), raw_pub(&w->c1, &p1), raw_pub(&w->c2, &p2);
        CHECK_INT(acs_wire_add_peer(w->acsd, 1, &p1), 0);
        CHECK_INT(acs_wire_add_peer(w->acsd, 2, &p2), 0);
        CHECK_INT(acs_wire_add_peer(w->child1, ACS_WIRE_ID_ACSD, &pa), 0);
        CHECK_INT(acs_wire_add_peer(w->child2, ACS_WIRE_ID_ACSD, &pa), 0);
}

static void world_done(struct world *w)
{
        w->acsd = acs_wire_free(w->acsd);
        w->child1 = acs_wire_free(w->child1);
        w->child2 = acs_wire_free(w->child2);
        CHECK(!w->acsd && !w->child1 && !w->child2);
}

/* Hand-built messages, written from the layout in docs/credentials.md, not from wire.c. */
static size_t build_raw(uint8_t *m, uint8_t version, uint8_t kind, uint16_t purpose, uint32_t sender,
                        uint32_t recipient, uint64_t counter, const void *payload, uint32_t len,
                        const uint8_t *sign_sk, const uint8_t *box_sk, const uint8_t *box_pk)
{
        memcpy(m, "ACSW", 4);
        m[4] = version;
        m[5] = kind;
        m[6] = (uint8_t)(purpose >> 8), m[7] = (uint8_t)purpose;
        for (int i = 0; i < 4; i++) {
                m[8 + i] = (uint8_t)(sender >> (24 - 8 * i));
                m[12 + i] = (uint8_t)(recipient >> (24 - 8 * i));
                m[24 + i] = (uint8_t)(len >> (24 - 8 * i));
        }
        for (int i = 0; i < 8; i++)
                m[16 + i] = (uint8_t)(counter >> (56 - 8 * i));
        if (kind != ACS_WIRE_KIND_BOXED) {
                memcpy(m + 28, payload, len);
                if (sign_sk)
                        crypto_sign_detached(m + 28 + len, NULL, m, 28 + len, sign_sk);
                else
                        memset(m + 28 + len, 0, 64);
                return 28 + len + 64;
        }
        uint8_t key[32];
        randombytes_buf(m + 28, 24);
        CHECK_INT(crypto_box_beforenm(key, box_pk, box_sk), 0);
        crypto_aead_xchacha20poly1305_ietf_encrypt(m + 52, NULL, payload, len, m, 52, NULL, m + 28, key);
        return 52 + len + 16;
}

TEST(init)
{
        CHECK_INT(acs_wire_init(), 0);
        CHECK_INT(acs_wire_init(), 0);
}

TEST(purpose_table)
{
        static const struct { int p; const char *name; enum acs_wire_kind kind; bool to_acsd; } want[] = {
                { 1, "AGENT_HELLO", ACS_WIRE_KIND_SIGNED, true },
                { 2, "CRED_REQUEST", ACS_WIRE_KIND_SIGNED, true },
                { 3, "CRED", ACS_WIRE_KIND_BOXED, false },
                { 4, "LOGIN_RESULT", ACS_WIRE_KIND_SIGNED, true },
                { 5, "SYNC_NOW", ACS_WIRE_KIND_SIGNED, false },
                { 6, "PROGRESS", ACS_WIRE_KIND_SIGNED, true },
                { 7, "CHANGE", ACS_WIRE_KIND_SIGNED, true },
                { 8, "STOP", ACS_WIRE_KIND_SIGNED, false },
                { 9, "STATUS", ACS_WIRE_KIND_SIGNED, true },
        };
        CHECK_INT(ACS_ARRAY_SIZE(want), _ACS_WIRE_P_MAX - 1);
        for (size_t i = 0; i < ACS_ARRAY_SIZE(want); i++) {
                enum acs_wire_kind k;
                bool t;
                CHECK_STR(acs_wire_purpose_name(want[i].p), want[i].name);
                CHECK_INT(acs_wire_purpose_info(want[i].p, &k, &t), 0);
                CHECK_INT(k, want[i].kind);
                CHECK_INT(t, want[i].to_acsd);
        }
        enum acs_wire_kind k;
        bool t;
        CHECK(acs_wire_purpose_name(0) == NULL);
        CHECK(acs_wire_purpose_name(-1) == NULL);
        CHECK(acs_wire_purpose_name(_ACS_WIRE_P_MAX) == NULL);
        CHECK_INT(acs_wire_purpose_info(0, &k, &t), -EINVAL);
        CHECK_INT(acs_wire_purpose_info(_ACS_WIRE_P_MAX, &k, &t), -EINVAL);
}

TEST(roundtrip_both_kinds)
{
        struct world w;
        world_init(&w);
        uint8_t *m = NULL;
        size_t len = 0;
        acs_wire_msg msg = { 0 };
        const char *why = NULL;

        /* child -> acsd, signed */
        CHECK_INT(acs_wire_seal(w.child1, ACS_WIRE_ID_ACSD, ACS_WIRE_P_CRED_REQUEST, "need", 4, &m, &len), 0);
        CHECK_INT(len, 28 + 4 + 64);
        CHECK_INT(m[5], ACS_WIRE_KIND_SIGNED);
        CHECK_INT(acs_wire_open(w.acsd, m, len, ACS_WIRE_MASK(ACS_WIRE_P_CRED_REQUEST), &msg, &why), 0);
        CHECK_INT(msg.sender, 1);
        CHECK_INT(msg.purpose, ACS_WIRE_P_CRED_REQUEST);
        CHECK_INT(msg.counter, 1);
        CHECK_INT(msg.len, 4);
        CHECK(memcmp(msg.payload, "need", 5) == 0);
        CHECK(!msg.secret);
        acs_wire_msg_clear(&msg);
        CHECK(msg.payload == NULL);
        free(m);

        /* acsd -> child, boxed; the password is nowhere in the sealed bytes */
        static const char pw[] = "s3cr3t p@ss\xff\x01";
        CHECK_INT(acs_wire_seal(w.acsd, 1, ACS_WIRE_P_CRED, pw, sizeof(pw) - 1, &m, &len), 0);
        CHECK_INT(len, 28 + 24 + sizeof(pw) - 1 + 16);
        CHECK_INT(m[5], ACS_WIRE_KIND_BOXED);
        CHECK(memmem(m, len, "s3cr3t", 6) == NULL);
        CHECK_INT(acs_wire_open(w.child1, m, len, ALL, &msg, &why), 0);
        CHECK_INT(msg.sender, ACS_WIRE_ID_ACSD);
        CHECK_INT(msg.len, sizeof(pw) - 1);
        CHECK(memcmp(msg.payload, pw, sizeof(pw)) == 0);
        CHECK(msg.secret);
        acs_wire_msg_clear(&msg);
        free(m);

        /* empty payloads, both kinds */
        CHECK_INT(acs_wire_seal(w.acsd, 2, ACS_WIRE_P_STOP, NULL, 0, &m, &len), 0);
        CHECK_INT(acs_wire_open(w.child2, m, len, ALL, &msg, &why), 0);
        CHECK_INT(msg.len, 0);
        CHECK_INT(msg.payload[0], 0);
        acs_wire_msg_clear(&msg);
        free(m);
        CHECK_INT(acs_wire_seal(w.acsd, 2, ACS_WIRE_P_CRED, NULL, 0, &m, &len), 0);
        CHECK_INT(acs_wire_open(w.child2, m, len, ALL, &msg, &why), 0);
        CHECK_INT(msg.counter, 3); /* acsd has one counter: 1 to child1, 2 and 3 to child2 */
        acs_wire_msg_clear(&msg);
        free(m);
        acs_wire_msg_clear(&msg); /* clearing twice is fine */
        world_done(&w);
}

TEST(seal_refuses)
{
        struct world w;
        world_init(&w);
        uint8_t *m = NULL;
        size_t len = 0;
        /* wrong direction for the party */
        CHECK_INT(acs_wire_seal(w.child1, ACS_WIRE_ID_ACSD, ACS_WIRE_P_CRED, "x", 1, &m, &len), -EINVAL);
        CHECK_INT(acs_wire_seal(w.acsd, 1, ACS_WIRE_P_CRED_REQUEST, "x", 1, &m, &len), -EINVAL);
        CHECK_INT(acs_wire_seal(w.child1, 2, ACS_WIRE_P_CHANGE, "x", 1, &m, &len), -EINVAL);
        /* unknown purpose, too big, unknown peer */
        CHECK_INT(acs_wire_seal(w.acsd, 1, 0, "x", 1, &m, &len), -EINVAL);
        CHECK_INT(acs_wire_seal(w.acsd, 1, _ACS_WIRE_P_MAX, "x", 1, &m, &len), -EINVAL);
        static uint8_t big[ACS_WIRE_PAYLOAD_MAX + 1];
        CHECK_INT(acs_wire_seal(w.acsd, 1, ACS_WIRE_P_SYNC_NOW, big, sizeof(big), &m, &len), -EINVAL);
        CHECK_INT(acs_wire_seal(w.acsd, 7, ACS_WIRE_P_SYNC_NOW, "x", 1, &m, &len), -ENOENT);
        CHECK(m == NULL);
        /* the largest payload works, both kinds */
        acs_wire_msg msg;
        CHECK_INT(acs_wire_seal(w.acsd, 1, ACS_WIRE_P_SYNC_NOW, big, ACS_WIRE_PAYLOAD_MAX, &m, &len), 0);
        CHECK_INT(acs_wire_open(w.child1, m, len, ALL, &msg, NULL), 0);
        CHECK_INT(msg.len, ACS_WIRE_PAYLOAD_MAX);
        acs_wire_msg_clear(&msg);
        m = acs_free(m);
        CHECK_INT(acs_wire_seal(w.acsd, 1, ACS_WIRE_P_CRED, big, ACS_WIRE_PAYLOAD_MAX, &m, &len), 0);
        CHECK(len <= ACS_WIRE_MSG_MAX);
        CHECK_INT(acs_wire_open(w.child1, m, len, ALL, &msg, NULL), 0);
        acs_wire_msg_clear(&msg);
        m = acs_free(m);
        /* peers: not oneself */
        acs_wire_pub pub;
        raw_pub(&w.c1, &pub);
        CHECK_INT(acs_wire_add_peer(w.child1, 1, &pub), -EINVAL);
        CHECK_INT(acs_wire_remove_peer(w.acsd, 9), -ENOENT);
        world_done(&w);
}

/* Opens msg at rx and expects rejection with err (0 = any error). */
static void expect_reject(acs_wire *rx, const uint8_t *m, size_t len, uint64_t accept, int err, const char *what)
{
        acs_wire_msg msg = { 0 };
        const char *why = NULL;
        int r = acs_wire_open(rx, m, len, accept, &msg, &why);
        if (r >= 0 || (err && r != err)) {
                printf("#   %s: open returned %d (%s), expected %d\n", what, r, why ? why : "-", err);
                test_failed_checks++;
        }
        if (r < 0 && !why) {
                printf("#   %s: no reason given\n", what);
                test_failed_checks++;
        }
        CHECK(msg.payload == NULL);
        if (r >= 0)
                acs_wire_msg_clear(&msg);
}

static void expect_accept(acs_wire *rx, const uint8_t *m, size_t len, const char *what)
{
        acs_wire_msg msg = { 0 };
        const char *why = NULL;
        int r = acs_wire_open(rx, m, len, ALL, &msg, &why);
        if (r != 0) {
                printf("#   %s: open returned %d (%s), expected success\n", what, r, why ? why : "-");
                test_failed_checks++;
        }
        acs_wire_msg_clear(&msg);
}

/* Every bit of a sample flipped, every prefix, every extension: all rejected; state kept. */
static void tamper_all(acs_wire *tx, acs_wire *rx, uint32_t to, enum acs_wire_purpose p)
{
        uint8_t *m = NULL;
        size_t len = 0;
        CHECK_INT(acs_wire_seal(tx, to, p, "payload-bytes", 13, &m, &len), 0);
        uint8_t *t = malloc(len + 64);
        char what[96];
        size_t flips = 0;
        for (size_t bit = 0; bit < len * 8; bit++) {
                memcpy(t, m, len);
                t[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                snprintf(what, sizeof(what), "%s bit %zu flipped", acs_wire_purpose_name(p), bit);
                expect_reject(rx, t, len, ALL, 0, what);
                flips++;
        }
        CHECK_INT(flips, len * 8);
        for (size_t n = 0; n < len; n++) {
                snprintf(what, sizeof(what), "%s truncated to %zu", acs_wire_purpose_name(p), n);
                expect_reject(rx, m, n, ALL, -EBADMSG, what);
        }
        static const size_t ext[] = { 1, 2, 16, 63, 64 };
        for (size_t i = 0; i < ACS_ARRAY_SIZE(ext); i++) {
                memcpy(t, m, len);
                memset(t + len, 0, ext[i]);
                snprintf(what, sizeof(what), "%s extended by %zu", acs_wire_purpose_name(p), ext[i]);
                expect_reject(rx, t, len + ext[i], ALL, -EBADMSG, what);
        }
        /* None of that moved the counter: the genuine message still opens, once. */
        expect_accept(rx, m, len, "genuine after tampering");
        expect_reject(rx, m, len, ALL, -ESTALE, "genuine replayed");
        free(t);
        free(m);
}

TEST(tamper_every_bit_signed)
{
        struct world w;
        world_init(&w);
        tamper_all(w.child1, w.acsd, ACS_WIRE_ID_ACSD, ACS_WIRE_P_LOGIN_RESULT);
        tamper_all(w.acsd, w.child2, 2, ACS_WIRE_P_SYNC_NOW);
        world_done(&w);
}

TEST(tamper_every_bit_boxed)
{
        struct world w;
        world_init(&w);
        tamper_all(w.acsd, w.child1, 1, ACS_WIRE_P_CRED);
        world_done(&w);
}

/* The table of forged and misdirected messages. */
TEST(tamper_table)
{
        struct world w;
        world_init(&w);
        static uint8_t m[ACS_WIRE_MSG_MAX];
        size_t len;
        const uint8_t pw[] = "hunter2";

        struct row {
                const char *what;
                acs_wire *rx;
                uint64_t accept;
                int err;
                uint8_t version, kind;
                uint16_t purpose;
                uint32_t sender, recipient;
                uint64_t counter;
                const uint8_t *sign_sk; /* NULL = zero signature */
                const uint8_t *box_sk, *box_pk;
        } rows[] = {
                /* a control row: the builder makes messages that do open */
                { "genuine hand-built request", w.acsd, ALL, 0, 1, 1, 4, 1, 0, 10, w.c1.sign_sk, NULL, NULL },
                { "genuine hand-built secret", w.child1, ALL, 0, 1, 2, 3, 0, 1, 10, NULL, w.a.box_sk, w.c1.box_pk },
                { "unsigned (zero signature)", w.acsd, ALL, -EKEYREJECTED, 1, 1, 4, 1, 0, 11, NULL, NULL, NULL },
                { "wrong sender key (child2 signs as child1)", w.acsd, ALL, -EKEYREJECTED, 1, 1, 4, 1, 0, 12, w.c2.sign_sk, NULL, NULL },
                { "child1 signs as acsd", w.child2, ALL, -EKEYREJECTED, 1, 1, 5, 0, 2, 12, w.c1.sign_sk, NULL, NULL },
                { "child2 boxes as acsd", w.child1, ALL, -EKEYREJECTED, 1, 2, 3, 0, 1, 12, NULL, w.c2.box_sk, w.c1.box_pk },
                { "secret boxed to child2 given to child1", w.child1, ALL, -EKEYREJECTED, 1, 2, 3, 0, 1, 13, NULL, w.a.box_sk, w.c2.box_pk },
                { "wrong recipient (for child2)", w.child1, ALL, -EPERM, 1, 1, 5, 0, 2, 14, w.a.sign_sk, NULL, NULL },
                { "wrong recipient (acsd gets a message for child1)", w.acsd, ALL, -EPERM, 1, 1, 4, 2, 1, 14, w.c2.sign_sk, NULL, NULL },
                { "unknown sender", w.acsd, ALL, -EPERM, 1, 1, 4, 77, 0, 15, w.c1.sign_sk, NULL, NULL },
                { "purpose not expected", w.acsd, ACS_WIRE_MASK(ACS_WIRE_P_AGENT_HELLO), -EPERM, 1, 1, 4, 1, 0, 16, w.c1.sign_sk, NULL, NULL },
                { "unknown purpose 0", w.acsd, ALL, -EPERM, 1, 1, 0, 1, 0, 17, w.c1.sign_sk, NULL, NULL },
                { "unknown purpose 999", w.acsd, ALL, -EPERM, 1, 1, 999, 1, 0, 17, w.c1.sign_sk, NULL, NULL },
                { "secret purpose signed in clear", w.child1, ALL, -EPERM, 1, 1, 3, 0, 1, 18, w.a.sign_sk, NULL, NULL },
                { "request boxed instead of signed", w.acsd, ALL, -EPERM, 1, 2, 4, 1, 0, 18, NULL, w.c1.box_sk, w.a.box_pk },
                { "unknown kind 3", w.acsd, ALL, -EPERM, 1, 3, 4, 1, 0, 18, w.c1.sign_sk, NULL, NULL },
                { "request purpose sent by acsd", w.child1, ALL, -EPERM, 1, 1, 4, 0, 1, 19, w.a.sign_sk, NULL, NULL },
                { "command purpose sent by a child", w.acsd, ALL, -EPERM, 1, 1, 5, 1, 0, 19, w.c1.sign_sk, NULL, NULL },
                { "version 2", w.acsd, ALL, -EPROTONOSUPPORT, 2, 1, 4, 1, 0, 20, w.c1.sign_sk, NULL, NULL },
                { "version 0", w.acsd, ALL, -EPROTONOSUPPORT, 0, 1, 4, 1, 0, 20, w.c1.sign_sk, NULL, NULL },
                { "counter zero", w.acsd, ALL, -EBADMSG, 1, 1, 4, 1, 0, 0, w.c1.sign_sk, NULL, NULL },
                { "replay of counter 10", w.acsd, ALL, -ESTALE, 1, 1, 4, 1, 0, 10, w.c1.sign_sk, NULL, NULL },
                { "older counter 9", w.acsd, ALL, -ESTALE, 1, 1, 4, 1, 0, 9, w.c1.sign_sk, NULL, NULL },
                { "replayed secret counter 10", w.child1, ALL, -ESTALE, 1, 2, 3, 0, 1, 10, NULL, w.a.box_sk, w.c1.box_pk },
                { "next counter 11 opens", w.acsd, ALL, 0, 1, 1, 4, 1, 0, 11, w.c1.sign_sk, NULL, NULL },
        };
        for (size_t i = 0; i < ACS_ARRAY_SIZE(rows); i++) {
                const struct row *r = &rows[i];
                len = build_raw(m, r->version, r->kind, r->purpose, r->sender, r->recipient, r->counter,
                                pw, sizeof(pw) - 1, r->sign_sk, r->box_sk, r->box_pk);
                if (r->err)
                        expect_reject(r->rx, m, len, r->accept, r->err, r->what);
                else
                        expect_accept(r->rx, m, len, r->what);
        }

        /* Structure: bad magic, a length field that lies, a huge length field, stripped signature. */
        len = build_raw(m, 1, 1, 4, 1, 0, 30, pw, sizeof(pw) - 1, w.c1.sign_sk, NULL, NULL);
        m[0] = 'X';
        expect_reject(w.acsd, m, len, ALL, -EBADMSG, "bad magic");
        len = build_raw(m, 1, 1, 4, 1, 0, 30, pw, sizeof(pw) - 1, w.c1.sign_sk, NULL, NULL);
        expect_reject(w.acsd, m, len - 64, ALL, -EBADMSG, "signature stripped");
        m[27] += 1;
        expect_reject(w.acsd, m, len, ALL, -EBADMSG, "length field one more");
        m[27] -= 2;
        expect_reject(w.acsd, m, len, ALL, -EBADMSG, "length field one less");
        m[24] = 0xff;
        expect_reject(w.acsd, m, len, ALL, -EBADMSG, "length field huge");
        expect_reject(w.acsd, NULL, 0, ALL, -EBADMSG, "NULL");
        world_done(&w);
}

/* Deterministic PRNG (xorshift64*), so failures reproduce. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * UINT64_C(2685821657736338717);
}

/*
 * Random multi-byte damage and splices of two genuine messages (header of one, body or
 * signature of the other): none opens, and afterwards both genuine ones still do.
 */
TEST(random_damage_and_splices)
{
        struct world w;
        world_init(&w);
        uint8_t *a, *b, *c, *d;
        size_t la, lb, lc, ld;
        CHECK_INT(acs_wire_seal(w.child1, 0, ACS_WIRE_P_CHANGE, "mailbox=INBOX", 13, &a, &la), 0);
        CHECK_INT(acs_wire_seal(w.child1, 0, ACS_WIRE_P_CHANGE, "mailbox=Sent!", 13, &b, &lb), 0);
        CHECK_INT(acs_wire_seal(w.acsd, 1, ACS_WIRE_P_CRED, "password-one", 12, &c, &lc), 0);
        CHECK_INT(acs_wire_seal(w.acsd, 1, ACS_WIRE_P_CRED, "password-two", 12, &d, &ld), 0);
        static uint8_t t[1024];
        int rejected = 0;
        for (int i = 0; i < 20000; i++) {
                int boxed = i & 1;
                const uint8_t *x = boxed ? c : a, *y = boxed ? d : b;
                size_t lx = boxed ? lc : la;
                size_t len = lx;
                memcpy(t, x, lx);
                switch (rng() % 3) {
                case 0: { /* 2..8 random bytes changed */
                        int n = 2 + (int)(rng() % 7);
                        for (int k = 0; k < n; k++) {
                                size_t at = rng() % lx;
                                t[at] ^= (uint8_t)(1 + rng() % 255);
                        }
                        break;
                }
                case 1: { /* splice: a prefix of x, the rest of y (same length) */
                        size_t cut = 1 + rng() % (lx - 1);
                        memcpy(t + cut, y + cut, lx - cut);
                        if (memcmp(t, x, lx) == 0 || memcmp(t, y, lx) == 0)
                                t[rng() % lx] ^= 0x80; /* a splice that is one of them is no test */
                        break;
                }
                default: /* random length and bytes after a genuine header */
                        len = 28 + rng() % 200;
                        for (size_t k = 28; k < len; k++)
                                t[k] = (uint8_t)rng();
                        break;
                }
                acs_wire_msg msg = { 0 };
                int r = acs_wire_open(boxed ? w.child1 : w.acsd, t, len, ALL, &msg, NULL);
                if (r < 0)
                        rejected++;
                else
                        acs_wire_msg_clear(&msg);
        }
        CHECK_INT(rejected, 20000);
        expect_accept(w.acsd, a, la, "genuine a");
        expect_accept(w.acsd, b, lb, "genuine b");
        expect_accept(w.child1, c, lc, "genuine c");
        expect_accept(w.child1, d, ld, "genuine d");
        free(a), free(b), free(c), free(d);
        world_done(&w);
}

TEST(replay_and_order)
{
        struct world w;
        world_init(&w);
        uint8_t *m1, *m2;
        size_t l1, l2;
        CHECK_INT(acs_wire_seal(w.child1, 0, ACS_WIRE_P_PROGRESS, "1", 1, &m1, &l1), 0);
        CHECK_INT(acs_wire_seal(w.child1, 0, ACS_WIRE_P_PROGRESS, "2", 1, &m2, &l2), 0);
        expect_accept(w.acsd, m2, l2, "second");
        expect_reject(w.acsd, m1, l1, ALL, -ESTALE, "first after second");
        expect_reject(w.acsd, m2, l2, ALL, -ESTALE, "second again");
        /* A child's counter does not protect another child: child2 is independent. */
        uint8_t *m3;
        size_t l3;
        CHECK_INT(acs_wire_seal(w.child2, 0, ACS_WIRE_P_PROGRESS, "3", 1, &m3, &l3), 0);
        expect_accept(w.acsd, m3, l3, "child2 counter 1");
        /* Re-keying a peer (restarted child) resets its counter; old-key messages fail. */
        struct raw_keys fresh;
        raw_keys_gen(&fresh);
        acs_wire_pub pub;
        raw_pub(&fresh, &pub);
        CHECK_INT(acs_wire_add_peer(w.acsd, 1, &pub), 0);
        expect_reject(w.acsd, m2, l2, ALL, -EKEYREJECTED, "old key after rekey");
        static uint8_t m[256];
        size_t len = build_raw(m, 1, 1, ACS_WIRE_P_PROGRESS, 1, 0, 1, "x", 1, fresh.sign_sk, NULL, NULL);
        expect_accept(w.acsd, m, len, "new key counter 1");
        /* Removed peer: unknown sender. */
        CHECK_INT(acs_wire_remove_peer(w.acsd, 1), 0);
        len = build_raw(m, 1, 1, ACS_WIRE_P_PROGRESS, 1, 0, 2, "x", 1, fresh.sign_sk, NULL, NULL);
        expect_reject(w.acsd, m, len, ALL, -EPERM, "removed peer");
        CHECK_INT(acs_wire_remove_peer(w.acsd, 2), 0);
        expect_reject(w.acsd, m3, l3, ALL, -EPERM, "removed peer 2");
        free(m1), free(m2), free(m3);
        world_done(&w);
}

/* A peer whose X25519 key is of low order (all zero) gets no boxed messages either way. */
TEST(low_order_peer_key)
{
        struct world w;
        world_init(&w);
        acs_wire_pub bad;
        raw_pub(&w.c1, &bad);
        memset(bad.box_pk, 0, sizeof(bad.box_pk));
        CHECK_INT(acs_wire_add_peer(w.acsd, 1, &bad), 0);
        uint8_t *m = NULL;
        size_t len = 0;
        CHECK_INT(acs_wire_seal(w.acsd, 1, ACS_WIRE_P_CRED, "pw", 2, &m, &len), -EINVAL);
        CHECK(m == NULL);
        /* signed messages from it still verify with its signing key */
        CHECK_INT(acs_wire_seal(w.child1, 0, ACS_WIRE_P_STATUS, "s", 1, &m, &len), 0);
        expect_accept(w.acsd, m, len, "signed from peer with bad box key");
        free(m);
        acs_wire_pub a;
        raw_pub(&w.a, &a);
        memset(a.box_pk, 0, sizeof(a.box_pk));
        CHECK_INT(acs_wire_add_peer(w.child1, 0, &a), 0);
        static uint8_t raw[256];
        len = build_raw(raw, 1, 2, ACS_WIRE_P_CRED, 0, 1, 5, "pw", 2, NULL, w.a.box_sk, w.c1.box_pk);
        expect_reject(w.child1, raw, len, ALL, -EKEYREJECTED, "boxed from a low-order key");
        world_done(&w);
}

TEST(many_peers)
{
        CHECK_INT(acs_wire_init(), 0);
        acs_wire_keys *k;
        CHECK_INT(acs_wire_keys_new(&k), 0);
        acs_wire *acsd;
        CHECK_INT(acs_wire_new(0, &k, &acsd), 0);
        /* Insert out of order; every one must be found by its own id. */
        enum { N = 300 };
        struct raw_keys *raw = calloc(N, sizeof(*raw));
        for (uint32_t i = 0; i < N; i++) {
                uint32_t id = 1 + (i * 7919) % N;
                raw_keys_gen(&raw[id - 1]);
                acs_wire_pub pub;
                raw_pub(&raw[id - 1], &pub);
                CHECK_INT(acs_wire_add_peer(acsd, id, &pub), 0);
        }
        static uint8_t m[256];
        for (uint32_t id = 1; id <= N; id++) {
                size_t len = build_raw(m, 1, 1, ACS_WIRE_P_CHANGE, id, 0, 5, "c", 1, raw[id - 1].sign_sk, NULL, NULL);
                expect_accept(acsd, m, len, "peer");
                len = build_raw(m, 1, 1, ACS_WIRE_P_CHANGE, id, 0, 6, "c", 1, raw[(id % N)].sign_sk, NULL, NULL);
                expect_reject(acsd, m, len, ALL, -EKEYREJECTED, "neighbour's key");
        }
        free(raw);
        acs_wire_free(acsd);
}

TEST(handover_pipe_and_socket)
{
        CHECK_INT(acs_wire_init(), 0);
        /* acsd side */
        _cleanup_wire_keys_ acs_wire_keys *acsd_keys = NULL, *child_keys = NULL;
        CHECK_INT(acs_wire_keys_new(&acsd_keys), 0);
        CHECK_INT(acs_wire_keys_new(&child_keys), 0);
        acs_wire_pub acsd_pub, child_pub;
        acs_wire_keys_public(acsd_keys, &acsd_pub);
        acs_wire_keys_public(child_keys, &child_pub);

        for (int use_socket = 0; use_socket < 2; use_socket++) {
                int fds[2];
                if (use_socket)
                        CHECK_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
                else
                        CHECK_INT(pipe2(fds, O_CLOEXEC), 0);
                CHECK_INT(acs_wire_handover_write(fds[1], 42, child_keys, &acsd_pub), 0);
                close(fds[1]);
                uint32_t id = 0;
                acs_wire_keys *got = NULL;
                acs_wire_pub got_acsd;
                CHECK_INT(acs_wire_handover_read(fds[0], &id, &got, &got_acsd), 0);
                close(fds[0]);
                CHECK_INT(id, 42);
                CHECK(memcmp(&got_acsd, &acsd_pub, sizeof(acsd_pub)) == 0);
                acs_wire_pub got_pub;
                acs_wire_keys_public(got, &got_pub);
                CHECK(memcmp(&got_pub, &child_pub, sizeof(child_pub)) == 0);

                /* The handed-over keys work: the child signs, acsd's kept public key verifies. */
                acs_wire *child = NULL;
                CHECK_INT(acs_wire_new(id, &got, &child), 0);
                CHECK_INT(acs_wire_add_peer(child, 0, &got_acsd), 0);
                uint8_t *m;
                size_t len;
                CHECK_INT(acs_wire_seal(child, 0, ACS_WIRE_P_AGENT_HELLO, "syncd", 5, &m, &len), 0);
                /* Verify by hand with the public key acsd kept. */
                CHECK_INT(crypto_sign_verify_detached(m + len - 64, m, len - 64, child_pub.sign_pk), 0);
                free(m);
                acs_wire_free(child);
        }
}

static int write_msg(int fd, const uint8_t *m, size_t len)
{
        uint32_t n = (uint32_t)len;
        return write(fd, &n, 4) == 4 && write(fd, m, len) == (ssize_t)len ? 0 : -EIO;
}

static int read_msg(int fd, uint8_t *buf, size_t cap, size_t *ret_len)
{
        uint32_t n;
        if (read(fd, &n, 4) != 4 || n > cap)
                return -EIO;
        size_t got = 0;
        while (got < n) {
                ssize_t k = read(fd, buf + got, n - got);
                if (k <= 0)
                        return -EIO;
                got += (size_t)k;
        }
        *ret_len = n;
        return 0;
}

/* The real shape: a forked child gets its keys through an inherited pipe, then both talk. */
TEST(handover_to_forked_child)
{
        CHECK_INT(acs_wire_init(), 0);
        acs_wire_keys *acsd_keys = NULL, *child_keys = NULL;
        CHECK_INT(acs_wire_keys_new(&acsd_keys), 0);
        CHECK_INT(acs_wire_keys_new(&child_keys), 0);
        acs_wire_pub acsd_pub, child_pub;
        acs_wire_keys_public(acsd_keys, &acsd_pub);
        acs_wire_keys_public(child_keys, &child_pub);
        int keyp[2], up[2], down[2];
        CHECK_INT(pipe2(keyp, O_CLOEXEC), 0);
        CHECK_INT(pipe2(up, O_CLOEXEC), 0);
        CHECK_INT(pipe2(down, O_CLOEXEC), 0);
        pid_t pid = fork();
        if (pid == 0) {
                close(keyp[1]), close(up[0]), close(down[1]);
                acs_wire_keys_free(acsd_keys);
                acs_wire_keys_free(child_keys); /* the child knows nothing but the pipe */
                uint32_t id;
                acs_wire_keys *k = NULL;
                acs_wire_pub ap;
                if (acs_wire_handover_read(keyp[0], &id, &k, &ap) != 0)
                        _exit(10);
                close(keyp[0]);
                acs_wire *me = NULL;
                if (acs_wire_new(id, &k, &me) != 0 || acs_wire_add_peer(me, 0, &ap) != 0)
                        _exit(11);
                uint8_t *m;
                size_t len;
                if (acs_wire_seal(me, 0, ACS_WIRE_P_CRED_REQUEST, NULL, 0, &m, &len) != 0 ||
                    write_msg(up[1], m, len) != 0)
                        _exit(12);
                free(m);
                static uint8_t in[ACS_WIRE_MSG_MAX];
                acs_wire_msg msg;
                if (read_msg(down[0], in, sizeof(in), &len) != 0 ||
                    acs_wire_open(me, in, len, ACS_WIRE_MASK(ACS_WIRE_P_CRED), &msg, NULL) != 0)
                        _exit(13);
                char reply[64];
                snprintf(reply, sizeof(reply), "ok %zu %s", msg.len, (char *)msg.payload);
                acs_wire_msg_clear(&msg);
                if (acs_wire_seal(me, 0, ACS_WIRE_P_LOGIN_RESULT, reply, strlen(reply), &m, &len) != 0 ||
                    write_msg(up[1], m, len) != 0)
                        _exit(14);
                free(m);
                acs_wire_free(me);
                _exit(0);
        }
        close(keyp[0]), close(up[1]), close(down[0]);
        CHECK_INT(acs_wire_handover_write(keyp[1], 7, child_keys, &acsd_pub), 0);
        close(keyp[1]);
        child_keys = acs_wire_keys_free(child_keys); /* acsd forgets the child's secrets */
        acs_wire *acsd = NULL;
        CHECK_INT(acs_wire_new(0, &acsd_keys, &acsd), 0);
        CHECK_INT(acs_wire_add_peer(acsd, 7, &child_pub), 0);
        static uint8_t in[ACS_WIRE_MSG_MAX];
        size_t len;
        acs_wire_msg msg;
        CHECK_INT(read_msg(up[0], in, sizeof(in), &len), 0);
        CHECK_INT(acs_wire_open(acsd, in, len, ACS_WIRE_MASK(ACS_WIRE_P_CRED_REQUEST), &msg, NULL), 0);
        CHECK_INT(msg.sender, 7);
        acs_wire_msg_clear(&msg);
        uint8_t *m;
        CHECK_INT(acs_wire_seal(acsd, 7, ACS_WIRE_P_CRED, "pass1", 5, &m, &len), 0);
        CHECK_INT(write_msg(down[1], m, len), 0);
        free(m);
        CHECK_INT(read_msg(up[0], in, sizeof(in), &len), 0);
        CHECK_INT(acs_wire_open(acsd, in, len, ACS_WIRE_MASK(ACS_WIRE_P_LOGIN_RESULT), &msg, NULL), 0);
        CHECK_STR((char *)msg.payload, "ok 5 pass1");
        acs_wire_msg_clear(&msg);
        int st = 0;
        CHECK_INT(waitpid(pid, &st, 0), pid);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        close(up[0]), close(down[1]);
        acs_wire_free(acsd);
}

TEST(handover_rejects)
{
        CHECK_INT(acs_wire_init(), 0);
        struct raw_keys c, a;
        raw_keys_gen(&c);
        raw_keys_gen(&a);
        uint8_t blob[ACS_WIRE_HANDOVER_SIZE + 8] = { 0 };
        uint32_t id;
        acs_wire_keys *k = NULL;
        acs_wire_pub pub;

        handover_blob(blob, 5, &c, &a);
        CHECK_INT(read_blob(blob, ACS_WIRE_HANDOVER_SIZE, &id, &k, &pub), 0);
        CHECK_INT(id, 5);
        k = acs_wire_keys_free(k);
        CHECK(k == NULL);
        for (size_t n = 0; n < ACS_WIRE_HANDOVER_SIZE; n++)
                CHECK_INT(read_blob(blob, n, &id, &k, &pub), -EBADMSG);
        CHECK_INT(read_blob(blob, ACS_WIRE_HANDOVER_SIZE + 1, &id, &k, &pub), -EBADMSG);
        CHECK_INT(read_blob(blob, ACS_WIRE_HANDOVER_SIZE + 8, &id, &k, &pub), -EBADMSG);
        static const struct { size_t off; uint8_t val; const char *what; } bad[] = {
                { 0, 'X', "magic" }, { 4, 2, "version" }, { 5, 1, "pad 5" }, { 7, 1, "pad 7" },
                { 11, 0, "id 0 (acsd's)" },
                { 12 + 32 + 5, 0x55, "ed25519 public half disagrees with seed" },
        };
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad); i++) {
                handover_blob(blob, 5, &c, &a);
                if (bad[i].off == 11)
                        memset(blob + 8, 0, 4);
                else
                        blob[bad[i].off] ^= bad[i].val;
                int r = read_blob(blob, ACS_WIRE_HANDOVER_SIZE, &id, &k, &pub);
                if (r != -EBADMSG) {
                        printf("#   handover %s: %d\n", bad[i].what, r);
                        test_failed_checks++;
                }
        }
        CHECK(k == NULL);
        CHECK_INT(acs_wire_handover_read(-1, &id, &k, &pub), -EBADF);
        acs_wire_keys *kk;
        CHECK_INT(acs_wire_keys_new(&kk), 0);
        acs_wire_pub ap;
        acs_wire_keys_public(kk, &ap);
        CHECK_INT(acs_wire_handover_write(-1, 5, kk, &ap), -EBADF);
        acs_wire_keys_free(kk);
}

TEST(secret_free_helpers)
{
        CHECK_INT(acs_wire_init(), 0);
        CHECK(acs_secret_free(NULL) == NULL);
        _cleanup_secret_ char *s = sodium_malloc(16);
        CHECK(s != NULL);
        memcpy(s, "secret", 7);
        CHECK(acs_wire_keys_free(NULL) == NULL);
        CHECK(acs_wire_free(NULL) == NULL);
        acs_wire_keys *k = NULL;
        acs_wire *w = NULL;
        CHECK_INT(acs_wire_new(0, &k, &w), -EINVAL);
        CHECK_INT(acs_wire_new(0, NULL, &w), -EINVAL);
}

TEST_MAIN()
