/* SPDX-License-Identifier: MIT */
/* acs-syncd's write direction: replays the cache's op log to the IMAP server in order, idempotently. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "acs/log.h"
#include "acs/maildir.h"
#include "acs/mboxname.h"
#include "acs/store.h"
#include "acs/util.h"
#include "imapconn.h"
#include "syncd.h"

/*
 * An op the server refuses (NO for a reason other than the ones handled below) is tried
 * this many times, with a short pause, then given up (see docs/sync-semantics.md): a body
 * goes to the recovery folder, anything else is dropped and the mailbox rescanned so the
 * cache shows the server's state again.
 */
#define REPLAY_MAX_ATTEMPTS 3
#define REPLAY_RETRY_MS 200
/* Candidates fetched when looking for a message an earlier attempt may have stored. */
#define FIND_MAX_CANDIDATES 20
/* meta key: the seq of the APPEND/MOVE whose command was sent and not yet confirmed. */
#define META_INFLIGHT "replay.inflight"
/* meta key prefix: a MOVE whose source uid went stale (UIDVALIDITY changed): re-append. */
#define META_STALE "replay.stale."
/*
 * meta key prefix + message id: "<mailbox id> <uidvalidity> <uid>", where replay last put
 * the message. acs_store_op_resolve_uid() fills the uid into every later op of the message
 * in that mailbox, also into ops made after the message left it and came back (A -> B ->
 * A); replay therefore takes the uid of a message op from here when the message was last
 * put into the op's mailbox by replay (docs/sync-semantics.md). META_LEARNED lists the
 * message ids that have such a key; all are removed once the op log is empty.
 */
#define META_UID "replay.uid."
#define META_LEARNED "replay.learned"

static const char *const kind_names[] = {
        [ACS_OP_FLAGS] = "flags", [ACS_OP_EXPUNGE] = "expunge", [ACS_OP_MOVE] = "move",
        [ACS_OP_APPEND] = "append", [ACS_OP_CREATE] = "create", [ACS_OP_DELETE] = "delete",
        [ACS_OP_RENAME] = "rename",
};

static const char *kind_name(int kind)
{
        if (kind > 0 && (size_t)kind < ACS_ARRAY_SIZE(kind_names) && kind_names[kind])
                return kind_names[kind];
        return "unknown";
}

/* Outcome of one op besides -errno (connection/store errors, which end the pass). */
enum {
        OP_DONE = 0,    /* confirmed (or nothing left to do): removed in the same transaction */
        OP_REFUSED = 1, /* the server said NO: counted as a failed attempt */
};

static void sleep_ms(unsigned ms)
{
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR && !syncd_stop)
                ;
}

/* ---- small helpers ---- */

/* Server (mUTF-7) name of a cache mailbox name. */
static int to_server_name(const char *name, char **ret)
{
        const char *err;
        if (strcmp(name, "INBOX") == 0) {
                *ret = strdup("INBOX");
                return *ret ? 0 : -ENOMEM;
        }
        return acs_utf8_to_mutf7(name, ret, &err);
}

/* Server name of a cached mailbox by id; -ENOENT when the row is gone. */
static int mailbox_srvname(syncd *sd, int64_t id, acs_mailbox *ret_mb, char **ret_srv)
{
        acs_mailbox mb = {0};
        int r = acs_store_mailbox_get_by_id(sd->store, id, &mb);
        if (r < 0)
                return r;
        char *srv = NULL;
        r = to_server_name(mb.name, &srv);
        if (r < 0) {
                acs_mailbox_clear(&mb);
                return r;
        }
        *ret_mb = mb;
        *ret_srv = srv;
        return 0;
}

/*
 * Server name of the mailbox an op names: the name recorded in the op (the mailbox's name
 * when the op was made, which is the server's name at this point of the replay, even if
 * the row was renamed or removed later), else the row's current name.
 */
static int op_srvname(syncd *sd, const char *name, int64_t id, char **ret)
{
        if (name && *name)
                return to_server_name(name, ret);
        acs_mailbox mb = {0};
        int r = mailbox_srvname(sd, id, &mb, ret);
        acs_mailbox_clear(&mb);
        return r;
}

/* The resp-text-code atom of the last tagged reply ("ALREADYEXISTS", ...), or "". */
static const char *resp_code(syncd *sd)
{
        struct mailimap_response_info *ri = sd->imap ? sd->imap->imap_response_info : NULL;
        if (ri && ri->rsp_trycreate)
                return "TRYCREATE";
        if (ri && ri->rsp_atom)
                return ri->rsp_atom;
        return "";
}

static const char *resp_text(syncd *sd)
{
        return sd->imap && sd->imap->imap_response ? sd->imap->imap_response : "";
}

static bool code_is(syncd *sd, const char *code)
{
        return strcasecmp(resp_code(sd), code) == 0;
}

/* A keyword we can send as an IMAP atom (flag-keyword); others are skipped. */
static bool keyword_ok(const char *k, size_t n)
{
        if (n == 0 || k[0] == '\\')
                return false;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)k[i];
                if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c))
                        return false;
        }
        return true;
}

/* "(\Seen $Forwarded kw ...)" for flag bits and space-separated keywords; NULL on ENOMEM. */
static char *flag_list(unsigned flags, const char *keywords)
{
        static const struct {
                unsigned bit;
                const char *name;
        } map[] = {
                {ACS_FLAG_DRAFT, "\\Draft"},     {ACS_FLAG_FLAGGED, "\\Flagged"},
                {ACS_FLAG_PASSED, "$Forwarded"}, {ACS_FLAG_REPLIED, "\\Answered"},
                {ACS_FLAG_SEEN, "\\Seen"},       {ACS_FLAG_TRASHED, "\\Deleted"},
        };
        size_t cap = 80 + (keywords ? strlen(keywords) : 0);
        char *s = malloc(cap), *p = s;
        if (!s)
                return NULL;
        *p++ = '(';
        for (size_t i = 0; i < ACS_ARRAY_SIZE(map); i++) {
                if (!(flags & map[i].bit))
                        continue;
                if (p > s + 1)
                        *p++ = ' ';
                size_t l = strlen(map[i].name);
                memcpy(p, map[i].name, l);
                p += l;
        }
        for (const char *k = keywords; k && *k;) {
                const char *e = strchr(k, ' ');
                size_t l = e ? (size_t)(e - k) : strlen(k);
                if (keyword_ok(k, l)) {
                        if (p > s + 1)
                                *p++ = ' ';
                        memcpy(p, k, l);
                        p += l;
                } else if (l) {
                        acs_log(LOG_WARNING, "keyword \"%.*s\" cannot be sent to IMAP; skipped", (int)l, k);
                }
                k = e ? e + 1 : k + l;
        }
        *p++ = ')';
        *p = 0;
        return s;
}

static bool has_flags(unsigned flags, const char *keywords)
{
        return flags || (keywords && *keywords);
}

/* SELECTs srv unless it is selected; *ret_uidvalidity is the server's (0 if not sent). */
static int select_box(syncd *sd, const char *srv, uint32_t *ret_uidvalidity)
{
        if (!sd->selected || strcmp(sd->selected, srv) != 0) {
                sd->selected = acs_free(sd->selected);
                int r = mailimap_select(sd->imap, srv);
                if (r != MAILIMAP_NO_ERROR)
                        return syncd_etpan_error(r);
                sd->selected = strdup(srv);
                if (!sd->selected)
                        return -ENOMEM;
        }
        struct mailimap_selection_info *si = sd->imap->imap_selection_info;
        *ret_uidvalidity = si ? si->sel_uidvalidity : 0;
        return 0;
}

