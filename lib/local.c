/* SPDX-License-Identifier: MIT */
/* Local changes to the cache: each one changes the rows and queues its op in one durable transaction. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "acs/local.h"
#include "acs/maildir.h"
#include "acs/mboxname.h"
#include "acs/util.h"

/* Rounds of begin..commit tried when another writer keeps the lock past the busy timeout. */
#define BUSY_ROUNDS 4

/* Runs fn(s, arg) in one durable transaction, again when the database was busy. */
static int in_tx(acs_store *s, int (*fn)(acs_store *s, void *arg), void *arg)
{
        int r = -EBUSY;

        for (int round = 0; round < BUSY_ROUNDS && r == -EBUSY; round++) {
                if (round > 0)
                        nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000 * 1000 }, NULL);
                r = acs_store_begin(s, true);
                if (r < 0)
                        continue;
                r = fn(s, arg);
                if (r >= 0)
                        r = acs_store_commit(s);
                if (r < 0)
                        acs_store_rollback(s);
        }
        return r;
}

/* ---- keywords as sorted sets ---- */

/* An IMAP flag-keyword: an atom (no CTL, SP, ( ) { % * " \ ]) not starting with '\'. */
static bool keyword_ok(const char *k, size_t len)
{
        if (len == 0)
                return false;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)k[i];
                if (c <= ' ' || c >= 0x7f || strchr("(){%*\"\\]", c))
                        return false;
        }
        return true;
}

typedef struct kwset {
        char **v;
        size_t n, cap;
} kwset;

static void kwset_free(kwset *k)
{
        for (size_t i = 0; i < k->n; i++)
                free(k->v[i]);
        free(k->v);
        *k = (kwset){ 0 };
}

