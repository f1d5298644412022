/* SPDX-License-Identifier: MIT */
/* Unit tests (TAP) for the read direction's merge rules: pending flag deltas re-applied over the server's flags, pending removals, folders kept or hidden for pending ops. */

#include "../tests/unit/test.h"

/* The merge helpers are static: test them from the inside, over a real store and lib/local.c. */
#include "sync.c"

#include <stdlib.h>
#include <unistd.h>

#include "acs/local.h"

volatile sig_atomic_t syncd_stop;

/* A fresh cache in a temporary directory with INBOX, Other and one message in INBOX (uid 7). */
typedef struct fixture {
        char dir[64];
        char path[96];
        acs_store *st;
        int64_t inbox, other, msg;
} fixture;

static void fx_open(fixture *f)
{
        memset(f, 0, sizeof(*f));
        snprintf(f->dir, sizeof(f->dir), "/tmp/acs-test-merge.XXXXXX");
        if (!mkdtemp(f->dir))
                abort();
        snprintf(f->path, sizeof(f->path), "%s/cache.db", f->dir);
        if (acs_store_open(f->path, ACS_STORE_CREATE, &f->st, NULL) < 0)
                abort();
        acs_mailbox in = {.name = (char *)"INBOX", .delim = '.'}, ot = {.name = (char *)"Other", .delim = '.'};
        CHECK_INT(acs_store_begin(f->st, false), 0);
        CHECK_INT(acs_store_mailbox_put(f->st, &in), 0);
        CHECK_INT(acs_store_mailbox_put(f->st, &ot), 0);
        CHECK_INT(acs_store_mailbox_set_state(f->st, in.id, 100, 8, 50), 0);
        int64_t body;
        CHECK_INT(acs_store_body_put(f->st, "Subject: x\n\nbody\n", 17, &body), 0);
        acs_message m = {.mailbox_id = in.id, .uid = 7, .flags = ACS_FLAG_SEEN, .keywords = (char *)"$label1",
                         .internaldate = 1700000000, .size = 17, .vsize = 20, .body_id = body};
        CHECK_INT(acs_store_message_add(f->st, &m), 0);
        free(m.uniq);
        CHECK_INT(acs_store_commit(f->st), 0);
        f->inbox = in.id;
        f->other = ot.id;
        f->msg = m.id;
}

static void fx_close(fixture *f)
{
        f->st = acs_store_close(f->st);
        char cmd[160];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
        CHECK_INT(system(cmd), 0);
}

/* The merge table: the server's flags arrive while local FLAGS ops (as lib/local.c makes
 * them from the tree's successive states) are still in the log. */
static const struct {
        const char *name;
        /* successive local states of the message (flags, keywords); 0..3 of them */
        unsigned nlocal;
        unsigned local_flags[3];
        const char *local_kw[3];
        unsigned server_flags;   /* what a sync brings */
        const char *server_kw;
        unsigned want_flags;
        const char *want_kw;
} merge_cases[] = {
        {"no pending op: the server's flags", 0, {0}, {NULL}, ACS_FLAG_FLAGGED, "a", ACS_FLAG_FLAGGED, "a"},
        {"local +F survives a server -S", 1, {ACS_FLAG_SEEN | ACS_FLAG_FLAGGED}, {"$label1"}, 0, "$label1",
         ACS_FLAG_FLAGGED, "$label1"},
        {"local -S survives a server +R", 1, {0}, {"$label1"}, ACS_FLAG_SEEN | ACS_FLAG_REPLIED, "$label1",
         ACS_FLAG_REPLIED, "$label1"},
        {"flags the user did not touch follow the server", 1, {ACS_FLAG_SEEN | ACS_FLAG_DRAFT}, {"$label1"},
         ACS_FLAG_SEEN | ACS_FLAG_PASSED, "srv", ACS_FLAG_SEEN | ACS_FLAG_PASSED | ACS_FLAG_DRAFT, "srv"},
        {"keyword added locally, another added on the server", 1, {ACS_FLAG_SEEN}, {"$label1 zeta"},
         ACS_FLAG_SEEN, "$label1 alpha", ACS_FLAG_SEEN, "$label1 alpha zeta"},
        {"keyword removed locally stays removed", 1, {ACS_FLAG_SEEN}, {""}, ACS_FLAG_SEEN, "$label1 other",
         ACS_FLAG_SEEN, "other"},
        {"two ops: +F then -F: F ends removed although the server has it", 2,
         {ACS_FLAG_SEEN | ACS_FLAG_FLAGGED, ACS_FLAG_SEEN}, {"$label1", "$label1"},
         ACS_FLAG_SEEN | ACS_FLAG_FLAGGED, "$label1", ACS_FLAG_SEEN, "$label1"},
        {"two ops in order: -S then +S,+T", 2, {0, ACS_FLAG_SEEN | ACS_FLAG_TRASHED}, {"$label1", "$label1"},
         0, "", ACS_FLAG_SEEN | ACS_FLAG_TRASHED, ""},
        {"three ops on keywords", 3, {ACS_FLAG_SEEN, ACS_FLAG_SEEN, ACS_FLAG_SEEN},
         {"$label1 b", "$label1 b c", "b c"}, ACS_FLAG_SEEN, "$label1 a", ACS_FLAG_SEEN, "a b c"},
};

