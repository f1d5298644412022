/* SPDX-License-Identifier: MIT */
/* acs-syncd's read direction: mailbox list, full and incremental sync of each mailbox into the store. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "acs/log.h"
#include "acs/maildir.h"
#include "acs/mboxname.h"
#include "acs/store.h"
#include "acs/util.h"
#include "imapconn.h"
#include "syncd.h"

/* First batches are small so the newest mail shows up at once; later ones grow to these. */
#define BATCH_FIRST_MSGS 25
#define BATCH_MAX_MSGS 2000
#define BATCH_MAX_BYTES (8u << 20)
/* Largest message we accept; matches what the connection layer bounds. */
#define BODY_MAX ((size_t)1 << 30)

int syncd_etpan_error(int r)
{
        switch (r) {
        case MAILIMAP_NO_ERROR:
        case MAILIMAP_NO_ERROR_AUTHENTICATED:
        case MAILIMAP_NO_ERROR_NON_AUTHENTICATED:
                return 0;
        case MAILIMAP_ERROR_STREAM:
        case MAILIMAP_ERROR_CONNECTION_REFUSED:
                return -ECONNRESET;
        case MAILIMAP_ERROR_PARSE:
                return -EPROTO;
        case MAILIMAP_ERROR_MEMORY:
                return -ENOMEM;
        case MAILIMAP_ERROR_BAD_STATE:
        case MAILIMAP_ERROR_PROTOCOL: /* BAD, or a tagged reply with the wrong tag */
                return -EPROTO;
        case MAILIMAP_ERROR_FATAL:
                return -ECONNRESET;
        default:
                return -EREMOTEIO;
        }
}

int syncd_raw_command(syncd *sd, const char *command)
{
        mailimap *imap = sd->imap;
        int r = mailimap_send_current_tag(imap);
        if (r != MAILIMAP_NO_ERROR)
                return syncd_etpan_error(r);
        if (mailstream_write(imap->imap_stream, command, strlen(command)) < 0 ||
            mailstream_write(imap->imap_stream, "\r\n", 2) < 0 || mailstream_flush(imap->imap_stream) == -1)
                return -ECONNRESET;
        if (!mailimap_read_line(imap))
                return -ECONNRESET;
        struct mailimap_response *resp = NULL;
        r = mailimap_parse_response(imap, &resp);
        if (r != MAILIMAP_NO_ERROR)
                return syncd_etpan_error(r);
        int type = resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
        mailimap_response_free(resp);
        return type == MAILIMAP_RESP_COND_STATE_OK ? 0 : -EREMOTEIO;
}

/*
 * libetpan 1.9.4 loops forever when the connection ends inside a literal (mailstream_read
 * returns 0 and the loop subtracts 0 from what it still needs). This layer turns end of
 * stream into an error, which every libetpan caller handles.
 */
static ssize_t eof_read(mailstream_low *s, void *buf, size_t count)
{
        ssize_t r = mailstream_low_read(s->data, buf, count);
        if (r == 0 && count > 0) {
                errno = ECONNRESET;
                return -1;
        }
        return r;
}

static ssize_t eof_write(mailstream_low *s, const void *buf, size_t count)
{
        return mailstream_low_write(s->data, buf, count);
}

static int eof_close(mailstream_low *s) { return mailstream_low_close(s->data); }
static int eof_get_fd(mailstream_low *s) { return mailstream_low_get_fd(s->data); }
static void eof_cancel(mailstream_low *s) { mailstream_low_cancel(s->data); }
static struct mailstream_cancel *eof_get_cancel(mailstream_low *s) { return mailstream_low_get_cancel(s->data); }
static carray *eof_get_chain(mailstream_low *s) { return mailstream_low_get_certificate_chain(s->data); }
static int eof_setup_idle(mailstream_low *s) { return mailstream_low_setup_idle(s->data); }
static int eof_unsetup_idle(mailstream_low *s) { return mailstream_low_unsetup_idle(s->data); }
static int eof_interrupt_idle(mailstream_low *s) { return mailstream_low_interrupt_idle(s->data); }

static void eof_free(mailstream_low *s)
{
        if (s->data)
                mailstream_low_free(s->data);
        free(s);
}

static mailstream_low_driver eof_driver = {
        .mailstream_read = eof_read,
        .mailstream_write = eof_write,
        .mailstream_close = eof_close,
        .mailstream_get_fd = eof_get_fd,
        .mailstream_free = eof_free,
        .mailstream_cancel = eof_cancel,
        .mailstream_get_cancel = eof_get_cancel,
        .mailstream_get_certificate_chain = eof_get_chain,
        .mailstream_setup_idle = eof_setup_idle,
        .mailstream_unsetup_idle = eof_unsetup_idle,
        .mailstream_interrupt_idle = eof_interrupt_idle,
};

int syncd_wrap_eof(mailimap *imap)
{
        mailstream_low *inner = mailstream_get_low(imap->imap_stream);
        if (!inner)
                return -EINVAL;
        mailstream_low *s = mailstream_low_new(inner, &eof_driver);
        if (!s)
                return -ENOMEM;
        s->timeout = inner->timeout;
        mailstream_set_low(imap->imap_stream, s);
        return 0;
}

char *syncd_quote(const char *s)
{
        size_t n = strlen(s);
        char *q = malloc(2 * n + 3), *p = q;
        if (!q)
                return NULL;
        *p++ = '"';
        for (; *s; s++) {
                if (*s == '\r' || *s == '\n') {
                        free(q);
                        return NULL;
                }
                if (*s == '"' || *s == '\\')
                        *p++ = '\\';
                *p++ = *s;
        }
        *p++ = '"';
        *p = 0;
        return q;
}

/* ---- small helpers ---- */

/* qsort that accepts (NULL, 0). */
static void xqsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
        if (n > 1)
                qsort(base, n, size, cmp);
}


typedef struct srvlist {
        srvmsg *v;
        size_t n, cap;
} srvlist;

static void srvlist_free(srvlist *l)
{
        for (size_t i = 0; i < l->n; i++)
                free(l->v[i].keywords);
        free(l->v);
        *l = (srvlist){0};
}

static int srvlist_push(srvlist *l, const srvmsg *m)
{
        if (ACS_GROW(l->v, l->cap, l->n, 256) < 0)
                return -ENOMEM;
        l->v[l->n++] = *m;
        return 0;
}

static int cmp_uid_asc(const void *a, const void *b)
{
        uint32_t x = ((const srvmsg *)a)->uid, y = ((const srvmsg *)b)->uid;
        return x < y ? -1 : x > y;
}

static int cmp_str(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Flags of a FETCH response to our bits and a sorted keyword string (malloc'd). */
static int parse_flags(struct mailimap_msg_att_dynamic *dyn, unsigned *ret_flags, char **ret_kw)
{
        unsigned flags = 0;
        const char *kw[256];
        size_t nkw = 0;
        size_t kwlen = 0;

        if (dyn && dyn->att_list) {
                for (clistiter *it = clist_begin(dyn->att_list); it; it = clist_next(it)) {
                        struct mailimap_flag_fetch *ff = clist_content(it);
                        if (ff->fl_type != MAILIMAP_FLAG_FETCH_OTHER || !ff->fl_flag)
                                continue;
                        struct mailimap_flag *f = ff->fl_flag;
                        switch (f->fl_type) {
                        case MAILIMAP_FLAG_ANSWERED: flags |= ACS_FLAG_REPLIED; break;
                        case MAILIMAP_FLAG_FLAGGED: flags |= ACS_FLAG_FLAGGED; break;
                        case MAILIMAP_FLAG_DELETED: flags |= ACS_FLAG_TRASHED; break;
                        case MAILIMAP_FLAG_SEEN: flags |= ACS_FLAG_SEEN; break;
                        case MAILIMAP_FLAG_DRAFT: flags |= ACS_FLAG_DRAFT; break;
                        case MAILIMAP_FLAG_KEYWORD:
                                if (!f->fl_data.fl_keyword || !*f->fl_data.fl_keyword)
                                        break;
                                if (strcasecmp(f->fl_data.fl_keyword, "$Forwarded") == 0) {
                                        flags |= ACS_FLAG_PASSED;
                                        break;
                                }
                                if (nkw < ACS_ARRAY_SIZE(kw)) {
                                        kw[nkw++] = f->fl_data.fl_keyword;
                                        kwlen += strlen(f->fl_data.fl_keyword) + 1;
                                }
                                break;
                        default: /* \Recent and unknown \Extensions are not stored */
                                break;
                        }
                }
        }
        xqsort(kw, nkw, sizeof(kw[0]), cmp_str);
        char *s = malloc(kwlen + 1);
        if (!s)
                return -ENOMEM;
        char *p = s;
        for (size_t i = 0; i < nkw; i++) {
                if (i > 0 && strcmp(kw[i], kw[i - 1]) == 0)
                        continue;
                if (p != s)
                        *p++ = ' ';
                size_t l = strlen(kw[i]);
                memcpy(p, kw[i], l);
                p += l;
        }
        *p = 0;
        *ret_flags = flags;
        *ret_kw = s;
        return 0;
}

static int64_t date_to_epoch(const struct mailimap_date_time *d)
{
        struct tm tm = {
                .tm_year = d->dt_year - 1900,
                .tm_mon = d->dt_month - 1,
                .tm_mday = d->dt_day,
                .tm_hour = d->dt_hour,
                .tm_min = d->dt_min,
                .tm_sec = d->dt_sec,
        };
        int64_t t = (int64_t)timegm(&tm);
        int z = d->dt_zone;
        int sign = z < 0 ? -1 : 1;
        z = abs(z);
        t -= (int64_t)sign * ((z / 100) * 3600 + (z % 100) * 60);
        return t;
}

static struct mailimap_set *set_from_uids(const uint32_t *uids, size_t n)
{
        struct mailimap_set *set = mailimap_set_new_empty();
        if (!set)
                return NULL;
        /* uids may come in any order; emit maximal runs of consecutive values. */
        size_t i = 0;
        while (i < n) {
                uint32_t first = uids[i], last = uids[i];
                size_t j = i + 1;
                while (j < n && uids[j] == last + 1)
                        last = uids[j++];
                while (j < n && last > 0 && uids[j] == first - 1 && first > 1)
                        first = uids[j++];
                if (mailimap_set_add_interval(set, first, last) != MAILIMAP_NO_ERROR) {
                        mailimap_set_free(set);
                        return NULL;
                }
                i = j;
        }
        return set;
}

/* Extracts UID/FLAGS/SIZE/INTERNALDATE/MODSEQ of one FETCH response. */
static int srvmsg_from_att(struct mailimap_msg_att *att, srvmsg *ret)
{
        srvmsg m = {0};
        for (clistiter *it = clist_begin(att->att_list); it; it = clist_next(it)) {
                struct mailimap_msg_att_item *item = clist_content(it);
                if (item->att_type == MAILIMAP_MSG_ATT_ITEM_DYNAMIC) {
                        free(m.keywords);
                        m.keywords = NULL;
                        int r = parse_flags(item->att_data.att_dyn, &m.flags, &m.keywords);
                        if (r < 0)
                                return r;
                        m.have_flags = true;
                } else if (item->att_type == MAILIMAP_MSG_ATT_ITEM_STATIC) {
                        struct mailimap_msg_att_static *st = item->att_data.att_static;
                        switch (st->att_type) {
                        case MAILIMAP_MSG_ATT_UID: m.uid = st->att_data.att_uid; break;
                        case MAILIMAP_MSG_ATT_BODY_SECTION: m.have_body = true; break;
                        case MAILIMAP_MSG_ATT_RFC822_SIZE: m.size = st->att_data.att_rfc822_size; break;
                        case MAILIMAP_MSG_ATT_INTERNALDATE:
                                if (st->att_data.att_internal_date)
                                        m.internaldate = date_to_epoch(st->att_data.att_internal_date);
                                break;
                        default: break;
                        }
                } else if (item->att_type == MAILIMAP_MSG_ATT_ITEM_EXTENSION) {
                        struct mailimap_extension_data *ext = item->att_data.att_extension_data;
                        if (ext && ext->ext_extension == &mailimap_extension_condstore &&
                            ext->ext_type == MAILIMAP_CONDSTORE_TYPE_FETCH_DATA) {
                                struct mailimap_condstore_fetch_mod_resp *mr = ext->ext_data;
                                m.modseq = mr->cs_modseq_value;
                        }
                }
        }
        *ret = m;
        return 0;
}

static struct mailimap_fetch_type *fetch_type(bool flags, bool size, bool date, bool modseq,
                                              bool body)
{
        struct mailimap_fetch_type *ft = mailimap_fetch_type_new_fetch_att_list_empty();
        if (!ft)
                return NULL;
        bool ok = mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_uid()) == 0;
        if (ok && flags)
                ok = mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_flags()) == 0;
        if (ok && size)
                ok = mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_rfc822_size()) == 0;
        if (ok && date)
                ok = mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_internaldate()) == 0;
        if (ok && modseq)
                ok = mailimap_fetch_type_new_fetch_att_list_add(ft, mailimap_fetch_att_new_modseq()) == 0;
        if (ok && body)
                ok = mailimap_fetch_type_new_fetch_att_list_add(
                             ft, mailimap_fetch_att_new_body_peek_section(mailimap_section_new(NULL))) == 0;
        if (!ok) {
                mailimap_fetch_type_free(ft);
                return NULL;
        }
        return ft;
}

