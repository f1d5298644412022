/* SPDX-License-Identifier: MIT */
/* Mailbox names: strict IMAP modified UTF-7 <-> UTF-8, and mailbox names <-> tree paths. */
#include "acs/mboxname.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "acs/util.h"

/* ---- a small growable string (internal) ---- */

typedef struct {
        char *s;
        size_t len, cap;
} sbuf;

static int sbuf_reserve(sbuf *b, size_t more)
{
        if (b->len + more + 1 <= b->cap)
                return 0;
        size_t cap = b->cap ? b->cap : 32;
        while (cap < b->len + more + 1)
                cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s)
                return -ENOMEM;
        b->s = s;
        b->cap = cap;
        return 0;
}

static int sbuf_putn(sbuf *b, const char *p, size_t n)
{
        int r = sbuf_reserve(b, n);
        if (r < 0)
                return r;
        memcpy(b->s + b->len, p, n);
        b->len += n;
        b->s[b->len] = '\0';
        return 0;
}

static int sbuf_putc(sbuf *b, char c) { return sbuf_putn(b, &c, 1); }

/* Hands the string to the caller (never NULL on success: "" for nothing appended). */
static int sbuf_take(sbuf *b, char **ret)
{
        int r = sbuf_reserve(b, 0);
        if (r < 0)
                return r;
        b->s[b->len] = '\0';
        *ret = b->s;
        *b = (sbuf){ 0 };
        return 0;
}

static void sbuf_freep(sbuf *b) { free(b->s); }
#define _cleanup_sbuf_ __attribute__((cleanup(sbuf_freep)))

/* ---- modified UTF-7 ---- */

