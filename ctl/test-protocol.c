/* SPDX-License-Identifier: MIT */
/* Unit tests for ctl/protocol.c: tables of good and bad command and reply lines, roundtrips, the line reader. */
#include "test.h"

#include <errno.h>
#include <stdbool.h>

#include "acs/util.h"
#include "protocol.h"

#define TOK64 "00112233445566778899aabbccddeeff0123456789abcdef0f1e2d3c4b5a6978"

static char line_buf[3 * ACS_PROTO_LINE_MAX];

/* A line of n bytes: prefix, then fill bytes, then "\n". */
static const char *make_line(const char *prefix, char fill, size_t n)
{
        size_t p = strlen(prefix);
        memcpy(line_buf, prefix, p);
        memset(line_buf + p, fill, n - p - 1);
        line_buf[n - 1] = '\n';
        line_buf[n] = 0;
        return line_buf;
}

struct good_cmd {
        const char *line;
        enum acs_proto_cmd_type type;
        unsigned vmin, vmax;
        const char *user;     /* NULL: absent */
        const char *password; /* NULL: absent */
        size_t password_len;  /* 0: strlen */
        const char *mailbox;  /* NULL: absent */
        const char *canonical; /* NULL: same as line */
};

static const struct good_cmd good_cmds[] = {
        { "HELLO 1 1\n", ACS_CMD_HELLO, 1, 1 },
        { "HELLO 1 1\r\n", ACS_CMD_HELLO, 1, 1, .canonical = "HELLO 1 1\n" },
        { "HELLO 1 999\n", ACS_CMD_HELLO, 1, 999 },
        { "HELLO 2 7\n", ACS_CMD_HELLO, 2, 7 },
        { "OPEN user1 pass1\n", ACS_CMD_OPEN, .user = "user1", .password = "pass1" },
        { "OPEN user1 pass%20with%20spaces\n", ACS_CMD_OPEN, .user = "user1", .password = "pass with spaces" },
        { "OPEN user1 p%2Bq\n", ACS_CMD_OPEN, .user = "user1", .password = "p+q" },
        { "OPEN user1 %25%3D%26\n", ACS_CMD_OPEN, .user = "user1", .password = "%=&", .canonical = "OPEN user1 %25=%26\n" },
        { "OPEN user1 a%ffb%0D%0A\n", ACS_CMD_OPEN, .user = "user1", .password = "a\xff" "b\r\n",
          .canonical = "OPEN user1 a%FFb%0D%0A\n" },
        { "OPEN user1 !\"#$&'()*,;<>?[]^`{|}\n", ACS_CMD_OPEN, .user = "user1", .password = "!\"#$&'()*,;<>?[]^`{|}",
          .canonical = "OPEN user1 %21%22%23%24%26%27%28%29%2A,%3B%3C%3E%3F%5B%5D%5E%60%7B%7C%7D\n" },
        { "OPEN first.last@example.org x\n", ACS_CMD_OPEN, .user = "first.last@example.org", .password = "x" },
        { "OPEN J%C3%BCrgen x\n", ACS_CMD_OPEN, .user = "J\xc3\xbcrgen", .password = "x" },
        { "OPEN a%20b x\n", ACS_CMD_OPEN, .user = "a b", .password = "x" },
        { "OPEN u %C3%A9%E2%82%AC%F0%9F%98%80\n", ACS_CMD_OPEN, .user = "u", .password = "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80" },
        { "RESUME " TOK64 "\n", ACS_CMD_RESUME },
        { "CLOSE\n", ACS_CMD_CLOSE },
        { "CLOSE\r\n", ACS_CMD_CLOSE, .canonical = "CLOSE\n" },
        { "STATUS\n", ACS_CMD_STATUS },
        { "STATUS user2\n", ACS_CMD_STATUS, .user = "user2" },
        { "SYNC user2\n", ACS_CMD_SYNC, .user = "user2" },
        { "SYNC user2 INBOX\n", ACS_CMD_SYNC, .user = "user2", .mailbox = "INBOX" },
        { "SYNC user2 Archive/2024\n", ACS_CMD_SYNC, .user = "user2", .mailbox = "Archive/2024" },
        { "SYNC user2 Entw%C3%BCrfe%20alt\n", ACS_CMD_SYNC, .user = "user2", .mailbox = "Entw\xc3\xbcrfe alt" },
        { "SYNC u Sent.Old\n", ACS_CMD_SYNC, .user = "u", .mailbox = "Sent.Old" },
        { "WATCH\n", ACS_CMD_WATCH },
        { "WHO\n", ACS_CMD_WHO },
};

TEST(good_commands)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(good_cmds); i++) {
                const struct good_cmd *g = &good_cmds[i];
                _cleanup_proto_cmd_ acs_proto_cmd c;
                enum acs_proto_err err = 99;
                const char *why = "untouched";
                int r = acs_proto_parse_cmd(g->line, strlen(g->line), &c, &err, &why);
                if (r != 0) {
                        printf("#   \"%s\" rejected: %s\n", g->line, why);
                        test_failed_checks++;
                        continue;
                }
                CHECK_INT(err, 99); /* error outputs untouched on success */
                CHECK_INT(c.type, g->type);
                CHECK_INT(c.vmin, g->vmin);
                CHECK_INT(c.vmax, g->vmax);
                CHECK_INT(c.has_user, g->user != NULL);
                if (g->user) {
                        CHECK_STR(c.user, g->user);
                        CHECK_INT(c.user_len, strlen(g->user));
                }
                if (g->password) {
                        size_t pl = g->password_len ? g->password_len : strlen(g->password);
                        CHECK_INT(c.password_len, pl);
                        CHECK(memcmp(c.password, g->password, pl) == 0);
                } else {
                        CHECK_INT(c.password_len, 0);
                }
                CHECK_INT(c.has_mailbox, g->mailbox != NULL);
                if (g->mailbox)
                        CHECK_STR(c.mailbox, g->mailbox);
                if (g->type == ACS_CMD_RESUME) {
                        char hex[ACS_PROTO_TOKEN_HEX + 1];
                        acs_proto_token_to_hex(c.token, hex);
                        CHECK_STR(hex, TOK64);
                        CHECK_INT(c.token[0], 0x00);
                        CHECK_INT(c.token[1], 0x11);
                        CHECK_INT(c.token[31], 0x78);
                }
                /* format gives the canonical line, which parses to the same struct */
                char out[ACS_PROTO_LINE_MAX + 1];
                size_t len;
                CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), 0);
                CHECK_STR(out, g->canonical ? g->canonical : g->line);
                CHECK_INT(len, strlen(out));
                _cleanup_proto_cmd_ acs_proto_cmd c2;
                CHECK_INT(acs_proto_parse_cmd(out, len, &c2, NULL, NULL), 0);
                CHECK(memcmp(&c, &c2, sizeof(c)) == 0);
                /* every buffer too small by any amount is refused, never overrun */
                char small[ACS_PROTO_LINE_MAX + 1];
                size_t l2;
                for (size_t sz = 0; sz <= len; sz++)
                        CHECK_INT(acs_proto_format_cmd(&c, small, sz, &l2), -EMSGSIZE);
        }
}

