/* SPDX-License-Identifier: MIT */
/* The acsd client protocol: strict command parser, reply builder/formatter/parser, line reader. */
#include "protocol.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "acs/util.h"

#define CASE(x) [ACS_CMD_##x] = #x
static const char *const cmd_names[_ACS_CMD_MAX] = {
        CASE(HELLO), CASE(OPEN), CASE(RESUME), CASE(CLOSE),
        CASE(STATUS), CASE(SYNC), CASE(WATCH), CASE(WHO),
};
#undef CASE

/* Arguments each command takes: min..max. */
static const struct { unsigned char min, max; } cmd_arity[_ACS_CMD_MAX] = {
        [ACS_CMD_HELLO] = { 2, 2 },  [ACS_CMD_OPEN] = { 2, 2 },  [ACS_CMD_RESUME] = { 1, 1 },
        [ACS_CMD_CLOSE] = { 0, 0 },  [ACS_CMD_STATUS] = { 0, 1 }, [ACS_CMD_SYNC] = { 1, 2 },
        [ACS_CMD_WATCH] = { 0, 0 },  [ACS_CMD_WHO] = { 0, 0 },
};

static const char *const err_names[_ACS_ERR_MAX] = {
        [ACS_ERR_TOOLONG] = "toolong",   [ACS_ERR_SYNTAX] = "syntax",
        [ACS_ERR_UNKNOWN] = "unknown",   [ACS_ERR_ARITY] = "arity",
        [ACS_ERR_ENCODING] = "encoding", [ACS_ERR_VALUE] = "value",
        [ACS_ERR_VERSION] = "version",   [ACS_ERR_STATE] = "state",
        [ACS_ERR_AUTH] = "auth",         [ACS_ERR_TOKEN] = "token",
        [ACS_ERR_DENIED] = "denied",     [ACS_ERR_LIMIT] = "limit",
        [ACS_ERR_UNAVAILABLE] = "unavailable", [ACS_ERR_NOTFOUND] = "notfound",
        [ACS_ERR_INTERNAL] = "internal",
};

const char *acs_proto_cmd_name(int type)
{
        if (type <= ACS_CMD_INVALID || type >= _ACS_CMD_MAX)
                return NULL;
        return cmd_names[type];
}

const char *acs_proto_err_name(int err)
{
        if (err <= ACS_ERR_NONE || err >= _ACS_ERR_MAX)
                return NULL;
        return err_names[err];
}

static int cmd_lookup(const char *s, size_t len)
{
        for (int i = ACS_CMD_INVALID + 1; i < _ACS_CMD_MAX; i++)
                if (strlen(cmd_names[i]) == len && memcmp(cmd_names[i], s, len) == 0)
                        return i;
        return ACS_CMD_INVALID;
}

static int err_lookup(const char *s, size_t len)
{
        for (int i = ACS_ERR_NONE + 1; i < _ACS_ERR_MAX; i++)
                if (strlen(err_names[i]) == len && memcmp(err_names[i], s, len) == 0)
                        return i;
        return ACS_ERR_NONE;
}

/* ---- encodings ---- */

static bool pct_unreserved(unsigned char c)
{
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               (c && strchr("-._~/:@,=", c));
}

static int hexval(unsigned char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

int acs_proto_pct_encode(const void *in, size_t len, char *buf, size_t size, size_t *ret_len)
{
        static const char hex[] = "0123456789ABCDEF";
        const unsigned char *p = in;
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
                size_t need = pct_unreserved(p[i]) ? 1 : 3;
                if (o + need >= size)
                        return -EMSGSIZE;
                if (need == 1) {
                        buf[o++] = (char)p[i];
                } else {
                        buf[o++] = '%';
                        buf[o++] = hex[p[i] >> 4];
                        buf[o++] = hex[p[i] & 15];
                }
        }
        if (o >= size)
                return -EMSGSIZE;
        buf[o] = 0;
        *ret_len = o;
        return 0;
}

