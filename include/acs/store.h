/* SPDX-License-Identifier: MIT */
/* The per-user cache store: one SQLite database with mailboxes, messages, bodies and the op log. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Conventions (all functions here):
 * - return 0 (or a documented positive value) on success and -errno on failure;
 *   -ENOENT for "no such row", -EEXIST for a unique conflict, -EIO for SQLite errors,
 *   -EBUSY when the database stayed locked past the busy timeout.
 * - outputs are named ret_* and are written only on success.
 * - strings in structs returned to the caller are malloc'd and owned by the caller
 *   (free them with the matching *_clear()); strings passed in are only borrowed.
 * - the library does not log. acs_store_errmsg() gives the last SQLite message of a handle.
 * - one acs_store is one SQLite connection and must be used by one thread at a time;
 *   threads open their own handles on the same file (WAL: readers never block).
 */

#define ACS_STORE_SCHEMA_VERSION 1

typedef struct acs_store acs_store;

enum acs_store_open_flags {
        ACS_STORE_CREATE = 1 << 0,   /* create the file (and schema) if missing */
        ACS_STORE_READONLY = 1 << 1, /* open read-only (acs-fs readers) */
        ACS_STORE_CHECK = 1 << 2,    /* run PRAGMA quick_check on open */
};

/*
 * Opens (and with ACS_STORE_CREATE creates) the cache at path; sets WAL, foreign keys,
 * a busy timeout and migrates the schema forward to ACS_STORE_SCHEMA_VERSION.
 * Fails with -EPROTO when the file was written by a newer schema, -EBADMSG when the
 * file is not a database or is corrupt or truncated (never recreated), -ENOENT when it
 * is missing and ACS_STORE_CREATE was not given. On failure *ret_error (if non-NULL)
 * gets a malloc'd human-readable reason naming the path.
 */
int acs_store_open(const char *path, unsigned flags, acs_store **ret, char **ret_error);
/* Closes the handle; accepts NULL; returns NULL. */
acs_store *acs_store_close(acs_store *s);
/* Last SQLite error message of this handle (static storage owned by the handle). */
const char *acs_store_errmsg(acs_store *s);

/*
 * Transactions. begin() takes the write lock at once (BEGIN IMMEDIATE); nesting is not
 * supported (-EINVAL). durable=true commits with synchronous=FULL (what a system call's
 * success depends on: op log, appended bodies); false uses NORMAL (data that can be
 * fetched again). Functions below that write must run inside a transaction unless noted;
 * read functions may run outside one.
 */
int acs_store_begin(acs_store *s, bool durable);
int acs_store_commit(acs_store *s);
void acs_store_rollback(acs_store *s);
/*
 * Settles the outcome of a transaction whose process was killed while committing it: its
 * frames may be in the WAL but not in the shared WAL index, so a reader that shares the
 * index with a live process does not see it, while a later WAL recovery (every process
 * gone, then an open) would bring it back: a rename that failed and was seen undone would
 * turn out done after all. One durable write (meta "settled") overwrites such frames, so
 * what readers see now stays. A program that writes calls it once after opening, before
 * it shows or acts on anything. Not in a transaction. 0 or -errno.
 */
int acs_store_settle(acs_store *s);

/* ---- system flags, in Maildir letter order (D F P R S T) ---- */
enum acs_flag {
        ACS_FLAG_DRAFT = 1 << 0,    /* D  \Draft */
        ACS_FLAG_FLAGGED = 1 << 1,  /* F  \Flagged */
        ACS_FLAG_PASSED = 1 << 2,   /* P  $Forwarded */
        ACS_FLAG_REPLIED = 1 << 3,  /* R  \Answered */
        ACS_FLAG_SEEN = 1 << 4,     /* S  \Seen */
        ACS_FLAG_TRASHED = 1 << 5,  /* T  \Deleted */
        ACS_FLAG_ALL = (1 << 6) - 1,
};

