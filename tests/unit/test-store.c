/* SPDX-License-Identifier: MIT */
/* Unit tests for lib/store.c: every function of acs/store.h against real SQLite files. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"
#include "acs/store.h"
#include "acs/util.h"

/* ---- helpers ---- */

/* A fresh directory for one test; removed by tmp_done(). */
static char tmpdir[256];

static void tmp_init(void)
{
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/acs-test-store-XXXXXX");
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

static char *tmp_path(const char *name)
{
        static char buf[4][512];
        static int i;

        i = (i + 1) % 4;
        snprintf(buf[i], sizeof(buf[i]), "%s/%s", tmpdir, name);
        return buf[i];
}

static acs_store *open_new(const char *name)
{
        acs_store *s = NULL;
        char *err = NULL;
        int r = acs_store_open(tmp_path(name), ACS_STORE_CREATE, &s, &err);

        if (r < 0) {
                printf("# open %s: %d %s\n", name, r, err ? err : "");
                free(err);
                exit(2);
        }
        return s;
}

static int64_t add_mailbox(acs_store *s, const char *name, char delim)
{
        acs_mailbox mb = { .name = (char *)name, .delim = delim };
        int r = acs_store_mailbox_put(s, &mb);

        CHECK_INT(r, 0);
        return mb.id;
}

static int64_t add_message(acs_store *s, int64_t mbox, uint32_t uid, int64_t body)
{
        acs_message m = { .mailbox_id = mbox, .uid = uid, .internaldate = 1700000000 + uid,
                          .size = 100 + uid, .vsize = 110 + uid, .body_id = body,
                          .keywords = (char *)"" };
        int r = acs_store_message_add(s, &m);

        CHECK_INT(r, 0);
        free(m.uniq);
        return m.id;
}

static void fill_random(unsigned char *p, size_t n, uint64_t seed)
{
        uint64_t x = seed * 6364136223846793005ULL + 1442695040888963407ULL;

        for (size_t i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[i] = (unsigned char)x;
        }
}

static unsigned char *read_file(const char *path, size_t *ret_len)
{
        FILE *f = fopen(path, "rb");
        unsigned char *buf = NULL;
        size_t cap = 0, len = 0, n;

        if (!f)
                return NULL;
        do {
                if (len == cap) {
                        cap = cap ? cap * 2 : 4096;
                        buf = realloc(buf, cap);
                }
                n = fread(buf + len, 1, cap - len, f);
                len += n;
        } while (n > 0);
        fclose(f);
        *ret_len = len;
        return buf ? buf : malloc(1);
}

static void write_file(const char *path, const void *data, size_t len)
{
        FILE *f = fopen(path, "wb");

        if (!f || fwrite(data, 1, len, f) != len) {
                perror(path);
                exit(2);
        }
        fclose(f);
}

/* ---- open / create ---- */

TEST(create_reopen_persists)
{
        acs_store *s;
        acs_mailbox mb = { 0 };
        char *err = NULL;
        int r;

        tmp_init();
        s = NULL;
        r = acs_store_open(tmp_path("c.db"), 0, &s, &err);
        CHECK_INT(r, -ENOENT);
        CHECK(s == NULL);
        CHECK(err && strstr(err, tmp_path("c.db")));
        free(err);
        err = NULL;
        CHECK(access(tmp_path("c.db"), F_OK) < 0);

        s = open_new("c.db");
        CHECK(acs_store_begin(s, false) == 0);
        add_mailbox(s, "INBOX", '/');
        CHECK_INT(acs_store_meta_set(s, "k", "v"), 0);
        CHECK_INT(acs_store_commit(s), 0);
        s = acs_store_close(s);
        CHECK(s == NULL);
        CHECK(acs_store_close(NULL) == NULL);

        /* creating left no temporary file behind */
        {
                DIR *d = opendir(tmpdir);
                struct dirent *de;
                int n = 0;

                while ((de = readdir(d)))
                        if (de->d_name[0] != '.') {
                                n++;
                                CHECK_STR(de->d_name, "c.db");
                        }
                closedir(d);
                CHECK_INT(n, 1);
        }

        r = acs_store_open(tmp_path("c.db"), ACS_STORE_CHECK, &s, &err);
        CHECK_INT(r, 0);
        CHECK(err == NULL);
        CHECK_INT(acs_store_mailbox_get(s, "INBOX", &mb), 0);
        CHECK_STR(mb.name, "INBOX");
        CHECK_INT(mb.delim, '/');
        acs_mailbox_clear(&mb);
        CHECK(mb.name == NULL);
        acs_mailbox_clear(NULL);
        s = acs_store_close(s);

        /* CREATE on an existing file opens it, never recreates it */
        s = open_new("c.db");
        CHECK_INT(acs_store_mailbox_get(s, "INBOX", &mb), 0);
        acs_mailbox_clear(&mb);
        acs_store_close(s);
        tmp_done();
}

TEST(readonly)
{
        acs_store *s, *ro = NULL;
        acs_mailbox mb = { .name = (char *)"X" };
        char *err = NULL;
        int64_t id;

        tmp_init();
        s = open_new("r.db");
        id = add_mailbox(s, "INBOX", '/');
        CHECK_INT(acs_store_open(tmp_path("r.db"), ACS_STORE_READONLY, &ro, &err), 0);
        CHECK_INT(acs_store_mailbox_get_by_id(ro, id, &mb), 0);
        CHECK_STR(mb.name, "INBOX");
        acs_mailbox_clear(&mb);
        mb.name = (char *)"X";
        CHECK_INT(acs_store_mailbox_put(ro, &mb), -EROFS);
        CHECK_INT(acs_store_begin(ro, false), -EROFS);
        CHECK(strlen(acs_store_errmsg(ro)) > 0);
        acs_store_close(ro);
        acs_store_close(s);
        tmp_done();
}

TEST(transactions)
{
        acs_store *s;
        char *v = NULL;

        tmp_init();
        s = open_new("t.db");
        CHECK_INT(acs_store_commit(s), -EINVAL);
        CHECK_INT(acs_store_begin(s, true), 0);
        CHECK_INT(acs_store_begin(s, false), -EINVAL);
        CHECK_INT(acs_store_meta_set(s, "a", "1"), 0);
        acs_store_rollback(s);
        CHECK_INT(acs_store_meta_get(s, "a", &v), -ENOENT);
        CHECK_INT(acs_store_begin(s, false), 0);
        CHECK_INT(acs_store_meta_set(s, "a", "2"), 0);
        CHECK_INT(acs_store_commit(s), 0);
        CHECK_INT(acs_store_meta_get(s, "a", &v), 0);
        CHECK_STR(v, "2");
        free(v);
        acs_store_rollback(s); /* no transaction: harmless */
        acs_store_close(s);
        tmp_done();
}

/* ---- mailboxes ---- */

static int collect_names(const acs_mailbox *mb, void *userdata)
{
        char *buf = userdata;

        strcat(buf, mb->name);
        strcat(buf, ";");
        return 0;
}

static int stop_at_two(const acs_mailbox *mb, void *userdata)
{
        int *n = userdata;

        return ++*n == 2 ? 42 : 0;
}

TEST(mailboxes)
{
        acs_store *s;
        acs_mailbox mb = { 0 }, put = { 0 };
        char names[256] = "";
        int64_t inbox, a, b, c;
        int n = 0;

        tmp_init();
        s = open_new("m.db");
        CHECK_INT(acs_store_begin(s, false), 0);
        inbox = add_mailbox(s, "INBOX", '/');
        a = add_mailbox(s, "Archive", '/');
        b = add_mailbox(s, "Archive/2024", '/');
        CHECK(inbox > 0 && a > inbox && b > a);

        /* put on an existing name updates delim/attrs, keeps id and server state */
        CHECK_INT(acs_store_mailbox_set_state(s, a, 77, 100, 12345678901ULL), 0);
        put = (acs_mailbox){ .name = (char *)"Archive", .delim = '.',
                             .attrs = ACS_MBOX_ARCHIVE | ACS_MBOX_SUBSCRIBED, .id = 999 };
        CHECK_INT(acs_store_mailbox_put(s, &put), 0);
        CHECK_INT(put.id, a);
        CHECK_INT(acs_store_mailbox_get(s, "Archive", &mb), 0);
        CHECK_INT(mb.id, a);
        CHECK_INT(mb.delim, '.');
        CHECK_INT(mb.attrs, ACS_MBOX_ARCHIVE | ACS_MBOX_SUBSCRIBED);
        CHECK_INT(mb.uidvalidity, 77);
        CHECK_INT(mb.uidnext, 100);
        CHECK(mb.highestmodseq == 12345678901ULL);
        CHECK(mb.mtime_ns > 0);
        acs_mailbox_clear(&mb);
        CHECK_INT(acs_store_mailbox_set_state(s, 4242, 1, 1, 1), -ENOENT);

        CHECK_INT(acs_store_mailbox_get(s, "Nope", &mb), -ENOENT);
        CHECK_INT(acs_store_mailbox_get_by_id(s, 4242, &mb), -ENOENT);
        put = (acs_mailbox){ .name = (char *)"" };
        CHECK_INT(acs_store_mailbox_put(s, &put), -EINVAL);

        /* rename */
        CHECK_INT(acs_store_mailbox_rename(s, b, "INBOX"), -EEXIST);
        CHECK_INT(acs_store_mailbox_rename(s, b, "Old"), 0);
        CHECK_INT(acs_store_mailbox_rename(s, 4242, "Z"), -ENOENT);
        CHECK_INT(acs_store_mailbox_get_by_id(s, b, &mb), 0);
        CHECK_STR(mb.name, "Old");
        acs_mailbox_clear(&mb);

        /* foreach in name order; a non-zero return stops */
        CHECK_INT(acs_store_mailbox_foreach(s, collect_names, names), 0);
        CHECK_STR(names, "Archive;INBOX;Old;");
        CHECK_INT(acs_store_mailbox_foreach(s, stop_at_two, &n), 42);
        CHECK_INT(n, 2);

        /* delete; ids are never reused, even across reopen */
        add_message(s, b, 1, 0);
        CHECK_INT(acs_store_mailbox_delete(s, b), 0);
        CHECK_INT(acs_store_mailbox_delete(s, b), -ENOENT);
        CHECK_INT(acs_store_mailbox_get_by_id(s, b, &mb), -ENOENT);
        {
                uint64_t count = 9;

                CHECK_INT(acs_store_message_count(s, b, &count, NULL), 0);
                CHECK_INT(count, 0);
        }
        c = add_mailbox(s, "New", '/');
        CHECK(c > b);
        CHECK_INT(acs_store_commit(s), 0);
        CHECK_INT(acs_store_begin(s, false), 0);
        CHECK_INT(acs_store_mailbox_delete(s, c), 0);
        CHECK_INT(acs_store_commit(s), 0);
        acs_store_close(s);
        s = open_new("m.db");
        CHECK(add_mailbox(s, "Newer", '/') > c);
        acs_store_close(s);
        tmp_done();
}

/* Several processes creating the same cache at once: one creates, all use it. */
TEST(concurrent_create)
{
        enum { N = 4 };
        pid_t pids[N];
        acs_store *s;
        char names[256] = "";
        int ready[2];

        tmp_init();
        if (pipe(ready) < 0)
                exit(2);
        for (int i = 0; i < N; i++) {
                pids[i] = fork();
                if (pids[i] == 0) {
                        acs_store *c = NULL;
                        char name[16], go;
                        int r;

                        close(ready[1]);
                        if (read(ready[0], &go, 1) != 0) /* wait until the parent closes it */
                                _exit(3);
                        r = acs_store_open(tmp_path("cc.db"), ACS_STORE_CREATE, &c, NULL);
                        if (r < 0)
                                _exit(4);
                        snprintf(name, sizeof(name), "child%d", i);
                        acs_mailbox mb = { .name = name, .delim = '/' };
                        r = acs_store_mailbox_put(c, &mb);
                        acs_store_close(c);
                        _exit(r < 0 ? 5 : 0);
                }
        }
        close(ready[0]);
        close(ready[1]);
        for (int i = 0; i < N; i++) {
                int status = -1;

                waitpid(pids[i], &status, 0);
                CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        s = open_new("cc.db");
        CHECK_INT(acs_store_mailbox_foreach(s, collect_names, names), 0);
        CHECK_STR(names, "child0;child1;child2;child3;");
        acs_store_close(s);
        {
                DIR *d = opendir(tmpdir);
                struct dirent *de;

                while ((de = readdir(d)))
                        CHECK(!strstr(de->d_name, ".new-"));
                closedir(d);
        }
        tmp_done();
}

/*
 * Opening a handle must not drop the POSIX locks other handles of this process hold on
 * the file (any close() of the file does): otherwise another process closing its last
 * handle believes it is the last user and deletes the WAL under us.
 */
TEST(open_keeps_other_handles_locks)
{
        acs_store *a, *b;
        int status = -1;
        char wal[600];

        tmp_init();
        a = open_new("lk.db");
        add_mailbox(a, "INBOX", '/');
        b = open_new("lk.db");
        acs_store_close(b);
        snprintf(wal, sizeof(wal), "%s-wal", tmp_path("lk.db"));
        CHECK(access(wal, F_OK) == 0);
        /* another process (a fresh one: SQLite state must not cross fork()) opens and
         * closes the database; the sqlite3 shell is part of the test bed */
        {
                char cmd[800];

                snprintf(cmd, sizeof(cmd), "sqlite3 '%s' 'SELECT count(*) FROM mailbox' >/dev/null",
                         tmp_path("lk.db"));
                status = system(cmd);
                CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        /* the child was not the last user: the WAL is still there */
        CHECK(access(wal, F_OK) == 0);
        add_mailbox(a, "After", '/');
        acs_store_close(a);
        a = open_new("lk.db");
        {
                acs_mailbox mb = { 0 };

                CHECK_INT(acs_store_mailbox_get(a, "After", &mb), 0);
                acs_mailbox_clear(&mb);
        }
        acs_store_close(a);
        tmp_done();
}

/* ---- messages ---- */

TEST(messages)
{
        acs_store *s;
        acs_message m = { 0 }, g = { 0 };
        int64_t inbox, other, id1, id2, id3, gone;
        uint64_t count;
        uint32_t maxuid;
        char buf[64];

        tmp_init();
        s = open_new("msg.db");
        CHECK_INT(acs_store_begin(s, false), 0);
        inbox = add_mailbox(s, "INBOX", '/');
        other = add_mailbox(s, "Other", '/');

        /* generated uniq "<internaldate>.M<id>.acs" */
        m = (acs_message){ .mailbox_id = inbox, .uid = 5, .modseq = 9, .flags = ACS_FLAG_SEEN,
                           .keywords = (char *)"$Junk work", .internaldate = 1700000001,
                           .size = 10, .vsize = 12, .state = ACS_MSG_NEW };
        CHECK_INT(acs_store_message_add(s, &m), 0);
        id1 = m.id;
        snprintf(buf, sizeof(buf), "1700000001.M%lld.acs", (long long)id1);
        CHECK_STR(m.uniq, buf);
        free(m.uniq);

        /* given uniq */
        m = (acs_message){ .mailbox_id = inbox, .uid = 6, .internaldate = 1700000002,
                           .uniq = (char *)"given.1" };
        CHECK_INT(acs_store_message_add(s, &m), 0);
        id2 = m.id;
        CHECK(id2 > id1);
        CHECK_STR(m.uniq, "given.1");

        /* unique conflicts; uid 0 (unknown) may repeat */
        m = (acs_message){ .mailbox_id = inbox, .uid = 5, .internaldate = 1 };
        CHECK_INT(acs_store_message_add(s, &m), -EEXIST);
        CHECK(m.uniq == NULL);
        CHECK(m.id == 0);
        m = (acs_message){ .mailbox_id = inbox, .uid = 7, .uniq = (char *)"given.1" };
        CHECK_INT(acs_store_message_add(s, &m), -EEXIST);
        m = (acs_message){ .mailbox_id = 4242, .uid = 7 };
        CHECK_INT(acs_store_message_add(s, &m), -ENOENT);
        m = (acs_message){ .mailbox_id = inbox, .uid = 0, .internaldate = 3 };
        CHECK_INT(acs_store_message_add(s, &m), 0);
        id3 = m.id;
        free(m.uniq);
        m = (acs_message){ .mailbox_id = inbox, .uid = 0, .internaldate = 3 };
        CHECK_INT(acs_store_message_add(s, &m), 0);
        gone = m.id;
        free(m.uniq);

        /* get, by uid, by uniq */
        CHECK_INT(acs_store_message_get(s, id1, &g), 0);
        CHECK_INT(g.mailbox_id, inbox);
        CHECK_INT(g.uid, 5);
        CHECK_INT(g.modseq, 9);
        CHECK_INT(g.flags, ACS_FLAG_SEEN);
        CHECK_STR(g.keywords, "$Junk work");
        CHECK_INT(g.internaldate, 1700000001);
        CHECK_INT(g.size, 10);
        CHECK_INT(g.vsize, 12);
        CHECK_INT(g.state, ACS_MSG_NEW);
        CHECK_INT(g.body_id, 0);
        acs_message_clear(&g);
        CHECK(g.uniq == NULL && g.keywords == NULL);
        acs_message_clear(NULL);
        CHECK_INT(acs_store_message_get_by_uid(s, inbox, 6, &g), 0);
        CHECK_INT(g.id, id2);
        CHECK_STR(g.keywords, "");
        acs_message_clear(&g);
        CHECK_INT(acs_store_message_get_by_uid(s, other, 6, &g), -ENOENT);
        CHECK_INT(acs_store_message_get_by_uid(s, inbox, 0, &g), -ENOENT);
        CHECK_INT(acs_store_message_get_by_uniq(s, inbox, "given.1", &g), 0);
        CHECK_INT(g.id, id2);
        acs_message_clear(&g);
        CHECK_INT(acs_store_message_get_by_uniq(s, other, "given.1", &g), -ENOENT);
        CHECK_INT(acs_store_message_get(s, 99999, &g), -ENOENT);
        CHECK_INT(acs_store_message_get(s, id3, &g), 0);
        CHECK_INT(g.uid, 0);
        acs_message_clear(&g);

        /* flags and keywords roundtrip; NULL keywords and 0 modseq leave them */
        CHECK_INT(acs_store_message_set_flags(s, id1, ACS_FLAG_ALL, NULL, 0), 0);
        CHECK_INT(acs_store_message_get(s, id1, &g), 0);
        CHECK_INT(g.flags, ACS_FLAG_ALL);
        CHECK_STR(g.keywords, "$Junk work");
        CHECK_INT(g.modseq, 9);
        acs_message_clear(&g);
        CHECK_INT(acs_store_message_set_flags(s, id1, ACS_FLAG_DRAFT | ACS_FLAG_TRASHED, "", 11), 0);
        CHECK_INT(acs_store_message_get(s, id1, &g), 0);
        CHECK_INT(g.flags, ACS_FLAG_DRAFT | ACS_FLAG_TRASHED);
        CHECK_STR(g.keywords, "");
        CHECK_INT(g.modseq, 11);
        acs_message_clear(&g);
        CHECK_INT(acs_store_message_set_flags(s, id1, 1 << 6, NULL, 0), -EINVAL);
        CHECK_INT(acs_store_message_set_flags(s, 99999, 0, NULL, 0), -ENOENT);

        /* uid, state */
        CHECK_INT(acs_store_message_set_uid(s, id3, 6), -EEXIST);
        CHECK_INT(acs_store_message_set_uid(s, id3, 8), 0);
        CHECK_INT(acs_store_message_set_state(s, id3, ACS_MSG_NEW), 0);
        CHECK_INT(acs_store_message_get_by_uid(s, inbox, 8, &g), 0);
        CHECK_INT(g.id, id3);
        CHECK_INT(g.state, ACS_MSG_NEW);
        acs_message_clear(&g);
        CHECK_INT(acs_store_message_set_uid(s, id3, 0), 0);
        CHECK_INT(acs_store_message_get(s, id3, &g), 0);
        CHECK_INT(g.uid, 0);
        acs_message_clear(&g);
        CHECK_INT(acs_store_message_set_uid(s, 99999, 1), -ENOENT);
        CHECK_INT(acs_store_message_set_state(s, 99999, 0), -ENOENT);

        /* count and max uid */
        CHECK_INT(acs_store_message_count(s, inbox, &count, &maxuid), 0);
        CHECK_INT(count, 4);
        CHECK_INT(maxuid, 6);

        /* move: generated and given uniq; conflicts */
        CHECK_INT(acs_store_message_move(s, id1, other, 0, NULL), 0);
        CHECK_INT(acs_store_message_get(s, id1, &g), 0);
        CHECK_INT(g.mailbox_id, other);
        CHECK_INT(g.uid, 0);
        CHECK_STR(g.uniq, buf);
        acs_message_clear(&g);
        CHECK_INT(acs_store_message_move(s, id2, other, 3, "moved.2"), 0);
        CHECK_INT(acs_store_message_get_by_uniq(s, other, "moved.2", &g), 0);
        CHECK_INT(g.id, id2);
        CHECK_INT(g.uid, 3);
        acs_message_clear(&g);
        CHECK_INT(acs_store_message_move(s, id3, other, 3, NULL), -EEXIST);
        CHECK_INT(acs_store_message_move(s, id3, 4242, 0, NULL), -ENOENT);
        CHECK_INT(acs_store_message_move(s, 99999, other, 0, NULL), -ENOENT);

        /* delete, delete by uid */
        CHECK_INT(acs_store_message_delete(s, gone), 0);
        CHECK_INT(acs_store_message_delete(s, gone), -ENOENT);
        CHECK_INT(acs_store_message_delete_uid(s, other, 3), 0);
        CHECK_INT(acs_store_message_delete_uid(s, other, 3), -ENOENT);
        CHECK_INT(acs_store_message_get(s, id2, &g), -ENOENT);
        CHECK_INT(acs_store_message_count(s, other, &count, &maxuid), 0);
        CHECK_INT(count, 1);
        CHECK_INT(maxuid, 0);

        /* ids never reused */
        CHECK(add_message(s, inbox, 100, 0) > gone);
        CHECK_INT(acs_store_commit(s), 0);
        acs_store_close(s);
        tmp_done();
}

struct uid_seen {
        uint32_t uids[16];
        int64_t ids[16];
        int n;
};

static int collect_uid(uint32_t uid, int64_t id, void *userdata)
{
        struct uid_seen *u = userdata;

        if (u->n < 16) {
                u->uids[u->n] = uid;
                u->ids[u->n] = id;
        }
        u->n++;
        return 0;
}

TEST(message_uids)
{
        acs_store *s;
        struct uid_seen u = { 0 };
        int64_t mb, id30, id10, id20;

        tmp_init();
        s = open_new("u.db");
        CHECK_INT(acs_store_begin(s, false), 0);
        mb = add_mailbox(s, "INBOX", '/');
        id30 = add_message(s, mb, 30, 0);
        add_message(s, mb, 0, 0);
        id10 = add_message(s, mb, 10, 0);
        id20 = add_message(s, mb, 20, 0);
        CHECK_INT(acs_store_commit(s), 0);
        CHECK_INT(acs_store_message_uids(s, mb, collect_uid, &u), 0);
        CHECK_INT(u.n, 3);
        CHECK_INT(u.uids[0], 10);
        CHECK_INT(u.ids[0], id10);
        CHECK_INT(u.uids[1], 20);
        CHECK_INT(u.ids[1], id20);
        CHECK_INT(u.uids[2], 30);
        CHECK_INT(u.ids[2], id30);
        acs_store_close(s);
        tmp_done();
}

struct list_state {
        int64_t last_id;
        size_t n;
        bool order_ok;
        int64_t mailbox;
};

static int list_cb(const acs_message *m, void *userdata)
{
        struct list_state *ls = userdata;

        if (m->id <= ls->last_id || m->mailbox_id != ls->mailbox || !m->uniq || !m->keywords)
                ls->order_ok = false;
        ls->last_id = m->id;
        ls->n++;
        return 0;
}

static int list_stop(const acs_message *m, void *userdata)
{
        size_t *n = userdata;

        return ++*n == 5 ? -7 : 0;
}

TEST(message_list_10000)
{
        acs_store *s;
        struct list_state ls;
        int64_t mb, other, first = 0, after = 0;
        size_t pages = 0, total = 0, stopped = 0;
        uint64_t count;

        tmp_init();
        s = open_new("l.db");
        CHECK_INT(acs_store_begin(s, false), 0);
        mb = add_mailbox(s, "INBOX", '/');
        other = add_mailbox(s, "Other", '/');
        for (uint32_t i = 1; i <= 10000; i++) {
                int64_t id = add_message(s, i % 3 == 0 ? other : mb, i, 0);

                if (i == 1)
                        first = id;
        }
        CHECK_INT(acs_store_commit(s), 0);
        CHECK_INT(acs_store_message_count(s, mb, &count, NULL), 0);
        CHECK_INT(count, 6667);

        /* pages of 777 following after_id */
        for (;;) {
                ls = (struct list_state){ .last_id = after, .order_ok = true, .mailbox = mb };
                CHECK_INT(acs_store_message_list(s, mb, after, 777, list_cb, &ls), 0);
                CHECK(ls.order_ok);
                CHECK(ls.n <= 777);
                if (ls.n == 0)
                        break;
                total += ls.n;
                pages++;
                after = ls.last_id;
        }
        CHECK_INT(total, 6667);
        CHECK_INT(pages, 9);

        /* no limit; start in the middle */
        ls = (struct list_state){ .last_id = 0, .order_ok = true, .mailbox = mb };
        CHECK_INT(acs_store_message_list(s, mb, 0, 0, list_cb, &ls), 0);
        CHECK_INT(ls.n, 6667);
        ls = (struct list_state){ .last_id = first + 5000, .order_ok = true, .mailbox = mb };
        CHECK_INT(acs_store_message_list(s, mb, first + 5000, 0, list_cb, &ls), 0);
        CHECK(ls.order_ok);
        CHECK_INT(ls.n, 6667 - 3334); /* ids first..first+5000 hold 3334 INBOX rows */

        CHECK_INT(acs_store_message_list(s, mb, 0, 0, list_stop, &stopped), -7);
        CHECK_INT(stopped, 5);
        acs_store_close(s);
        tmp_done();
}

/* A callback that re-enters the store with the same query (cached statement busy). */
struct reenter {
        acs_store *s;
        int64_t mb;
        size_t inner;
        int outer;
};

static int count_cb(const acs_message *m, void *userdata)
{
        size_t *n = userdata;

        (*n)++;
        return 0;
}

static int reenter_cb(const acs_message *m, void *userdata)
{
        struct reenter *re = userdata;
        acs_message g = { 0 };

        re->outer++;
        CHECK_INT(acs_store_message_list(re->s, re->mb, 0, 0, count_cb, &re->inner), 0);
        CHECK_INT(acs_store_message_get(re->s, m->id, &g), 0);
        CHECK_INT(g.id, m->id);
        acs_message_clear(&g);
        return 0;
}

TEST(reentrant_callbacks)
{
        acs_store *s;
        struct reenter re = { 0 };

        tmp_init();
        s = open_new("re.db");
        re.s = s;
        re.mb = add_mailbox(s, "INBOX", '/');
        for (uint32_t i = 1; i <= 3; i++)
                add_message(s, re.mb, i, 0);
        CHECK_INT(acs_store_message_list(s, re.mb, 0, 0, reenter_cb, &re), 0);
        CHECK_INT(re.outer, 3);
        CHECK_INT(re.inner, 9);
        acs_store_close(s);
        tmp_done();
}

/* ---- bodies ---- */

TEST(body_dedup_gc)
{
        acs_store *s;
        const char *text = "Subject: hi\n\nhello\n";
        int64_t b1, b2, b3, b4, mb, m1, m2, m3, e;
        uint64_t size;
        acs_op op;
        char buf[64];
        size_t n;

        tmp_init();
        s = open_new("b.db");
        CHECK_INT(acs_store_begin(s, false), 0);
        CHECK_INT(acs_store_body_put(s, text, strlen(text), &b1), 0);
        CHECK_INT(acs_store_body_put(s, text, strlen(text), &b2), 0);
        CHECK_INT(b1, b2);
        CHECK_INT(acs_store_body_put(s, "other\n", 6, &b3), 0);
        CHECK(b3 != b1);
        CHECK_INT(acs_store_body_put(s, "", 0, &e), 0);
        CHECK_INT(acs_store_body_size(s, e, &size), 0);
        CHECK_INT(size, 0);
        CHECK_INT(acs_store_body_read(s, e, 0, buf, sizeof(buf), &n), 0);
        CHECK_INT(n, 0);
        CHECK_INT(acs_store_body_size(s, b1, &size), 0);
        CHECK_INT(size, strlen(text));
        CHECK_INT(acs_store_body_read(s, b1, 0, buf, sizeof(buf), &n), 0);
        CHECK_INT(n, strlen(text));
        CHECK(memcmp(buf, text, n) == 0);
        CHECK_INT(acs_store_body_read(s, b1, 9, buf, 4, &n), 0);
        CHECK_INT(n, 4);
        CHECK(memcmp(buf, "hi\n\n", 4) == 0);
        CHECK_INT(acs_store_body_read(s, b1, 100, buf, 4, &n), 0);
        CHECK_INT(n, 0);
        CHECK_INT(acs_store_body_read(s, 99999, 0, buf, 4, &n), -ENOENT);
        CHECK_INT(acs_store_body_size(s, 99999, &size), -ENOENT);

        /* two messages share b1; it goes when the last one goes */
        mb = add_mailbox(s, "INBOX", '/');
        m1 = add_message(s, mb, 1, b1);
        m2 = add_message(s, mb, 2, b1);
        CHECK_INT(acs_store_message_delete(s, m1), 0);
        CHECK_INT(acs_store_body_size(s, b1, &size), 0);
        /* an op refers to it: the message goes, the body stays */
        op = (acs_op){ .kind = ACS_OP_MOVE, .mailbox_id = mb, .message_id = m2, .uid = 2,
                       .body_id = b1 };
        CHECK_INT(acs_store_commit(s), 0);
        CHECK_INT(acs_store_begin(s, true), 0);
        CHECK_INT(acs_store_op_add(s, &op), 0);
        CHECK_INT(acs_store_message_delete(s, m2), 0);
        CHECK_INT(acs_store_body_size(s, b1, &size), 0);
        CHECK_INT(acs_store_body_read(s, b1, 0, buf, sizeof(buf), &n), 0);
        CHECK_INT(n, strlen(text));
        CHECK_INT(acs_store_op_done(s, op.seq), 0);
        CHECK_INT(acs_store_body_size(s, b1, &size), -ENOENT);
        CHECK_INT(acs_store_body_read(s, b1, 0, buf, sizeof(buf), &n), -ENOENT);
        CHECK_INT(acs_store_commit(s), 0);

        /* mailbox delete removes its messages' bodies, except those an op holds */
        CHECK_INT(acs_store_begin(s, true), 0);
        CHECK_INT(acs_store_body_put(s, "four\n", 5, &b4), 0);
        m3 = add_message(s, mb, 3, b3);
        add_message(s, mb, 4, b4);
        op = (acs_op){ .kind = ACS_OP_APPEND, .mailbox_id = mb, .message_id = m3, .body_id = b3 };
        CHECK_INT(acs_store_op_add(s, &op), 0);
        CHECK_INT(acs_store_mailbox_delete(s, mb), 0);
        CHECK_INT(acs_store_body_size(s, b3, &size), 0);
        CHECK_INT(acs_store_body_size(s, b4, &size), -ENOENT);
        CHECK_INT(acs_store_commit(s), 0);

        /* the content comes back under a new id once the old one was collected */
        CHECK_INT(acs_store_body_put(s, text, strlen(text), &b2), 0);
        CHECK(b2 > b4);
        acs_store_close(s);
        tmp_done();
}

TEST(body_stream_5mb)
{
        const size_t size = 5 * 1024 * 1024 + 17;
        unsigned char *data = malloc(size), *buf = malloc(300000);
        acs_store *s;
        int64_t id, fin, id2, fin2, msg, mb;
        uint64_t sz;
        size_t off, n;

        tmp_init();
        fill_random(data, size, 42);
        s = open_new("s.db");
        CHECK_INT(acs_store_begin(s, true), 0);
        CHECK_INT(acs_store_body_create(s, size, &id), 0);
        CHECK_INT(acs_store_body_size(s, id, &sz), 0);
        CHECK_INT(sz, size);
        /* uneven pieces */
        for (off = 0; off < size; off += n) {
                n = 1000 + (off * 7919) % 70000;
                if (n > size - off)
                        n = size - off;
                CHECK_INT(acs_store_body_write(s, id, off, data + off, n), 0);
        }
        CHECK_INT(acs_store_body_write(s, id, size - 1, "xy", 2), -EINVAL);
        CHECK_INT(acs_store_body_finish(s, id, &fin), 0);
        CHECK_INT(fin, id);
        mb = add_mailbox(s, "INBOX", '/');
        msg = add_message(s, mb, 1, fin);
        CHECK_INT(acs_store_commit(s), 0);

        /* the same content put at once deduplicates to the streamed body */
        CHECK_INT(acs_store_body_put(s, data, size, &id2), 0);
        CHECK_INT(id2, fin);

        /* read back at random offsets, some crossing the end */
        for (int i = 0; i < 300; i++) {
                uint64_t o = ((uint64_t)i * 2654435761u) % size;
                size_t want = 1 + ((size_t)i * 40503u) % 300000, exp;

                if (i % 50 == 0)
                        o = size - 10;
                exp = want < size - o ? want : size - o;
                CHECK_INT(acs_store_body_read(s, fin, o, buf, want, &n), 0);
                CHECK_INT(n, exp);
                if (n == exp && memcmp(buf, data + o, n) != 0) {
                        printf("#   mismatch at offset %llu\n", (unsigned long long)o);
                        test_failed_checks++;
                }
        }
        /* sequential reads in 128 KiB steps */
        for (off = 0; off < size; off += n) {
                CHECK_INT(acs_store_body_read(s, fin, off, buf, 131072, &n), 0);
                if (n == 0 || memcmp(buf, data + off, n) != 0) {
                        test_failed_checks++;
                        break;
                }
        }
        CHECK_INT(off, size);

        /* a second stream of the same content finishes into the existing body */
        CHECK_INT(acs_store_begin(s, true), 0);
        CHECK_INT(acs_store_body_create(s, size, &id2), 0);
        CHECK(id2 != fin);
        CHECK_INT(acs_store_body_write(s, id2, 0, data, size), 0);
        CHECK_INT(acs_store_body_finish(s, id2, &fin2), 0);
        CHECK_INT(fin2, fin);
        CHECK_INT(acs_store_body_size(s, id2, &sz), -ENOENT);
        CHECK_INT(acs_store_body_read(s, id2, 0, buf, 10, &n), -ENOENT);
        CHECK_INT(acs_store_commit(s), 0);

        /* writes need a transaction, an unfinished body, an existing one */
        CHECK_INT(acs_store_body_write(s, fin, 0, "x", 1), -EINVAL);
        CHECK_INT(acs_store_begin(s, false), 0);
        CHECK_INT(acs_store_body_write(s, fin, 0, "x", 1), -EPERM);
        CHECK_INT(acs_store_body_write(s, 99999, 0, "x", 1), -ENOENT);
        acs_store_rollback(s);
        CHECK_INT(acs_store_body_read(s, fin, 0, buf, 4, &n), 0);
        CHECK(memcmp(buf, data, 4) == 0);

        CHECK_INT(acs_store_message_delete(s, msg), 0);
        CHECK_INT(acs_store_body_size(s, fin, &sz), -ENOENT);
        acs_store_close(s);
        free(data);
        free(buf);
        tmp_done();
}

/* ---- keywords ---- */

TEST(keywords)
{
        acs_store *s;
        char kw[32], *name = NULL;
        int idx = -1;

        tmp_init();
        s = open_new("k.db");
        CHECK_INT(acs_store_keyword_index(s, "$Junk", false, &idx), -ENOENT);
        CHECK_INT(acs_store_keyword_name(s, 0, &name), -ENOENT);
        CHECK_INT(acs_store_begin(s, false), 0);
        for (int i = 0; i < 26; i++) {
                snprintf(kw, sizeof(kw), "kw%d", i);
                CHECK_INT(acs_store_keyword_index(s, kw, true, &idx), 0);
                CHECK_INT(idx, i);
        }
        CHECK_INT(acs_store_keyword_index(s, "one-more", true, &idx), -ENOSPC);
        CHECK_INT(acs_store_keyword_index(s, "kw7", true, &idx), 0);
        CHECK_INT(idx, 7);
        CHECK_INT(acs_store_keyword_index(s, "kw25", false, &idx), 0);
        CHECK_INT(idx, 25);
        CHECK_INT(acs_store_keyword_index(s, "has space", true, &idx), -EINVAL);
        CHECK_INT(acs_store_commit(s), 0);
        CHECK_INT(acs_store_keyword_name(s, 12, &name), 0);
        CHECK_STR(name, "kw12");
        free(name);
        CHECK_INT(acs_store_keyword_name(s, 26, &name), -ENOENT);
        CHECK_INT(acs_store_keyword_name(s, -1, &name), -ENOENT);
        acs_store_close(s);
        tmp_done();
}

/* ---- change journal and mtimes ---- */

struct rec_change {
        int64_t seq, mailbox_id, message_id, old_mailbox_id;
        int kind;
        unsigned old_flags, old_state;
        char old_keywords[64], old_uniq[64], old_name[64];
        bool has_kw, has_uniq, has_name;
        uint64_t old_size, old_vsize;
};

struct rec {
        struct rec_change c[64];
        int n;
};

static int rec_cb(const acs_change *c, void *userdata)
{
        struct rec *r = userdata;
        struct rec_change *x;

        if (r->n >= 64)
                return -E2BIG;
        x = &r->c[r->n++];
        *x = (struct rec_change){ .seq = c->seq, .kind = c->kind, .mailbox_id = c->mailbox_id,
                                  .message_id = c->message_id, .old_mailbox_id = c->old_mailbox_id,
                                  .old_flags = c->old_flags, .old_state = c->old_state,
                                  .old_size = c->old_size, .old_vsize = c->old_vsize,
                                  .has_kw = c->old_keywords != NULL,
                                  .has_uniq = c->old_uniq != NULL,
                                  .has_name = c->old_name != NULL };
        snprintf(x->old_keywords, sizeof(x->old_keywords), "%s", c->old_keywords ? c->old_keywords : "");
        snprintf(x->old_uniq, sizeof(x->old_uniq), "%s", c->old_uniq ? c->old_uniq : "");
        snprintf(x->old_name, sizeof(x->old_name), "%s", c->old_name ? c->old_name : "");
        return 0;
}

TEST(change_journal)
{
        acs_store *s;
        struct rec rec = { 0 };
        acs_message m;
        int64_t last = -1, start, inbox, sub, msg, msg2;
        acs_mailbox mb;

        tmp_init();
        s = open_new("j.db");
        CHECK_INT(acs_store_change_last(s, &last), 0);
        CHECK_INT(last, 0);

        /* rollback leaves no rows */
        CHECK_INT(acs_store_begin(s, false), 0);
        add_mailbox(s, "Gone", '/');
        acs_store_rollback(s);
        CHECK_INT(acs_store_change_last(s, &last), 0);
        CHECK_INT(last, 0);
        CHECK_INT(acs_store_changes_since(s, 0, rec_cb, &rec), 0);
        CHECK_INT(rec.n, 0);

        CHECK_INT(acs_store_begin(s, false), 0);
        inbox = add_mailbox(s, "INBOX", '/');                                 /* 1 */
        sub = add_mailbox(s, "INBOX/Sub", '/');                               /* 1 */
        m = (acs_message){ .mailbox_id = inbox, .uid = 1, .flags = ACS_FLAG_SEEN,
                           .keywords = (char *)"$Label1", .internaldate = 1000, .size = 50,
                           .vsize = 52, .uniq = (char *)"u1" };
        CHECK_INT(acs_store_message_add(s, &m), 0);                           /* 4 */
        msg = m.id;
        /* within the transaction the rows are visible already */
        CHECK_INT(acs_store_change_last(s, &start), 0);
        CHECK_INT(start, 3);
        CHECK_INT(acs_store_message_set_flags(s, msg, ACS_FLAG_FLAGGED, "x", 5), 0); /* 6 */
        CHECK_INT(acs_store_message_set_flags(s, msg, ACS_FLAG_FLAGGED, "x", 6), 0); /* none */
        CHECK_INT(acs_store_message_set_state(s, msg, ACS_MSG_NEW), 0);        /* 6 */
        CHECK_INT(acs_store_message_set_uid(s, msg, 9), 0);                    /* 6 */
        CHECK_INT(acs_store_message_move(s, msg, sub, 0, "u2"), 0);            /* 6 */
        mb = (acs_mailbox){ .name = (char *)"INBOX/Sub", .delim = '/', .attrs = ACS_MBOX_JUNK };
        CHECK_INT(acs_store_mailbox_put(s, &mb), 0);                           /* 3 attrs */
        CHECK_INT(acs_store_mailbox_put(s, &mb), 0);                           /* none */
        CHECK_INT(acs_store_mailbox_set_state(s, sub, 1, 2, 3), 0);            /* none */
        CHECK_INT(acs_store_mailbox_rename(s, sub, "INBOX/Sub2"), 0);          /* 3 */
        m = (acs_message){ .mailbox_id = inbox, .uid = 2, .internaldate = 1001,
                           .size = 70, .vsize = 73 };
        CHECK_INT(acs_store_message_add(s, &m), 0);                           /* 4 */
        msg2 = m.id;
        free(m.uniq);
        CHECK_INT(acs_store_message_delete(s, msg), 0);                        /* 5 */
        CHECK_INT(acs_store_mailbox_delete(s, inbox), 0);                      /* 5, 2 */
        CHECK_INT(acs_store_commit(s), 0);

        CHECK_INT(acs_store_changes_since(s, 0, rec_cb, &rec), 0);
        CHECK_INT(rec.n, 13);
        for (int i = 1; i < rec.n; i++)
                CHECK(rec.c[i].seq > rec.c[i - 1].seq);
        CHECK_INT(rec.c[0].kind, ACS_CHANGE_MAILBOX_ADDED);
        CHECK_INT(rec.c[0].mailbox_id, inbox);
        CHECK_INT(rec.c[0].message_id, 0);
        CHECK(!rec.c[0].has_name);
        CHECK_INT(rec.c[1].kind, ACS_CHANGE_MAILBOX_ADDED);
        CHECK_INT(rec.c[1].mailbox_id, sub);
        CHECK_INT(rec.c[2].kind, ACS_CHANGE_MESSAGE_ADDED);
        CHECK_INT(rec.c[2].message_id, msg);
        CHECK_INT(rec.c[2].mailbox_id, inbox);
        /* flags change carries the old flags, keywords, uniq, sizes */
        CHECK_INT(rec.c[3].kind, ACS_CHANGE_MESSAGE_CHANGED);
        CHECK_INT(rec.c[3].old_flags, ACS_FLAG_SEEN);
        CHECK_STR(rec.c[3].old_keywords, "$Label1");
        CHECK_STR(rec.c[3].old_uniq, "u1");
        CHECK_INT(rec.c[3].old_size, 50);
        CHECK_INT(rec.c[3].old_vsize, 52);
        CHECK_INT(rec.c[3].old_mailbox_id, inbox);
        CHECK_INT(rec.c[3].old_state, 0);
        CHECK(!rec.c[3].has_name);
        CHECK_INT(rec.c[4].kind, ACS_CHANGE_MESSAGE_CHANGED);
        CHECK_INT(rec.c[4].old_flags, ACS_FLAG_FLAGGED);
        CHECK_STR(rec.c[4].old_keywords, "x");
        CHECK_INT(rec.c[4].old_state, 0);
        CHECK_INT(rec.c[5].kind, ACS_CHANGE_MESSAGE_CHANGED);
        CHECK_INT(rec.c[5].old_state, ACS_MSG_NEW);
        /* move: new mailbox in mailbox_id, old one in old_mailbox_id */
        CHECK_INT(rec.c[6].kind, ACS_CHANGE_MESSAGE_CHANGED);
        CHECK_INT(rec.c[6].mailbox_id, sub);
        CHECK_INT(rec.c[6].old_mailbox_id, inbox);
        CHECK_STR(rec.c[6].old_uniq, "u1");
        CHECK_INT(rec.c[7].kind, ACS_CHANGE_MAILBOX_CHANGED);
        CHECK_STR(rec.c[7].old_name, "INBOX/Sub");
        CHECK_INT(rec.c[8].kind, ACS_CHANGE_MAILBOX_CHANGED);
        CHECK_INT(rec.c[8].mailbox_id, sub);
        CHECK_STR(rec.c[8].old_name, "INBOX/Sub");
        CHECK_INT(rec.c[9].kind, ACS_CHANGE_MESSAGE_ADDED);
        CHECK_INT(rec.c[9].message_id, msg2);
        CHECK_INT(rec.c[10].kind, ACS_CHANGE_MESSAGE_REMOVED);
        CHECK_INT(rec.c[10].message_id, msg);
        CHECK_INT(rec.c[10].mailbox_id, sub);
        CHECK_STR(rec.c[10].old_uniq, "u2");
        CHECK_INT(rec.c[10].old_flags, ACS_FLAG_FLAGGED);
        CHECK_INT(rec.c[10].old_state, ACS_MSG_NEW);
        CHECK_INT(rec.c[11].kind, ACS_CHANGE_MESSAGE_REMOVED);
        CHECK_INT(rec.c[11].message_id, msg2);
        CHECK_INT(rec.c[11].old_size, 70);
        CHECK_INT(rec.c[11].old_vsize, 73);
        CHECK_INT(rec.c[12].kind, ACS_CHANGE_MAILBOX_REMOVED);
        CHECK_INT(rec.c[12].mailbox_id, inbox);
        CHECK_STR(rec.c[12].old_name, "INBOX");

        CHECK_INT(acs_store_change_last(s, &last), 0);
        CHECK_INT(last, rec.c[rec.n - 1].seq);

        /* changes_since after a seq; a non-zero callback return stops */
        rec.n = 0;
        CHECK_INT(acs_store_changes_since(s, rec.c[9].seq, rec_cb, &rec), 0);
        CHECK_INT(rec.n, 3);

        /* trim; the last seq does not go back */
        CHECK_INT(acs_store_changes_trim(s, last - 1), 0);
        rec.n = 0;
        CHECK_INT(acs_store_changes_since(s, 0, rec_cb, &rec), 0);
        CHECK_INT(rec.n, 1);
        CHECK_INT(rec.c[0].seq, last);
        CHECK_INT(acs_store_changes_trim(s, last), 0);
        rec.n = 0;
        CHECK_INT(acs_store_changes_since(s, 0, rec_cb, &rec), 0);
        CHECK_INT(rec.n, 0);
        CHECK_INT(acs_store_change_last(s, &start), 0);
        CHECK_INT(start, last);
        add_mailbox(s, "Again", '/');
        CHECK_INT(acs_store_change_last(s, &start), 0);
        CHECK_INT(start, last + 1);
        acs_store_close(s);
        tmp_done();
}

static int64_t mb_mtime(acs_store *s, int64_t id)
{
        acs_mailbox mb = { 0 };
        int64_t t;

        CHECK_INT(acs_store_mailbox_get_by_id(s, id, &mb), 0);
        t = mb.mtime_ns;
        acs_mailbox_clear(&mb);
        return t;
}

static int64_t root_mtime(acs_store *s)
{
        int64_t t = 0;

        CHECK_INT(acs_store_root_mtime(s, &t), 0);
        return t;
}

TEST(mtimes)
{
        acs_store *s;
        int64_t inbox, arch, sub, t, t2, r0, ra, rb, a0, now;
        int bad = 0;
        struct timespec ts;

        tmp_init();
        s = open_new("t.db");
        clock_gettime(CLOCK_REALTIME, &ts);
        now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
        r0 = root_mtime(s);
        /* the root mtime is wall time (ms precision) */
        CHECK(r0 > now - 10 * 1000000000LL && r0 < now + 10 * 1000000000LL);

        CHECK_INT(acs_store_begin(s, false), 0);
        inbox = add_mailbox(s, "INBOX", '/');
        ra = root_mtime(s);
        CHECK(ra > r0);
        arch = add_mailbox(s, "Archive", '/');
        rb = root_mtime(s);
        CHECK(rb > ra);
        /* a child bumps its parent mailbox, not the root */
        a0 = mb_mtime(s, arch);
        sub = add_mailbox(s, "Archive/2024", '/');
        CHECK(mb_mtime(s, arch) > a0);
        CHECK_INT(root_mtime(s), rb);
        /* a child whose parent does not exist bumps the root */
        add_mailbox(s, "Nope/Child", '/');
        CHECK(root_mtime(s) > rb);
        CHECK_INT(acs_store_commit(s), 0);

        /* many changes within the same millisecond still move strictly forward */
        t = mb_mtime(s, inbox);
        CHECK_INT(acs_store_begin(s, false), 0);
        for (uint32_t i = 1; i <= 200; i++) {
                add_message(s, inbox, i, 0);
                t2 = mb_mtime(s, inbox);
                if (t2 <= t && bad++ == 0)
                        printf("#   mtime did not increase at %u: %lld <= %lld\n", i,
                               (long long)t2, (long long)t);
                t = t2;
        }
        CHECK_INT(bad, 0);
        CHECK_INT(acs_store_commit(s), 0);

        /* flag change, move (both mailboxes), delete */
        {
                acs_message m = { 0 };
                int64_t ti, ts2;

                CHECK_INT(acs_store_message_get_by_uid(s, inbox, 1, &m), 0);
                ti = mb_mtime(s, inbox);
                CHECK_INT(acs_store_message_set_flags(s, m.id, ACS_FLAG_SEEN, NULL, 0), 0);
                CHECK(mb_mtime(s, inbox) > ti);
                /* modseq-only updates change no name and keep the mtime */
                ti = mb_mtime(s, inbox);
                CHECK_INT(acs_store_message_set_flags(s, m.id, ACS_FLAG_SEEN, NULL, 77), 0);
                CHECK_INT(mb_mtime(s, inbox), ti);
                ts2 = mb_mtime(s, sub);
                CHECK_INT(acs_store_message_move(s, m.id, sub, 0, NULL), 0);
                CHECK(mb_mtime(s, inbox) > ti);
                CHECK(mb_mtime(s, sub) > ts2);
                ts2 = mb_mtime(s, sub);
                CHECK_INT(acs_store_message_delete(s, m.id), 0);
                CHECK(mb_mtime(s, sub) > ts2);
                acs_message_clear(&m);
        }

        /* rename and delete of a top-level mailbox bump the root */
        rb = root_mtime(s);
        CHECK_INT(acs_store_mailbox_rename(s, inbox, "INBOX2"), 0);
        CHECK(root_mtime(s) > rb);
        rb = root_mtime(s);
        a0 = mb_mtime(s, arch);
        CHECK_INT(acs_store_mailbox_delete(s, sub), 0);
        CHECK_INT(root_mtime(s), rb);
        CHECK(mb_mtime(s, arch) > a0);
        CHECK_INT(acs_store_mailbox_delete(s, arch), 0);
        CHECK(root_mtime(s) > rb);
        acs_store_close(s);
        tmp_done();
}

/* ---- op log ---- */

TEST(op_log)
{
        acs_store *s;
        acs_op a = { 0 }, b = { 0 }, c = { 0 }, got = { 0 };
        uint64_t count;
        int64_t body;

        tmp_init();
        s = open_new("o.db");
        a = (acs_op){ .kind = ACS_OP_FLAGS, .mailbox_id = 1, .uid = 7, .flags_add = ACS_FLAG_SEEN,
                      .flags_del = ACS_FLAG_FLAGGED, .keywords_add = (char *)"$Junk",
                      .keywords_del = (char *)"$NotJunk work" };
        CHECK_INT(acs_store_op_add(s, &a), -EINVAL); /* no transaction */
        CHECK_INT(acs_store_begin(s, false), 0);
        CHECK_INT(acs_store_op_add(s, &a), -EINVAL); /* not durable */
        acs_store_rollback(s);

        CHECK_INT(acs_store_op_count(s, &count), 0);
        CHECK_INT(count, 0);
        CHECK_INT(acs_store_op_next(s, 0, &got), -ENOENT);

        CHECK_INT(acs_store_begin(s, true), 0);
        CHECK_INT(acs_store_body_put(s, "body\n", 5, &body), 0);
        CHECK_INT(acs_store_op_add(s, &a), 0);
        b = (acs_op){ .kind = ACS_OP_APPEND, .mailbox_id = 2, .message_id = 3, .body_id = body,
                      .flags_add = ACS_FLAG_DRAFT, .internaldate = 1700000000 };
        CHECK_INT(acs_store_op_add(s, &b), 0);
        c = (acs_op){ .kind = ACS_OP_RENAME, .name = (char *)"Old/Ünïcode",
                      .new_name = (char *)"New" };
        CHECK_INT(acs_store_op_add(s, &c), 0);
        got = (acs_op){ .kind = ACS_OP_APPEND, .body_id = 99999 };
        CHECK_INT(acs_store_op_add(s, &got), -ENOENT);
        got = (acs_op){ .kind = 99 };
        CHECK_INT(acs_store_op_add(s, &got), -EINVAL);
        CHECK_INT(acs_store_commit(s), 0);
        CHECK(a.seq > 0 && b.seq > a.seq && c.seq > b.seq);
        CHECK_INT(acs_store_op_count(s, &count), 0);
        CHECK_INT(count, 3);

        got = (acs_op){ 0 };
        CHECK_INT(acs_store_op_next(s, 0, &got), 0);
        CHECK_INT(got.seq, a.seq);
        CHECK_INT(got.kind, ACS_OP_FLAGS);
        CHECK_INT(got.mailbox_id, 1);
        CHECK_INT(got.uid, 7);
        CHECK_INT(got.flags_add, ACS_FLAG_SEEN);
        CHECK_INT(got.flags_del, ACS_FLAG_FLAGGED);
        CHECK_STR(got.keywords_add, "$Junk");
        CHECK_STR(got.keywords_del, "$NotJunk work");
        CHECK(got.name == NULL && got.new_name == NULL && got.last_error == NULL);
        CHECK_INT(got.attempts, 0);
        acs_op_clear(&got);
        CHECK(got.keywords_add == NULL && got.seq == 0);
        acs_op_clear(NULL);

        CHECK_INT(acs_store_op_next(s, a.seq, &got), 0);
        CHECK_INT(got.seq, b.seq);
        CHECK_INT(got.body_id, body);
        CHECK_INT(got.message_id, 3);
        CHECK_INT(got.internaldate, 1700000000);
        CHECK(got.keywords_add == NULL);
        acs_op_clear(&got);

        /* failures count up and keep the last error */
        CHECK_INT(acs_store_op_failed(s, b.seq, "NO [TRYCREATE] no such mailbox"), 0);
        CHECK_INT(acs_store_op_failed(s, b.seq, "BAD oops"), 0);
        CHECK_INT(acs_store_op_failed(s, 99999, "x"), -ENOENT);
        CHECK_INT(acs_store_op_next(s, a.seq, &got), 0);
        CHECK_INT(got.attempts, 2);
        CHECK_STR(got.last_error, "BAD oops");
        acs_op_clear(&got);

        CHECK_INT(acs_store_op_next(s, b.seq, &got), 0);
        CHECK_STR(got.name, "Old/Ünïcode");
        CHECK_STR(got.new_name, "New");
        acs_op_clear(&got);
        CHECK_INT(acs_store_op_next(s, c.seq, &got), -ENOENT);

        /* done removes, in any order; the order of the rest is kept */
        CHECK_INT(acs_store_op_done(s, a.seq), 0);
        CHECK_INT(acs_store_op_done(s, a.seq), -ENOENT);
        CHECK_INT(acs_store_op_next(s, 0, &got), 0);
        CHECK_INT(got.seq, b.seq);
        acs_op_clear(&got);
        CHECK_INT(acs_store_op_done(s, c.seq), 0);
        CHECK_INT(acs_store_op_count(s, &count), 0);
        CHECK_INT(count, 1);
        CHECK_INT(acs_store_op_done(s, b.seq), 0);
        CHECK_INT(acs_store_body_size(s, body, &count), -ENOENT);
        acs_store_close(s);
        tmp_done();
}

TEST(op_resolve_uid)
{
        acs_store *s;
        acs_op append = { 0 }, flags = { 0 }, other = { 0 }, elsewhere = { 0 }, known = { 0 };
        acs_op got = { 0 };
        int64_t mb, mb2, msg, body;

        tmp_init();
        s = open_new("r.db");
        mb = add_mailbox(s, "INBOX", '/');
        mb2 = add_mailbox(s, "Sent", '/');
        CHECK_INT(acs_store_begin(s, true), 0);
        CHECK_INT(acs_store_body_put(s, "x\n", 2, &body), 0);
        msg = add_message(s, mb, 0, body);
        append = (acs_op){ .kind = ACS_OP_APPEND, .mailbox_id = mb, .message_id = msg,
                           .body_id = body };
        flags = (acs_op){ .kind = ACS_OP_FLAGS, .mailbox_id = mb, .message_id = msg,
                          .flags_add = ACS_FLAG_SEEN };
        /* another message's op and an op in another mailbox stay untouched */
        other = (acs_op){ .kind = ACS_OP_FLAGS, .mailbox_id = mb, .message_id = msg + 1 };
        elsewhere = (acs_op){ .kind = ACS_OP_FLAGS, .mailbox_id = mb2, .message_id = msg };
        known = (acs_op){ .kind = ACS_OP_FLAGS, .mailbox_id = mb, .message_id = msg, .uid = 3 };
        CHECK_INT(acs_store_op_add(s, &append), 0);
        CHECK_INT(acs_store_op_add(s, &flags), 0);
        CHECK_INT(acs_store_op_add(s, &other), 0);
        CHECK_INT(acs_store_op_add(s, &elsewhere), 0);
        CHECK_INT(acs_store_op_add(s, &known), 0);
        CHECK_INT(acs_store_commit(s), 0);

        CHECK_INT(acs_store_op_resolve_uid(s, msg, mb, 0), -EINVAL);
        CHECK_INT(acs_store_op_resolve_uid(s, 0, mb, 5), -EINVAL);
        CHECK_INT(acs_store_op_resolve_uid(s, msg, mb, 42), 2);
        CHECK_INT(acs_store_op_resolve_uid(s, msg, mb, 43), 0); /* nothing at 0 any more */
        int64_t after = 0;
        uint32_t want[] = { 42, 42, 0, 0, 3 };
        for (size_t i = 0; i < ACS_ARRAY_SIZE(want); i++) {
                CHECK_INT(acs_store_op_next(s, after, &got), 0);
                CHECK_INT(got.uid, want[i]);
                after = got.seq;
                acs_op_clear(&got);
        }
        /* inside a transaction it is part of it */
        CHECK_INT(acs_store_begin(s, true), 0);
        CHECK_INT(acs_store_op_resolve_uid(s, msg, mb2, 7), 1);
        acs_store_rollback(s);
        CHECK_INT(acs_store_op_next(s, other.seq, &got), 0);
        CHECK_INT(got.uid, 0);
        acs_op_clear(&got);
        acs_store_close(s);
        tmp_done();
}

TEST(message_set_body)
{
        acs_store *s;
        acs_message m = { 0 };
        int64_t mb, msg, b1, b2;
        uint64_t size;
        int64_t seq0, seq1;

        tmp_init();
        s = open_new("b.db");
        mb = add_mailbox(s, "INBOX", '/');
        msg = add_message(s, mb, 1, 0);
        CHECK_INT(acs_store_body_put(s, "one\n", 4, &b1), 0);
        CHECK_INT(acs_store_body_put(s, "two!\n", 5, &b2), 0);
        CHECK_INT(acs_store_change_last(s, &seq0), 0);
        CHECK_INT(acs_store_message_set_body(s, msg, b1), 0);
        CHECK_INT(acs_store_message_get(s, msg, &m), 0);
        CHECK_INT(m.body_id, b1);
        acs_message_clear(&m);
        /* the old body goes when nothing refers to it any more */
        CHECK_INT(acs_store_message_set_body(s, msg, b2), 0);
        CHECK_INT(acs_store_body_size(s, b1, &size), -ENOENT);
        CHECK_INT(acs_store_body_size(s, b2, &size), 0);
        CHECK_INT(size, 5);
        /* a body change is not a name change: no journal row */
        CHECK_INT(acs_store_change_last(s, &seq1), 0);
        CHECK_INT(seq1, seq0);
        CHECK_INT(acs_store_message_set_body(s, msg, 99999), -ENOENT);
        CHECK_INT(acs_store_message_set_body(s, msg + 100, b2), -ENOENT);
        CHECK_INT(acs_store_message_set_body(s, msg, -1), -EINVAL);
        CHECK_INT(acs_store_message_set_body(s, msg, 0), 0);
        CHECK_INT(acs_store_body_size(s, b2, &size), -ENOENT);
        CHECK_INT(acs_store_message_get(s, msg, &m), 0);
        CHECK_INT(m.body_id, 0);
        acs_message_clear(&m);
        acs_store_close(s);
        tmp_done();
}

/* ---- meta ---- */

TEST(meta)
{
        acs_store *s;
        char *v = NULL;

        tmp_init();
        s = open_new("meta.db");
        CHECK_INT(acs_store_meta_get(s, "caps", &v), -ENOENT);
        CHECK(v == NULL);
        CHECK_INT(acs_store_meta_set(s, "caps", "IMAP4rev1 QRESYNC"), 0);
        CHECK_INT(acs_store_meta_get(s, "caps", &v), 0);
        CHECK_STR(v, "IMAP4rev1 QRESYNC");
        free(v);
        CHECK_INT(acs_store_meta_set(s, "caps", "IMAP4rev2"), 0);
        CHECK_INT(acs_store_meta_get(s, "caps", &v), 0);
        CHECK_STR(v, "IMAP4rev2");
        free(v);
        CHECK_INT(acs_store_meta_set(s, "caps", NULL), 0);
        CHECK_INT(acs_store_meta_get(s, "caps", &v), -ENOENT);
        acs_store_close(s);
        tmp_done();
}

TEST(settle)
{
        acs_store *s, *ro;
        char *a = NULL, *b = NULL;

        tmp_init();
        s = open_new("settle.db");
        /* a new value every time: an unchanged cell would not be written at all */
        CHECK_INT(acs_store_settle(s), 0);
        CHECK_INT(acs_store_meta_get(s, "settled", &a), 0);
        CHECK_INT(acs_store_settle(s), 0);
        CHECK_INT(acs_store_meta_get(s, "settled", &b), 0);
        CHECK(a && b && strcmp(a, b) != 0);
        free(a);
        free(b);
        CHECK_INT(acs_store_begin(s, false), 0);
        CHECK_INT(acs_store_settle(s), -EINVAL); /* not inside a transaction */
        acs_store_rollback(s);
        ro = NULL;
        CHECK_INT(acs_store_open(tmp_path("settle.db"), ACS_STORE_READONLY, &ro, NULL), 0);
        if (ro)
                CHECK_INT(acs_store_settle(ro), -EROFS);
        acs_store_close(ro);
        acs_store_close(s);
        tmp_done();
}

/* ---- two handles ---- */

TEST(writer_and_reader)
{
        acs_store *w, *rd = NULL;
        acs_mailbox mb = { 0 };
        char *err = NULL;
        int64_t id, seq = -1;
        uint64_t count;

        tmp_init();
        w = open_new("wr.db");
        CHECK_INT(acs_store_open(tmp_path("wr.db"), ACS_STORE_READONLY, &rd, &err), 0);
        CHECK_INT(acs_store_begin(w, false), 0);
        id = add_mailbox(w, "INBOX", '/');
        add_message(w, id, 1, 0);
        /* not committed: the reader does not see it, and is not blocked */
        CHECK_INT(acs_store_mailbox_get(rd, "INBOX", &mb), -ENOENT);
        CHECK_INT(acs_store_change_last(rd, &seq), 0);
        CHECK_INT(seq, 0);
        CHECK_INT(acs_store_commit(w), 0);
        CHECK_INT(acs_store_mailbox_get(rd, "INBOX", &mb), 0);
        CHECK_INT(mb.id, id);
        acs_mailbox_clear(&mb);
        CHECK_INT(acs_store_message_count(rd, id, &count, NULL), 0);
        CHECK_INT(count, 1);
        CHECK_INT(acs_store_change_last(rd, &seq), 0);
        CHECK_INT(seq, 2);

        /* a reader keeping a body open between reads is not stuck in the past */
        {
                int64_t body = 0;
                size_t n;
                char buf[8];

                CHECK_INT(acs_store_begin(w, false), 0);
                CHECK_INT(acs_store_body_put(w, "abc", 3, &body), 0);
                CHECK_INT(acs_store_commit(w), 0);
                /* a reader with a cached blob handle still sees later commits */
                CHECK_INT(acs_store_body_read(rd, body, 0, buf, 2, &n), 0);
                CHECK_INT(acs_store_begin(w, false), 0);
                add_mailbox(w, "Later", '/');
                CHECK_INT(acs_store_commit(w), 0);
                CHECK_INT(acs_store_mailbox_get(rd, "Later", &mb), 0);
                acs_mailbox_clear(&mb);
        }
        acs_store_close(rd);
        acs_store_close(w);
        tmp_done();
}

TEST(busy_writer)
{
        acs_store *w, *w2;
        struct timespec a, b;
        double secs;

        tmp_init();
        w = open_new("busy.db");
        w2 = open_new("busy.db");
        CHECK_INT(acs_store_begin(w, false), 0);
        clock_gettime(CLOCK_MONOTONIC, &a);
        CHECK_INT(acs_store_begin(w2, false), -EBUSY);
        clock_gettime(CLOCK_MONOTONIC, &b);
        secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
        CHECK(secs >= 4.5); /* the busy timeout is 5 s */
        CHECK_INT(acs_store_meta_set(w2, "k", "v"), -EBUSY);
        acs_store_rollback(w);
        CHECK_INT(acs_store_begin(w2, false), 0);
        CHECK_INT(acs_store_commit(w2), 0);
        acs_store_close(w2);
        acs_store_close(w);
        tmp_done();
}

/* ---- threads: one writer and readers with their own handles (acs-fs's pattern) ---- */

struct thr {
        const char *path;
        int64_t mailbox;
        int done; /* atomic */
        int errors;
        uint64_t reads;
};

static void body_for_uid(uint32_t uid, char *buf, size_t *len)
{
        *len = (size_t)snprintf(buf, 200, "Subject: message %u\n\n%0*u\n", uid, (int)(uid % 97) + 1, uid);
}

static void *writer_thread(void *arg)
{
        struct thr *t = arg;
        acs_store *s = NULL;
        uint32_t uid = 0;

        if (acs_store_open(t->path, 0, &s, NULL) < 0) {
                __atomic_add_fetch(&t->errors, 1, __ATOMIC_SEQ_CST);
                __atomic_store_n(&t->done, 1, __ATOMIC_SEQ_CST);
                return NULL;
        }
        for (int tx = 0; tx < 30; tx++) {
                if (acs_store_begin(s, false) < 0) {
                        __atomic_add_fetch(&t->errors, 1, __ATOMIC_SEQ_CST);
                        continue;
                }
                for (int i = 0; i < 40; i++) {
                        char body[200];
                        size_t len;
                        int64_t b;

                        uid++;
                        body_for_uid(uid, body, &len);
                        acs_message m = { .mailbox_id = t->mailbox, .uid = uid, .size = len,
                                          .vsize = len + 2, .internaldate = uid };
                        if (acs_store_body_put(s, body, len, &b) < 0)
                                __atomic_add_fetch(&t->errors, 1, __ATOMIC_SEQ_CST);
                        m.body_id = b;
                        if (acs_store_message_add(s, &m) < 0)
                                __atomic_add_fetch(&t->errors, 1, __ATOMIC_SEQ_CST);
                        free(m.uniq);
                }
                if (acs_store_commit(s) < 0)
                        __atomic_add_fetch(&t->errors, 1, __ATOMIC_SEQ_CST);
        }
        acs_store_close(s);
        __atomic_store_n(&t->done, 1, __ATOMIC_SEQ_CST);
        return NULL;
}

struct reader_ctx {
        acs_store *s;
        struct thr *t;
        int errors;
        uint64_t reads;
};

static int reader_check(const acs_message *m, void *userdata)
{
        struct reader_ctx *rc = userdata;
        char want[200], got[256];
        size_t len, n = 0, off = 0;

        body_for_uid(m->uid, want, &len);
        /* read in two pieces, so the cached blob handle is used */
        if (acs_store_body_read(rc->s, m->body_id, 0, got, 7, &n) < 0)
                return -EIO;
        off = n;
        if (acs_store_body_read(rc->s, m->body_id, off, got + off, sizeof(got) - off, &n) < 0)
                return -EIO;
        off += n;
        if (off != len || memcmp(got, want, len) != 0 || m->size != len)
                rc->errors++;
        rc->reads++;
        return 0;
}

static void *reader_thread(void *arg)
{
        struct thr *t = arg;
        struct reader_ctx rc = { .t = t };
        uint64_t last = 0;

        if (acs_store_open(t->path, ACS_STORE_READONLY, &rc.s, NULL) < 0) {
                __atomic_add_fetch(&t->errors, 1, __ATOMIC_SEQ_CST);
                return NULL;
        }
        for (int round = 0;; round++) {
                int done = __atomic_load_n(&t->done, __ATOMIC_SEQ_CST);
                uint64_t count = 0;

                if (acs_store_message_count(rc.s, t->mailbox, &count, NULL) < 0 || count < last ||
                    count % 40 != 0) /* whole transactions only */
                        rc.errors++;
                last = count;
                if (acs_store_message_list(rc.s, t->mailbox, 0, 0, reader_check, &rc) < 0)
                        rc.errors++;
                if (done)
                        break;
                /* let the writer run: under valgrind (one thread at a time) readers that never
                 * pause starve it, and the test took minutes instead of seconds */
                usleep(1000);
        }
        if (last != 1200)
                rc.errors++;
        acs_store_close(rc.s);
        __atomic_add_fetch(&t->errors, rc.errors, __ATOMIC_SEQ_CST);
        __atomic_add_fetch(&t->reads, rc.reads, __ATOMIC_SEQ_CST);
        return NULL;
}

TEST(threads_writer_readers)
{
        struct thr t = { 0 };
        pthread_t w, r[3];
        acs_store *s;

        tmp_init();
        s = open_new("th.db");
        t.path = tmp_path("th.db");
        t.mailbox = add_mailbox(s, "INBOX", '/');
        for (int i = 0; i < 3; i++)
                CHECK(pthread_create(&r[i], NULL, reader_thread, &t) == 0);
        CHECK(pthread_create(&w, NULL, writer_thread, &t) == 0);
        pthread_join(w, NULL);
        for (int i = 0; i < 3; i++)
                pthread_join(r[i], NULL);
        CHECK_INT(t.errors, 0);
        CHECK(t.reads >= 3 * 1200);
        printf("# %llu message bodies read and checked by 3 reader threads\n",
               (unsigned long long)t.reads);
        acs_store_close(s);
        tmp_done();
}

/* ---- durability: count the syncs SQLite does, through a wrapping VFS ---- */

struct cfile {
        sqlite3_file base;
        sqlite3_file *real;
};

static sqlite3_vfs *real_vfs;
static int sync_count;
static int fail_writes; /* when set, writes fail with SQLITE_FULL */

#define REAL(f) (((struct cfile *)(f))->real)
static int c_close(sqlite3_file *f)
{
        int rc = REAL(f)->pMethods ? REAL(f)->pMethods->xClose(REAL(f)) : SQLITE_OK;

        sqlite3_free(REAL(f));
        return rc;
}
static int c_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o) { return REAL(f)->pMethods->xRead(REAL(f), b, n, o); }
static int c_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
        return fail_writes ? SQLITE_FULL : REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}
static int c_truncate(sqlite3_file *f, sqlite3_int64 n) { return REAL(f)->pMethods->xTruncate(REAL(f), n); }
static int c_sync(sqlite3_file *f, int flags) { sync_count++; return REAL(f)->pMethods->xSync(REAL(f), flags); }
static int c_size(sqlite3_file *f, sqlite3_int64 *n) { return REAL(f)->pMethods->xFileSize(REAL(f), n); }
static int c_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int c_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int c_reserved(sqlite3_file *f, int *r) { return REAL(f)->pMethods->xCheckReservedLock(REAL(f), r); }
static int c_fcntl(sqlite3_file *f, int op, void *a) { return REAL(f)->pMethods->xFileControl(REAL(f), op, a); }
static int c_sector(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int c_devchar(sqlite3_file *f) { return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f)); }
static int c_shmmap(sqlite3_file *f, int i, int sz, int ext, void volatile **p) { return REAL(f)->pMethods->xShmMap(REAL(f), i, sz, ext, p); }
static int c_shmlock(sqlite3_file *f, int o, int n, int fl) { return REAL(f)->pMethods->xShmLock(REAL(f), o, n, fl); }
static void c_shmbarrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int c_shmunmap(sqlite3_file *f, int del) { return REAL(f)->pMethods->xShmUnmap(REAL(f), del); }
static int c_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **p) { return REAL(f)->pMethods->xFetch(REAL(f), o, n, p); }
static int c_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p) { return REAL(f)->pMethods->xUnfetch(REAL(f), o, p); }

