/* SPDX-License-Identifier: MIT */
/* The acsd client protocol: one strict parser for command lines, reply formatting and parsing, a bounded line reader. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Grammar, limits and examples: docs/protocol.md. In short: one command per line, ASCII
 * only, tokens separated by exactly one space, LF or CRLF at the end, at most
 * ACS_PROTO_LINE_MAX bytes counting the line end. Fields that may hold arbitrary bytes
 * (user, password, mailbox, reply values) are percent-encoded (%XX); PHP's rawurlencode()
 * produces a valid encoding.
 *
 * Nothing here allocates or logs; every struct is self-contained (no pointers) and may be
 * copied. Structs that can hold a password must be wiped with acs_proto_cmd_wipe() (or
 * the _cleanup_proto_cmd_ attribute).
 */

#define ACS_PROTO_VERSION 1     /* highest version spoken */
#define ACS_PROTO_VERSION_MIN 1 /* lowest version spoken */
#define ACS_PROTO_VERSION_LIMIT 999
#define ACS_PROTO_LINE_MAX 4096 /* bytes in one line, line end included */
#define ACS_PROTO_USER_MAX 255  /* decoded bytes */
#define ACS_PROTO_PASSWORD_MAX 1024
#define ACS_PROTO_MAILBOX_MAX 1024
#define ACS_PROTO_TOKEN_SIZE 32 /* bytes; 64 lower-case hex digits on the wire */
#define ACS_PROTO_TOKEN_HEX (2 * ACS_PROTO_TOKEN_SIZE)
#define ACS_PROTO_WORD_MAX 32   /* command names, error codes, event kinds, keys */
#define ACS_PROTO_TEXT_MAX 512  /* ERR text */
#define ACS_PROTO_KV_MAX 16     /* key=value pairs in one reply */

/* Commands (values are stable; append only). */
enum acs_proto_cmd_type {
        ACS_CMD_INVALID = 0,
        ACS_CMD_HELLO = 1,  /* HELLO <min> <max>       -> OK HELLO version=<v> */
        ACS_CMD_OPEN = 2,   /* OPEN <user> <password>  -> OK OPEN token=<hex> user=<u> path=<p> */
        ACS_CMD_RESUME = 3, /* RESUME <token>          -> OK RESUME user=<u> path=<p> */
        ACS_CMD_CLOSE = 4,  /* CLOSE                   -> OK CLOSE */
        ACS_CMD_STATUS = 5, /* STATUS [<user>]         -> DATA STATUS ... then OK STATUS */
        ACS_CMD_SYNC = 6,   /* SYNC <user> [<mailbox>] -> DATA SYNC ... then OK SYNC */
        ACS_CMD_WATCH = 7,  /* WATCH                   -> OK WATCH, then EVENT lines */
        ACS_CMD_WHO = 8,    /* WHO                     -> DATA WHO ... then OK WHO */
        _ACS_CMD_MAX,
};

/* "HELLO", ...; NULL for an unknown value. */
const char *acs_proto_cmd_name(int type);

/* Error codes of ERR replies (stable; append only). Names are the lower-case words. */
enum acs_proto_err {
        ACS_ERR_NONE = 0,
        /* from the parser */
        ACS_ERR_TOOLONG = 1,  /* "toolong": line longer than ACS_PROTO_LINE_MAX */
        ACS_ERR_SYNTAX = 2,   /* "syntax": line end, control or non-ASCII byte, spacing */
        ACS_ERR_UNKNOWN = 3,  /* "unknown": no such command */
        ACS_ERR_ARITY = 4,    /* "arity": wrong number of arguments */
        ACS_ERR_ENCODING = 5, /* "encoding": bad %XX, %00, raw '+' */
        ACS_ERR_VALUE = 6,    /* "value": a field out of range or malformed once decoded */
        /* from acsd */
        ACS_ERR_VERSION = 7,     /* "version": no common protocol version */
        ACS_ERR_STATE = 8,       /* "state": not now (HELLO first, no session, watching) */
        ACS_ERR_AUTH = 9,        /* "auth": user or password wrong */
        ACS_ERR_TOKEN = 10,      /* "token": unknown or expired session token */
        ACS_ERR_DENIED = 11,     /* "denied": this peer may not do that */
        ACS_ERR_LIMIT = 12,      /* "limit": rate or connection limit; retry later */
        ACS_ERR_UNAVAILABLE = 13, /* "unavailable": IMAP server or agent not reachable */
        ACS_ERR_NOTFOUND = 14,   /* "notfound": no such user instance or mailbox */
        ACS_ERR_INTERNAL = 15,   /* "internal": a bug or resource failure in acsd */
        _ACS_ERR_MAX,
};