/* ---- mailboxes ---- */
enum acs_mbox_attr {
        ACS_MBOX_NOSELECT = 1 << 0,
        ACS_MBOX_NOINFERIORS = 1 << 1,
        ACS_MBOX_SUBSCRIBED = 1 << 2,
        /* special use (RFC 6154) */
        ACS_MBOX_ALL = 1 << 8,
        ACS_MBOX_ARCHIVE = 1 << 9,
        ACS_MBOX_DRAFTS = 1 << 10,
        ACS_MBOX_FLAGGED = 1 << 11,
        ACS_MBOX_JUNK = 1 << 12,
        ACS_MBOX_SENT = 1 << 13,
        ACS_MBOX_TRASH = 1 << 14,
};

typedef struct acs_mailbox {
        int64_t id;             /* stable row id; never reused */
        char *name;             /* full UTF-8 name, levels separated by delim; "INBOX" for the inbox */
        char delim;             /* hierarchy delimiter, 0 when flat */
        unsigned attrs;         /* enum acs_mbox_attr */
        uint32_t uidvalidity;   /* 0 = never selected */
        uint32_t uidnext;
        uint64_t highestmodseq; /* 0 = server has no CONDSTORE for it */
        int64_t mtime_ns;       /* directory mtime: moves forward on every change in it */
} acs_mailbox;

/* Frees the strings of *mb and zeroes it; accepts NULL. */
void acs_mailbox_clear(acs_mailbox *mb);

int acs_store_mailbox_get(acs_store *s, const char *name, acs_mailbox *ret);
int acs_store_mailbox_get_by_id(acs_store *s, int64_t id, acs_mailbox *ret);
/*
 * Inserts a mailbox (mb->id ignored) or, when one of that name exists, updates its delim
 * and attrs (server state untouched). Sets mb->id. Bumps the parent's (or the root's) mtime
 * when a mailbox was added.
 */
int acs_store_mailbox_put(acs_store *s, acs_mailbox *mb);
/* Records server state (after a sync step, in the same transaction as the rows it describes). */
int acs_store_mailbox_set_state(acs_store *s, int64_t id, uint32_t uidvalidity, uint32_t uidnext,
                                uint64_t highestmodseq);
/* Renames one mailbox (children are the caller's business: call for each). -EEXIST on conflict. */
int acs_store_mailbox_rename(acs_store *s, int64_t id, const char *new_name);
/* Deletes the mailbox and its messages (bodies still referenced by the op log stay). */
int acs_store_mailbox_delete(acs_store *s, int64_t id);
/* Calls cb for each mailbox in name order; a non-zero return from cb stops and is returned. */
int acs_store_mailbox_foreach(acs_store *s, int (*cb)(const acs_mailbox *mb, void *userdata),
                              void *userdata);
/* Root directory mtime (moves forward when a mailbox is added, removed or renamed). */
int acs_store_root_mtime(acs_store *s, int64_t *ret_ns);

/* ---- messages ---- */
enum acs_msg_state {
        ACS_MSG_NEW = 1 << 0, /* shown in new/ rather than cur/ */
};

typedef struct acs_message {
        int64_t id;           /* stable row id (inode numbers derive from it); never reused */
        int64_t mailbox_id;
        uint32_t uid;         /* 0 = not yet known (a local append waiting for the server) */
        uint64_t modseq;
        unsigned flags;       /* enum acs_flag */
        char *keywords;       /* space-separated IMAP keywords in byte order, "" for none */
        int64_t internaldate; /* seconds since the epoch */
        uint64_t size;        /* bytes with LF line ends (S=) */
        uint64_t vsize;       /* bytes with CRLF line ends (W=) */
        char *uniq;           /* unique part of the file name; stable while in this mailbox */
        int64_t body_id;      /* 0 = body not cached */
        unsigned state;       /* enum acs_msg_state */
} acs_message;

void acs_message_clear(acs_message *m);

/*
 * Inserts a message. When m->uniq is NULL a unique part is generated
 * ("<internaldate>.M<id>.acs") and stored into m->uniq (malloc'd). Sets m->id.
 * -EEXIST when (mailbox, uid) or (mailbox, uniq) already exists.
 */
int acs_store_message_add(acs_store *s, acs_message *m);
int acs_store_message_get(acs_store *s, int64_t id, acs_message *ret);
int acs_store_message_get_by_uid(acs_store *s, int64_t mailbox_id, uint32_t uid, acs_message *ret);
int acs_store_message_get_by_uniq(acs_store *s, int64_t mailbox_id, const char *uniq,
                                  acs_message *ret);
