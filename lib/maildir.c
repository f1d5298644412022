/* SPDX-License-Identifier: MIT */
/* Maildir file names (parse/build of "<uniq>,S=<n>,W=<n>:2,<flags>") and line-end conversions. */
#include "acs/maildir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acs/store.h"
#include "acs/util.h"

/*
 * Info letters: D F P R S T are system flags, a..z keywords, any other byte in
 * 0x21..0x7e except '/' is an "other" letter kept verbatim. At most this many distinct
 * letters fit the 64-byte buffer of acs_mdname_flag_letters() (63 + NUL).
 */
#define MAX_INFO_LETTERS 63

static const char system_letters[] = "DFPRST";

/* Returns the acs_flag bit of a system flag letter, 0 for any other byte. */
static unsigned system_flag_bit(unsigned char c)
{
        const char *p = c ? strchr(system_letters, c) : NULL;
        return p ? 1u << (p - system_letters) : 0;
}

static bool is_keyword_letter(unsigned char c) { return c >= 'a' && c <= 'z'; }

/* A byte that may appear as an info letter at all (printable, no space, no '/'). */
static bool is_info_byte(unsigned char c) { return c >= 0x21 && c <= 0x7e && c != '/'; }

static bool is_other_letter(unsigned char c)
{
        return is_info_byte(c) && !system_flag_bit(c) && !is_keyword_letter(c);
}

void acs_mdname_clear(acs_mdname *n)
{
        if (!n)
                return;
        free(n->uniq);
        free(n->other);
        *n = (acs_mdname){ 0 };
}

/*
 * Parses the decimal digits of [p, end) into *ret: at least one digit, digits only, no
 * leading zero except "0" itself, no overflow of uint64_t.
 */
