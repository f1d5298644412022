/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/maildir.c: name parse/build tables, roundtrips, line-end conversions. */
#include "test.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "acs/maildir.h"
#include "acs/util.h"
#include "acs/store.h"

#define D ACS_FLAG_DRAFT
#define F ACS_FLAG_FLAGGED
#define P ACS_FLAG_PASSED
#define R ACS_FLAG_REPLIED
#define S ACS_FLAG_SEEN
#define T ACS_FLAG_TRASHED
#define KW(c) (UINT32_C(1) << ((c) - 'a'))

/* Deterministic PRNG (xorshift64*), so failures reproduce. */
static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s ? s : 1; }
static uint64_t rng(void)
{
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * UINT64_C(2685821657736338717);
}
static unsigned rng_below(unsigned n) { return (unsigned)(rng() % n); }

/* ---- parse: good names ---- */

struct good_name {
        const char *name;
        const char *uniq;
        int has_size;
        uint64_t size;
        int has_vsize;
        uint64_t vsize;
        int has_info;
        unsigned flags;
        uint32_t keywords;
        const char *other;
};

static const struct good_name good_names[] = {
        { "1700000000.M1P2.host", "1700000000.M1P2.host", 0, 0, 0, 0, 0, 0, 0, "" },
        { "u:2,", "u", 0, 0, 0, 0, 1, 0, 0, "" },
        { "u,S=12,W=14:2,S", "u", 1, 12, 1, 14, 1, S, 0, "" },
        { "u,W=14,S=12:2,S", "u", 1, 12, 1, 14, 1, S, 0, "" },
        { "u,S=0", "u", 1, 0, 0, 0, 0, 0, 0, "" },
        { "u,W=0:2,", "u", 0, 0, 1, 0, 1, 0, 0, "" },
        { "u,S=18446744073709551615,W=1", "u", 1, UINT64_MAX, 1, 1, 0, 0, 0, "" },
        { "u:2,DFPRST", "u", 0, 0, 0, 0, 1, D | F | P | R | S | T, 0, "" },
        { "u:2,TSRPFD", "u", 0, 0, 0, 0, 1, D | F | P | R | S | T, 0, "" },
        { "u:2,SSSS", "u", 0, 0, 0, 0, 1, S, 0, "" },
        { "u:2,abz", "u", 0, 0, 0, 0, 1, 0, KW('a') | KW('b') | KW('z'), "" },
        { "u:2,zSa", "u", 0, 0, 0, 0, 1, S, KW('a') | KW('z'), "" },
        /* unknown letters are kept in the order found, duplicates collapsed */
        { "u:2,XSA2X", "u", 0, 0, 0, 0, 1, S, 0, "XA2" },
        { "u:2,~!{", "u", 0, 0, 0, 0, 1, 0, 0, "~!{" },
        /* unknown ",field" parts are ignored (mbsync's ,U=, empty fields) */
        { "u,U=17:2,S", "u", 0, 0, 0, 0, 1, S, 0, "" },
        { "u,S=5,U=17,W=6,X", "u", 1, 5, 1, 6, 0, 0, 0, "" },
        { "u,,S=5", "u", 1, 5, 0, 0, 0, 0, 0, "" },
        { "u,s=abc", "u", 0, 0, 0, 0, 0, 0, 0, "" },
        { "u,S", "u", 0, 0, 0, 0, 0, 0, 0, "" },
        /* the unique part may hold anything but ',', ':' and '/' */
        { "a.b c\tA-_=+x,S=1", "a.b c\tA-_=+x", 1, 1, 0, 0, 0, 0, 0, "" },
        { "\xc3\xa4u:2,F", "\xc3\xa4u", 0, 0, 0, 0, 1, F, 0, "" },
};