struct bad_cmd {
        const char *line;
        size_t len; /* 0: strlen */
        enum acs_proto_err err;
};

static const struct bad_cmd bad_cmds[] = {
        /* syntax: line ends, bytes, spacing */
        { "", 0, ACS_ERR_SYNTAX },
        { "CLOSE", 0, ACS_ERR_SYNTAX },
        { "CLOSE\r", 0, ACS_ERR_SYNTAX },
        { "\n", 0, ACS_ERR_SYNTAX },
        { "\r\n", 0, ACS_ERR_SYNTAX },
        { "CLOSE\n\n", 0, ACS_ERR_SYNTAX },
        { "CLOSE\nCLOSE\n", 0, ACS_ERR_SYNTAX },
        { "CLOSE\r\r\n", 0, ACS_ERR_SYNTAX },
        { "CL\rOSE\n", 0, ACS_ERR_SYNTAX },
        { "CLOSE\0\n", 7, ACS_ERR_SYNTAX },
        { "OPEN u p\0q\n", 11, ACS_ERR_SYNTAX },
        { "OPEN u\tp\n", 0, ACS_ERR_SYNTAX },
        { "OPEN u p\x7f\n", 0, ACS_ERR_SYNTAX },
        { "OPEN u p\xc3\xa9\n", 0, ACS_ERR_SYNTAX },
        { "OPEN u\x01 p\n", 0, ACS_ERR_SYNTAX },
        { " CLOSE\n", 0, ACS_ERR_SYNTAX },
        { "CLOSE \n", 0, ACS_ERR_SYNTAX },
        { "OPEN  u p\n", 0, ACS_ERR_SYNTAX },
        { "OPEN u  p\n", 0, ACS_ERR_SYNTAX },
        { " \n", 0, ACS_ERR_SYNTAX },
        /* unknown command */
        { "close\n", 0, ACS_ERR_UNKNOWN },
        { "Close\n", 0, ACS_ERR_UNKNOWN },
        { "QUIT\n", 0, ACS_ERR_UNKNOWN },
        { "CLOSEX\n", 0, ACS_ERR_UNKNOWN },
        { "CLOS\n", 0, ACS_ERR_UNKNOWN },
        { "GET / HTTP/1.1\r\n", 0, ACS_ERR_UNKNOWN },
        { "%43LOSE\n", 0, ACS_ERR_UNKNOWN },
        /* arity */
        { "HELLO\n", 0, ACS_ERR_ARITY },
        { "HELLO 1\n", 0, ACS_ERR_ARITY },
        { "HELLO 1 1 1\n", 0, ACS_ERR_ARITY },
        { "OPEN\n", 0, ACS_ERR_ARITY },
        { "OPEN user1\n", 0, ACS_ERR_ARITY },
        { "OPEN user1 pass with spaces\n", 0, ACS_ERR_ARITY },
        { "RESUME\n", 0, ACS_ERR_ARITY },
        { "RESUME " TOK64 " x\n", 0, ACS_ERR_ARITY },
        { "CLOSE now\n", 0, ACS_ERR_ARITY },
        { "STATUS a b\n", 0, ACS_ERR_ARITY },
        { "SYNC\n", 0, ACS_ERR_ARITY },
        { "SYNC u INBOX x\n", 0, ACS_ERR_ARITY },
        { "WATCH x\n", 0, ACS_ERR_ARITY },
        { "WHO x\n", 0, ACS_ERR_ARITY },
        { "SYNC a b c d e f g h i j\n", 0, ACS_ERR_ARITY },
        /* encoding */
        { "OPEN u p%\n", 0, ACS_ERR_ENCODING },
        { "OPEN u p%4\n", 0, ACS_ERR_ENCODING },
        { "OPEN u p%4g\n", 0, ACS_ERR_ENCODING },
        { "OPEN u p%g4\n", 0, ACS_ERR_ENCODING },
        { "OPEN u p%00q\n", 0, ACS_ERR_ENCODING },
        { "OPEN u pass+word\n", 0, ACS_ERR_ENCODING },
        { "OPEN u+v p\n", 0, ACS_ERR_ENCODING },
        { "OPEN u%2 p\n", 0, ACS_ERR_ENCODING },
        { "SYNC u IN%ZZ\n", 0, ACS_ERR_ENCODING },
        { "STATUS %\n", 0, ACS_ERR_ENCODING },
        /* values */
        { "HELLO 0 1\n", 0, ACS_ERR_VALUE },
        { "HELLO 01 1\n", 0, ACS_ERR_VALUE },
        { "HELLO 1 1000\n", 0, ACS_ERR_VALUE },
        { "HELLO 2 1\n", 0, ACS_ERR_VALUE },
        { "HELLO -1 1\n", 0, ACS_ERR_VALUE },
        { "HELLO 1 x\n", 0, ACS_ERR_VALUE },
        { "HELLO 1 1a\n", 0, ACS_ERR_VALUE },
        { "RESUME abc\n", 0, ACS_ERR_VALUE },
        { "RESUME " TOK64 "0\n", 0, ACS_ERR_VALUE },
        { "RESUME 00112233445566778899AABBCCDDEEFF0123456789abcdef0f1e2d3c4b5a6978\n", 0, ACS_ERR_VALUE },
        { "RESUME 00112233445566778899aabbccddeeff0123456789abcdef0f1e2d3c4b5a697g\n", 0, ACS_ERR_VALUE },
        { "OPEN a%2Fb p\n", 0, ACS_ERR_VALUE },
        { "OPEN a/b p\n", 0, ACS_ERR_VALUE },
        { "OPEN .hidden p\n", 0, ACS_ERR_VALUE },
        { "OPEN . p\n", 0, ACS_ERR_VALUE },
        { "OPEN .. p\n", 0, ACS_ERR_VALUE },
        { "OPEN %2E%2E p\n", 0, ACS_ERR_VALUE },
        { "OPEN a%0Ab p\n", 0, ACS_ERR_VALUE },
        { "OPEN a%7Fb p\n", 0, ACS_ERR_VALUE },
        { "OPEN a%FFb p\n", 0, ACS_ERR_VALUE },
        { "OPEN %C0%AF p\n", 0, ACS_ERR_VALUE },
        { "OPEN %ED%A0%80 p\n", 0, ACS_ERR_VALUE },
        { "OPEN %F4%90%80%80 p\n", 0, ACS_ERR_VALUE },
        { "OPEN %E2%82 p\n", 0, ACS_ERR_VALUE },
        { "STATUS a%2Fb\n", 0, ACS_ERR_VALUE },
        { "SYNC u a%01b\n", 0, ACS_ERR_VALUE },
        { "SYNC u %FF\n", 0, ACS_ERR_VALUE },
};

