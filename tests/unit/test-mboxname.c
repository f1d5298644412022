/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/mboxname.c: mUTF-7 tables and roundtrips, path escape tables and roundtrips. */
#include "test.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "acs/mboxname.h"
#include "acs/util.h"

#define FS ACS_LAYOUT_FS
#define PP ACS_LAYOUT_MAILDIRPP

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

/* Checks that r is -EINVAL with error containing reason; prints the input otherwise. */
static void check_rejected(const char *what, const char *in, int r, const char *error,
                           const char *reason)
{
        if (r != -EINVAL) {
                printf("#   %s(\"%s\") = %d, expected -EINVAL (%s)\n", what, in, r, reason);
                test_failed_checks++;
                return;
        }
        if (!error || !strstr(error, reason)) {
                printf("#   %s(\"%s\"): reason \"%s\", expected \"%s\"\n", what, in,
                       error ? error : "(null)", reason);
                test_failed_checks++;
        }
}

/* ---- modified UTF-7 ---- */

struct mutf7_pair {
        const char *utf8, *mutf7;
};

static const struct mutf7_pair mutf7_pairs[] = {
        { "", "" },
        { "INBOX", "INBOX" },
        { "&", "&-" },
        { "&&", "&-&-" },
        { "A & B", "A &- B" },
        { "a-b", "a-b" },
        { " ~!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}", " ~!\"#$%'()*+,-./:;<=>?@[\\]^_`{|}" },
        { "Entw\xc3\xbcrfe", "Entw&APw-rfe" },                /* Entwürfe */
        { "\xc3\xa4", "&AOQ-" },                               /* ä */
        { "\xc3\xa4\xc3\xa4", "&AOQA5A-" },                    /* ää: one run */
        { "\xc3\xa4&", "&AOQ-&-" },
        { "&\xc3\xa4", "&-&AOQ-" },
        { "\xc3\xa4x\xc3\xbc", "&AOQ-x&APw-" },
        { "\xc3\xa4\xc3\xbc", "&AOQA,A-" },
        { "\xe6\x97\xa5\xe6\x9c\xac", "&ZeVnLA-" },            /* 日本 */
        { "\xf0\x9f\x98\x80", "&2D3eAA-" },                    /* U+1F600 */
        { "\xf0\x9f\x98\x80\xf0\x9f\x98\x80", "&2D3eANg93gA-" },
        { "\xf4\x8f\xbf\xbf", "&2,,f,w-" },                    /* U+10FFFF */
        { "\xef\xbf\xbf", "&,,8-" },                           /* U+FFFF */
        { "\t", "&AAk-" },                                     /* controls are encoded */
        { "x\x01\x7f\xc3\xa4y", "x&AAEAfwDk-y" },
        { "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
          "~peter/mail/&U,BTFw-/&ZeVnLIqe-" },                 /* RFC 3501's example */
};

TEST(mutf7_pairs)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(mutf7_pairs); i++) {
                const struct mutf7_pair *t = &mutf7_pairs[i];
                char *out = NULL;
                const char *error = NULL;
                int r = acs_utf8_to_mutf7(t->utf8, &out, &error);
                CHECK_INT(r, 0);
                if (r == 0)
                        CHECK_STR(out, t->mutf7);
                free(out);
                out = NULL;
                r = acs_mutf7_to_utf8(t->mutf7, &out, &error);
                if (r != 0)
                        printf("#   decode \"%s\": %s\n", t->mutf7, error);
                CHECK_INT(r, 0);
                if (r == 0)
                        CHECK_STR(out, t->utf8);
                free(out);
        }
}

struct bad {
        const char *in, *reason;
};