TEST(parse_good)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(good_names); i++) {
                const struct good_name *g = &good_names[i];
                acs_mdname n = { 0 };
                const char *error = NULL;
                int r = acs_mdname_parse(g->name, &n, &error);
                if (r != 0) {
                        printf("#   \"%s\": %s\n", g->name, error ? error : "?");
                        CHECK_INT(r, 0);
                        continue;
                }
                CHECK_STR(n.uniq, g->uniq);
                CHECK_INT(n.has_size, g->has_size);
                CHECK_INT(n.size, g->size);
                CHECK(n.size == g->size);
                CHECK_INT(n.has_vsize, g->has_vsize);
                CHECK(n.vsize == g->vsize);
                CHECK_INT(n.has_info, g->has_info);
                CHECK_INT(n.flags, g->flags);
                CHECK_INT(n.keywords, g->keywords);
                CHECK_STR(n.other, g->other);
                acs_mdname_clear(&n);
                CHECK(n.uniq == NULL && n.other == NULL);
        }
        acs_mdname_clear(NULL);
}

/* ---- parse: bad names, each with (part of) its reason ---- */

struct bad_name {
        const char *name;
        const char *reason;
};

static const struct bad_name bad_names[] = {
        { "", "empty name" },
        { "a/b", "'/'" },
        { "u:2,S/", "'/'" },
        { ".u", "starts with '.'" },
        { ".u:2,S", "starts with '.'" },
        { ",S=1", "empty unique" },
        { ":2,S", "empty unique" },
        { "u,S=", "empty number" },
        { "u,W=", "empty number" },
        { "u,S=1x", "non-digit" },
        { "u,S=-1", "non-digit" },
        { "u,S=+1", "non-digit" },
        { "u,S= 1", "non-digit" },
        { "u,W=0x10", "leading zero" },
        { "u,S=01", "leading zero" },
        { "u,S=00", "leading zero" },
        { "u,S=18446744073709551616", "overflow" },
        { "u,W=99999999999999999999", "overflow" },
        { "u,S=1,S=1", "duplicate S=" },
        { "u,W=1,S=2,W=1", "duplicate W=" },
        { "u:1,S", "experimental" },
        { "u:1,", "experimental" },
        { "u:", "not \":2,\"" },
        { "u:2", "not \":2,\"" },
        { "u:3,S", "not \":2,\"" },
        { "u:2S", "not \":2,\"" },
        { "u:,2,S", "not \":2,\"" },
        { "u:2, S", "not printable" },
        { "u:2,S\t", "not printable" },
        { "u:2,\x7f", "not printable" },
        { "u:2,\xc3\xa4", "not printable" },
        { "u:2,!\"#$%&'()*+,-.0123456789:;<=>?@ABCEGHIJKLMNOQUVWXYZ[\\]^_`{|}~abcdefghijklmnopqrstuvwxyzDFPRST",
          "too many" },
};

TEST(parse_bad)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad_names); i++) {
                const struct bad_name *b = &bad_names[i];
                acs_mdname n = { .uniq = (char *)"untouched" };
                const char *error = NULL;
                int r = acs_mdname_parse(b->name, &n, &error);
                if (r != -EINVAL)
                        printf("#   \"%s\" was accepted\n", b->name);
                CHECK_INT(r, -EINVAL);
                CHECK(error != NULL);
                if (error && !strstr(error, b->reason)) {
                        printf("#   \"%s\": reason \"%s\", expected \"%s\"\n", b->name, error,
                               b->reason);
                        CHECK(strstr(error, b->reason));
                }
                CHECK_STR(n.uniq, "untouched"); /* ret written only on success */
        }
        /* error_r may be NULL */
        acs_mdname n = { 0 };
        CHECK_INT(acs_mdname_parse("", &n, NULL), -EINVAL);
}

