/* SPDX-License-Identifier: MIT */
/* The verified IMAP connection: TCP, TLS or STARTTLS with chain and host name checked by GnuTLS, bounded reads, login. */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <libetpan/libetpan.h>

#include "acs/util.h"
#include "imapconn.h"

#define DEFAULT_TIMEOUT_SEC 30u
#define STREAM_BUFFER_SIZE 8192

/*
 * Bounds on what the server may make us hold in memory (see docs/security.md,
 * "IMAP connection"). libetpan allocates a literal's announced size before reading it
 * and grows its line buffer without limit; both are checked below.
 */
#define DEFAULT_MAX_LITERAL (UINT64_C(1) << 30) /* 1 GiB per literal */
#define DEFAULT_MAX_LINE (UINT64_C(64) << 20)   /* 64 MiB of one response line, literals excluded */
#define HARD_MAX_LITERAL UINT64_C(0xFFFFFFFE)   /* libetpan counts literals in uint32 */

/* --- small helpers ------------------------------------------------------------ */

static void set_error(char **ret_error, const char *fmt, ...) ACS_PRINTF(2, 3);
static void set_error(char **ret_error, const char *fmt, ...)
{
        va_list ap;
        char *s = NULL;

        if (!ret_error)
                return;
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        free(*ret_error);
        *ret_error = s;
}

/* Copies server text for an error message, replacing control and non-ASCII bytes. */
static void sanitize(char *dst, size_t dstlen, const char *src)
{
        size_t i = 0;

        if (dstlen == 0)
                return;
        for (; src && *src && i + 1 < dstlen; src++)
                dst[i++] = (*src >= 0x20 && *src < 0x7f) ? *src : '?';
        dst[i] = '\0';
}

/* --- the guard: a mailstream_low wrapper that bounds literals and lines -------- */

enum guard_state {
        G_LINE,   /* ordinary response text */
        G_QUOTED, /* inside "..." */
        G_QESC,   /* after a backslash inside "..." */
        G_BRACE,  /* after '{' */
        G_DIGITS, /* after '{' [-] digit... */
        G_CLOSE,  /* after '{' digits '}' */
        G_CR,     /* after '{' digits '}' CR */
        G_LITERAL /* inside literal content: skipped, not lexed */
};

struct guard {
        mailstream_low *inner;   /* owned */
        uint64_t max_literal;
        uint64_t max_line;
        enum guard_state state;
        uint64_t number;         /* literal size being read, saturating */
        bool digits;
        bool negative;           /* "{-N}": libetpan reads a literal of 0 bytes */
        uint64_t literal_left;
        uint64_t line_len;
        bool tripped;
        bool eof;                /* the peer closed: every later read fails */
        char reason[160];
};

/*
 * Parser-side backstop. libetpan calls the session's progress function with the
 * announced size of every literal that is longer than what is already buffered, after
 * each chunk it reads (MAX_READ_PROGRESS = 64 KiB); the function gets no context, so it
 * leaves the size in a thread-local and the next guarded read on this thread (the same
 * session, since libetpan is reading that literal right now) checks it.
 */
static _Thread_local uint64_t tl_announced_literal;

static void guard_progress(size_t current, size_t maximum)
{
        (void) current;
        if ((uint64_t) maximum > tl_announced_literal)
                tl_announced_literal = (uint64_t) maximum;
}

void acs_imap_progress(size_t current, size_t maximum, void *context)
{
        (void) context;
        guard_progress(current, maximum);
}

static void guard_trip(struct guard *g, const char *fmt, ...) ACS_PRINTF(2, 3);
static void guard_trip(struct guard *g, const char *fmt, ...)
{
        va_list ap;

        if (g->tripped)
                return;
        g->tripped = true;
        va_start(ap, fmt);
        vsnprintf(g->reason, sizeof(g->reason), fmt, ap);
        va_end(ap);
}

static void guard_literal_announced(struct guard *g)
{
        if (g->number > g->max_literal)
                guard_trip(g, "server announced a literal of %s%llu bytes (limit %llu)",
                           g->number == UINT64_MAX ? "more than " : "",
                           (unsigned long long) (g->number == UINT64_MAX ? HARD_MAX_LITERAL : g->number),
                           (unsigned long long) g->max_literal);
}

