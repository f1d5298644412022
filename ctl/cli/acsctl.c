/* SPDX-License-Identifier: MIT */
/* acsctl: the command line client of acsd (open, resume, close, status, who, sync, watch) over its Unix socket. */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sysexits.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "acs/config.h"
#include "acs/util.h"
#include "protocol.h"

/*
 * Exit statuses (sysexits.h), also in `acsctl --help`:
 *   0  EX_OK           done
 *   64 EX_USAGE        bad command line (or a user name the protocol cannot carry)
 *   65 EX_DATAERR      no password given, or one too long
 *   67 EX_NOUSER       ERR notfound: no such user instance or mailbox
 *   69 EX_UNAVAILABLE  acsd not running (no socket / refused), ERR unavailable (IMAP down)
 *   70 EX_SOFTWARE     ERR internal: a bug or resource failure in acsd
 *   71 EX_OSERR        out of memory, a system call failed here
 *   74 EX_IOERR        reading or writing the socket failed
 *   75 EX_TEMPFAIL     ERR limit (retry later), or no answer within --timeout
 *   76 EX_PROTOCOL     acsd's reply broke the protocol, or acsd refused ours (syntax,
 *                      version, state ...); acsd closed the connection early
 *   77 EX_NOPERM       ERR auth (user or password wrong), ERR token (unknown or expired
 *                      session), ERR denied (this uid may not do that), socket EACCES
 */

#define DEFAULT_TIMEOUT_MS (300 * 1000)

static const char *arg_socket;
static const char *arg_config;
static bool arg_json;
static int arg_timeout_ms = DEFAULT_TIMEOUT_MS;
static bool arg_quiet;

struct conn {
        const char *path; /* connected on first use: after a password was typed */
        int fd;
        acs_proto_reader *rd; /* sodium_malloc'd (locked, wiped on free) */
};

static void usage(FILE *f)
{
        fputs("Usage: acsctl [OPTIONS] COMMAND [ARGS]\n"
              "\n"
              "Talks to acsd over its Unix socket (docs/protocol.md).\n"
              "\n"
              "Commands:\n"
              "  open USER             open a session; the password comes from the terminal\n"
              "                        (no echo) or, when stdin is not a terminal, from the\n"
              "                        first line of stdin; prints token, user and path\n"
              "  resume TOKEN          check a session token; prints user and path\n"
              "  close [TOKEN]         end a session (TOKEN '-' or absent: $ACS_TOKEN, else\n"
              "                        the first line of stdin)\n"
              "  status [USER]         state of every user instance (or one)\n"
              "  who                   open sessions (admins only)\n"
              "  sync USER [MAILBOX]   sync now, with progress on stderr\n"
              "  watch [TOKEN]         resume a session and print its events until it ends\n"
              "\n"
              "TOKEN may be '-' for the first line of stdin (keeps it out of the command line).\n"
              "\n"
              "Options:\n"
              "  -s, --socket PATH     acsd's socket (default: $ACSD_SOCKET, [socket] path of\n"
              "                        the config, /run/acsd/acsd.sock)\n"
              "  -c, --config FILE     read the socket path from this acs.conf\n"
              "  -j, --json            machine-readable output (one JSON object; watch and\n"
              "                        sync progress: one object per line)\n"
              "  -t, --timeout SEC     give up waiting for acsd after SEC seconds (default 300,\n"
              "                        0 = wait forever)\n"
              "  -q, --quiet           no progress output\n"
              "  -h, --help            this text\n"
              "\n"
              "Exit status: 0 ok, 64 usage, 65 no/bad password input, 67 notfound,\n"
              "69 acsd or IMAP server unavailable, 70 acsd internal error, 71 local error,\n"
              "74 I/O error, 75 limit or timeout (retry later), 76 protocol error,\n"
              "77 auth, token or denied.\n",
              f);
}

static int exit_for_err(enum acs_proto_err e)
{
        switch (e) {
        case ACS_ERR_AUTH:
        case ACS_ERR_TOKEN:
        case ACS_ERR_DENIED:
                return EX_NOPERM;
        case ACS_ERR_LIMIT:
                return EX_TEMPFAIL;
        case ACS_ERR_UNAVAILABLE:
                return EX_UNAVAILABLE;
        case ACS_ERR_NOTFOUND:
                return EX_NOUSER;
        case ACS_ERR_INTERNAL:
                return EX_SOFTWARE;
        default: /* toolong .. value, version, state: acsd did not accept what we sent */
                return EX_PROTOCOL;
        }
}

