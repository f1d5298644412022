/* SPDX-License-Identifier: MIT */
/* Connecting to the IMAP server: TLS or STARTTLS with the chain and host name verified, then login. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <libetpan/libetpan.h>

typedef struct acs_imap_target {
        const char *url;         /* imaps://host[:port] or imap://host[:port] (STARTTLS required) */
        const char *ca_file;     /* PEM trust list; NULL = the system's trust store */
        bool insecure_plaintext; /* only with imap://: allow no TLS at all (explicit opt-in) */
        unsigned timeout_sec;    /* connect and I/O timeout; 0 = 30 s */
} acs_imap_target;

/*
 * Error classes returned (negative errno):
 *   -EINVAL        bad URL
 *   -ECONNREFUSED, -EHOSTUNREACH, -ETIMEDOUT, -ECONNRESET, -EIO: network (temporary)
 *   -EKEYREJECTED  certificate chain or host name did not verify (nothing was sent after
 *                  the handshake; no credential left the process)
 *   -EPROTO        protocol violation (e.g. bytes injected after STARTTLS's OK, no STARTTLS
 *                  capability on imap://, malformed greeting)
 *   -EACCES        the server rejected the user name or password
 */

/*
 * Connects, reads the greeting, does TLS (imaps) or STARTTLS (imap), verifies the chain
 * against ca_file and the URL's host name (SNI set), and bounds literal sizes the parser
 * will accept. On success *ret is a connected, not yet authenticated session (caller
 * frees it with mailimap_free after mailimap_logout). *ret_error (if non-NULL) gets a
 * malloc'd reason on failure.
 */
int acs_imap_connect(const acs_imap_target *t, mailimap **ret, char **ret_error);

/*
 * Logs in with AUTHENTICATE PLAIN when the server offers it, else LOGIN. The password is
 * only borrowed and is not kept. -EACCES when rejected. *ret_error as above.
 */
int acs_imap_login(mailimap *imap, const char *user, const char *password, char **ret_error);

/* Maps an error above to a sysexits.h status (EX_NOPERM, EX_TEMPFAIL, EX_PROTOCOL, ...). */
int acs_imap_error_exit_status(int err);

/*
 * Closes the connection and frees imap without any network I/O. libetpan's mailimap_free()
 * sends LOGOUT and reads the answer whenever a stream is open, which after a reset or a
 * parse error can wait on a server process that never answers.
 */
void acs_imap_abort(mailimap *imap);

/*
 * Added by the "tls" helper (new functions only; nothing above changed).
 *
 * Every session from acs_imap_connect reads through a guard that refuses a literal
 * announced larger than max_literal (default 1 GiB, at most 0xFFFFFFFE) and a response
 * line (literals excluded) longer than max_line (default 64 MiB, at least 1024). Once a
 * bound is exceeded the stream fails for good: libetpan calls then return
 * MAILIMAP_ERROR_STREAM. Two layers: a lexer over the received bytes (checks every
 * announced size before libetpan allocates it) and a backstop in libetpan's progress
 * callback (checks the size of every literal libetpan actually reads). The backstop is the
 * session's old-style progress function, set by acs_imap_connect; when you switch libetpan
 * to its context path with mailimap_set_progress_callback() (needed for
 * mailimap_set_msg_att_handler), pass acs_imap_progress as body_progr_fun, else body
 * literals lose the backstop (the lexer still applies).
 * Returns -EINVAL if imap was not made by acs_imap_connect or the limits are out of range.
 */
int acs_imap_set_limits(mailimap *imap, uint64_t max_literal, uint64_t max_line);

/*
 * After a libetpan call failed with MAILIMAP_ERROR_STREAM: -EPROTO (and a malloc'd
 * reason in *ret_error, if non-NULL) when the guard stopped the stream because the server
 * exceeded a bound, else 0 (an ordinary network error).
 */
int acs_imap_stream_error(mailimap *imap, char **ret_error);

/*
 * A mailprogress_function for mailimap_set_progress_callback(imap, acs_imap_progress,
 * acs_imap_progress, any context): feeds the guard's literal backstop (see above). It
 * ignores its context.
 */
void acs_imap_progress(size_t current, size_t maximum, void *context);

/*
 * APPEND without waiting for a continuation: with LITERAL+ (RFC 7888) the literal is sent
 * as {n+} right behind the command, so untagged data the server sends first (NOTIFY's
 * STATUS lines arrive at any time) cannot be mistaken for the "+" that libetpan 1.9.4's
 * mailimap_append() waits for (it then hangs until the I/O timeout). mailbox is the server
 * name (mUTF-7), flags a parenthesized list ("(\\Seen $label1)", NULL for none),
 * internaldate seconds since the epoch (0: none). On OK, *ret_uidvalidity and *ret_uid
 * from APPENDUID (0 when the server sent none). -ENOTSUP when the server has no LITERAL+
 * (the caller uses mailimap_uidplus_append then), -EINVAL for a mailbox name that cannot
 * be quoted, -EREMOTEIO on NO/BAD (the response info is then in imap->imap_response_info),
 * -ECONNRESET / -EPROTO on connection or parse errors.
 */
int acs_imap_append_nosync(mailimap *imap, const char *mailbox, const char *flags, int64_t internaldate,
                           const char *body, size_t len, uint32_t *ret_uidvalidity, uint32_t *ret_uid);