TEST(bad_commands)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad_cmds); i++) {
                const struct bad_cmd *b = &bad_cmds[i];
                size_t len = b->len ? b->len : strlen(b->line);
                acs_proto_cmd c;
                memset(&c, 0x5a, sizeof(c));
                enum acs_proto_err err = ACS_ERR_NONE;
                const char *why = NULL;
                int r = acs_proto_parse_cmd(b->line, len, &c, &err, &why);
                if (r != -EINVAL || err != b->err || !why) {
                        printf("#   row %zu \"%.*s\": r=%d err=%s (%s), expected %s\n", i, (int)len, b->line, r,
                               acs_proto_err_name(err) ? acs_proto_err_name(err) : "none", why ? why : "-",
                               acs_proto_err_name(b->err));
                        test_failed_checks++;
                }
                /* the struct is wiped on failure */
                static const acs_proto_cmd zero;
                CHECK(memcmp(&c, &zero, sizeof(c)) == 0);
        }
}

TEST(lengths)
{
        acs_proto_cmd c;
        enum acs_proto_err err;
        const char *why;
        char pw[ACS_PROTO_PASSWORD_MAX + 2];
        /* Line limit: 4096 bytes counting LF (and CR). */
        const char *l = make_line("OPEN u ", 'p', ACS_PROTO_LINE_MAX + 1);
        CHECK_INT(acs_proto_parse_cmd(l, ACS_PROTO_LINE_MAX + 1, &c, &err, &why), -EMSGSIZE);
        CHECK_INT(err, ACS_ERR_TOOLONG);
        CHECK_INT(acs_proto_parse_cmd(l, 100000, &c, &err, &why), -EMSGSIZE);
        /* Password limit 1024 decoded bytes. */
        l = make_line("OPEN u ", 'p', 7 + ACS_PROTO_PASSWORD_MAX + 1);
        CHECK_INT(acs_proto_parse_cmd(l, strlen(l), &c, &err, &why), 0);
        CHECK_INT(c.password_len, ACS_PROTO_PASSWORD_MAX);
        l = make_line("OPEN u ", 'p', 7 + ACS_PROTO_PASSWORD_MAX + 2);
        CHECK_INT(acs_proto_parse_cmd(l, strlen(l), &c, &err, &why), -EINVAL);
        CHECK_INT(err, ACS_ERR_VALUE);
        CHECK_STR(why, "password too long");
        /* 1024 bytes all percent-encoded: 3072 characters, still a valid line. */
        memset(pw, 0, sizeof(pw));
        char *p = line_buf;
        p += sprintf(p, "OPEN %s ", "u");
        for (int i = 0; i < ACS_PROTO_PASSWORD_MAX; i++)
                p += sprintf(p, "%%%02X", 0x80 + i % 0x7f);
        *p++ = '\n';
        CHECK_INT(acs_proto_parse_cmd(line_buf, (size_t)(p - line_buf), &c, &err, &why), 0);
        CHECK_INT(c.password_len, ACS_PROTO_PASSWORD_MAX);
        CHECK_INT((unsigned char)c.password[1], 0x81);
        /* The largest command of all formats within the line limit. */
        memset(c.user, 0, sizeof(c.user));
        for (int i = 0; i < ACS_PROTO_USER_MAX; i++)
                c.user[i] = (char)('#');
        c.user_len = ACS_PROTO_USER_MAX;
        memset(c.password, '#', ACS_PROTO_PASSWORD_MAX);
        c.password_len = ACS_PROTO_PASSWORD_MAX;
        char out[ACS_PROTO_LINE_MAX + 1];
        size_t len;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), 0);
        CHECK_INT(len, 5 + 3 * 255 + 1 + 3 * 1024 + 1);
        CHECK(len <= ACS_PROTO_LINE_MAX);
        CHECK_INT(acs_proto_format_cmd(&c, out, len, &len), -EMSGSIZE); /* out is undefined now */
        CHECK_INT(acs_proto_format_cmd(&c, out, len + 1, &len), 0);
        acs_proto_cmd c2;
        CHECK_INT(acs_proto_parse_cmd(out, len, &c2, &err, &why), 0);
        CHECK(memcmp(c.user, c2.user, sizeof(c.user)) == 0);
        CHECK(memcmp(c.password, c2.password, ACS_PROTO_PASSWORD_MAX) == 0);
        /* User limit 255. */
        l = make_line("OPEN ", 'u', 5 + 255 + 3);
        line_buf[5 + 255] = ' ';
        line_buf[5 + 256] = 'p';
        CHECK_INT(acs_proto_parse_cmd(l, strlen(l), &c, &err, &why), 0);
        l = make_line("OPEN ", 'u', 5 + 256 + 3);
        line_buf[5 + 256] = ' ';
        line_buf[5 + 257] = 'p';
        CHECK_INT(acs_proto_parse_cmd(l, strlen(l), &c, &err, &why), -EINVAL);
        CHECK_INT(err, ACS_ERR_VALUE);
        CHECK_STR(why, "user too long");
        /* Mailbox limit 1024. */
        l = make_line("SYNC u ", 'm', 7 + 1024 + 1);
        CHECK_INT(acs_proto_parse_cmd(l, strlen(l), &c, &err, &why), 0);
        l = make_line("SYNC u ", 'm', 7 + 1025 + 1);
        CHECK_INT(acs_proto_parse_cmd(l, strlen(l), &c, &err, &why), -EINVAL);
        CHECK_STR(why, "mailbox too long");
        /* Exactly 4096 with CRLF is fine (if the fields are). */
        l = make_line("SYNC u ", 'm', 4095);
        line_buf[4093] = '\r';
        CHECK_INT(acs_proto_parse_cmd(l, 4095, &c, &err, &why), -EINVAL); /* mailbox too long */
        CHECK_INT(err, ACS_ERR_VALUE);
        acs_proto_cmd_wipe(&c);
        acs_proto_cmd_wipe(&c2);
}

