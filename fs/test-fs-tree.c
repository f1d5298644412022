/* SPDX-License-Identifier: MIT */
/* Unit tests of acs-fs's folder tree, inode numbers and message names over a real cache file. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acs/store.h"
#include "fs.h"
#include "test.h"

static char dir_template[] = "/tmp/acs-fs-test-XXXXXX";
static char *db_path;

/* A fresh cache with the given mailboxes (name, attrs) and '.' as delimiter. */
static acs_store *make_store(const char *const *names, const unsigned *attrs, size_t n, int64_t *ids)
{
        acs_store *s = NULL;
        char *err = NULL;

        if (db_path) {
                unlink(db_path);
                free(db_path);
        }
        if (asprintf(&db_path, "%s/c%d.db", dir_template, rand()) < 0)
                abort();
        if (acs_store_open(db_path, ACS_STORE_CREATE, &s, &err) < 0) {
                printf("# open: %s\n", err ? err : "?");
                abort();
        }
        CHECK_INT(acs_store_begin(s, false), 0);
        for (size_t i = 0; i < n; i++) {
                acs_mailbox mb = { .name = (char *)names[i], .delim = '.', .attrs = attrs ? attrs[i] : 0 };
                CHECK_INT(acs_store_mailbox_put(s, &mb), 0);
                if (ids)
                        ids[i] = mb.id;
        }
        CHECK_INT(acs_store_commit(s), 0);
        return s;
}

TEST(inode_scheme_is_stable_and_tagged)
{
        CHECK_INT(fs_ino_mailbox(5, FS_SUB_FOLDER), (UINT64_C(1) << 60) | (5 << 2));
        CHECK_INT(fs_ino_mailbox(5, FS_SUB_TMP), (UINT64_C(1) << 60) | (5 << 2) | 3);
        CHECK_INT(fs_ino_message(42), (UINT64_C(3) << 60) | 42);
        CHECK_INT(FS_INO_TAG(fs_ino_dir("Archive")), FS_TAG_DIR);
        CHECK(fs_ino_dir("Archive") == fs_ino_dir("Archive"));
        CHECK(fs_ino_dir("Archive") != fs_ino_dir("Archivf"));
        /* FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; the low 60 bits are kept */
        CHECK_INT(fs_ino_dir("a"), (UINT64_C(2) << 60) | (UINT64_C(0xaf63dc4c8601ec8c) & ((UINT64_C(1) << 60) - 1)));
}

TEST(fs_layout_tree)
{
        static const char *const names[] = { "INBOX", "Archive.2024", "Archive.2023", "A & B", "Lists" };
        static const unsigned attrs[] = { 0, 0, 0, 0, ACS_MBOX_NOSELECT };
        int64_t ids[5];
        acs_store *s = make_store(names, attrs, 5, ids);
        fs_tree *t = NULL;

        CHECK_INT(fs_tree_build(s, ACS_LAYOUT_FS, &t), 0);
        const fs_node *root = fs_tree_find(t, FS_INO_ROOT);
        CHECK(root == &t->nodes[0]);
        /* root: "A & B", "Archive" (path-only), "INBOX", "Lists" in byte order */
        const fs_node *c = root->first_child;
        CHECK_STR(c->name, "A & B");
        c = c->next_sibling;
        CHECK_STR(c->name, "Archive");
        CHECK_INT(c->ino, fs_ino_dir("Archive"));
        CHECK_INT(c->mailbox_id, 0);
        CHECK(!c->selectable);
        CHECK_INT(c->nsubdirs, 2);
        CHECK_STR(c->first_child->name, "2023");
        CHECK_STR(c->first_child->path, "Archive/2023");
        CHECK_INT(c->first_child->parent_ino, fs_ino_dir("Archive"));
        CHECK_INT(c->first_child->nsubdirs, 3);
        c = c->next_sibling;
        CHECK_STR(c->name, "INBOX");
        CHECK_INT(c->ino, fs_ino_mailbox(ids[0], FS_SUB_FOLDER));
        CHECK(c->selectable);
        c = c->next_sibling;
        CHECK_STR(c->name, "Lists");
        CHECK(!c->selectable); /* \Noselect: a directory without cur/new/tmp */
        CHECK_INT(c->nsubdirs, 0);
        CHECK(c->next_sibling == NULL);
        CHECK_INT(root->nsubdirs, 4);
        CHECK(fs_tree_find_mailbox(t, ids[1]) == fs_tree_find(t, fs_ino_mailbox(ids[1], FS_SUB_FOLDER)));
        CHECK(fs_tree_child(root, "INBOX") == fs_tree_find_mailbox(t, ids[0]));
        CHECK(fs_tree_child(root, "nope") == NULL);
        CHECK(fs_tree_find(t, fs_ino_mailbox(999, FS_SUB_FOLDER)) == NULL);
        t = fs_tree_free(t);
        acs_store_close(s);
}