static const sqlite3_io_methods c_methods = {
        .iVersion = 3, .xClose = c_close, .xRead = c_read, .xWrite = c_write,
        .xTruncate = c_truncate, .xSync = c_sync, .xFileSize = c_size, .xLock = c_lock,
        .xUnlock = c_unlock, .xCheckReservedLock = c_reserved, .xFileControl = c_fcntl,
        .xSectorSize = c_sector, .xDeviceCharacteristics = c_devchar, .xShmMap = c_shmmap,
        .xShmLock = c_shmlock, .xShmBarrier = c_shmbarrier, .xShmUnmap = c_shmunmap,
        .xFetch = c_fetch, .xUnfetch = c_unfetch,
};

static int c_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *f, int flags, int *out)
{
        struct cfile *c = (struct cfile *)f;
        int rc;

        c->base.pMethods = NULL;
        c->real = sqlite3_malloc(real_vfs->szOsFile);
        if (!c->real)
                return SQLITE_NOMEM;
        memset(c->real, 0, real_vfs->szOsFile);
        rc = real_vfs->xOpen(real_vfs, name, c->real, flags, out);
        if (c->real->pMethods)
                c->base.pMethods = &c_methods;
        else
                sqlite3_free(c->real);
        return rc;
}

TEST(durable_commits_sync)
{
        static sqlite3_vfs counting;
        acs_store *s;
        int normal, durable;

        tmp_init();
        real_vfs = sqlite3_vfs_find(NULL);
        counting = *real_vfs;
        counting.zName = "acs-test-counting";
        counting.szOsFile = (int)sizeof(struct cfile);
        counting.xOpen = c_open;
        counting.pAppData = NULL;
        CHECK(sqlite3_vfs_register(&counting, 1) == SQLITE_OK);

        s = open_new("d.db");
        add_mailbox(s, "INBOX", '/');
        sync_count = 0;
        for (int i = 0; i < 20; i++) {
                char k[16];

                snprintf(k, sizeof(k), "n%d", i);
                CHECK_INT(acs_store_begin(s, false), 0);
                CHECK_INT(acs_store_meta_set(s, k, "v"), 0);
                CHECK_INT(acs_store_commit(s), 0);
        }
        normal = sync_count;
        sync_count = 0;
        for (int i = 0; i < 20; i++) {
                char k[16];

                snprintf(k, sizeof(k), "d%d", i);
                CHECK_INT(acs_store_begin(s, true), 0);
                CHECK_INT(acs_store_meta_set(s, k, "v"), 0);
                CHECK_INT(acs_store_commit(s), 0);
        }
        durable = sync_count;
        /* and back to NORMAL after a durable commit */
        sync_count = 0;
        for (int i = 0; i < 20; i++) {
                char k[16];

                snprintf(k, sizeof(k), "m%d", i);
                CHECK_INT(acs_store_meta_set(s, k, "v"), 0);
        }
        printf("# syncs for 20 commits: normal %d, durable %d, normal again %d\n", normal,
               durable, sync_count);
        CHECK(durable >= 20);
        CHECK(normal < 5);
        CHECK(sync_count < 5);
        acs_store_close(s);
        sqlite3_vfs_register(real_vfs, 1);
        sqlite3_vfs_unregister(&counting);
        tmp_done();
}