static void die_oom(void)
{
        fputs("acsctl: out of memory\n", stderr);
        exit(EX_OSERR);
}

/* ---- JSON output ---- */

static void json_str(FILE *f, const char *s, size_t len)
{
        fputc('"', f);
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)s[i];
                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c < 0x20 || c == 0x7f)
                        fprintf(f, "\\u%04x", c);
                else
                        fputc(c, f); /* UTF-8 passes through (acsd's values are UTF-8) */
        }
        fputc('"', f);
}

static void json_pairs(FILE *f, const acs_proto_reply *r, bool first)
{
        for (size_t i = 0; i < r->n_kv; i++) {
                size_t vl;
                const char *k = acs_proto_reply_key(r, i);
                const char *v = acs_proto_reply_value(r, i, &vl);
                if (!first)
                        fputc(',', f);
                first = false;
                json_str(f, k, strlen(k));
                fputc(':', f);
                json_str(f, v, vl);
        }
}

/* One reply as a JSON object of its pairs. */
static void json_object(FILE *f, const acs_proto_reply *r)
{
        fputc('{', f);
        json_pairs(f, r, true);
        fputc('}', f);
}

/* ---- text output ---- */

/* A value for a terminal or a shell: printable bytes as they are, others as \xHH. */
static void text_value(FILE *f, const char *v, size_t len)
{
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)v[i];
                if (c < 0x20 || c == 0x7f || c == '\\')
                        fprintf(f, "\\x%02x", c);
                else
                        fputc(c, f);
        }
}

static void text_pairs(FILE *f, const acs_proto_reply *r, const char *sep)
{
        for (size_t i = 0; i < r->n_kv; i++) {
                size_t vl;
                const char *v = acs_proto_reply_value(r, i, &vl);
                fprintf(f, "%s%s=", i ? sep : "", acs_proto_reply_key(r, i));
                text_value(f, v, vl);
        }
        fputc('\n', f);
}

/* ---- the connection ---- */

static int conn_connect(struct conn *c, const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(path) >= sizeof(sa.sun_path)) {
                fprintf(stderr, "acsctl: socket path too long: %s\n", path);
                return EX_USAGE;
        }
        strcpy(sa.sun_path, path);
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
                fprintf(stderr, "acsctl: socket: %s\n", strerror(errno));
                return EX_OSERR;
        }
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int e = errno;
                fprintf(stderr, "acsctl: cannot connect to acsd at %s: %s\n", path, strerror(e));
                if (e == EACCES || e == EPERM)
                        return EX_NOPERM;
                if (e == ENOENT || e == ECONNREFUSED || e == ENOTDIR)
                        return EX_UNAVAILABLE;
                if (e == EAGAIN)
                        return EX_TEMPFAIL;
                return EX_OSERR;
        }
        c->rd = sodium_malloc(sizeof(*c->rd));
        if (!c->rd)
                die_oom();
        acs_proto_reader_init(c->rd);
        return 0;
}

static void conn_close(struct conn *c)
{
        if (c->rd) {
                acs_proto_reader_wipe(c->rd);
                sodium_free(c->rd);
                c->rd = NULL;
        }
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
}

static int64_t now_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits for fd to be ready for events, up to the --timeout from start; 0 or an exit status. */
static int conn_wait(struct conn *c, short events, int64_t deadline)
{
        for (;;) {
                int tmo = -1;
                if (deadline) {
                        int64_t left = deadline - now_ms();
                        if (left <= 0) {
                                fprintf(stderr, "acsctl: no answer from acsd within %d s\n",
                                        arg_timeout_ms / 1000);
                                return EX_TEMPFAIL;
                        }
                        tmo = left > INT32_MAX ? INT32_MAX : (int)left;
                }
                struct pollfd p = { .fd = c->fd, .events = events };
                int n = poll(&p, 1, tmo);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        fprintf(stderr, "acsctl: poll: %s\n", strerror(errno));
                        return EX_OSERR;
                }
                if (n > 0)
                        return 0;
        }
}

static int64_t deadline_from_now(void)
{
        return arg_timeout_ms ? now_ms() + arg_timeout_ms : 0;
}