TEST(format_refuses)
{
        acs_proto_cmd c;
        char out[ACS_PROTO_LINE_MAX + 1];
        size_t len;
        memset(&c, 0, sizeof(c));
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL);
        c.type = _ACS_CMD_MAX;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL);
        c.type = ACS_CMD_HELLO, c.vmin = 2, c.vmax = 1;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL);
        c.vmin = 0, c.vmax = 1;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL);
        c.vmin = 1, c.vmax = 1000;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL);
        memset(&c, 0, sizeof(c));
        c.type = ACS_CMD_OPEN;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL); /* no user */
        c.has_user = true, strcpy(c.user, "u"), c.user_len = 1;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL); /* empty password */
        c.password_len = 2, memcpy(c.password, "a\0", 2);
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL); /* NUL in password */
        c.password_len = 1;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), 0);
        CHECK_STR(out, "OPEN u a\n");
        CHECK_INT(acs_proto_format_cmd(&c, out, 9, &len), -EMSGSIZE);
        CHECK_INT(acs_proto_format_cmd(&c, out, 10, &len), 0);
        strcpy(c.user, "a/b"), c.user_len = 3;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL);
        c.user[0] = 0, c.user_len = 0;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL); /* empty user */
        memset(&c, 0, sizeof(c));
        c.type = ACS_CMD_CLOSE, c.has_user = true, strcpy(c.user, "u"), c.user_len = 1;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL);
        c.type = ACS_CMD_STATUS;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), 0);
        CHECK_STR(out, "STATUS u\n");
        c.has_mailbox = true, strcpy(c.mailbox, "INBOX"), c.mailbox_len = 5;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL); /* mailbox only for SYNC */
        c.type = ACS_CMD_SYNC;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), 0);
        CHECK_STR(out, "SYNC u INBOX\n");
        c.mailbox_len = 0, c.mailbox[0] = 0;
        CHECK_INT(acs_proto_format_cmd(&c, out, sizeof(out), &len), -EINVAL); /* empty mailbox */
}

TEST(names)
{
        static const char *const cmds[] = { NULL, "HELLO", "OPEN", "RESUME", "CLOSE", "STATUS", "SYNC", "WATCH", "WHO" };
        CHECK_INT(ACS_ARRAY_SIZE(cmds), _ACS_CMD_MAX);
        for (int i = 1; i < _ACS_CMD_MAX; i++)
                CHECK_STR(acs_proto_cmd_name(i), cmds[i]);
        CHECK(acs_proto_cmd_name(0) == NULL && acs_proto_cmd_name(_ACS_CMD_MAX) == NULL && acs_proto_cmd_name(-1) == NULL);
        static const char *const errs[] = { NULL, "toolong", "syntax", "unknown", "arity", "encoding", "value", "version",
                                            "state", "auth", "token", "denied", "limit", "unavailable", "notfound", "internal" };
        CHECK_INT(ACS_ARRAY_SIZE(errs), _ACS_ERR_MAX);
        for (int i = 1; i < _ACS_ERR_MAX; i++)
                CHECK_STR(acs_proto_err_name(i), errs[i]);
        CHECK(acs_proto_err_name(0) == NULL && acs_proto_err_name(_ACS_ERR_MAX) == NULL);
}

