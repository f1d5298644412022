/* SPDX-License-Identifier: MIT */
/* Internal interfaces of acs-syncd: the session state shared by its modules (not a library). */
#pragma once

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libetpan/libetpan.h>

#include "acs/store.h"

/* Options from the command line; strings are borrowed from argv (password: see below). */
typedef struct syncd_opts {
        const char *db_path;
        const char *url;
        const char *user;
        const char *ca_file;
        bool once;
        bool progress_json;
        bool insecure_plaintext;
        unsigned timeout_sec;
        unsigned retries;      /* --once: attempts after a temporary failure before giving up */
        unsigned poll_sec;     /* daemon: also check every mailbox this often (0 = push only) */
        char *password; /* sodium_malloc'd, NUL-terminated; wiped and freed at exit */
} syncd_opts;

/* One message as the server describes it (no body). */
typedef struct srvmsg {
        uint32_t uid;
        uint32_t size;        /* RFC822.SIZE */
        unsigned flags;       /* enum acs_flag */
        bool have_flags;
        bool have_body;       /* a BODY[] section was in the response */
        uint64_t modseq;
        char *keywords;       /* malloc'd, sorted, space-separated; NULL = not fetched */
        int64_t internaldate;
} srvmsg;

/* ---- writer.c: stores fetched messages in a thread with its own cache handle ---- */
typedef struct writer writer;
/* Opens a second handle on db_path and starts the thread. */
int writer_start(const char *db_path, writer **ret);
/* Stops the thread (an open batch is rolled back), closes the handle; returns NULL. */
writer *writer_stop(writer *w);
/*
 * Queues one message; takes ownership of body (CRLF, malloc'd) and m->keywords (set to
 * NULL). Waits while too much is queued. Returns the writer's first error, if any.
 */
int writer_push_msg(writer *w, int64_t mailbox_id, srvmsg *m, char *body, size_t len);
/* Queues a commit of everything queued so far, with the mailbox state when set_state. */
int writer_commit(writer *w, int64_t mailbox_id, bool set_state, uint32_t uidvalidity, uint32_t uidnext,
                  uint64_t highestmodseq, uint64_t *ret_seq);
/* Waits until commit seq is done; returns the writer's first error. */
int writer_wait(writer *w, uint64_t seq);
int writer_error(writer *w);
/* Waits for the queue to drain, rolls back an open batch, clears and returns the error. */
int writer_reset(writer *w);
/* Assigns Maildir keyword letters to each of the space-separated keywords. */
void syncd_note_keywords(acs_store *st, const char *keywords);

/* Server capabilities that change what we send (read after login). */
typedef struct syncd_caps {
        bool qresync, condstore, notify, idle, special_use, enable;
} syncd_caps;

typedef struct syncd {
        const syncd_opts *opts;
        acs_store *store;
        writer *writer;         /* stores bodies during FETCH */
        mailimap *imap;         /* NULL while disconnected */
        syncd_caps caps;
        bool qresync_enabled;   /* ENABLE QRESYNC succeeded on this connection */
        char *selected;         /* server (mUTF-7) name of the selected mailbox, malloc'd; NULL none */
        bool list_dirty;        /* the mailbox list must be read again */
        bool unsolicited;       /* untagged news (NOTIFY STATUS, EXISTS, ...) seen outside IDLE */
        uint64_t synced_mailboxes; /* mailboxes that needed a sync (not skipped by STATUS) */
        int wake_fd;            /* read end of the signal self-pipe */
        /* replay.c: inotify on the database directory (new ops from acs-fs); opened lazily */
        bool ops_watch_open;
        int ops_watch_fd;       /* -1 when inotify is unavailable */
        /* statistics for the progress output */
        uint64_t total_msgs, total_bytes;
} syncd;

/* Set by the SIGTERM/SIGINT handler; every loop checks it. */
extern volatile sig_atomic_t syncd_stop;
/* Set (then the wake pipe written) when acsd asks for a sync now (SYNC_NOW on its bus). */
extern volatile sig_atomic_t syncd_sync_requested;
/* main.c, --bus: tells acsd a sync round starts (false) or ended (true); nothing otherwise. */
void syncd_bus_round(bool done);