/* 63 distinct letters are the most a name may carry (the 64-byte letters buffer). */
TEST(parse_letter_cap)
{
        char name[128] = "u:2,";
        size_t len = strlen(name);
        for (unsigned c = 0x21; c <= 0x7e && len < 4 + 63; c++)
                if (c != '/')
                        name[len++] = (char)c;
        name[len] = '\0';
        acs_mdname n = { 0 };
        const char *error = NULL;
        CHECK_INT(acs_mdname_parse(name, &n, &error), 0);
        char buf[64];
        CHECK_INT(acs_mdname_flag_letters(n.flags, n.keywords, n.other, buf), 63);
        CHECK_STR(buf, name + 4); /* the 0x21.. prefix is already in ASCII order */
        acs_mdname_clear(&n);
}

/* ---- build ---- */

struct build_case {
        const char *uniq;
        uint64_t size, vsize;
        unsigned flags;
        uint32_t keywords;
        const char *other;
        const char *expect; /* NULL: -EINVAL */
};

static const struct build_case build_cases[] = {
        { "u", 0, 0, 0, 0, "", "u,S=0,W=0:2," },
        { "u", 0, 0, 0, 0, NULL, "u,S=0,W=0:2," },
        { "1700000000.x", 12, 14, S, 0, "", "1700000000.x,S=12,W=14:2,S" },
        { "u", UINT64_MAX, UINT64_MAX, T | S | R | P | F | D, 0, "",
          "u,S=18446744073709551615,W=18446744073709551615:2,DFPRST" },
        { "u", 1, 2, S | F, KW('z') | KW('a'), "", "u,S=1,W=2:2,FSaz" },
        /* other letters merge into ASCII order */
        { "u", 1, 2, S | D, KW('c'), "~X2", "u,S=1,W=2:2,2DSXc~" },
        { "u", 1, 2, 0, 0, "XXX", "u,S=1,W=2:2,X" },
        /* flag bits beyond DFPRST, keyword bits beyond z are ignored */
        { "u", 1, 2, 0xffffffffu, 0xffffffffu, "",
          "u,S=1,W=2:2,DFPRSTabcdefghijklmnopqrstuvwxyz" },
        { "", 1, 2, 0, 0, "", NULL },
        { ".u", 1, 2, 0, 0, "", NULL },
        { "u,v", 1, 2, 0, 0, "", NULL },
        { "u:v", 1, 2, 0, 0, "", NULL },
        { "u/v", 1, 2, 0, 0, "", NULL },
        { NULL, 1, 2, 0, 0, "", NULL },
        /* other must hold only unknown printable letters */
        { "u", 1, 2, 0, 0, "S", NULL },
        { "u", 1, 2, 0, 0, "a", NULL },
        { "u", 1, 2, 0, 0, " ", NULL },
        { "u", 1, 2, 0, 0, "/", NULL },
        { "u", 1, 2, 0, 0, "\x80", NULL },
};

TEST(build)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(build_cases); i++) {
                const struct build_case *b = &build_cases[i];
                char *s = (char *)"untouched";
                int r = acs_mdname_build(b->uniq, b->size, b->vsize, b->flags, b->keywords,
                                         b->other, &s);
                if (!b->expect) {
                        if (r != -EINVAL)
                                printf("#   case %zu accepted\n", i);
                        CHECK_INT(r, -EINVAL);
                        CHECK_STR(s, "untouched");
                        continue;
                }
                CHECK_INT(r, 0);
                if (r == 0) {
                        CHECK_STR(s, b->expect);
                        free(s);
                }
        }
}

TEST(flag_letters)
{
        char buf[64];
        CHECK_INT(acs_mdname_flag_letters(0, 0, "", buf), 0);
        CHECK_STR(buf, "");
        CHECK_INT(acs_mdname_flag_letters(T | D, KW('q'), NULL, buf), 3);
        CHECK_STR(buf, "DTq");
        CHECK_INT(acs_mdname_flag_letters(S, 0, "}0E", buf), 4);
        CHECK_STR(buf, "0ES}");
        /* known and invalid letters in other are not duplicated nor emitted */
        CHECK_INT(acs_mdname_flag_letters(S, 0, "Sa /\x80", buf), 1);
        CHECK_STR(buf, "S");
}