static int report_err(const char *what, const acs_proto_reply *r);

/*
 * acsd closed the connection while we were sending: it may have said why first (ERR
 * limit for a connection over socket.max_per_uid, sent at accept). Report that line.
 */
static int closed_early(struct conn *c)
{
        char *space;
        size_t size;
        acs_proto_reader_space(c->rd, &space, &size);
        ssize_t n = recv(c->fd, space, size, MSG_DONTWAIT);
        if (n > 0) {
                acs_proto_reader_commit(c->rd, (size_t)n);
                const char *line;
                size_t len;
                acs_proto_reply *r = malloc(sizeof(*r));
                if (!r)
                        die_oom();
                int e = 0;
                if (acs_proto_reader_next(c->rd, &line, &len) == 1 &&
                    acs_proto_parse_reply(line, len, r, NULL) == 0 && r->type == ACS_REPLY_ERR)
                        e = report_err("connect", r);
                free(r);
                if (e)
                        return e;
        }
        fputs("acsctl: acsd closed the connection\n", stderr);
        return EX_PROTOCOL;
}

/* Writes one whole line. 0 or an exit status. */
static int conn_send(struct conn *c, const char *line, size_t len)
{
        int64_t deadline = deadline_from_now();
        while (len > 0) {
                int r = conn_wait(c, POLLOUT, deadline);
                if (r)
                        return r;
                ssize_t n = send(c->fd, line, len, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n < 0 && (errno == EPIPE || errno == ECONNRESET))
                        return closed_early(c);
                if (n < 0) {
                        fprintf(stderr, "acsctl: sending to acsd: %s\n", strerror(errno));
                        return EX_IOERR;
                }
                line += n;
                len -= (size_t)n;
        }
        return 0;
}

/* Formats and sends a command; wipes the line (it may hold a password). */
static int conn_send_cmd(struct conn *c, const acs_proto_cmd *cmd)
{
        char *line = sodium_malloc(ACS_PROTO_LINE_MAX + 1);
        if (!line)
                die_oom();
        size_t len;
        int r = acs_proto_format_cmd(cmd, line, ACS_PROTO_LINE_MAX + 1, &len);
        if (r < 0) {
                sodium_free(line);
                fprintf(stderr, "acsctl: %s: an argument cannot be sent (not valid for the protocol)\n",
                        acs_proto_cmd_name(cmd->type));
                return EX_USAGE;
        }
        r = conn_send(c, line, len);
        sodium_free(line); /* wipes */
        return r;
}

/*
 * Reads the next reply line into *ret. With no deadline (0), waits forever (watch).
 * 0 or an exit status.
 */