/* Sets flags, keywords (NULL = unchanged) and modseq (0 = unchanged). */
int acs_store_message_set_flags(acs_store *s, int64_t id, unsigned flags, const char *keywords,
                                uint64_t modseq);
int acs_store_message_set_uid(acs_store *s, int64_t id, uint32_t uid);
int acs_store_message_set_state(acs_store *s, int64_t id, unsigned state);
/*
 * Points the message at another body (0 = not cached). The old body is deleted when no
 * other message or op refers to it any more. -ENOENT for an unknown message or body.
 */
int acs_store_message_set_body(acs_store *s, int64_t id, int64_t body_id);
/* Moves the row to another mailbox with a new uid (0 = unknown) and a new unique part (NULL = generate). */
int acs_store_message_move(acs_store *s, int64_t id, int64_t mailbox_id, uint32_t uid,
                           const char *uniq);
int acs_store_message_delete(acs_store *s, int64_t id);
/* Deletes by server UID; -ENOENT when absent. */
int acs_store_message_delete_uid(acs_store *s, int64_t mailbox_id, uint32_t uid);
/*
 * Streams a mailbox's messages in id order starting after after_id, at most limit rows
 * (0 = no limit); cb's non-zero return stops and is returned. Never loads the mailbox.
 */
int acs_store_message_list(acs_store *s, int64_t mailbox_id, int64_t after_id, size_t limit,
                           int (*cb)(const acs_message *m, void *userdata), void *userdata);
/* Number of messages and the largest uid known in a mailbox. */
int acs_store_message_count(acs_store *s, int64_t mailbox_id, uint64_t *ret_count,
                            uint32_t *ret_max_uid);
/* Calls cb with each known server uid of a mailbox in ascending order (for expunge detection). */
int acs_store_message_uids(acs_store *s, int64_t mailbox_id,
                           int (*cb)(uint32_t uid, int64_t id, void *userdata), void *userdata);

/* ---- bodies: stored once (deduplicated by SHA-256), shared by copies ---- */
/*
 * Stores data (LF line ends, as shown in the tree) and returns the id of the body with
 * that content, existing or new. A body is deleted once no message and no op refers to it.
 */
int acs_store_body_put(acs_store *s, const void *data, size_t len, int64_t *ret_id);
/*
 * Streaming store for large bodies whose size is known: create a zero-filled body of
 * size bytes, write it in pieces, then finish (which deduplicates and may return another
 * id in *ret_id; the created id is gone then).
 */
int acs_store_body_create(acs_store *s, uint64_t size, int64_t *ret_id);
int acs_store_body_write(acs_store *s, int64_t id, uint64_t offset, const void *data, size_t len);
int acs_store_body_finish(acs_store *s, int64_t id, int64_t *ret_id);
/* Reads up to len bytes at offset; *ret_n is the count read (short at the end). */
int acs_store_body_read(acs_store *s, int64_t id, uint64_t offset, void *buf, size_t len,
                        size_t *ret_n);
int acs_store_body_size(acs_store *s, int64_t id, uint64_t *ret_size);

/* ---- keyword letters a..z (as Dovecot's dovecot-keywords) ---- */
/* Letter index 0..25 of a keyword; with create, assigns the next free one. -ENOSPC past 26. */
int acs_store_keyword_index(acs_store *s, const char *keyword, bool create, int *ret_index);
/* Keyword for a letter index; *ret is malloc'd. -ENOENT when unassigned. */
int acs_store_keyword_name(acs_store *s, int index, char **ret);

/* ---- change journal (what acs-fs invalidates) ---- */
enum acs_change_kind {
        ACS_CHANGE_MAILBOX_ADDED = 1,
        ACS_CHANGE_MAILBOX_REMOVED = 2,
        ACS_CHANGE_MAILBOX_CHANGED = 3, /* renamed, attrs or state */
        ACS_CHANGE_MESSAGE_ADDED = 4,
        ACS_CHANGE_MESSAGE_REMOVED = 5,
        ACS_CHANGE_MESSAGE_CHANGED = 6, /* flags, keywords, uid, state: the file name changed */
};

