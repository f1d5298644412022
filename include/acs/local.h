/* SPDX-License-Identifier: MIT */
/* Local changes to the cache (what a write in the tree means): the rows change and the op for the server is queued, in one durable transaction. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "acs/store.h"

/*
 * Conventions (all functions here):
 * - each call is ONE durable transaction (acs_store_begin(s, true)): the cache rows change
 *   (so the tree shows the change, through the change journal) and the op acs-syncd
 *   replays is appended to the op log; either both happen or neither. The handle must have
 *   no transaction open (-EINVAL otherwise). A database kept locked by another writer is
 *   retried within the call (the store's busy timeout, then a few more rounds); -EBUSY
 *   only after that.
 * - return 0 or -errno: -ENOENT unknown message or mailbox, -EEXIST a name (unique part
 *   or mailbox) already taken, -EINVAL bad arguments (flags outside ACS_FLAG_ALL, invalid
 *   keyword, invalid unique part or mailbox name), -ENOTEMPTY folder not empty, -EPERM
 *   what IMAP cannot do (delete or rename INBOX), -ENOSPC/-EIO/... from the store.
 * - strings are borrowed. Keywords are space-separated IMAP keywords (atoms, not starting
 *   with '\'); they are stored deduplicated in byte order, and each gets a Maildir letter
 *   when one of the 26 is free (acs_store_keyword_index(create=true)).
 * - the library does not log; acs_store_errmsg(s) has the reason for store errors.
 *
 * The ops (struct acs_op, acs/store.h), as acs-syncd finds them:
 * - every message op has message_id (the local row), mailbox_id (the row's mailbox at the
 *   time), uid (the server uid known then, 0 while the message is itself a pending local
 *   append or move: acs_store_op_resolve_uid() fills it in later), and name = the mailbox's
 *   name at the time (new_name = the target's name for MOVE), so an op can still be
 *   replayed after its mailbox row was renamed or removed.
 * - folder ops have mailbox_id = the local mailbox row, name (and new_name for RENAME).
 */

/*
 * Sets a message's flags (enum acs_flag), keywords (NULL = unchanged) and state (enum
 * acs_msg_state, i.e. new/ vs cur/). Queues a FLAGS op with the delta (flags_add/del,
 * keywords_add/del) only when flags or keywords changed: a pure new/ -> cur/ move is a
 * local state change and queues nothing.
 */
int acs_local_set_flags(acs_store *s, int64_t message_id, unsigned flags, const char *keywords,
                        unsigned state);

/* Removes the message from the cache and queues an EXPUNGE op. */
int acs_local_expunge(acs_store *s, int64_t message_id);

/*
 * Moves a message to another mailbox under the unique part the client chose (NULL = keep
 * the current one) with flags, keywords (NULL = unchanged) and state. The row keeps its id
 * (and inode) and gets uid 0. Queues a MOVE op (mailbox_id = source, uid = source uid,
 * target_mailbox_id, body_id = the cached body for a re-append, internaldate,
 * flags_add/keywords_add = the flags the message had before the move) and, when flags or
 * keywords change too, a FLAGS op on the target with uid 0 (resolved once the move's uid is
 * known). -EINVAL when target is the message's own mailbox or a \Noselect mailbox.
 */
int acs_local_move(acs_store *s, int64_t message_id, int64_t target_mailbox_id, const char *uniq,
                   unsigned flags, const char *keywords, unsigned state);

/*
 * The flags and keywords a caller saw when it picked the message (acs-fs: those its file
 * name showed). The _seen variants answer -ENOENT when the row no longer has them: acs-syncd
 * applied a server change between the caller's lookup and this transaction, and a delta
 * computed from the new row would undo that change (a client renaming "X:2,D" to "X:2,DS"
 * after the server set \Answered sent -FLAGS \Answered). The client's name is stale, as
 * if the file had been renamed under it: it looks again, as Maildir clients do.
 */
typedef struct acs_local_seen {
        unsigned flags;
        const char *keywords;
} acs_local_seen;
int acs_local_set_flags_seen(acs_store *s, int64_t message_id, const acs_local_seen *seen, unsigned flags,
                             const char *keywords, unsigned state);
int acs_local_move_seen(acs_store *s, int64_t message_id, const acs_local_seen *seen, int64_t target_mailbox_id,
                        const char *uniq, unsigned flags, const char *keywords, unsigned state);

/*
 * Adds a message (uid 0) with its body data (len bytes, stored as given: LF line ends as
 * written in the tree; acs-syncd converts to CRLF) and queues an APPEND op (mailbox_id,
 * message_id, body_id, flags_add = flags, keywords_add = keywords, internaldate).
 * uniq NULL = generated. *ret_message_id (may be NULL) gets the new row id.
 */
int acs_local_append(acs_store *s, int64_t mailbox_id, const char *uniq, unsigned flags,
                     const char *keywords, int64_t internaldate, unsigned state, const void *data,
                     size_t len, int64_t *ret_message_id);

/*
 * The hierarchy delimiter for names of new mailboxes: INBOX's, else the first non-zero
 * delimiter of any mailbox, else '/'.
 */
int acs_local_delimiter(acs_store *s, char *ret_delim);

/*
 * Creates a mailbox (full UTF-8 name, levels separated by acs_local_delimiter()) and
 * queues a CREATE op. -EEXIST when it exists (INBOX in any case), -EINVAL for an empty
 * name or level, a name that is not valid UTF-8 or has control characters.
 */
int acs_local_mailbox_create(acs_store *s, const char *name);

/*
 * Deletes an empty mailbox and queues a DELETE op. -ENOTEMPTY when it has messages or
 * child mailboxes; -EPERM for INBOX.
 */
int acs_local_mailbox_delete(acs_store *s, int64_t mailbox_id);

/*
 * Renames a mailbox and its children (names under "<name><delim>") and queues one RENAME
 * op (IMAP renames the children too). -EEXIST when the new name or a child's new name is
 * taken, -EINVAL when new_name is invalid or inside the mailbox itself, -EPERM for INBOX.
 */
int acs_local_mailbox_rename(acs_store *s, int64_t mailbox_id, const char *new_name);