TEST(pct_codec)
{
        char buf[64];
        size_t len;
        const char *why;
        CHECK_INT(acs_proto_pct_encode("a b/c:d@e,f=g~h-i.j_k", 21, buf, sizeof(buf), &len), 0);
        CHECK_STR(buf, "a%20b/c:d@e,f=g~h-i.j_k");
        CHECK_INT(acs_proto_pct_encode("\x00\xff%+", 4, buf, sizeof(buf), &len), 0);
        CHECK_STR(buf, "%00%FF%25%2B");
        CHECK_INT(acs_proto_pct_encode("abc", 3, buf, 3, &len), -EMSGSIZE);
        CHECK_INT(acs_proto_pct_encode("abc", 3, buf, 4, &len), 0);
        CHECK_INT(acs_proto_pct_encode(" ", 1, buf, 3, &len), -EMSGSIZE);
        CHECK_INT(acs_proto_pct_decode("a%2fb%2F", 8, buf, sizeof(buf), &len, &why), 0);
        CHECK_STR(buf, "a/b/");
        CHECK_INT(acs_proto_pct_decode("abcd", 4, buf, 4, &len, &why), -EMSGSIZE);
        CHECK_INT(acs_proto_pct_decode("abcd", 4, buf, 5, &len, &why), 0);
        CHECK_INT(acs_proto_pct_decode("", 0, buf, 1, &len, &why), 0);
        CHECK_INT(acs_proto_pct_decode("a b", 3, buf, sizeof(buf), &len, &why), -EINVAL);
        CHECK_INT(acs_proto_pct_decode("a\x80", 2, buf, sizeof(buf), &len, &why), -EINVAL);
        CHECK_INT(acs_proto_pct_decode("a\x7f", 2, buf, sizeof(buf), &len, &why), -EINVAL);
        CHECK_INT(acs_proto_pct_decode("%4", 2, buf, sizeof(buf), &len, &why), -EINVAL);
        CHECK_INT(acs_proto_pct_encode("", 0, buf, 0, &len), -EMSGSIZE);
        CHECK(!acs_proto_utf8_valid("\xc3\x28", 2));
        CHECK_INT(len, 0);
        /* every byte 1..255 encodes and decodes back */
        char all[255], enc[3 * 255 + 1], dec[256];
        for (int i = 0; i < 255; i++)
                all[i] = (char)(i + 1);
        CHECK_INT(acs_proto_pct_encode(all, 255, enc, sizeof(enc), &len), 0);
        CHECK_INT(acs_proto_pct_decode(enc, len, dec, sizeof(dec), &len, &why), 0);
        CHECK_INT(len, 255);
        CHECK(memcmp(all, dec, 255) == 0);
        uint8_t tok[32];
        CHECK_INT(acs_proto_token_from_hex(TOK64, 64, tok), 0);
        CHECK_INT(acs_proto_token_from_hex(TOK64, 63, tok), -EINVAL);
        CHECK(acs_proto_utf8_valid("\xf0\x9f\x98\x80", 4));
        CHECK(!acs_proto_utf8_valid("\xf0\x9f\x98", 3));
        CHECK(!acs_proto_utf8_valid("\xe0\x80\xaf", 3)); /* overlong */
        CHECK(!acs_proto_utf8_valid("\xc1\xbf", 2));
        CHECK(!acs_proto_utf8_valid("\xf5\x80\x80\x80", 4));
        CHECK(acs_proto_utf8_valid("\xed\x9f\xbf", 3));  /* U+D7FF */
        CHECK(!acs_proto_utf8_valid("\xed\xa0\x80", 3)); /* U+D800 */
        CHECK(acs_proto_utf8_valid("\xf4\x8f\xbf\xbf", 4));
        CHECK(!acs_proto_utf8_valid("\x80", 1));
}

/* ---- replies ---- */

TEST(reply_build_and_parse)
{
        acs_proto_reply r, p;
        char out[ACS_PROTO_LINE_MAX + 1];
        size_t len;
        const char *why;
        uint8_t tok[32];
        char hex[65];
        CHECK_INT(acs_proto_token_from_hex(TOK64, 64, tok), 0);
        acs_proto_token_to_hex(tok, hex);

        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_OK, ACS_CMD_OPEN, NULL), 0);
        CHECK_INT(acs_proto_reply_add_str(&r, "token", hex), 0);
        CHECK_INT(acs_proto_reply_add_str(&r, "user", "J\xc3\xbcrgen"), 0);
        CHECK_INT(acs_proto_reply_add_str(&r, "path", "/run/acs/J\xc3\xbcrgen"), 0);
        CHECK_INT(acs_proto_format_reply(&r, out, sizeof(out), &len), 0);
        CHECK_STR(out, "OK OPEN token=" TOK64 " user=J%C3%BCrgen path=/run/acs/J%C3%BCrgen\n");
        CHECK_INT(acs_proto_parse_reply(out, len, &p, &why), 0);
        CHECK_INT(p.type, ACS_REPLY_OK);
        CHECK_INT(p.cmd, ACS_CMD_OPEN);
        CHECK_INT(p.n_kv, 3);
        CHECK_STR(acs_proto_reply_get(&p, "token", NULL), TOK64);
        CHECK_STR(acs_proto_reply_get(&p, "path", &len), "/run/acs/J\xc3\xbcrgen");
        CHECK_INT(len, 16);
        CHECK(acs_proto_reply_get(&p, "nope", NULL) == NULL);
        CHECK_STR(acs_proto_reply_key(&p, 1), "user");
        CHECK(acs_proto_reply_key(&p, 3) == NULL);

        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_DATA, ACS_CMD_STATUS, NULL), 0);
        CHECK_INT(acs_proto_reply_add_str(&r, "user", "user1"), 0);
        CHECK_INT(acs_proto_reply_add_u64(&r, "sessions", 18446744073709551615ull), 0);
        CHECK_INT(acs_proto_reply_add_str(&r, "empty", ""), 0);
        CHECK_INT(acs_proto_format_reply(&r, out, sizeof(out), &len), 0);
        CHECK_STR(out, "DATA STATUS user=user1 sessions=18446744073709551615 empty=\n");
        CHECK_INT(acs_proto_parse_reply(out, len, &p, &why), 0);
        CHECK_STR(acs_proto_reply_get(&p, "empty", &len), "");
        CHECK_INT(len, 0);

        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_EVENT, 0, "change"), 0);
        CHECK_INT(acs_proto_reply_add_str(&r, "mailbox", "a b"), 0);
        CHECK_INT(acs_proto_format_reply(&r, out, sizeof(out), &len), 0);
        CHECK_STR(out, "EVENT change mailbox=a%20b\n");
        CHECK_INT(acs_proto_parse_reply(out, len, &p, &why), 0);
        CHECK_STR(p.kind, "change");

        CHECK_INT(acs_proto_format_err(ACS_ERR_AUTH, "wrong user or password", out, sizeof(out), &len), 0);
        CHECK_STR(out, "ERR auth wrong user or password\n");
        CHECK_INT(acs_proto_parse_reply(out, len, &p, &why), 0);
        CHECK_INT(p.type, ACS_REPLY_ERR);
        CHECK_INT(p.err, ACS_ERR_AUTH);
        CHECK_STR(p.text, "wrong user or password");
        /* unsafe text is made safe; empty text becomes the code */
        CHECK_INT(acs_proto_format_err(ACS_ERR_VALUE, "bad\r\nOK OPEN token=x\xff", out, sizeof(out), &len), 0);
        CHECK_STR(out, "ERR value bad??OK OPEN token=x?\n");
        CHECK_INT(acs_proto_format_err(ACS_ERR_LIMIT, "", out, sizeof(out), &len), 0);
        CHECK_STR(out, "ERR limit limit\n");
        CHECK_INT(acs_proto_format_err(ACS_ERR_LIMIT, NULL, out, sizeof(out), &len), 0);
        CHECK_STR(out, "ERR limit limit\n");
        char longtext[1000];
        memset(longtext, 'x', sizeof(longtext) - 1);
        longtext[999] = 0;
        CHECK_INT(acs_proto_format_err(ACS_ERR_INTERNAL, longtext, out, sizeof(out), &len), 0);
        CHECK_INT(len, 4 + 8 + 1 + ACS_PROTO_TEXT_MAX + 1);
        CHECK_INT(acs_proto_format_err(0, "x", out, sizeof(out), &len), -EINVAL);
        CHECK_INT(acs_proto_format_err(_ACS_ERR_MAX, "x", out, sizeof(out), &len), -EINVAL);
}

