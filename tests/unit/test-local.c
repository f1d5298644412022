/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/local.c: each local change against a real SQLite cache (rows, op log, errors, atomicity). */
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "test.h"
#include "acs/local.h"
#include "acs/store.h"
#include "acs/util.h"

static char tmpdir[256];

static void tmp_init(void)
{
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/acs-test-local-XXXXXX");
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                exit(2);
        }
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
        (void)st;
        (void)flag;
        (void)ftw;
        return remove(p);
}

static void tmp_done(void)
{
        nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static acs_store *open_new(void)
{
        char path[512];
        acs_store *s = NULL;
        char *err = NULL;

        snprintf(path, sizeof(path), "%s/c.db", tmpdir);
        if (acs_store_open(path, ACS_STORE_CREATE, &s, &err) < 0) {
                printf("# open: %s\n", err ? err : "?");
                free(err);
                exit(2);
        }
        return s;
}

static int64_t add_mailbox(acs_store *s, const char *name, unsigned attrs)
{
        acs_mailbox mb = { .name = (char *)name, .delim = '/', .attrs = attrs };

        CHECK_INT(acs_store_mailbox_put(s, &mb), 0);
        return mb.id;
}

/* A message as acs-syncd stores one fetched from the server. */
static int64_t add_server_message(acs_store *s, int64_t mbox, uint32_t uid, unsigned flags,
                                  const char *kw)
{
        int64_t body = 0;
        char text[64];
        int n = snprintf(text, sizeof(text), "Subject: %u\n\nbody %u\n", uid, uid);

        CHECK_INT(acs_store_body_put(s, text, (size_t)n, &body), 0);
        acs_message m = { .mailbox_id = mbox, .uid = uid, .flags = flags,
                          .keywords = (char *)kw, .internaldate = 1700000000 + uid,
                          .size = (uint64_t)n, .vsize = (uint64_t)n + 3, .body_id = body,
                          .state = ACS_MSG_NEW };
        CHECK_INT(acs_store_message_add(s, &m), 0);
        free(m.uniq);
        return m.id;
}

static uint64_t op_count(acs_store *s)
{
        uint64_t n = 0;

        CHECK_INT(acs_store_op_count(s, &n), 0);
        return n;
}

/* The op after seq (fails the test when none). */
static void next_op(acs_store *s, int64_t *seq, acs_op *ret)
{
        CHECK_INT(acs_store_op_next(s, *seq, ret), 0);
        *seq = ret->seq;
}

static const char *opt(const char *s)
{
        return s ? s : "(null)";
}

TEST(set_flags)
{
        acs_store *s;
        acs_message m = { 0 };
        acs_op op = { 0 };
        int64_t seq = 0, inbox, id;
        int idx;

        tmp_init();
        s = open_new();
        inbox = add_mailbox(s, "INBOX", 0);
        id = add_server_message(s, inbox, 7, ACS_FLAG_FLAGGED, "$Junk old");

        /* +S -F, keywords: +work +$Label1, -old; keywords normalized (dups, order, spaces) */
        CHECK_INT(acs_local_set_flags(s, id, ACS_FLAG_SEEN, "work  $Junk work $Label1 ", 0), 0);
        CHECK_INT(acs_store_message_get(s, id, &m), 0);
        CHECK_INT(m.flags, ACS_FLAG_SEEN);
        CHECK_STR(m.keywords, "$Junk $Label1 work");
        CHECK_INT(m.state, 0);
        CHECK_INT(m.uid, 7);
        acs_message_clear(&m);
        next_op(s, &seq, &op);
        CHECK_INT(op.kind, ACS_OP_FLAGS);
        CHECK_INT(op.mailbox_id, inbox);
        CHECK_INT(op.message_id, id);
        CHECK_INT(op.uid, 7);
        CHECK_INT(op.flags_add, ACS_FLAG_SEEN);
        CHECK_INT(op.flags_del, ACS_FLAG_FLAGGED);
        CHECK_STR(opt(op.keywords_add), "$Label1 work");
        CHECK_STR(opt(op.keywords_del), "old");
        CHECK_STR(opt(op.name), "INBOX");
        acs_op_clear(&op);
        /* new keywords got letters, so they show in file names */
        CHECK_INT(acs_store_keyword_index(s, "work", false, &idx), 0);
        CHECK_INT(acs_store_keyword_index(s, "$Label1", false, &idx), 0);

        /* same flags, keywords NULL = unchanged, only the state: no op */
        CHECK_INT(acs_local_set_flags(s, id, ACS_FLAG_SEEN, NULL, ACS_MSG_NEW), 0);
        CHECK_INT(op_count(s), 1);
        CHECK_INT(acs_store_message_get(s, id, &m), 0);
        CHECK_INT(m.state, ACS_MSG_NEW);
        CHECK_STR(m.keywords, "$Junk $Label1 work");
        acs_message_clear(&m);
        /* nothing at all changes: no op either */
        CHECK_INT(acs_local_set_flags(s, id, ACS_FLAG_SEEN, "work $Label1 $Junk", ACS_MSG_NEW), 0);
        CHECK_INT(op_count(s), 1);

        /* only keywords removed */
        CHECK_INT(acs_local_set_flags(s, id, ACS_FLAG_SEEN, "", 0), 0);
        next_op(s, &seq, &op);
        CHECK_INT(op.flags_add, 0);
        CHECK_INT(op.flags_del, 0);
        CHECK(op.keywords_add == NULL);
        CHECK_STR(opt(op.keywords_del), "$Junk $Label1 work");
        acs_op_clear(&op);

        /* errors change nothing */
        CHECK_INT(acs_local_set_flags(s, id + 100, ACS_FLAG_SEEN, NULL, 0), -ENOENT);
        CHECK_INT(acs_local_set_flags(s, id, 1u << 9, NULL, 0), -EINVAL);
        CHECK_INT(acs_local_set_flags(s, id, 0, NULL, 4), -EINVAL);
        CHECK_INT(acs_local_set_flags(s, id, 0, "\\Seen", 0), -EINVAL);
        CHECK_INT(acs_local_set_flags(s, id, 0, "a(b", 0), -EINVAL);
        CHECK_INT(op_count(s), 2);
        CHECK_INT(acs_store_message_get(s, id, &m), 0);
        CHECK_INT(m.flags, ACS_FLAG_SEEN);
        acs_message_clear(&m);

        /* the client saw other flags than the row has now (acs-syncd applied \\Answered from
         * the server meanwhile): -ENOENT, nothing changes, no op that would undo it */
        CHECK_INT(acs_local_set_flags_seen(s, id, &(acs_local_seen){ .flags = ACS_FLAG_SEEN, .keywords = "" },
                                           ACS_FLAG_SEEN | ACS_FLAG_DRAFT, NULL, 0), 0);
        next_op(s, &seq, &op);
        CHECK_INT(op.flags_add, ACS_FLAG_DRAFT);
        CHECK_INT(op.flags_del, 0);
        acs_op_clear(&op);
        CHECK_INT(acs_local_set_flags_seen(s, id, &(acs_local_seen){ .flags = ACS_FLAG_SEEN, .keywords = NULL },
                                           ACS_FLAG_SEEN | ACS_FLAG_FLAGGED, NULL, 0), -ENOENT);
        CHECK_INT(acs_local_move_seen(s, id, &(acs_local_seen){ .flags = ACS_FLAG_FLAGGED, .keywords = NULL },
                                      add_mailbox(s, "Other", 0), NULL, ACS_FLAG_SEEN, NULL, 0), -ENOENT);
        CHECK_INT(op_count(s), 3);
        CHECK_INT(acs_store_message_get(s, id, &m), 0);
        CHECK_INT(m.flags, ACS_FLAG_SEEN | ACS_FLAG_DRAFT);
        CHECK_INT(m.mailbox_id, inbox);
        acs_message_clear(&m);

        /* nested in an open transaction: refused */
        CHECK_INT(acs_store_begin(s, false), 0);
        CHECK_INT(acs_local_set_flags(s, id, 0, NULL, 0), -EINVAL);
        acs_store_rollback(s);
        acs_store_close(s);
        tmp_done();
}

TEST(expunge)
{
        acs_store *s;
        acs_message m = { 0 };
        acs_op op = { 0 };
        int64_t seq = 0, inbox, id, body;

        tmp_init();
        s = open_new();
        inbox = add_mailbox(s, "INBOX", 0);
        id = add_server_message(s, inbox, 3, 0, "");
        CHECK_INT(acs_store_message_get(s, id, &m), 0);
        body = m.body_id;
        acs_message_clear(&m);
        CHECK_INT(acs_local_expunge(s, id), 0);
        CHECK_INT(acs_store_message_get(s, id, &m), -ENOENT);
        next_op(s, &seq, &op);
        CHECK_INT(op.kind, ACS_OP_EXPUNGE);
        CHECK_INT(op.mailbox_id, inbox);
        CHECK_INT(op.message_id, id);
        CHECK_INT(op.uid, 3);
        CHECK_STR(opt(op.name), "INBOX");
        acs_op_clear(&op);
        uint64_t size;
        CHECK_INT(acs_store_body_size(s, body, &size), -ENOENT); /* nothing holds it */
        CHECK_INT(acs_local_expunge(s, id), -ENOENT);
        CHECK_INT(op_count(s), 1);
        acs_store_close(s);
        tmp_done();
}

TEST(move)
{
        acs_store *s;
        acs_message m = { 0 };
        acs_op op = { 0 };
        int64_t seq = 0, inbox, arch, nosel, id, other, body;

        tmp_init();
        s = open_new();
        inbox = add_mailbox(s, "INBOX", 0);
        arch = add_mailbox(s, "Archive", 0);
        nosel = add_mailbox(s, "Parent", ACS_MBOX_NOSELECT);
        id = add_server_message(s, inbox, 5, ACS_FLAG_SEEN, "work");
        other = add_server_message(s, arch, 9, 0, "");
        CHECK_INT(acs_store_message_get(s, id, &m), 0);
        body = m.body_id;
        acs_message_clear(&m);

        /* a taken unique part in the target: nothing happens */
        CHECK_INT(acs_store_message_get(s, other, &m), 0);
        CHECK_INT(acs_local_move(s, id, arch, m.uniq, ACS_FLAG_SEEN, NULL, 0), -EEXIST);
        acs_message_clear(&m);
        CHECK_INT(acs_local_move(s, id, inbox, NULL, 0, NULL, 0), -EINVAL);
        CHECK_INT(acs_local_move(s, id, nosel, NULL, 0, NULL, 0), -EINVAL);
        CHECK_INT(acs_local_move(s, id, 9999, NULL, 0, NULL, 0), -ENOENT);
        CHECK_INT(acs_local_move(s, 9999, arch, NULL, 0, NULL, 0), -ENOENT);
        CHECK_INT(acs_local_move(s, id, arch, "bad:uniq", 0, NULL, 0), -EINVAL);
        CHECK_INT(op_count(s), 0);

        /* plain move: same flags, the client's unique part */
        CHECK_INT(acs_local_move(s, id, arch, "1700000005.client", ACS_FLAG_SEEN, NULL, 0), 0);
        CHECK_INT(acs_store_message_get(s, id, &m), 0);
        CHECK_INT(m.mailbox_id, arch);
        CHECK_INT(m.uid, 0);
        CHECK_STR(m.uniq, "1700000005.client");
        CHECK_INT(m.flags, ACS_FLAG_SEEN);
        CHECK_INT(m.state, 0);
        CHECK_INT(m.body_id, body);
        acs_message_clear(&m);
        next_op(s, &seq, &op);
        CHECK_INT(op.kind, ACS_OP_MOVE);
        CHECK_INT(op.mailbox_id, inbox);
        CHECK_INT(op.uid, 5);
        CHECK_INT(op.message_id, id);
        CHECK_INT(op.target_mailbox_id, arch);
        CHECK_INT(op.body_id, body);
        CHECK_INT(op.internaldate, 1700000005);
        CHECK_INT(op.flags_add, ACS_FLAG_SEEN);
        CHECK_STR(opt(op.keywords_add), "work");
        CHECK_STR(opt(op.name), "INBOX");
        CHECK_STR(opt(op.new_name), "Archive");
        acs_op_clear(&op);
        CHECK_INT(op_count(s), 1);

        /* move back with a flag change: MOVE (uid 0: not known yet) + FLAGS on the target */
        CHECK_INT(acs_local_move(s, id, inbox, NULL, ACS_FLAG_SEEN | ACS_FLAG_FLAGGED, "", ACS_MSG_NEW), 0);
        next_op(s, &seq, &op);
        CHECK_INT(op.kind, ACS_OP_MOVE);
        CHECK_INT(op.mailbox_id, arch);
        CHECK_INT(op.uid, 0);
        CHECK_INT(op.target_mailbox_id, inbox);
        acs_op_clear(&op);
        next_op(s, &seq, &op);
        CHECK_INT(op.kind, ACS_OP_FLAGS);
        CHECK_INT(op.mailbox_id, inbox);
        CHECK_INT(op.uid, 0);
        CHECK_INT(op.flags_add, ACS_FLAG_FLAGGED);
        CHECK_INT(op.flags_del, 0);
        CHECK_STR(opt(op.keywords_del), "work");
        acs_op_clear(&op);
        CHECK_INT(acs_store_message_get(s, id, &m), 0);
        CHECK_STR(m.uniq, "1700000005.client"); /* NULL keeps the unique part */
        CHECK_INT(m.state, ACS_MSG_NEW);
        CHECK_STR(m.keywords, "");
        acs_message_clear(&m);

        /* replay learns the uid of the first move, then of the second */
        CHECK_INT(acs_store_op_resolve_uid(s, id, arch, 77), 1);
        CHECK_INT(acs_store_op_resolve_uid(s, id, inbox, 78), 1);
        seq = 0;
        uint32_t uids[] = { 5, 77, 78 };
        for (size_t i = 0; i < ACS_ARRAY_SIZE(uids); i++) {
                next_op(s, &seq, &op);
                CHECK_INT(op.uid, uids[i]);
                acs_op_clear(&op);
        }
        acs_store_close(s);
        tmp_done();
}

TEST(append)
{
        acs_store *s;
        acs_message m = { 0 };
        acs_op op = { 0 };
        int64_t seq = 0, inbox, nosel, id = 0, id2 = 0;
        const char text[] = "From: a@b\nSubject: hi\n\nline 1\nline 2\n";
        char buf[128];
        size_t n;

        tmp_init();
        s = open_new();
        inbox = add_mailbox(s, "INBOX", 0);
        nosel = add_mailbox(s, "Parent", ACS_MBOX_NOSELECT);
        CHECK_INT(acs_local_append(s, inbox, "1700000100.M1P2.host", ACS_FLAG_DRAFT | ACS_FLAG_SEEN,
                                   "work", 1700000100, 0, text, strlen(text), &id), 0);
        CHECK(id > 0);
        CHECK_INT(acs_store_message_get(s, id, &m), 0);
        CHECK_INT(m.mailbox_id, inbox);
        CHECK_INT(m.uid, 0);
        CHECK_STR(m.uniq, "1700000100.M1P2.host");
        CHECK_INT(m.flags, ACS_FLAG_DRAFT | ACS_FLAG_SEEN);
        CHECK_STR(m.keywords, "work");
        CHECK_INT(m.internaldate, 1700000100);
        CHECK_INT(m.size, strlen(text));
        CHECK_INT(m.vsize, strlen(text) + 5); /* five LF -> CRLF */
        CHECK_INT(acs_store_body_read(s, m.body_id, 0, buf, sizeof(buf), &n), 0);
        CHECK_INT(n, strlen(text));
        CHECK(memcmp(buf, text, n) == 0);
        next_op(s, &seq, &op);
        CHECK_INT(op.kind, ACS_OP_APPEND);
        CHECK_INT(op.mailbox_id, inbox);
        CHECK_INT(op.message_id, id);
        CHECK_INT(op.uid, 0);
        CHECK_INT(op.body_id, m.body_id);
        CHECK_INT(op.flags_add, ACS_FLAG_DRAFT | ACS_FLAG_SEEN);
        CHECK_STR(opt(op.keywords_add), "work");
        CHECK_INT(op.internaldate, 1700000100);
        CHECK_STR(opt(op.name), "INBOX");
        acs_op_clear(&op);
        acs_message_clear(&m);

        /* generated unique part, empty body, in new/ */
        CHECK_INT(acs_local_append(s, inbox, NULL, 0, NULL, 1700000200, ACS_MSG_NEW, "", 0, &id2), 0);
        CHECK_INT(acs_store_message_get(s, id2, &m), 0);
        CHECK(strncmp(m.uniq, "1700000200.M", 12) == 0);
        CHECK_INT(m.state, ACS_MSG_NEW);
        CHECK_INT(m.size, 0);
        acs_message_clear(&m);
        CHECK_INT(op_count(s), 2);

        /* an expunge of a pending append keeps the append's body for replay */
        CHECK_INT(acs_local_expunge(s, id), 0);
        next_op(s, &seq, &op); /* the second append */
        acs_op_clear(&op);
        next_op(s, &seq, &op);
        CHECK_INT(op.kind, ACS_OP_EXPUNGE);
        CHECK_INT(op.uid, 0);
        acs_op_clear(&op);
        CHECK_INT(acs_store_op_next(s, 0, &op), 0);
        uint64_t size;
        CHECK_INT(acs_store_body_size(s, op.body_id, &size), 0);
        acs_op_clear(&op);
        CHECK_INT(acs_store_op_resolve_uid(s, id, inbox, 500), 2); /* APPEND + EXPUNGE */

        /* errors leave nothing behind */
        CHECK_INT(acs_local_append(s, inbox, "1700000100.M1P2.host", 0, NULL, 1, 0, "x", 1, NULL), 0);
        CHECK_INT(acs_local_append(s, inbox, "1700000100.M1P2.host", 0, NULL, 1, 0, "y", 1, NULL), -EEXIST);
        CHECK_INT(acs_local_append(s, 9999, NULL, 0, NULL, 1, 0, "x", 1, NULL), -ENOENT);
        CHECK_INT(acs_local_append(s, nosel, NULL, 0, NULL, 1, 0, "x", 1, NULL), -EINVAL);
        CHECK_INT(acs_local_append(s, inbox, NULL, 1u << 8, NULL, 1, 0, "x", 1, NULL), -EINVAL);
        CHECK_INT(acs_local_append(s, inbox, "a/b", 0, NULL, 1, 0, "x", 1, NULL), -EINVAL);
        CHECK_INT(acs_local_append(s, inbox, NULL, 0, "bad\\kw", 1, 0, "x", 1, NULL), -EINVAL);
        CHECK_INT(acs_local_append(s, inbox, NULL, 0, NULL, 1, 0, NULL, 3, NULL), -EINVAL);
        CHECK_INT(op_count(s), 4);
        acs_store_close(s);
        tmp_done();
}

static int count_mailboxes(const acs_mailbox *mb, void *userdata)
{
        (void)mb;
        (*(int *)userdata)++;
        return 0;
}

TEST(mailboxes)
{
        acs_store *s;
        acs_mailbox mb = { 0 };
        acs_op op = { 0 };
        int64_t seq = 0, inbox, a, ab;
        char delim = 0;
        int n = 0;

        tmp_init();
        s = open_new();
        CHECK_INT(acs_local_delimiter(s, &delim), 0);
        CHECK_INT(delim, '/'); /* no mailbox yet */
        inbox = add_mailbox(s, "INBOX", 0);

        CHECK_INT(acs_local_mailbox_create(s, "Ärchiv"), 0);
        CHECK_INT(acs_store_mailbox_get(s, "Ärchiv", &mb), 0);
        a = mb.id;
        CHECK_INT(mb.delim, '/');
        CHECK_INT(mb.uidvalidity, 0);
        acs_mailbox_clear(&mb);
        next_op(s, &seq, &op);
        CHECK_INT(op.kind, ACS_OP_CREATE);
        CHECK_INT(op.mailbox_id, a);
        CHECK_STR(opt(op.name), "Ärchiv");
        acs_op_clear(&op);
        CHECK_INT(acs_local_mailbox_create(s, "Ärchiv/2024"), 0);
        CHECK_INT(acs_store_mailbox_get(s, "Ärchiv/2024", &mb), 0);
        ab = mb.id;
        acs_mailbox_clear(&mb);
        next_op(s, &seq, &op);
        acs_op_clear(&op);

        CHECK_INT(acs_local_mailbox_create(s, "Ärchiv"), -EEXIST);
        CHECK_INT(acs_local_mailbox_create(s, "inbox"), -EEXIST);
        CHECK_INT(acs_local_mailbox_create(s, ""), -EINVAL);
        CHECK_INT(acs_local_mailbox_create(s, "/x"), -EINVAL);
        CHECK_INT(acs_local_mailbox_create(s, "x/"), -EINVAL);
        CHECK_INT(acs_local_mailbox_create(s, "x//y"), -EINVAL);
        CHECK_INT(acs_local_mailbox_create(s, "tab\there"), -EINVAL);
        CHECK_INT(acs_local_mailbox_create(s, "bad\xff"), -EINVAL);
        CHECK_INT(op_count(s), 2);

        /* delete: not with children, not INBOX, not with messages */
        CHECK_INT(acs_local_mailbox_delete(s, a), -ENOTEMPTY);
        CHECK_INT(acs_local_mailbox_delete(s, inbox), -EPERM);
        add_server_message(s, ab, 1, 0, "");
        CHECK_INT(acs_local_mailbox_delete(s, ab), -ENOTEMPTY);
        CHECK_INT(acs_local_mailbox_delete(s, 9999), -ENOENT);
        CHECK_INT(op_count(s), 2);

        /* rename with children */
        CHECK_INT(acs_local_mailbox_create(s, "Other"), 0);
        next_op(s, &seq, &op);
        acs_op_clear(&op);
        CHECK_INT(acs_local_mailbox_rename(s, a, "Other"), -EEXIST);
        CHECK_INT(acs_local_mailbox_rename(s, a, "Ärchiv/2024/x"), -EINVAL);
        CHECK_INT(acs_local_mailbox_rename(s, a, "Ärchiv/sub"), -EINVAL);
        CHECK_INT(acs_local_mailbox_rename(s, a, "INBOX"), -EEXIST);
        CHECK_INT(acs_local_mailbox_rename(s, inbox, "Inbox2"), -EPERM);
        CHECK_INT(acs_local_mailbox_rename(s, a, "bad//name"), -EINVAL);
        CHECK_INT(acs_local_mailbox_rename(s, 9999, "x"), -ENOENT);
        CHECK_INT(acs_local_mailbox_create(s, "Old/2024"), 0); /* a child's new name taken */
        next_op(s, &seq, &op);
        acs_op_clear(&op);
        CHECK_INT(acs_local_mailbox_rename(s, a, "Old"), -EEXIST);
        CHECK_INT(acs_store_mailbox_get(s, "Ärchiv/2024", &mb), 0); /* nothing half done */
        acs_mailbox_clear(&mb);
        CHECK_INT(op_count(s), 4);
        CHECK_INT(acs_local_mailbox_rename(s, a, "Ärchiv"), 0); /* same name: no op */
        CHECK_INT(op_count(s), 4);

        CHECK_INT(acs_local_mailbox_rename(s, a, "Archive"), 0);
        CHECK_INT(acs_store_mailbox_get_by_id(s, a, &mb), 0);
        CHECK_STR(mb.name, "Archive");
        acs_mailbox_clear(&mb);
        CHECK_INT(acs_store_mailbox_get_by_id(s, ab, &mb), 0);
        CHECK_STR(mb.name, "Archive/2024");
        acs_mailbox_clear(&mb);
        next_op(s, &seq, &op);
        CHECK_INT(op.kind, ACS_OP_RENAME);
        CHECK_INT(op.mailbox_id, a);
        CHECK_STR(opt(op.name), "Ärchiv");
        CHECK_STR(opt(op.new_name), "Archive");
        acs_op_clear(&op);
        CHECK_INT(acs_store_op_next(s, seq, &op), -ENOENT); /* one op for the subtree */

        /* delete an empty leaf */
        CHECK_INT(acs_local_mailbox_delete(s, a), -ENOTEMPTY);
        int64_t other;
        CHECK_INT(acs_store_mailbox_get(s, "Other", &mb), 0);
        other = mb.id;
        acs_mailbox_clear(&mb);
        CHECK_INT(acs_local_mailbox_delete(s, other), 0);
        CHECK_INT(acs_store_mailbox_get(s, "Other", &mb), -ENOENT);
        next_op(s, &seq, &op);
        CHECK_INT(op.kind, ACS_OP_DELETE);
        CHECK_INT(op.mailbox_id, other);
        CHECK_STR(opt(op.name), "Other");
        acs_op_clear(&op);
        CHECK_INT(acs_store_mailbox_foreach(s, count_mailboxes, &n), 0);
        CHECK_INT(n, 4); /* INBOX, Archive, Archive/2024, Old/2024 */

        /* the delimiter comes from INBOX */
        CHECK_INT(acs_local_delimiter(s, &delim), 0);
        CHECK_INT(delim, '/');
        acs_store_close(s);
        tmp_done();
}

TEST(delimiter_from_mailboxes)
{
        acs_store *s;
        char delim = 0;

        tmp_init();
        s = open_new();
        acs_mailbox in = { .name = (char *)"INBOX", .delim = 0 };
        acs_mailbox a = { .name = (char *)"A.B", .delim = '.' };
        CHECK_INT(acs_store_mailbox_put(s, &in), 0);
        CHECK_INT(acs_store_mailbox_put(s, &a), 0);
        CHECK_INT(acs_local_delimiter(s, &delim), 0);
        CHECK_INT(delim, '.');
        CHECK_INT(acs_local_mailbox_create(s, "A.C"), 0);
        CHECK_INT(acs_local_mailbox_create(s, "A..C"), -EINVAL);
        acs_store_close(s);
        tmp_done();
}

/* Another connection holds the write lock for a while; a local change waits for it. */
typedef struct holder {
        char path[512];
        int ms;
        int started;
        pthread_mutex_t lock;
        pthread_cond_t cond;
} holder;

static void *hold_lock(void *arg)
{
        holder *h = arg;
        acs_store *s2 = NULL;

        CHECK_INT(acs_store_open(h->path, 0, &s2, NULL), 0);
        CHECK_INT(acs_store_begin(s2, false), 0);
        pthread_mutex_lock(&h->lock);
        h->started = 1;
        pthread_cond_signal(&h->cond);
        pthread_mutex_unlock(&h->lock);
        nanosleep(&(struct timespec){ .tv_sec = h->ms / 1000, .tv_nsec = (h->ms % 1000) * 1000000L }, NULL);
        CHECK_INT(acs_store_commit(s2), 0);
        acs_store_close(s2);
        return NULL;
}

TEST(busy_writer_waits)
{
        acs_store *s;
        holder h = { .ms = 300, .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
        pthread_t t;
        int64_t inbox, id;

        tmp_init();
        s = open_new();
        inbox = add_mailbox(s, "INBOX", 0);
        id = add_server_message(s, inbox, 1, 0, "");
        snprintf(h.path, sizeof(h.path), "%s/c.db", tmpdir);
        CHECK_INT(pthread_create(&t, NULL, hold_lock, &h), 0);
        pthread_mutex_lock(&h.lock);
        while (!h.started)
                pthread_cond_wait(&h.cond, &h.lock);
        pthread_mutex_unlock(&h.lock);
        CHECK_INT(acs_local_set_flags(s, id, ACS_FLAG_SEEN, NULL, 0), 0);
        pthread_join(t, NULL);
        CHECK_INT(op_count(s), 1);
        acs_store_close(s);
        tmp_done();
}

TEST_MAIN()