/* Lexes received bytes; returns false once a bound is exceeded. */
static bool guard_scan(struct guard *g, const unsigned char *p, size_t n)
{
        size_t i = 0;

        while (i < n && !g->tripped) {
                unsigned char c = p[i];

                if (g->state == G_LITERAL) {
                        size_t take = n - i;
                        if ((uint64_t) take > g->literal_left)
                                take = (size_t) g->literal_left;
                        g->literal_left -= take;
                        i += take;
                        if (g->literal_left == 0) {
                                g->state = G_LINE;
                                g->line_len = 0;
                        }
                        continue;
                }

                if (c == '\n' && g->state != G_CLOSE && g->state != G_CR) {
                        g->state = G_LINE;
                        g->line_len = 0;
                        i++;
                        continue;
                }
                if (++g->line_len > g->max_line) {
                        guard_trip(g, "server sent a response line longer than %llu bytes",
                                   (unsigned long long) g->max_line);
                        break;
                }

                switch (g->state) {
                case G_LINE:
                        if (c == '"')
                                g->state = G_QUOTED;
                        else if (c == '{') {
                                g->state = G_BRACE;
                                g->number = 0;
                                g->digits = false;
                                g->negative = false;
                        }
                        i++;
                        break;
                case G_QUOTED:
                        if (c == '\\')
                                g->state = G_QESC;
                        else if (c == '"')
                                g->state = G_LINE;
                        i++;
                        break;
                case G_QESC:
                        g->state = G_QUOTED;
                        i++;
                        break;
                case G_BRACE:
                        if (c == '-') { /* libetpan reads "{-N}" as a literal of 0 */
                                g->negative = true;
                                g->state = G_DIGITS;
                                i++;
                                break;
                        }
                        /* fall through */
                case G_DIGITS:
                        if (c >= '0' && c <= '9') {
                                g->state = G_DIGITS;
                                g->digits = true;
                                if (g->number > (UINT64_MAX - 9) / 10)
                                        g->number = UINT64_MAX;
                                else
                                        g->number = g->number * 10 + (uint64_t) (c - '0');
                                i++;
                        } else if (c == '}' && g->digits) {
                                /* Checked here, whatever follows: libetpan also takes
                                 * "{N}" followed by spaces (a Lotus workaround). */
                                if (g->negative)
                                        g->number = 0;
                                guard_literal_announced(g);
                                g->state = G_CLOSE;
                                i++;
                        } else {
                                g->state = G_LINE; /* not a literal; look at c again */
                        }
                        break;
                case G_CLOSE:
                case G_CR:
                        if (c == '\r' && g->state == G_CLOSE) {
                                g->state = G_CR;
                                i++;
                        } else if (c == '\n') {
                                i++;
                                g->line_len = 0;
                                g->literal_left = g->number;
                                g->state = g->number > 0 ? G_LITERAL : G_LINE;
                        } else {
                                g->state = G_LINE;
                        }
                        break;
                case G_LITERAL:
                        break;
                }
        }
        return !g->tripped;
}

static struct guard *guard_of(mailstream_low *s)
{
        return s->data;
}

static ssize_t guard_read(mailstream_low *s, void *buf, size_t count)
{
        struct guard *g = guard_of(s);
        uint64_t announced = tl_announced_literal;
        ssize_t r;

        tl_announced_literal = 0;
        if (announced > g->max_literal)
                guard_trip(g, "server sent a literal of %llu bytes (limit %llu)",
                           (unsigned long long) announced, (unsigned long long) g->max_literal);
        if (g->tripped) {
                errno = EPROTO;
                return -1;
        }
        if (count == 0)
                return 0;
        /* libetpan 1.9.4 reads a literal in a loop that treats 0 as "no bytes yet": a
         * peer that closes inside a literal would make it spin forever. End of stream is
         * therefore an error here. */
        if (g->eof) {
                errno = ECONNRESET;
                return -1;
        }
        r = mailstream_low_read(g->inner, buf, count);
        if (r == 0) {
                g->eof = true;
                errno = ECONNRESET;
                return -1;
        }
        if (r > 0 && !guard_scan(g, buf, (size_t) r)) {
                errno = EPROTO;
                return -1;
        }
        return r;
}

static ssize_t guard_write(mailstream_low *s, const void *buf, size_t count)
{
        struct guard *g = guard_of(s);

        if (g->tripped) {
                errno = EPROTO;
                return -1;
        }
        return mailstream_low_write(g->inner, buf, count);
}

static int guard_close(mailstream_low *s)
{
        return mailstream_low_close(guard_of(s)->inner);
}

static int guard_get_fd(mailstream_low *s)
{
        return mailstream_low_get_fd(guard_of(s)->inner);
}

static void guard_free(mailstream_low *s)
{
        struct guard *g = guard_of(s);

        if (g->inner)
                mailstream_low_free(g->inner);
        free(g);
        free(s);
}

static void guard_cancel(mailstream_low *s)
{
        mailstream_low_cancel(guard_of(s)->inner);
}

static struct mailstream_cancel *guard_get_cancel(mailstream_low *s)
{
        return mailstream_low_get_cancel(guard_of(s)->inner);
}

static carray *guard_get_certificate_chain(mailstream_low *s)
{
        return mailstream_low_get_certificate_chain(guard_of(s)->inner);
}

static int guard_setup_idle(mailstream_low *s)
{
        return mailstream_low_setup_idle(guard_of(s)->inner);
}

static int guard_unsetup_idle(mailstream_low *s)
{
        return mailstream_low_unsetup_idle(guard_of(s)->inner);
}

static int guard_interrupt_idle(mailstream_low *s)
{
        return mailstream_low_interrupt_idle(guard_of(s)->inner);
}

static mailstream_low_driver guard_driver = {
        .mailstream_read = guard_read,
        .mailstream_write = guard_write,
        .mailstream_close = guard_close,
        .mailstream_get_fd = guard_get_fd,
        .mailstream_free = guard_free,
        .mailstream_cancel = guard_cancel,
        .mailstream_get_cancel = guard_get_cancel,
        .mailstream_get_certificate_chain = guard_get_certificate_chain,
        .mailstream_setup_idle = guard_setup_idle,
        .mailstream_unsetup_idle = guard_unsetup_idle,
        .mailstream_interrupt_idle = guard_interrupt_idle,
};