static int conn_read_reply(struct conn *c, acs_proto_reply *ret, int64_t deadline)
{
        for (;;) {
                const char *line;
                size_t len;
                int r = acs_proto_reader_next(c->rd, &line, &len);
                if (r == -EMSGSIZE) {
                        fputs("acsctl: acsd sent a line longer than the protocol allows\n", stderr);
                        return EX_PROTOCOL;
                }
                if (r == 1) {
                        const char *why = NULL;
                        if (acs_proto_parse_reply(line, len, ret, &why) < 0) {
                                fprintf(stderr, "acsctl: malformed reply from acsd (%s)\n",
                                        why ? why : "?");
                                return EX_PROTOCOL;
                        }
                        return 0;
                }
                r = conn_wait(c, POLLIN, deadline);
                if (r)
                        return r;
                char *space;
                size_t size;
                acs_proto_reader_space(c->rd, &space, &size);
                ssize_t n = recv(c->fd, space, size, MSG_DONTWAIT);
                if (n < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (n < 0) {
                        fprintf(stderr, "acsctl: reading from acsd: %s\n", strerror(errno));
                        return errno == ECONNRESET ? EX_PROTOCOL : EX_IOERR;
                }
                if (n == 0) {
                        fputs("acsctl: acsd closed the connection\n", stderr);
                        return EX_PROTOCOL;
                }
                acs_proto_reader_commit(c->rd, (size_t)n);
        }
}

static int report_err(const char *what, const acs_proto_reply *r)
{
        const char *code = acs_proto_err_name(r->err);
        if (arg_json) {
                printf("{\"ok\":false,\"command\":");
                json_str(stdout, what, strlen(what));
                printf(",\"error\":");
                json_str(stdout, code, strlen(code));
                printf(",\"text\":");
                json_str(stdout, r->text, strlen(r->text));
                printf("}\n");
        }
        fprintf(stderr, "acsctl: %s: %s: %s\n", what, code, r->text);
        return exit_for_err(r->err);
}

/* The reply to a command: OK of the same command, or ERR. 0, or an exit status. */
static int expect_ok(struct conn *c, enum acs_proto_cmd_type type, acs_proto_reply *r)
{
        int e = conn_read_reply(c, r, deadline_from_now());
        if (e)
                return e;
        const char *name = acs_proto_cmd_name(type);
        if (r->type == ACS_REPLY_ERR)
                return report_err(name, r);
        if (r->type != ACS_REPLY_OK || r->cmd != type) {
                fprintf(stderr, "acsctl: unexpected reply to %s from acsd\n", name);
                return EX_PROTOCOL;
        }
        return 0;
}

static int hello(struct conn *c)
{
        if (c->fd < 0) {
                int e = conn_connect(c, c->path);
                if (e)
                        return e;
        }
        acs_proto_cmd cmd = { .type = ACS_CMD_HELLO, .vmin = ACS_PROTO_VERSION_MIN,
                              .vmax = ACS_PROTO_VERSION };
        int e = conn_send_cmd(c, &cmd);
        if (e)
                return e;
        acs_proto_reply *r = malloc(sizeof(*r));
        if (!r)
                die_oom();
        e = expect_ok(c, ACS_CMD_HELLO, r);
        free(r);
        return e;
}

/* ---- secrets from the terminal or stdin ---- */

static struct termios saved_tio;
static volatile sig_atomic_t tio_saved;

static void restore_tty(int sig)
{
        if (tio_saved)
                tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
        signal(sig, SIG_DFL);
        raise(sig);
}

/*
 * Reads one line (without its line end) into buf (size bytes, sodium_malloc'd by the
 * caller) from stdin: with echo off and a prompt on stderr when stdin is a terminal.
 * 0 and *ret_len, or an exit status.
 */
static int read_secret(const char *prompt, char *buf, size_t size, size_t *ret_len)
{
        bool tty = isatty(STDIN_FILENO);
        struct sigaction sa = { .sa_handler = restore_tty }, old_int, old_term, old_hup, old_quit;
        if (tty) {
                if (tcgetattr(STDIN_FILENO, &saved_tio) < 0) {
                        fprintf(stderr, "acsctl: terminal: %s\n", strerror(errno));
                        return EX_OSERR;
                }
                sigemptyset(&sa.sa_mask);
                sigaction(SIGINT, &sa, &old_int);
                sigaction(SIGTERM, &sa, &old_term);
                sigaction(SIGHUP, &sa, &old_hup);
                sigaction(SIGQUIT, &sa, &old_quit);
                struct termios t = saved_tio;
                t.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
                t.c_lflag |= ICANON;
                tio_saved = 1;
                if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) < 0) {
                        fprintf(stderr, "acsctl: terminal: %s\n", strerror(errno));
                        return EX_OSERR;
                }
                fputs(prompt, stderr);
                fflush(stderr);
        }
        size_t len = 0;
        bool eol = false, eof = false;
        int err = 0;
        /* Byte by byte: nothing past the line is taken from stdin, and no stdio buffer
         * keeps a copy of the secret. */
        while (!eol) {
                char ch;
                ssize_t n = read(STDIN_FILENO, &ch, 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        err = errno;
                        break;
                }
                if (n == 0) {
                        eof = true;
                        break;
                }
                if (ch == '\n') {
                        eol = true;
                        break;
                }
                if (len + 1 >= size) {
                        len = size; /* too long: drain the rest of the line below */
                        continue;
                }
                buf[len++] = ch;
        }
        if (tty) {
                tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_tio);
                tio_saved = 0;
                sigaction(SIGINT, &old_int, NULL);
                sigaction(SIGTERM, &old_term, NULL);
                sigaction(SIGHUP, &old_hup, NULL);
                sigaction(SIGQUIT, &old_quit, NULL);
                fputc('\n', stderr);
        }
        if (err) {
                fprintf(stderr, "acsctl: reading stdin: %s\n", strerror(err));
                return EX_IOERR;
        }
        if (len >= size) {
                fprintf(stderr, "acsctl: input longer than %zu bytes\n", size - 1);
                return EX_DATAERR;
        }
        if (len > 0 && buf[len - 1] == '\r' && (eol || eof))
                len--;
        if (memchr(buf, '\0', len)) {
                fputs("acsctl: the input holds a NUL byte\n", stderr);
                return EX_DATAERR;
        }
        buf[len] = '\0';
        *ret_len = len;
        return 0;
}