/* ---- streaming FETCH: responses are handed to us one by one, bodies piece by piece ---- */

typedef struct fetchctx {
        syncd *sd;
        int64_t mailbox_id;
        const char *mbname;     /* UTF-8, for logs */
        bool store_bodies;      /* else: collect srvmsg into list */
        srvlist *list;
        uint32_t min_uid;       /* ignore responses below (for "N:*" quirks) */
        /* the body being received */
        char *body;
        size_t body_len, body_cap;
        bool body_too_big;
        int error;              /* first error inside a callback */
        uint64_t stored_msgs, stored_bytes;
} fetchctx;

static bool on_body(int msg_att_type, struct mailimap_msg_att_body_section *section,
                    const char *bytes, size_t length, void *userdata)
{
        fetchctx *fc = userdata;
        if (fc->body_too_big)
                return true;
        if (fc->body_len + length > BODY_MAX) {
                fc->body_too_big = true;
                return true;
        }
        if (fc->body_len + length > fc->body_cap) {
                size_t cap = fc->body_cap ? fc->body_cap : 64 * 1024;
                while (cap < fc->body_len + length)
                        cap *= 2;
                /* realloc of large blocks is mremap: no second copy. */
                char *b = realloc(fc->body, cap);
                if (!b) {
                        fc->error = -ENOMEM;
                        return false;
                }
                fc->body = b;
                fc->body_cap = cap;
        }
        memcpy(fc->body + fc->body_len, bytes, length);
        fc->body_len += length;
        return true;
}

static void body_reset(fetchctx *fc)
{
        fc->body_len = 0;
        fc->body_too_big = false;
        /* keep up to 4 MB around; give back what a big message took */
        if (fc->body_cap > (4u << 20)) {
                fc->body = acs_free(fc->body);
                fc->body_cap = 0;
        }
}

static void on_att(struct mailimap_msg_att *att, void *userdata)
{
        fetchctx *fc = userdata;
        srvmsg m;

        if (fc->error < 0)
                goto out;
        int r = srvmsg_from_att(att, &m);
        if (r < 0) {
                fc->error = r;
                goto out;
        }
        if (m.uid == 0 || m.uid < fc->min_uid) {
                /* Unsolicited FETCH (flag change pushed by the server): handled by the next sync. */
                free(m.keywords);
                goto out;
        }
        if (!fc->store_bodies) {
                r = srvlist_push(fc->list, &m);
                if (r < 0) {
                        free(m.keywords);
                        fc->error = r;
                }
                goto out;
        }
        if (fc->body_too_big) {
                acs_log_mb(LOG_ERR, fc->mbname, "message uid %u is larger than %zu bytes; not cached",
                           m.uid, BODY_MAX);
        } else if (!m.have_body) {
                /* an unsolicited FETCH (flags) in the middle of ours: the next sync applies it */
        } else if (!m.have_flags) {
                fc->error = -EPROTO;
        } else {
                r = writer_push_msg(fc->sd->writer, fc->mailbox_id, &m, fc->body, fc->body_len);
                fc->body = NULL; /* the writer owns it now */
                fc->body_len = fc->body_cap = 0;
                if (r < 0)
                        fc->error = r;
                else {
                        fc->stored_msgs++;
                        fc->stored_bytes += m.size;
                }
        }
        free(m.keywords);
out:
        body_reset(fc);
}

static void handlers_on(syncd *sd, fetchctx *fc)
{
        /* The handlers are only used while a progress function is set (libetpan's rule);
         * imapconn's keeps its literal-size backstop working on this parser path. */
        mailimap_set_progress_callback(sd->imap, acs_imap_progress, NULL, fc);
        mailimap_set_msg_att_handler(sd->imap, on_att, fc);
        mailimap_set_msg_body_handler(sd->imap, fc->store_bodies ? on_body : NULL, fc);
}

static void handlers_off(syncd *sd)
{
        mailimap_set_msg_body_handler(sd->imap, NULL, NULL);
        mailimap_set_msg_att_handler(sd->imap, NULL, NULL);
        mailimap_set_progress_callback(sd->imap, NULL, NULL, NULL);
}

/* UID FETCH set (atts) streaming every response into fc. */
static int uid_fetch_stream(syncd *sd, struct mailimap_set *set, struct mailimap_fetch_type *ft,
                            uint64_t changedsince, fetchctx *fc)
{
        clist *result = NULL;
        int r;

        handlers_on(sd, fc);
        if (changedsince)
                r = mailimap_uid_fetch_changedsince(sd->imap, set, ft, changedsince, &result);
        else
                r = mailimap_uid_fetch(sd->imap, set, ft, &result);
        handlers_off(sd);
        if (result)
                mailimap_fetch_list_free(result);
        free(fc->body);
        fc->body = NULL;
        fc->body_cap = fc->body_len = 0;
        if (fc->error < 0)
                return fc->error;
        /* An empty result of "N:*" style sets or CHANGEDSINCE is fine. */
        return syncd_etpan_error(r);
}

/* ---- local state of a mailbox, sorted by uid ---- */

typedef struct localmsg {
        uint32_t uid;
        int64_t id;
        unsigned flags;
        unsigned state;
        uint64_t modseq;
        char *keywords;
} localmsg;

typedef struct locallist {
        localmsg *v;
        size_t n, cap;
} locallist;

static void locallist_free(locallist *l)
{
        for (size_t i = 0; i < l->n; i++)
                free(l->v[i].keywords);
        free(l->v);
        *l = (locallist){0};
}

static int local_cb(const acs_message *m, void *userdata)
{
        locallist *l = userdata;
        if (m->uid == 0)
                return 0; /* local append waiting for the server */
        if (ACS_GROW(l->v, l->cap, l->n, 256) < 0)
                return -ENOMEM;
        char *kw = strdup(m->keywords ? m->keywords : "");
        if (!kw)
                return -ENOMEM;
        l->v[l->n++] = (localmsg){.uid = m->uid, .id = m->id, .flags = m->flags, .state = m->state,
                                  .modseq = m->modseq, .keywords = kw};
        return 0;
}

static int cmp_local(const void *a, const void *b)
{
        uint32_t x = ((const localmsg *)a)->uid, y = ((const localmsg *)b)->uid;
        return x < y ? -1 : x > y;
}

static int local_load(acs_store *st, int64_t mailbox_id, locallist *ret)
{
        locallist l = {0};
        int r = acs_store_message_list(st, mailbox_id, 0, 0, local_cb, &l);
        if (r < 0) {
                locallist_free(&l);
                return r;
        }
        xqsort(l.v, l.n, sizeof(*l.v), cmp_local);
        *ret = l;
        return 0;
}

static localmsg *local_find(locallist *l, uint32_t uid)
{
        localmsg key = {.uid = uid};
        return l->n ? bsearch(&key, l->v, l->n, sizeof(*l->v), cmp_local) : NULL;
}

