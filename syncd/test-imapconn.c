/* SPDX-License-Identifier: MIT */
/* Unit tests (TAP) for imapconn.c's pure parts: URL parsing, the literal/line guard lexer, base64, exit statuses. */

#include "../tests/unit/test.h"

/* The parts under test are static: test them from the inside. */
#include "imapconn.c"

/* -- URL ----------------------------------------------------------------------------- */

static const struct {
        const char *url;
        int ret;
        bool tls;
        const char *host;
        unsigned port;
        int family;
} url_cases[] = {
        { "imaps://mail.example.org", 0, true, "mail.example.org", 993, 0 },
        { "imaps://mail.example.org/", 0, true, "mail.example.org", 993, 0 },
        { "IMAPS://Mail.Example.org:1993", 0, true, "Mail.Example.org", 1993, 0 },
        { "imap://localhost", 0, false, "localhost", 143, 0 },
        { "imap://127.0.0.1:10143", 0, false, "127.0.0.1", 10143, AF_INET },
        { "imaps://[::1]:993", 0, true, "::1", 993, AF_INET6 },
        { "imaps://[2001:db8::5]", 0, true, "2001:db8::5", 993, AF_INET6 },
        { "imaps://", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://:993", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://host:", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://host:0", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://host:65536", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://host:99x", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://user@host", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://host/INBOX", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://host?x", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://ho_st", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://ho st", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://[::1", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://[not-ip]", -EINVAL, 0, NULL, 0, 0 },
        { "imaps://[::1]x", -EINVAL, 0, NULL, 0, 0 },
        { "pop3://host", -EINVAL, 0, NULL, 0, 0 },
        { "imapshost", -EINVAL, 0, NULL, 0, 0 },
};

TEST(url)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(url_cases); i++) {
                struct url u = { .port = 7 };
                int r = parse_url(url_cases[i].url, &u);
                if (r != url_cases[i].ret)
                        printf("#   url %s\n", url_cases[i].url);
                CHECK_INT(r, url_cases[i].ret);
                if (r < 0) {
                        CHECK_INT(u.port, 7); /* untouched on failure */
                        continue;
                }
                CHECK_INT(u.tls, url_cases[i].tls);
                CHECK_STR(u.host, url_cases[i].host);
                CHECK_INT(u.port, url_cases[i].port);
                CHECK_INT(u.ip_family, url_cases[i].family);
        }
        CHECK_INT(parse_url(NULL, &(struct url){ 0 }), -EINVAL);
}

/* -- guard lexer ------------------------------------------------------------------------ */

static const struct {
        const char *in;
        uint64_t max_literal, max_line;
        bool tripped;
        enum guard_state end;
        uint64_t literal_left;
} lex_cases[] = {
        /* an ordinary literal and what follows it */
        { "* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n", 100, 1 << 20, false, G_LINE, 0 },
        /* at the limit, one above */
        { "* 1 FETCH (BODY[] {100}\r\n", 100, 1 << 20, false, G_LITERAL, 100 },
        { "* 1 FETCH (BODY[] {101}\r\n", 100, 1 << 20, true, G_LINE, 0 },
        /* saturating, and libetpan's uint32 wrap cannot hide a size */
        { "{4294967396}\r\n", 100, 1 << 20, true, G_LINE, 0 },
        { "{99999999999999999999999999}\r\n", 100, 1 << 20, true, G_LINE, 0 },
        /* bare LF ends the announcement too */
        { "{3}\nabc", 100, 1 << 20, false, G_LINE, 0 },
        /* checked at '}' even when not followed by CRLF (libetpan's Lotus workaround) */
        { "* 1 FETCH (BODY[] {999}  x", 100, 1 << 20, true, G_LINE, 0 },
        /* quoted strings: braces are text, escapes respected */
        { "* LIST () \".\" \"{999}\"\r\n", 100, 1 << 20, false, G_LINE, 0 },
        { "* LIST () \".\" \"a\\\"{999}\"\r\n", 100, 1 << 20, false, G_LINE, 0 },
        { "* LIST () \".\" \"a\\\\\" {999}\r\n", 100, 1 << 20, true, G_LINE, 0 },
        /* a quote does not survive the end of a line */
        { "* OK \"unterminated\r\n{999}\r\n", 100, 1 << 20, true, G_LINE, 0 },
        /* literal content is skipped, not lexed */
        { "{5}\r\n{999}\r\n", 100, 1 << 20, false, G_LINE, 0 },
        { "{7}\r\n\"{999}\r\n", 100, 1 << 20, false, G_LINE, 0 },
        /* not literals */
        { "{12a}{}{ 999}{+999}\r\n", 100, 1 << 20, false, G_LINE, 0 },
        /* "{-N}" is 0 bytes to libetpan: no trip, nothing skipped */
        { "{-999}\r\n{999}\r\n", 100, 1 << 20, true, G_LINE, 0 },
        { "{-999}\r\nabc\r\n", 100, 1 << 20, false, G_LINE, 0 },
        /* lines */
        { "* OK 0123456789012345678901234567890123456789\r\n", 100, 32, true, G_LINE, 0 },
        { "* OK 0123456789\r\n* OK 0123456789\r\n", 100, 32, false, G_LINE, 0 },
        /* literal bytes do not count as line bytes */
        { "{40}\r\n0123456789012345678901234567890123456789)\r\n", 100, 32, false, G_LINE, 0 },
};