static const struct bad bad_mutf7[] = {
        { "&", "unterminated" },
        { "a&", "unterminated" },
        { "&AOQ", "unterminated" },
        { "&AGE-", "printable ASCII" },             /* 'a' */
        { "&ACY-", "printable ASCII" },             /* '&' must be "&-" */
        { "&ACA-", "printable ASCII" },             /* ' ' */
        { "&AH4-", "printable ASCII" },             /* '~' */
        { "&AOQAYQ-", "printable ASCII" },          /* "äa" in one run */
        { "&AAA-", "NUL" },
        { "&AOQ-&APw-", "adjacent" },
        { "&AOQ-&AOQ-", "adjacent" },
        { "&-&AOQ-&APw-", "adjacent" },
        { "&Jjp-", "padding" },                     /* Dovecot accepts this one */
        { "&ZeVnLB-", "padding" },                  /* and this one */
        { "&,,,-", "padding" },
        { "&AOQ,-", "extra base64" },
        { "&AOQA-", "extra base64" },
        { "&AOQAAA-", "NUL" },
        { "&A-", "extra base64" },                  /* 6 bits, no unit */
        { "&AA-", "extra base64" },                 /* 12 bits, no unit */
        { "&2D0-", "unpaired high" },
        { "&2D3YPQ-", "unpaired high" },            /* high, high */
        { "&2D0AIA-", "unpaired high" },            /* high, then U+0020 */
        { "&3gA-", "unpaired low" },
        { "&AOTeAA-", "unpaired low" },
        { "&AO/-", "bad base64" },                  /* '/' is not modified base64 */
        { "&AO=-", "bad base64" },
        { "&AO Q-", "bad base64" },
        { "&AO&-", "bad base64" },
        { "\xc3\xa4", "outside 0x20..0x7e" },
        { "a\tb", "outside 0x20..0x7e" },
        { "\x7f", "outside 0x20..0x7e" },
        { "\x1f", "outside 0x20..0x7e" },
        { "&AO\x80-", "outside 0x20..0x7e" },
        { "&AOQ", "unterminated" },
};

TEST(mutf7_decode_bad)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad_mutf7); i++) {
                char *out = (char *)"untouched";
                const char *error = NULL;
                int r = acs_mutf7_to_utf8(bad_mutf7[i].in, &out, &error);
                check_rejected("mutf7_to_utf8", bad_mutf7[i].in, r, error, bad_mutf7[i].reason);
                CHECK_STR(out, "untouched");
        }
        char *out = NULL;
        CHECK_INT(acs_mutf7_to_utf8("&", &out, NULL), -EINVAL);
}

static const struct bad bad_utf8[] = {
        { "\x80", "stray continuation" },
        { "a\xbf", "stray continuation" },
        { "\xc3", "truncated" },
        { "\xc3x", "truncated" },
        { "\xe6\x97", "truncated" },
        { "\xf0\x9f\x98", "truncated" },
        { "\xc0\x80", "overlong" },                 /* NUL, overlong */
        { "\xc1\xbf", "overlong" },
        { "\xe0\x80\xaf", "overlong" },
        { "\xf0\x80\x80\xaf", "overlong" },
        { "\xed\xa0\x80", "surrogate" },
        { "\xed\xbf\xbf", "surrogate" },
        { "\xf4\x90\x80\x80", "above U+10FFFF" },
        { "\xf7\xbf\xbf\xbf", "above U+10FFFF" },
        { "\xf8\x88\x80\x80\x80", "bad lead byte" },
        { "\xff", "bad lead byte" },
        { "\xfe", "bad lead byte" },
};

TEST(mutf7_encode_bad)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad_utf8); i++) {
                char *out = (char *)"untouched";
                const char *error = NULL;
                int r = acs_utf8_to_mutf7(bad_utf8[i].in, &out, &error);
                check_rejected("utf8_to_mutf7", bad_utf8[i].in, r, error, bad_utf8[i].reason);
                CHECK_STR(out, "untouched");
        }
}

