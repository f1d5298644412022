/* SPDX-License-Identifier: MIT */
/* acs-import: fills a cache database from a Maildir++ directory through the store API (benchmarks and development). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "acs/maildir.h"
#include "acs/mboxname.h"
#include "acs/store.h"
#include "acs/util.h"

#define BATCH 1000 /* messages per transaction */

typedef struct importer {
        acs_store *s;
        size_t in_txn;
        uint64_t messages, mailboxes;
        bool verbose;
} importer;

/* Opens the batch transaction when none is open. */
static int txn_open(importer *im)
{
        int r;

        if (im->in_txn > 0)
                return 0;
        r = acs_store_begin(im->s, false);
        if (r == 0)
                im->in_txn = 1;
        return r;
}

/* Counts one message; commits every BATCH. */
static int txn_step(importer *im)
{
        if (++im->in_txn > BATCH) {
                im->in_txn = 0;
                return acs_store_commit(im->s);
        }
        return 0;
}

static int txn_end(importer *im)
{
        if (im->in_txn == 0)
                return 0;
        im->in_txn = 0;
        return acs_store_commit(im->s);
}

/* Reads a whole file; *ret is malloc'd (NUL-terminated for convenience). */
static int read_file(const char *path, char **ret, size_t *ret_len)
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;

        if (fd < 0 || fstat(fd, &st) < 0)
                return -errno;
        char *buf = malloc((size_t)st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        size_t n = 0;
        while (n < (size_t)st.st_size) {
                ssize_t k = read(fd, buf + n, (size_t)st.st_size - n);
                if (k < 0) {
                        int e = -errno;
                        free(buf);
                        return e;
                }
                if (k == 0)
                        break;
                n += (size_t)k;
        }
        buf[n] = 0;
        *ret = buf;
        *ret_len = n;
        return 0;
}

/* Dovecot's dovecot-keywords: "<index> <keyword>" lines; names[i] malloc'd or NULL. */
static void read_keywords(const char *dir, char *names[26])
{
        _cleanup_free_ char *path = NULL, *data = NULL;
        size_t len;

        if (asprintf(&path, "%s/dovecot-keywords", dir) < 0 || read_file(path, &data, &len) < 0)
                return;
        char *save = NULL;
        for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                char *sp = strchr(line, ' ');
                if (!sp)
                        continue;
                int i = atoi(line);
                if (i >= 0 && i < 26 && !names[i])
                        names[i] = strdup(sp + 1);
        }
}