TEST(merge_table)
{
        for (size_t i = 0; i < ACS_ARRAY_SIZE(merge_cases); i++) {
                fixture f;
                fx_open(&f);
                for (unsigned k = 0; k < merge_cases[i].nlocal; k++)
                        CHECK_INT(acs_local_set_flags(f.st, f.msg, merge_cases[i].local_flags[k],
                                                      merge_cases[i].local_kw[k], 0), 0);
                unsigned flags = 0;
                char *kw = NULL;
                CHECK_INT(syncd_merged_flags(f.st, f.msg, merge_cases[i].server_flags, merge_cases[i].server_kw,
                                             &flags, &kw), 0);
                if (flags != merge_cases[i].want_flags || !kw || strcmp(kw, merge_cases[i].want_kw) != 0) {
                        printf("#   case \"%s\": got flags 0x%x kw \"%s\", want 0x%x \"%s\"\n", merge_cases[i].name,
                               flags, kw ? kw : "(null)", merge_cases[i].want_flags, merge_cases[i].want_kw);
                        test_failed_checks++;
                }
                free(kw);
                fx_close(&f);
        }
}

TEST(other_message_unaffected)
{
        fixture f;
        fx_open(&f);
        CHECK_INT(acs_local_set_flags(f.st, f.msg, ACS_FLAG_FLAGGED, NULL, 0), 0);
        unsigned flags = 0;
        char *kw = NULL;
        CHECK_INT(syncd_merged_flags(f.st, f.msg + 1000, ACS_FLAG_SEEN, "x", &flags, &kw), 0);
        CHECK_INT(flags, ACS_FLAG_SEEN);
        CHECK_STR(kw, "x");
        free(kw);
        fx_close(&f);
}

TEST(pending_removals_and_folders)
{
        fixture f;
        fx_open(&f);
        pending p = {0};
        CHECK_INT(pending_load(f.st, &p), 0);
        CHECK(!pending_removes(&p, f.inbox, 7));
        pending_free(&p);

        /* a pending move of uid 7 out of INBOX: the server's uid 7 must not be fetched again */
        CHECK_INT(acs_local_move(f.st, f.msg, f.other, NULL, ACS_FLAG_SEEN, NULL, 0), 0);
        CHECK_INT(pending_load(f.st, &p), 0);
        CHECK(pending_removes(&p, f.inbox, 7));
        CHECK(!pending_removes(&p, f.inbox, 8));
        CHECK(!pending_removes(&p, f.other, 7));
        storedbox other = {.id = f.other, .name = (char *)"Other", .delim = '.'};
        bool local_only = true;
        CHECK(pending_keeps(&p, &other, &local_only)); /* the move goes into it */
        CHECK(!local_only);
        pending_free(&p);

        /* a pending create keeps the new folder (local only); delete / rename hide the old names */
        CHECK_INT(acs_local_mailbox_create(f.st, "New"), 0);
        acs_mailbox nb = {0};
        CHECK_INT(acs_store_mailbox_get(f.st, "New", &nb), 0);
        CHECK_INT(acs_local_mailbox_rename(f.st, nb.id, "Newer"), 0);
        CHECK_INT(pending_load(f.st, &p), 0);
        storedbox newer = {.id = nb.id, .name = (char *)"Newer", .delim = '.'};
        storedbox child = {.id = 999, .name = (char *)"Newer.Sub", .delim = '.'};
        CHECK(pending_keeps(&p, &newer, &local_only) && local_only);
        CHECK(pending_keeps(&p, &child, &local_only) && local_only);
        CHECK(pending_hides(&p, "New", '.'));
        CHECK(pending_hides(&p, "New.Sub", '.'));
        CHECK(!pending_hides(&p, "Newest", '.'));
        CHECK(!pending_hides(&p, "Other", '.'));
        acs_mailbox_clear(&nb);
        pending_free(&p);
        fx_close(&f);
}

TEST(kw_apply)
{
        char *s = kw_apply("b d", "a c d", "b");
        CHECK_STR(s, "a c d");
        free(s);
        s = kw_apply("", NULL, NULL);
        CHECK_STR(s, "");
        free(s);
        s = kw_apply("$x $y", "", "$x $y");
        CHECK_STR(s, "");
        free(s);
        s = kw_apply("ab", "a abc", NULL);
        CHECK_STR(s, "a ab abc");
        free(s);
}

TEST_MAIN()