/* ---- property: build -> parse -> build is the identity ---- */

static void random_uniq(char *buf, size_t cap)
{
        static const char chars[] =
                "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._-=+ \xc3\xa4";
        size_t len = 1 + rng_below((unsigned)cap - 2);
        for (size_t i = 0; i < len; i++)
                buf[i] = chars[rng_below(sizeof(chars) - 1)];
        if (buf[0] == '.')
                buf[0] = '1';
        buf[len] = '\0';
}

static uint64_t random_u64(void)
{
        switch (rng_below(4)) {
        case 0: return rng_below(10);
        case 1: return rng() % 100000000;
        case 2: return UINT64_MAX - rng_below(3);
        default: return rng();
        }
}

TEST(roundtrip_build_parse)
{
        rng_seed(0x5eed0001);
        for (int iter = 0; iter < 5000; iter++) {
                char uniq[40], other[16], *name = NULL, *name2 = NULL;
                size_t n_other = 0;
                unsigned flags = (unsigned)rng() & ACS_FLAG_ALL;
                uint32_t kw = (uint32_t)rng() & ((UINT32_C(1) << 26) - 1);
                uint64_t size = random_u64(), vsize = random_u64();

                random_uniq(uniq, sizeof(uniq));
                for (unsigned k = rng_below(5); k > 0; k--) {
                        char c = (char)(0x21 + rng_below(0x7e - 0x21 + 1));
                        if (c != '/' && !strchr("DFPRST", c) && !(c >= 'a' && c <= 'z'))
                                other[n_other++] = c;
                }
                other[n_other] = '\0';

                CHECK_INT(acs_mdname_build(uniq, size, vsize, flags, kw, other, &name), 0);
                if (!name)
                        continue;
                acs_mdname n = { 0 };
                const char *error = NULL;
                int r = acs_mdname_parse(name, &n, &error);
                if (r != 0) {
                        printf("#   \"%s\" does not parse: %s\n", name, error);
                        CHECK_INT(r, 0);
                        free(name);
                        continue;
                }
                CHECK_STR(n.uniq, uniq);
                CHECK(n.has_size && n.size == size);
                CHECK(n.has_vsize && n.vsize == vsize);
                CHECK(n.has_info);
                CHECK_INT(n.flags, flags);
                CHECK_INT(n.keywords, kw);
                /* other comes back as the set of letters given (sorted by build) */
                for (const char *p = other; *p; p++)
                        CHECK(strchr(n.other, *p));
                CHECK(strlen(n.other) <= n_other);
                CHECK_INT(acs_mdname_build(n.uniq, n.size, n.vsize, n.flags, n.keywords,
                                           n.other, &name2), 0);
                if (name2)
                        CHECK_STR(name2, name);
                free(name2);
                free(name);
                acs_mdname_clear(&n);
        }
}

/* Any order and repetition of letters parses to the same set; build sorts them. */
TEST(roundtrip_shuffled_flags)
{
        static const char pool[] = "DFPRSTabcxyzX2~";
        rng_seed(0x5eed0002);
        for (int iter = 0; iter < 3000; iter++) {
                char name[64] = "17.u,S=3,W=4:2,";
                size_t len = strlen(name);
                bool used[128] = { false };
                for (unsigned k = rng_below(20); k > 0; k--) {
                        char c = pool[rng_below(sizeof(pool) - 1)];
                        name[len++] = c;
                        used[(unsigned char)c] = true;
                }
                name[len] = '\0';
                char expect[64] = "17.u,S=3,W=4:2,";
                size_t elen = strlen(expect);
                for (unsigned c = 0x21; c < 0x7f; c++)
                        if (used[c])
                                expect[elen++] = (char)c;
                expect[elen] = '\0';

                acs_mdname n = { 0 };
                CHECK_INT(acs_mdname_parse(name, &n, NULL), 0);
                char *built = NULL;
                CHECK_INT(acs_mdname_build(n.uniq, n.size, n.vsize, n.flags, n.keywords, n.other,
                                           &built), 0);
                if (built)
                        CHECK_STR(built, expect);
                free(built);
                acs_mdname_clear(&n);
        }
}