/* ---- commands ---- */

static int cmd_open(struct conn *c, const char *user)
{
        acs_proto_cmd *cmd = sodium_malloc(sizeof(*cmd));
        if (!cmd)
                die_oom();
        memset(cmd, 0, sizeof(*cmd));
        cmd->type = ACS_CMD_OPEN;
        cmd->has_user = true;
        cmd->user_len = strlen(user);
        if (cmd->user_len == 0 || cmd->user_len > ACS_PROTO_USER_MAX) {
                sodium_free(cmd);
                fprintf(stderr, "acsctl: open: user name must be 1..%d bytes\n", ACS_PROTO_USER_MAX);
                return EX_USAGE;
        }
        memcpy(cmd->user, user, cmd->user_len + 1);

        char prompt[ACS_PROTO_USER_MAX + 32];
        snprintf(prompt, sizeof(prompt), "Password for %s: ", user);
        int e = read_secret(prompt, cmd->password, sizeof(cmd->password), &cmd->password_len);
        if (!e && cmd->password_len == 0) {
                fputs("acsctl: open: no password given\n", stderr);
                e = EX_DATAERR;
        }
        if (e) {
                acs_proto_cmd_wipe(cmd);
                sodium_free(cmd);
                return e;
        }
        e = hello(c);
        if (!e)
                e = conn_send_cmd(c, cmd);
        acs_proto_cmd_wipe(cmd);
        sodium_free(cmd);
        if (e)
                return e;

        acs_proto_reply *r = malloc(sizeof(*r));
        if (!r)
                die_oom();
        e = expect_ok(c, ACS_CMD_OPEN, r);
        if (!e) {
                if (!acs_proto_reply_get(r, "token", NULL) || !acs_proto_reply_get(r, "path", NULL)) {
                        fputs("acsctl: OK OPEN without token or path\n", stderr);
                        e = EX_PROTOCOL;
                } else if (arg_json) {
                        printf("{\"ok\":true,\"command\":\"OPEN\",");
                        json_pairs(stdout, r, true);
                        printf("}\n");
                } else {
                        text_pairs(stdout, r, "\n");
                }
        }
        sodium_memzero(r, sizeof(*r)); /* the token */
        free(r);
        return e;
}

/* TOKEN argument: hex, '-' (stdin) or absent ($ACS_TOKEN, else stdin). */
static int get_token(const char *arg, uint8_t ret[ACS_PROTO_TOKEN_SIZE])
{
        char *buf = sodium_malloc(ACS_PROTO_TOKEN_HEX + 2);
        if (!buf)
                die_oom();
        size_t len;
        int e = 0;
        if (!arg || strcmp(arg, "-") == 0) {
                const char *env = arg ? NULL : getenv("ACS_TOKEN");
                if (env && *env) {
                        len = strlen(env);
                        if (len > ACS_PROTO_TOKEN_HEX)
                                len = ACS_PROTO_TOKEN_HEX + 1;
                        memcpy(buf, env, len);
                } else {
                        e = read_secret("Session token: ", buf, ACS_PROTO_TOKEN_HEX + 2, &len);
                }
        } else {
                len = strlen(arg);
                if (len > ACS_PROTO_TOKEN_HEX)
                        len = ACS_PROTO_TOKEN_HEX + 1;
                memcpy(buf, arg, len);
        }
        if (!e && acs_proto_token_from_hex(buf, len, ret) < 0) {
                fprintf(stderr, "acsctl: a session token is %d lower-case hex digits\n",
                        ACS_PROTO_TOKEN_HEX);
                e = EX_USAGE;
        }
        sodium_free(buf);
        return e;
}