/* A disk-full error in the middle of a transaction: SQLite rolls it back on its own; the
 * store must then refuse further writes and the commit instead of autocommitting them. */
TEST(disk_full_mid_transaction)
{
        static sqlite3_vfs failing;
        const size_t big = 8 << 20; /* larger than the page cache: spills to the WAL */
        unsigned char *data = malloc(big);
        acs_store *s;
        int64_t id = 0;
        char *v = NULL;
        int r;

        tmp_init();
        fill_random(data, big, 3);
        real_vfs = sqlite3_vfs_find(NULL);
        failing = *real_vfs;
        failing.zName = "acs-test-failing";
        failing.szOsFile = (int)sizeof(struct cfile);
        failing.xOpen = c_open;
        CHECK(sqlite3_vfs_register(&failing, 1) == SQLITE_OK);

        s = open_new("full.db");
        CHECK_INT(acs_store_begin(s, false), 0);
        CHECK_INT(acs_store_meta_set(s, "before", "1"), 0);
        fail_writes = 1;
        r = acs_store_body_put(s, data, big, &id);
        fail_writes = 0;
        printf("# body_put with writes failing: %d (%s)\n", r, acs_store_errmsg(s));
        CHECK_INT(r, -ENOSPC);
        /* SQLite rolled the whole transaction back (the page cache spill failed): the
         * store refuses to go on as if it were still open, nothing autocommits */
        CHECK_INT(acs_store_meta_set(s, "after", "1"), -EIO);
        CHECK_INT(acs_store_body_write(s, 1, 0, "x", 1), -EIO);
        CHECK_INT(acs_store_commit(s), -EIO);
        CHECK_INT(acs_store_meta_get(s, "before", &v), -ENOENT);
        CHECK_INT(acs_store_meta_get(s, "after", &v), -ENOENT);
        /* the handle is usable again */
        CHECK_INT(acs_store_begin(s, false), 0);
        CHECK_INT(acs_store_meta_set(s, "later", "1"), 0);
        CHECK_INT(acs_store_commit(s), 0);
        acs_store_close(s);
        sqlite3_vfs_register(real_vfs, 1);
        sqlite3_vfs_unregister(&failing);
        free(data);
        tmp_done();
}