static const char b64_chars[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int b64_value(unsigned char c)
{
        if (c >= 'A' && c <= 'Z')
                return c - 'A';
        if (c >= 'a' && c <= 'z')
                return c - 'a' + 26;
        if (c >= '0' && c <= '9')
                return c - '0' + 52;
        if (c == '+')
                return 62;
        if (c == ',')
                return 63;
        return -1;
}

static bool is_printable_ascii(uint32_t c) { return c >= 0x20 && c <= 0x7e; }

/* Appends code point cp (a valid scalar value) as UTF-8. */
static int put_utf8(sbuf *b, uint32_t cp)
{
        char u[4];
        size_t n;

        if (cp < 0x80) {
                u[0] = (char)cp;
                n = 1;
        } else if (cp < 0x800) {
                u[0] = (char)(0xc0 | (cp >> 6));
                u[1] = (char)(0x80 | (cp & 0x3f));
                n = 2;
        } else if (cp < 0x10000) {
                u[0] = (char)(0xe0 | (cp >> 12));
                u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
                u[2] = (char)(0x80 | (cp & 0x3f));
                n = 3;
        } else {
                u[0] = (char)(0xf0 | (cp >> 18));
                u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
                u[3] = (char)(0x80 | (cp & 0x3f));
                n = 4;
        }
        return sbuf_putn(b, u, n);
}

/*
 * Decodes the base64 run starting at *pp (just after '&', not "&-") up to and including
 * its '-'; advances *pp past the '-'.
 */
static int decode_run(const char **pp, sbuf *out, const char **error_r)
{
        const unsigned char *p = (const unsigned char *)*pp;
        uint32_t bits = 0;
        unsigned nbits = 0;
        uint32_t high = 0; /* pending high surrogate, 0 if none */
        int r;

        for (;; p++) {
                if (*p == '-')
                        break;
                if (*p == '\0') {
                        *error_r = "unterminated \"&\" run";
                        return -EINVAL;
                }
                int v = b64_value(*p);
                if (v < 0) {
                        *error_r = is_printable_ascii(*p) ? "bad base64 character in \"&\" run"
                                                          : "byte outside 0x20..0x7e";
                        return -EINVAL;
                }
                bits = (bits << 6) | (uint32_t)v;
                nbits += 6;
                if (nbits < 16)
                        continue;
                nbits -= 16;
                uint32_t unit = (bits >> nbits) & 0xffff;
                bits &= (UINT32_C(1) << nbits) - 1;

                if (high) {
                        if (unit < 0xdc00 || unit > 0xdfff) {
                                *error_r = "unpaired high surrogate";
                                return -EINVAL;
                        }
                        r = put_utf8(out, 0x10000 + ((high - 0xd800) << 10) + (unit - 0xdc00));
                        if (r < 0)
                                return r;
                        high = 0;
                } else if (unit >= 0xd800 && unit <= 0xdbff) {
                        high = unit;
                } else if (unit >= 0xdc00 && unit <= 0xdfff) {
                        *error_r = "unpaired low surrogate";
                        return -EINVAL;
                } else if (unit == 0) {
                        *error_r = "encoded NUL";
                        return -EINVAL;
                } else if (is_printable_ascii(unit)) {
                        *error_r = "\"&\" run encodes printable ASCII (not minimal)";
                        return -EINVAL;
                } else {
                        r = put_utf8(out, unit);
                        if (r < 0)
                                return r;
                }
        }

        if (high) {
                *error_r = "unpaired high surrogate";
                return -EINVAL;
        }
        if (nbits >= 6) {
                *error_r = "extra base64 characters in \"&\" run (not minimal)";
                return -EINVAL;
        }
        if (bits != 0) {
                *error_r = "nonzero padding bits in \"&\" run";
                return -EINVAL;
        }
        *pp = (const char *)p + 1;
        return 0;
}

int acs_mutf7_to_utf8(const char *in, char **ret, const char **error_r)
{
        _cleanup_sbuf_ sbuf out = { 0 };
        const char *dummy_error;
        const char *p = in;
        bool after_run = false;
        int r;

        if (!error_r)
                error_r = &dummy_error;
        if (!in) {
                *error_r = "no name";
                return -EINVAL;
        }
        while (*p) {
                unsigned char c = (unsigned char)*p;
                if (!is_printable_ascii(c)) {
                        *error_r = "byte outside 0x20..0x7e";
                        return -EINVAL;
                }
                if (c != '&') {
                        r = sbuf_putc(&out, (char)c);
                        if (r < 0)
                                return r;
                        p++;
                        after_run = false;
                        continue;
                }
                if (p[1] == '-') {
                        r = sbuf_putc(&out, '&');
                        if (r < 0)
                                return r;
                        p += 2;
                        after_run = false;
                        continue;
                }
                if (after_run) {
                        *error_r = "adjacent \"&\" runs (not minimal)";
                        return -EINVAL;
                }
                p++;
                r = decode_run(&p, &out, error_r);
                if (r < 0)
                        return r;
                after_run = true;
        }
        return sbuf_take(&out, ret);
}

/*
 * Decodes one UTF-8 sequence at *pp into *ret_cp and advances *pp. Rejects overlong
 * forms, surrogates, values above U+10FFFF, stray and missing continuation bytes.
 */
static int utf8_next(const unsigned char **pp, uint32_t *ret_cp, const char **error_r)
{
        const unsigned char *p = *pp;
        uint32_t cp, min;
        unsigned n;

        if (p[0] < 0x80) {
                *ret_cp = p[0];
                *pp = p + 1;
                return 0;
        }
        if (p[0] < 0xc0) {
                *error_r = "invalid UTF-8: stray continuation byte";
                return -EINVAL;
        } else if (p[0] < 0xe0) {
                cp = p[0] & 0x1f;
                n = 1;
                min = 0x80;
        } else if (p[0] < 0xf0) {
                cp = p[0] & 0x0f;
                n = 2;
                min = 0x800;
        } else if (p[0] < 0xf8) {
                cp = p[0] & 0x07;
                n = 3;
                min = 0x10000;
        } else {
                *error_r = "invalid UTF-8: bad lead byte";
                return -EINVAL;
        }
        for (unsigned i = 1; i <= n; i++) {
                if ((p[i] & 0xc0) != 0x80) {
                        *error_r = "invalid UTF-8: truncated sequence";
                        return -EINVAL;
                }
                cp = (cp << 6) | (p[i] & 0x3f);
        }
        if (cp < min) {
                *error_r = "invalid UTF-8: overlong encoding";
                return -EINVAL;
        }
        if (cp >= 0xd800 && cp <= 0xdfff) {
                *error_r = "invalid UTF-8: surrogate code point";
                return -EINVAL;
        }
        if (cp > 0x10ffff) {
                *error_r = "invalid UTF-8: code point above U+10FFFF";
                return -EINVAL;
        }
        *ret_cp = cp;
        *pp = p + n + 1;
        return 0;
}

/* Appends one 16-bit unit to the base64 bit accumulator, flushing whole sextets. */
static int put_unit(sbuf *out, uint32_t unit, uint32_t *bits, unsigned *nbits)
{
        int r;

        *bits = (*bits << 16) | unit;
        *nbits += 16;
        while (*nbits >= 6) {
                *nbits -= 6;
                r = sbuf_putc(out, b64_chars[(*bits >> *nbits) & 0x3f]);
                if (r < 0)
                        return r;
        }
        *bits &= (UINT32_C(1) << *nbits) - 1;
        return 0;
}

int acs_utf8_to_mutf7(const char *in, char **ret, const char **error_r)
{
        _cleanup_sbuf_ sbuf out = { 0 };
        const char *dummy_error;
        const unsigned char *p = (const unsigned char *)in;
        int r;

        if (!error_r)
                error_r = &dummy_error;
        if (!in) {
                *error_r = "no name";
                return -EINVAL;
        }
        while (*p) {
                if (is_printable_ascii(*p)) {
                        r = *p == '&' ? sbuf_putn(&out, "&-", 2) : sbuf_putc(&out, (char)*p);
                        if (r < 0)
                                return r;
                        p++;
                        continue;
                }
                /* A run of everything up to the next printable ASCII character. */
                uint32_t bits = 0;
                unsigned nbits = 0;
                r = sbuf_putc(&out, '&');
                if (r < 0)
                        return r;
                while (*p && !is_printable_ascii(*p)) {
                        uint32_t cp;
                        r = utf8_next(&p, &cp, error_r);
                        if (r < 0)
                                return r;
                        if (cp >= 0x10000) {
                                cp -= 0x10000;
                                r = put_unit(&out, 0xd800 + (cp >> 10), &bits, &nbits);
                                if (r >= 0)
                                        r = put_unit(&out, 0xdc00 + (cp & 0x3ff), &bits, &nbits);
                        } else {
                                r = put_unit(&out, cp, &bits, &nbits);
                        }
                        if (r < 0)
                                return r;
                }
                if (nbits > 0) {
                        r = sbuf_putc(&out, b64_chars[(bits << (6 - nbits)) & 0x3f]);
                        if (r < 0)
                                return r;
                }
                r = sbuf_putc(&out, '-');
                if (r < 0)
                        return r;
        }
        return sbuf_take(&out, ret);
}

/* ---- mailbox names <-> paths ---- */

static const char hex_upper[] = "0123456789ABCDEF";

static bool is_reserved_fs_name(const char *s, size_t len)
{
        return len == 3 && (memcmp(s, "cur", 3) == 0 || memcmp(s, "new", 3) == 0 ||
                            memcmp(s, "tmp", 3) == 0);
}

/* Whether byte i of the component s (length len) must be written as %XX. */
static bool needs_escape(const char *s, size_t len, size_t i, enum acs_layout layout)
{
        char c = s[i];

        if (c == '%' || c == '/')
                return true;
        if (c == '.' && (i == 0 || layout == ACS_LAYOUT_MAILDIRPP))
                return true;
        if (i == 0 && layout == ACS_LAYOUT_FS && is_reserved_fs_name(s, len))
                return true;
        return false;
}

/* Appends the escaped form of the component [s, s+len) to out. */
static int escape_into(sbuf *out, const char *s, size_t len, enum acs_layout layout)
{
        int r;

        if (len == 0)
                return -EINVAL;
        for (size_t i = 0; i < len; i++) {
                if (needs_escape(s, len, i, layout)) {
                        unsigned char c = (unsigned char)s[i];
                        char e[3] = { '%', hex_upper[c >> 4], hex_upper[c & 15] };
                        r = sbuf_putn(out, e, 3);
                } else {
                        r = sbuf_putc(out, s[i]);
                }
                if (r < 0)
                        return r;
        }
        return 0;
}

int acs_mbox_component_escape(const char *component, enum acs_layout layout, char **ret)
{
        _cleanup_sbuf_ sbuf out = { 0 };
        int r;

        if (!component || (layout != ACS_LAYOUT_FS && layout != ACS_LAYOUT_MAILDIRPP))
                return -EINVAL;
        r = escape_into(&out, component, strlen(component), layout);
        if (r < 0)
                return r;
        return sbuf_take(&out, ret);
}

static int hex_value(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/*
 * Unescapes the component [s, s+len) into out; rejects anything escape_into() cannot
 * have produced, so that escape(unescape(x)) == x for every accepted x.
 */
static int unescape_into(sbuf *out, const char *s, size_t len, enum acs_layout layout,
                         const char **error_r)
{
        size_t start = out->len;
        int r;

        if (len == 0) {
                *error_r = "empty path component";
                return -EINVAL;
        }
        if (layout == ACS_LAYOUT_FS && is_reserved_fs_name(s, len)) {
                *error_r = "path component is a reserved name (cur, new, tmp)";
                return -EINVAL;
        }
        for (size_t i = 0; i < len; i++) {
                char c = s[i];
                if (c == '/') {
                        *error_r = "'/' in path component";
                        return -EINVAL;
                }
                if (c == '.' && i == 0) {
                        *error_r = "path component starts with '.'";
                        return -EINVAL;
                }
                if (c == '.' && layout == ACS_LAYOUT_MAILDIRPP) {
                        *error_r = "unescaped '.' in Maildir++ path component";
                        return -EINVAL;
                }
                if (c != '%') {
                        r = sbuf_putc(out, c);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (i + 2 >= len) {
                        *error_r = "truncated %XX escape";
                        return -EINVAL;
                }
                int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
                if (hi < 0 || lo < 0) {
                        *error_r = "malformed %XX escape (two upper-case hex digits)";
                        return -EINVAL;
                }
                r = sbuf_putc(out, (char)(hi << 4 | lo));
                if (r < 0)
                        return r;
                i += 2;
        }

        /* Every escape must be one the escape function would have written. */
        const char *u = out->s + start;
        size_t ulen = out->len - start;
        if (memchr(u, '\0', ulen)) {
                *error_r = "escaped NUL in path component";
                return -EINVAL;
        }
        size_t j = 0;
        for (size_t i = 0; i < len; i++, j++) {
                bool escaped = s[i] == '%';
                if (escaped != needs_escape(u, ulen, j, layout)) {
                        *error_r = "needless %XX escape (not canonical)";
                        return -EINVAL;
                }
                if (escaped)
                        i += 2;
        }
        return 0;
}

int acs_mbox_component_unescape(const char *component, enum acs_layout layout, char **ret,
                                const char **error_r)
{
        _cleanup_sbuf_ sbuf out = { 0 };
        const char *dummy_error;
        int r;

        if (!error_r)
                error_r = &dummy_error;
        if (!component || (layout != ACS_LAYOUT_FS && layout != ACS_LAYOUT_MAILDIRPP)) {
                *error_r = "bad arguments";
                return -EINVAL;
        }
        r = unescape_into(&out, component, strlen(component), layout, error_r);
        if (r < 0)
                return r;
        return sbuf_take(&out, ret);
}

int acs_mbox_to_path(const char *name, char delim, enum acs_layout layout, char **ret)
{
        _cleanup_sbuf_ sbuf out = { 0 };
        const char *p, *end;
        int r;

        if (!name || !*name || (layout != ACS_LAYOUT_FS && layout != ACS_LAYOUT_MAILDIRPP))
                return -EINVAL;
        if (layout == ACS_LAYOUT_MAILDIRPP && strcmp(name, "INBOX") == 0)
                return sbuf_take(&out, ret);

        end = name + strlen(name);
        for (p = name;; ) {
                const char *lvl_end = delim ? memchr(p, delim, (size_t)(end - p)) : NULL;
                if (!lvl_end)
                        lvl_end = end;
                if (layout == ACS_LAYOUT_MAILDIRPP || p != name) {
                        r = sbuf_putc(&out, layout == ACS_LAYOUT_MAILDIRPP ? '.' : '/');
                        if (r < 0)
                                return r;
                }
                r = escape_into(&out, p, (size_t)(lvl_end - p), layout);
                if (r < 0)
                        return r;
                if (lvl_end == end)
                        break;
                p = lvl_end + 1;
        }
        return sbuf_take(&out, ret);
}

int acs_path_to_mbox(const char *path, char delim, enum acs_layout layout, char **ret,
                     const char **error_r)
{
        _cleanup_sbuf_ sbuf out = { 0 };
        const char *dummy_error;
        const char *p, *end;
        char sep;
        int r;

        if (!error_r)
                error_r = &dummy_error;
        if (!path || (layout != ACS_LAYOUT_FS && layout != ACS_LAYOUT_MAILDIRPP)) {
                *error_r = "bad arguments";
                return -EINVAL;
        }
        if (layout == ACS_LAYOUT_MAILDIRPP) {
                if (!*path) {
                        r = sbuf_putn(&out, "INBOX", 5);
                        if (r < 0)
                                return r;
                        return sbuf_take(&out, ret);
                }
                if (path[0] != '.') {
                        *error_r = "Maildir++ folder path does not start with '.'";
                        return -EINVAL;
                }
                if (strchr(path, '/')) {
                        *error_r = "'/' in Maildir++ folder path";
                        return -EINVAL;
                }
                p = path + 1;
                sep = '.';
        } else {
                if (!*path) {
                        *error_r = "empty path";
                        return -EINVAL;
                }
                p = path;
                sep = '/';
        }

        end = path + strlen(path);
        for (bool first = true;; first = false) {
                const char *comp_end = memchr(p, sep, (size_t)(end - p));
                if (!comp_end)
                        comp_end = end;
                if (!first) {
                        if (!delim) {
                                *error_r = "nested path but the hierarchy is flat";
                                return -EINVAL;
                        }
                        r = sbuf_putc(&out, delim);
                        if (r < 0)
                                return r;
                }
                size_t level_start = out.len;
                r = unescape_into(&out, p, (size_t)(comp_end - p), layout, error_r);
                if (r < 0)
                        return r;
                if (delim && memchr(out.s + level_start, delim, out.len - level_start)) {
                        *error_r = "mailbox level contains the hierarchy delimiter";
                        return -EINVAL;
                }
                if (comp_end == end)
                        break;
                p = comp_end + 1;
        }

        /* Final guard: only paths that acs_mbox_to_path() produces are accepted. */
        _cleanup_free_ char *back = NULL;
        r = sbuf_reserve(&out, 0);
        if (r < 0)
                return r;
        r = acs_mbox_to_path(out.s, delim, layout, &back);
        if (r == -ENOMEM)
                return r;
        if (r < 0 || strcmp(back, path) != 0) {
                *error_r = layout == ACS_LAYOUT_MAILDIRPP && strcmp(out.s, "INBOX") == 0
                                   ? "INBOX is the root in the Maildir++ layout"
                                   : "path is not the canonical form of its mailbox name";
                return -EINVAL;
        }
        return sbuf_take(&out, ret);
}