TEST(reply_builder_errors_sticky)
{
        acs_proto_reply r;
        char out[ACS_PROTO_LINE_MAX + 1];
        size_t len;
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_OK, 0, NULL), -EINVAL);
        CHECK_INT(acs_proto_format_reply(&r, out, sizeof(out), &len), -EINVAL);
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_EVENT, 0, "Bad"), -EINVAL);
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_EVENT, 0, NULL), -EINVAL);
        CHECK_INT(acs_proto_reply_init(&r, 9, 0, NULL), -EINVAL);
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_OK, ACS_CMD_SYNC, NULL), 0);
        CHECK_INT(acs_proto_reply_add_str(&r, "Key", "v"), -EINVAL);
        CHECK_INT(acs_proto_reply_add_str(&r, "ok", "v"), -EINVAL); /* sticky */
        CHECK_INT(acs_proto_format_reply(&r, out, sizeof(out), &len), -EINVAL);
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_OK, ACS_CMD_SYNC, NULL), 0);
        CHECK_INT(acs_proto_reply_add_str(&r, "k", "v"), 0);
        CHECK_INT(acs_proto_reply_add_str(&r, "k", "w"), -EINVAL); /* duplicate */
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_OK, ACS_CMD_SYNC, NULL), 0);
        CHECK_INT(acs_proto_reply_add(&r, "k", "a\0b", 3), -EINVAL); /* NUL */
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_ERR, ACS_ERR_AUTH, "x"), 0);
        CHECK_INT(acs_proto_reply_add_str(&r, "k", "v"), -EINVAL); /* no pairs in ERR */
        /* too many pairs */
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_DATA, ACS_CMD_WHO, NULL), 0);
        char key[8];
        for (int i = 0; i < ACS_PROTO_KV_MAX; i++) {
                snprintf(key, sizeof(key), "k%d", i);
                CHECK_INT(acs_proto_reply_add_str(&r, key, "v"), 0);
        }
        CHECK_INT(acs_proto_reply_add_str(&r, "more", "v"), -EMSGSIZE);
        /* too long once encoded: values of 0xff bytes triple */
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_DATA, ACS_CMD_WHO, NULL), 0);
        char val[1400];
        memset(val, 0xff, sizeof(val));
        CHECK_INT(acs_proto_reply_add(&r, "a", val, sizeof(val)), 0);
        CHECK_INT(acs_proto_format_reply(&r, out, sizeof(out), &len), -EMSGSIZE);
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_DATA, ACS_CMD_WHO, NULL), 0);
        CHECK_INT(acs_proto_reply_add(&r, "a", val, 1340), 0);
        CHECK_INT(acs_proto_format_reply(&r, out, sizeof(out), &len), 0); /* 11 + 4020 + 1 */
        CHECK_INT(len, 11 + 3 * 1340 + 1);
        CHECK_INT(acs_proto_format_reply(&r, out, 100, &len), -EMSGSIZE);
        /* the line limit holds even when the caller's buffer is bigger */
        static char big_out[3 * ACS_PROTO_LINE_MAX];
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_DATA, ACS_CMD_WHO, NULL), 0);
        CHECK_INT(acs_proto_reply_add(&r, "a", val, 1400), 0);
        CHECK_INT(acs_proto_format_reply(&r, big_out, sizeof(big_out), &len), -EMSGSIZE);
        /* the decoded buffer bound */
        CHECK_INT(acs_proto_reply_init(&r, ACS_REPLY_DATA, ACS_CMD_WHO, NULL), 0);
        static char huge[ACS_PROTO_LINE_MAX];
        memset(huge, 'a', sizeof(huge));
        CHECK_INT(acs_proto_reply_add(&r, "a", huge, sizeof(huge)), -EMSGSIZE);
}

struct bad_reply {
        const char *line;
        int ret;
};

static const struct bad_reply bad_replies[] = {
        { "OK\n", -EINVAL },
        { "OK open\n", -EINVAL },
        { "OK OPEN token\n", -EINVAL },
        { "OK OPEN =v\n", -EINVAL },
        { "OK OPEN Token=v\n", -EINVAL },
        { "OK OPEN 1k=v\n", -EINVAL },
        { "OK OPEN k=v k=w\n", -EINVAL },
        { "OK OPEN k=%zz\n", -EINVAL },
        { "OK OPEN k=a+b\n", -EINVAL },
        { "OK OPEN k=%00\n", -EINVAL },
        { "OK OPEN  k=v\n", -EINVAL },
        { "OK OPEN k=v \n", -EINVAL },
        { "OK NOPE\n", -EINVAL },
        { "YES OPEN\n", -EINVAL },
        { "ok OPEN\n", -EINVAL },
        { "ERR\n", -EINVAL },
        { "ERR auth\n", -EINVAL },
        { "ERR auth \n", -EINVAL },
        { "ERR nosuch text\n", -EINVAL },
        { "ERR AUTH text\n", -EINVAL },
        { "ERR auth caf\xc3\xa9\n", -EINVAL },
        { "EVENT\n", -EINVAL },
        { "EVENT Change\n", -EINVAL },
        { "EVENT change k\n", -EINVAL },
        { "EVENT abcdefghijabcdefghijabcdefghijabc\n", -EINVAL },
        { "DATA WHO a=1 b=2 c=3 d=4 e=5 f=6 g=7 h=8 i=9 j=10 k=11 l=12 m=13 n=14 o=15 p=16 q=17\n", -EINVAL },
        { "OK CLOSE", -EINVAL },
        { "OK CLOSE\r", -EINVAL },
        { "", -EINVAL },
};