/* HELLO, RESUME token; prints nothing. 0 or an exit status; *r holds the OK. */
static int resume(struct conn *c, const char *token_arg, acs_proto_reply *r)
{
        acs_proto_cmd cmd = { .type = ACS_CMD_RESUME };
        int e = get_token(token_arg, cmd.token);
        if (!e)
                e = hello(c);
        if (!e)
                e = conn_send_cmd(c, &cmd);
        sodium_memzero(&cmd, sizeof(cmd));
        if (!e)
                e = expect_ok(c, ACS_CMD_RESUME, r);
        return e;
}

static void print_ok(const char *name, const acs_proto_reply *r)
{
        if (arg_json) {
                printf("{\"ok\":true,\"command\":\"%s\"", name);
                json_pairs(stdout, r, false);
                printf("}\n");
        } else if (r->n_kv) {
                text_pairs(stdout, r, "\n");
        }
}

static int cmd_resume(struct conn *c, const char *token)
{
        acs_proto_reply *r = malloc(sizeof(*r));
        if (!r)
                die_oom();
        int e = resume(c, token, r);
        if (!e)
                print_ok("RESUME", r);
        free(r);
        return e;
}

static int cmd_close(struct conn *c, const char *token)
{
        acs_proto_reply *r = malloc(sizeof(*r));
        if (!r)
                die_oom();
        int e = resume(c, token, r);
        if (!e) {
                acs_proto_cmd cmd = { .type = ACS_CMD_CLOSE };
                e = conn_send_cmd(c, &cmd);
        }
        if (!e)
                e = expect_ok(c, ACS_CMD_CLOSE, r);
        if (!e)
                print_ok("CLOSE", r);
        free(r);
        return e;
}

/* Shows sync progress on stderr: one updating line on a terminal, else one line each. */
static void progress(const acs_proto_reply *r, bool *shown)
{
        if (arg_quiet)
                return;
        const char *mb = acs_proto_reply_get(r, "mailbox", NULL);
        const char *done = acs_proto_reply_get(r, "done", NULL);
        const char *total = acs_proto_reply_get(r, "total", NULL);
        bool tty = isatty(STDERR_FILENO);
        fprintf(stderr, tty ? "\r\033[Ksync: " : "sync: ");
        if (mb && *mb)
                text_value(stderr, mb, strlen(mb));
        else
                fputs("all mailboxes", stderr);
        if (done || total)
                fprintf(stderr, " %s/%s", done ? done : "?", total ? total : "?");
        for (size_t i = 0; i < r->n_kv; i++) {
                const char *k = acs_proto_reply_key(r, i);
                if (strcmp(k, "mailbox") && strcmp(k, "done") && strcmp(k, "total")) {
                        size_t vl;
                        const char *v = acs_proto_reply_value(r, i, &vl);
                        fprintf(stderr, " %s=", k);
                        text_value(stderr, v, vl);
                }
        }
        if (!tty)
                fputc('\n', stderr);
        fflush(stderr);
        *shown = tty;
}

/* STATUS, WHO, SYNC: DATA lines, then OK (or ERR). */
static int cmd_list(struct conn *c, acs_proto_cmd *cmd)
{
        int e = hello(c);
        if (!e)
                e = conn_send_cmd(c, cmd);
        if (e)
                return e;
        const char *name = acs_proto_cmd_name(cmd->type);
        bool is_sync = cmd->type == ACS_CMD_SYNC, shown = false, first = true;
        acs_proto_reply *r = malloc(sizeof(*r));
        if (!r)
                die_oom();
        if (arg_json && !is_sync)
                printf("{\"ok\":true,\"command\":\"%s\",\"items\":[", name);
        for (;;) {
                /* The deadline restarts with every line: a long sync keeps reporting. */
                e = conn_read_reply(c, r, deadline_from_now());
                if (e)
                        break;
                if (r->type == ACS_REPLY_DATA && r->cmd == cmd->type) {
                        if (is_sync) {
                                if (arg_json) {
                                        printf("{\"progress\":true,\"command\":\"SYNC\"");
                                        json_pairs(stdout, r, false);
                                        printf("}\n");
                                        fflush(stdout);
                                }
                                progress(r, &shown);
                        } else if (arg_json) {
                                if (!first)
                                        putchar(',');
                                json_object(stdout, r);
                        } else {
                                text_pairs(stdout, r, " ");
                        }
                        first = false;
                        continue;
                }
                if (shown) {
                        fputc('\n', stderr);
                        shown = false;
                }
                if (r->type == ACS_REPLY_ERR) {
                        if (arg_json && !is_sync)
                                printf("]}\n");
                        e = report_err(name, r);
                        break;
                }
                if (r->type != ACS_REPLY_OK || r->cmd != cmd->type) {
                        fprintf(stderr, "acsctl: unexpected reply to %s from acsd\n", name);
                        e = EX_PROTOCOL;
                        break;
                }
                if (arg_json && !is_sync) {
                        printf("]");
                        json_pairs(stdout, r, false);
                        printf("}\n");
                } else if (arg_json) {
                        printf("{\"ok\":true,\"command\":\"SYNC\"");
                        json_pairs(stdout, r, false);
                        printf("}\n");
                } else if (is_sync) {
                        if (!arg_quiet) {
                                fputs("sync: done", stderr);
                                for (size_t i = 0; i < r->n_kv; i++) {
                                        size_t vl;
                                        const char *v = acs_proto_reply_value(r, i, &vl);
                                        fprintf(stderr, " %s=", acs_proto_reply_key(r, i));
                                        text_value(stderr, v, vl);
                                }
                                fputc('\n', stderr);
                        }
                }
                break;
        }
        if (shown)
                fputc('\n', stderr);
        free(r);
        return e;
}