/* Appends code point cp as UTF-8; returns bytes written. */
static size_t put_utf8(char *p, uint32_t cp)
{
        if (cp < 0x80) {
                p[0] = (char)cp;
                return 1;
        }
        if (cp < 0x800) {
                p[0] = (char)(0xc0 | cp >> 6);
                p[1] = (char)(0x80 | (cp & 0x3f));
                return 2;
        }
        if (cp < 0x10000) {
                p[0] = (char)(0xe0 | cp >> 12);
                p[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
                p[2] = (char)(0x80 | (cp & 0x3f));
                return 3;
        }
        p[0] = (char)(0xf0 | cp >> 18);
        p[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
        p[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
        p[3] = (char)(0x80 | (cp & 0x3f));
        return 4;
}

static uint32_t random_code_point(void)
{
        uint32_t cp;
        switch (rng_below(8)) {
        case 0: return (uint32_t)" &-&/.A,+"[rng_below(9)];
        case 1: return 0x20 + rng_below(0x5f);
        case 2: return 1 + rng_below(0x1f);                   /* controls */
        case 3: return 0x7f + rng_below(0x81);                /* DEL, C1, Latin-1 */
        case 4: return 0x4e00 + rng_below(0x5200);            /* CJK */
        case 5:
                do
                        cp = 0x100 + rng_below(0x10000 - 0x100);
                while (cp >= 0xd800 && cp <= 0xdfff);
                return cp;
        case 6: return 0x1f300 + rng_below(0x300);            /* emoji */
        default: return 0x10000 + rng_below(0x100000);        /* any astral */
        }
}

/* UTF-8 -> mUTF-7 -> UTF-8 is the identity, and the mUTF-7 is printable ASCII. */
TEST(mutf7_roundtrip)
{
        rng_seed(0x5eed1001);
        for (int iter = 0; iter < 5000; iter++) {
                char in[256];
                size_t len = 0;
                for (unsigned k = rng_below(20); k > 0; k--)
                        len += put_utf8(in + len, random_code_point());
                in[len] = '\0';

                char *enc = NULL, *dec = NULL, *enc2 = NULL;
                const char *error = NULL;
                int r = acs_utf8_to_mutf7(in, &enc, &error);
                CHECK_INT(r, 0);
                if (r < 0)
                        continue;
                for (const char *p = enc; *p; p++)
                        CHECK(*p >= 0x20 && *p <= 0x7e);
                r = acs_mutf7_to_utf8(enc, &dec, &error);
                if (r < 0)
                        printf("#   \"%s\" does not decode: %s\n", enc, error);
                CHECK_INT(r, 0);
                if (r == 0) {
                        CHECK_STR(dec, in);
                        CHECK_INT(acs_utf8_to_mutf7(dec, &enc2, NULL), 0);
                        CHECK_STR(enc2, enc);
                }
                free(enc);
                free(dec);
                free(enc2);
        }
}

/* Strictness as a property: whatever random mUTF-7-ish string the decoder accepts
 * re-encodes to exactly itself (only the minimal spelling is accepted). */
TEST(mutf7_only_canonical_accepted)
{
        static const char alphabet[] = "&&&---AAOQ5kDAP,w+2Z3eg9 xa";
        unsigned accepted = 0, rejected = 0;
        rng_seed(0x5eed1002);
        for (int iter = 0; iter < 20000; iter++) {
                char in[32];
                size_t len = rng_below(sizeof(in) - 1);
                for (size_t i = 0; i < len; i++)
                        in[i] = alphabet[rng_below(sizeof(alphabet) - 1)];
                in[len] = '\0';

                char *dec = NULL, *enc = NULL;
                if (acs_mutf7_to_utf8(in, &dec, NULL) < 0) {
                        rejected++;
                        continue;
                }
                accepted++;
                CHECK_INT(acs_utf8_to_mutf7(dec, &enc, NULL), 0);
                if (enc && strcmp(enc, in) != 0) {
                        printf("#   accepted non-canonical \"%s\" (canonical \"%s\")\n", in, enc);
                        CHECK(0);
                }
                free(dec);
                free(enc);
        }
        /* the generator must exercise both outcomes */
        CHECK(accepted > 1000);
        CHECK(rejected > 1000);
}

/* ---- path components ---- */

struct esc_case {
        const char *in;
        enum acs_layout layout;
        const char *out;
};

static const struct esc_case esc_cases[] = {
        { "INBOX", FS, "INBOX" },
        { "Entw\xc3\xbcrfe", FS, "Entw\xc3\xbcrfe" },
        { "A & B", FS, "A & B" },
        { "a.b", FS, "a.b" },
        { "a.b", PP, "a%2Eb" },
        { ".hidden", FS, "%2Ehidden" },
        { ".hidden", PP, "%2Ehidden" },
        { ".", FS, "%2E" },
        { "..", FS, "%2E." },
        { "..", PP, "%2E%2E" },
        { "100%", FS, "100%25" },
        { "%2E", FS, "%252E" },
        { "a/b", FS, "a%2Fb" },
        { "a/b", PP, "a%2Fb" },
        { "cur", FS, "%63ur" },
        { "new", FS, "%6Eew" },
        { "tmp", FS, "%74mp" },
        { "cur", PP, "cur" },
        { "Cur", FS, "Cur" },
        { "curx", FS, "curx" },
        { "xcur", FS, "xcur" },
        { "\t", FS, "\t" },
};

TEST(component_escape)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(esc_cases); i++) {
                const struct esc_case *t = &esc_cases[i];
                char *out = NULL, *back = NULL;
                const char *error = NULL;
                CHECK_INT(acs_mbox_component_escape(t->in, t->layout, &out), 0);
                if (!out)
                        continue;
                CHECK_STR(out, t->out);
                int r = acs_mbox_component_unescape(out, t->layout, &back, &error);
                if (r < 0)
                        printf("#   unescape \"%s\": %s\n", out, error);
                CHECK_INT(r, 0);
                if (r == 0)
                        CHECK_STR(back, t->in);
                free(out);
                free(back);
        }
        char *out = (char *)"untouched";
        CHECK_INT(acs_mbox_component_escape("", FS, &out), -EINVAL);
        CHECK_INT(acs_mbox_component_escape("", PP, &out), -EINVAL);
        CHECK_STR(out, "untouched");
}

struct bad_comp {
        const char *in;
        enum acs_layout layout;
        const char *reason;
};

static const struct bad_comp bad_components[] = {
        { "", FS, "empty" },
        { ".x", FS, "starts with '.'" },
        { ".", PP, "starts with '.'" },
        { "a.b", PP, "unescaped '.'" },
        { "a/b", FS, "'/'" },
        { "cur", FS, "reserved" },
        { "new", FS, "reserved" },
        { "tmp", FS, "reserved" },
        { "%", FS, "truncated" },
        { "a%2", FS, "truncated" },
        { "%2e", FS, "malformed" },
        { "%G0", FS, "malformed" },
        { "%%25", FS, "malformed" },
        { "%00", FS, "NUL" },
        { "%41", FS, "needless" },                  /* 'A' needs no escape */
        { "a%2Eb", FS, "needless" },                /* '.' only escaped when leading in fs */
        { "%63urx", FS, "needless" },
        { "%63ur", PP, "needless" },
        { "%6Eew%41", FS, "needless" },
};

TEST(component_unescape_bad)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad_components); i++) {
                const struct bad_comp *t = &bad_components[i];
                char *out = (char *)"untouched";
                const char *error = NULL;
                int r = acs_mbox_component_unescape(t->in, t->layout, &out, &error);
                check_rejected("component_unescape", t->in, r, error, t->reason);
                CHECK_STR(out, "untouched");
        }
}