/*
 * One journal row. For MESSAGE_CHANGED and MESSAGE_REMOVED the old_* fields hold the
 * message's values before the change (so the old file name can be rebuilt and invalidated);
 * for MESSAGE_CHANGED by a move, mailbox_id is the new mailbox and old_mailbox_id the old.
 * For MAILBOX_CHANGED by a rename and MAILBOX_REMOVED, old_name is the name before.
 * Strings are owned by the store and valid only during the callback.
 */
typedef struct acs_change {
        int64_t seq;
        int kind;              /* enum acs_change_kind */
        int64_t mailbox_id;
        int64_t message_id;    /* 0 for mailbox changes */
        int64_t old_mailbox_id;
        unsigned old_flags;
        const char *old_keywords;
        unsigned old_state;
        const char *old_uniq;
        uint64_t old_size, old_vsize;
        const char *old_name;  /* mailbox changes: the old mailbox name; NULL otherwise */
} acs_change;

/* Journal rows are written by triggers in the same transaction as the change itself. */
int acs_store_changes_since(acs_store *s, int64_t after_seq,
                            int (*cb)(const acs_change *c, void *userdata), void *userdata);
/* Highest journal seq (0 when empty). */
int acs_store_change_last(acs_store *s, int64_t *ret_seq);
/* Drops journal rows up to and including seq. */
int acs_store_changes_trim(acs_store *s, int64_t upto_seq);

/* ---- op log: local changes waiting for the server, replayed in seq order ---- */
enum acs_op_kind {
        ACS_OP_FLAGS = 1,   /* +FLAGS/-FLAGS delta on (mailbox, uid) */
        ACS_OP_EXPUNGE = 2, /* expunge (mailbox, uid) */
        ACS_OP_MOVE = 3,    /* move (mailbox, uid) to target; body kept for re-append */
        ACS_OP_APPEND = 4,  /* append body into mailbox with flags and internaldate */
        ACS_OP_CREATE = 5,  /* create mailbox name */
        ACS_OP_DELETE = 6,  /* delete mailbox name */
        ACS_OP_RENAME = 7,  /* rename mailbox name to new_name */
};

typedef struct acs_op {
        int64_t seq;
        int kind;                 /* enum acs_op_kind */
        int64_t mailbox_id;       /* source mailbox; folder ops: the mailbox's local row */
        int64_t message_id;       /* the local message row (0 when none) */
        uint32_t uid;             /* server uid at the time of the op (0 = none yet) */
        int64_t target_mailbox_id;
        unsigned flags_add, flags_del;
        char *keywords_add, *keywords_del; /* space-separated, may be NULL */
        int64_t body_id;          /* APPEND and MOVE: body to (re-)append */
        int64_t internaldate;
        char *name, *new_name;    /* mailbox names (UTF-8) at the time: folder ops; message ops (local.h) */
        unsigned attempts;
        char *last_error;
} acs_op;

void acs_op_clear(acs_op *op);

/* Appends an op (op->seq ignored, set on return). Must run in a durable transaction. */
int acs_store_op_add(acs_store *s, acs_op *op);
/* The oldest op with seq > after_seq; -ENOENT when none. */
int acs_store_op_next(acs_store *s, int64_t after_seq, acs_op *ret);
/* Removes an op once the server confirmed it. */
int acs_store_op_done(acs_store *s, int64_t seq);
/*
 * Replay learned the server uid of a message that was a pending local append or move:
 * sets uid in every op of message_id on mailbox_id whose uid is still 0 (the ops queued
 * after the append/move, e.g. a FLAGS, EXPUNGE or MOVE of it; also the APPEND op itself,
 * whose mailbox_id is the mailbox it appends to: replay removes it next). Returns the number of ops changed
 * (0 is fine: nothing was queued). -EINVAL when message_id or uid is 0.
 */
int acs_store_op_resolve_uid(acs_store *s, int64_t message_id, int64_t mailbox_id, uint32_t uid);
/* Records a failed attempt (attempts+1, last_error). */
int acs_store_op_failed(acs_store *s, int64_t seq, const char *error);
int acs_store_op_count(acs_store *s, uint64_t *ret_count);

/* ---- small key/value table for program state (e.g. server capabilities seen) ---- */
int acs_store_meta_get(acs_store *s, const char *key, char **ret_value);
int acs_store_meta_set(acs_store *s, const char *key, const char *value);