/* Wraps inner in a new guard that owns it; on failure (NULL) the caller still owns inner. */
static mailstream_low *guard_new(mailstream_low *inner, uint64_t max_literal, uint64_t max_line)
{
        struct guard *g = calloc(1, sizeof(*g));
        mailstream_low *s;

        if (!g)
                return NULL;
        g->inner = inner;
        g->max_literal = max_literal;
        g->max_line = max_line;
        g->state = G_LINE;
        s = mailstream_low_new(g, &guard_driver);
        if (!s) {
                free(g);
                return NULL;
        }
        return s;
}

static struct guard *session_guard(mailimap *imap)
{
        mailstream_low *low;

        if (!imap || !imap->imap_stream)
                return NULL;
        low = mailstream_get_low(imap->imap_stream);
        if (!low || low->driver != &guard_driver)
                return NULL;
        return guard_of(low);
}

/* --- URL --------------------------------------------------------------------- */

struct url {
        bool tls;           /* imaps:// */
        char host[256];     /* without brackets */
        uint16_t port;
        int ip_family;      /* AF_INET, AF_INET6 or 0 for a DNS name */
        unsigned char ip[16];
};

static int parse_url(const char *s, struct url *ret)
{
        struct url u = { 0 };
        const char *h, *end, *port = NULL;
        size_t hlen;

        if (!s)
                return -EINVAL;
        if (strncasecmp(s, "imaps://", 8) == 0) {
                u.tls = true;
                h = s + 8;
        } else if (strncasecmp(s, "imap://", 7) == 0) {
                h = s + 7;
        } else
                return -EINVAL;

        end = h + strcspn(h, "/?#");
        if (*end == '/' && end[1] != '\0')
                return -EINVAL; /* no mailbox paths */
        if (*end == '?' || *end == '#')
                return -EINVAL;
        if (memchr(h, '@', (size_t) (end - h)))
                return -EINVAL; /* no user info: the user name is given separately */

        if (*h == '[') {
                const char *rb = memchr(h, ']', (size_t) (end - h));
                if (!rb)
                        return -EINVAL;
                hlen = (size_t) (rb - h - 1);
                if (hlen == 0 || hlen >= sizeof(u.host))
                        return -EINVAL;
                memcpy(u.host, h + 1, hlen);
                if (rb[1] == ':')
                        port = rb + 2;
                else if (rb + 1 != end)
                        return -EINVAL;
                if (inet_pton(AF_INET6, u.host, u.ip) != 1)
                        return -EINVAL;
                u.ip_family = AF_INET6;
        } else {
                const char *colon = memchr(h, ':', (size_t) (end - h));
                const char *hend = colon ? colon : end;
                hlen = (size_t) (hend - h);
                if (hlen == 0 || hlen >= sizeof(u.host))
                        return -EINVAL;
                for (const char *c = h; c < hend; c++)
                        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                              (*c >= '0' && *c <= '9') || *c == '-' || *c == '.'))
                                return -EINVAL;
                memcpy(u.host, h, hlen);
                if (colon)
                        port = colon + 1;
                if (inet_pton(AF_INET, u.host, u.ip) == 1)
                        u.ip_family = AF_INET;
        }

        if (port) {
                unsigned long v = 0;
                if (port == end)
                        return -EINVAL;
                for (const char *c = port; c < end; c++) {
                        if (*c < '0' || *c > '9')
                                return -EINVAL;
                        v = v * 10 + (unsigned long) (*c - '0');
                        if (v > 65535)
                                return -EINVAL;
                }
                if (v == 0)
                        return -EINVAL;
                u.port = (uint16_t) v;
        } else
                u.port = u.tls ? 993 : 143;

        *ret = u;
        return 0;
}

/* --- TCP ----------------------------------------------------------------------- */

static int tcp_connect(const struct url *u, unsigned timeout_sec, int *ret_fd, char **ret_error)
{
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
        struct addrinfo *res = NULL;
        char portstr[8];
        int r, last = -EHOSTUNREACH;

        snprintf(portstr, sizeof(portstr), "%u", (unsigned) u->port);
        r = getaddrinfo(u->host, portstr, &hints, &res);
        if (r != 0) {
                set_error(ret_error, "cannot resolve %s: %s", u->host, gai_strerror(r));
                return r == EAI_AGAIN ? -EAGAIN : -EHOSTUNREACH;
        }

        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                                ai->ai_protocol);
                if (fd < 0) {
                        last = -errno;
                        continue;
                }
                r = connect(fd, ai->ai_addr, ai->ai_addrlen);
                if (r < 0 && errno == EINPROGRESS) {
                        struct pollfd pfd = { .fd = fd, .events = POLLOUT };
                        int err = 0;
                        socklen_t len = sizeof(err);

                        do
                                r = poll(&pfd, 1, (int) (timeout_sec * 1000));
                        while (r < 0 && errno == EINTR);
                        if (r == 0) {
                                close(fd);
                                last = -ETIMEDOUT;
                                continue;
                        }
                        if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
                                last = -errno;
                                close(fd);
                                continue;
                        }
                        if (err != 0) {
                                last = -err;
                                close(fd);
                                continue;
                        }
                } else if (r < 0) {
                        last = -errno;
                        close(fd);
                        continue;
                }
                /* libetpan's stream drivers expect a blocking descriptor. */
                if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
                        last = -errno;
                        close(fd);
                        continue;
                }
                freeaddrinfo(res);
                *ret_fd = fd;
                return 0;
        }
        freeaddrinfo(res);
        set_error(ret_error, "cannot connect to %s port %u: %s", u->host, (unsigned) u->port,
                  strerror(-last));
        if (last != -ECONNREFUSED && last != -ETIMEDOUT && last != -EHOSTUNREACH &&
            last != -ENETUNREACH && last != -ECONNRESET)
                last = -EIO;
        if (last == -ENETUNREACH)
                last = -EHOSTUNREACH;
        return last;
}