/*
 * A writer killed mid-transaction: what it committed is there, the rest is not. The
 * writer is this program re-executed (so no SQLite state crosses fork() and valgrind does
 * not follow it); this constructor plays its part when ACS_TEST_CRASH_WRITER names a db.
 */
__attribute__((constructor)) static void crash_writer_child(void)
{
        const char *path = getenv("ACS_TEST_CRASH_WRITER");
        acs_store *c = NULL;
        acs_mailbox m = { .name = (char *)"Committed", .delim = '/' };
        acs_op op = { .kind = ACS_OP_CREATE, .name = (char *)"Committed" };

        if (!path)
                return;
        if (acs_store_open(path, 0, &c, NULL) < 0 || acs_store_begin(c, true) < 0 ||
            acs_store_mailbox_put(c, &m) < 0 || acs_store_op_add(c, &op) < 0 ||
            acs_store_commit(c) < 0)
                _exit(4);
        m = (acs_mailbox){ .name = (char *)"Uncommitted", .delim = '/' };
        if (acs_store_begin(c, true) < 0 || acs_store_mailbox_put(c, &m) < 0)
                _exit(5);
        kill(getpid(), SIGKILL);
        _exit(6);
}

TEST(crash_recovery)
{
        acs_store *s;
        acs_mailbox mb = { 0 };
        char wal[600];
        pid_t pid;
        int status = -1;
        uint64_t count = 0;

        tmp_init();
        s = open_new("cr.db");
        acs_store_close(s);
        /* readlink, not exec of /proc/self/exe: valgrind virtualizes only the former */
        char self[512];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

        CHECK(n > 0);
        self[n > 0 ? n : 0] = '\0';
        pid = fork();
        if (pid == 0) {
                setenv("ACS_TEST_CRASH_WRITER", tmp_path("cr.db"), 1);
                execl(self, "test-store", "none", (char *)NULL);
                _exit(7);
        }
        waitpid(pid, &status, 0);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        snprintf(wal, sizeof(wal), "%s-wal", tmp_path("cr.db"));
        CHECK(access(wal, F_OK) == 0); /* the WAL was left behind, not checkpointed */
        s = open_new("cr.db");
        CHECK_INT(acs_store_mailbox_get(s, "Committed", &mb), 0);
        acs_mailbox_clear(&mb);
        CHECK_INT(acs_store_mailbox_get(s, "Uncommitted", &mb), -ENOENT);
        CHECK_INT(acs_store_op_count(s, &count), 0);
        CHECK_INT(count, 1);
        acs_store_close(s);
        s = NULL;
        CHECK_INT(acs_store_open(tmp_path("cr.db"), ACS_STORE_CHECK, &s, NULL), 0);
        acs_store_close(s);
        tmp_done();
}

