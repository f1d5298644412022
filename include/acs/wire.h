/* SPDX-License-Identifier: MIT */
/* Sealed bus messages between acsd and its agents: signed requests, encrypted secrets, key handover. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Every message on the private bus is one byte string made by acs_wire_seal() and checked
 * by acs_wire_open(). Byte layout (all integers big-endian), see docs/credentials.md:
 *
 *   0  magic "ACSW"        4   version (ACS_WIRE_VERSION)   5   kind (enum acs_wire_kind)
 *   6  purpose  u16        8   sender id  u32               12  recipient id u32
 *   16 counter  u64        24  payload length n u32         28  ...
 *   SIGNED: payload[n], then an Ed25519 signature (64) over bytes [0, 28 + n).
 *   BOXED:  nonce[24], then XChaCha20-Poly1305 ciphertext[n + 16] under the X25519 key
 *           shared by sender and recipient, with bytes [0, 52) (header + nonce) as AD.
 *
 * acsd has id ACS_WIRE_ID_ACSD (0); each child gets a nonzero id from acsd. Each
 * purpose has one kind and one direction (to or from acsd); a message whose kind or
 * direction does not match its purpose is rejected, as is any message whose counter is
 * not greater than the last one accepted from the same peer.
 */

#define ACS_WIRE_VERSION 1
#define ACS_WIRE_ID_ACSD UINT32_C(0)
#define ACS_WIRE_HEADER_SIZE 28
#define ACS_WIRE_SIG_SIZE 64
#define ACS_WIRE_NONCE_SIZE 24
#define ACS_WIRE_MAC_SIZE 16
#define ACS_WIRE_PAYLOAD_MAX (64 * 1024)
/* Largest possible sealed message. */
#define ACS_WIRE_MSG_MAX (ACS_WIRE_HEADER_SIZE + ACS_WIRE_NONCE_SIZE + ACS_WIRE_MAC_SIZE + \
                          ACS_WIRE_SIG_SIZE + ACS_WIRE_PAYLOAD_MAX)

enum acs_wire_kind {
        ACS_WIRE_KIND_SIGNED = 1, /* payload in clear, Ed25519-signed by the sender */
        ACS_WIRE_KIND_BOXED = 2,  /* payload encrypted to the one recipient */
};

/*
 * Purposes (values are part of the format: append only, never renumber). The payload
 * format belongs to each purpose; this layer treats it as bytes. Comments give direction
 * and kind, which acs_wire_purpose_info() reports and seal/open enforce.
 */
enum acs_wire_purpose {
        ACS_WIRE_P_INVALID = 0,
        ACS_WIRE_P_AGENT_HELLO = 1,  /* agent -> acsd, signed: agent is up (kind, pid) */
        ACS_WIRE_P_CRED_REQUEST = 2, /* agent -> acsd, signed: needs the IMAP password */
        ACS_WIRE_P_CRED = 3,         /* acsd -> agent, boxed: the IMAP password */
        ACS_WIRE_P_LOGIN_RESULT = 4, /* agent -> acsd, signed: IMAP login ok / failed */
        ACS_WIRE_P_SYNC_NOW = 5,     /* acsd -> agent, signed: sync (a mailbox) now */
        ACS_WIRE_P_PROGRESS = 6,     /* agent -> acsd, signed: sync progress */
        ACS_WIRE_P_CHANGE = 7,       /* agent -> acsd, signed: something changed */
        ACS_WIRE_P_STOP = 8,         /* acsd -> agent, signed: finish and exit */
        ACS_WIRE_P_STATUS = 9,       /* agent -> acsd, signed: state report */
        _ACS_WIRE_P_MAX,
};

/* Bit of a purpose in the accept mask of acs_wire_open(). */
#define ACS_WIRE_MASK(p) (UINT64_C(1) << (p))

/* Name of a purpose ("CRED", ...), or NULL when p is not a known purpose. */
const char *acs_wire_purpose_name(int p);

/*
 * Kind and direction of a known purpose: *ret_kind, *ret_to_acsd (true: agent -> acsd).
 * -EINVAL for an unknown purpose.
 */
int acs_wire_purpose_info(int p, enum acs_wire_kind *ret_kind, bool *ret_to_acsd);

/* Initializes libsodium (once; thread-safe). 0 or -EIO. Every function below needs it. */
int acs_wire_init(void);

/* ---- secrets in sodium_malloc'd memory ---- */

/* sodium_free (wipes, then unmaps; NULL is fine); returns NULL: p = acs_secret_free(p). */
void *acs_secret_free(void *p);
static inline void acs_secret_freep(void *p) { acs_secret_free(*(void **)p); }
/* A local holding a sodium_malloc'd secret, freed (wiped) when it goes out of scope. */
#define _cleanup_secret_ __attribute__((cleanup(acs_secret_freep)))

/* ---- keys ---- */

/* Public half of a party's keys: what a receiver needs to know about a peer. */
typedef struct acs_wire_pub {
        uint8_t sign_pk[32]; /* Ed25519 */
        uint8_t box_pk[32];  /* X25519 */
} acs_wire_pub;

/*
 * A party's key set (Ed25519 signing pair + X25519 box pair) in sodium_malloc'd, locked
 * memory. Opaque; free with acs_wire_keys_free(), which wipes it.
 */
typedef struct acs_wire_keys acs_wire_keys;