/* ---- the op log as the read direction sees it (merge rules, docs/sync-semantics.md) ---- */

typedef struct pendop {
        int kind;
        int64_t seq, mailbox_id, message_id, target_mailbox_id;
        uint32_t uid;
        unsigned flags_add, flags_del;
        char *keywords_add, *keywords_del, *name, *new_name;
} pendop;

typedef struct pending {
        pendop *v;
        size_t n, cap;
} pending;

static void pending_free(pending *p)
{
        for (size_t i = 0; i < p->n; i++) {
                free(p->v[i].keywords_add);
                free(p->v[i].keywords_del);
                free(p->v[i].name);
                free(p->v[i].new_name);
        }
        free(p->v);
        *p = (pending){0};
}

/* Every op still in the log, in seq order (read inside the caller's transaction when it matters). */
static int pending_load(acs_store *st, pending *ret)
{
        pending p = {0};
        int64_t after = 0;
        for (;;) {
                acs_op op = {0};
                int r = acs_store_op_next(st, after, &op);
                if (r == -ENOENT)
                        break;
                if (r < 0) {
                        pending_free(&p);
                        return r;
                }
                after = op.seq;
                if (ACS_GROW(p.v, p.cap, p.n, 16) < 0) {
                        acs_op_clear(&op);
                        pending_free(&p);
                        return -ENOMEM;
                }
                p.v[p.n++] = (pendop){.kind = op.kind, .seq = op.seq, .mailbox_id = op.mailbox_id,
                                      .message_id = op.message_id, .target_mailbox_id = op.target_mailbox_id,
                                      .uid = op.uid, .flags_add = op.flags_add, .flags_del = op.flags_del,
                                      .keywords_add = TAKE_PTR(op.keywords_add),
                                      .keywords_del = TAKE_PTR(op.keywords_del),
                                      .name = TAKE_PTR(op.name), .new_name = TAKE_PTR(op.new_name)};
                acs_op_clear(&op);
        }
        *ret = p;
        return 0;
}

/* Whether a pending EXPUNGE or MOVE removes (mailbox, uid): the server copy must not come back. */
static bool pending_removes(const pending *p, int64_t mailbox_id, uint32_t uid)
{
        for (size_t i = 0; p && i < p->n; i++)
                if ((p->v[i].kind == ACS_OP_EXPUNGE || p->v[i].kind == ACS_OP_MOVE) &&
                    p->v[i].mailbox_id == mailbox_id && p->v[i].uid == uid && uid)
                        return true;
        return false;
}

/* Keyword set operations on sorted, space-separated strings. */
static bool kw_has(const char *list, const char *k, size_t l)
{
        for (const char *p = list; p && *p;) {
                const char *e = strchr(p, ' ');
                size_t n = e ? (size_t)(e - p) : strlen(p);
                if (n == l && memcmp(p, k, l) == 0)
                        return true;
                p = e ? e + 1 : p + n;
        }
        return false;
}

/* (cur ∪ add) \ del, sorted bytewise, malloc'd. */
static char *kw_apply(const char *cur, const char *add, const char *del)
{
        const char *srcs[2] = {cur, add};
        const char *words[512];
        size_t lens[512], n = 0, total = 1;
        for (size_t s = 0; s < 2; s++) {
                for (const char *p = srcs[s]; p && *p;) {
                        const char *e = strchr(p, ' ');
                        size_t l = e ? (size_t)(e - p) : strlen(p);
                        bool dup = false;
                        for (size_t i = 0; i < n && !dup; i++)
                                dup = lens[i] == l && memcmp(words[i], p, l) == 0;
                        if (l && !dup && !kw_has(del, p, l) && n < ACS_ARRAY_SIZE(words)) {
                                words[n] = p;
                                lens[n++] = l;
                                total += l + 1;
                        }
                        p = e ? e + 1 : p + l;
                }
        }
        /* insertion sort: few keywords */
        for (size_t i = 1; i < n; i++) {
                for (size_t j = i; j > 0; j--) {
                        size_t m = lens[j - 1] < lens[j] ? lens[j - 1] : lens[j];
                        int c = memcmp(words[j - 1], words[j], m);
                        if (c < 0 || (c == 0 && lens[j - 1] <= lens[j]))
                                break;
                        const char *tw = words[j];
                        size_t tl = lens[j];
                        words[j] = words[j - 1];
                        lens[j] = lens[j - 1];
                        words[j - 1] = tw;
                        lens[j - 1] = tl;
                }
        }
        char *out = malloc(total), *o = out;
        if (!out)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                if (o != out)
                        *o++ = ' ';
                memcpy(o, words[i], lens[i]);
                o += lens[i];
        }
        *o = 0;
        return out;
}

/*
 * Whether the cached row is still (mailbox_id, uid): acs-fs may have moved or expunged it
 * since the sync read the mailbox (inside the transaction this is stable). Then the
 * server's news about the uid is not about the row any more: its op decides.
 */
static int row_still(acs_store *st, int64_t id, int64_t mailbox_id, uint32_t uid, bool *ret)
{
        acs_message m = {0};
        int r = acs_store_message_get(st, id, &m);
        if (r == -ENOENT) {
                *ret = false;
                return 0;
        }
        if (r < 0)
                return r;
        *ret = m.mailbox_id == mailbox_id && m.uid == uid;
        acs_message_clear(&m);
        return 0;
}

/*
 * Applies the server's flags to a cached message, then re-applies the deltas of the local
 * flag changes still waiting in the op log (so the tree keeps showing them); moves it
 * new/ -> cur/ when it became \Seen.
 */
static int merge_flags(const pending *pend, int64_t message_id, unsigned server_flags, const char *server_kw,
                       unsigned *ret_flags, char **ret_kw)
{
        unsigned flags = server_flags;
        char *kw = strdup(server_kw ? server_kw : "");
        if (!kw)
                return -ENOMEM;
        for (size_t i = 0; pend && i < pend->n; i++) {
                const pendop *o = &pend->v[i];
                if (o->message_id != message_id || o->kind != ACS_OP_FLAGS)
                        continue;
                flags = (flags & ~o->flags_del) | o->flags_add;
                if ((o->keywords_add && *o->keywords_add) || (o->keywords_del && *o->keywords_del)) {
                        char *nk = kw_apply(kw, o->keywords_add, o->keywords_del);
                        if (!nk) {
                                free(kw);
                                return -ENOMEM;
                        }
                        free(kw);
                        kw = nk;
                }
        }
        *ret_flags = flags;
        *ret_kw = kw;
        return 0;
}

int syncd_merged_flags(acs_store *st, int64_t message_id, unsigned server_flags, const char *server_keywords,
                       unsigned *ret_flags, char **ret_keywords)
{
        pending p = {0};
        int r = pending_load(st, &p);
        if (r == 0)
                r = merge_flags(&p, message_id, server_flags, server_keywords, ret_flags, ret_keywords);
        pending_free(&p);
        return r;
}

static int apply_flags(acs_store *st, const pending *pend, int64_t mailbox_id, localmsg *lm, const srvmsg *sm)
{
        if (!sm->have_flags)
                return 0;
        unsigned flags;
        _cleanup_free_ char *kw = NULL;
        int r = merge_flags(pend, lm->id, sm->flags, sm->keywords, &flags, &kw);
        if (r < 0)
                return r;
        if (lm->flags != flags || strcmp(lm->keywords, kw) != 0 ||
            ((lm->state & ACS_MSG_NEW) && (flags & ACS_FLAG_SEEN))) {
                bool same = false;
                r = row_still(st, lm->id, mailbox_id, lm->uid, &same);
                if (r < 0)
                        return r;
                if (!same)
                        return 0;
        }
        if (lm->flags != flags || strcmp(lm->keywords, kw) != 0) {
                r = acs_store_message_set_flags(st, lm->id, flags, kw, sm->modseq);
                if (r == -ENOENT)
                        return 0; /* removed locally meanwhile: its op decides */
                if (r < 0)
                        return r;
                syncd_note_keywords(st, kw);
        }
        if ((lm->state & ACS_MSG_NEW) && (flags & ACS_FLAG_SEEN)) {
                r = acs_store_message_set_state(st, lm->id, lm->state & ~ACS_MSG_NEW);
                if (r < 0 && r != -ENOENT)
                        return r;
        }
        return 0;
}

/* ---- mailbox sync ---- */

typedef struct mbsync {
        syncd *sd;
        acs_mailbox mb;       /* stored row */
        const char *srvname;  /* mUTF-7 */
        uint32_t uidvalidity, uidnext, exists;
        uint64_t highestmodseq;
        locallist local;
        srvlist missing;      /* messages to download */
        pending pend;         /* the op log, read inside the transaction that applies flags */
} mbsync;

/* (Re)reads the op log into ms->pend; call right after acs_store_begin(). */
static int pend_reload(mbsync *ms)
{
        pending_free(&ms->pend);
        return pending_load(ms->sd->store, &ms->pend);
}

static int select_plain(mbsync *ms, uint64_t *ret_modseq)
{
        syncd *sd = ms->sd;
        uint64_t modseq = 0;
        int r;
        if (sd->caps.condstore)
                r = mailimap_select_condstore(sd->imap, ms->srvname, &modseq);
        else
                r = mailimap_select(sd->imap, ms->srvname);
        sd->selected = acs_free(sd->selected);
        if (r != MAILIMAP_NO_ERROR)
                return syncd_etpan_error(r);
        sd->selected = strdup(ms->srvname);
        *ret_modseq = modseq;
        return 0;
}

static void selection(mbsync *ms)
{
        struct mailimap_selection_info *si = ms->sd->imap->imap_selection_info;
        ms->uidvalidity = si ? si->sel_uidvalidity : 0;
        ms->uidnext = si ? si->sel_uidnext : 0;
        ms->exists = si ? si->sel_exists : 0;
}