/* ---- bad database files ---- */

static void make_real_db(const char *path, int rows)
{
        acs_store *s = NULL;
        char *err = NULL;
        int64_t mb;

        CHECK_INT(acs_store_open(path, ACS_STORE_CREATE, &s, &err), 0);
        if (!s)
                exit(2);
        CHECK_INT(acs_store_begin(s, false), 0);
        mb = add_mailbox(s, "INBOX", '/');
        for (int i = 1; i <= rows; i++) {
                char body[2048];

                fill_random((unsigned char *)body, sizeof(body), (uint64_t)i);
                int64_t b;
                CHECK_INT(acs_store_body_put(s, body, sizeof(body), &b), 0);
                add_message(s, mb, (uint32_t)i, b);
        }
        CHECK_INT(acs_store_commit(s), 0);
        acs_store_close(s);
}

static void sql_exec_file(const char *path, const char *sql)
{
        sqlite3 *db = NULL;

        if (sqlite3_open(path, &db) != SQLITE_OK || sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
                printf("# sqlite: %s\n", sqlite3_errmsg(db));
                exit(2);
        }
        sqlite3_close(db);
}

enum bad_kind { BAD_EMPTY, BAD_RANDOM, BAD_TRUNCATED, BAD_TEXT, BAD_NEWER, BAD_FOREIGN,
                BAD_FOREIGN_VERSIONED, BAD_DIRECTORY };

