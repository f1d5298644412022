/* SPDX-License-Identifier: MIT */
/* Connecting to the IMAP server: TLS or STARTTLS with the chain and host name verified, then login. */
#pragma once

#include <stdbool.h>
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