/* ---- full names <-> paths ---- */

struct path_case {
        const char *name;
        char delim;
        enum acs_layout layout;
        const char *path;
};

static const struct path_case path_cases[] = {
        { "INBOX", '/', FS, "INBOX" },
        { "INBOX", '/', PP, "" },
        { "INBOX", '.', PP, "" },
        { "INBOX", 0, PP, "" },
        { "INBOX/Sub", '/', FS, "INBOX/Sub" },
        { "INBOX/Sub", '/', PP, ".INBOX.Sub" },
        { "Archive/2024", '/', FS, "Archive/2024" },
        { "Archive/2024", '/', PP, ".Archive.2024" },
        { "Archive.2024", '.', FS, "Archive/2024" },
        { "Archive.2024", '.', PP, ".Archive.2024" },
        { "Archive.2024", '/', FS, "Archive.2024" },
        { "Archive.2024", '/', PP, ".Archive%2E2024" },
        { "a/b.c", '.', FS, "a%2Fb/c" },
        { "a/b.c", 0, FS, "a%2Fb.c" },
        { "a/b.c", 0, PP, ".a%2Fb%2Ec" },
        { "Entw\xc3\xbcrfe", '/', FS, "Entw\xc3\xbcrfe" },
        { "\xc3\x9cn\xc3\xaf/\xe6\x97\xa5", '/', PP, ".\xc3\x9cn\xc3\xaf.\xe6\x97\xa5" },
        { "A & B", '/', FS, "A & B" },
        { "Lists/cur", '/', FS, "Lists/%63ur" },
        { "cur/new/tmp", '/', FS, "%63ur/%6Eew/%74mp" },
        { "cur/new/tmp", '/', PP, ".cur.new.tmp" },
        { ".dot/..", '/', FS, "%2Edot/%2E." },
        { "50%/x", '/', PP, ".50%25.x" },
        { "inbox", '/', PP, ".inbox" },
        { "INBOX.x", 0, PP, ".INBOX%2Ex" },
        /* the rest of the examples of docs/names.md */
        { "a/b.c", '.', PP, ".a%2Fb.c" },
        { "Lists/cur", '/', PP, ".Lists.cur" },
        { ".dot/..", '/', PP, ".%2Edot.%2E%2E" },
        { "50%/x", '/', FS, "50%25/x" },
        { "Entw\xc3\xbcrfe", '/', PP, ".Entw\xc3\xbcrfe" },
};