static struct guard lex_new(size_t i)
{
        return (struct guard){ .max_literal = lex_cases[i].max_literal,
                               .max_line = lex_cases[i].max_line, .state = G_LINE };
}

static void lex_check(size_t i, const struct guard *g, const char *how)
{
        if (g->tripped != lex_cases[i].tripped ||
            (!g->tripped && (g->state != lex_cases[i].end || g->literal_left != lex_cases[i].literal_left)))
                printf("#   case %zu (%s): tripped=%d state=%d left=%llu (%s)\n", i, how, g->tripped,
                       (int) g->state, (unsigned long long) g->literal_left, g->reason);
        CHECK_INT(g->tripped, lex_cases[i].tripped);
        if (!lex_cases[i].tripped) {
                CHECK_INT(g->state, lex_cases[i].end);
                CHECK_INT(g->literal_left, lex_cases[i].literal_left);
        }
}

TEST(guard_lexer)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(lex_cases); i++) {
                const unsigned char *in = (const unsigned char *) lex_cases[i].in;
                size_t n = strlen(lex_cases[i].in);
                struct guard g;

                /* in one read */
                g = lex_new(i);
                guard_scan(&g, in, n);
                lex_check(i, &g, "whole");

                /* split into two reads at every position */
                for (size_t cut = 1; cut < n; cut++) {
                        g = lex_new(i);
                        if (guard_scan(&g, in, cut))
                                guard_scan(&g, in + cut, n - cut);
                        lex_check(i, &g, "split");
                }

                /* one byte per read */
                g = lex_new(i);
                for (size_t k = 0; k < n && guard_scan(&g, in + k, 1); k++)
                        ;
                lex_check(i, &g, "bytewise");
        }
}

TEST(guard_reason)
{
        struct guard g = { .max_literal = 1000, .max_line = 1 << 20, .state = G_LINE };
        const char *in = "* 1 FETCH (BODY[] {2000}\r\n";

        CHECK(!guard_scan(&g, (const unsigned char *) in, strlen(in)));
        CHECK_STR(g.reason, "server announced a literal of 2000 bytes (limit 1000)");
        /* once tripped, it stays tripped */
        CHECK(!guard_scan(&g, (const unsigned char *) "x", 1));
}

TEST(backstop_threadlocal)
{
        /* The progress function only records; the size check happens in guard_read. */
        tl_announced_literal = 0;
        guard_progress(65536, 5000);
        acs_imap_progress(65536, 3000, NULL);
        CHECK_INT(tl_announced_literal, 5000);
        tl_announced_literal = 0;
}