/* UID STORE uid (+|-)FLAGS.SILENT list, when there is something to send. */
static int store_flags(syncd *sd, uint32_t uid, char sign, unsigned flags, const char *keywords)
{
        if (!has_flags(flags, keywords))
                return 0;
        _cleanup_free_ char *fl = flag_list(flags, keywords);
        if (!fl)
                return -ENOMEM;
        if (strcmp(fl, "()") == 0)
                return 0;
        _cleanup_free_ char *cmd = NULL;
        if (asprintf(&cmd, "UID STORE %" PRIu32 " %cFLAGS.SILENT %s", uid, sign, fl) < 0)
                return -ENOMEM;
        return syncd_raw_command(sd, cmd);
}

/* Removes exactly uid (already \Deleted) from the selected mailbox. */
static int expunge_uid(syncd *sd, uint32_t uid)
{
        char cmd[64];
        if (mailimap_has_extension(sd->imap, "UIDPLUS")) {
                snprintf(cmd, sizeof(cmd), "UID EXPUNGE %" PRIu32, uid);
                return syncd_raw_command(sd, cmd);
        }
        /*
         * Without UIDPLUS a plain EXPUNGE would also remove messages someone else marked
         * \Deleted; only send it when ours is the only one (documented in docs/sync.md).
         */
        int r = syncd_raw_command(sd, "UID SEARCH DELETED");
        if (r < 0)
                return r;
        clist *res = sd->imap->imap_response_info ? sd->imap->imap_response_info->rsp_search_result : NULL;
        bool only_ours = true;
        for (clistiter *it = res ? clist_begin(res) : NULL; it; it = clist_next(it))
                if (*(uint32_t *)clist_content(it) != uid)
                        only_ours = false;
        if (!only_ours) {
                acs_log(LOG_WARNING, "no UIDPLUS and other messages are \\Deleted: uid %" PRIu32
                        " stays flagged \\Deleted", uid);
                return 0;
        }
        return syncd_raw_command(sd, "EXPUNGE");
}

/* The body of an op (LF, as cached) converted to CRLF for IMAP; malloc'd. */
static int load_body_crlf(syncd *sd, int64_t body_id, char **ret, size_t *ret_len)
{
        uint64_t size = 0;
        int r = acs_store_body_size(sd->store, body_id, &size);
        if (r < 0)
                return r;
        if (size > ((size_t)1 << 30))
                return -EFBIG;
        _cleanup_free_ char *lf = malloc(size ? size : 1);
        char *crlf = malloc(2 * size + 1);
        if (!lf || !crlf) {
                free(crlf);
                return -ENOMEM;
        }
        size_t n = 0;
        r = acs_store_body_read(sd->store, body_id, 0, lf, size, &n);
        if (r < 0) {
                free(crlf);
                return r;
        }
        bool last_cr = false;
        *ret_len = acs_lf_to_crlf(lf, n, crlf, &last_cr);
        *ret = crlf;
        return 0;
}