/* ---- line ends ---- */

/* Reference implementations, byte by byte. */
static size_t ref_crlf_to_lf(const char *in, size_t len, char *out)
{
        size_t w = 0;
        for (size_t i = 0; i < len; i++)
                if (!(in[i] == '\r' && i + 1 < len && in[i + 1] == '\n'))
                        out[w++] = in[i];
        return w;
}

static uint64_t ref_vsize(const char *in, size_t len)
{
        uint64_t v = len;
        for (size_t i = 0; i < len; i++)
                if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
                        v++;
        return v;
}

static size_t ref_lf_to_crlf(const char *in, size_t len, char *out)
{
        size_t w = 0;
        for (size_t i = 0; i < len; i++) {
                if (in[i] == '\n' && (i == 0 || in[i - 1] != '\r'))
                        out[w++] = '\r';
                out[w++] = in[i];
        }
        return w;
}

struct le_case {
        const char *in, *lf;
        uint64_t vsize_of_lf;
        const char *crlf_of_lf;
};

static const struct le_case le_cases[] = {
        { "", "", 0, "" },
        { "a", "a", 1, "a" },
        { "\r\n", "\n", 2, "\r\n" },
        { "\n", "\n", 2, "\r\n" },
        { "\r", "\r", 1, "\r" },
        { "\r\r\n", "\r\n", 2, "\r\n" },
        { "\n\r", "\n\r", 3, "\r\n\r" },
        { "a\r\nb\r\n", "a\nb\n", 6, "a\r\nb\r\n" },
        { "a\r\n\r\nb", "a\n\nb", 6, "a\r\n\r\nb" },
        { "a\nb\r\nc\rd", "a\nb\nc\rd", 9, "a\r\nb\r\nc\rd" },
        { "\r\n\r\n\r\n", "\n\n\n", 6, "\r\n\r\n\r\n" },
        { "x\r", "x\r", 2, "x\r" },
        { "\r\r\r", "\r\r\r", 3, "\r\r\r" },
};

TEST(line_end_table)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(le_cases); i++) {
                const struct le_case *c = &le_cases[i];
                char buf[64], out[128];
                size_t len = strlen(c->in);
                memcpy(buf, c->in, len);
                size_t n = acs_crlf_to_lf(buf, len);
                CHECK_INT(n, strlen(c->lf));
                CHECK(n == strlen(c->lf) && memcmp(buf, c->lf, n) == 0);
                CHECK_INT(acs_lf_vsize(c->lf, strlen(c->lf)), c->vsize_of_lf);
                bool last_cr = false;
                n = acs_lf_to_crlf(c->lf, strlen(c->lf), out, &last_cr);
                CHECK_INT(n, strlen(c->crlf_of_lf));
                CHECK(n == strlen(c->crlf_of_lf) && memcmp(out, c->crlf_of_lf, n) == 0);
        }
}

/* Random text over {a, \r, \n} (plus runs of plain text) against the references. */
static size_t random_text(char *buf, size_t max)
{
        size_t len = rng_below((unsigned)max + 1);
        for (size_t i = 0; i < len; i++) {
                unsigned k = rng_below(8);
                buf[i] = k < 2 ? '\r' : k < 4 ? '\n' : (char)('a' + k);
        }
        return len;
}