/* -- base64 (RFC 4648 section 10) ----------------------------------------------------- */

TEST(base64)
{
        static const struct { const char *in, *out; } v[] = {
                { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
                { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
        };
        char buf[32];

        for (size_t i = 0; i < ACS_ARRAY_SIZE(v); i++) {
                base64(buf, (const unsigned char *) v[i].in, strlen(v[i].in));
                CHECK_STR(buf, v[i].out);
        }
        base64(buf, (const unsigned char *) "\0u\0secret", 9);
        CHECK_STR(buf, "AHUAc2VjcmV0");
}

/* -- exit statuses ------------------------------------------------------------------------ */

TEST(exit_status)
{
        CHECK_INT(acs_imap_error_exit_status(0), EX_OK);
        CHECK_INT(acs_imap_error_exit_status(-EINVAL), EX_CONFIG);
        CHECK_INT(acs_imap_error_exit_status(-ECONNREFUSED), EX_TEMPFAIL);
        CHECK_INT(acs_imap_error_exit_status(-EHOSTUNREACH), EX_TEMPFAIL);
        CHECK_INT(acs_imap_error_exit_status(-ETIMEDOUT), EX_TEMPFAIL);
        CHECK_INT(acs_imap_error_exit_status(-ECONNRESET), EX_TEMPFAIL);
        CHECK_INT(acs_imap_error_exit_status(-EIO), EX_TEMPFAIL);
        CHECK_INT(acs_imap_error_exit_status(-EKEYREJECTED), EX_UNAVAILABLE);
        CHECK_INT(acs_imap_error_exit_status(-EPROTO), EX_PROTOCOL);
        CHECK_INT(acs_imap_error_exit_status(-EACCES), EX_NOPERM);
        CHECK_INT(acs_imap_error_exit_status(-ENOMEM), EX_OSERR);
        CHECK_INT(acs_imap_error_exit_status(-ENOTTY), EX_SOFTWARE);
}

TEST(api_rejects_foreign_sessions)
{
        mailimap *imap = mailimap_new(0, NULL);
        char *err = NULL;

        CHECK(imap != NULL);
        CHECK_INT(acs_imap_set_limits(imap, 1000, 1 << 20), -EINVAL); /* no guard: not ours */
        CHECK_INT(acs_imap_stream_error(imap, &err), 0);
        CHECK(err == NULL);
        CHECK_INT(acs_imap_login(imap, "u", "p", &err), -EINVAL);     /* not connected */
        CHECK_INT(acs_imap_connect(&(acs_imap_target){ .url = "imaps://" }, &imap, &err), -EINVAL);
        CHECK(err && strstr(err, "bad IMAP URL"));
        free(err);
        mailimap_free(imap);
}

/* -- APPEND with LITERAL+ against a server that talks before the command is done ------- */

#include <pthread.h>
#include <signal.h>

typedef struct fake_server {
        int fd;
        bool literal_plus;
        char got[512];     /* the command line as received */
        char literal[64];  /* the literal as received */
        bool ok;
} fake_server;

static ssize_t read_line_fd(int fd, char *buf, size_t cap)
{
        size_t n = 0;
        while (n + 1 < cap) {
                ssize_t r = read(fd, buf + n, 1);
                if (r <= 0)
                        return -1;
                if (buf[n++] == '\n')
                        break;
        }
        buf[n] = 0;
        return (ssize_t)n;
}

static void *fake_main(void *arg)
{
        fake_server *f = arg;
        const char *greet = f->literal_plus ? "* OK [CAPABILITY IMAP4rev1 LITERAL+ UIDPLUS] fake\r\n"
                                            : "* OK [CAPABILITY IMAP4rev1 UIDPLUS] fake\r\n";
        if (write(f->fd, greet, strlen(greet)) < 0)
                return NULL;
        if (read_line_fd(f->fd, f->got, sizeof(f->got)) <= 0)
                return NULL;
        /* untagged news at once, before the literal (as Dovecot's NOTIFY does) */
        const char *news = "* STATUS Lists (MESSAGES 5 UIDNEXT 9)\r\n* STATUS Other (MESSAGES 1)\r\n";
        if (write(f->fd, news, strlen(news)) < 0)
                return NULL;
        char *open = strrchr(f->got, '{');
        size_t n = open ? strtoul(open + 1, NULL, 10) : 0;
        if (n >= sizeof(f->literal))
                return NULL;
        size_t have = 0;
        while (have < n + 2) { /* the literal and the CRLF that ends the command */
                ssize_t r = read(f->fd, f->literal + have, n + 2 - have);
                if (r <= 0)
                        return NULL;
                have += (size_t)r;
        }
        f->literal[n] = 0;
        char tag[32] = "";
        sscanf(f->got, "%31s", tag);
        char done[128];
        snprintf(done, sizeof(done), "%s OK [APPENDUID 77 1234] Append completed.\r\n", tag);
        f->ok = write(f->fd, done, strlen(done)) > 0;
        return NULL;
}

static int fake_session(fake_server *f, pthread_t *th, mailimap **ret)
{
        signal(SIGPIPE, SIG_IGN); /* the LOGOUT of mailimap_free may meet a closed fake */
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        f->fd = sv[1];
        pthread_create(th, NULL, fake_main, f);
        mailimap *imap = mailimap_new(0, NULL);
        mailstream *st = mailstream_socket_open(sv[0]);
        mailimap_set_timeout(imap, 5);
        int r = mailimap_connect(imap, st);
        if (r != MAILIMAP_NO_ERROR_NON_AUTHENTICATED) {
                mailimap_free(imap);
                return -EIO;
        }
        *ret = imap;
        return 0;
}

/* Ends the fake (EOF both ways, so neither side waits for the other) and frees the session. */
static void fake_end(fake_server *f, pthread_t th, mailimap *imap)
{
        shutdown(f->fd, SHUT_RDWR);
        pthread_join(th, NULL);
        mailimap_free(imap);
        close(f->fd);
}

TEST(append_nosync_untagged_first)
{
        fake_server f = {.literal_plus = true};
        pthread_t th;
        mailimap *imap = NULL;
        CHECK_INT(fake_session(&f, &th, &imap), 0);
        uint32_t uv = 0, uid = 0;
        static const char body[] = "Subject: x\r\n\r\nhello\r\n";
        int r = acs_imap_append_nosync(imap, "Lists", "(\\Seen $label1)", 1700000000, body, strlen(body),
                                       &uv, &uid);
        CHECK_INT(r, 0);
        CHECK_INT(uv, 77);
        CHECK_INT(uid, 1234);
        fake_end(&f, th, imap); /* joins the fake: what it received is complete */
        CHECK(f.ok);
        CHECK(strstr(f.got, " APPEND \"Lists\" (\\Seen $label1) \"14-Nov-2023 22:13:20 +0000\" {21+}\r\n") != NULL);
        CHECK_STR(f.literal, body);
}

TEST(append_nosync_needs_literal_plus)
{
        fake_server f = {.literal_plus = false};
        pthread_t th;
        mailimap *imap = NULL;
        CHECK_INT(fake_session(&f, &th, &imap), 0);
        uint32_t uv = 9, uid = 9;
        CHECK_INT(acs_imap_append_nosync(imap, "INBOX", NULL, 0, "x", 1, &uv, &uid), -ENOTSUP);
        CHECK_INT(uv, 9); /* untouched */
        fake_end(&f, th, imap);
}

TEST(append_nosync_rejects_unquotable)
{
        fake_server f = {.literal_plus = true};
        pthread_t th;
        mailimap *imap = NULL;
        CHECK_INT(fake_session(&f, &th, &imap), 0);
        uint32_t uv = 0, uid = 0;
        CHECK_INT(acs_imap_append_nosync(imap, "bad\r\nname", NULL, 0, "x", 1, &uv, &uid), -EINVAL);
        fake_end(&f, th, imap);
}

TEST_MAIN()