/* Maps a libetpan status to -errno: stream -> -ECONNRESET, parse -> -EPROTO, NO/BAD -> -EREMOTEIO. */
int syncd_etpan_error(int r);

/*
 * Sends "<tag> <command>" (command without CRLF; the caller quotes what needs quoting) and
 * parses the whole response; untagged data stay in sd->imap->imap_response_info until the
 * next command. Returns 0 on OK, -EREMOTEIO on NO/BAD, -errno on connection errors.
 */
int syncd_raw_command(syncd *sd, const char *command);

/* "name" with \ and " escaped, malloc'd; NULL on ENOMEM or when s holds CR/LF. */
char *syncd_quote(const char *s);

/* Puts a layer under imap's stream that makes end of stream an error (libetpan 1.9.4 would spin). */
int syncd_wrap_eof(mailimap *imap);

/* ---- sync.c ---- */
/*
 * Reads the mailbox list (LIST, LSUB), follows creations, renames and deletions into the
 * store. Returns 0 or -errno (network/protocol errors from the connection, -EIO store).
 */
int syncd_sync_list(syncd *sd);
/*
 * Brings every mailbox up to date (INBOX first). With quick, mailboxes whose STATUS matches
 * the stored state are skipped without SELECT. Returns 0 or -errno.
 */
int syncd_sync_all(syncd *sd, bool quick);
/*
 * The mailbox has a new UIDVALIDITY (seen by a sync, or in APPENDUID/COPYUID): deletes its
 * rows that came from the server (local ones waiting for a uid stay), drops the flag and
 * expunge ops that name old uids, marks moves from it for re-append, and records
 * uidvalidity with UIDNEXT 0 (a full scan follows). Runs inside the caller's transaction.
 */
int syncd_forget_incarnation(syncd *sd, int64_t mailbox_id, uint32_t uidvalidity);
/*
 * The flags a cached message shows after a sync brought the server's: server_flags and
 * server_keywords with the deltas of the FLAGS ops of message_id still in the op log
 * re-applied in seq order. *ret_keywords is malloc'd (sorted, space-separated).
 */
int syncd_merged_flags(acs_store *st, int64_t message_id, unsigned server_flags, const char *server_keywords,
                       unsigned *ret_flags, char **ret_keywords);
/* Brings one mailbox (server name, mUTF-7) up to date. */
int syncd_sync_mailbox(syncd *sd, const char *server_name);

/* ---- replay.c: the op log to the server (docs/sync.md, docs/sync-semantics.md) ---- */
/*
 * Replays every op of the log in seq order over the connection; each op is removed (with
 * the uid it taught us) in one transaction after the server confirmed it. Returns 0 when
 * the log is empty, -errno on connection or store errors (the op stays for the next pass).
 */
int syncd_replay(syncd *sd);
/* Whether the op log has anything (a cheap read). */
int syncd_ops_pending(syncd *sd, bool *ret);
/* Records (inside the caller's transaction) that MOVE op seq refers to a stale uid. */
int syncd_replay_mark_stale(syncd *sd, int64_t seq);
/* inotify fd watching the database directory, or -1; opened on first use. */
int syncd_ops_watch_fd(syncd *sd);
/* Reads pending events; true when the database (or its -wal/-shm) changed. */
bool syncd_ops_watch_drain(syncd *sd);
void syncd_ops_watch_close(syncd *sd);

/* ---- push.c ---- */
/*
 * Waits for server events (NOTIFY + IDLE, or IDLE on the selected mailbox plus a periodic
 * check) and applies them; returns 0 when stopped by a signal, -errno on connection errors.
 */
int syncd_push_loop(syncd *sd);

/* ---- progress.c ---- */
void progress_init(bool json);
void progress_mailbox_begin(const char *mailbox, uint64_t total_msgs, uint64_t total_bytes);
void progress_add(uint64_t msgs, uint64_t bytes);
void progress_mailbox_end(void);
/* A free-form event line in JSON mode ({"event":..., fields...}); ignored on a tty. */
void progress_event(const char *event, const char *mailbox);
/* The same with one more string field "key":"value". */
void progress_event_kv(const char *event, const char *mailbox, const char *key, const char *value);
void progress_finish(void);
