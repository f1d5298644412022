/* SPDX-License-Identifier: MIT */
/* acs-imap-probe: connect and log in the way acs-syncd does, print the server's CAPABILITY list. */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include "acs/util.h"
#include "imapconn.h"

#define MAX_PASSWORD 4096

static void usage(FILE *f)
{
        fprintf(f, "usage: acs-imap-probe --url imaps://HOST[:PORT]|imap://HOST[:PORT] [--ca FILE]\n"
                   "                      --user USER --password-file FILE [--insecure-plaintext]\n"
                   "                      [--timeout SEC] [--max-literal BYTES]\n");
}

/* Reads the password (one line; a trailing newline is dropped) into buf. */
static int read_password(const char *path, char *buf, size_t size)
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        size_t len = 0;

        if (fd < 0)
                return -errno;
        for (;;) {
                ssize_t n = read(fd, buf + len, size - 1 - len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
                if (len == size - 1)
                        return -EFBIG;
        }
        buf[len] = '\0';
        if (len > 0 && buf[len - 1] == '\n')
                buf[--len] = '\0';
        if (len > 0 && buf[len - 1] == '\r')
                buf[--len] = '\0';
        if (memchr(buf, '\0', len))
                return -EINVAL;
        return 0;
}

static int print_capabilities(mailimap *imap, char **ret_error)
{
        struct mailimap_capability_data *caps = NULL;
        clistiter *it;
        int r;

        r = mailimap_capability(imap, &caps);
        if (r != MAILIMAP_NO_ERROR) {
                int e = acs_imap_stream_error(imap, ret_error);
                if (e < 0)
                        return e;
                if (ret_error && !*ret_error)
                        *ret_error = strdup(r == MAILIMAP_ERROR_STREAM ? "CAPABILITY: connection lost"
                                                                       : "CAPABILITY: malformed response");
                return r == MAILIMAP_ERROR_STREAM ? -ECONNRESET : -EPROTO;
        }
        fputs("CAPABILITY", stdout);
        for (it = clist_begin(caps->cap_list); it; it = clist_next(it)) {
                struct mailimap_capability *c = clist_content(it);
                if (c->cap_type == MAILIMAP_CAPABILITY_AUTH_TYPE)
                        printf(" AUTH=%s", c->cap_data.cap_auth_type);
                else
                        printf(" %s", c->cap_data.cap_name);
        }
        putchar('\n');
        fflush(stdout);
        mailimap_capability_data_free(caps);
        return 0;
}

int main(int argc, char **argv)
{
        static const struct option opts[] = {
                { "url", required_argument, NULL, 'u' },
                { "ca", required_argument, NULL, 'c' },
                { "user", required_argument, NULL, 'U' },
                { "password-file", required_argument, NULL, 'p' },
                { "insecure-plaintext", no_argument, NULL, 'I' },
                { "timeout", required_argument, NULL, 't' },
                { "max-literal", required_argument, NULL, 'm' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        acs_imap_target t = { 0 };
        const char *user = NULL, *pwfile = NULL;
        unsigned long long max_literal = 0;
        _cleanup_free_ char *error = NULL;
        char *password;
        mailimap *imap = NULL;
        int c, r;

        while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
                char *end;
                switch (c) {
                case 'u': t.url = optarg; break;
                case 'c': t.ca_file = optarg; break;
                case 'U': user = optarg; break;
                case 'p': pwfile = optarg; break;
                case 'I': t.insecure_plaintext = true; break;
                case 't':
                        errno = 0;
                        t.timeout_sec = (unsigned) strtoul(optarg, &end, 10);
                        if (errno || *end || t.timeout_sec == 0) {
                                usage(stderr);
                                return EX_USAGE;
                        }
                        break;
                case 'm':
                        errno = 0;
                        max_literal = strtoull(optarg, &end, 10);
                        if (errno || *end || max_literal == 0) {
                                usage(stderr);
                                return EX_USAGE;
                        }
                        break;
                case 'h': usage(stdout); return EX_OK;
                default: usage(stderr); return EX_USAGE;
                }
        }
        if (optind != argc || !t.url || !user || !pwfile) {
                usage(stderr);
                return EX_USAGE;
        }

        password = malloc(MAX_PASSWORD);
        if (!password)
                return EX_OSERR;
        r = read_password(pwfile, password, MAX_PASSWORD);
        if (r < 0) {
                explicit_bzero(password, MAX_PASSWORD);
                free(password);
                fprintf(stderr, "acs-imap-probe: cannot read password file %s: %s\n", pwfile, strerror(-r));
                return EX_NOINPUT;
        }

        r = acs_imap_connect(&t, &imap, &error);
        if (r == 0 && max_literal) {
                r = acs_imap_set_limits(imap, max_literal, UINT64_C(64) << 20);
                if (r < 0)
                        error = strdup("--max-literal out of range");
        }
        if (r == 0)
                r = acs_imap_login(imap, user, password, &error);
        explicit_bzero(password, MAX_PASSWORD);
        free(password);
        if (r == 0)
                r = print_capabilities(imap, &error);

        if (imap) {
                if (r == 0)
                        mailimap_logout(imap);
                else {
                        /* Do not talk to a server that just misbehaved. */
                        if (imap->imap_stream) {
                                mailstream_close(imap->imap_stream);
                                imap->imap_stream = NULL;
                        }
                }
                mailimap_free(imap);
        }
        if (r < 0) {
                fprintf(stderr, "acs-imap-probe: %s (%s)\n", error ? error : strerror(-r), strerror(-r));
                return acs_imap_error_exit_status(r);
        }
        return EX_OK;
}