static int cmp_str(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Parses space-separated keywords into a sorted set without duplicates. strict: each must
 * be a valid keyword (what a caller passes); else anything goes (what the server stored).
 */
static int kwset_parse(const char *in, bool strict, kwset *ret)
{
        kwset k = { 0 };

        for (const char *p = in ? in : ""; *p;) {
                if (*p == ' ') {
                        p++;
                        continue;
                }
                size_t len = strcspn(p, " ");
                if (strict && !keyword_ok(p, len)) {
                        kwset_free(&k);
                        return -EINVAL;
                }
                char *w = strndup(p, len);
                if (!w || ACS_GROW(k.v, k.cap, k.n, 8) < 0) {
                        free(w);
                        kwset_free(&k);
                        return -ENOMEM;
                }
                k.v[k.n++] = w;
                p += len;
        }
        if (k.n > 1) {
                qsort(k.v, k.n, sizeof(*k.v), cmp_str);
                size_t o = 1;
                for (size_t i = 1; i < k.n; i++) {
                        if (strcmp(k.v[i], k.v[o - 1]) == 0)
                                free(k.v[i]);
                        else
                                k.v[o++] = k.v[i];
                }
                k.n = o;
        }
        *ret = k;
        return 0;
}

static bool kwset_has(const kwset *k, const char *w)
{
        return k->n > 0 && bsearch(&w, k->v, k->n, sizeof(*k->v), cmp_str) != NULL;
}

/* Joins the words of a that are not in minus (minus may be NULL) with spaces; "" when none. */
static int kwset_join(const kwset *a, const kwset *minus, char **ret)
{
        size_t len = 1;
        char *out, *p;

        for (size_t i = 0; i < a->n; i++)
                len += strlen(a->v[i]) + 1;
        out = p = malloc(len);
        if (!out)
                return -ENOMEM;
        *p = '\0';
        for (size_t i = 0; i < a->n; i++) {
                if (minus && kwset_has(minus, a->v[i]))
                        continue;
                if (p != out)
                        *p++ = ' ';
                p = stpcpy(p, a->v[i]);
        }
        *ret = out;
        return 0;
}

/* Gives each keyword a Maildir letter when one is free (past 26 they have none). */
static int kwset_letters(acs_store *s, const kwset *k)
{
        for (size_t i = 0; i < k->n; i++) {
                int idx, r = acs_store_keyword_index(s, k->v[i], true, &idx);
                if (r < 0 && r != -ENOSPC)
                        return r;
        }
        return 0;
}

/* NULL for "" (op columns keep NULL for "no keywords"). */
static char *null_if_empty(char *s)
{
        return s && *s ? s : NULL;
}

/* The flag and keyword delta from (old_flags, old_kw) to (flags, kw); 1 when anything changed. */
typedef struct delta {
        unsigned add, del;
        char *kw_add, *kw_del; /* malloc'd, "" when none */
        char *kw_new;          /* the new keyword string (normalized) */
} delta;

static void delta_clear(delta *d)
{
        free(d->kw_add);
        free(d->kw_del);
        free(d->kw_new);
        *d = (delta){ 0 };
}

static int delta_compute(acs_store *s, unsigned old_flags, const char *old_kw, unsigned flags,
                         const char *kw, delta *ret)
{
        kwset a = { 0 }, b = { 0 };
        delta d = { .add = flags & ~old_flags, .del = old_flags & ~flags };
        int r;

        r = kwset_parse(old_kw, false, &a);
        if (r < 0)
                return r;
        r = kwset_parse(kw ? kw : old_kw, kw != NULL, &b);
        if (r >= 0)
                r = kwset_letters(s, &b);
        if (r >= 0)
                r = kwset_join(&b, &a, &d.kw_add);
        if (r >= 0)
                r = kwset_join(&a, &b, &d.kw_del);
        if (r >= 0)
                r = kwset_join(&b, NULL, &d.kw_new);
        kwset_free(&a);
        kwset_free(&b);
        if (r < 0) {
                delta_clear(&d);
                return r;
        }
        *ret = d;
        return d.add || d.del || *d.kw_add || *d.kw_del;
}

static int mailbox_name(acs_store *s, int64_t id, char **ret)
{
        acs_mailbox mb = { 0 };
        int r = acs_store_mailbox_get_by_id(s, id, &mb);

        if (r < 0)
                return r;
        *ret = TAKE_PTR(mb.name);
        acs_mailbox_clear(&mb);
        return 0;
}

/* ---- messages ---- */

typedef struct flags_args {
        int64_t id;
        unsigned flags, state;
        const char *keywords;
        const acs_local_seen *seen;
} flags_args;

/* True when the row still has the flags and keywords the caller saw (or nothing was seen). */
static bool still_seen(const acs_message *m, const acs_local_seen *seen)
{
        if (!seen)
                return true;
        const char *a = m->keywords ? m->keywords : "", *b = seen->keywords ? seen->keywords : "";
        return m->flags == seen->flags && strcmp(a, b) == 0;
}

static int set_flags_tx(acs_store *s, void *arg)
{
        flags_args *a = arg;
        acs_message m = { 0 };
        delta d = { 0 };
        _cleanup_free_ char *name = NULL;
        int r, changed;

        r = acs_store_message_get(s, a->id, &m);
        if (r < 0)
                return r;
        if (!still_seen(&m, a->seen)) {
                r = -ENOENT; /* changed since the caller looked: its name is gone */
                goto out;
        }
        changed = delta_compute(s, m.flags, m.keywords, a->flags, a->keywords, &d);
        if (changed < 0) {
                r = changed;
                goto out;
        }
        if (changed) {
                r = acs_store_message_set_flags(s, m.id, a->flags, d.kw_new, 0);
                if (r >= 0)
                        r = mailbox_name(s, m.mailbox_id, &name);
                if (r >= 0) {
                        acs_op op = {
                                .kind = ACS_OP_FLAGS,
                                .mailbox_id = m.mailbox_id,
                                .message_id = m.id,
                                .uid = m.uid,
                                .flags_add = d.add,
                                .flags_del = d.del,
                                .keywords_add = null_if_empty(d.kw_add),
                                .keywords_del = null_if_empty(d.kw_del),
                                .name = name,
                        };
                        r = acs_store_op_add(s, &op);
                }
        }
        if (r >= 0 && m.state != a->state)
                r = acs_store_message_set_state(s, m.id, a->state);
out:
        delta_clear(&d);
        acs_message_clear(&m);
        return r;
}

static bool flags_valid(unsigned flags, unsigned state)
{
        return !(flags & ~(unsigned)ACS_FLAG_ALL) && !(state & ~(unsigned)ACS_MSG_NEW);
}

int acs_local_set_flags(acs_store *s, int64_t message_id, unsigned flags, const char *keywords,
                        unsigned state)
{
        return acs_local_set_flags_seen(s, message_id, NULL, flags, keywords, state);
}

int acs_local_set_flags_seen(acs_store *s, int64_t message_id, const acs_local_seen *seen, unsigned flags,
                             const char *keywords, unsigned state)
{
        flags_args a = { .id = message_id, .flags = flags, .state = state, .keywords = keywords, .seen = seen };

        if (!flags_valid(flags, state))
                return -EINVAL;
        return in_tx(s, set_flags_tx, &a);
}

static int expunge_tx(acs_store *s, void *arg)
{
        int64_t id = *(int64_t *)arg;
        acs_message m = { 0 };
        _cleanup_free_ char *name = NULL;
        int r;

        r = acs_store_message_get(s, id, &m);
        if (r < 0)
                return r;
        r = mailbox_name(s, m.mailbox_id, &name);
        if (r >= 0)
                r = acs_store_message_delete(s, id);
        if (r >= 0) {
                acs_op op = {
                        .kind = ACS_OP_EXPUNGE,
                        .mailbox_id = m.mailbox_id,
                        .message_id = m.id,
                        .uid = m.uid,
                        .name = name,
                };
                r = acs_store_op_add(s, &op);
        }
        acs_message_clear(&m);
        return r;
}

int acs_local_expunge(acs_store *s, int64_t message_id)
{
        return in_tx(s, expunge_tx, &message_id);
}

typedef struct move_args {
        int64_t id, target;
        const char *uniq;
        unsigned flags, state;
        const char *keywords;
        const acs_local_seen *seen;
} move_args;

static int move_tx(acs_store *s, void *arg)
{
        move_args *a = arg;
        acs_message m = { 0 };
        acs_mailbox target = { 0 };
        delta d = { 0 };
        _cleanup_free_ char *src = NULL;
        int r, changed;

        r = acs_store_message_get(s, a->id, &m);
        if (r < 0)
                return r;
        if (!still_seen(&m, a->seen)) {
                r = -ENOENT;
                goto out;
        }
        r = acs_store_mailbox_get_by_id(s, a->target, &target);
        if (r < 0)
                goto out;
        if (target.id == m.mailbox_id || (target.attrs & ACS_MBOX_NOSELECT)) {
                r = -EINVAL;
                goto out;
        }
        r = mailbox_name(s, m.mailbox_id, &src);
        if (r < 0)
                goto out;
        changed = delta_compute(s, m.flags, m.keywords, a->flags, a->keywords, &d);
        if (changed < 0) {
                r = changed;
                goto out;
        }
        r = acs_store_message_move(s, m.id, target.id, 0, a->uniq ? a->uniq : m.uniq);
        if (r >= 0 && changed)
                r = acs_store_message_set_flags(s, m.id, a->flags, d.kw_new, 0);
        if (r >= 0 && a->state != m.state)
                r = acs_store_message_set_state(s, m.id, a->state);
        if (r >= 0) {
                acs_op op = {
                        .kind = ACS_OP_MOVE,
                        .mailbox_id = m.mailbox_id,
                        .message_id = m.id,
                        .uid = m.uid,
                        .target_mailbox_id = target.id,
                        .flags_add = m.flags,
                        .keywords_add = null_if_empty(m.keywords),
                        .body_id = m.body_id,
                        .internaldate = m.internaldate,
                        .name = src,
                        .new_name = target.name,
                };
                r = acs_store_op_add(s, &op);
        }
        if (r >= 0 && changed) {
                acs_op op = {
                        .kind = ACS_OP_FLAGS,
                        .mailbox_id = target.id,
                        .message_id = m.id,
                        .uid = 0,
                        .flags_add = d.add,
                        .flags_del = d.del,
                        .keywords_add = null_if_empty(d.kw_add),
                        .keywords_del = null_if_empty(d.kw_del),
                        .name = target.name,
                };
                r = acs_store_op_add(s, &op);
        }
out:
        delta_clear(&d);
        acs_mailbox_clear(&target);
        acs_message_clear(&m);
        return r;
}

int acs_local_move(acs_store *s, int64_t message_id, int64_t target_mailbox_id, const char *uniq,
                   unsigned flags, const char *keywords, unsigned state)
{
        return acs_local_move_seen(s, message_id, NULL, target_mailbox_id, uniq, flags, keywords, state);
}

int acs_local_move_seen(acs_store *s, int64_t message_id, const acs_local_seen *seen, int64_t target_mailbox_id,
                        const char *uniq, unsigned flags, const char *keywords, unsigned state)
{
        move_args a = { .id = message_id, .target = target_mailbox_id, .uniq = uniq,
                        .flags = flags, .state = state, .keywords = keywords, .seen = seen };

        if (!flags_valid(flags, state))
                return -EINVAL;
        return in_tx(s, move_tx, &a);
}

typedef struct append_args {
        int64_t mailbox_id;
        const char *uniq;
        unsigned flags, state;
        const char *keywords;
        int64_t internaldate;
        const void *data;
        size_t len;
        int64_t id; /* out */
} append_args;

static int append_tx(acs_store *s, void *arg)
{
        append_args *a = arg;
        acs_mailbox mb = { 0 };
        kwset k = { 0 };
        _cleanup_free_ char *kw = NULL;
        int64_t body = 0;
        int r;

        r = acs_store_mailbox_get_by_id(s, a->mailbox_id, &mb);
        if (r < 0)
                return r;
        if (mb.attrs & ACS_MBOX_NOSELECT) {
                r = -EINVAL;
                goto out;
        }
        r = kwset_parse(a->keywords, true, &k);
        if (r >= 0)
                r = kwset_letters(s, &k);
        if (r >= 0)
                r = kwset_join(&k, NULL, &kw);
        if (r >= 0)
                r = acs_store_body_put(s, a->data, a->len, &body);
        if (r >= 0) {
                acs_message m = {
                        .mailbox_id = mb.id,
                        .flags = a->flags,
                        .keywords = kw,
                        .internaldate = a->internaldate,
                        .size = a->len,
                        .vsize = acs_lf_vsize(a->data, a->len),
                        .uniq = (char *)a->uniq,
                        .body_id = body,
                        .state = a->state,
                };
                r = acs_store_message_add(s, &m);
                if (!a->uniq)
                        free(m.uniq);
                if (r >= 0) {
                        acs_op op = {
                                .kind = ACS_OP_APPEND,
                                .mailbox_id = mb.id,
                                .message_id = m.id,
                                .flags_add = a->flags,
                                .keywords_add = null_if_empty(kw),
                                .body_id = body,
                                .internaldate = a->internaldate,
                                .name = mb.name,
                        };
                        r = acs_store_op_add(s, &op);
                        a->id = m.id;
                }
        }
out:
        kwset_free(&k);
        acs_mailbox_clear(&mb);
        return r;
}

int acs_local_append(acs_store *s, int64_t mailbox_id, const char *uniq, unsigned flags,
                     const char *keywords, int64_t internaldate, unsigned state, const void *data,
                     size_t len, int64_t *ret_message_id)
{
        append_args a = { .mailbox_id = mailbox_id, .uniq = uniq, .flags = flags, .state = state,
                          .keywords = keywords, .internaldate = internaldate, .data = data,
                          .len = len };
        int r;

        if (!flags_valid(flags, state) || (!data && len > 0))
                return -EINVAL;
        r = in_tx(s, append_tx, &a);
        if (r < 0)
                return r;
        if (ret_message_id)
                *ret_message_id = a.id;
        return 0;
}

/* ---- mailboxes ---- */

static int first_delim(const acs_mailbox *mb, void *userdata)
{
        char *d = userdata;

        if (mb->delim) {
                *d = mb->delim;
                return 1;
        }
        return 0;
}

int acs_local_delimiter(acs_store *s, char *ret_delim)
{
        acs_mailbox mb = { 0 };
        char d = 0;
        int r;

        r = acs_store_mailbox_get(s, "INBOX", &mb);
        if (r == 0)
                d = mb.delim;
        acs_mailbox_clear(&mb);
        if (r < 0 && r != -ENOENT)
                return r;
        if (!d) {
                r = acs_store_mailbox_foreach(s, first_delim, &d);
                if (r < 0)
                        return r;
        }
        *ret_delim = d ? d : '/';
        return 0;
}

/* A mailbox name acs can create: valid UTF-8, no control characters, no empty level. */
static int name_check(const char *name, char delim)
{
        _cleanup_free_ char *m7 = NULL;
        const char *why;
        size_t len;

        if (!name || !*name)
                return -EINVAL;
        for (const unsigned char *p = (const unsigned char *)name; *p; p++)
                if (*p < 0x20 || *p == 0x7f)
                        return -EINVAL;
        len = strlen(name);
        if (delim && (name[0] == delim || name[len - 1] == delim))
                return -EINVAL;
        if (delim) {
                char dd[3] = { delim, delim, 0 };
                if (strstr(name, dd))
                        return -EINVAL;
        }
        if (acs_utf8_to_mutf7(name, &m7, &why) < 0)
                return -EINVAL;
        return 0;
}

static bool is_inbox(const char *name)
{
        return strcasecmp(name, "INBOX") == 0;
}

/* Mailboxes strictly below a name (prefix "<name><delim>"). */
typedef struct children {
        const char *name;
        char delim;
        size_t len;
        int64_t *ids;
        char **names;
        size_t n, cap, cap2;
} children;

static int collect_child(const acs_mailbox *mb, void *userdata)
{
        children *c = userdata;

        if (!c->delim || strncmp(mb->name, c->name, c->len) != 0 || mb->name[c->len] != c->delim)
                return 0;
        if (ACS_GROW(c->ids, c->cap, c->n, 8) < 0 || ACS_GROW(c->names, c->cap2, c->n, 8) < 0)
                return -ENOMEM;
        c->names[c->n] = strdup(mb->name);
        if (!c->names[c->n])
                return -ENOMEM;
        c->ids[c->n++] = mb->id;
        return 0;
}

static void children_free(children *c)
{
        for (size_t i = 0; i < c->n; i++)
                free(c->names[i]);
        free(c->names);
        free(c->ids);
}

static int children_of(acs_store *s, const acs_mailbox *mb, children *ret)
{
        children c = { .name = mb->name, .delim = mb->delim, .len = strlen(mb->name) };
        int r = acs_store_mailbox_foreach(s, collect_child, &c);

        if (r < 0) {
                children_free(&c);
                return r;
        }
        *ret = c;
        return 0;
}

static int create_tx(acs_store *s, void *arg)
{
        const char *name = arg;
        acs_mailbox mb = { 0 };
        char delim;
        int r;

        r = acs_local_delimiter(s, &delim);
        if (r < 0)
                return r;
        r = name_check(name, delim);
        if (r < 0)
                return r;
        r = acs_store_mailbox_get(s, is_inbox(name) ? "INBOX" : name, &mb);
        acs_mailbox_clear(&mb);
        if (r == 0)
                return -EEXIST;
        if (r != -ENOENT)
                return r;
        mb = (acs_mailbox){ .name = is_inbox(name) ? (char *)"INBOX" : (char *)name,
                            .delim = delim };
        r = acs_store_mailbox_put(s, &mb);
        if (r < 0)
                return r;
        acs_op op = { .kind = ACS_OP_CREATE, .mailbox_id = mb.id, .name = mb.name };
        return acs_store_op_add(s, &op);
}

int acs_local_mailbox_create(acs_store *s, const char *name)
{
        if (!name)
                return -EINVAL;
        return in_tx(s, create_tx, (void *)name);
}

static int delete_tx(acs_store *s, void *arg)
{
        int64_t id = *(int64_t *)arg;
        acs_mailbox mb = { 0 };
        children c = { 0 };
        uint64_t count = 0;
        int r;

        r = acs_store_mailbox_get_by_id(s, id, &mb);
        if (r < 0)
                return r;
        if (is_inbox(mb.name)) {
                r = -EPERM;
                goto out;
        }
        r = acs_store_message_count(s, id, &count, NULL);
        if (r < 0)
                goto out;
        r = children_of(s, &mb, &c);
        if (r < 0)
                goto out;
        if (count > 0 || c.n > 0) {
                r = -ENOTEMPTY;
                goto out;
        }
        r = acs_store_mailbox_delete(s, id);
        if (r >= 0) {
                acs_op op = { .kind = ACS_OP_DELETE, .mailbox_id = id, .name = mb.name };
                r = acs_store_op_add(s, &op);
        }
out:
        children_free(&c);
        acs_mailbox_clear(&mb);
        return r;
}

int acs_local_mailbox_delete(acs_store *s, int64_t mailbox_id)
{
        return in_tx(s, delete_tx, &mailbox_id);
}

typedef struct rename_args {
        int64_t id;
        const char *new_name;
} rename_args;

static int rename_tx(acs_store *s, void *arg)
{
        rename_args *a = arg;
        acs_mailbox mb = { 0 }, other = { 0 };
        children c = { 0 };
        char **to = NULL;
        size_t nlen = strlen(a->new_name), olen;
        int r;

        r = acs_store_mailbox_get_by_id(s, a->id, &mb);
        if (r < 0)
                return r;
        olen = strlen(mb.name);
        if (is_inbox(mb.name)) {
                r = -EPERM;
                goto out;
        }
        if (strcmp(mb.name, a->new_name) == 0) {
                r = 0; /* nothing changes, nothing to replay */
                goto out;
        }
        r = name_check(a->new_name, mb.delim);
        if (r < 0)
                goto out;
        if (is_inbox(a->new_name) ||
            (mb.delim && nlen > olen && strncmp(a->new_name, mb.name, olen) == 0 &&
             a->new_name[olen] == mb.delim)) {
                r = is_inbox(a->new_name) ? -EEXIST : -EINVAL;
                goto out;
        }
        r = children_of(s, &mb, &c);
        if (r < 0)
                goto out;
        to = calloc(c.n + 1, sizeof(*to));
        if (!to) {
                r = -ENOMEM;
                goto out;
        }
        for (size_t i = 0; i < c.n; i++) {
                if (asprintf(&to[i], "%s%s", a->new_name, c.names[i] + olen) < 0) {
                        to[i] = NULL;
                        r = -ENOMEM;
                        goto out;
                }
        }
        /* every target name must be free */
        for (size_t i = 0; i <= c.n; i++) {
                r = acs_store_mailbox_get(s, i < c.n ? to[i] : a->new_name, &other);
                acs_mailbox_clear(&other);
                if (r == 0) {
                        r = -EEXIST;
                        goto out;
                }
                if (r != -ENOENT)
                        goto out;
        }
        r = acs_store_mailbox_rename(s, mb.id, a->new_name);
        for (size_t i = 0; i < c.n && r >= 0; i++)
                r = acs_store_mailbox_rename(s, c.ids[i], to[i]);
        if (r >= 0) {
                acs_op op = { .kind = ACS_OP_RENAME, .mailbox_id = mb.id, .name = mb.name,
                              .new_name = (char *)a->new_name };
                r = acs_store_op_add(s, &op);
        }
out:
        if (to)
                for (size_t i = 0; i < c.n; i++)
                        free(to[i]);
        free(to);
        children_free(&c);
        acs_mailbox_clear(&mb);
        return r;
}

int acs_local_mailbox_rename(acs_store *s, int64_t mailbox_id, const char *new_name)
{
        rename_args a = { .id = mailbox_id, .new_name = new_name };

        if (!new_name)
                return -EINVAL;
        return in_tx(s, rename_tx, &a);
}