TEST(parent_created_after_child_keeps_children)
{
        /* "Archive" is a mailbox too: its node is the mailbox (not path-only) and holds the child */
        static const char *const names[] = { "Archive.2024", "Archive" };
        int64_t ids[2];
        acs_store *s = make_store(names, NULL, 2, ids);
        fs_tree *t = NULL;

        CHECK_INT(fs_tree_build(s, ACS_LAYOUT_FS, &t), 0);
        const fs_node *a = fs_tree_find_mailbox(t, ids[1]);
        CHECK(a != NULL);
        CHECK_INT(a->nsubdirs, 4); /* cur new tmp 2024 */
        CHECK(fs_tree_find(t, fs_ino_dir("Archive")) == NULL);
        const fs_node *sub = fs_tree_child(a, "2024");
        CHECK(sub != NULL);
        CHECK_INT(sub->parent_ino, a->ino);
        t = fs_tree_free(t);
        acs_store_close(s);
}

TEST(maildirpp_layout_tree)
{
        static const char *const names[] = { "INBOX", "Archive.2024", "Sent" };
        int64_t ids[3];
        acs_store *s = make_store(names, NULL, 3, ids);
        fs_tree *t = NULL;

        CHECK_INT(fs_tree_build(s, ACS_LAYOUT_MAILDIRPP, &t), 0);
        const fs_node *root = &t->nodes[0];
        CHECK_INT(root->ino, FS_INO_ROOT);
        CHECK_INT(root->mailbox_id, ids[0]); /* INBOX is the root */
        CHECK(root->selectable);
        CHECK_INT(root->nsubdirs, 5);
        CHECK(fs_tree_find_mailbox(t, ids[0]) == root);
        const fs_node *c = fs_tree_child(root, ".Archive.2024");
        CHECK(c != NULL);
        CHECK_INT(c->ino, fs_ino_mailbox(ids[1], FS_SUB_FOLDER));
        CHECK(fs_tree_child(root, ".Sent") != NULL);
        t = fs_tree_free(t);
        acs_store_close(s);
}

TEST(message_names_with_keywords)
{
        acs_store *s = make_store(NULL, NULL, 0, NULL);
        char *name = NULL;
        int idx;

        CHECK_INT(acs_store_begin(s, false), 0);
        CHECK_INT(acs_store_keyword_index(s, "$Junk", true, &idx), 0);
        CHECK_INT(acs_store_keyword_index(s, "work", true, &idx), 0);
        CHECK_INT(acs_store_commit(s), 0);
        CHECK_INT(fs_message_name(s, "1700000000.M1.acs", 10, 12, ACS_FLAG_SEEN | ACS_FLAG_FLAGGED,
                                  "$Junk work unknown", &name), 0);
        CHECK_STR(name, "1700000000.M1.acs,S=10,W=12:2,FSab");
        free(name);
        CHECK_INT(fs_message_name(s, "1700000000.M2.acs", 0, 0, 0, "", &name), 0);
        CHECK_STR(name, "1700000000.M2.acs,S=0,W=0:2,");
        free(name);
        acs_store_close(s);
}

static void cleanup(void)
{
        if (db_path) {
                unlink(db_path);
                free(db_path);
        }
        /* the store may leave -wal/-shm files; remove what is left, then the directory */
        char *cmd = NULL;
        if (asprintf(&cmd, "rm -rf '%s'", dir_template) >= 0 && system(cmd) != 0)
                printf("# could not remove %s\n", dir_template);
        free(cmd);
}

__attribute__((constructor)) static void setup(void)
{
        if (!mkdtemp(dir_template))
                abort();
        atexit(cleanup);
}

TEST_MAIN()