/* "toolong", ...; NULL for ACS_ERR_NONE or an unknown value. */
const char *acs_proto_err_name(int err);

/*
 * A parsed command. Fields not used by the command are zero. Text fields are
 * NUL-terminated and also carry their length (a password may hold any byte but NUL).
 */
typedef struct acs_proto_cmd {
        enum acs_proto_cmd_type type;
        unsigned vmin, vmax;                             /* HELLO */
        bool has_user;                                   /* OPEN, SYNC; STATUS if given */
        size_t user_len;
        char user[ACS_PROTO_USER_MAX + 1];
        size_t password_len;                             /* OPEN */
        char password[ACS_PROTO_PASSWORD_MAX + 1];
        uint8_t token[ACS_PROTO_TOKEN_SIZE];             /* RESUME */
        bool has_mailbox;                                /* SYNC, optional */
        size_t mailbox_len;
        char mailbox[ACS_PROTO_MAILBOX_MAX + 1];
} acs_proto_cmd;

/* Wipes *c (sodium_memzero): it may hold a password. */
void acs_proto_cmd_wipe(acs_proto_cmd *c);
static inline void acs_proto_cmd_wipep(acs_proto_cmd *c) { acs_proto_cmd_wipe(c); }
#define _cleanup_proto_cmd_ __attribute__((cleanup(acs_proto_cmd_wipep)))

/*
 * Parses one command line: len bytes of line, which must end in LF (optionally CRLF) and
 * hold no other LF. On success fills *ret and returns 0. On failure returns -EMSGSIZE
 * (too long) or -EINVAL, sets *err_r to the error code (ACS_ERR_TOOLONG .. ACS_ERR_VALUE)
 * and *error_r to a static English reason, and leaves *ret wiped (all zero). err_r and
 * error_r may be NULL.
 */
int acs_proto_parse_cmd(const char *line, size_t len, acs_proto_cmd *ret, enum acs_proto_err *err_r,
                        const char **error_r);

/*
 * Formats a command as its canonical line (LF-terminated, NUL after it) into buf.
 * ACS_PROTO_LINE_MAX + 1 bytes always suffice. -EINVAL if c would not parse back,
 * -EMSGSIZE if size is too small (buf's contents are then undefined). *ret_len excludes
 * the NUL.
 */
int acs_proto_format_cmd(const acs_proto_cmd *c, char *buf, size_t size, size_t *ret_len);

/* ---- connection state (the rules of docs/protocol.md, "Session of a connection") ---- */

enum acs_proto_conn_state {
        ACS_CONN_NEW = 0,      /* nothing yet: HELLO first */
        ACS_CONN_READY = 1,    /* HELLO done, no session */
        ACS_CONN_SESSION = 2,  /* a session opened or resumed on this connection */
        ACS_CONN_WATCHING = 3, /* after OK WATCH: the client sends nothing more */
};

/*
 * Whether cmd may come in state st: ACS_ERR_NONE, or ACS_ERR_STATE with *why set to a
 * static reason. Who may run STATUS, SYNC and WHO (peer uid) is acsd's to decide.
 */