TEST(bad_replies)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad_replies); i++) {
                acs_proto_reply r;
                const char *why = NULL;
                int ret = acs_proto_parse_reply(bad_replies[i].line, strlen(bad_replies[i].line), &r, &why);
                if (ret != bad_replies[i].ret || !why) {
                        printf("#   reply \"%s\": %d (%s)\n", bad_replies[i].line, ret, why ? why : "-");
                        test_failed_checks++;
                }
        }
        const char *l = make_line("OK WHO k=", 'v', ACS_PROTO_LINE_MAX + 1);
        acs_proto_reply r;
        const char *why;
        CHECK_INT(acs_proto_parse_reply(l, strlen(l), &r, &why), -EMSGSIZE);
        l = make_line("OK WHO k=", 'v', ACS_PROTO_LINE_MAX);
        CHECK_INT(acs_proto_parse_reply(l, strlen(l), &r, &why), 0);
        CHECK_INT(strlen(acs_proto_reply_get(&r, "k", NULL)), ACS_PROTO_LINE_MAX - 10);
        /* the good ones of the table above */
        static const char *const good[] = {
                "OK CLOSE\n", "OK CLOSE\r\n", "OK OPEN k=\n", "ERR auth  two  spaces \n", "EVENT x_1 a=b=c\n",
                "DATA WHO a=1 b=2 c=3 d=4 e=5 f=6 g=7 h=8 i=9 j=10 k=11 l=12 m=13 n=14 o=15 p=16\n",
                "EVENT abcdefghijabcdefghijabcdefghijab\n",
        };
        for (size_t i = 0; i < ACS_ARRAY_SIZE(good); i++) {
                int ret = acs_proto_parse_reply(good[i], strlen(good[i]), &r, &why);
                if (ret != 0) {
                        printf("#   reply \"%s\" rejected: %s\n", good[i], why);
                        test_failed_checks++;
                        continue;
                }
                char out[ACS_PROTO_LINE_MAX + 1];
                size_t len;
                acs_proto_reply r2;
                CHECK_INT(acs_proto_format_reply(&r, out, sizeof(out), &len), 0);
                CHECK_INT(acs_proto_parse_reply(out, len, &r2, &why), 0);
                CHECK(memcmp(&r, &r2, sizeof(r)) == 0);
                char small[ACS_PROTO_LINE_MAX + 1];
                size_t l2;
                for (size_t sz = 0; sz <= len; sz++)
                        CHECK_INT(acs_proto_format_reply(&r, small, sz, &l2), -EMSGSIZE);
                CHECK_INT(acs_proto_format_reply(&r, small, len + 1, &l2), 0);
        }
        /* structs that are not replies */
        memset(&r, 0, sizeof(r));
        char o[64];
        size_t ol;
        CHECK_INT(acs_proto_format_reply(&r, o, sizeof(o), &ol), -EINVAL);
        r.type = ACS_REPLY_EVENT;
        CHECK_INT(acs_proto_format_reply(&r, o, sizeof(o), &ol), -EINVAL); /* no kind */
        r.type = ACS_REPLY_ERR, r.err = ACS_ERR_AUTH;
        CHECK_INT(acs_proto_format_reply(&r, o, sizeof(o), &ol), -EINVAL); /* no text */
        r.type = ACS_REPLY_OK, r.cmd = 99;
        CHECK_INT(acs_proto_format_reply(&r, o, sizeof(o), &ol), -EINVAL);
        r.cmd = ACS_CMD_WHO, r.n_kv = 1, r.kv[0].key_off = 0, r.kv[0].key_len = 1, r.buf[0] = 'A';
        CHECK_INT(acs_proto_format_reply(&r, o, sizeof(o), &ol), -EINVAL); /* bad key */
        r.kv[0].key_off = 5000;
        CHECK_INT(acs_proto_format_reply(&r, o, sizeof(o), &ol), -EINVAL); /* out of buf */
        r.n_kv = 17;
        CHECK_INT(acs_proto_format_reply(&r, o, sizeof(o), &ol), -EINVAL);
        CHECK(acs_proto_reply_value(&r, 17, NULL) == NULL);
        memset(&r, 0, sizeof(r));
        r.type = ACS_REPLY_ERR, r.err = ACS_ERR_AUTH, strcpy(r.text, "caf\xc3\xa9");
        CHECK_INT(acs_proto_format_reply(&r, o, sizeof(o), &ol), -EINVAL); /* text not ASCII */
        memset(&r, 0, sizeof(r));
        r.type = ACS_REPLY_EVENT, strcpy(r.kind, "a-b");
        CHECK_INT(acs_proto_format_reply(&r, o, sizeof(o), &ol), -EINVAL); /* bad kind */
        CHECK_STR(acs_proto_reply_get(&r, "a", NULL) ? "?" : "none", "none");
}

/* ---- connection state ---- */