TEST(line_end_random)
{
        static char in[4096], a[4096], b[4096], ca[8192], cb[8192];
        rng_seed(0x5eed0003);
        for (int iter = 0; iter < 4000; iter++) {
                size_t len = random_text(in, iter < 3000 ? 40 : sizeof(in));
                memcpy(a, in, len);
                size_t na = acs_crlf_to_lf(a, len);
                size_t nb = ref_crlf_to_lf(in, len, b);
                CHECK_INT(na, nb);
                CHECK(na == nb && memcmp(a, b, na) == 0);

                CHECK(acs_lf_vsize(in, len) == ref_vsize(in, len));

                bool last_cr = false;
                size_t nca = acs_lf_to_crlf(in, len, ca, &last_cr);
                size_t ncb = ref_lf_to_crlf(in, len, cb);
                CHECK_INT(nca, ncb);
                CHECK(nca == ncb && memcmp(ca, cb, nca) == 0);
                CHECK(last_cr == (len > 0 && in[len - 1] == '\r'));
                /* W= is exactly what the CRLF conversion produces */
                CHECK(acs_lf_vsize(in, len) == nca);
        }
}

/* The streaming converter gives the same bytes for every split of the input into two
 * chunks (every boundary position) and into chunks of every fixed size. */
TEST(lf_to_crlf_chunk_boundaries)
{
        static char in[512], whole[1024], out[1024];
        rng_seed(0x5eed0004);
        for (int iter = 0; iter < 300; iter++) {
                size_t len = random_text(in, iter < 250 ? 64 : sizeof(in));
                size_t nwhole = ref_lf_to_crlf(in, len, whole);

                for (size_t cut = 0; cut <= len; cut++) {
                        bool last_cr = false;
                        size_t n = acs_lf_to_crlf(in, cut, out, &last_cr);
                        n += acs_lf_to_crlf(in + cut, len - cut, out + n, &last_cr);
                        if (n != nwhole || memcmp(out, whole, n) != 0) {
                                printf("#   iter %d cut %zu differs\n", iter, cut);
                                CHECK(0);
                                break;
                        }
                }
                for (size_t step = 1; step <= 9 && step <= len + 1; step++) {
                        bool last_cr = false;
                        size_t n = 0;
                        for (size_t off = 0; off < len; off += step) {
                                size_t k = len - off < step ? len - off : step;
                                n += acs_lf_to_crlf(in + off, k, out + n, &last_cr);
                        }
                        if (n != nwhole || memcmp(out, whole, n) != 0) {
                                printf("#   iter %d step %zu differs\n", iter, step);
                                CHECK(0);
                                break;
                        }
                }
        }
        /* an empty chunk keeps the carried CR */
        bool last_cr = false;
        char o[8];
        CHECK_INT(acs_lf_to_crlf("\r", 1, o, &last_cr), 1);
        CHECK(last_cr);
        CHECK_INT(acs_lf_to_crlf("", 0, o, &last_cr), 0);
        CHECK(last_cr);
        CHECK_INT(acs_lf_to_crlf("\n", 1, o, &last_cr), 1);
        CHECK(o[0] == '\n' && !last_cr);
}

/* A large buffer (8 MiB of mail-like text) against the references. */
TEST(line_end_large)
{
        size_t len = 8u << 20;
        char *in = malloc(len), *ref = malloc(len), *crlf = malloc(2 * len);
        CHECK(in && ref && crlf);
        if (!in || !ref || !crlf)
                goto out;
        rng_seed(0x5eed0005);
        for (size_t i = 0; i < len; i++) {
                unsigned k = rng_below(72);
                in[i] = k == 0 ? '\n' : k == 1 ? '\r' : (char)('A' + k % 26);
        }
        CHECK(acs_lf_vsize(in, len) == ref_vsize(in, len));
        size_t nc = ref_lf_to_crlf(in, len, crlf);
        size_t nr = ref_crlf_to_lf(crlf, nc, ref);
        size_t n = acs_crlf_to_lf(crlf, nc);
        CHECK(n == nr && memcmp(crlf, ref, n) == 0);
out:
        free(in);
        free(ref);
        free(crlf);
}

TEST_MAIN()