/* --- TLS ------------------------------------------------------------------------ */

struct tls_cb_data {
        const struct url *url;
};

/* Called by libetpan before the handshake: sets SNI (only for names, RFC 6066 3). */
static void tls_setup(struct mailstream_ssl_context *ctx, void *data)
{
        const struct tls_cb_data *d = data;

        if (d->url->ip_family == 0)
                (void) mailstream_ssl_set_server_name(ctx, (char *) d->url->host);
}

/*
 * Verifies the peer chain of low (after the handshake, before any byte is written)
 * against ca_file (or the system trust store) and the URL's host name or IP address.
 */
static int tls_verify(mailstream_low *low, const struct url *u, const char *ca_file, char **ret_error)
{
        gnutls_x509_trust_list_t tl = NULL;
        gnutls_x509_crt_t *certs = NULL;
        carray *chain;
        unsigned n = 0, status = 0;
        int r, ret;

        chain = mailstream_low_get_certificate_chain(low);
        if (!chain || carray_count(chain) == 0) {
                set_error(ret_error, "TLS: the server %s sent no certificate", u->host);
                ret = -EKEYREJECTED;
                goto out;
        }

        r = gnutls_x509_trust_list_init(&tl, 0);
        if (r < 0) {
                set_error(ret_error, "TLS: %s", gnutls_strerror(r));
                ret = -ENOMEM;
                goto out;
        }
        if (ca_file) {
                r = gnutls_x509_trust_list_add_trust_file(tl, ca_file, NULL, GNUTLS_X509_FMT_PEM, 0, 0);
                if (r <= 0) {
                        set_error(ret_error, "cannot load CA file %s: %s", ca_file,
                                  r == 0 ? "no certificate in it" : gnutls_strerror(r));
                        ret = -EINVAL;
                        goto out;
                }
        } else {
                r = gnutls_x509_trust_list_add_system_trust(tl, 0, 0);
                if (r <= 0) {
                        set_error(ret_error, "cannot load the system trust store: %s",
                                  r == 0 ? "it is empty" : gnutls_strerror(r));
                        ret = -EINVAL;
                        goto out;
                }
        }

        certs = calloc(carray_count(chain), sizeof(*certs));
        if (!certs) {
                ret = -ENOMEM;
                goto out;
        }
        for (unsigned i = 0; i < carray_count(chain); i++) {
                MMAPString *der = carray_get(chain, i);
                gnutls_datum_t d = { .data = (unsigned char *) der->str, .size = (unsigned) der->len };

                r = gnutls_x509_crt_init(&certs[n]);
                if (r < 0) {
                        ret = -ENOMEM;
                        goto out;
                }
                n++;
                r = gnutls_x509_crt_import(certs[n - 1], &d, GNUTLS_X509_FMT_DER);
                if (r < 0) {
                        set_error(ret_error, "TLS: cannot parse the certificate of %s: %s", u->host,
                                  gnutls_strerror(r));
                        ret = -EKEYREJECTED;
                        goto out;
                }
        }

        {
                gnutls_typed_vdata_st vdata[2] = {
                        { .type = GNUTLS_DT_KEY_PURPOSE_OID,
                          .data = (unsigned char *) GNUTLS_KP_TLS_WWW_SERVER },
                };
                if (u->ip_family) {
                        vdata[1].type = GNUTLS_DT_IP_ADDRESS;
                        vdata[1].data = (unsigned char *) u->ip;
                        vdata[1].size = u->ip_family == AF_INET ? 4 : 16;
                } else {
                        vdata[1].type = GNUTLS_DT_DNS_HOSTNAME;
                        vdata[1].data = (unsigned char *) u->host;
                }
                r = gnutls_x509_trust_list_verify_crt2(tl, certs, n, vdata, 2, 0, &status, NULL);
        }
        if (r < 0) {
                set_error(ret_error, "TLS: verifying the certificate of %s failed: %s", u->host,
                          gnutls_strerror(r));
                ret = -EKEYREJECTED;
                goto out;
        }
        if (status != 0) {
                gnutls_datum_t txt = { 0 };
                const char *why;

                if (status & GNUTLS_CERT_EXPIRED)
                        why = "the certificate has expired";
                else if (status & GNUTLS_CERT_NOT_ACTIVATED)
                        why = "the certificate is not yet valid";
                else if (status & GNUTLS_CERT_UNEXPECTED_OWNER)
                        why = u->ip_family ? "the certificate is not valid for this IP address"
                                           : "the certificate is not valid for this host name";
                else if (status & GNUTLS_CERT_SIGNER_NOT_FOUND)
                        why = n == 1 && gnutls_x509_crt_check_issuer(certs[0], certs[0]) == 1
                                ? "the certificate is self-signed and not trusted"
                                : "the certificate is not issued by a trusted CA";
                else
                        why = "the certificate chain does not verify";
                (void) gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &txt, 0);
                set_error(ret_error, "TLS: refusing %s: %s (%s)", u->host, why,
                          txt.data ? (const char *) txt.data : "");
                gnutls_free(txt.data);
                ret = -EKEYREJECTED;
                goto out;
        }
        ret = 0;