TEST(conn_state_table)
{
        /* rows: state; columns: HELLO OPEN RESUME CLOSE STATUS SYNC WATCH WHO (1 = allowed) */
        static const struct { enum acs_proto_conn_state st; const char allowed[9]; } rows[] = {
                { ACS_CONN_NEW, "10000000" },
                { ACS_CONN_READY, "01101101" },
                { ACS_CONN_SESSION, "00011111" },
                { ACS_CONN_WATCHING, "00000000" },
        };
        for (size_t i = 0; i < ACS_ARRAY_SIZE(rows); i++) {
                for (int cmd = ACS_CMD_HELLO; cmd < _ACS_CMD_MAX; cmd++) {
                        const char *why = NULL;
                        enum acs_proto_err e = acs_proto_check_state(rows[i].st, cmd, &why);
                        bool ok = rows[i].allowed[cmd - 1] == '1';
                        if ((e == ACS_ERR_NONE) != ok || (!ok && (e != ACS_ERR_STATE || !why))) {
                                printf("#   state %d %s: %d (%s)\n", rows[i].st, acs_proto_cmd_name(cmd), e,
                                       why ? why : "-");
                                test_failed_checks++;
                        }
                }
        }
        const char *why;
        CHECK_INT(acs_proto_check_state(ACS_CONN_READY, ACS_CMD_INVALID, &why), ACS_ERR_STATE);
        CHECK_INT(acs_proto_check_state(ACS_CONN_SESSION, _ACS_CMD_MAX, &why), ACS_ERR_STATE);
        CHECK_INT(acs_proto_check_state(99, ACS_CMD_HELLO, &why), ACS_ERR_STATE);
}

TEST(negotiate)
{
        unsigned v = 77;
        CHECK_INT(acs_proto_negotiate(1, 1, &v), 0);
        CHECK_INT(v, 1);
        CHECK_INT(acs_proto_negotiate(1, 999, &v), 0);
        CHECK_INT(v, ACS_PROTO_VERSION);
        v = 77;
        CHECK_INT(acs_proto_negotiate(2, 5, &v), -EPROTONOSUPPORT);
        CHECK_INT(v, 77);
        uint8_t a[32], b[32];
        acs_proto_token_new(a);
        acs_proto_token_new(b);
        CHECK(memcmp(a, b, 32) != 0);
}

/* ---- line reader ---- */

/* Feeds data in chunks of `chunk` bytes, collecting lines and -EMSGSIZE reports. */
static void reader_run(const char *data, size_t len, size_t chunk, char out[][64], size_t *n_out, int *n_toolong)
{
        acs_proto_reader r;
        acs_proto_reader_init(&r);
        size_t pos = 0;
        *n_out = 0;
        *n_toolong = 0;
        for (;;) {
                const char *line;
                size_t ll;
                int k;
                while ((k = acs_proto_reader_next(&r, &line, &ll)) != 0) {
                        if (k < 0) {
                                (*n_toolong)++;
                                continue;
                        }
                        CHECK(ll <= ACS_PROTO_LINE_MAX && line[ll - 1] == '\n');
                        snprintf(out[(*n_out)++], 64, "%.*s", (int)(ll < 60 ? ll : 60), line);
                }
                if (pos == len)
                        break;
                char *space;
                size_t room;
                acs_proto_reader_space(&r, &space, &room);
                CHECK(room > 0);
                size_t n = len - pos < chunk ? len - pos : chunk;
                n = n < room ? n : room;
                memcpy(space, data + pos, n);
                acs_proto_reader_commit(&r, n);
                pos += n;
        }
        CHECK(!acs_proto_reader_pending(&r) || (len && data[len - 1] != '\n'));
        acs_proto_reader_wipe(&r);
}

TEST(reader)
{
        static char data[32768];
        char out[16][64];
        size_t n;
        int toolong;
        static const size_t chunks[] = { 1, 2, 3, 7, 100, 4095, 4096, 100000 };
        for (size_t c = 0; c < ACS_ARRAY_SIZE(chunks); c++) {
                /* ordinary lines */
                const char *d = "HELLO 1 1\nCLOSE\r\nWHO\n";
                reader_run(d, strlen(d), chunks[c], out, &n, &toolong);
                CHECK_INT(n, 3);
                CHECK_INT(toolong, 0);
                CHECK_STR(out[0], "HELLO 1 1\n");
                CHECK_STR(out[1], "CLOSE\r\n");
                CHECK_STR(out[2], "WHO\n");
                /* a line of exactly 4096 bytes passes; 4097 is dropped and reported once */
                size_t o = 0;
                memset(data, 'a', 4095), data[4095] = '\n', o = 4096;
                memcpy(data + o, "ONE\n", 4), o += 4;
                memset(data + o, 'b', 4096), o += 4096;
                data[o++] = '\n';
                memcpy(data + o, "TWO\n", 4), o += 4;
                memset(data + o, 'c', 12000), o += 12000;
                data[o++] = '\n';
                memcpy(data + o, "THREE\n", 6), o += 6;
                reader_run(data, o, chunks[c], out, &n, &toolong);
                CHECK_INT(n, 4);
                CHECK_INT(toolong, 2);
                CHECK_INT(out[0][0], 'a');
                CHECK_STR(out[1], "ONE\n");
                CHECK_STR(out[2], "TWO\n");
                CHECK_STR(out[3], "THREE\n");
                /* an unfinished line stays pending */
                reader_run("WHO\nCLO", 7, chunks[c], out, &n, &toolong);
                CHECK_INT(n, 1);
        }
        /* Consumed bytes are wiped when the buffer moves. */
        acs_proto_reader r;
        acs_proto_reader_init(&r);
        char *sp;
        size_t room;
        acs_proto_reader_space(&r, &sp, &room);
        memcpy(sp, "OPEN u secretpw\nWH", 18);
        acs_proto_reader_commit(&r, 18);
        const char *line;
        size_t ll;
        CHECK_INT(acs_proto_reader_next(&r, &line, &ll), 1);
        CHECK_INT(acs_proto_reader_next(&r, &line, &ll), 0);
        CHECK(acs_proto_reader_pending(&r));
        acs_proto_reader_space(&r, &sp, &room);
        CHECK(memmem(r.buf, sizeof(r.buf), "secretpw", 8) == NULL);
        CHECK(memcmp(r.buf, "WH", 2) == 0);
        CHECK_INT(room, ACS_PROTO_LINE_MAX - 2);
        acs_proto_reader_wipe(&r);
}

TEST_MAIN()