int syncd_forget_incarnation(syncd *sd, int64_t mailbox_id, uint32_t uidvalidity)
{
        acs_store *st = sd->store;
        locallist l = {0};
        pending p = {0};
        int r = local_load(st, mailbox_id, &l);
        for (size_t i = 0; r == 0 && i < l.n; i++) {
                r = acs_store_message_delete(st, l.v[i].id);
                if (r == -ENOENT)
                        r = 0;
        }
        /*
         * Ops that name a uid of the old UIDVALIDITY: a flag change or expunge is dropped (a
         * uid of another UIDVALIDITY must never reach the server: it could name another
         * message); a move keeps its body and is re-appended into its target by replay.
         */
        if (r == 0)
                r = pending_load(st, &p);
        for (size_t i = 0; r == 0 && i < p.n; i++) {
                const pendop *o = &p.v[i];
                if (o->mailbox_id != mailbox_id || o->uid == 0)
                        continue;
                if (o->kind == ACS_OP_FLAGS || o->kind == ACS_OP_EXPUNGE) {
                        acs_log(LOG_WARNING, "op %" PRId64 " on uid %" PRIu32 " dropped: UIDVALIDITY changed",
                                o->seq, o->uid);
                        r = acs_store_op_done(st, o->seq);
                } else if (o->kind == ACS_OP_MOVE) {
                        r = syncd_replay_mark_stale(sd, o->seq);
                }
        }
        if (r == 0)
                r = acs_store_mailbox_set_state(st, mailbox_id, uidvalidity, 0, 0);
        pending_free(&p);
        locallist_free(&l);
        return r;
}

/* Drops every cached row of the mailbox that came from the server (UIDVALIDITY changed). */
static int rebuild_mailbox(mbsync *ms)
{
        acs_store *st = ms->sd->store;
        int r = acs_store_begin(st, false);
        if (r < 0)
                return r;
        r = syncd_forget_incarnation(ms->sd, ms->mb.id, ms->uidvalidity);
        if (r == 0)
                r = acs_store_commit(st);
        if (r < 0) {
                acs_store_rollback(st);
                return r;
        }
        locallist_free(&ms->local);
        return 0;
}

static int cmp_uid_desc(const void *a, const void *b)
{
        return -cmp_uid_asc(a, b);
}

/* Downloads ms->missing newest first, in batches committed with the mailbox state. */
static int fetch_missing(mbsync *ms, bool final_state)
{
        syncd *sd = ms->sd;
        int r = 0;

        xqsort(ms->missing.v, ms->missing.n, sizeof(*ms->missing.v), cmp_uid_desc);
        uint64_t total_bytes = 0;
        for (size_t i = 0; i < ms->missing.n; i++)
                total_bytes += ms->missing.v[i].size;
        progress_mailbox_begin(ms->mb.name, ms->missing.n, total_bytes);

        struct mailimap_fetch_type *ft = fetch_type(true, true, true, sd->caps.condstore, true);
        uint32_t *uids = malloc((ms->missing.n ? ms->missing.n : 1) * sizeof(*uids));
        /* batches handed to the writer and not yet reported: (seq, msgs, bytes) */
        uint64_t prev_seq = 0, prev_n = 0, prev_bytes = 0;
        if (!ft || !uids) {
                r = -ENOMEM;
                goto out;
        }
        size_t i = 0, batch_max = BATCH_FIRST_MSGS;
        while (i < ms->missing.n) {
                if (syncd_stop) {
                        r = -EINTR;
                        goto out;
                }
                size_t n = 0;
                uint64_t bytes = 0;
                while (i + n < ms->missing.n && n < batch_max &&
                       (n == 0 || bytes + ms->missing.v[i + n].size <= BATCH_MAX_BYTES)) {
                        uids[n] = ms->missing.v[i + n].uid;
                        bytes += ms->missing.v[i + n].size;
                        n++;
                }
                struct mailimap_set *set = set_from_uids(uids, n);
                if (!set) {
                        r = -ENOMEM;
                        goto out;
                }
                fetchctx fc = {.sd = sd, .mailbox_id = ms->mb.id, .mbname = ms->mb.name,
                               .store_bodies = true};
                r = uid_fetch_stream(sd, set, ft, 0, &fc);
                mailimap_set_free(set);
                /* The writer commits this batch (with the mailbox state after the last one)
                 * while we fetch the next; we report a batch once it is committed. */
                uint64_t seq = 0;
                if (r == 0)
                        r = writer_commit(sd->writer, ms->mb.id, i + n == ms->missing.n && final_state,
                                          ms->uidvalidity, ms->uidnext, ms->highestmodseq, &seq);
                if (r == 0 && prev_seq)
                        r = writer_wait(sd->writer, prev_seq);
                if (r < 0)
                        goto out;
                if (prev_seq)
                        progress_add(prev_n, prev_bytes);
                prev_seq = seq;
                prev_n = n;
                prev_bytes = bytes;
                i += n;
                if (batch_max < BATCH_MAX_MSGS)
                        batch_max = batch_max * 4 > BATCH_MAX_MSGS ? BATCH_MAX_MSGS : batch_max * 4;
        }
        if (prev_seq) {
                r = writer_wait(sd->writer, prev_seq);
                if (r == 0)
                        progress_add(prev_n, prev_bytes);
        }
out:
        if (r < 0) {
                /* whatever the writer had of an unfinished batch is rolled back */
                int wr = writer_reset(sd->writer);
                if (wr < 0 && (r == -EINTR || r == -ECONNRESET || r == -EPROTO))
                        r = wr;
        }
        progress_mailbox_end();
        free(uids);
        if (ft)
                mailimap_fetch_type_free(ft);
        return r;
}

/* Deletes cached messages the server no longer has; keep[] sorted ascending. */
static int expunge_absent(mbsync *ms, const uint32_t *keep, size_t nkeep, uint32_t below_uid)
{
        acs_store *st = ms->sd->store;
        size_t k = 0;
        for (size_t i = 0; i < ms->local.n; i++) {
                uint32_t uid = ms->local.v[i].uid;
                if (uid >= below_uid)
                        continue;
                while (k < nkeep && keep[k] < uid)
                        k++;
                if (k < nkeep && keep[k] == uid)
                        continue;
                bool same = false;
                int r = row_still(st, ms->local.v[i].id, ms->mb.id, uid, &same);
                if (r == 0 && same)
                        r = acs_store_message_delete(st, ms->local.v[i].id);
                if (r < 0 && r != -ENOENT)
                        return r;
        }
        return 0;
}

static int cmp_u32(const void *a, const void *b)
{
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
        return x < y ? -1 : x > y;
}

/*
 * Plain path (and full sync): UID FETCH 1:* (UID FLAGS RFC822.SIZE [MODSEQ]) and compare
 * everything with the cache: flags, expunges, and the list of messages to download.
 */
static int scan_full(mbsync *ms)
{
        syncd *sd = ms->sd;
        srvlist all = {0};
        int r;

        if (ms->exists > 0) {
                struct mailimap_fetch_type *ft = fetch_type(true, true, false, sd->caps.condstore, false);
                struct mailimap_set *set = mailimap_set_new_interval(1, 0);
                if (!ft || !set) {
                        if (ft)
                                mailimap_fetch_type_free(ft);
                        if (set)
                                mailimap_set_free(set);
                        return -ENOMEM;
                }
                fetchctx fc = {.sd = sd, .mailbox_id = ms->mb.id, .mbname = ms->mb.name,
                               .list = &all};
                r = uid_fetch_stream(sd, set, ft, 0, &fc);
                mailimap_set_free(set);
                mailimap_fetch_type_free(ft);
                if (r < 0)
                        goto out;
        }
        xqsort(all.v, all.n, sizeof(*all.v), cmp_uid_asc);

        acs_store *st = sd->store;
        r = acs_store_begin(st, false);
        if (r < 0)
                goto out;
        r = pend_reload(ms);
        if (r < 0)
                goto fail;
        uint32_t *keep = malloc((all.n ? all.n : 1) * sizeof(*keep));
        if (!keep) {
                r = -ENOMEM;
                goto fail;
        }
        for (size_t i = 0; i < all.n; i++)
                keep[i] = all.v[i].uid;
        r = expunge_absent(ms, keep, all.n, UINT32_MAX);
        free(keep);
        if (r < 0)
                goto fail;
        for (size_t i = 0; i < all.n; i++) {
                localmsg *lm = local_find(&ms->local, all.v[i].uid);
                if (lm) {
                        r = apply_flags(st, &ms->pend, ms->mb.id, lm, &all.v[i]);
                        if (r < 0)
                                goto fail;
                } else if (!pending_removes(&ms->pend, ms->mb.id, all.v[i].uid)) {
                        r = srvlist_push(&ms->missing, &all.v[i]);
                        if (r < 0)
                                goto fail;
                        all.v[i].keywords = NULL; /* moved */
                }
        }
        /* Without CONDSTORE highestmodseq stays 0; uidnext is only recorded once all is here. */
        r = acs_store_mailbox_set_state(st, ms->mb.id, ms->uidvalidity,
                                        ms->missing.n ? 0 : ms->uidnext,
                                        ms->missing.n ? 0 : ms->highestmodseq);
        if (r < 0)
                goto fail;
        r = acs_store_commit(st);
        if (r < 0)
                goto fail;
        goto out;
fail:
        acs_store_rollback(st);
out:
        srvlist_free(&all);
        return r;
}

/* New messages: UID FETCH from:* (UID FLAGS RFC822.SIZE MODSEQ), the ones not cached go to missing. */
static int scan_new(mbsync *ms, uint32_t from)
{
        syncd *sd = ms->sd;
        srvlist nl = {0};
        if (from == 0)
                from = 1;
        if (ms->uidnext && from >= ms->uidnext)
                return 0;
        struct mailimap_fetch_type *ft = fetch_type(true, true, false, sd->caps.condstore, false);
        struct mailimap_set *set = mailimap_set_new_interval(from, 0);
        if (!ft || !set) {
                if (ft)
                        mailimap_fetch_type_free(ft);
                if (set)
                        mailimap_set_free(set);
                return -ENOMEM;
        }
        fetchctx fc = {.sd = sd, .mailbox_id = ms->mb.id, .mbname = ms->mb.name, .list = &nl,
                       .min_uid = from};
        int r = uid_fetch_stream(sd, set, ft, 0, &fc);
        mailimap_set_free(set);
        mailimap_fetch_type_free(ft);
        pending pend = {0};
        if (r == 0)
                r = pending_load(sd->store, &pend);
        for (size_t i = 0; r == 0 && i < nl.n; i++) {
                if (local_find(&ms->local, nl.v[i].uid) || pending_removes(&pend, ms->mb.id, nl.v[i].uid))
                        continue;
                r = srvlist_push(&ms->missing, &nl.v[i]);
                if (r == 0)
                        nl.v[i].keywords = NULL;
        }
        pending_free(&pend);
        srvlist_free(&nl);
        return r;
}