out:
        for (unsigned i = 0; i < n; i++)
                gnutls_x509_crt_deinit(certs[i]);
        free(certs);
        if (tl)
                gnutls_x509_trust_list_deinit(tl, 1);
        if (chain)
                mailstream_certificate_chain_free(chain);
        return ret;
}

/* --- session --------------------------------------------------------------------- */

void acs_imap_abort(mailimap *imap)
{
        if (!imap)
                return;
        if (imap->imap_stream) {
                mailstream_close(imap->imap_stream);
                imap->imap_stream = NULL;
        }
        mailimap_free(imap);
}

/* Maps a libetpan error from a command to -errno; the guard's verdict wins. */
static int map_etpan(mailimap *imap, int r, const char *what, char **ret_error)
{
        struct guard *g = session_guard(imap);

        if (g && g->tripped) {
                set_error(ret_error, "%s: %s", what, g->reason);
                return -EPROTO;
        }
        switch (r) {
        case MAILIMAP_ERROR_STREAM:
                set_error(ret_error, "%s: connection closed, reset or timed out", what);
                return -ECONNRESET;
        case MAILIMAP_ERROR_PARSE:
                set_error(ret_error, "%s: malformed response from the server", what);
                return -EPROTO;
        case MAILIMAP_ERROR_MEMORY:
                set_error(ret_error, "%s: out of memory", what);
                return -ENOMEM;
        case MAILIMAP_ERROR_PROTOCOL: {
                char text[200];
                sanitize(text, sizeof(text), imap ? imap->imap_response : NULL);
                set_error(ret_error, "%s: the server answered BAD or with a wrong tag (%s)", what, text);
                return -EPROTO;
        }
        case MAILIMAP_ERROR_DONT_ACCEPT_CONNECTION:
                set_error(ret_error, "%s: the server refused the connection (BYE)", what);
                return -ECONNREFUSED;
        default:
                set_error(ret_error, "%s: failed (libetpan error %d)", what, r);
                return -EPROTO;
        }
}

static int tls_start(int fd, const struct url *u, unsigned timeout,
                     bool starttls, mailstream_low **ret_low, char **ret_error)
{
        struct tls_cb_data cbd = { .url = u };
        mailstream_low *low;

        if (starttls)
                low = mailstream_low_tls_open_with_callback_timeout(fd, timeout, tls_setup, &cbd);
        else
                low = mailstream_low_ssl_open_with_callback_timeout(fd, timeout, tls_setup, &cbd);
        if (!low) {
                set_error(ret_error, "TLS handshake with %s failed (timeout, reset, or not a TLS server)",
                          u->host);
                return -ECONNRESET;
        }
        *ret_low = low;
        return 0;
}

