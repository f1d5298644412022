/* SPDX-License-Identifier: MIT */
/* The agents' end of acsd's bus (key handover, hello, password request, login result), and the payload formats both ends use. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "acs/wire.h"

/*
 * Owner: helper "bus" (lib/agent.c). Users: acs-syncd, acs-fs (the agent side); acsd uses
 * the payload pack/parse functions below (one definition of each format).
 *
 * Payloads (integers big-endian; every parse function rejects any other length or value
 * with -EBADMSG, so acsd can feed them what an agent sent):
 *   AGENT_HELLO   u32 kind (enum acs_agent_kind), u32 pid                      8 bytes
 *   CRED_REQUEST  empty                                                         0 bytes
 *   CRED (boxed)  u16 n, password[n] (1..ACS_AGENT_PASSWORD_MAX, no NUL), zero padding up
 *                 to ACS_AGENT_CRED_SIZE (so the size on the bus says nothing)   1026 bytes
 *   LOGIN_RESULT  u32 result (enum acs_agent_login), u32 exit status (sysexits; 0 if ok)  8
 *   SYNC_NOW      mailbox name (UTF-8, no NUL, <= 1024 bytes) or empty for all
 *   STOP          empty
 *   PROGRESS      u32 event (enum acs_agent_progress), u64 done, u64 total     20 bytes
 *   CHANGE        u64 the cache's change-journal sequence number now           8 bytes
 *   STATUS        u32 state (enum acs_agent_state), u32 pending local ops      8 bytes
 */

enum acs_agent_kind {
        ACS_AGENT_SYNCD = 1,
        ACS_AGENT_FS = 2,
};

enum acs_agent_login {
        ACS_AGENT_LOGIN_OK = 0,
        ACS_AGENT_LOGIN_REJECTED = 1,    /* the server refused the password (syncd exit 77) */
        ACS_AGENT_LOGIN_UNAVAILABLE = 2, /* server unreachable / temporary (75), retrying */
        ACS_AGENT_LOGIN_FAILED = 3,      /* permanent other than the password: TLS, URL, protocol */
};

enum acs_agent_progress {
        ACS_AGENT_PROGRESS_SYNCING = 1,
        ACS_AGENT_PROGRESS_SYNCED = 2,
        ACS_AGENT_PROGRESS_RECONNECT = 3,
};

enum acs_agent_state {
        ACS_AGENT_STATE_CONNECTING = 1,
        ACS_AGENT_STATE_SYNCING = 2,
        ACS_AGENT_STATE_ONLINE = 3,
        ACS_AGENT_STATE_OFFLINE = 4,
        ACS_AGENT_STATE_STOPPING = 5,
};

#define ACS_AGENT_PASSWORD_MAX 1024
#define ACS_AGENT_CRED_SIZE (2 + ACS_AGENT_PASSWORD_MAX)
#define ACS_AGENT_MAILBOX_MAX 1024

/* ---- payloads ---- */

/* 8-byte AGENT_HELLO into out. */
void acs_agent_hello_pack(enum acs_agent_kind kind, uint32_t pid, uint8_t out[8]);
int acs_agent_hello_parse(const uint8_t *p, size_t len, enum acs_agent_kind *ret_kind, uint32_t *ret_pid);
/*
 * CRED payload for a password of len bytes, in sodium_malloc'd memory (*ret, free with
 * acs_secret_free; ACS_AGENT_CRED_SIZE bytes). -EINVAL (empty, too long, contains NUL), -ENOMEM.
 */
int acs_agent_cred_pack(const char *password, size_t len, uint8_t **ret);
/*
 * The password in a CRED payload, NUL-terminated, in sodium_malloc'd memory (*ret, free
 * with acs_secret_free). -EBADMSG, -ENOMEM.
 */
int acs_agent_cred_parse(const uint8_t *p, size_t len, char **ret, size_t *ret_len);
void acs_agent_login_pack(enum acs_agent_login result, uint32_t exit_status, uint8_t out[8]);
int acs_agent_login_parse(const uint8_t *p, size_t len, enum acs_agent_login *ret_result,
                          uint32_t *ret_exit_status);
/* SYNC_NOW: *ret_mailbox malloc'd NUL-terminated name, or NULL for all. */
int acs_agent_sync_now_parse(const uint8_t *p, size_t len, char **ret_mailbox);
void acs_agent_progress_pack(enum acs_agent_progress ev, uint64_t done, uint64_t total, uint8_t out[20]);
int acs_agent_progress_parse(const uint8_t *p, size_t len, enum acs_agent_progress *ret_ev,
                             uint64_t *ret_done, uint64_t *ret_total);
void acs_agent_status_pack(enum acs_agent_state st, uint32_t pending, uint8_t out[8]);
int acs_agent_status_parse(const uint8_t *p, size_t len, enum acs_agent_state *ret_state,
                           uint32_t *ret_pending);
void acs_agent_change_pack(uint64_t seq, uint8_t out[8]);
int acs_agent_change_parse(const uint8_t *p, size_t len, uint64_t *ret_seq);

/* ---- the agent's connection ---- */

typedef struct acs_agent acs_agent;