static int cmd_watch(struct conn *c, const char *token)
{
        acs_proto_reply *r = malloc(sizeof(*r));
        if (!r)
                die_oom();
        int e = resume(c, token, r);
        if (!e) {
                acs_proto_cmd cmd = { .type = ACS_CMD_WATCH };
                e = conn_send_cmd(c, &cmd);
        }
        if (!e)
                e = expect_ok(c, ACS_CMD_WATCH, r);
        while (!e) {
                e = conn_read_reply(c, r, 0);
                if (e)
                        break;
                if (r->type == ACS_REPLY_ERR) {
                        e = report_err("WATCH", r);
                        break;
                }
                if (r->type != ACS_REPLY_EVENT) {
                        fputs("acsctl: unexpected reply during WATCH\n", stderr);
                        e = EX_PROTOCOL;
                        break;
                }
                if (arg_json) {
                        printf("{\"event\":");
                        json_str(stdout, r->kind, strlen(r->kind));
                        json_pairs(stdout, r, false);
                        printf("}\n");
                } else {
                        printf("%s%s", r->kind, r->n_kv ? " " : "");
                        if (r->n_kv)
                                text_pairs(stdout, r, " ");
                        else
                                putchar('\n');
                }
                fflush(stdout);
                if (strcmp(r->kind, "closed") == 0)
                        break;
        }
        free(r);
        return e;
}