int acs_imap_connect(const acs_imap_target *t, mailimap **ret, char **ret_error)
{
        struct url u;
        mailimap *imap = NULL;
        mailstream_low *low = NULL, *glow;
        mailstream *stream;
        unsigned timeout;
        int fd = -1, r;

        if (!t || !ret)
                return -EINVAL;
        r = parse_url(t->url, &u);
        if (r < 0) {
                set_error(ret_error, "bad IMAP URL '%s' (want imaps://host[:port] or imap://host[:port])",
                          t->url ? t->url : "(null)");
                return r;
        }
        timeout = t->timeout_sec ? t->timeout_sec : DEFAULT_TIMEOUT_SEC;

        imap = mailimap_new(0, guard_progress);
        if (!imap)
                return -ENOMEM;
        mailimap_set_timeout(imap, timeout);

        r = tcp_connect(&u, timeout, &fd, ret_error);
        if (r < 0)
                goto fail;

        if (u.tls) {
                r = tls_start(fd, &u, timeout, false, &low, ret_error);
                if (r < 0)
                        goto fail;
                fd = -1; /* low owns it */
                r = tls_verify(low, &u, t->ca_file, ret_error);
                if (r < 0) {
                        mailstream_low_close(low);
                        mailstream_low_free(low);
                        goto fail;
                }
        } else {
                low = mailstream_low_socket_open(fd);
                if (!low) {
                        r = -ENOMEM;
                        goto fail;
                }
                fd = -1;
                mailstream_low_set_timeout(low, timeout);
        }

        glow = guard_new(low, DEFAULT_MAX_LITERAL, DEFAULT_MAX_LINE);
        if (!glow) {
                mailstream_low_close(low);
                mailstream_low_free(low);
                r = -ENOMEM;
                goto fail;
        }
        stream = mailstream_new(glow, STREAM_BUFFER_SIZE);
        if (!stream) {
                mailstream_low_close(glow);
                mailstream_low_free(glow);
                r = -ENOMEM;
                goto fail;
        }

        r = mailimap_connect(imap, stream); /* imap owns stream from here on */
        if (r != MAILIMAP_NO_ERROR_AUTHENTICATED && r != MAILIMAP_NO_ERROR_NON_AUTHENTICATED) {
                r = map_etpan(imap, r, "reading the server greeting", ret_error);
                goto fail;
        }

        if (!u.tls) {
                struct mailimap_capability_data *caps = NULL;
                mailstream_low *old, *tlow;

                if (r == MAILIMAP_NO_ERROR_AUTHENTICATED) {
                        set_error(ret_error, "%s greeted with PREAUTH before STARTTLS; refusing an "
                                  "unprotected session", u.host);
                        r = -EPROTO;
                        goto fail;
                }
                if (t->insecure_plaintext)
                        goto done; /* explicitly asked for: no TLS at all */

                r = mailimap_capability(imap, &caps);
                if (r != MAILIMAP_NO_ERROR) {
                        r = map_etpan(imap, r, "CAPABILITY", ret_error);
                        goto fail;
                }
                mailimap_capability_data_free(caps);
                if (!mailimap_has_extension(imap, "STARTTLS")) {
                        set_error(ret_error, "%s does not offer STARTTLS on imap://; use imaps:// or "
                                  "(only on a trusted network) insecure plaintext", u.host);
                        r = -EPROTO;
                        goto fail;
                }
                r = mailimap_starttls(imap);
                /* Anything already read past the tagged reply was sent in plaintext by
                 * someone and must not be read as if it came over TLS. (libetpan itself
                 * also fails STARTTLS in that case, with a less telling error.) */
                if (r != MAILIMAP_ERROR_STREAM && imap->imap_stream->read_buffer_len > 0) {
                        set_error(ret_error, "STARTTLS: %zu plaintext bytes followed the server's OK "
                                  "(response injection); aborting",
                                  imap->imap_stream->read_buffer_len);
                        r = -EPROTO;
                        goto fail;
                }
                if (r != MAILIMAP_NO_ERROR) {
                        r = map_etpan(imap, r, "STARTTLS", ret_error);
                        goto fail;
                }
                old = mailstream_get_low(imap->imap_stream);
                fd = mailstream_low_get_fd(old);
                r = tls_start(fd, &u, timeout, true, &tlow, ret_error);
                fd = -1; /* still owned by old */
                if (r < 0)
                        goto fail;
                glow = guard_new(tlow, DEFAULT_MAX_LITERAL, DEFAULT_MAX_LINE);
                /* The new TLS low shares the descriptor: free the old one without closing. */
                mailstream_set_low(imap->imap_stream, glow ? glow : tlow);
                mailstream_low_free(old);
                if (!glow) {
                        r = -ENOMEM;
                        goto fail;
                }

                r = tls_verify(glow, &u, t->ca_file, ret_error);
                if (r < 0)
                        goto fail;

                /* Capabilities from before TLS are not to be trusted (RFC 3501 6.2.1). */
                caps = NULL;
                r = mailimap_capability(imap, &caps);
                if (r != MAILIMAP_NO_ERROR) {
                        r = map_etpan(imap, r, "CAPABILITY after STARTTLS", ret_error);
                        goto fail;
                }
                mailimap_capability_data_free(caps);
        }

done:
        *ret = imap;
        return 0;

fail:
        if (fd >= 0)
                close(fd);
        acs_imap_abort(imap);
        return r;
}

/* --- login ----------------------------------------------------------------------- */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Base64 of src into dst (which has room for 4 * ((n + 2) / 3) + 1 bytes). */
static void base64(char *dst, const unsigned char *src, size_t n)
{
        size_t i;

        for (i = 0; i + 2 < n; i += 3) {
                *dst++ = b64chars[src[i] >> 2];
                *dst++ = b64chars[((src[i] & 3) << 4) | (src[i + 1] >> 4)];
                *dst++ = b64chars[((src[i + 1] & 15) << 2) | (src[i + 2] >> 6)];
                *dst++ = b64chars[src[i + 2] & 63];
        }
        if (i < n) {
                *dst++ = b64chars[src[i] >> 2];
                if (i + 1 < n) {
                        *dst++ = b64chars[((src[i] & 3) << 4) | (src[i + 1] >> 4)];
                        *dst++ = b64chars[(src[i + 1] & 15) << 2];
                } else {
                        *dst++ = b64chars[(src[i] & 3) << 4];
                        *dst++ = '=';
                }
                *dst++ = '=';
        }
        *dst = '\0';
}

/* Wipes what libetpan's write buffer may still hold of a credential. */
static void wipe_write_buffer(mailimap *imap)
{
        if (imap->imap_stream && imap->imap_stream->write_buffer)
                explicit_bzero(imap->imap_stream->write_buffer, imap->imap_stream->buffer_max_size);
}

static int tagged_result(mailimap *imap, const char *what, char **ret_error)
{
        struct mailimap_response *resp = NULL;
        int r, type;
        char text[200];

        r = mailimap_parse_response(imap, &resp);
        if (r != MAILIMAP_NO_ERROR)
                return map_etpan(imap, r, what, ret_error);
        type = resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
        sanitize(text, sizeof(text), resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_text->rsp_text);
        mailimap_response_free(resp);
        if (type == MAILIMAP_RESP_COND_STATE_OK) {
                imap->imap_state = MAILIMAP_STATE_AUTHENTICATED;
                return 0;
        }
        set_error(ret_error, "%s: the server rejected the user name or password (%s %s)", what,
                  type == MAILIMAP_RESP_COND_STATE_NO ? "NO" : "BAD", text);
        return -EACCES;
}