static const struct bad_case {
        const char *name;
        enum bad_kind kind;
        int expect;
        const char *msg; /* expected in the error message */
} bad_cases[] = {
        { "empty file", BAD_EMPTY, -EBADMSG, "not an acs cache database" },
        { "random bytes", BAD_RANDOM, -EBADMSG, "not an acs cache database" },
        { "truncated to half", BAD_TRUNCATED, -EBADMSG, "truncated" },
        { "text file", BAD_TEXT, -EBADMSG, "not an acs cache database" },
        { "user_version 99", BAD_NEWER, -EPROTO, "schema version 99 is newer than this program's 1" },
        { "foreign SQLite database", BAD_FOREIGN, -EBADMSG, "not an acs cache database" },
        { "foreign database with user_version", BAD_FOREIGN_VERSIONED, -EBADMSG, "not an acs cache database" },
        { "a directory", BAD_DIRECTORY, -EISDIR, "not an acs cache database" },
};

static void make_bad(const struct bad_case *bc, const char *path)
{
        unsigned char *buf;
        size_t len;

        switch (bc->kind) {
        case BAD_EMPTY:
                write_file(path, "", 0);
                break;
        case BAD_RANDOM:
                buf = malloc(8192);
                fill_random(buf, 8192, 7);
                write_file(path, buf, 8192);
                free(buf);
                break;
        case BAD_TRUNCATED:
                make_real_db(path, 40);
                buf = read_file(path, &len);
                CHECK(len > 40 * 2048);
                write_file(path, buf, len / 2);
                free(buf);
                break;
        case BAD_TEXT: {
                const char *t = "Hello, this is a text file and not a database at all.\n"
                                "It has more than one hundred bytes so the header check reads all of it.\n";
                write_file(path, t, strlen(t));
                break;
        }
        case BAD_NEWER:
                make_real_db(path, 1);
                sql_exec_file(path, "PRAGMA user_version = 99");
                break;
        case BAD_FOREIGN:
                sql_exec_file(path, "CREATE TABLE t (x); INSERT INTO t VALUES (1)");
                break;
        case BAD_FOREIGN_VERSIONED:
                sql_exec_file(path, "PRAGMA journal_mode = WAL; CREATE TABLE message (x);"
                                    " PRAGMA user_version = 1");
                break;
        case BAD_DIRECTORY:
                mkdir(path, 0700);
                break;
        }
}