/* What acs_agent_dispatch() found (bits). */
enum {
        ACS_AGENT_EV_STOP = 1 << 0,     /* acsd sent STOP: finish and exit */
        ACS_AGENT_EV_SYNC_NOW = 1 << 1, /* acsd sent SYNC_NOW (see acs_agent_take_sync_mailbox) */
};

/*
 * Reads the key handover from key_fd (until EOF; key_fd is closed either way), connects
 * to address, finds acsd's unique name (the owner of ACS_BUS_NAME: only acsd's uid may
 * own it on acsd's own bus; on any bus the owner must run as root or be our parent
 * process, else -EPERM) and sends AGENT_HELLO(kind, getpid()). From then on only messages whose D-Bus
 * sender is that unique name are opened (acs_wire_open checks signature, recipient,
 * purpose and counter); anything else is counted in acs_agent_rejected() and dropped.
 * *ret owned by the caller. 0, -EBADMSG (bad handover), -ENOENT (acsd not on the bus),
 * -EPERM (a stranger owns acsd's name),
 * errors of acs_bus_connect, -ENOMEM.
 */
int acs_agent_open(const char *address, int key_fd, enum acs_agent_kind kind, acs_agent **ret);
acs_agent *acs_agent_free(acs_agent *a);
static inline void acs_agent_freep(acs_agent **a) { acs_agent_free(*a); }
#define _cleanup_agent_ __attribute__((cleanup(acs_agent_freep)))

/* The child id acsd gave us (from the handover). */
uint32_t acs_agent_id(const acs_agent *a);
/* Messages dropped so far (wrong sender, failed acs_wire_open, malformed payload). */
uint64_t acs_agent_rejected(const acs_agent *a);
/* The reason the last one was dropped (static string), or NULL. */
const char *acs_agent_last_error(const acs_agent *a);

/* Pollable descriptor and events; see acs_bus_fd. */
int acs_agent_fd(const acs_agent *a);
short acs_agent_poll_events(const acs_agent *a);
/* True when messages already wait in memory (read during a send): dispatch without polling. */
bool acs_agent_has_pending(const acs_agent *a);

/*
 * Processes what arrived, without blocking; *ret_events gets ACS_AGENT_EV_* bits of what
 * came (accumulated since the last call, including messages that arrived during
 * acs_agent_get_password). 0, -ECONNRESET (acsd's bus is gone), -ENOMEM.
 */
int acs_agent_dispatch(acs_agent *a, unsigned *ret_events);
/* After ACS_AGENT_EV_SYNC_NOW: the mailbox asked for (malloc'd; NULL = all). */
char *acs_agent_take_sync_mailbox(acs_agent *a);

/*
 * Sends CRED_REQUEST and waits up to timeout_ms for acsd's CRED. *ret: the password,
 * NUL-terminated, sodium_malloc'd (free it with acs_secret_free right after the login).
 * 0, -ETIMEDOUT, -ECONNRESET, -ECANCELED (STOP arrived meanwhile), -ENOMEM.
 */
int acs_agent_get_password(acs_agent *a, int timeout_ms, char **ret, size_t *ret_len);

/* Signed messages to acsd (queued and flushed at once, up to 1 s). 0 or -errno. */
int acs_agent_send_login_result(acs_agent *a, enum acs_agent_login result, uint32_t exit_status);
int acs_agent_send_progress(acs_agent *a, enum acs_agent_progress ev, uint64_t done, uint64_t total);
int acs_agent_send_change(acs_agent *a, uint64_t seq);
int acs_agent_send_status(acs_agent *a, enum acs_agent_state st, uint32_t pending);

/* ---- the agent in a thread of its own ---- */

/*
 * For agents whose main loop cannot poll the bus (acs-fs inside fuse_session_loop,
 * acs-syncd inside libetpan calls): a thread that dispatches a's messages. It calls
 * on_stop(userdata) once when STOP arrives or the bus goes away, and on_sync(userdata,
 * mailbox or NULL for all) for each SYNC_NOW, both from that thread (either may be NULL).
 * While the thread runs, use a only through the acs_agent_thread_* functions below (they
 * take the thread's lock). acs_agent_thread_stop() joins it; a is not freed.
 * 0, -errno of pipe2/pthread_create.
 */
typedef struct acs_agent_thread acs_agent_thread;
int acs_agent_thread_start(acs_agent *a, void (*on_stop)(void *userdata),
                           void (*on_sync)(void *userdata, const char *mailbox), void *userdata,
                           acs_agent_thread **ret);
acs_agent_thread *acs_agent_thread_stop(acs_agent_thread *t);
/* As acs_agent_get_password, under the lock (the thread keeps dispatching STOP meanwhile). */
int acs_agent_thread_get_password(acs_agent_thread *t, int timeout_ms, char **ret, size_t *ret_len);
int acs_agent_thread_send_login_result(acs_agent_thread *t, enum acs_agent_login result, uint32_t exit_status);
int acs_agent_thread_send_progress(acs_agent_thread *t, enum acs_agent_progress ev, uint64_t done, uint64_t total);
int acs_agent_thread_send_change(acs_agent_thread *t, uint64_t seq);
int acs_agent_thread_send_status(acs_agent_thread *t, enum acs_agent_state st, uint32_t pending);