TEST(mbox_paths)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(path_cases); i++) {
                const struct path_case *t = &path_cases[i];
                char *path = NULL, *name = NULL;
                const char *error = NULL;
                CHECK_INT(acs_mbox_to_path(t->name, t->delim, t->layout, &path), 0);
                if (!path)
                        continue;
                CHECK_STR(path, t->path);
                int r = acs_path_to_mbox(t->path, t->delim, t->layout, &name, &error);
                if (r < 0)
                        printf("#   path_to_mbox \"%s\": %s\n", t->path, error);
                CHECK_INT(r, 0);
                if (r == 0)
                        CHECK_STR(name, t->name);
                free(path);
                free(name);
        }
}

struct bad_name {
        const char *name;
        char delim;
        enum acs_layout layout;
};

static const struct bad_name bad_names[] = {
        { "", '/', FS },
        { "", '/', PP },
        { "/a", '/', FS },
        { "a/", '/', FS },
        { "a//b", '/', FS },
        { ".a", '.', PP },
        { "a..b", '.', PP },
        { "a.", '.', FS },
};

TEST(mbox_to_path_bad)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad_names); i++) {
                char *path = (char *)"untouched";
                int r = acs_mbox_to_path(bad_names[i].name, bad_names[i].delim,
                                         bad_names[i].layout, &path);
                if (r != -EINVAL)
                        printf("#   \"%s\" accepted\n", bad_names[i].name);
                CHECK_INT(r, -EINVAL);
                CHECK_STR(path, "untouched");
        }
}

struct bad_path {
        const char *path;
        char delim;
        enum acs_layout layout;
        const char *reason;
};

static const struct bad_path bad_paths[] = {
        { "", '/', FS, "empty path" },
        { "/a", '/', FS, "empty path component" },
        { "a/", '/', FS, "empty path component" },
        { "a//b", '/', FS, "empty path component" },
        { "a/cur", '/', FS, "reserved" },
        { "a/.b", '/', FS, "starts with '.'" },
        { "a/b", 0, FS, "flat" },
        { "a/b", '.', FS, "", },                    /* fine, see below */
        { "a.b", '.', FS, "delimiter" },
        { "a%2Fb", '/', FS, "delimiter" },
        { "a%2Eb", '.', FS, "needless" },
        { "INBOX", '/', PP, "start with '.'" },
        { ".", '/', PP, "empty path component" },
        { "..a", '/', PP, "empty path component" },
        { ".a.", '/', PP, "empty path component" },
        { ".a..b", '/', PP, "empty path component" },
        { ".a/b", '/', PP, "'/'" },
        { ".a.b", 0, PP, "flat" },
        { ".INBOX", '/', PP, "INBOX is the root" },
        { ".INBOX", 0, PP, "INBOX is the root" },
        { ".a%2Fb", '/', PP, "delimiter" },
        { ".%2E", '.', PP, "delimiter" },
        { ".%41", '/', PP, "needless" },
        { ".a%2e", '/', PP, "malformed" },
};