/* Generates a fresh key set. *ret is owned by the caller. 0, -ENOMEM. */
int acs_wire_keys_new(acs_wire_keys **ret);
/* Wipes and frees (NULL is fine); returns NULL. */
acs_wire_keys *acs_wire_keys_free(acs_wire_keys *k);
static inline void acs_wire_keys_freep(acs_wire_keys **k) { acs_wire_keys_free(*k); }
#define _cleanup_wire_keys_ __attribute__((cleanup(acs_wire_keys_freep)))
/* The public half of k. */
void acs_wire_keys_public(const acs_wire_keys *k, acs_wire_pub *ret);

/*
 * Key handover over an inherited descriptor (a pipe or socket; never argv or the
 * environment). The blob (ACS_WIRE_HANDOVER_SIZE bytes: magic "ACSK", version, child id,
 * the child's secret keys, acsd's public keys) is written in one go and read until EOF;
 * a short, long or malformed blob is rejected (-EBADMSG). Neither function closes fd.
 *
 * acs_wire_handover_write: acsd side; child is not consumed (free it afterwards: acsd
 * must forget the child's secret keys). 0, or -errno of write(2).
 * acs_wire_handover_read: child side; *ret_keys is owned by the caller. 0, -EBADMSG,
 * -ENOMEM, or -errno of read(2).
 */
#define ACS_WIRE_HANDOVER_SIZE (4 + 4 + 4 + 64 + 32 + 32 + 32)
int acs_wire_handover_write(int fd, uint32_t child_id, const acs_wire_keys *child,
                            const acs_wire_pub *acsd_pub);
int acs_wire_handover_read(int fd, uint32_t *ret_child_id, acs_wire_keys **ret_keys,
                           acs_wire_pub *ret_acsd_pub);

/* ---- endpoints ---- */

/*
 * One party's end of the bus: its id, its keys, its send counter, and the peers it
 * accepts messages from (id, public keys, last counter accepted). acsd adds one peer per
 * child; a child adds acsd. Not thread-safe: one thread per endpoint, or a lock outside.
 */
typedef struct acs_wire acs_wire;

/* Takes ownership of *keys (set to NULL) on success. *ret owned by caller. 0, -EINVAL, -ENOMEM. */
int acs_wire_new(uint32_t self_id, acs_wire_keys **keys, acs_wire **ret);
/* Wipes and frees (NULL is fine); returns NULL. */
acs_wire *acs_wire_free(acs_wire *w);
static inline void acs_wire_freep(acs_wire **w) { acs_wire_free(*w); }
#define _cleanup_wire_ __attribute__((cleanup(acs_wire_freep)))

/*
 * Adds a peer, or replaces the keys of an existing one (a restarted child has new keys;
 * its counter starts over). -EINVAL for id == own id, -ENOMEM.
 */
int acs_wire_add_peer(acs_wire *w, uint32_t id, const acs_wire_pub *pub);
/* Forgets a peer: its messages are rejected from now on. 0 or -ENOENT. */
int acs_wire_remove_peer(acs_wire *w, uint32_t id);

/*
 * Seals payload (len <= ACS_WIRE_PAYLOAD_MAX) for peer `to` with the next counter, in the
 * kind the purpose requires. *ret_msg is malloc'd (owned by the caller; it holds no
 * plaintext secret). -EINVAL (unknown purpose, wrong direction for this party, len too
 * big, a boxed purpose to a peer whose X25519 key is of low order), -ENOENT (unknown
 * peer), -EOVERFLOW (counter exhausted), -ENOMEM.
 */
int acs_wire_seal(acs_wire *w, uint32_t to, enum acs_wire_purpose purpose, const void *payload,
                  size_t len, uint8_t **ret_msg, size_t *ret_len);

/*
 * An opened message. payload is NUL-terminated one past len; it is sodium_malloc'd
 * (guarded, locked) when the message was boxed (a secret), malloc'd when it was signed
 * (it crossed the bus in clear anyway, and sodium_malloc costs several system calls).
 * acs_wire_msg_clear() wipes and frees it either way.
 */
typedef struct acs_wire_msg {
        uint32_t sender;
        enum acs_wire_purpose purpose;
        uint64_t counter;
        uint8_t *payload;
        size_t len;
        bool secret; /* payload is sodium_malloc'd */
} acs_wire_msg;
void acs_wire_msg_clear(acs_wire_msg *m);

/*
 * Checks and opens one message. accept is a mask of ACS_WIRE_MASK(purpose) the caller
 * expects now. On success the peer's counter advances and *ret is filled (clear it with
 * acs_wire_msg_clear). On failure nothing changes and *error_r (if not NULL) gets a
 * static reason. Errors:
 *   -EBADMSG          malformed: bad magic, truncated, trailing bytes, bad length field
 *   -EPROTONOSUPPORT  another format version
 *   -EPERM            unknown purpose or kind, kind or direction not that of the purpose,
 *                     purpose not in accept, wrong recipient, unknown sender
 *   -EKEYREJECTED     signature or authentication tag does not verify (bit flips,
 *                     forged or wrong-sender messages), or the sender's X25519 key
 *                     is of low order
 *   -ESTALE           replay: counter not greater than the last accepted from that peer
 *   -ENOMEM
 */
int acs_wire_open(acs_wire *w, const uint8_t *msg, size_t len, uint64_t accept, acs_wire_msg *ret,
                  const char **error_r);