static int authenticate_plain(mailimap *imap, const char *user, const char *password, char **ret_error)
{
        size_t ul = strlen(user), pl = strlen(password);
        size_t rawlen = ul + pl + 2;
        size_t b64len = 4 * ((rawlen + 2) / 3) + 1;
        unsigned char *raw = NULL;
        char *b64 = NULL;
        bool sasl_ir = mailimap_has_extension(imap, "SASL-IR");
        int r;

        if (rawlen < ul || b64len < rawlen)
                return -EINVAL;
        raw = malloc(rawlen);
        b64 = malloc(b64len);
        if (!raw || !b64) {
                r = -ENOMEM;
                goto out;
        }
        raw[0] = '\0'; /* no authorization identity */
        memcpy(raw + 1, user, ul);
        raw[1 + ul] = '\0';
        memcpy(raw + 2 + ul, password, pl);
        base64(b64, raw, rawlen);
        explicit_bzero(raw, rawlen);

        r = mailimap_send_current_tag(imap);
        if (r != MAILIMAP_NO_ERROR) {
                r = map_etpan(imap, r, "AUTHENTICATE PLAIN", ret_error);
                goto out;
        }
        if (mailstream_write(imap->imap_stream, "AUTHENTICATE PLAIN", 18) < 0)
                goto stream_error;
        if (!sasl_ir) {
                if (mailstream_write(imap->imap_stream, "\r\n", 2) < 0 ||
                    mailstream_flush(imap->imap_stream) < 0)
                        goto stream_error;
                if (!mailimap_read_line(imap))
                        goto stream_error;
                if (imap->imap_stream_buffer->len < 1 || imap->imap_stream_buffer->str[0] != '+') {
                        /* Not a continuation: the tagged refusal (or garbage). */
                        r = tagged_result(imap, "AUTHENTICATE PLAIN", ret_error);
                        if (r == 0) { /* success without credentials cannot be right */
                                set_error(ret_error, "AUTHENTICATE PLAIN: server accepted without credentials");
                                r = -EPROTO;
                        }
                        goto out;
                }
        } else if (mailstream_write(imap->imap_stream, " ", 1) < 0)
                goto stream_error;

        mailstream_set_privacy(imap->imap_stream, 0);
        if (mailstream_write(imap->imap_stream, b64, strlen(b64)) < 0 ||
            mailstream_write(imap->imap_stream, "\r\n", 2) < 0 ||
            mailstream_flush(imap->imap_stream) < 0) {
                mailstream_set_privacy(imap->imap_stream, 1);
                goto stream_error;
        }
        mailstream_set_privacy(imap->imap_stream, 1);
        wipe_write_buffer(imap);

        if (!mailimap_read_line(imap))
                goto stream_error;
        if (imap->imap_stream_buffer->len >= 1 && imap->imap_stream_buffer->str[0] == '+') {
                /* A second challenge: PLAIN has none. Cancel the exchange. */
                if (mailstream_write(imap->imap_stream, "*\r\n", 3) < 0 ||
                    mailstream_flush(imap->imap_stream) < 0 || !mailimap_read_line(imap))
                        goto stream_error;
        }
        r = tagged_result(imap, "AUTHENTICATE PLAIN", ret_error);
        goto out;

stream_error:
        wipe_write_buffer(imap);
        r = map_etpan(imap, MAILIMAP_ERROR_STREAM, "AUTHENTICATE PLAIN", ret_error);
out:
        if (b64) {
                explicit_bzero(b64, b64len);
                free(b64);
        }
        if (raw) {
                explicit_bzero(raw, rawlen);
                free(raw);
        }
        return r;
}

int acs_imap_login(mailimap *imap, const char *user, const char *password, char **ret_error)
{
        int r;

        if (!imap || !user || !password || !imap->imap_stream)
                return -EINVAL;
        if (strpbrk(user, "\r\n") || strpbrk(password, "\r\n")) {
                set_error(ret_error, "user name or password contains a line break");
                return -EINVAL;
        }
        if (imap->imap_state == MAILIMAP_STATE_AUTHENTICATED ||
            imap->imap_state == MAILIMAP_STATE_SELECTED)
                return 0; /* PREAUTH over verified TLS: nothing to send */
        if (imap->imap_state != MAILIMAP_STATE_NON_AUTHENTICATED)
                return -EINVAL;

        if (!imap->imap_connection_info || !imap->imap_connection_info->imap_capability) {
                struct mailimap_capability_data *caps = NULL;
                r = mailimap_capability(imap, &caps);
                if (r != MAILIMAP_NO_ERROR)
                        return map_etpan(imap, r, "CAPABILITY", ret_error);
                mailimap_capability_data_free(caps);
        }
        if (mailimap_has_authentication(imap, "PLAIN"))
                return authenticate_plain(imap, user, password, ret_error);

        if (mailimap_has_extension(imap, "LOGINDISABLED")) {
                set_error(ret_error, "the server disables LOGIN and offers no AUTH=PLAIN");
                return -EPROTO;
        }
        r = mailimap_login(imap, user, password);
        wipe_write_buffer(imap);
        if (r == MAILIMAP_NO_ERROR)
                return 0;
        if (r == MAILIMAP_ERROR_LOGIN) {
                char text[200];
                sanitize(text, sizeof(text), imap->imap_response);
                set_error(ret_error, "LOGIN: the server rejected the user name or password (%s)", text);
                return -EACCES;
        }
        return map_etpan(imap, r, "LOGIN", ret_error);
}