static int parse_u64(const char *p, const char *end, uint64_t *ret, const char **error_r)
{
        uint64_t v = 0;

        if (p == end) {
                *error_r = "empty number in S=/W= field";
                return -EINVAL;
        }
        if (*p == '0' && end - p > 1) {
                *error_r = "leading zero in S=/W= field";
                return -EINVAL;
        }
        for (; p < end; p++) {
                if (*p < '0' || *p > '9') {
                        *error_r = "non-digit in S=/W= field";
                        return -EINVAL;
                }
                unsigned d = (unsigned)(*p - '0');
                if (v > (UINT64_MAX - d) / 10) {
                        *error_r = "S=/W= value overflows 64 bits";
                        return -EINVAL;
                }
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

int acs_mdname_parse(const char *name, acs_mdname *ret, const char **error_r)
{
        const char *dummy_error;
        acs_mdname n = { 0 };
        const char *p, *uniq_end, *info;
        int r;

        if (!error_r)
                error_r = &dummy_error;
        if (!name || !*name) {
                *error_r = "empty name";
                return -EINVAL;
        }
        if (strchr(name, '/')) {
                *error_r = "name contains '/'";
                return -EINVAL;
        }
        if (name[0] == '.') {
                *error_r = "name starts with '.'";
                return -EINVAL;
        }

        uniq_end = name + strcspn(name, ",:");
        if (uniq_end == name) {
                *error_r = "empty unique part";
                return -EINVAL;
        }

        /* ",field" parts up to the info; S= and W= are checked, others ignored. */
        info = strchr(uniq_end, ':');
        if (!info)
                info = uniq_end + strlen(uniq_end);
        for (p = uniq_end; p < info;) {
                const char *field = p + 1;
                const char *field_end = memchr(field, ',', (size_t)(info - field));
                if (!field_end)
                        field_end = info;
                if (field_end - field >= 2 && field[1] == '=' &&
                    (field[0] == 'S' || field[0] == 'W')) {
                        bool *has = field[0] == 'S' ? &n.has_size : &n.has_vsize;
                        uint64_t *val = field[0] == 'S' ? &n.size : &n.vsize;
                        if (*has) {
                                *error_r = field[0] == 'S' ? "duplicate S= field"
                                                           : "duplicate W= field";
                                return -EINVAL;
                        }
                        r = parse_u64(field + 2, field_end, val, error_r);
                        if (r < 0)
                                return r;
                        *has = true;
                }
                p = field_end;
        }

        _cleanup_free_ char *other = NULL;
        if (*info == ':') {
                const char *f = info + 1;
                if (f[0] == '1' && f[1] == ',') {
                        *error_r = "experimental \":1,\" info is not supported";
                        return -EINVAL;
                }
                if (f[0] != '2' || f[1] != ',') {
                        *error_r = "info part is not \":2,\"";
                        return -EINVAL;
                }
                f += 2;
                other = malloc(strlen(f) + 1);
                if (!other)
                        return -ENOMEM;
                size_t n_other = 0;
                unsigned distinct = 0;
                bool seen[128] = { false };
                for (; *f; f++) {
                        unsigned char c = (unsigned char)*f;
                        if (!is_info_byte(c)) {
                                *error_r = "info letter is not printable non-space ASCII";
                                return -EINVAL;
                        }
                        if (seen[c])
                                continue;
                        seen[c] = true;
                        if (++distinct > MAX_INFO_LETTERS) {
                                *error_r = "too many distinct info letters";
                                return -EINVAL;
                        }
                        if (system_flag_bit(c))
                                n.flags |= system_flag_bit(c);
                        else if (is_keyword_letter(c))
                                n.keywords |= UINT32_C(1) << (c - 'a');
                        else
                                other[n_other++] = (char)c;
                }
                other[n_other] = '\0';
                n.has_info = true;
        } else {
                other = strdup("");
                if (!other)
                        return -ENOMEM;
        }

        n.uniq = strndup(name, (size_t)(uniq_end - name));
        if (!n.uniq)
                return -ENOMEM;
        n.other = TAKE_PTR(other);
        *ret = n;
        return 0;
}

/* Checks a unique part for build: non-empty, no ',', ':', '/', not starting with '.'. */
static bool uniq_valid(const char *uniq)
{
        return uniq && *uniq && uniq[0] != '.' && !uniq[strcspn(uniq, ",:/")];
}

/* Checks "other" letters for build: each an other-letter, at most the cap in total. */
static bool other_valid(const char *other, unsigned flags, uint32_t keywords)
{
        unsigned n = (unsigned)__builtin_popcount(flags & ACS_FLAG_ALL) +
                     (unsigned)__builtin_popcount(keywords & ((UINT32_C(1) << 26) - 1));
        bool seen[128] = { false };

        for (const unsigned char *p = (const unsigned char *)(other ? other : ""); *p; p++) {
                if (!is_other_letter(*p))
                        return false;
                if (!seen[*p]) {
                        seen[*p] = true;
                        n++;
                }
        }
        return n <= MAX_INFO_LETTERS;
}

size_t acs_mdname_flag_letters(unsigned flags, uint32_t keywords, const char *other, char *buf)
{
        bool present[128] = { false };
        size_t len = 0;

        for (unsigned i = 0; system_letters[i]; i++)
                if (flags & (1u << i))
                        present[(unsigned char)system_letters[i]] = true;
        for (unsigned i = 0; i < 26; i++)
                if (keywords & (UINT32_C(1) << i))
                        present['a' + i] = true;
        for (const unsigned char *p = (const unsigned char *)(other ? other : ""); *p; p++)
                if (is_other_letter(*p))
                        present[*p] = true;

        for (unsigned c = 0x21; c <= 0x7e && len < MAX_INFO_LETTERS; c++)
                if (present[c])
                        buf[len++] = (char)c;
        buf[len] = '\0';
        return len;
}

int acs_mdname_build(const char *uniq, uint64_t size, uint64_t vsize, unsigned flags,
                     uint32_t keywords, const char *other, char **ret)
{
        char letters[64];
        char *s;

        if (!uniq_valid(uniq) || !other_valid(other, flags, keywords))
                return -EINVAL;
        acs_mdname_flag_letters(flags, keywords, other, letters);
        if (asprintf(&s, "%s,S=%llu,W=%llu:2,%s", uniq, (unsigned long long)size,
                     (unsigned long long)vsize, letters) < 0)
                return -ENOMEM;
        *ret = s;
        return 0;
}

size_t acs_crlf_to_lf(char *buf, size_t len)
{
        char *end = buf + len;
        char *r = memchr(buf, '\r', len);
        char *w;

        /* Skip the prefix that needs no change. */
        while (r && r + 1 < end && r[1] != '\n')
                r = memchr(r + 1, '\r', (size_t)(end - r - 1));
        if (!r || r + 1 >= end)
                return len;

        /* r points at a CR of a CRLF pair: drop it, then move the segments down. */
        w = r;
        const char *src = r + 1;
        for (;;) {
                const char *next = memchr(src + 1, '\r', (size_t)(end - src - 1));
                while (next && next + 1 < end && next[1] != '\n')
                        next = memchr(next + 1, '\r', (size_t)(end - next - 1));
                if (!next || next + 1 >= end) {
                        size_t n = (size_t)(end - src);
                        memmove(w, src, n);
                        w += n;
                        break;
                }
                size_t n = (size_t)(next - src);
                memmove(w, src, n);
                w += n;
                src = next + 1;
        }
        return (size_t)(w - buf);
}

uint64_t acs_lf_vsize(const char *buf, size_t len)
{
        const char *end = buf + len;
        const char *p = buf;
        uint64_t bare = 0;

        while (p < end) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                if (!nl)
                        break;
                if (nl == buf || nl[-1] != '\r')
                        bare++;
                p = nl + 1;
        }
        return (uint64_t)len + bare;
}

size_t acs_lf_to_crlf(const char *in, size_t in_len, char *out, bool *last_cr)
{
        const char *end = in + in_len;
        const char *p = in;
        char *w = out;
        bool prev_cr = *last_cr;

        while (p < end) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                if (!nl) {
                        size_t n = (size_t)(end - p);
                        memcpy(w, p, n);
                        w += n;
                        prev_cr = end[-1] == '\r';
                        break;
                }
                size_t n = (size_t)(nl - p);
                if (n > 0) {
                        memcpy(w, p, n);
                        w += n;
                        prev_cr = nl[-1] == '\r';
                }
                if (!prev_cr)
                        *w++ = '\r';
                *w++ = '\n';
                prev_cr = false;
                p = nl + 1;
        }
        *last_cr = prev_cr;
        return (size_t)(w - out);
}