enum acs_proto_err acs_proto_check_state(enum acs_proto_conn_state st, enum acs_proto_cmd_type cmd,
                                         const char **why);

/* Highest version in [vmin, vmax] that this code speaks: 0 and *ret, or -EPROTONOSUPPORT. */
int acs_proto_negotiate(unsigned vmin, unsigned vmax, unsigned *ret);

/* A fresh random session token (libsodium's CSPRNG; sodium_init first). */
void acs_proto_token_new(uint8_t ret[ACS_PROTO_TOKEN_SIZE]);

/* ---- replies ---- */

enum acs_proto_reply_type {
        ACS_REPLY_INVALID = 0,
        ACS_REPLY_OK = 1,    /* OK <COMMAND> [key=value]...    : command done */
        ACS_REPLY_ERR = 2,   /* ERR <code> <text>              : command failed */
        ACS_REPLY_DATA = 3,  /* DATA <COMMAND> [key=value]...  : one item, before OK */
        ACS_REPLY_EVENT = 4, /* EVENT <kind> [key=value]...    : after OK WATCH */
};

struct acs_proto_kv {
        uint16_t key_off, key_len; /* into acs_proto_reply.buf */
        uint16_t val_off, val_len;
};

/* A parsed (or to-be-formatted) reply line. Keys and decoded values live in buf. */
typedef struct acs_proto_reply {
        enum acs_proto_reply_type type;
        enum acs_proto_cmd_type cmd;          /* OK, DATA */
        enum acs_proto_err err;               /* ERR */
        char kind[ACS_PROTO_WORD_MAX + 1];    /* EVENT */
        char text[ACS_PROTO_TEXT_MAX + 1];    /* ERR */
        size_t n_kv;
        struct acs_proto_kv kv[ACS_PROTO_KV_MAX];
        size_t buf_used;
        int error;                            /* sticky builder error (0 or -errno) */
        char buf[ACS_PROTO_LINE_MAX];
} acs_proto_reply;

/*
 * Parses one reply line (same line rules as commands). Strict: known commands and error
 * codes only, event kinds and keys [a-z][a-z0-9_]* up to ACS_PROTO_WORD_MAX, no duplicate
 * keys, at most ACS_PROTO_KV_MAX pairs, ERR text 1..ACS_PROTO_TEXT_MAX printable ASCII.
 * 0, or -EMSGSIZE / -EINVAL with *error_r set; *ret is all zero on failure.
 */
int acs_proto_parse_reply(const char *line, size_t len, acs_proto_reply *ret, const char **error_r);

/* The decoded value of key in r (NUL-terminated; *ret_len if not NULL), or NULL. */
const char *acs_proto_reply_get(const acs_proto_reply *r, const char *key, size_t *ret_len);
/* Key and value of pair i < r->n_kv. */
const char *acs_proto_reply_key(const acs_proto_reply *r, size_t i);
const char *acs_proto_reply_value(const acs_proto_reply *r, size_t i, size_t *ret_len);

/*
 * Building replies: start with acs_proto_reply_init() (OK/DATA take a command, EVENT a
 * kind, ERR a code and a text), add pairs, then acs_proto_format_reply(). Text for ERR is
 * made safe: bytes outside 0x20..0x7e become '?', and it is cut to ACS_PROTO_TEXT_MAX
 * (an empty text becomes the code's name). Errors are sticky in the reply: init or
 * add_kv returning -EINVAL/-EMSGSIZE makes the final format fail the same way.
 */
int acs_proto_reply_init(acs_proto_reply *r, enum acs_proto_reply_type type, int cmd_or_err,
                         const char *kind_or_text);
int acs_proto_reply_add(acs_proto_reply *r, const char *key, const void *value, size_t len);
int acs_proto_reply_add_str(acs_proto_reply *r, const char *key, const char *value);
int acs_proto_reply_add_u64(acs_proto_reply *r, const char *key, uint64_t value);