int acs_imap_set_limits(mailimap *imap, uint64_t max_literal, uint64_t max_line)
{
        struct guard *g = session_guard(imap);

        if (!g)
                return -EINVAL;
        if (max_literal == 0 || max_literal > HARD_MAX_LITERAL || max_line < 1024)
                return -EINVAL;
        g->max_literal = max_literal;
        g->max_line = max_line;
        return 0;
}

int acs_imap_stream_error(mailimap *imap, char **ret_error)
{
        struct guard *g = session_guard(imap);

        if (!g || !g->tripped)
                return 0;
        set_error(ret_error, "%s", g->reason);
        return -EPROTO;
}

int acs_imap_error_exit_status(int err)
{
        switch (err) {
        case 0:
                return EX_OK;
        case -EINVAL:
                return EX_CONFIG;
        case -ECONNREFUSED:
        case -EHOSTUNREACH:
        case -ENETUNREACH:
        case -ETIMEDOUT:
        case -ECONNRESET:
        case -EIO:
        case -EAGAIN:
        case -EPIPE:
                return EX_TEMPFAIL;
        case -EKEYREJECTED:
                return EX_UNAVAILABLE;
        case -EPROTO:
                return EX_PROTOCOL;
        case -EACCES:
                return EX_NOPERM;
        case -ENOMEM:
                return EX_OSERR;
        default:
                return EX_SOFTWARE;
        }
}

/* ---- APPEND with a non-synchronizing literal ---- */

int acs_imap_append_nosync(mailimap *imap, const char *mailbox, const char *flags, int64_t internaldate,
                           const char *body, size_t len, uint32_t *ret_uidvalidity, uint32_t *ret_uid)
{
        if (!mailimap_has_extension(imap, "LITERAL+"))
                return -ENOTSUP;
        /* "APPEND" SP quoted-mailbox [SP flags] [SP "date"] SP "{" len "+}" CRLF literal CRLF */
        size_t ml = strlen(mailbox);
        _cleanup_free_ char *cmd = malloc(2 * ml + (flags ? strlen(flags) : 0) + 128);
        if (!cmd)
                return -ENOMEM;
        char *p = cmd;
        p += sprintf(p, "APPEND \"");
        for (const char *s = mailbox; *s; s++) {
                if (*s == '\r' || *s == '\n' || (unsigned char)*s >= 0x80)
                        return -EINVAL;
                if (*s == '"' || *s == '\\')
                        *p++ = '\\';
                *p++ = *s;
        }
        *p++ = '"';
        if (flags && *flags)
                p += sprintf(p, " %s", flags);
        if (internaldate > 0) {
                static const char *mon[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
                time_t t = (time_t)internaldate;
                struct tm tm;
                if (gmtime_r(&t, &tm))
                        p += sprintf(p, " \"%02d-%s-%04d %02d:%02d:%02d +0000\"", tm.tm_mday, mon[tm.tm_mon],
                                     tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        }
        p += sprintf(p, " {%zu+}\r\n", len);

        int r = mailimap_send_current_tag(imap);
        if (r != MAILIMAP_NO_ERROR)
                return -ECONNRESET;
        if (mailstream_write(imap->imap_stream, cmd, (size_t)(p - cmd)) < 0 ||
            (len && mailstream_write(imap->imap_stream, body, len) < 0) ||
            mailstream_write(imap->imap_stream, "\r\n", 2) < 0 || mailstream_flush(imap->imap_stream) == -1)
                return -ECONNRESET;
        if (!mailimap_read_line(imap))
                return -ECONNRESET;
        struct mailimap_response *resp = NULL;
        r = mailimap_parse_response(imap, &resp);
        if (r != MAILIMAP_NO_ERROR)
                return r == MAILIMAP_ERROR_PARSE ? -EPROTO : -ECONNRESET;
        int type = resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
        mailimap_response_free(resp);
        if (type != MAILIMAP_RESP_COND_STATE_OK)
                return -EREMOTEIO;
        uint32_t uidvalidity = 0, uid = 0;
        clist *ext = imap->imap_response_info ? imap->imap_response_info->rsp_extension_list : NULL;
        for (clistiter *it = ext ? clist_begin(ext) : NULL; it; it = clist_next(it)) {
                struct mailimap_extension_data *d = clist_content(it);
                if (d->ext_extension->ext_id != MAILIMAP_EXTENSION_UIDPLUS ||
                    d->ext_type != MAILIMAP_UIDPLUS_RESP_CODE_APND)
                        continue;
                struct mailimap_uidplus_resp_code_apnd *a = d->ext_data;
                uidvalidity = a->uid_uidvalidity;
                if (a->uid_set && a->uid_set->set_list && clist_begin(a->uid_set->set_list)) {
                        struct mailimap_set_item *item = clist_content(clist_begin(a->uid_set->set_list));
                        uid = item->set_first;
                }
        }
        *ret_uidvalidity = uidvalidity;
        *ret_uid = uid;
        return 0;
}