/* Applies FETCH responses (flag changes, maybe new messages) collected in changed. */
static int apply_changes(mbsync *ms, srvlist *changed)
{
        acs_store *st = ms->sd->store;
        for (size_t i = 0; i < changed->n; i++) {
                localmsg *lm = local_find(&ms->local, changed->v[i].uid);
                if (!lm)
                        continue; /* new: scan_new fetches it with its size */
                int r = apply_flags(st, &ms->pend, ms->mb.id, lm, &changed->v[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int collect_fetch_list(clist *fetch_result, srvlist *ret)
{
        if (!fetch_result)
                return 0;
        for (clistiter *it = clist_begin(fetch_result); it; it = clist_next(it)) {
                srvmsg m;
                int r = srvmsg_from_att(clist_content(it), &m);
                if (r < 0)
                        return r;
                if (m.uid == 0) {
                        free(m.keywords);
                        continue;
                }
                r = srvlist_push(ret, &m);
                if (r < 0) {
                        free(m.keywords);
                        return r;
                }
        }
        return 0;
}

/* Appends the ranges of a VANISHED set as (first, last) pairs to *ranges (2 * *n entries). */
static int vanished_ranges(struct mailimap_set *set, uint32_t **ranges, size_t *n)
{
        if (!set || !set->set_list)
                return 0;
        for (clistiter *it = clist_begin(set->set_list); it; it = clist_next(it)) {
                struct mailimap_set_item *si = clist_content(it);
                uint32_t a = si->set_first, b = si->set_last;
                if (a > b) {
                        uint32_t t = a;
                        a = b;
                        b = t;
                }
                if (a == 0)
                        return -EPROTO;
                uint32_t *v = realloc(*ranges, (*n + 1) * 2 * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                v[2 * *n] = a;
                v[2 * *n + 1] = b;
                *ranges = v;
                (*n)++;
        }
        return 0;
}

/* QRESYNC: SELECT (QRESYNC (uidvalidity modseq)) gives VANISHED and changed FLAGS at once. */
static int sync_qresync(mbsync *ms, bool *ret_uidvalidity_changed)
{
        syncd *sd = ms->sd;
        clist *fetch_result = NULL;
        uint64_t modseq = 0;
        srvlist changed = {0};
        uint32_t *gone = NULL; /* (first, last) pairs */
        size_t ngone = 0;

        /*
         * libetpan 1.9.4's mailimap_select_qresync() sends "SELECT mb QRESYNC (...)" without
         * the parentheses RFC 7162 requires, which Dovecot ignores; send it ourselves.
         */
        int r;
        {
                _cleanup_free_ char *q = syncd_quote(ms->srvname);
                char *cmd = NULL;
                if (!q || asprintf(&cmd, "SELECT %s (QRESYNC (%" PRIu32 " %" PRIu64 "))", q,
                                   ms->mb.uidvalidity, ms->mb.highestmodseq) < 0)
                        return -ENOMEM;
                mailimap *imap = sd->imap;
                if (imap->imap_selection_info)
                        mailimap_selection_info_free(imap->imap_selection_info);
                imap->imap_selection_info = mailimap_selection_info_new();
                sd->selected = acs_free(sd->selected);
                r = syncd_raw_command(sd, cmd);
                free(cmd);
                if (r < 0) {
                        if (r == -EREMOTEIO)
                                imap->imap_state = MAILIMAP_STATE_AUTHENTICATED;
                        return r;
                }
                imap->imap_state = MAILIMAP_STATE_SELECTED;
                struct mailimap_response_info *ri = imap->imap_response_info;
                fetch_result = ri->rsp_fetch_list;
                ri->rsp_fetch_list = NULL;
                for (clistiter *it = clist_begin(ri->rsp_extension_list); it; it = clist_next(it)) {
                        struct mailimap_extension_data *ed = clist_content(it);
                        if (ed->ext_extension == &mailimap_extension_qresync &&
                            ed->ext_type == MAILIMAP_QRESYNC_TYPE_VANISHED && ed->ext_data) {
                                struct mailimap_qresync_vanished *v = ed->ext_data;
                                r = vanished_ranges(v->qr_known_uids, &gone, &ngone);
                                if (r < 0)
                                        goto out;
                        } else if (ed->ext_extension == &mailimap_extension_condstore &&
                                   ed->ext_type == MAILIMAP_CONDSTORE_TYPE_RESP_TEXT_CODE && ed->ext_data) {
                                struct mailimap_condstore_resptextcode *tc = ed->ext_data;
                                if (tc->cs_type == MAILIMAP_CONDSTORE_RESPTEXTCODE_HIGHESTMODSEQ)
                                        modseq = tc->cs_data.cs_modseq_value;
                        }
                }
        }
        sd->selected = strdup(ms->srvname);
        selection(ms);
        ms->highestmodseq = modseq;
        *ret_uidvalidity_changed = ms->uidvalidity != ms->mb.uidvalidity;
        if (*ret_uidvalidity_changed)
                goto out;

        r = collect_fetch_list(fetch_result, &changed);
        if (r < 0)
                goto out;

        acs_store *st = sd->store;
        r = acs_store_begin(st, false);
        if (r < 0)
                goto out;
        r = pend_reload(ms);
        if (r < 0)
                goto fail;
        /* Ranges may be huge ("1:4294967295"); walk what we have instead of what they span. */
        for (size_t i = 0; i < ms->local.n && ngone; i++) {
                uint32_t uid = ms->local.v[i].uid;
                for (size_t k = 0; k < ngone; k++) {
                        if (uid < gone[2 * k] || uid > gone[2 * k + 1])
                                continue;
                        bool same = false;
                        r = row_still(st, ms->local.v[i].id, ms->mb.id, uid, &same);
                        if (r == 0 && same)
                                r = acs_store_message_delete(st, ms->local.v[i].id);
                        if (r < 0 && r != -ENOENT)
                                goto fail;
                        r = 0;
                        break;
                }
        }
        r = apply_changes(ms, &changed);
        if (r < 0)
                goto fail;
        r = acs_store_commit(st);
        if (r < 0)
                goto fail;
        /* reload: deleted rows are gone */
        if (ngone) {
                locallist_free(&ms->local);
                r = local_load(st, ms->mb.id, &ms->local);
                if (r < 0)
                        goto out;
        }
        r = scan_new(ms, ms->mb.uidnext);
        goto out;
fail:
        acs_store_rollback(st);
out:
        free(gone);
        srvlist_free(&changed);
        if (fetch_result)
                mailimap_fetch_list_free(fetch_result);
        return r;
}

/* CONDSTORE only: FETCH CHANGEDSINCE for flags, UID SEARCH for expunges. */
static int sync_condstore(mbsync *ms)
{
        syncd *sd = ms->sd;
        acs_store *st = sd->store;
        srvlist changed = {0};
        clist *uids = NULL;
        uint32_t *keep = NULL;
        int r = 0;

        if (ms->highestmodseq != ms->mb.highestmodseq && ms->exists > 0) {
                struct mailimap_fetch_type *ft = fetch_type(true, false, false, true, false);
                struct mailimap_set *set = mailimap_set_new_interval(1, 0);
                if (!ft || !set) {
                        if (ft)
                                mailimap_fetch_type_free(ft);
                        if (set)
                                mailimap_set_free(set);
                        return -ENOMEM;
                }
                fetchctx fc = {.sd = sd, .mailbox_id = ms->mb.id, .mbname = ms->mb.name,
                               .list = &changed};
                r = uid_fetch_stream(sd, set, ft, ms->mb.highestmodseq, &fc);
                mailimap_set_free(set);
                mailimap_fetch_type_free(ft);
                if (r < 0)
                        goto out;
        }

        /* Expunges: what of 1:(old uidnext - 1) still exists. Skipped when the counts agree. */
        size_t nkeep = 0;
        bool check_expunge = ms->mb.uidnext > 1 && ms->local.n > 0;
        if (check_expunge) {
                struct mailimap_set *set = mailimap_set_new_interval(1, ms->mb.uidnext - 1);
                struct mailimap_search_key *key = set ? mailimap_search_key_new_uid(set) : NULL;
                if (!key) {
                        if (set)
                                mailimap_set_free(set);
                        r = -ENOMEM;
                        goto out;
                }
                r = syncd_etpan_error(mailimap_uid_search(sd->imap, NULL, key, &uids));
                mailimap_search_key_free(key);
                if (r < 0)
                        goto out;
                nkeep = uids ? (size_t)clist_count(uids) : 0;
                keep = malloc((nkeep ? nkeep : 1) * sizeof(*keep));
                if (!keep) {
                        r = -ENOMEM;
                        goto out;
                }
                size_t k = 0;
                for (clistiter *it = uids ? clist_begin(uids) : NULL; it; it = clist_next(it))
                        keep[k++] = *(uint32_t *)clist_content(it);
                xqsort(keep, nkeep, sizeof(*keep), cmp_u32);
        }

        r = acs_store_begin(st, false);
        if (r < 0)
                goto out;
        r = pend_reload(ms);
        if (r < 0)
                goto fail;
        if (check_expunge) {
                r = expunge_absent(ms, keep, nkeep, ms->mb.uidnext);
                if (r < 0)
                        goto fail;
        }
        r = apply_changes(ms, &changed);
        if (r < 0)
                goto fail;
        r = acs_store_commit(st);
        if (r < 0)
                goto fail;
        locallist_free(&ms->local);
        r = local_load(st, ms->mb.id, &ms->local);
        if (r < 0)
                goto out;
        r = scan_new(ms, ms->mb.uidnext);
        goto out;
fail:
        acs_store_rollback(st);
out:
        if (uids)
                mailimap_search_result_free(uids);
        free(keep);
        srvlist_free(&changed);
        return r;
}

static int sync_one(syncd *sd, acs_mailbox *mb, const char *srvname)
{
        mbsync ms = {.sd = sd, .mb = *mb, .srvname = srvname};
        acs_store *st = sd->store;
        int r;

        r = local_load(st, mb->id, &ms.local);
        if (r < 0)
                return r;

        bool complete = mb->uidvalidity && mb->uidnext;
        bool use_qresync = sd->qresync_enabled && complete && mb->highestmodseq;
        bool use_condstore = !use_qresync && sd->caps.condstore && complete && mb->highestmodseq;

        const char *path = use_qresync ? "qresync" : use_condstore ? "condstore" : complete ? "scan" : "full";
        acs_log_mb(LOG_DEBUG, mb->name, "sync path: %s", path);
        progress_event_kv("sync", mb->name, "path", path);
        if (use_qresync) {
                bool changed_uv = false;
                r = sync_qresync(&ms, &changed_uv);
                if (r < 0)
                        goto out;
                if (changed_uv) {
                        acs_log_mb(LOG_NOTICE, mb->name, "UIDVALIDITY changed %u -> %u: rebuilding",
                                   mb->uidvalidity, ms.uidvalidity);
                        progress_event("uidvalidity", mb->name);
                        r = rebuild_mailbox(&ms);
                        if (r == 0)
                                r = scan_full(&ms);
                }
        } else {
                uint64_t modseq = 0;
                r = select_plain(&ms, &modseq);
                if (r < 0)
                        goto out;
                selection(&ms);
                ms.highestmodseq = modseq;
                if (mb->uidvalidity && ms.uidvalidity != mb->uidvalidity) {
                        acs_log_mb(LOG_NOTICE, mb->name, "UIDVALIDITY changed %u -> %u: rebuilding",
                                   mb->uidvalidity, ms.uidvalidity);
                        progress_event("uidvalidity", mb->name);
                        r = rebuild_mailbox(&ms);
                        if (r == 0)
                                r = scan_full(&ms);
                } else if (use_condstore) {
                        r = sync_condstore(&ms);
                } else {
                        r = scan_full(&ms);
                }
        }
        if (r < 0)
                goto out;
        if (ms.uidnext == 0) {
                /* server sent no UIDNEXT: derive it */
                uint32_t mx = 0;
                for (size_t i = 0; i < ms.missing.n; i++)
                        if (ms.missing.v[i].uid > mx)
                                mx = ms.missing.v[i].uid;
                for (size_t i = 0; i < ms.local.n; i++)
                        if (ms.local.v[i].uid > mx)
                                mx = ms.local.v[i].uid;
                ms.uidnext = mx + 1;
        }
        if (ms.missing.n) {
                r = fetch_missing(&ms, true);
        } else if (ms.uidvalidity != mb->uidvalidity || ms.uidnext != mb->uidnext ||
                   ms.highestmodseq != mb->highestmodseq) {
                r = acs_store_begin(st, false);
                if (r == 0)
                        r = acs_store_mailbox_set_state(st, mb->id, ms.uidvalidity, ms.uidnext,
                                                        ms.highestmodseq);
                if (r == 0)
                        r = acs_store_commit(st);
                else
                        acs_store_rollback(st);
        }
out:
        locallist_free(&ms.local);
        srvlist_free(&ms.missing);
        pending_free(&ms.pend);
        return r;
}

/* ---- mailbox list ---- */

typedef struct srvbox {
        char *srvname;   /* mUTF-7 as the server spells it */
        char *name;      /* UTF-8 */
        char delim;
        unsigned attrs;
        uint32_t uidvalidity; /* from STATUS, only when needed for rename detection */
} srvbox;

typedef struct boxlist {
        srvbox *v;
        size_t n, cap;
} boxlist;

static void boxlist_free(boxlist *l)
{
        for (size_t i = 0; i < l->n; i++) {
                free(l->v[i].srvname);
                free(l->v[i].name);
        }
        free(l->v);
        *l = (boxlist){0};
}

static srvbox *boxlist_find(boxlist *l, const char *name)
{
        for (size_t i = 0; i < l->n; i++)
                if (strcmp(l->v[i].name, name) == 0)
                        return &l->v[i];
        return NULL;
}

static unsigned list_attrs(struct mailimap_mbx_list_flags *fl)
{
        static const struct {
                const char *name;
                unsigned attr;
        } map[] = {
                {"All", ACS_MBOX_ALL},         {"Archive", ACS_MBOX_ARCHIVE},
                {"Drafts", ACS_MBOX_DRAFTS},   {"Flagged", ACS_MBOX_FLAGGED},
                {"Junk", ACS_MBOX_JUNK},       {"Sent", ACS_MBOX_SENT},
                {"Trash", ACS_MBOX_TRASH},     {"NonExistent", ACS_MBOX_NOSELECT},
        };
        unsigned a = 0;
        if (!fl)
                return 0;
        if (fl->mbf_type == MAILIMAP_MBX_LIST_FLAGS_SFLAG && fl->mbf_sflag == MAILIMAP_MBX_LIST_SFLAG_NOSELECT)
                a |= ACS_MBOX_NOSELECT;
        for (clistiter *it = fl->mbf_oflags ? clist_begin(fl->mbf_oflags) : NULL; it; it = clist_next(it)) {
                struct mailimap_mbx_list_oflag *of = clist_content(it);
                if (of->of_type == MAILIMAP_MBX_LIST_OFLAG_NOINFERIORS) {
                        a |= ACS_MBOX_NOINFERIORS;
                        continue;
                }
                if (!of->of_flag_ext)
                        continue;
                for (size_t i = 0; i < ACS_ARRAY_SIZE(map); i++)
                        if (strcasecmp(of->of_flag_ext, map[i].name) == 0)
                                a |= map[i].attr;
        }
        return a;
}

static int read_list(syncd *sd, bool lsub, boxlist *out)
{
        clist *result = NULL;
        int r = lsub ? mailimap_lsub(sd->imap, "", "*", &result) : mailimap_list(sd->imap, "", "*", &result);
        if (r != MAILIMAP_NO_ERROR) {
                if (result)
                        mailimap_list_result_free(result);
                return syncd_etpan_error(r);
        }
        r = 0;
        for (clistiter *it = result ? clist_begin(result) : NULL; it; it = clist_next(it)) {
                struct mailimap_mailbox_list *ml = clist_content(it);
                const char *err = NULL;
                char *utf8 = NULL;
                if (strcasecmp(ml->mb_name, "INBOX") == 0) {
                        utf8 = strdup("INBOX");
                } else if (acs_mutf7_to_utf8(ml->mb_name, &utf8, &err) < 0) {
                        acs_log(LOG_WARNING, "mailbox name \"%s\" is not valid modified UTF-7 (%s); skipped",
                                ml->mb_name, err ? err : "?");
                        continue;
                }
                if (!utf8) {
                        r = -ENOMEM;
                        break;
                }
                if (lsub) {
                        srvbox *b = boxlist_find(out, utf8);
                        if (b)
                                b->attrs |= ACS_MBOX_SUBSCRIBED;
                        free(utf8);
                        continue;
                }
                if (ACS_GROW(out->v, out->cap, out->n, 32) < 0) {
                        free(utf8);
                        r = -ENOMEM;
                        break;
                }
                char *srv = strdup(strcasecmp(ml->mb_name, "INBOX") == 0 ? "INBOX" : ml->mb_name);
                if (!srv) {
                        free(utf8);
                        r = -ENOMEM;
                        break;
                }
                out->v[out->n++] = (srvbox){.srvname = srv, .name = utf8, .delim = ml->mb_delimiter,
                                            .attrs = list_attrs(ml->mb_flag)};
        }
        if (result)
                mailimap_list_result_free(result);
        return r;
}

typedef struct status {
        uint32_t uidvalidity, uidnext, messages;
        uint64_t highestmodseq;
        bool has_modseq;
} status;

static status status_parse(const struct mailimap_mailbox_data_status *st)
{
        status s = {0};
        for (clistiter *it = st && st->st_info_list ? clist_begin(st->st_info_list) : NULL; it;
             it = clist_next(it)) {
                struct mailimap_status_info *si = clist_content(it);
                switch (si->st_att) {
                case MAILIMAP_STATUS_ATT_UIDVALIDITY: s.uidvalidity = si->st_value; break;
                case MAILIMAP_STATUS_ATT_UIDNEXT: s.uidnext = si->st_value; break;
                case MAILIMAP_STATUS_ATT_MESSAGES: s.messages = si->st_value; break;
                case MAILIMAP_STATUS_ATT_HIGHESTMODSEQ:
                case MAILIMAP_STATUS_ATT_EXTENSION:
                        if (si->st_ext_data && si->st_ext_data->ext_extension == &mailimap_extension_condstore &&
                            si->st_ext_data->ext_type == MAILIMAP_CONDSTORE_TYPE_STATUS_INFO) {
                                struct mailimap_condstore_status_info *ci = si->st_ext_data->ext_data;
                                s.highestmodseq = ci->cs_highestmodseq_value;
                                s.has_modseq = true;
                        }
                        break;
                default: break;
                }
        }
        return s;
}

static int get_status(syncd *sd, const char *srvname, status *ret)
{
        struct mailimap_status_att_list *sl = mailimap_status_att_list_new_empty();
        if (!sl)
                return -ENOMEM;
        mailimap_status_att_list_add(sl, MAILIMAP_STATUS_ATT_UIDVALIDITY);
        mailimap_status_att_list_add(sl, MAILIMAP_STATUS_ATT_UIDNEXT);
        mailimap_status_att_list_add(sl, MAILIMAP_STATUS_ATT_MESSAGES);
        if (sd->caps.condstore)
                mailimap_status_att_list_add(sl, MAILIMAP_STATUS_ATT_HIGHESTMODSEQ);
        struct mailimap_mailbox_data_status *st = NULL;
        int r = mailimap_status(sd->imap, srvname, sl, &st);
        mailimap_status_att_list_free(sl);
        if (r != MAILIMAP_NO_ERROR) {
                if (st)
                        mailimap_mailbox_data_status_free(st);
                return syncd_etpan_error(r);
        }
        status s = status_parse(st);
        if (st)
                mailimap_mailbox_data_status_free(st);
        *ret = s;
        return 0;
}

/*
 * STATUS of many mailboxes with one round trip per chunk: all commands are sent, then the
 * responses are parsed in order. ok[i] is false when the server answered NO for names[i].
 */
#define STATUS_CHUNK 64
enum { STATUS_NO = 0, STATUS_OK = 1, STATUS_UNKNOWN = 2 };

/* Whether the mailbox of a STATUS reply (libetpan leaves a quoted name quoted) is name. */
static bool status_name_is(const char *got, const char *name)
{
        if (strcasecmp(name, "INBOX") == 0)
                return strcasecmp(got, "INBOX") == 0 || strcasecmp(got, "\"INBOX\"") == 0;
        size_t n = strlen(got);
        if (n < 2 || got[0] != '"' || got[n - 1] != '"')
                return strcmp(got, name) == 0;
        const char *p = got + 1, *end = got + n - 1;
        for (; p < end; p++, name++) {
                if (*p == '\\' && p + 1 < end)
                        p++;
                if (*p != *name)
                        return false;
        }
        return *name == 0;
}
static int status_many(syncd *sd, char *const *names, size_t n, status *ret, unsigned char *ok)
{
        mailimap *imap = sd->imap;
        for (size_t c0 = 0; c0 < n; c0 += STATUS_CHUNK) {
                size_t cn = n - c0 < STATUS_CHUNK ? n - c0 : STATUS_CHUNK;
                int base = imap->imap_tag;
                for (size_t k = 0; k < cn; k++) {
                        _cleanup_free_ char *q = syncd_quote(names[c0 + k]);
                        char *cmd = NULL;
                        if (!q || asprintf(&cmd, "STATUS %s (UIDVALIDITY UIDNEXT MESSAGES%s)\r\n", q,
                                           sd->caps.condstore ? " HIGHESTMODSEQ" : "") < 0)
                                return -ENOMEM;
                        int r = mailimap_send_current_tag(imap);
                        if (r == MAILIMAP_NO_ERROR && mailstream_write(imap->imap_stream, cmd, strlen(cmd)) < 0)
                                r = MAILIMAP_ERROR_STREAM;
                        free(cmd);
                        if (r != MAILIMAP_NO_ERROR)
                                return syncd_etpan_error(r);
                }
                if (mailstream_flush(imap->imap_stream) == -1)
                        return -ECONNRESET;
                int last = imap->imap_tag;
                for (size_t k = 0; k < cn; k++) {
                        struct mailimap_response *resp = NULL;
                        imap->imap_tag = base + 1 + (int)k; /* the tag this response must carry */
                        int r = mailimap_read_line(imap) ? mailimap_parse_response(imap, &resp)
                                                         : MAILIMAP_ERROR_STREAM;
                        if (r != MAILIMAP_NO_ERROR) {
                                imap->imap_tag = last;
                                return syncd_etpan_error(r);
                        }
                        int type = resp->rsp_resp_done->rsp_data.rsp_tagged->rsp_cond_state->rsp_type;
                        /*
                         * libetpan moves every STATUS into imap_response_info (keeping the last);
                         * more than one STATUS, or anything else untagged (NOTIFY's STATUS of
                         * another mailbox, EXISTS, EXPUNGE, FETCH, LIST), is news.
                         */
                        unsigned nstatus = 0;
                        clist *dl = resp->rsp_cont_req_or_resp_data_list;
                        for (clistiter *it = dl ? clist_begin(dl) : NULL; it; it = clist_next(it)) {
                                struct mailimap_cont_req_or_resp_data *cr = clist_content(it);
                                if (cr->rsp_type != MAILIMAP_RESP_RESP_DATA || !cr->rsp_data.rsp_resp_data)
                                        continue;
                                struct mailimap_response_data *rd = cr->rsp_data.rsp_resp_data;
                                if (rd->rsp_type == MAILIMAP_RESP_DATA_TYPE_MAILBOX_DATA &&
                                    rd->rsp_data.rsp_mailbox_data) {
                                        int t = rd->rsp_data.rsp_mailbox_data->mbd_type;
                                        if (t == MAILIMAP_MAILBOX_DATA_STATUS)
                                                nstatus++;
                                        else if (t == MAILIMAP_MAILBOX_DATA_LIST || t == MAILIMAP_MAILBOX_DATA_LSUB)
                                                sd->list_dirty = sd->unsolicited = true;
                                        else
                                                sd->unsolicited = true;
                                } else if (rd->rsp_type == MAILIMAP_RESP_DATA_TYPE_MESSAGE_DATA ||
                                           rd->rsp_type == MAILIMAP_RESP_DATA_TYPE_EXTENSION_DATA) {
                                        sd->unsolicited = true;
                                }
                        }
                        if (nstatus > 1)
                                sd->unsolicited = true;
                        struct mailimap_response_info *ri = imap->imap_response_info;
                        const struct mailimap_mailbox_data_status *ms = ri ? ri->rsp_status : NULL;
                        if (type != MAILIMAP_RESP_COND_STATE_OK)
                                ok[c0 + k] = STATUS_NO;
                        else if (ms && ms->st_mailbox && status_name_is(ms->st_mailbox, names[c0 + k])) {
                                ret[c0 + k] = status_parse(ms);
                                ok[c0 + k] = STATUS_OK;
                        } else {
                                acs_log(LOG_DEBUG, "STATUS for \"%s\" answered for \"%s\"", names[c0 + k],
                                        ms && ms->st_mailbox ? ms->st_mailbox : "(none)");
                                ok[c0 + k] = STATUS_UNKNOWN; /* ours was overtaken: sync it anyway */
                        }
                        mailimap_response_free(resp);
                }
                imap->imap_tag = last;
        }
        return 0;
}

typedef struct storedbox {
        int64_t id;
        char *name;
        char delim;
        unsigned attrs;
        uint32_t uidvalidity;
} storedbox;

typedef struct storedlist {
        storedbox *v;
        size_t n, cap;
} storedlist;

static int stored_cb(const acs_mailbox *mb, void *userdata)
{
        storedlist *l = userdata;
        if (ACS_GROW(l->v, l->cap, l->n, 32) < 0)
                return -ENOMEM;
        char *n = strdup(mb->name);
        if (!n)
                return -ENOMEM;
        l->v[l->n++] = (storedbox){.id = mb->id, .name = n, .delim = mb->delim, .attrs = mb->attrs,
                                   .uidvalidity = mb->uidvalidity};
        return 0;
}

static void storedlist_free(storedlist *l)
{
        for (size_t i = 0; i < l->n; i++)
                free(l->v[i].name);
        free(l->v);
        *l = (storedlist){0};
}

/* Whether name is base or below it (base + delimiter + ...). */
static bool name_at_or_below(const char *name, const char *base, char delim)
{
        size_t l = strlen(base);
        if (strncmp(name, base, l) != 0)
                return false;
        return name[l] == 0 || (delim && name[l] == delim);
}

/*
 * A cached mailbox the list sync must keep although the server does not list it: a local
 * CREATE or RENAME waiting in the op log, or ops that append or move mail into it (the
 * server deleted it meanwhile; replay creates it again).
 */
static bool pending_keeps(const pending *p, const storedbox *b, bool *ret_local_only)
{
        bool keep = false, local_only = false;
        for (size_t i = 0; i < p->n; i++) {
                const pendop *o = &p->v[i];
                if ((o->kind == ACS_OP_CREATE && o->name && strcmp(o->name, b->name) == 0) ||
                    (o->kind == ACS_OP_RENAME && o->new_name && name_at_or_below(b->name, o->new_name, b->delim))) {
                        keep = local_only = true;
                } else if ((o->kind == ACS_OP_APPEND && o->mailbox_id == b->id) ||
                           (o->kind == ACS_OP_MOVE && o->target_mailbox_id == b->id)) {
                        keep = true;
                }
        }
        *ret_local_only = local_only;
        return keep;
}

/* A server mailbox the list sync must not add: a local DELETE or RENAME of it is waiting. */
static bool pending_hides(const pending *p, const char *name, char delim)
{
        for (size_t i = 0; i < p->n; i++) {
                const pendop *o = &p->v[i];
                if ((o->kind == ACS_OP_DELETE && o->name && strcmp(o->name, name) == 0) ||
                    (o->kind == ACS_OP_RENAME && o->name && name_at_or_below(name, o->name, delim)))
                        return true;
        }
        return false;
}

/* Deletes the rows of a mailbox that came from the server (uid set); local ones stay. */
static int drop_server_rows(acs_store *st, int64_t mailbox_id)
{
        locallist l = {0};
        int r = local_load(st, mailbox_id, &l);
        for (size_t i = 0; r == 0 && i < l.n; i++) {
                r = acs_store_message_delete(st, l.v[i].id);
                if (r == -ENOENT)
                        r = 0;
        }
        locallist_free(&l);
        if (r == 0)
                r = acs_store_mailbox_set_state(st, mailbox_id, 0, 0, 0);
        return r;
}

int syncd_sync_list(syncd *sd)
{
        boxlist srv = {0};
        storedlist loc = {0};
        pending pend = {0};
        acs_store *st = sd->store;
        int r;

        /* local changes first: the list then already shows them */
        r = syncd_replay(sd);
        if (r < 0)
                return r;
        r = read_list(sd, false, &srv);
        if (r == 0)
                r = read_list(sd, true, &srv);
        if (r == 0)
                r = acs_store_mailbox_foreach(st, stored_cb, &loc);
        if (r < 0)
                goto out;

        /* Mailboxes gone from the server; a new mailbox with the same UIDVALIDITY is a rename. */
        bool any_gone = false;
        for (size_t i = 0; i < loc.n; i++)
                if (!boxlist_find(&srv, loc.v[i].name))
                        any_gone = true;
        if (any_gone) {
                for (size_t j = 0; j < srv.n; j++) {
                        bool known = false;
                        for (size_t i = 0; i < loc.n && !known; i++)
                                known = strcmp(loc.v[i].name, srv.v[j].name) == 0;
                        if (known || (srv.v[j].attrs & ACS_MBOX_NOSELECT))
                                continue;
                        status s = {0};
                        r = get_status(sd, srv.v[j].srvname, &s);
                        if (r == -EREMOTEIO)
                                continue;
                        if (r < 0)
                                goto out;
                        srv.v[j].uidvalidity = s.uidvalidity;
                }
        }

        r = acs_store_begin(st, false);
        if (r < 0)
                goto out;
        /* the tree may have created, renamed or deleted folders meanwhile: decide on what
         * the cache holds now, with the op log of this same moment */
        storedlist_free(&loc);
        r = acs_store_mailbox_foreach(st, stored_cb, &loc);
        if (r == 0)
                r = pending_load(st, &pend);
        if (r < 0)
                goto fail;
        for (size_t i = 0; i < loc.n; i++) {
                if (boxlist_find(&srv, loc.v[i].name))
                        continue;
                bool local_only = false;
                if (pending_keeps(&pend, &loc.v[i], &local_only)) {
                        if (!local_only && loc.v[i].uidvalidity) {
                                /* deleted on the server while local mail waits to go into it:
                                 * the server's messages went with it, the folder comes back */
                                acs_log_mb(LOG_NOTICE, loc.v[i].name, "deleted on the server; kept for "
                                           "the local changes waiting to go into it");
                                r = drop_server_rows(st, loc.v[i].id);
                                if (r < 0)
                                        goto fail;
                        }
                        continue;
                }
                srvbox *to = NULL;
                for (size_t j = 0; j < srv.n && loc.v[i].uidvalidity; j++) {
                        if (srv.v[j].uidvalidity != loc.v[i].uidvalidity)
                                continue;
                        bool taken = false;
                        for (size_t k = 0; k < loc.n && !taken; k++)
                                taken = strcmp(loc.v[k].name, srv.v[j].name) == 0;
                        if (!taken) {
                                to = &srv.v[j];
                                break;
                        }
                }
                if (to) {
                        acs_log_mb(LOG_INFO, loc.v[i].name, "renamed on the server to \"%s\"", to->name);
                        r = acs_store_mailbox_rename(st, loc.v[i].id, to->name);
                        if (r < 0)
                                goto fail;
                        free(loc.v[i].name);
                        loc.v[i].name = strdup(to->name);
                        if (!loc.v[i].name) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        progress_event("mailbox_renamed", to->name);
                } else {
                        acs_log_mb(LOG_INFO, loc.v[i].name, "deleted on the server");
                        r = acs_store_mailbox_delete(st, loc.v[i].id);
                        if (r < 0 && r != -ENOENT)
                                goto fail;
                        progress_event("mailbox_deleted", loc.v[i].name);
                }
        }
        for (size_t j = 0; j < srv.n; j++) {
                bool same = false;
                for (size_t i = 0; i < loc.n && !same; i++)
                        same = strcmp(loc.v[i].name, srv.v[j].name) == 0 && loc.v[i].delim == srv.v[j].delim &&
                               loc.v[i].attrs == srv.v[j].attrs;
                if (same)
                        continue; /* nothing to write: a no-change sync leaves the file alone */
                bool cached = false;
                for (size_t i = 0; i < loc.n && !cached; i++)
                        cached = strcmp(loc.v[i].name, srv.v[j].name) == 0;
                if (!cached && pending_hides(&pend, srv.v[j].name, srv.v[j].delim))
                        continue; /* deleted or renamed locally; replay tells the server */
                acs_mailbox mb = {.name = srv.v[j].name, .delim = srv.v[j].delim, .attrs = srv.v[j].attrs};
                r = acs_store_mailbox_put(st, &mb);
                if (r < 0)
                        goto fail;
        }
        r = acs_store_commit(st);
        if (r < 0)
                goto fail;
        sd->list_dirty = false;
        goto out;
fail:
        acs_store_rollback(st);
out:
        boxlist_free(&srv);
        storedlist_free(&loc);
        pending_free(&pend);
        return r;
}

/* Server name of a stored mailbox (UTF-8 -> mUTF-7; INBOX stays). */
static int server_name(const char *name, char **ret)
{
        const char *err;
        if (strcmp(name, "INBOX") == 0) {
                *ret = strdup("INBOX");
                return *ret ? 0 : -ENOMEM;
        }
        return acs_utf8_to_mutf7(name, ret, &err);
}

int syncd_sync_mailbox(syncd *sd, const char *srvname)
{
        const char *err;
        _cleanup_free_ char *name = NULL;
        int r;
        if (strcmp(srvname, "INBOX") == 0)
                name = strdup("INBOX");
        else if (acs_mutf7_to_utf8(srvname, &name, &err) < 0)
                return -EINVAL;
        if (!name)
                return -ENOMEM;
        acs_mailbox mb = {0};
        r = acs_store_mailbox_get(sd->store, name, &mb);
        if (r < 0)
                return r;
        if (mb.attrs & ACS_MBOX_NOSELECT) {
                acs_mailbox_clear(&mb);
                return 0;
        }
        r = sync_one(sd, &mb, srvname);
        if (r < 0 && r != -EINTR)
                acs_log_mb(LOG_INFO, mb.name, "sync stopped: %s (server's last words: %s)", strerror(-r),
                           sd->imap && sd->imap->imap_response ? sd->imap->imap_response : "none");
        acs_mailbox_clear(&mb);
        return r;
}

typedef struct boxref {
        char *name;
        unsigned attrs;
        int64_t newest;
} boxref;

static int boxref_cb(const acs_mailbox *mb, void *userdata)
{
        struct {
                boxref *v;
                size_t n, cap;
        } *l = userdata;
        if (ACS_GROW(l->v, l->cap, l->n, 32) < 0)
                return -ENOMEM;
        char *n = strdup(mb->name);
        if (!n)
                return -ENOMEM;
        l->v[l->n++] = (boxref){.name = n, .attrs = mb->attrs};
        return 0;
}

static int cmp_boxref(const void *a, const void *b)
{
        const boxref *x = a, *y = b;
        bool xi = strcmp(x->name, "INBOX") == 0, yi = strcmp(y->name, "INBOX") == 0;
        if (xi != yi)
                return xi ? -1 : 1;
        return strcmp(x->name, y->name);
}

int syncd_sync_all(syncd *sd, bool quick)
{
        struct {
                boxref *v;
                size_t n, cap;
        } l = {0};
        char **srv = NULL;
        status *st = NULL;
        unsigned char *ok = NULL;
        int r = acs_store_mailbox_foreach(sd->store, boxref_cb, &l);
        if (r < 0)
                goto out;
        /* INBOX first; the rest in name order (newest first applies within each mailbox). */
        xqsort(l.v, l.n, sizeof(*l.v), cmp_boxref);
        srv = calloc(l.n + 1, sizeof(*srv));
        st = calloc(l.n + 1, sizeof(*st));
        ok = calloc(l.n + 1, sizeof(*ok));
        if (!srv || !st || !ok) {
                r = -ENOMEM;
                goto out;
        }
        size_t m = 0; /* selectable mailboxes, compacted to the front of l.v */
        for (size_t i = 0; i < l.n; i++) {
                if (l.v[i].attrs & ACS_MBOX_NOSELECT)
                        continue;
                char *name = NULL;
                if (server_name(l.v[i].name, &name) < 0) {
                        acs_log_mb(LOG_WARNING, l.v[i].name, "cannot encode the name for the server");
                        continue;
                }
                boxref t = l.v[m];
                l.v[m] = l.v[i];
                l.v[i] = t;
                srv[m++] = name;
        }
        if (quick) {
                r = status_many(sd, srv, m, st, ok);
                if (r < 0)
                        goto out;
        }
        for (size_t i = 0; i < m && r == 0; i++) {
                if (syncd_stop) {
                        r = -EINTR;
                        break;
                }
                if (quick) {
                        if (ok[i] == STATUS_NO) {
                                /* the mailbox vanished meanwhile: the list sync will notice */
                                sd->list_dirty = true;
                                continue;
                        }
                        acs_mailbox mb = {0};
                        r = acs_store_mailbox_get(sd->store, l.v[i].name, &mb);
                        if (r == -ENOENT) {
                                /* renamed or deleted in the tree meanwhile */
                                sd->list_dirty = true;
                                r = 0;
                                continue;
                        }
                        if (r < 0)
                                break;
                        uint64_t count = 0;
                        uint32_t maxuid = 0;
                        r = acs_store_message_count(sd->store, mb.id, &count, &maxuid);
                        const status *s = &st[i];
                        bool same = r == 0 && ok[i] == STATUS_OK && mb.uidvalidity && mb.uidnext &&
                                    s->uidvalidity == mb.uidvalidity &&
                                    s->uidnext == mb.uidnext && s->messages == count &&
                                    (sd->caps.condstore ? s->has_modseq && s->highestmodseq == mb.highestmodseq
                                                        : false);
                        acs_mailbox_clear(&mb);
                        if (r < 0)
                                break;
                        if (same)
                                continue;
                }
                sd->synced_mailboxes++;
                r = syncd_sync_mailbox(sd, srv[i]);
                if (r == -ENOENT) {
                        /* deleted or renamed in the tree meanwhile (acs-fs): the list catches up */
                        sd->list_dirty = true;
                        r = 0;
                }
                if (r == -EREMOTEIO) {
                        acs_log_mb(LOG_WARNING, l.v[i].name, "SELECT refused; the list will be read again");
                        sd->list_dirty = true;
                        r = 0;
                }
        }
        /* local changes made while we synced; --once exits only with an empty op log */
        for (unsigned round = 0; r == 0 && round < 100; round++) {
                bool more = false;
                r = syncd_replay(sd);
                if (r == 0)
                        r = syncd_ops_pending(sd, &more);
                if (!more)
                        break;
        }
out:
        for (size_t i = 0; srv && i < l.n; i++)
                free(srv[i]);
        free(srv);
        free(st);
        free(ok);
        for (size_t i = 0; i < l.n; i++)
                free(l.v[i].name);
        free(l.v);
        return r;
}