static int cmp_str(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Keywords of a parsed name as a space-separated list in byte order; *ret malloc'd.
 * $Forwarded is the system flag P in the cache (store.h), so it sets *flags instead.
 */
static int keywords_string(uint32_t bits, char *const names[26], unsigned *flags, char **ret)
{
        char *list[26];
        size_t n = 0, len = 1;

        for (int i = 0; i < 26; i++)
                if ((bits & (UINT32_C(1) << i)) && names[i] && strcasecmp(names[i], "$Forwarded") == 0)
                        *flags |= ACS_FLAG_PASSED;
                else if ((bits & (UINT32_C(1) << i)) && names[i]) {
                        list[n++] = names[i];
                        len += strlen(names[i]) + 1;
                }
        qsort(list, n, sizeof(list[0]), cmp_str);
        char *s = malloc(len);
        if (!s)
                return -ENOMEM;
        s[0] = 0;
        for (size_t i = 0; i < n; i++) {
                if (i)
                        strcat(s, " ");
                strcat(s, list[i]);
        }
        *ret = s;
        return 0;
}

static int import_message(importer *im, int64_t mailbox_id, const char *path, const char *name,
                          bool in_new, char *const kwnames[26], uint32_t uid)
{
        acs_mdname mn = { 0 };
        _cleanup_free_ char *data = NULL, *kw = NULL;
        const char *why;
        struct stat st;
        size_t len;
        int r;

        if (acs_mdname_parse(name, &mn, &why) < 0) {
                fprintf(stderr, "acs-import: skipping %s: %s\n", path, why);
                return 0;
        }
        r = stat(path, &st);
        if (r < 0) {
                r = -errno;
                goto out;
        }
        r = read_file(path, &data, &len);
        if (r < 0)
                goto out;
        len = acs_crlf_to_lf(data, len);
        r = txn_open(im);
        if (r < 0)
                goto out;
        r = keywords_string(mn.keywords, kwnames, &mn.flags, &kw);
        if (r < 0)
                goto out;
        /* every keyword gets a letter in the cache's own table */
        if (*kw) {
                _cleanup_free_ char *copy = strdup(kw);
                char *save = NULL;
                if (!copy) {
                        r = -ENOMEM;
                        goto out;
                }
                for (char *k = strtok_r(copy, " ", &save); k; k = strtok_r(NULL, " ", &save)) {
                        int idx;
                        r = acs_store_keyword_index(im->s, k, true, &idx);
                        if (r < 0 && r != -ENOSPC)
                                goto out;
                }
        }
        acs_message m = {
                .mailbox_id = mailbox_id,
                .uid = uid,
                .modseq = 1,
                .flags = mn.flags,
                .keywords = kw,
                .internaldate = st.st_mtim.tv_sec,
                .size = len,
                .vsize = acs_lf_vsize(data, len),
                .state = in_new ? ACS_MSG_NEW : 0,
        };
        r = acs_store_body_put(im->s, data, len, &m.body_id);
        if (r < 0)
                goto out;
        r = acs_store_message_add(im->s, &m);
        free(m.uniq); /* generated by the store */
        if (r < 0)
                goto out;
        im->messages++;
        r = txn_step(im);
out:
        acs_mdname_clear(&mn);
        return r;
}

typedef struct entry {
        char *name;
        bool in_new;
        time_t mtime;
} entry;

static int cmp_entry(const void *a, const void *b)
{
        const entry *x = a, *y = b;

        if (x->mtime != y->mtime)
                return x->mtime < y->mtime ? -1 : 1;
        return strcmp(x->name, y->name);
}

/* Imports one Maildir folder (dir with cur/new) as mailbox name. */
static int import_folder(importer *im, const char *dir, const char *name, char delim)
{
        char *kwnames[26] = { 0 };
        entry *v = NULL;
        size_t n = 0, cap = 0;
        int r;

        acs_mailbox mb = { .name = (char *)name, .delim = delim };
        r = acs_store_begin(im->s, false);
        if (r < 0)
                return r;
        r = acs_store_mailbox_put(im->s, &mb);
        if (r < 0) {
                acs_store_rollback(im->s);
                return r;
        }
        r = acs_store_commit(im->s);
        if (r < 0)
                return r;
        im->mailboxes++;
        read_keywords(dir, kwnames);

        /* arrival order (mtime, then name) so uids grow like on the server */
        for (int k = 0; k < 2; k++) {
                _cleanup_free_ char *sub = NULL;
                if (asprintf(&sub, "%s/%s", dir, k ? "cur" : "new") < 0) {
                        r = -ENOMEM;
                        goto out;
                }
                DIR *d = opendir(sub);
                if (!d)
                        continue;
                struct dirent *de;
                while ((de = readdir(d))) {
                        if (de->d_name[0] == '.')
                                continue;
                        _cleanup_free_ char *p = NULL;
                        struct stat st;
                        if (asprintf(&p, "%s/%s", sub, de->d_name) < 0 || stat(p, &st) < 0 ||
                            !S_ISREG(st.st_mode))
                                continue;
                        if (n == cap) {
                                cap = cap ? cap * 2 : 256;
                                entry *nv = realloc(v, cap * sizeof(*v));
                                if (!nv) {
                                        closedir(d);
                                        r = -ENOMEM;
                                        goto out;
                                }
                                v = nv;
                        }
                        v[n++] = (entry){ .name = strdup(de->d_name), .in_new = k == 0,
                                          .mtime = st.st_mtim.tv_sec };
                }
                closedir(d);
        }
        if (n > 0)
                qsort(v, n, sizeof(*v), cmp_entry);
        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *p = NULL;
                if (!v[i].name || asprintf(&p, "%s/%s/%s", dir, v[i].in_new ? "new" : "cur", v[i].name) < 0) {
                        r = -ENOMEM;
                        goto out;
                }
                r = import_message(im, mb.id, p, v[i].name, v[i].in_new, kwnames, (uint32_t)(i + 1));
                if (r < 0) {
                        fprintf(stderr, "acs-import: %s: %s\n", p, strerror(-r));
                        goto out;
                }
        }
        r = txn_end(im);
        if (r < 0)
                goto out;
        r = acs_store_begin(im->s, false);
        if (r == 0) {
                r = acs_store_mailbox_set_state(im->s, mb.id, 1, (uint32_t)n + 1, 0);
                if (r == 0)
                        r = acs_store_commit(im->s);
                else
                        acs_store_rollback(im->s);
        }
        if (im->verbose)
                fprintf(stderr, "acs-import: %s: %zu messages\n", name, n);
out:
        if (im->in_txn) {
                acs_store_rollback(im->s);
                im->in_txn = 0;
        }
        for (size_t i = 0; i < n; i++)
                free(v[i].name);
        free(v);
        for (int i = 0; i < 26; i++)
                free(kwnames[i]);
        return r;
}