TEST(bad_files)
{
        tmp_init();
        for (size_t i = 0; i < ACS_ARRAY_SIZE(bad_cases); i++) {
                const struct bad_case *bc = &bad_cases[i];
                static const unsigned flag_sets[] = { 0, ACS_STORE_CREATE, ACS_STORE_READONLY,
                                                      ACS_STORE_CHECK | ACS_STORE_CREATE };
                char name[64];
                const char *path;
                unsigned char *before = NULL, *after;
                size_t blen = 0, alen;

                snprintf(name, sizeof(name), "bad%zu.db", i);
                path = tmp_path(name);
                make_bad(bc, path);
                if (bc->kind != BAD_DIRECTORY)
                        before = read_file(path, &blen);
                for (size_t f = 0; f < ACS_ARRAY_SIZE(flag_sets); f++) {
                        acs_store *s = NULL;
                        char *err = NULL;
                        int r = acs_store_open(path, flag_sets[f], &s, &err);

                        if (r != bc->expect || !err || !strstr(err, path) ||
                            !strstr(err, bc->msg)) {
                                printf("#   %s (flags %u): got %d \"%s\", expected %d \"%s\"\n",
                                       bc->name, flag_sets[f], r, err ? err : "(null)",
                                       bc->expect, bc->msg);
                                test_failed_checks++;
                        }
                        CHECK(s == NULL);
                        free(err);
                        acs_store_close(s);
                }
                if (bc->kind != BAD_DIRECTORY) {
                        after = read_file(path, &alen);
                        if (!after || alen != blen || memcmp(before, after, blen) != 0) {
                                printf("#   %s: the file changed\n", bc->name);
                                test_failed_checks++;
                        }
                        free(after);
                        free(before);
                        /* no WAL or SHM file was left behind either */
                        char side[600];
                        snprintf(side, sizeof(side), "%s-wal", path);
                        CHECK(access(side, F_OK) < 0);
                }
        }
        /* a NULL ret_error is fine */
        {
                acs_store *s = NULL;

                CHECK_INT(acs_store_open(tmp_path("bad0.db"), 0, &s, NULL), -EBADMSG);
        }
        tmp_done();
}