/* Socket path: -s, $ACSD_SOCKET, -c's [socket] path, the default config's, the default. */
static int socket_path(char **ret)
{
        if (arg_socket) {
                *ret = strdup(arg_socket);
                return *ret ? 0 : EX_OSERR;
        }
        const char *env = getenv("ACSD_SOCKET");
        if (!arg_config && env && *env) {
                *ret = strdup(env);
                return *ret ? 0 : EX_OSERR;
        }
        acs_config cfg;
        _cleanup_free_ char *error = NULL;
        const char *path = arg_config ? arg_config : ACS_CONFIG_DEFAULT_PATH;
        int r = acs_config_load(path, &cfg, &error);
        if (r < 0) {
                if (arg_config || r != -ENOENT) {
                        fprintf(stderr, "acsctl: %s\n", error ? error : strerror(-r));
                        if (arg_config)
                                return r == -EINVAL ? EX_CONFIG : EX_NOINPUT;
                }
                acs_config_defaults(&cfg);
        }
        *ret = strdup(cfg.socket_path);
        acs_config_clear(&cfg);
        return *ret ? 0 : EX_OSERR;
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' },
                { "config", required_argument, NULL, 'c' },
                { "json", no_argument, NULL, 'j' },
                { "timeout", required_argument, NULL, 't' },
                { "quiet", no_argument, NULL, 'q' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int o;
        while ((o = getopt_long(argc, argv, "+s:c:jt:qh", opts, NULL)) != -1) {
                switch (o) {
                case 's': arg_socket = optarg; break;
                case 'c': arg_config = optarg; break;
                case 'j': arg_json = true; break;
                case 'q': arg_quiet = true; break;
                case 't': {
                        char *end;
                        errno = 0;
                        unsigned long v = strtoul(optarg, &end, 10);
                        if (errno || end == optarg || *end || v > 86400 * 365) {
                                fprintf(stderr, "acsctl: bad --timeout: %s\n", optarg);
                                return EX_USAGE;
                        }
                        arg_timeout_ms = (int)(v * 1000 > INT32_MAX ? INT32_MAX : v * 1000);
                        break;
                }
                case 'h': usage(stdout); return EX_OK;
                default: usage(stderr); return EX_USAGE;
                }
        }
        if (optind >= argc) {
                usage(stderr);
                return EX_USAGE;
        }
        const char *verb = argv[optind++];
        int nargs = argc - optind;
        char **args = argv + optind;

        struct { const char *name; int min, max; } verbs[] = {
                { "open", 1, 1 }, { "resume", 1, 1 }, { "close", 0, 1 }, { "status", 0, 1 },
                { "who", 0, 0 },  { "sync", 1, 2 },   { "watch", 0, 1 },
        };
        bool known = false;
        for (size_t i = 0; i < ACS_ARRAY_SIZE(verbs); i++) {
                if (strcmp(verb, verbs[i].name) == 0) {
                        known = true;
                        if (nargs < verbs[i].min || nargs > verbs[i].max) {
                                fprintf(stderr, "acsctl: %s: wrong number of arguments\n", verb);
                                usage(stderr);
                                return EX_USAGE;
                        }
                }
        }
        if (!known) {
                fprintf(stderr, "acsctl: unknown command: %s\n", verb);
                usage(stderr);
                return EX_USAGE;
        }

        /* It holds a password for a moment: no core dumps, no ptrace by the same uid. */
        (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
        if (sodium_init() < 0) {
                fputs("acsctl: libsodium failed to initialise\n", stderr);
                return EX_OSERR;
        }

        _cleanup_free_ char *path = NULL;
        int e = socket_path(&path);
        if (e)
                return e;
        struct conn c = { .path = path, .fd = -1 };

        if (strcmp(verb, "open") == 0) {
                e = cmd_open(&c, args[0]);
        } else if (strcmp(verb, "resume") == 0) {
                e = cmd_resume(&c, args[0]);
        } else if (strcmp(verb, "close") == 0) {
                e = cmd_close(&c, nargs ? args[0] : NULL);
        } else if (strcmp(verb, "watch") == 0) {
                e = cmd_watch(&c, nargs ? args[0] : NULL);
        } else {
                acs_proto_cmd *cmd = calloc(1, sizeof(*cmd));
                if (!cmd)
                        die_oom();
                cmd->type = strcmp(verb, "who") == 0    ? ACS_CMD_WHO
                            : strcmp(verb, "sync") == 0 ? ACS_CMD_SYNC
                                                        : ACS_CMD_STATUS;
                if (nargs >= 1) {
                        cmd->has_user = true;
                        cmd->user_len = strlen(args[0]);
                        if (cmd->user_len == 0 || cmd->user_len > ACS_PROTO_USER_MAX) {
                                fprintf(stderr, "acsctl: %s: user name must be 1..%d bytes\n", verb,
                                        ACS_PROTO_USER_MAX);
                                free(cmd);
                                conn_close(&c);
                                return EX_USAGE;
                        }
                        memcpy(cmd->user, args[0], cmd->user_len + 1);
                }
                if (nargs >= 2) {
                        cmd->has_mailbox = true;
                        cmd->mailbox_len = strlen(args[1]);
                        if (cmd->mailbox_len == 0 || cmd->mailbox_len > ACS_PROTO_MAILBOX_MAX) {
                                fprintf(stderr, "acsctl: sync: mailbox name must be 1..%d bytes\n",
                                        ACS_PROTO_MAILBOX_MAX);
                                free(cmd);
                                conn_close(&c);
                                return EX_USAGE;
                        }
                        memcpy(cmd->mailbox, args[1], cmd->mailbox_len + 1);
                }
                e = cmd_list(&c, cmd);
                free(cmd);
        }
        conn_close(&c);
        if (fflush(stdout) != 0 && !e) {
                fprintf(stderr, "acsctl: writing output: %s\n", strerror(errno));
                e = EX_IOERR;
        }
        return e;
}