TEST(path_to_mbox_bad)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad_paths); i++) {
                const struct bad_path *t = &bad_paths[i];
                char *name = (char *)"untouched";
                const char *error = NULL;
                int r = acs_path_to_mbox(t->path, t->delim, t->layout, &name, &error);
                if (!*t->reason) {
                        CHECK_INT(r, 0);
                        if (r == 0)
                                free(name);
                        continue;
                }
                check_rejected("path_to_mbox", t->path, r, error, t->reason);
                CHECK_STR(name, "untouched");
        }
}

/* Random multi-level names full of troublesome characters roundtrip through paths. */
TEST(path_roundtrip)
{
        static const char *pieces[] = { "a", "B", ".", "..", "/", "%", "%2E", "cur", "new",
                                        "tmp", " ", "&", "\xc3\xa4", "\xf0\x9f\x98\x80",
                                        "INBOX", "x.y", "-", "~" };
        static const char delims[] = { '/', '.', 0 };
        rng_seed(0x5eed1003);
        for (int iter = 0; iter < 5000; iter++) {
                char delim = delims[rng_below(3)];
                enum acs_layout layout = rng_below(2) ? FS : PP;
                char name[256];
                size_t len = 0;
                unsigned levels = delim ? 1 + rng_below(4) : 1;
                for (unsigned l = 0; l < levels; l++) {
                        if (l > 0)
                                name[len++] = delim;
                        size_t start = len;
                        do {
                                for (unsigned k = 1 + rng_below(4); k > 0; k--) {
                                        const char *piece =
                                                pieces[rng_below(ACS_ARRAY_SIZE(pieces))];
                                        for (const char *p = piece; *p; p++)
                                                if (*p != delim)
                                                        name[len++] = *p;
                                }
                        } while (len == start);
                }
                name[len] = '\0';

                char *path = NULL, *back = NULL;
                const char *error = NULL;
                int r = acs_mbox_to_path(name, delim, layout, &path);
                CHECK_INT(r, 0);
                if (r < 0) {
                        printf("#   \"%s\" delim '%c' layout %d\n", name, delim ? delim : '0',
                               layout);
                        continue;
                }
                /* every level became exactly one directory component */
                if (layout == FS) {
                        CHECK(path[0] != '/' && !strstr(path, "//"));
                        for (const char *c = path; c; c = strchr(c, '/')) {
                                c += *c == '/';
                                CHECK(*c != '.');
                                CHECK(strncmp(c, "cur", 3) || (c[3] && c[3] != '/'));
                        }
                } else if (strcmp(name, "INBOX") != 0) {
                        CHECK(path[0] == '.' && !strchr(path, '/'));
                }
                r = acs_path_to_mbox(path, delim, layout, &back, &error);
                if (r < 0)
                        printf("#   path \"%s\" of \"%s\": %s\n", path, name, error);
                CHECK_INT(r, 0);
                if (r == 0)
                        CHECK_STR(back, name);
                free(path);
                free(back);
        }
}

/* Whatever random path the inverse accepts is the canonical path of its name. */
TEST(path_only_canonical_accepted)
{
        static const char alphabet[] = "ab..//%%%2E5FC6e3ur";
        unsigned accepted = 0;
        rng_seed(0x5eed1004);
        for (int iter = 0; iter < 20000; iter++) {
                char path[24];
                size_t len = rng_below(sizeof(path) - 1);
                for (size_t i = 0; i < len; i++)
                        path[i] = alphabet[rng_below(sizeof(alphabet) - 1)];
                path[len] = '\0';
                char delim = "/.\0"[rng_below(3)];
                enum acs_layout layout = rng_below(2) ? FS : PP;

                char *name = NULL, *again = NULL;
                if (acs_path_to_mbox(path, delim, layout, &name, NULL) < 0)
                        continue;
                accepted++;
                CHECK_INT(acs_mbox_to_path(name, delim, layout, &again), 0);
                if (again && strcmp(again, path) != 0) {
                        printf("#   accepted \"%s\" -> \"%s\" -> \"%s\"\n", path, name, again);
                        CHECK(0);
                }
                free(name);
                free(again);
        }
        CHECK(accepted > 500);
}

TEST_MAIN()