static bool has_cur(const char *dir)
{
        _cleanup_free_ char *p = NULL;
        struct stat st;

        return asprintf(&p, "%s/cur", dir) >= 0 && stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int import_root(importer *im, const char *root)
{
        struct dirent **list = NULL;
        int n, r;

        if (has_cur(root)) {
                r = import_folder(im, root, "INBOX", '.');
                if (r < 0)
                        return r;
        }
        n = scandir(root, &list, NULL, alphasort);
        if (n < 0)
                return -errno;
        r = 0;
        for (int i = 0; i < n; i++) {
                const char *e = list[i]->d_name;
                _cleanup_free_ char *dir = NULL, *name = NULL;
                const char *why;
                if (r < 0 || e[0] != '.' || strcmp(e, ".") == 0 || strcmp(e, "..") == 0)
                        continue;
                if (asprintf(&dir, "%s/%s", root, e) < 0) {
                        r = -ENOMEM;
                        continue;
                }
                if (!has_cur(dir))
                        continue;
                /* Maildir++: ".A.B" is mailbox "A.B" (delimiter '.') in modified UTF-7 */
                if (acs_mutf7_to_utf8(e + 1, &name, &why) < 0) {
                        fprintf(stderr, "acs-import: skipping folder %s: %s\n", e, why);
                        continue;
                }
                r = import_folder(im, dir, name, '.');
        }
        for (int i = 0; i < n; i++)
                free(list[i]);
        free(list);
        return r;
}

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
                { "db", required_argument, NULL, 'D' },
                { "verbose", no_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        importer im = { 0 };
        const char *db = NULL;
        char *err = NULL;
        int c, r;

        while ((c = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
                switch (c) {
                case 'D':
                        db = optarg;
                        break;
                case 'v':
                        im.verbose = true;
                        break;
                default:
                        fprintf(c == 'h' ? stdout : stderr,
                                "usage: acs-import --db PATH [-v] MAILDIR\n"
                                "Imports a Maildir++ tree (Dovecot's default layout: INBOX at the root,\n"
                                "folders as .Name.Sub in modified UTF-7) into the cache at PATH.\n");
                        return c == 'h' ? 0 : 2;
                }
        }
        if (!db || optind != argc - 1) {
                fprintf(stderr, "usage: acs-import --db PATH [-v] MAILDIR\n");
                return 2;
        }
        r = acs_store_open(db, ACS_STORE_CREATE, &im.s, &err);
        if (r < 0) {
                fprintf(stderr, "acs-import: %s\n", err ? err : strerror(-r));
                free(err);
                return 1;
        }
        r = import_root(&im, argv[optind]);
        if (r < 0)
                fprintf(stderr, "acs-import: %s: %s (%s)\n", argv[optind], strerror(-r),
                        acs_store_errmsg(im.s));
        else
                printf("imported %llu messages in %llu mailboxes\n", (unsigned long long)im.messages,
                       (unsigned long long)im.mailboxes);
        acs_store_close(im.s);
        return r < 0 ? 1 : 0;
}