int acs_proto_pct_decode(const char *in, size_t len, char *buf, size_t size, size_t *ret_len,
                         const char **error_r)
{
        const unsigned char *p = (const unsigned char *)in;
        size_t n = 0;
        /* First pass: syntax of the whole token, and its decoded length. */
        for (size_t i = 0; i < len; i++, n++) {
                if (p[i] == '%') {
                        if (len - i < 3 || hexval(p[i + 1]) < 0 || hexval(p[i + 2]) < 0) {
                                if (error_r)
                                        *error_r = "'%' not followed by two hex digits";
                                return -EINVAL;
                        }
                        if (p[i + 1] == '0' && p[i + 2] == '0') {
                                if (error_r)
                                        *error_r = "%00 (NUL) is not allowed";
                                return -EINVAL;
                        }
                        i += 2;
                } else if (p[i] == '+') {
                        if (error_r)
                                *error_r = "raw '+' is not allowed: send %2B (use rawurlencode, not urlencode)";
                        return -EINVAL;
                } else if (p[i] < 0x21 || p[i] > 0x7e) {
                        if (error_r)
                                *error_r = "byte outside 0x21..0x7e must be percent-encoded";
                        return -EINVAL;
                }
        }
        if (n >= size) {
                if (error_r)
                        *error_r = "too long";
                return -EMSGSIZE;
        }
        size_t o = 0;
        for (size_t i = 0; i < len; i++) {
                if (p[i] == '%') {
                        buf[o++] = (char)(hexval(p[i + 1]) << 4 | hexval(p[i + 2]));
                        i += 2;
                } else {
                        buf[o++] = (char)p[i];
                }
        }
        buf[o] = 0;
        *ret_len = o;
        return 0;
}

void acs_proto_token_to_hex(const uint8_t token[ACS_PROTO_TOKEN_SIZE], char hex[ACS_PROTO_TOKEN_HEX + 1])
{
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < ACS_PROTO_TOKEN_SIZE; i++) {
                hex[2 * i] = digits[token[i] >> 4];
                hex[2 * i + 1] = digits[token[i] & 15];
        }
        hex[ACS_PROTO_TOKEN_HEX] = 0;
}

int acs_proto_token_from_hex(const char *hex, size_t len, uint8_t ret[ACS_PROTO_TOKEN_SIZE])
{
        if (len != ACS_PROTO_TOKEN_HEX)
                return -EINVAL;
        for (size_t i = 0; i < len; i++)
                if (!((hex[i] >= '0' && hex[i] <= '9') || (hex[i] >= 'a' && hex[i] <= 'f')))
                        return -EINVAL;
        for (size_t i = 0; i < ACS_PROTO_TOKEN_SIZE; i++)
                ret[i] = (uint8_t)(hexval((unsigned char)hex[2 * i]) << 4 |
                                   hexval((unsigned char)hex[2 * i + 1]));
        return 0;
}

