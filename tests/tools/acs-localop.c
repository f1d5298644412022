/* SPDX-License-Identifier: MIT */
/* acs-localop: makes one local change in a cache through lib/local.c (what a write in the tree does), for the replay tests. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include "acs/local.h"
#include "acs/store.h"
#include "acs/util.h"

static void usage(void)
{
        fprintf(stderr,
                "usage: acs-localop DB flags MAILBOX UID LETTERS [KEYWORDS]   (LETTERS from DFPRST, '-' for none)\n"
                "       acs-localop DB expunge MAILBOX UID\n"
                "       acs-localop DB move MAILBOX UID TARGET\n"
                "       acs-localop DB move-id MESSAGE_ID TARGET | flags-id MESSAGE_ID LETTERS [KEYWORDS]\n"
                "       acs-localop DB append MAILBOX FILE LETTERS INTERNALDATE [KEYWORDS]  (prints the message id)\n"
                "       acs-localop DB create NAME | delete NAME | rename NAME NEW_NAME\n"
                "       acs-localop DB count   (prints the number of ops in the log)\n"
                "Mailbox names are the cache's (UTF-8, server delimiter). Exit 0, or 1 with the errno name.\n");
}

static int parse_letters(const char *s, unsigned *ret)
{
        static const char letters[] = "DFPRST";
        unsigned f = 0;
        if (strcmp(s, "-") != 0) {
                for (const char *p = s; *p; p++) {
                        const char *c = strchr(letters, *p);
                        if (!c)
                                return -EINVAL;
                        f |= 1u << (c - letters);
                }
        }
        *ret = f;
        return 0;
}

static int parse_uid(const char *s, uint32_t *ret)
{
        char *end;
        unsigned long v = strtoul(s, &end, 10);
        if (!*s || *end || v == 0 || v > UINT32_MAX)
                return -EINVAL;
        *ret = (uint32_t)v;
        return 0;
}

static int mailbox_id(acs_store *s, const char *name, int64_t *ret)
{
        acs_mailbox mb = {0};
        int r = acs_store_mailbox_get(s, name, &mb);
        if (r < 0)
                return r;
        *ret = mb.id;
        acs_mailbox_clear(&mb);
        return 0;
}

static int message_by_uid(acs_store *s, const char *mailbox, const char *uid, acs_message *ret)
{
        int64_t mid;
        uint32_t u;
        int r = mailbox_id(s, mailbox, &mid);
        if (r == 0)
                r = parse_uid(uid, &u);
        if (r == 0)
                r = acs_store_message_get_by_uid(s, mid, u, ret);
        return r;
}

static int read_file(const char *path, char **ret, size_t *ret_len)
{
        FILE *f = fopen(path, "rb");
        if (!f)
                return -errno;
        char *buf = NULL;
        size_t len = 0, cap = 0;
        for (;;) {
                if (len == cap) {
                        size_t c = cap ? cap * 2 : 65536;
                        char *nb = realloc(buf, c);
                        if (!nb) {
                                free(buf);
                                fclose(f);
                                return -ENOMEM;
                        }
                        buf = nb;
                        cap = c;
                }
                size_t n = fread(buf + len, 1, cap - len, f);
                len += n;
                if (n == 0)
                        break;
        }
        int err = ferror(f) ? -EIO : 0;
        fclose(f);
        if (err) {
                free(buf);
                return err;
        }
        *ret = buf;
        *ret_len = len;
        return 0;
}

static int run(acs_store *s, int argc, char **argv)
{
        const char *cmd = argv[0];
        int r;
        if (strcmp(cmd, "count") == 0 && argc == 1) {
                uint64_t n = 0;
                r = acs_store_op_count(s, &n);
                if (r == 0)
                        printf("%" PRIu64 "\n", n);
                return r;
        }
        if (strcmp(cmd, "flags") == 0 && (argc == 4 || argc == 5)) {
                acs_message m = {0};
                unsigned f;
                r = parse_letters(argv[3], &f);
                if (r == 0)
                        r = message_by_uid(s, argv[1], argv[2], &m);
                if (r < 0)
                        return r;
                unsigned state = (f & ACS_FLAG_SEEN) ? m.state & ~ACS_MSG_NEW : m.state;
                r = acs_local_set_flags(s, m.id, f, argc == 5 ? argv[4] : NULL, state);
                acs_message_clear(&m);
                return r;
        }
        if (strcmp(cmd, "expunge") == 0 && argc == 3) {
                acs_message m = {0};
                r = message_by_uid(s, argv[1], argv[2], &m);
                if (r == 0)
                        r = acs_local_expunge(s, m.id);
                acs_message_clear(&m);
                return r;
        }
        if (strcmp(cmd, "move") == 0 && argc == 4) {
                acs_message m = {0};
                int64_t target;
                r = message_by_uid(s, argv[1], argv[2], &m);
                if (r == 0)
                        r = mailbox_id(s, argv[3], &target);
                if (r == 0)
                        r = acs_local_move(s, m.id, target, NULL, m.flags, NULL, m.state);
                acs_message_clear(&m);
                return r;
        }
        if (strcmp(cmd, "move-id") == 0 && argc == 3) {
                /* a message without a uid yet (a pending append or move), by row id */
                acs_message m = {0};
                int64_t target;
                r = acs_store_message_get(s, strtoll(argv[1], NULL, 10), &m);
                if (r == 0)
                        r = mailbox_id(s, argv[2], &target);
                if (r == 0)
                        r = acs_local_move(s, m.id, target, NULL, m.flags, NULL, m.state);
                acs_message_clear(&m);
                return r;
        }
        if (strcmp(cmd, "flags-id") == 0 && (argc == 3 || argc == 4)) {
                acs_message m = {0};
                unsigned f;
                r = parse_letters(argv[2], &f);
                if (r == 0)
                        r = acs_store_message_get(s, strtoll(argv[1], NULL, 10), &m);
                if (r < 0)
                        return r;
                unsigned state = (f & ACS_FLAG_SEEN) ? m.state & ~ACS_MSG_NEW : m.state;
                r = acs_local_set_flags(s, m.id, f, argc == 4 ? argv[3] : NULL, state);
                acs_message_clear(&m);
                return r;
        }
        if (strcmp(cmd, "append") == 0 && (argc == 5 || argc == 6)) {
                int64_t mid, id = 0;
                unsigned f;
                char *end;
                long long idate = strtoll(argv[4], &end, 10);
                _cleanup_free_ char *data = NULL;
                size_t len = 0;
                r = *argv[4] && !*end ? 0 : -EINVAL;
                if (r == 0)
                        r = parse_letters(argv[3], &f);
                if (r == 0)
                        r = mailbox_id(s, argv[1], &mid);
                if (r == 0)
                        r = read_file(argv[2], &data, &len);
                if (r == 0)
                        r = acs_local_append(s, mid, NULL, f, argc == 6 ? argv[5] : "", idate,
                                             (f & ACS_FLAG_SEEN) ? 0 : ACS_MSG_NEW, data, len, &id);
                if (r == 0)
                        printf("%" PRId64 "\n", id);
                return r;
        }
        if (strcmp(cmd, "create") == 0 && argc == 2)
                return acs_local_mailbox_create(s, argv[1]);
        if ((strcmp(cmd, "delete") == 0 && argc == 2) || (strcmp(cmd, "rename") == 0 && argc == 3)) {
                int64_t mid;
                r = mailbox_id(s, argv[1], &mid);
                if (r < 0)
                        return r;
                return argc == 2 ? acs_local_mailbox_delete(s, mid) : acs_local_mailbox_rename(s, mid, argv[2]);
        }
        usage();
        exit(EX_USAGE);
}

int main(int argc, char **argv)
{
        if (argc < 3) {
                usage();
                return EX_USAGE;
        }
        acs_store *s = NULL;
        _cleanup_free_ char *err = NULL;
        int r = acs_store_open(argv[1], 0, &s, &err);
        if (r < 0) {
                fprintf(stderr, "acs-localop: %s\n", err ? err : strerror(-r));
                return EX_IOERR;
        }
        r = run(s, argc - 2, argv + 2);
        if (r < 0)
                fprintf(stderr, "acs-localop: %s: %s (%s)\n", argv[2], strerror(-r), acs_store_errmsg(s));
        acs_store_close(s);
        return r < 0 ? 1 : 0;
}