TEST(check_flag_good_db)
{
        acs_store *s = NULL;
        char *err = NULL;

        tmp_init();
        make_real_db(tmp_path("good.db"), 20);
        CHECK_INT(acs_store_open(tmp_path("good.db"), ACS_STORE_CHECK | ACS_STORE_READONLY, &s, &err), 0);
        CHECK(err == NULL);
        acs_store_close(s);
        tmp_done();
}

TEST(corrupt_page_detected_by_check)
{
        acs_store *s = NULL;
        char *err = NULL;
        unsigned char *buf;
        sqlite3 *db = NULL;
        sqlite3_stmt *st = NULL;
        int64_t root = 0;
        size_t len;
        int r;

        tmp_init();
        make_real_db(tmp_path("c.db"), 400);
        /* the root page of an index: the schema stays readable, only quick_check sees it */
        CHECK(sqlite3_open(tmp_path("c.db"), &db) == SQLITE_OK);
        CHECK(sqlite3_prepare_v2(db, "SELECT rootpage FROM sqlite_schema WHERE name = 'message_body'",
                                 -1, &st, NULL) == SQLITE_OK);
        if (sqlite3_step(st) == SQLITE_ROW)
                root = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(db);
        CHECK(root > 1);
        buf = read_file(tmp_path("c.db"), &len);
        CHECK((size_t)root * 4096 <= len);
        memset(buf + (root - 1) * 4096 + 12, 0xA5, 200); /* its cell pointers */
        write_file(tmp_path("c.db"), buf, len);
        free(buf);

        r = acs_store_open(tmp_path("c.db"), 0, &s, &err);
        CHECK_INT(r, 0); /* without CHECK the damage goes unnoticed at open */
        s = acs_store_close(s);
        r = acs_store_open(tmp_path("c.db"), ACS_STORE_CHECK | ACS_STORE_READONLY, &s, &err);
        CHECK_INT(r, -EBADMSG);
        CHECK(s == NULL);
        CHECK(err && strstr(err, "corrupt acs cache database") && strstr(err, tmp_path("c.db")));
        if (err)
                printf("# %s\n", err);
        free(err);
        tmp_done();
}

/* The triggers work for writers that are not this library (the sqlite3 shell). */
TEST(triggers_without_library)
{
        acs_store *s;
        struct rec rec = { 0 };
        int64_t mb;

        tmp_init();
        s = open_new("sh.db");
        mb = add_mailbox(s, "INBOX", '/');
        acs_store_close(s);
        sql_exec_file(tmp_path("sh.db"),
                      "INSERT INTO message (mailbox_id, uid, internaldate, size, vsize, uniq)"
                      " VALUES (1, 1, 5, 1, 1, 'x');"
                      "UPDATE message SET flags = 16 WHERE uid = 1;");
        s = open_new("sh.db");
        CHECK_INT(acs_store_changes_since(s, 0, rec_cb, &rec), 0);
        CHECK_INT(rec.n, 3);
        CHECK_INT(rec.c[1].kind, ACS_CHANGE_MESSAGE_ADDED);
        CHECK_INT(rec.c[1].mailbox_id, mb);
        CHECK_INT(rec.c[2].kind, ACS_CHANGE_MESSAGE_CHANGED);
        CHECK_STR(rec.c[2].old_uniq, "x");

        /* a body detached from its only message by an UPDATE is collected too */
        {
                int64_t b1 = 0, b2 = 0;
                uint64_t size;
                char sql[200];

                CHECK_INT(acs_store_body_put(s, "one\n", 4, &b1), 0);
                CHECK_INT(acs_store_body_put(s, "two\n", 4, &b2), 0);
                acs_store_close(s);
                snprintf(sql, sizeof(sql), "UPDATE message SET body_id = %lld WHERE uid = 1;"
                         " UPDATE message SET body_id = %lld WHERE uid = 1",
                         (long long)b1, (long long)b2);
                sql_exec_file(tmp_path("sh.db"), sql);
                s = open_new("sh.db");
                CHECK_INT(acs_store_body_size(s, b1, &size), -ENOENT);
                CHECK_INT(acs_store_body_size(s, b2, &size), 0);
        }
        /* uniq: '/' and ':' are refused, ',' is allowed */
        {
                acs_message m = { .mailbox_id = mb, .uid = 2, .uniq = (char *)"a/b" };

                CHECK_INT(acs_store_message_add(s, &m), -EINVAL);
                m.uniq = (char *)"a:2,S";
                CHECK_INT(acs_store_message_add(s, &m), -EINVAL);
                m.uniq = (char *)"";
                CHECK_INT(acs_store_message_add(s, &m), -EINVAL);
                m.uniq = (char *)"1700000000.1_2.host,U=5";
                CHECK_INT(acs_store_message_add(s, &m), 0);
        }
        acs_store_close(s);
        tmp_done();
}

TEST_MAIN()