bool acs_proto_utf8_valid(const char *s, size_t len)
{
        const unsigned char *p = (const unsigned char *)s;
        size_t i = 0;
        while (i < len) {
                unsigned char c = p[i];
                if (c < 0x80) {
                        i++;
                        continue;
                }
                size_t n;
                uint32_t cp, min;
                if (c >= 0xc2 && c <= 0xdf)
                        n = 1, cp = c & 0x1f, min = 0x80;
                else if (c >= 0xe0 && c <= 0xef)
                        n = 2, cp = c & 0x0f, min = 0x800;
                else if (c >= 0xf0 && c <= 0xf4)
                        n = 3, cp = c & 0x07, min = 0x10000;
                else
                        return false;
                if (len - i <= n)
                        return false;
                for (size_t k = 1; k <= n; k++) {
                        if ((p[i + k] & 0xc0) != 0x80)
                                return false;
                        cp = cp << 6 | (p[i + k] & 0x3f);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return false;
                i += n + 1;
        }
        return true;
}

/* ---- lines and tokens ---- */

struct tok {
        const char *p;
        size_t len;
};

#define FAIL(code, why)                          \
        do {                                     \
                e_code = (code);                 \
                e_why = (why);                   \
                goto fail;                       \
        } while (0)

/*
 * Checks the line-level rules and returns the body length (without the line end) in
 * *ret_body. 0 or an error code with a reason.
 */
static enum acs_proto_err line_check(const char *line, size_t len, size_t *ret_body, const char **why)
{
        if (len > ACS_PROTO_LINE_MAX) {
                *why = "line longer than 4096 bytes";
                return ACS_ERR_TOOLONG;
        }
        if (!line || len == 0 || line[len - 1] != '\n') {
                *why = "line does not end in LF";
                return ACS_ERR_SYNTAX;
        }
        size_t body = len - 1;
        if (body > 0 && line[body - 1] == '\r')
                body--;
        if (body == 0) {
                *why = "empty line";
                return ACS_ERR_SYNTAX;
        }
        for (size_t i = 0; i < body; i++) {
                unsigned char c = (unsigned char)line[i];
                if (c < 0x20 || c == 0x7f) {
                        *why = c == 0 ? "NUL byte in line" : c == '\n' ? "LF inside line"
                               : c == '\r' ? "CR not followed by LF" : "control character in line";
                        return ACS_ERR_SYNTAX;
                }
                if (c >= 0x80) {
                        *why = "non-ASCII byte in line (percent-encode it)";
                        return ACS_ERR_SYNTAX;
                }
        }
        *ret_body = body;
        return ACS_ERR_NONE;
}

/* Splits body on single spaces into at most max tokens; *ret_n may exceed max (counted only). */
static enum acs_proto_err split(const char *body, size_t len, struct tok *toks, size_t max, size_t *ret_n,
                                const char **why)
{
        if (body[0] == ' ') {
                *why = "leading space";
                return ACS_ERR_SYNTAX;
        }
        if (body[len - 1] == ' ') {
                *why = "trailing space";
                return ACS_ERR_SYNTAX;
        }
        size_t n = 0, start = 0;
        for (size_t i = 0; i <= len; i++) {
                if (i < len && body[i] != ' ')
                        continue;
                if (i == start) {
                        *why = "two spaces in a row";
                        return ACS_ERR_SYNTAX;
                }
                if (n < max)
                        toks[n] = (struct tok){ body + start, i - start };
                n++;
                start = i + 1;
        }
        *ret_n = n;
        return ACS_ERR_NONE;
}

void acs_proto_cmd_wipe(acs_proto_cmd *c)
{
        if (c)
                sodium_memzero(c, sizeof(*c));
}

/* Decodes a text field into buf (cap = its size), checking length 1..max. */
static enum acs_proto_err field(const struct tok *t, char *buf, size_t cap, size_t *ret_len, const char *name,
                                const char **why)
{
        size_t n;
        int r = acs_proto_pct_decode(t->p, t->len, buf, cap, &n, why);
        if (r == -EMSGSIZE) {
                *why = name;
                return ACS_ERR_VALUE;
        }
        if (r < 0)
                return ACS_ERR_ENCODING;
        *ret_len = n;
        return ACS_ERR_NONE;
}

static bool text_clean(const char *s, size_t len)
{
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
                        return false;
        return true;
}

/* Rules for a user name once decoded; NULL when fine. */
static const char *user_problem(const char *u, size_t len)
{
        if (len == 0)
                return "user is empty";
        if (!acs_proto_utf8_valid(u, len))
                return "user is not valid UTF-8";
        if (!text_clean(u, len))
                return "user contains a control character";
        if (memchr(u, '/', len))
                return "user contains '/'";
        if (u[0] == '.')
                return "user starts with '.'";
        return NULL;
}

static const char *mailbox_problem(const char *m, size_t len)
{
        if (len == 0)
                return "mailbox is empty";
        if (!acs_proto_utf8_valid(m, len))
                return "mailbox is not valid UTF-8";
        if (!text_clean(m, len))
                return "mailbox contains a control character";
        return NULL;
}

/* Decimal 1..ACS_PROTO_VERSION_LIMIT without leading zeros. */
static int version_parse(const struct tok *t, unsigned *ret)
{
        if (t->len == 0 || t->len > 3 || t->p[0] == '0')
                return -EINVAL;
        unsigned v = 0;
        for (size_t i = 0; i < t->len; i++) {
                if (t->p[i] < '0' || t->p[i] > '9')
                        return -EINVAL;
                v = v * 10 + (unsigned)(t->p[i] - '0');
        }
        *ret = v;
        return 0;
}

int acs_proto_parse_cmd(const char *line, size_t len, acs_proto_cmd *ret, enum acs_proto_err *err_r,
                        const char **error_r)
{
        enum acs_proto_err e_code = ACS_ERR_NONE;
        const char *e_why = NULL;
        size_t body, n;
        struct tok t[4];

        sodium_memzero(ret, sizeof(*ret));
        e_code = line_check(line, len, &body, &e_why);
        if (e_code)
                goto fail;
        e_code = split(line, body, t, ACS_ARRAY_SIZE(t), &n, &e_why);
        if (e_code)
                goto fail;
        int type = cmd_lookup(t[0].p, t[0].len);
        if (type == ACS_CMD_INVALID)
                FAIL(ACS_ERR_UNKNOWN, "unknown command (commands are upper case)");
        if (n - 1 < cmd_arity[type].min || n - 1 > cmd_arity[type].max)
                FAIL(ACS_ERR_ARITY, "wrong number of arguments");
        ret->type = type;

        switch (type) {
        case ACS_CMD_HELLO:
                if (version_parse(&t[1], &ret->vmin) < 0 || version_parse(&t[2], &ret->vmax) < 0)
                        FAIL(ACS_ERR_VALUE, "version must be a number 1..999 without leading zeros");
                if (ret->vmin > ret->vmax)
                        FAIL(ACS_ERR_VALUE, "lowest version above highest");
                break;
        case ACS_CMD_OPEN:
                e_code = field(&t[1], ret->user, sizeof(ret->user), &ret->user_len, "user too long", &e_why);
                if (e_code)
                        goto fail;
                e_code = field(&t[2], ret->password, sizeof(ret->password), &ret->password_len,
                               "password too long", &e_why);
                if (e_code)
                        goto fail;
                ret->has_user = true;
                break;
        case ACS_CMD_RESUME:
                if (acs_proto_token_from_hex(t[1].p, t[1].len, ret->token) < 0)
                        FAIL(ACS_ERR_VALUE, "token must be 64 lower-case hex digits");
                break;
        case ACS_CMD_STATUS:
        case ACS_CMD_SYNC:
                if (n > 1) {
                        e_code = field(&t[1], ret->user, sizeof(ret->user), &ret->user_len, "user too long",
                                       &e_why);
                        if (e_code)
                                goto fail;
                        ret->has_user = true;
                }
                if (n > 2) {
                        e_code = field(&t[2], ret->mailbox, sizeof(ret->mailbox), &ret->mailbox_len,
                                       "mailbox too long", &e_why);
                        if (e_code)
                                goto fail;
                        ret->has_mailbox = true;
                }
                break;
        default:
                break;
        }
        if (ret->has_user && (e_why = user_problem(ret->user, ret->user_len)))
                FAIL(ACS_ERR_VALUE, e_why);
        if (ret->has_mailbox && (e_why = mailbox_problem(ret->mailbox, ret->mailbox_len)))
                FAIL(ACS_ERR_VALUE, e_why);
        return 0;

fail:
        sodium_memzero(ret, sizeof(*ret));
        if (err_r)
                *err_r = e_code;
        if (error_r)
                *error_r = e_why;
        return e_code == ACS_ERR_TOOLONG ? -EMSGSIZE : -EINVAL;
}

/* Appends s (n bytes) to buf at *o; false if it does not fit (keeping room for NUL). */
static bool put(char *buf, size_t size, size_t *o, const char *s, size_t n)
{
        if (*o + n >= size)
                return false;
        memcpy(buf + *o, s, n);
        *o += n;
        return true;
}

static bool put_enc(char *buf, size_t size, size_t *o, const void *s, size_t n)
{
        size_t w;
        if (*o >= size || acs_proto_pct_encode(s, n, buf + *o, size - *o, &w) < 0)
                return false;
        *o += w;
        return true;
}

/* Ends a line: LF, NUL; enforces the line limit. */
static int finish(char *buf, size_t size, size_t o, size_t *ret_len)
{
        if (!put(buf, size, &o, "\n", 1))
                return -EMSGSIZE;
        if (o > ACS_PROTO_LINE_MAX)
                return -EMSGSIZE;
        buf[o] = 0;
        *ret_len = o;
        return 0;
}

int acs_proto_format_cmd(const acs_proto_cmd *c, char *buf, size_t size, size_t *ret_len)
{
        const char *name = acs_proto_cmd_name(c->type);
        if (!name)
                return -EINVAL;
        /* Only what parses back: check the fields the command uses. */
        bool need_user = c->type == ACS_CMD_OPEN || c->type == ACS_CMD_SYNC;
        bool may_user = need_user || c->type == ACS_CMD_STATUS;
        if ((need_user && !c->has_user) || (!may_user && c->has_user))
                return -EINVAL;
        if (c->has_user && (c->user_len > ACS_PROTO_USER_MAX || user_problem(c->user, c->user_len) ||
                            memchr(c->user, 0, c->user_len)))
                return -EINVAL;
        if (c->has_mailbox && (c->type != ACS_CMD_SYNC || c->mailbox_len > ACS_PROTO_MAILBOX_MAX ||
                               mailbox_problem(c->mailbox, c->mailbox_len) ||
                               memchr(c->mailbox, 0, c->mailbox_len)))
                return -EINVAL;
        if (c->type == ACS_CMD_OPEN &&
            (c->password_len == 0 || c->password_len > ACS_PROTO_PASSWORD_MAX ||
             memchr(c->password, 0, c->password_len)))
                return -EINVAL;
        if (c->type == ACS_CMD_HELLO &&
            (c->vmin < 1 || c->vmax > ACS_PROTO_VERSION_LIMIT || c->vmin > c->vmax))
                return -EINVAL;

        size_t o = 0;
        char num[16];
        if (!put(buf, size, &o, name, strlen(name)))
                return -EMSGSIZE;
        switch (c->type) {
        case ACS_CMD_HELLO:
                snprintf(num, sizeof(num), " %u", c->vmin);
                if (!put(buf, size, &o, num, strlen(num)))
                        return -EMSGSIZE;
                snprintf(num, sizeof(num), " %u", c->vmax);
                if (!put(buf, size, &o, num, strlen(num)))
                        return -EMSGSIZE;
                break;
        case ACS_CMD_OPEN:
                if (!put(buf, size, &o, " ", 1) || !put_enc(buf, size, &o, c->user, c->user_len) ||
                    !put(buf, size, &o, " ", 1) ||
                    !put_enc(buf, size, &o, c->password, c->password_len))
                        return -EMSGSIZE;
                break;
        case ACS_CMD_RESUME: {
                char hex[ACS_PROTO_TOKEN_HEX + 1];
                acs_proto_token_to_hex(c->token, hex);
                if (!put(buf, size, &o, " ", 1) || !put(buf, size, &o, hex, ACS_PROTO_TOKEN_HEX))
                        return -EMSGSIZE;
                break;
        }
        case ACS_CMD_STATUS:
        case ACS_CMD_SYNC:
                if (c->has_user &&
                    (!put(buf, size, &o, " ", 1) || !put_enc(buf, size, &o, c->user, c->user_len)))
                        return -EMSGSIZE;
                if (c->has_mailbox &&
                    (!put(buf, size, &o, " ", 1) || !put_enc(buf, size, &o, c->mailbox, c->mailbox_len)))
                        return -EMSGSIZE;
                break;
        default:
                break;
        }
        return finish(buf, size, o, ret_len);
}

/* ---- connection state ---- */

enum acs_proto_err acs_proto_check_state(enum acs_proto_conn_state st, enum acs_proto_cmd_type cmd,
                                         const char **why)
{
        const char *w = NULL;
        switch (st) {
        case ACS_CONN_NEW:
                if (cmd != ACS_CMD_HELLO)
                        w = "HELLO first";
                break;
        case ACS_CONN_READY:
                if (cmd == ACS_CMD_HELLO)
                        w = "HELLO was already done";
                else if (cmd == ACS_CMD_CLOSE || cmd == ACS_CMD_WATCH)
                        w = "no session on this connection: OPEN or RESUME first";
                break;
        case ACS_CONN_SESSION:
                if (cmd == ACS_CMD_HELLO)
                        w = "HELLO was already done";
                else if (cmd == ACS_CMD_OPEN || cmd == ACS_CMD_RESUME)
                        w = "this connection has a session already: CLOSE it or use another connection";
                break;
        case ACS_CONN_WATCHING:
        default:
                w = "watching: the connection only carries events now";
                break;
        }
        if (!w && !acs_proto_cmd_name(cmd))
                w = "no such command";
        if (!w)
                return ACS_ERR_NONE;
        if (why)
                *why = w;
        return ACS_ERR_STATE;
}

int acs_proto_negotiate(unsigned vmin, unsigned vmax, unsigned *ret)
{
        unsigned hi = vmax < ACS_PROTO_VERSION ? vmax : ACS_PROTO_VERSION;
        unsigned lo = vmin > ACS_PROTO_VERSION_MIN ? vmin : ACS_PROTO_VERSION_MIN;
        if (lo > hi)
                return -EPROTONOSUPPORT;
        *ret = hi;
        return 0;
}

void acs_proto_token_new(uint8_t ret[ACS_PROTO_TOKEN_SIZE])
{
        randombytes_buf(ret, ACS_PROTO_TOKEN_SIZE);
}

/* ---- replies ---- */

/* [a-z][a-z0-9_]{0,31} */
static bool word_ok(const char *s, size_t len)
{
        if (len == 0 || len > ACS_PROTO_WORD_MAX || s[0] < 'a' || s[0] > 'z')
                return false;
        for (size_t i = 1; i < len; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
                        return false;
        return true;
}

static bool text_ok(const char *s, size_t len)
{
        if (len == 0 || len > ACS_PROTO_TEXT_MAX)
                return false;
        for (size_t i = 0; i < len; i++)
                if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
                        return false;
        return true;
}

const char *acs_proto_reply_key(const acs_proto_reply *r, size_t i)
{
        if (i >= r->n_kv)
                return NULL;
        return r->buf + r->kv[i].key_off;
}

const char *acs_proto_reply_value(const acs_proto_reply *r, size_t i, size_t *ret_len)
{
        if (i >= r->n_kv)
                return NULL;
        if (ret_len)
                *ret_len = r->kv[i].val_len;
        return r->buf + r->kv[i].val_off;
}

const char *acs_proto_reply_get(const acs_proto_reply *r, const char *key, size_t *ret_len)
{
        size_t klen = strlen(key);
        for (size_t i = 0; i < r->n_kv; i++)
                if (r->kv[i].key_len == klen && memcmp(r->buf + r->kv[i].key_off, key, klen) == 0)
                        return acs_proto_reply_value(r, i, ret_len);
        return NULL;
}

static bool has_key(const acs_proto_reply *r, const char *key, size_t klen)
{
        for (size_t i = 0; i < r->n_kv; i++)
                if (r->kv[i].key_len == klen && memcmp(r->buf + r->kv[i].key_off, key, klen) == 0)
                        return true;
        return false;
}

int acs_proto_reply_init(acs_proto_reply *r, enum acs_proto_reply_type type, int cmd_or_err,
                         const char *kind_or_text)
{
        memset(r, 0, offsetof(acs_proto_reply, buf));
        r->buf[0] = 0;
        r->type = type;
        switch (type) {
        case ACS_REPLY_OK:
        case ACS_REPLY_DATA:
                if (!acs_proto_cmd_name(cmd_or_err))
                        return r->error = -EINVAL;
                r->cmd = cmd_or_err;
                return 0;
        case ACS_REPLY_EVENT:
                if (!kind_or_text || !word_ok(kind_or_text, strlen(kind_or_text)))
                        return r->error = -EINVAL;
                memcpy(r->kind, kind_or_text, strlen(kind_or_text) + 1);
                return 0;
        case ACS_REPLY_ERR: {
                const char *name = acs_proto_err_name(cmd_or_err);
                if (!name)
                        return r->error = -EINVAL;
                r->err = cmd_or_err;
                const char *t = kind_or_text && *kind_or_text ? kind_or_text : name;
                size_t i = 0;
                for (; t[i] && i < ACS_PROTO_TEXT_MAX; i++)
                        r->text[i] = (unsigned char)t[i] >= 0x20 && (unsigned char)t[i] <= 0x7e ? t[i] : '?';
                r->text[i] = 0;
                return 0;
        }
        default:
                r->type = ACS_REPLY_INVALID;
                return r->error = -EINVAL;
        }
}

int acs_proto_reply_add(acs_proto_reply *r, const char *key, const void *value, size_t len)
{
        if (r->error)
                return r->error;
        size_t klen = key ? strlen(key) : 0;
        if ((r->type != ACS_REPLY_OK && r->type != ACS_REPLY_DATA && r->type != ACS_REPLY_EVENT) ||
            !word_ok(key, klen) || has_key(r, key, klen) || (len && !value) || (len && memchr(value, 0, len)))
                return r->error = -EINVAL;
        if (r->n_kv == ACS_PROTO_KV_MAX || r->buf_used + klen + 1 + len + 1 > sizeof(r->buf))
                return r->error = -EMSGSIZE;
        struct acs_proto_kv *kv = &r->kv[r->n_kv++];
        kv->key_off = (uint16_t)r->buf_used;
        kv->key_len = (uint16_t)klen;
        memcpy(r->buf + r->buf_used, key, klen + 1);
        r->buf_used += klen + 1;
        kv->val_off = (uint16_t)r->buf_used;
        kv->val_len = (uint16_t)len;
        if (len)
                memcpy(r->buf + r->buf_used, value, len);
        r->buf[r->buf_used + len] = 0;
        r->buf_used += len + 1;
        return 0;
}

int acs_proto_reply_add_str(acs_proto_reply *r, const char *key, const char *value)
{
        return acs_proto_reply_add(r, key, value, value ? strlen(value) : 0);
}

int acs_proto_reply_add_u64(acs_proto_reply *r, const char *key, uint64_t value)
{
        char num[24];
        int n = snprintf(num, sizeof(num), "%" PRIu64, value);
        return acs_proto_reply_add(r, key, num, (size_t)n);
}

int acs_proto_format_reply(const acs_proto_reply *r, char *buf, size_t size, size_t *ret_len)
{
        if (r->error)
                return r->error;
        size_t o = 0;
        const char *word;
        switch (r->type) {
        case ACS_REPLY_OK:
        case ACS_REPLY_DATA:
                word = acs_proto_cmd_name(r->cmd);
                if (!word)
                        return -EINVAL;
                if (!put(buf, size, &o, r->type == ACS_REPLY_OK ? "OK " : "DATA ",
                         r->type == ACS_REPLY_OK ? 3 : 5))
                        return -EMSGSIZE;
                break;
        case ACS_REPLY_EVENT:
                word = r->kind;
                if (!word_ok(word, strnlen(word, sizeof(r->kind))))
                        return -EINVAL;
                if (!put(buf, size, &o, "EVENT ", 6))
                        return -EMSGSIZE;
                break;
        case ACS_REPLY_ERR: {
                word = acs_proto_err_name(r->err);
                size_t tlen = strnlen(r->text, sizeof(r->text));
                if (!word || r->n_kv || !text_ok(r->text, tlen))
                        return -EINVAL;
                if (!put(buf, size, &o, "ERR ", 4) || !put(buf, size, &o, word, strlen(word)) ||
                    !put(buf, size, &o, " ", 1) || !put(buf, size, &o, r->text, tlen))
                        return -EMSGSIZE;
                return finish(buf, size, o, ret_len);
        }
        default:
                return -EINVAL;
        }
        if (!put(buf, size, &o, word, strlen(word)))
                return -EMSGSIZE;
        if (r->n_kv > ACS_PROTO_KV_MAX)
                return -EINVAL;
        for (size_t i = 0; i < r->n_kv; i++) {
                const struct acs_proto_kv *kv = &r->kv[i];
                if ((size_t)kv->key_off + kv->key_len >= sizeof(r->buf) ||
                    (size_t)kv->val_off + kv->val_len >= sizeof(r->buf) ||
                    !word_ok(r->buf + kv->key_off, kv->key_len) ||
                    memchr(r->buf + kv->val_off, 0, kv->val_len))
                        return -EINVAL;
                if (!put(buf, size, &o, " ", 1) || !put(buf, size, &o, r->buf + kv->key_off, kv->key_len) ||
                    !put(buf, size, &o, "=", 1) || !put_enc(buf, size, &o, r->buf + kv->val_off, kv->val_len))
                        return -EMSGSIZE;
        }
        return finish(buf, size, o, ret_len);
}

int acs_proto_format_err(enum acs_proto_err code, const char *text, char *buf, size_t size,
                         size_t *ret_len)
{
        acs_proto_reply r;
        acs_proto_reply_init(&r, ACS_REPLY_ERR, code, text);
        return acs_proto_format_reply(&r, buf, size, ret_len);
}

int acs_proto_parse_reply(const char *line, size_t len, acs_proto_reply *ret, const char **error_r)
{
        enum acs_proto_err e_code = ACS_ERR_NONE;
        const char *e_why = NULL;
        size_t body, n;
        struct tok t[2 + ACS_PROTO_KV_MAX];

        memset(ret, 0, sizeof(*ret));
        e_code = line_check(line, len, &body, &e_why);
        if (e_code)
                goto fail;

        if (body > 4 && memcmp(line, "ERR ", 4) == 0) {
                const char *code = line + 4, *sp = memchr(code, ' ', body - 4);
                if (!sp)
                        FAIL(ACS_ERR_SYNTAX, "ERR needs a code and a text");
                int err = err_lookup(code, (size_t)(sp - code));
                if (err == ACS_ERR_NONE)
                        FAIL(ACS_ERR_VALUE, "unknown error code");
                size_t tlen = body - (size_t)(sp + 1 - line);
                if (!text_ok(sp + 1, tlen))
                        FAIL(ACS_ERR_VALUE, "ERR text empty or longer than 512 bytes");
                ret->type = ACS_REPLY_ERR;
                ret->err = err;
                memcpy(ret->text, sp + 1, tlen);
                ret->text[tlen] = 0;
                return 0;
        }

        e_code = split(line, body, t, ACS_ARRAY_SIZE(t), &n, &e_why);
        if (e_code)
                goto fail;
        if (n > ACS_ARRAY_SIZE(t))
                FAIL(ACS_ERR_ARITY, "more than 16 key=value pairs");
        if (n < 2)
                FAIL(ACS_ERR_ARITY, "reply needs a type and a word");
        if (t[0].len == 2 && memcmp(t[0].p, "OK", 2) == 0)
                ret->type = ACS_REPLY_OK;
        else if (t[0].len == 4 && memcmp(t[0].p, "DATA", 4) == 0)
                ret->type = ACS_REPLY_DATA;
        else if (t[0].len == 5 && memcmp(t[0].p, "EVENT", 5) == 0)
                ret->type = ACS_REPLY_EVENT;
        else
                FAIL(ACS_ERR_UNKNOWN, "unknown reply type");
        if (ret->type == ACS_REPLY_EVENT) {
                if (!word_ok(t[1].p, t[1].len))
                        FAIL(ACS_ERR_VALUE, "bad event kind");
                memcpy(ret->kind, t[1].p, t[1].len);
                ret->kind[t[1].len] = 0;
        } else {
                ret->cmd = cmd_lookup(t[1].p, t[1].len);
                if (ret->cmd == ACS_CMD_INVALID)
                        FAIL(ACS_ERR_UNKNOWN, "unknown command in reply");
        }
        for (size_t i = 2; i < n; i++) {
                const char *eq = memchr(t[i].p, '=', t[i].len);
                if (!eq)
                        FAIL(ACS_ERR_SYNTAX, "pair without '='");
                size_t klen = (size_t)(eq - t[i].p);
                if (!word_ok(t[i].p, klen))
                        FAIL(ACS_ERR_VALUE, "bad key");
                if (has_key(ret, t[i].p, klen))
                        FAIL(ACS_ERR_VALUE, "duplicate key");
                struct acs_proto_kv *kv = &ret->kv[ret->n_kv];
                kv->key_off = (uint16_t)ret->buf_used;
                kv->key_len = (uint16_t)klen;
                memcpy(ret->buf + ret->buf_used, t[i].p, klen);
                ret->buf[ret->buf_used + klen] = 0;
                ret->buf_used += klen + 1;
                size_t vlen;
                /* Always fits: decoded pairs are never longer than the line they came from. */
                if (acs_proto_pct_decode(eq + 1, t[i].len - klen - 1, ret->buf + ret->buf_used,
                                         sizeof(ret->buf) - ret->buf_used, &vlen, &e_why) < 0)
                        FAIL(ACS_ERR_ENCODING, e_why);
                kv->val_off = (uint16_t)ret->buf_used;
                kv->val_len = (uint16_t)vlen;
                ret->buf_used += vlen + 1;
                ret->n_kv++;
        }
        return 0;

fail:
        memset(ret, 0, sizeof(*ret));
        if (error_r)
                *error_r = e_why;
        return e_code == ACS_ERR_TOOLONG ? -EMSGSIZE : -EINVAL;
}

/* ---- line reader ---- */

void acs_proto_reader_init(acs_proto_reader *r)
{
        memset(r, 0, sizeof(*r));
}

void acs_proto_reader_wipe(acs_proto_reader *r)
{
        sodium_memzero(r, sizeof(*r));
}

void acs_proto_reader_space(acs_proto_reader *r, char **ret_ptr, size_t *ret_size)
{
        if (r->start > 0) {
                size_t rest = r->len - r->start;
                memmove(r->buf, r->buf + r->start, rest);
                sodium_memzero(r->buf + rest, r->len - rest);
                r->len = rest;
                r->start = 0;
        }
        *ret_ptr = r->buf + r->len;
        *ret_size = sizeof(r->buf) - r->len;
}

void acs_proto_reader_commit(acs_proto_reader *r, size_t n)
{
        size_t room = sizeof(r->buf) - r->len;
        r->len += n < room ? n : room;
}

int acs_proto_reader_next(acs_proto_reader *r, const char **ret_line, size_t *ret_len)
{
        for (;;) {
                if (r->discarding) {
                        char *lf = memchr(r->buf + r->start, '\n', r->len - r->start);
                        if (!lf) {
                                sodium_memzero(r->buf, r->len);
                                r->start = r->len = r->scanned = 0;
                                return 0;
                        }
                        size_t end = (size_t)(lf - r->buf) + 1;
                        sodium_memzero(r->buf + r->start, end - r->start);
                        r->start = end;
                        r->scanned = 0;
                        r->discarding = false;
                        continue;
                }
                size_t from = r->start + r->scanned;
                char *lf = memchr(r->buf + from, '\n', r->len - from);
                if (lf) {
                        size_t end = (size_t)(lf - r->buf) + 1;
                        *ret_line = r->buf + r->start;
                        *ret_len = end - r->start;
                        r->start = end;
                        r->scanned = 0;
                        return 1;
                }
                r->scanned = r->len - r->start;
                if (r->scanned >= sizeof(r->buf)) {
                        sodium_memzero(r->buf, sizeof(r->buf));
                        r->start = r->len = r->scanned = 0;
                        r->discarding = true;
                        return -EMSGSIZE;
                }
                return 0;
        }
}

bool acs_proto_reader_pending(const acs_proto_reader *r)
{
        return r->discarding || r->len > r->start;
}