/*
 * Formats r as its canonical line (LF-terminated, NUL after it); ACS_PROTO_LINE_MAX + 1
 * bytes of buf are enough for any reply that fits the protocol. -EINVAL if r is not a
 * valid reply, -EMSGSIZE if the line would exceed ACS_PROTO_LINE_MAX or size.
 */
int acs_proto_format_reply(const acs_proto_reply *r, char *buf, size_t size, size_t *ret_len);

/* One-call ERR line for servers: "ERR <code> <text>\n" into buf (>= ACS_PROTO_LINE_MAX + 1). */
int acs_proto_format_err(enum acs_proto_err code, const char *text, char *buf, size_t size,
                         size_t *ret_len);

/* ---- encodings ---- */

/*
 * Percent-encodes len bytes: [A-Za-z0-9] and "-._~/:@,=" stay, every other byte becomes
 * %XX (upper-case hex). Writes at most size - 1 bytes and a NUL; -EMSGSIZE if it does not
 * fit (3 * len + 1 always does).
 */
int acs_proto_pct_encode(const void *in, size_t len, char *buf, size_t size, size_t *ret_len);
/*
 * Decodes one token: raw bytes 0x21..0x7e except '%' and '+', or %XX with two hex digits
 * (either case) that is not %00. Writes len decoded bytes and a NUL into buf (size must
 * be > decoded length: -EMSGSIZE otherwise), -EINVAL for a malformed token.
 */
int acs_proto_pct_decode(const char *in, size_t len, char *buf, size_t size, size_t *ret_len,
                         const char **error_r);

/* Token as 64 lower-case hex digits plus NUL. */
void acs_proto_token_to_hex(const uint8_t token[ACS_PROTO_TOKEN_SIZE], char hex[ACS_PROTO_TOKEN_HEX + 1]);
/* Parses exactly 64 lower-case hex digits; -EINVAL otherwise. */
int acs_proto_token_from_hex(const char *hex, size_t len, uint8_t ret[ACS_PROTO_TOKEN_SIZE]);

/* Whether len bytes are valid UTF-8 (no overlongs, surrogates, or > U+10FFFF). */
bool acs_proto_utf8_valid(const char *s, size_t len);

/* ---- reading lines ---- */

/*
 * A bounded line reader for one connection: read(2) into the space it offers, commit
 * what was read, then take lines until none is left. A line longer than
 * ACS_PROTO_LINE_MAX is dropped up to its LF and reported once (-EMSGSIZE), so one
 * oversized line never costs more than the fixed buffer. Consumed bytes are wiped.
 */
typedef struct acs_proto_reader {
        size_t start;    /* first byte not yet returned */
        size_t len;      /* bytes in buf */
        size_t scanned;  /* bytes from start already known to hold no LF */
        bool discarding; /* inside an oversized line: drop until LF */
        char buf[ACS_PROTO_LINE_MAX];
} acs_proto_reader;

void acs_proto_reader_init(acs_proto_reader *r);
/* Wipes everything (sodium_memzero), ready for reuse. */
void acs_proto_reader_wipe(acs_proto_reader *r);
/* Where to read to, and how much (always > 0 after acs_proto_reader_next returned 0). */
void acs_proto_reader_space(acs_proto_reader *r, char **ret_ptr, size_t *ret_size);
/* n bytes were read into the space. */
void acs_proto_reader_commit(acs_proto_reader *r, size_t n);
/*
 * 1 and the next line (with its LF; valid until the next space/commit call), 0 when no
 * complete line is buffered, -EMSGSIZE when an oversized line was dropped (call again).
 */
int acs_proto_reader_next(acs_proto_reader *r, const char **ret_line, size_t *ret_len);
/* Whether bytes of an incomplete line are buffered (for "EOF inside a line"). */
bool acs_proto_reader_pending(const acs_proto_reader *r);