/* The Message-ID header's value (unfolded, trimmed) of a CRLF message; NULL when absent. */
static char *message_id_of(const char *msg, size_t len)
{
        const char *p = msg, *end = msg + len;
        while (p < end) {
                const char *eol = memchr(p, '\n', (size_t)(end - p));
                if (!eol)
                        eol = end;
                size_t l = (size_t)(eol - p);
                if (l && p[l - 1] == '\r')
                        l--;
                if (l == 0)
                        return NULL; /* end of the header */
                if (l > 11 && strncasecmp(p, "Message-ID:", 11) == 0) {
                        const char *v = p + 11, *ve = p + l;
                        /* a folded value continues on lines starting with white space */
                        while (ve + 2 < end && (ve[2] == ' ' || ve[2] == '\t') && ve[0] == '\r') {
                                const char *n2 = memchr(ve + 2, '\n', (size_t)(end - ve - 2));
                                ve = n2 ? n2 - 1 : end;
                        }
                        while (v < ve && (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n'))
                                v++;
                        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t' || ve[-1] == '\r'))
                                ve--;
                        if (ve <= v || (size_t)(ve - v) > 900)
                                return NULL;
                        char *id = strndup(v, (size_t)(ve - v));
                        for (char *c = id; c && *c; c++)
                                if (*c == '\r' || *c == '\n' || *c == '\t')
                                        *c = ' ';
                        return id;
                }
                p = eol + 1;
        }
        return NULL;
}

/* Fetches BODY.PEEK[] of uid in the selected mailbox and compares it with body. */
static int body_equals(syncd *sd, uint32_t uid, const char *body, size_t len, bool *ret)
{
        struct mailimap_set *set = mailimap_set_new_single(uid);
        struct mailimap_fetch_type *ft = mailimap_fetch_type_new_fetch_att_list_empty();
        struct mailimap_section *sec = mailimap_section_new(NULL);
        struct mailimap_fetch_att *fa = sec ? mailimap_fetch_att_new_body_peek_section(sec) : NULL;
        if (!fa && sec)
                mailimap_section_free(sec);
        int r = -ENOMEM;
        clist *res = NULL;
        if (set && ft && fa && mailimap_fetch_type_new_fetch_att_list_add(ft, fa) == 0) {
                fa = NULL;
                r = syncd_etpan_error(mailimap_uid_fetch(sd->imap, set, ft, &res));
        }
        if (fa)
                mailimap_fetch_att_free(fa);
        if (ft)
                mailimap_fetch_type_free(ft);
        if (set)
                mailimap_set_free(set);
        if (r < 0) {
                if (res)
                        mailimap_fetch_list_free(res);
                return r;
        }
        bool eq = false;
        for (clistiter *it = res ? clist_begin(res) : NULL; it; it = clist_next(it)) {
                struct mailimap_msg_att *att = clist_content(it);
                uint32_t got_uid = 0;
                const char *b = NULL;
                size_t bl = 0;
                for (clistiter *i2 = clist_begin(att->att_list); i2; i2 = clist_next(i2)) {
                        struct mailimap_msg_att_item *item = clist_content(i2);
                        if (item->att_type != MAILIMAP_MSG_ATT_ITEM_STATIC)
                                continue;
                        struct mailimap_msg_att_static *st = item->att_data.att_static;
                        if (st->att_type == MAILIMAP_MSG_ATT_UID)
                                got_uid = st->att_data.att_uid;
                        else if (st->att_type == MAILIMAP_MSG_ATT_BODY_SECTION && st->att_data.att_body_section) {
                                b = st->att_data.att_body_section->sec_body_part;
                                bl = st->att_data.att_body_section->sec_length;
                        }
                }
                if (got_uid == uid && bl == len && (len == 0 || (b && memcmp(b, body, len) == 0)))
                        eq = true;
        }
        if (res)
                mailimap_fetch_list_free(res);
        *ret = eq;
        return 0;
}

/*
 * Looks in mailbox srv for the message with this body that an earlier attempt (or a COPY
 * without COPYUID) may have stored: SEARCH by Message-ID and size, then a byte comparison
 * of the candidates not cached yet. *ret_uid is 0 when not found.
 */
static int find_message(syncd *sd, int64_t mailbox_id, const char *srv, const char *body, size_t len,
                        uint32_t *ret_uid)
{
        uint32_t uidvalidity;
        int r = select_box(sd, srv, &uidvalidity);
        if (r < 0)
                return r;
        /* Cached uids name this mailbox's messages only while its UIDVALIDITY is the
         * server's: after the folder was made again (a local append into a folder the
         * server deleted) the cached rows are the old folder's, and the message an earlier
         * attempt stored as uid 1 must not be taken for the old cached uid 1. */
        bool cache_current = false;
        acs_mailbox mb = {0};
        if (acs_store_mailbox_get_by_id(sd->store, mailbox_id, &mb) == 0) {
                cache_current = mb.uidvalidity != 0 && mb.uidvalidity == uidvalidity;
                acs_mailbox_clear(&mb);
        }
        _cleanup_free_ char *mid = message_id_of(body, len);
        _cleanup_free_ char *qmid = mid ? syncd_quote(mid) : NULL;
        _cleanup_free_ char *cmd = NULL;
        if (qmid)
                r = asprintf(&cmd, "UID SEARCH HEADER Message-ID %s LARGER %zu SMALLER %zu", qmid,
                             len ? len - 1 : 0, len + 1);
        else
                r = asprintf(&cmd, "UID SEARCH LARGER %zu SMALLER %zu", len ? len - 1 : 0, len + 1);
        if (r < 0)
                return -ENOMEM;
        r = syncd_raw_command(sd, cmd);
        if (r < 0)
                return r;
        uint32_t cand[FIND_MAX_CANDIDATES];
        size_t nc = 0;
        clist *res = sd->imap->imap_response_info ? sd->imap->imap_response_info->rsp_search_result : NULL;
        /* newest first: an earlier attempt is among the last arrivals */
        size_t total = res ? (size_t)clist_count(res) : 0;
        uint32_t *all = malloc((total ? total : 1) * sizeof(*all));
        if (!all)
                return -ENOMEM;
        size_t k = 0;
        for (clistiter *it = res ? clist_begin(res) : NULL; it; it = clist_next(it))
                all[k++] = *(uint32_t *)clist_content(it);
        for (size_t i = k; i-- > 0 && nc < FIND_MAX_CANDIDATES;) {
                acs_message m = {0};
                int g = cache_current ? acs_store_message_get_by_uid(sd->store, mailbox_id, all[i], &m) : -ENOENT;
                if (g == 0) {
                        acs_message_clear(&m);
                        continue; /* cached: another message with the same content */
                }
                if (g != -ENOENT) {
                        free(all);
                        return g;
                }
                cand[nc++] = all[i];
        }
        free(all);
        for (size_t i = 0; i < nc; i++) {
                bool eq = false;
                r = body_equals(sd, cand[i], body, len, &eq);
                if (r < 0)
                        return r;
                if (eq) {
                        *ret_uid = cand[i];
                        return 0;
                }
        }
        *ret_uid = 0;
        return 0;
}

/* meta helpers */
static int inflight_get(syncd *sd, int64_t *ret_seq)
{
        _cleanup_free_ char *v = NULL;
        int r = acs_store_meta_get(sd->store, META_INFLIGHT, &v);
        if (r == -ENOENT) {
                *ret_seq = 0;
                return 0;
        }
        if (r < 0)
                return r;
        *ret_seq = strtoll(v, NULL, 10);
        return 0;
}

/* Durably records that the command of op seq is about to be sent (0 = none in flight). */
static int inflight_set(syncd *sd, int64_t seq, bool durable)
{
        char v[32];
        snprintf(v, sizeof(v), "%" PRId64, seq);
        int r = acs_store_begin(sd->store, durable);
        if (r < 0)
                return r;
        r = acs_store_meta_set(sd->store, META_INFLIGHT, v);
        if (r == 0)
                r = acs_store_commit(sd->store);
        if (r < 0)
                acs_store_rollback(sd->store);
        return r;
}

static bool op_is_stale(syncd *sd, int64_t seq)
{
        char key[64];
        _cleanup_free_ char *v = NULL;
        snprintf(key, sizeof(key), META_STALE "%" PRId64, seq);
        return acs_store_meta_get(sd->store, key, &v) == 0 && v && strcmp(v, "1") == 0;
}

int syncd_replay_mark_stale(syncd *sd, int64_t seq)
{
        char key[64];
        snprintf(key, sizeof(key), META_STALE "%" PRId64, seq);
        return acs_store_meta_set(sd->store, key, "1");
}

/* Records (inside the caller's transaction) where replay put message_id. */
static int learned_set(syncd *sd, int64_t message_id, int64_t mailbox_id, uint32_t uidvalidity, uint32_t uid)
{
        char key[64], val[96];
        snprintf(key, sizeof(key), META_UID "%" PRId64, message_id);
        _cleanup_free_ char *old = NULL;
        int r = acs_store_meta_get(sd->store, key, &old);
        if (r == -ENOENT) {
                /* first time: add the id to the list of keys to remove later */
                _cleanup_free_ char *list = NULL;
                r = acs_store_meta_get(sd->store, META_LEARNED, &list);
                if (r < 0 && r != -ENOENT)
                        return r;
                _cleanup_free_ char *nl = NULL;
                if (asprintf(&nl, "%s%s%" PRId64, list && *list ? list : "", list && *list ? " " : "",
                             message_id) < 0)
                        return -ENOMEM;
                r = acs_store_meta_set(sd->store, META_LEARNED, nl);
        }
        if (r < 0)
                return r;
        snprintf(val, sizeof(val), "%" PRId64 " %" PRIu32 " %" PRIu32, mailbox_id, uidvalidity, uid);
        return acs_store_meta_set(sd->store, key, val);
}

/*
 * The uid a message op must use: where replay last put the message, when that is the op's
 * mailbox (and the mailbox's UIDVALIDITY has not changed since), else the op's own uid.
 */
static int effective_uid(syncd *sd, const acs_op *op, uint32_t *ret)
{
        *ret = op->uid;
        if (!op->message_id || !op->mailbox_id)
                return 0;
        char key[64];
        snprintf(key, sizeof(key), META_UID "%" PRId64, op->message_id);
        _cleanup_free_ char *v = NULL;
        int r = acs_store_meta_get(sd->store, key, &v);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        int64_t mbid = 0;
        uint32_t uv = 0, uid = 0;
        if (sscanf(v, "%" SCNd64 " %" SCNu32 " %" SCNu32, &mbid, &uv, &uid) != 3 || mbid != op->mailbox_id || !uid)
                return 0;
        acs_mailbox mb = {0};
        r = acs_store_mailbox_get_by_id(sd->store, mbid, &mb);
        if (r == 0 && uv && mb.uidvalidity && uv != mb.uidvalidity) {
                acs_mailbox_clear(&mb);
                return 0;
        }
        acs_mailbox_clear(&mb);
        if (r < 0 && r != -ENOENT)
                return r;
        if (uid != op->uid)
                acs_log(LOG_DEBUG, "op %" PRId64 ": uid %" PRIu32 " (where replay put the message) instead of %" PRIu32,
                        op->seq, uid, op->uid);
        *ret = uid;
        return 0;
}

/* The op log is empty: the learned positions are not needed any more. */
static int learned_clear(syncd *sd)
{
        _cleanup_free_ char *list = NULL;
        int r = acs_store_meta_get(sd->store, META_LEARNED, &list);
        if (r == -ENOENT || (r == 0 && !*list))
                return 0;
        if (r < 0)
                return r;
        r = acs_store_begin(sd->store, false);
        if (r < 0)
                return r;
        for (char *p = list, *save = NULL, *tok; r == 0 && (tok = strtok_r(p, " ", &save)); p = NULL) {
                char key[64];
                snprintf(key, sizeof(key), META_UID "%s", tok);
                r = acs_store_meta_set(sd->store, key, NULL);
        }
        if (r == 0)
                r = acs_store_meta_set(sd->store, META_LEARNED, NULL);
        if (r == 0)
                r = acs_store_commit(sd->store);
        if (r < 0)
                acs_store_rollback(sd->store);
        return r;
}

/*
 * Ends an op in one transaction: the learned uid (message row still waiting in mailbox_id
 * with uid 0 gets it; later ops of the message get it too), the op removed, the in-flight
 * marker cleared. A row the read direction already stored under that uid (a copy of our
 * own append seen by a sync) gives way to the local row.
 */
static int finish_op_uv(syncd *sd, const acs_op *op, int64_t mailbox_id, uint32_t uid, uint32_t uidvalidity)
{
        acs_store *st = sd->store;
        int r = acs_store_begin(st, false);
        if (r < 0)
                return r;
        if (uid && uidvalidity && mailbox_id) {
                /* APPENDUID/COPYUID name another UIDVALIDITY than cached: the folder was
                 * deleted and created again on the server (possibly by our TRYCREATE) */
                acs_mailbox mb = {0};
                int g = acs_store_mailbox_get_by_id(st, mailbox_id, &mb);
                if (g == 0 && mb.uidvalidity && mb.uidvalidity != uidvalidity) {
                        acs_log_mb(LOG_NOTICE, mb.name, "UIDVALIDITY %" PRIu32 " -> %" PRIu32
                                   " (seen in the reply to our own command)", mb.uidvalidity, uidvalidity);
                        r = syncd_forget_incarnation(sd, mailbox_id, uidvalidity);
                } else if (g < 0 && g != -ENOENT) {
                        r = g;
                }
                acs_mailbox_clear(&mb);
        }
        if (r == 0 && uid && op->message_id)
                r = learned_set(sd, op->message_id, mailbox_id, uidvalidity, uid);
        if (r == 0 && uid && op->message_id) {
                acs_message m = {0};
                int g = acs_store_message_get(st, op->message_id, &m);
                /* the row is where this op put it (a later visit's op overwrites again) */
                if (g == 0 && m.mailbox_id == mailbox_id && m.uid != uid) {
                        acs_message other = {0};
                        if (acs_store_message_get_by_uid(st, mailbox_id, uid, &other) == 0) {
                                r = acs_store_message_delete(st, other.id);
                                acs_message_clear(&other);
                        }
                        if (r == 0)
                                r = acs_store_message_set_uid(st, op->message_id, uid);
                } else if (g < 0 && g != -ENOENT) {
                        r = g;
                }
                acs_message_clear(&m);
                if (r == 0) {
                        int n = acs_store_op_resolve_uid(st, op->message_id, mailbox_id, uid);
                        if (n < 0)
                                r = n;
                }
        }
        if (r == 0)
                r = acs_store_op_done(st, op->seq);
        if (r == 0 && (op->kind == ACS_OP_APPEND || op->kind == ACS_OP_MOVE))
                r = acs_store_meta_set(st, META_INFLIGHT, "0");
        if (r == 0 && op->kind == ACS_OP_MOVE) {
                char key[64];
                snprintf(key, sizeof(key), META_STALE "%" PRId64, op->seq);
                r = acs_store_meta_set(st, key, NULL); /* NULL deletes */
        }
        if (r == 0)
                r = acs_store_commit(st);
        if (r < 0)
                acs_store_rollback(st);
        return r;
}

static int finish_op(syncd *sd, const acs_op *op, int64_t mailbox_id, uint32_t uid)
{
        return finish_op_uv(sd, op, mailbox_id, uid, 0);
}

/* Makes the next sync of a mailbox compare every message (after an op was given up). */
static int force_rescan(syncd *sd, int64_t mailbox_id)
{
        acs_mailbox mb = {0};
        int r = acs_store_mailbox_get_by_id(sd->store, mailbox_id, &mb);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        r = acs_store_begin(sd->store, false);
        if (r == 0)
                r = acs_store_mailbox_set_state(sd->store, mailbox_id, mb.uidvalidity, 0, 0);
        if (r == 0)
                r = acs_store_commit(sd->store);
        else
                acs_store_rollback(sd->store);
        acs_mailbox_clear(&mb);
        return r;
}

static int create_box(syncd *sd, const char *srv)
{
        int r = syncd_etpan_error(mailimap_create(sd->imap, srv));
        if (r == -EREMOTEIO && code_is(sd, "ALREADYEXISTS"))
                return 0;
        if (r == 0)
                (void)mailimap_subscribe(sd->imap, srv);
        return r;
}

/* One APPEND with flags and INTERNALDATE; TRYCREATE creates the mailbox and retries once. */
/* The flag list as IMAP sends it ("(\\Seen $label1)") in *ret (malloc'd), NULL when empty. */
static int flag_list_string(const struct mailimap_flag_list *fl, char **ret)
{
        size_t cap = 3;
        clistiter *it;
        for (it = fl && fl->fl_list ? clist_begin(fl->fl_list) : NULL; it; it = clist_next(it)) {
                const struct mailimap_flag *f = clist_content(it);
                cap += 12 + (f->fl_type == MAILIMAP_FLAG_KEYWORD ? strlen(f->fl_data.fl_keyword)
                             : f->fl_type == MAILIMAP_FLAG_EXTENSION ? strlen(f->fl_data.fl_extension) : 0);
        }
        if (cap == 3) {
                *ret = NULL;
                return 0;
        }
        char *out = malloc(cap), *p = out;
        if (!out)
                return -ENOMEM;
        *p++ = '(';
        for (it = clist_begin(fl->fl_list); it; it = clist_next(it)) {
                const struct mailimap_flag *f = clist_content(it);
                if (p > out + 1)
                        *p++ = ' ';
                switch (f->fl_type) {
                case MAILIMAP_FLAG_ANSWERED: p = stpcpy(p, "\\Answered"); break;
                case MAILIMAP_FLAG_FLAGGED: p = stpcpy(p, "\\Flagged"); break;
                case MAILIMAP_FLAG_DELETED: p = stpcpy(p, "\\Deleted"); break;
                case MAILIMAP_FLAG_SEEN: p = stpcpy(p, "\\Seen"); break;
                case MAILIMAP_FLAG_DRAFT: p = stpcpy(p, "\\Draft"); break;
                case MAILIMAP_FLAG_KEYWORD: p = stpcpy(p, f->fl_data.fl_keyword); break;
                case MAILIMAP_FLAG_EXTENSION: *p++ = '\\'; p = stpcpy(p, f->fl_data.fl_extension); break;
                default: break;
                }
        }
        *p++ = ')';
        *p = 0;
        *ret = out;
        return 0;
}

static int append_raw(syncd *sd, const char *srv, unsigned flags, const char *keywords, int64_t internaldate,
                      const char *body, size_t len, uint32_t *ret_uid, uint32_t *ret_uidvalidity)
{
        struct mailimap_flag_list *fl = mailimap_flag_list_new_empty();
        if (!fl)
                return -ENOMEM;
        static const struct {
                unsigned bit;
                struct mailimap_flag *(*make)(void);
        } sys[] = {
                {ACS_FLAG_DRAFT, mailimap_flag_new_draft},     {ACS_FLAG_FLAGGED, mailimap_flag_new_flagged},
                {ACS_FLAG_REPLIED, mailimap_flag_new_answered}, {ACS_FLAG_SEEN, mailimap_flag_new_seen},
                {ACS_FLAG_TRASHED, mailimap_flag_new_deleted},
        };
        int r = 0;
        for (size_t i = 0; i < ACS_ARRAY_SIZE(sys) && r == 0; i++) {
                if (!(flags & sys[i].bit))
                        continue;
                struct mailimap_flag *f = sys[i].make();
                if (!f || mailimap_flag_list_add(fl, f) != MAILIMAP_NO_ERROR) {
                        if (f)
                                mailimap_flag_free(f);
                        r = -ENOMEM;
                }
        }
        const char *extra[2] = {(flags & ACS_FLAG_PASSED) ? "$Forwarded" : NULL, keywords};
        for (size_t e = 0; e < 2 && r == 0; e++) {
                for (const char *k = extra[e]; k && *k && r == 0;) {
                        const char *end = e == 0 ? k + strlen(k) : strchr(k, ' ');
                        size_t l = end ? (size_t)(end - k) : strlen(k);
                        if (keyword_ok(k, l)) {
                                char *kw = strndup(k, l);
                                struct mailimap_flag *f = kw ? mailimap_flag_new_flag_keyword(kw) : NULL;
                                if (!f || mailimap_flag_list_add(fl, f) != MAILIMAP_NO_ERROR) {
                                        if (f)
                                                mailimap_flag_free(f);
                                        else
                                                free(kw);
                                        r = -ENOMEM;
                                }
                        }
                        k = end && *end ? end + 1 : k + l;
                }
        }
        struct mailimap_date_time *dt = NULL;
        if (r == 0 && internaldate > 0) {
                time_t t = (time_t)internaldate;
                struct tm tm;
                if (gmtime_r(&t, &tm))
                        dt = mailimap_date_time_new(tm.tm_mday, tm.tm_mon + 1, tm.tm_year + 1900, tm.tm_hour,
                                                    tm.tm_min, tm.tm_sec, 0);
        }
        _cleanup_free_ char *fstr = NULL;
        if (r == 0 && flag_list_string(fl, &fstr) < 0)
                r = -ENOMEM;
        for (int attempt = 0; r == 0; attempt++) {
                uint32_t uidvalidity = 0, uid = 0;
                /* LITERAL+ first: libetpan's own APPEND hangs when untagged data precedes the "+" */
                r = acs_imap_append_nosync(sd->imap, srv, fstr, internaldate, body, len, &uidvalidity, &uid);
                if (r == -ENOTSUP)
                        r = syncd_etpan_error(mailimap_uidplus_append(sd->imap, srv, fl, dt, body, len,
                                                                      &uidvalidity, &uid));
                if (r == -EREMOTEIO && attempt == 0 && code_is(sd, "TRYCREATE")) {
                        acs_log(LOG_NOTICE, "APPEND: \"%s\" is gone on the server; creating it again", srv);
                        r = create_box(sd, srv);
                        continue;
                }
                if (r == 0) {
                        *ret_uid = uid;
                        *ret_uidvalidity = uidvalidity;
                }
                break;
        }
        if (dt)
                mailimap_date_time_free(dt);
        mailimap_flag_list_free(fl);
        return r;
}

/* The server name of the recovery folder (created on first use). */
#define RECOVERY_FOLDER "acs-recovery"

/* Appends a body whose op cannot be carried out into the recovery folder. */
static int to_recovery(syncd *sd, const acs_op *op, const char *why)
{
        if (!op->body_id)
                return 0;
        _cleanup_free_ char *body = NULL;
        size_t len = 0;
        int r = load_body_crlf(sd, op->body_id, &body, &len);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        uint32_t uid = 0;
        r = create_box(sd, RECOVERY_FOLDER);
        if (r == 0)
                r = append_raw(sd, RECOVERY_FOLDER, op->flags_add, op->keywords_add, op->internaldate, body, len, &uid,
                               &(uint32_t){0});
        if (r == 0) {
                acs_log(LOG_WARNING, "op %" PRId64 " (%s): %s; the message was saved in \"" RECOVERY_FOLDER "\" (uid %" PRIu32 ")",
                        op->seq, kind_name(op->kind), why, uid);
                progress_event_kv("op_recovered", RECOVERY_FOLDER, "kind", kind_name(op->kind));
                sd->list_dirty = true;
        }
        return r;
}

/* Removes the local row left waiting for a uid that will never come (its body is elsewhere now). */
static int drop_waiting_row(syncd *sd, const acs_op *op, int64_t mailbox_id)
{
        if (!op->message_id)
                return 0;
        acs_message m = {0};
        int r = acs_store_message_get(sd->store, op->message_id, &m);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        bool waiting = m.mailbox_id == mailbox_id && m.uid == 0;
        acs_message_clear(&m);
        if (!waiting)
                return 0;
        r = acs_store_begin(sd->store, false);
        if (r == 0)
                r = acs_store_message_delete(sd->store, op->message_id);
        if (r == 0)
                r = acs_store_commit(sd->store);
        else
                acs_store_rollback(sd->store);
        return r;
}

/* ---- the op kinds ---- */

/* Whether the source uid of a message op is still valid (same UIDVALIDITY as cached). */
static int select_source(syncd *sd, const acs_op *op, char **ret_srv, bool *ret_stale)
{
        acs_mailbox mb = {0};
        char *srv = NULL;
        int r = op_srvname(sd, op->name, op->mailbox_id, &srv);
        if (r < 0)
                return r;
        r = acs_store_mailbox_get_by_id(sd->store, op->mailbox_id, &mb);
        if (r < 0 && r != -ENOENT) {
                free(srv);
                return r;
        }
        uint32_t uv = 0;
        r = select_box(sd, srv, &uv);
        if (r < 0) {
                free(srv);
                acs_mailbox_clear(&mb);
                return r;
        }
        *ret_stale = op_is_stale(sd, op->seq) || (mb.uidvalidity && uv && uv != mb.uidvalidity);
        acs_mailbox_clear(&mb);
        *ret_srv = srv;
        return 0;
}

static int replay_flags(syncd *sd, const acs_op *op)
{
        if (op->uid == 0) {
                /* the message never reached the server (its append was given up): nothing to do */
                return finish_op(sd, op, 0, 0);
        }
        _cleanup_free_ char *srv = NULL;
        bool stale = false;
        int r = select_source(sd, op, &srv, &stale);
        if (r == -ENOENT || (r == -EREMOTEIO && code_is(sd, "NONEXISTENT")))
                return finish_op(sd, op, 0, 0); /* mailbox gone: its messages with it */
        if (r < 0)
                return r == -EREMOTEIO ? OP_REFUSED : r;
        if (stale) {
                acs_log(LOG_WARNING, "flag change of uid %" PRIu32 " dropped: the mailbox's UIDVALIDITY changed", op->uid);
                r = force_rescan(sd, op->mailbox_id);
                return r < 0 ? r : finish_op(sd, op, 0, 0);
        }
        r = store_flags(sd, op->uid, '+', op->flags_add, op->keywords_add);
        if (r == 0)
                r = store_flags(sd, op->uid, '-', op->flags_del, op->keywords_del);
        if (r == -EREMOTEIO)
                return OP_REFUSED;
        if (r < 0)
                return r;
        return finish_op(sd, op, 0, 0);
}

static int replay_expunge(syncd *sd, const acs_op *op)
{
        if (op->uid == 0)
                return finish_op(sd, op, 0, 0);
        _cleanup_free_ char *srv = NULL;
        bool stale = false;
        int r = select_source(sd, op, &srv, &stale);
        if (r == -ENOENT || (r == -EREMOTEIO && code_is(sd, "NONEXISTENT")))
                return finish_op(sd, op, 0, 0);
        if (r < 0)
                return r == -EREMOTEIO ? OP_REFUSED : r;
        if (stale) {
                /* never delete by a uid of another UIDVALIDITY: the message comes back instead */
                acs_log(LOG_WARNING, "expunge of uid %" PRIu32 " dropped: the mailbox's UIDVALIDITY changed", op->uid);
                r = force_rescan(sd, op->mailbox_id);
                return r < 0 ? r : finish_op(sd, op, 0, 0);
        }
        r = store_flags(sd, op->uid, '+', ACS_FLAG_TRASHED, NULL);
        if (r == 0)
                r = expunge_uid(sd, op->uid);
        if (r == -EREMOTEIO)
                return OP_REFUSED;
        if (r < 0)
                return r;
        return finish_op(sd, op, 0, 0);
}

/* Whether uid still exists in the selected mailbox. */
static int uid_exists(syncd *sd, uint32_t uid, bool *ret)
{
        char cmd[64];
        snprintf(cmd, sizeof(cmd), "UID SEARCH UID %" PRIu32, uid);
        int r = syncd_raw_command(sd, cmd);
        if (r < 0)
                return r;
        clist *res = sd->imap->imap_response_info ? sd->imap->imap_response_info->rsp_search_result : NULL;
        bool found = false;
        for (clistiter *it = res ? clist_begin(res) : NULL; it; it = clist_next(it))
                if (*(uint32_t *)clist_content(it) == uid)
                        found = true;
        *ret = found;
        return 0;
}

/* First uid of a UIDPLUS result set (COPYUID's destination). */
static uint32_t set_first_uid(struct mailimap_set *set)
{
        if (!set || !set->set_list || clist_isempty(set->set_list))
                return 0;
        struct mailimap_set_item *it = clist_content(clist_begin(set->set_list));
        return it->set_first;
}

/*
 * Appends the op's cached body into mailbox (id, srv) unless an earlier attempt already
 * stored it (may_exist): used by APPEND, and by MOVE when the source message is gone.
 */
static uint32_t selected_uidvalidity(syncd *sd)
{
        struct mailimap_selection_info *si = sd->imap ? sd->imap->imap_selection_info : NULL;
        return si ? si->sel_uidvalidity : 0;
}

static int append_body(syncd *sd, const acs_op *op, int64_t mailbox_id, const char *srv, bool may_exist,
                       unsigned flags, const char *keywords, uint32_t *ret_uid, uint32_t *ret_uidvalidity)
{
        _cleanup_free_ char *body = NULL;
        size_t len = 0;
        int r = load_body_crlf(sd, op->body_id, &body, &len);
        if (r < 0)
                return r;
        uint32_t uid = 0;
        if (may_exist) {
                r = find_message(sd, mailbox_id, srv, body, len, &uid);
                if (r == -EREMOTEIO)
                        r = 0; /* the mailbox is not there (yet): the APPEND below creates it */
                if (r < 0)
                        return r;
                if (uid) {
                        acs_log(LOG_INFO, "op %" PRId64 ": an earlier attempt stored it as uid %" PRIu32,
                                op->seq, uid);
                        *ret_uid = uid;
                        *ret_uidvalidity = selected_uidvalidity(sd);
                        return 0;
                }
        }
        r = inflight_set(sd, op->seq, true);
        if (r < 0)
                return r;
        uint32_t uv = 0;
        r = append_raw(sd, srv, flags, keywords, op->internaldate, body, len, &uid, &uv);
        if (r < 0)
                return r;
        if (uid == 0) {
                /* no UIDPLUS: find it by its content */
                r = find_message(sd, mailbox_id, srv, body, len, &uid);
                if (r < 0)
                        return r;
                uv = selected_uidvalidity(sd);
        }
        *ret_uid = uid;
        *ret_uidvalidity = uv;
        return 0;
}

static int replay_append(syncd *sd, const acs_op *op, bool may_exist)
{
        _cleanup_free_ char *srv = NULL;
        int r = op_srvname(sd, op->name, op->mailbox_id, &srv);
        if (r == -ENOENT || r == -EINVAL) {
                /* no name to append to: keep the mail in the recovery folder */
                r = to_recovery(sd, op, "its folder is unknown");
                return r < 0 ? (r == -EREMOTEIO ? OP_REFUSED : r) : finish_op(sd, op, 0, 0);
        }
        if (r < 0)
                return r;
        if (!op->body_id)
                return finish_op(sd, op, 0, 0);
        uint32_t uid = 0, uv = 0;
        r = append_body(sd, op, op->mailbox_id, srv, may_exist, op->flags_add, op->keywords_add, &uid, &uv);
        if (r == -EREMOTEIO)
                return OP_REFUSED;
        if (r < 0)
                return r;
        return finish_op_uv(sd, op, op->mailbox_id, uid, uv);
}

static int replay_move(syncd *sd, const acs_op *op, bool may_exist)
{
        _cleanup_free_ char *tsrv = NULL;
        int r = op_srvname(sd, op->new_name, op->target_mailbox_id, &tsrv);
        if (r == -ENOENT || r == -EINVAL) {
                r = to_recovery(sd, op, "its target folder is unknown");
                return r < 0 ? (r == -EREMOTEIO ? OP_REFUSED : r) : finish_op(sd, op, 0, 0);
        }
        if (r < 0)
                return r;
        /*
         * A re-append carries the flags the message had before the move (the op's); a flag
         * change made with the move is a FLAGS op of its own that follows, on the new uid.
         */
        unsigned flags = op->flags_add;
        const char *kw = op->keywords_add;

        bool source_gone = op->uid == 0;
        _cleanup_free_ char *ssrv = NULL;
        if (!source_gone) {
                bool stale = false;
                r = select_source(sd, op, &ssrv, &stale);
                if (r == -ENOENT || (r == -EREMOTEIO && code_is(sd, "NONEXISTENT")))
                        source_gone = true;
                else if (r == -EREMOTEIO)
                        return OP_REFUSED;
                else if (r < 0)
                        return r;
                else if (stale)
                        source_gone = true; /* never touch a uid of another UIDVALIDITY */
        }
        uint32_t uid = 0, uv = 0;
        if (source_gone) {
                /* expunged on the server meanwhile (or an earlier attempt moved it): re-append */
                if (!op->body_id) {
                        acs_log(LOG_WARNING, "move op %" PRId64 ": source gone and no cached body", op->seq);
                        return finish_op(sd, op, 0, 0);
                }
                acs_log(LOG_NOTICE, "move op %" PRId64 " of uid %" PRIu32 " from \"%s\": the source is gone (%s); "
                        "re-appending the cached body into \"%s\"", op->seq, op->uid, op->name ? op->name : "?",
                        op->uid == 0 ? "its uid was never learned" : "UIDVALIDITY changed or folder deleted", tsrv);
                progress_event_kv("op_reappend", NULL, "kind", "move");
                r = append_body(sd, op, op->target_mailbox_id, tsrv, true, flags, kw, &uid, &uv);
                if (r == -EREMOTEIO)
                        return OP_REFUSED;
                if (r < 0)
                        return r;
                return finish_op_uv(sd, op, op->target_mailbox_id, uid, uv);
        }

        bool have_move = mailimap_has_extension(sd->imap, "MOVE");
        if (may_exist && op->body_id) {
                /*
                 * An earlier attempt was cut short: COPY + STORE + EXPUNGE, or a UID MOVE the
                 * server did not finish (a server killed in the middle of a MOVE may have
                 * copied without expunging): the copy may be in the target already.
                 */
                _cleanup_free_ char *body = NULL;
                size_t len = 0;
                r = load_body_crlf(sd, op->body_id, &body, &len);
                if (r == 0)
                        r = find_message(sd, op->target_mailbox_id, tsrv, body, len, &uid);
                uv = selected_uidvalidity(sd);
                if (r == 0 && uid)
                        r = select_box(sd, ssrv, &(uint32_t){0});
                if (r == 0 && uid)
                        r = store_flags(sd, op->uid, '+', ACS_FLAG_TRASHED, NULL);
                if (r == 0 && uid)
                        r = expunge_uid(sd, op->uid);
                if (r < 0 && r != -EREMOTEIO)
                        return r;
                if (r == 0 && uid)
                        return finish_op_uv(sd, op, op->target_mailbox_id, uid, uv);
                r = select_box(sd, ssrv, &(uint32_t){0});
                if (r < 0)
                        return r == -EREMOTEIO ? OP_REFUSED : r;
        }
        r = inflight_set(sd, op->seq, true);
        if (r < 0)
                return r;
        for (int attempt = 0;; attempt++) {
                struct mailimap_set *set = mailimap_set_new_single(op->uid);
                if (!set)
                        return -ENOMEM;
                struct mailimap_set *src = NULL, *dst = NULL;
                r = syncd_etpan_error(have_move ? mailimap_uidplus_uid_move(sd->imap, set, tsrv, &uv, &src, &dst)
                                                : mailimap_uidplus_uid_copy(sd->imap, set, tsrv, &uv, &src, &dst));
                mailimap_set_free(set);
                uid = set_first_uid(dst);
                if (src)
                        mailimap_set_free(src);
                if (dst)
                        mailimap_set_free(dst);
                if (r == -EREMOTEIO && attempt == 0 && code_is(sd, "TRYCREATE")) {
                        acs_log(LOG_NOTICE, "MOVE: \"%s\" is gone on the server; creating it again", tsrv);
                        r = create_box(sd, tsrv);
                        if (r == 0)
                                continue;
                }
                break;
        }
        if (r == -EREMOTEIO)
                return OP_REFUSED;
        if (r < 0)
                return r;
        if (!have_move) {
                r = store_flags(sd, op->uid, '+', ACS_FLAG_TRASHED, NULL);
                if (r == 0)
                        r = expunge_uid(sd, op->uid);
                if (r == -EREMOTEIO)
                        return OP_REFUSED;
                if (r < 0)
                        return r;
        }
        if (uid == 0 && mailimap_has_extension(sd->imap, "UIDPLUS")) {
                /* OK without COPYUID: the uid did not exist any more (e.g. expunged just now) */
                bool exists = false;
                r = select_box(sd, ssrv, &(uint32_t){0});
                if (r == 0)
                        r = uid_exists(sd, op->uid, &exists);
                if (r < 0)
                        return r == -EREMOTEIO ? OP_REFUSED : r;
                if (!exists && op->body_id) {
                        acs_log(LOG_NOTICE, "move op %" PRId64 ": uid %" PRIu32 " no longer exists in \"%s\"; "
                                "re-appending the cached body into \"%s\"", op->seq, op->uid, ssrv, tsrv);
                        progress_event_kv("op_reappend", NULL, "kind", "move");
                        r = append_body(sd, op, op->target_mailbox_id, tsrv, true, flags, kw, &uid, &uv);
                        if (r == -EREMOTEIO)
                                return OP_REFUSED;
                        if (r < 0)
                                return r;
                        return finish_op_uv(sd, op, op->target_mailbox_id, uid, uv);
                }
        }
        if (uid == 0 && op->body_id) {
                _cleanup_free_ char *body = NULL;
                size_t len = 0;
                r = load_body_crlf(sd, op->body_id, &body, &len);
                if (r == 0)
                        r = find_message(sd, op->target_mailbox_id, tsrv, body, len, &uid);
                if (r < 0)
                        return r == -EREMOTEIO ? OP_REFUSED : r;
                uv = selected_uidvalidity(sd);
        }
        return finish_op_uv(sd, op, op->target_mailbox_id, uid, uv);
}

static int replay_create(syncd *sd, const acs_op *op)
{
        _cleanup_free_ char *srv = NULL;
        int r = op->name ? to_server_name(op->name, &srv) : -EINVAL;
        if (r < 0)
                return r == -ENOMEM ? r : finish_op(sd, op, 0, 0);
        r = create_box(sd, srv);
        if (r == -EREMOTEIO)
                return OP_REFUSED;
        if (r < 0)
                return r;
        sd->list_dirty = true;
        return finish_op(sd, op, 0, 0);
}

static int replay_delete(syncd *sd, const acs_op *op)
{
        _cleanup_free_ char *srv = NULL;
        int r = op->name ? to_server_name(op->name, &srv) : -EINVAL;
        if (r < 0)
                return r == -ENOMEM ? r : finish_op(sd, op, 0, 0);
        /* Only an empty folder is deleted: mail that arrived meanwhile keeps it alive. */
        struct mailimap_status_att_list *sl = mailimap_status_att_list_new_empty();
        if (!sl)
                return -ENOMEM;
        mailimap_status_att_list_add(sl, MAILIMAP_STATUS_ATT_MESSAGES);
        struct mailimap_mailbox_data_status *st = NULL;
        if (sd->selected && strcmp(sd->selected, srv) == 0) {
                /* DELETE of the selected mailbox: leave it first */
                (void)syncd_raw_command(sd, "UNSELECT");
                sd->selected = acs_free(sd->selected);
        }
        r = syncd_etpan_error(mailimap_status(sd->imap, srv, sl, &st));
        mailimap_status_att_list_free(sl);
        uint32_t messages = 0;
        for (clistiter *it = st && st->st_info_list ? clist_begin(st->st_info_list) : NULL; it; it = clist_next(it)) {
                struct mailimap_status_info *si = clist_content(it);
                if (si->st_att == MAILIMAP_STATUS_ATT_MESSAGES)
                        messages = si->st_value;
        }
        if (st)
                mailimap_mailbox_data_status_free(st);
        sd->list_dirty = true;
        if (r == -EREMOTEIO)
                return finish_op(sd, op, 0, 0); /* already gone */
        if (r < 0)
                return r;
        if (messages > 0) {
                acs_log_mb(LOG_WARNING, op->name, "not deleted on the server: it holds %" PRIu32
                           " message(s) that arrived after it was seen empty; it comes back", messages);
                progress_event("op_delete_refused", op->name);
                return finish_op(sd, op, 0, 0);
        }
        r = syncd_etpan_error(mailimap_delete(sd->imap, srv));
        if (r == -EREMOTEIO && code_is(sd, "NONEXISTENT"))
                r = 0;
        if (r == -EREMOTEIO)
                return OP_REFUSED;
        if (r < 0)
                return r;
        (void)mailimap_unsubscribe(sd->imap, srv);
        return finish_op(sd, op, 0, 0);
}

/* Whether srv exists on the server (STATUS answers). */
static int box_exists(syncd *sd, const char *srv, bool *ret)
{
        struct mailimap_status_att_list *sl = mailimap_status_att_list_new_empty();
        if (!sl)
                return -ENOMEM;
        mailimap_status_att_list_add(sl, MAILIMAP_STATUS_ATT_UIDVALIDITY);
        struct mailimap_mailbox_data_status *st = NULL;
        int r = syncd_etpan_error(mailimap_status(sd->imap, srv, sl, &st));
        mailimap_status_att_list_free(sl);
        if (st)
                mailimap_mailbox_data_status_free(st);
        if (r == -EREMOTEIO) {
                *ret = false;
                return 0;
        }
        if (r < 0)
                return r;
        *ret = true;
        return 0;
}

static int replay_rename(syncd *sd, const acs_op *op)
{
        _cleanup_free_ char *from = NULL, *to = NULL;
        int r = op->name && op->new_name ? to_server_name(op->name, &from) : -EINVAL;
        if (r == 0)
                r = to_server_name(op->new_name, &to);
        if (r < 0)
                return r == -ENOMEM ? r : finish_op(sd, op, 0, 0);
        if (sd->selected && (strcmp(sd->selected, from) == 0 || strncmp(sd->selected, from, strlen(from)) == 0)) {
                (void)syncd_raw_command(sd, "UNSELECT");
                sd->selected = acs_free(sd->selected);
        }
        sd->list_dirty = true;
        r = syncd_etpan_error(mailimap_rename(sd->imap, from, to));
        if (r != -EREMOTEIO) {
                if (r == 0) {
                        (void)mailimap_unsubscribe(sd->imap, from);
                        (void)mailimap_subscribe(sd->imap, to);
                }
                return r < 0 ? r : finish_op(sd, op, 0, 0);
        }
        /* NO: done already (an earlier attempt), or a real conflict */
        bool from_exists = false, to_exists = false;
        r = box_exists(sd, from, &from_exists);
        if (r == 0)
                r = box_exists(sd, to, &to_exists);
        if (r < 0)
                return r;
        if (!from_exists && to_exists)
                return finish_op(sd, op, 0, 0);
        if (!from_exists) {
                /* the folder was deleted on the server meanwhile: the renamed one is made */
                r = create_box(sd, to);
                if (r == -EREMOTEIO)
                        return OP_REFUSED;
                return r < 0 ? r : finish_op(sd, op, 0, 0);
        }
        return OP_REFUSED;
}

/* Gives an op up after REPLAY_MAX_ATTEMPTS refusals (see docs/sync-semantics.md). */
static int give_up(syncd *sd, const acs_op *op, const char *why)
{
        int r = 0;
        acs_log(LOG_ERR, "op %" PRId64 " (%s) refused %u times (%s); giving it up", op->seq, kind_name(op->kind),
                op->attempts + 1, why);
        progress_event_kv("op_given_up", NULL, "kind", kind_name(op->kind));
        switch (op->kind) {
        case ACS_OP_APPEND:
        case ACS_OP_MOVE:
                r = to_recovery(sd, op, why);
                if (r == 0)
                        r = drop_waiting_row(sd, op, op->kind == ACS_OP_MOVE ? op->target_mailbox_id : op->mailbox_id);
                if (r == 0 && op->kind == ACS_OP_MOVE)
                        r = force_rescan(sd, op->mailbox_id);
                break;
        case ACS_OP_FLAGS:
        case ACS_OP_EXPUNGE:
                r = force_rescan(sd, op->mailbox_id);
                break;
        default:
                sd->list_dirty = true;
                break;
        }
        if (r == -EREMOTEIO)
                r = 0; /* even the recovery folder refused: the op is dropped; logged above */
        if (r < 0)
                return r;
        return finish_op(sd, op, 0, 0);
}

static int replay_one(syncd *sd, const acs_op *orig, bool may_exist)
{
        acs_op eff = *orig; /* shallow: the strings stay the caller's */
        const acs_op *op = &eff;
        if (op->kind == ACS_OP_FLAGS || op->kind == ACS_OP_EXPUNGE || op->kind == ACS_OP_MOVE) {
                int r = effective_uid(sd, orig, &eff.uid);
                if (r < 0)
                        return r;
        }
        switch (op->kind) {
        case ACS_OP_FLAGS: return replay_flags(sd, op);
        case ACS_OP_EXPUNGE: return replay_expunge(sd, op);
        case ACS_OP_MOVE: return replay_move(sd, op, may_exist);
        case ACS_OP_APPEND: return replay_append(sd, op, may_exist);
        case ACS_OP_CREATE: return replay_create(sd, op);
        case ACS_OP_DELETE: return replay_delete(sd, op);
        case ACS_OP_RENAME: return replay_rename(sd, op);
        default:
                acs_log(LOG_ERR, "op %" PRId64 " has unknown kind %d; dropped", op->seq, op->kind);
                return finish_op(sd, op, 0, 0);
        }
}

/* Errors of the connection or the store: the op is not to blame; it stays as it is. */
static bool transient_error(int r)
{
        switch (r) {
        case -ECONNRESET: case -ENOTCONN: case -ETIMEDOUT: case -EPIPE: case -ECONNREFUSED:
        case -EINTR: case -EIO: case -EBUSY: case -ENOSPC: case -ENOMEM: case -EBADMSG: case -EROFS:
                return true;
        default:
                return false;
        }
}

int syncd_replay(syncd *sd)
{
        if (!sd->imap)
                return -ENOTCONN;
        int64_t inflight = 0;
        int r = 0;
        uint64_t done = 0;
        while (!syncd_stop) {
                acs_op op = {0};
                r = acs_store_op_next(sd->store, 0, &op);
                if (r == -ENOENT) {
                        r = 0;
                        break;
                }
                if (r < 0)
                        return r;
                struct timespec t0, t1;
                clock_gettime(CLOCK_MONOTONIC, &t0);
                if (op.attempts >= REPLAY_MAX_ATTEMPTS) {
                        /* failed that often already (counted before a reset): give it up now */
                        r = give_up(sd, &op, op.last_error ? op.last_error : "failed");
                        acs_op_clear(&op);
                        if (r < 0)
                                return r;
                        continue;
                }
                /* an APPEND/MOVE whose command was sent before a crash or a lost connection */
                bool may_exist = false;
                if (op.kind == ACS_OP_APPEND || op.kind == ACS_OP_MOVE) {
                        r = inflight_get(sd, &inflight);
                        if (r < 0) {
                                acs_op_clear(&op);
                                return r;
                        }
                        may_exist = inflight == op.seq;
                }
                r = replay_one(sd, &op, may_exist);
                int failure = r;
                if (r < 0 && !transient_error(r)) {
                        /*
                         * A protocol error (a reply we cannot parse) or an op we cannot express
                         * (a name that cannot be encoded, a body too large): count it like a
                         * refusal so it cannot stall the log forever; a protocol error still
                         * resets the connection.
                         */
                        char why[128];
                        snprintf(why, sizeof(why), "%s", strerror(-r));
                        acs_log(LOG_WARNING, "op %" PRId64 " (%s) failed: %s", op.seq, kind_name(op.kind), why);
                        int q = acs_store_op_failed(sd->store, op.seq, why); /* given up at the next turn */
                        if (q < 0) {
                                acs_op_clear(&op);
                                return q;
                        }
                        r = failure == -EPROTO ? -EPROTO : 0;
                        if (r == 0) {
                                acs_op_clear(&op);
                                continue;
                        }
                }
                if (r == OP_REFUSED) {
                        char why[256];
                        snprintf(why, sizeof(why), "%s%s%s", resp_code(sd), *resp_code(sd) ? " " : "",
                                 resp_text(sd));
                        acs_log(LOG_WARNING, "op %" PRId64 " (%s) refused by the server: %s", op.seq,
                                kind_name(op.kind), why);
                        if (op.attempts + 1 >= REPLAY_MAX_ATTEMPTS) {
                                r = give_up(sd, &op, why);
                        } else {
                                r = acs_store_op_failed(sd->store, op.seq, why);
                                if (r == 0)
                                        sleep_ms(REPLAY_RETRY_MS * (op.attempts + 1));
                        }
                } else if (r == OP_DONE) {
                        done++;
                        clock_gettime(CLOCK_MONOTONIC, &t1);
                        double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
                        acs_log(LOG_DEBUG, "op %" PRId64 " (%s) replayed in %.1f ms", op.seq, kind_name(op.kind), ms);
                        progress_event_kv("op_done", NULL, "kind", kind_name(op.kind));
                }
                acs_op_clear(&op);
                if (r < 0)
                        return r;
        }
        if (done)
                acs_log(LOG_INFO, "replayed %" PRIu64 " op(s)", done);
        if (r == 0 && !syncd_stop)
                r = learned_clear(sd);
        return r;
}

int syncd_ops_pending(syncd *sd, bool *ret)
{
        acs_op op = {0};
        int r = acs_store_op_next(sd->store, 0, &op);
        if (r == -ENOENT) {
                *ret = false;
                return 0;
        }
        if (r < 0)
                return r;
        acs_op_clear(&op);
        *ret = true;
        return 0;
}

/* ---- noticing new ops: inotify on the database directory ---- */

int syncd_ops_watch_fd(syncd *sd)
{
        if (sd->ops_watch_open)
                return sd->ops_watch_fd;
        sd->ops_watch_open = true;
        sd->ops_watch_fd = -1;
        const char *db = sd->opts->db_path;
        const char *slash = strrchr(db, '/');
        _cleanup_free_ char *dir = slash ? strndup(db, (size_t)(slash - db)) : strdup(".");
        if (!dir)
                return -1;
        if (!*dir) {
                free(dir);
                dir = strdup("/");
                if (!dir)
                        return -1;
        }
        int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (fd < 0) {
                acs_log(LOG_WARNING, "inotify: %m; local changes are noticed only at the next sync");
                return -1;
        }
        if (inotify_add_watch(fd, dir, IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) < 0) {
                acs_log(LOG_WARNING, "inotify on %s: %m; local changes are noticed only at the next sync", dir);
                close(fd);
                return -1;
        }
        sd->ops_watch_fd = fd;
        return fd;
}

bool syncd_ops_watch_drain(syncd *sd)
{
        if (!sd->ops_watch_open || sd->ops_watch_fd < 0)
                return false;
        const char *db = sd->opts->db_path;
        const char *base = strrchr(db, '/');
        base = base ? base + 1 : db;
        size_t bl = strlen(base);
        bool hit = false;
        char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
        for (;;) {
                ssize_t n = read(sd->ops_watch_fd, buf, sizeof(buf));
                if (n <= 0)
                        break;
                for (char *p = buf; p < buf + n;) {
                        struct inotify_event *ev = (struct inotify_event *)p;
                        if (ev->len && strncmp(ev->name, base, bl) == 0)
                                hit = true; /* the db, its -wal or -shm */
                        if (ev->mask & IN_Q_OVERFLOW)
                                hit = true;
                        p += sizeof(*ev) + ev->len;
                }
        }
        return hit;
}

void syncd_ops_watch_close(syncd *sd)
{
        if (sd->ops_watch_open && sd->ops_watch_fd >= 0)
                close(sd->ops_watch_fd);
        sd->ops_watch_open = false;
        sd->ops_watch_fd = -1;
}
