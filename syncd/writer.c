/* SPDX-License-Identifier: MIT */
/* acs-syncd's store writer: a thread with its own cache handle that stores fetched messages while the network thread parses the next ones. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "acs/log.h"
#include "acs/maildir.h"
#include "acs/store.h"
#include "acs/util.h"
#include "syncd.h"

/* Bodies above this go to the store in pieces (no second copy inside SQLite). */
#define BODY_STREAM_MIN (1u << 20)
#define BODY_PIECE (256u << 10)
/* The network thread waits while this much body data is queued (plus one message). */
#define QUEUE_MAX_BYTES (16u << 20)

enum job_kind { JOB_MSG, JOB_COMMIT };

typedef struct job {
        enum job_kind kind;
        int64_t mailbox_id;
        srvmsg m;               /* JOB_MSG; keywords owned */
        char *body;             /* JOB_MSG; owned, CRLF */
        size_t len;
        /* JOB_COMMIT */
        bool set_state;
        uint32_t uidvalidity, uidnext;
        uint64_t highestmodseq;
        uint64_t seq;
        struct job *next;
} job;

struct writer {
        acs_store *store;
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t changed;
        job *head, *tail;
        size_t queued_bytes;
        uint64_t next_seq, committed_seq;
        int error;              /* first error; sticky until writer_reset_error() */
        bool quit;
        bool busy;              /* a popped job is being worked on */
        bool in_txn;            /* protected by lock while the writer is idle */
};

static void job_free(job *j)
{
        if (!j)
                return;
        free(j->body);
        free(j->m.keywords);
        free(j);
}

static void note_keywords(acs_store *st, const char *kw)
{
        /* Give every keyword a Maildir letter (a..z) so the tree can show it. */
        const char *p = kw;
        while (p && *p) {
                const char *e = strchr(p, ' ');
                size_t l = e ? (size_t)(e - p) : strlen(p);
                char buf[256];
                if (l < sizeof(buf)) {
                        int idx;
                        memcpy(buf, p, l);
                        buf[l] = 0;
                        (void)acs_store_keyword_index(st, buf, true, &idx); /* -ENOSPC past 26: no letter */
                }
                p = e ? e + 1 : NULL;
        }
}

void syncd_note_keywords(acs_store *st, const char *keywords)
{
        note_keywords(st, keywords);
}

static int store_body(acs_store *st, char *data, size_t len, int64_t *ret_id)
{
        if (len < BODY_STREAM_MIN)
                return acs_store_body_put(st, data, len, ret_id);
        int64_t id;
        int r = acs_store_body_create(st, len, &id);
        if (r < 0)
                return r;
        for (size_t off = 0; off < len; off += BODY_PIECE) {
                size_t n = len - off < BODY_PIECE ? len - off : BODY_PIECE;
                r = acs_store_body_write(st, id, off, data + off, n);
                if (r < 0)
                        return r;
        }
        return acs_store_body_finish(st, id, ret_id);
}

static int store_message(acs_store *st, job *j)
{
        acs_message old = {0};
        int r = acs_store_message_get_by_uid(st, j->mailbox_id, j->m.uid, &old);
        if (r == 0) {
                /* Already here (a resumed batch, or the server sent it twice): nothing to add. */
                acs_message_clear(&old);
                return 0;
        }
        if (r != -ENOENT)
                return r;

        size_t len = acs_crlf_to_lf(j->body, j->len);
        uint64_t vsize = acs_lf_vsize(j->body, len);
        int64_t body_id;
        r = store_body(st, j->body ? j->body : (char *)"", len, &body_id);
        if (r < 0)
                return r;
        acs_message msg = {
                .mailbox_id = j->mailbox_id,
                .uid = j->m.uid,
                .modseq = j->m.modseq,
                .flags = j->m.flags,
                .keywords = j->m.keywords ? j->m.keywords : (char *)"",
                .internaldate = j->m.internaldate,
                .size = len,
                .vsize = vsize,
                .body_id = body_id,
                .state = (j->m.flags & ACS_FLAG_SEEN) ? 0 : ACS_MSG_NEW,
        };
        r = acs_store_message_add(st, &msg);
        free(msg.uniq);
        if (r < 0)
                return r;
        note_keywords(st, j->m.keywords);
        return 0;
}

static int do_commit(writer *w, job *j)
{
        int r = 0;
        if (!w->in_txn) {
                if (!j->set_state)
                        return 0;
                r = acs_store_begin(w->store, false);
                if (r < 0)
                        return r;
                w->in_txn = true;
        }
        if (j->set_state)
                r = acs_store_mailbox_set_state(w->store, j->mailbox_id, j->uidvalidity, j->uidnext,
                                                j->highestmodseq);
        if (r == 0)
                r = acs_store_commit(w->store);
        if (r < 0)
                acs_store_rollback(w->store);
        w->in_txn = false;
        return r;
}

static void *writer_main(void *arg)
{
        writer *w = arg;
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals go to the network thread */

        pthread_mutex_lock(&w->lock);
        for (;;) {
                while (!w->head && !w->quit)
                        pthread_cond_wait(&w->changed, &w->lock);
                if (!w->head)
                        break;
                job *j = w->head;
                w->busy = true;
                w->head = j->next;
                if (!w->head)
                        w->tail = NULL;
                bool failed = w->error < 0;
                pthread_mutex_unlock(&w->lock);

                int r = 0;
                if (j->kind == JOB_MSG) {
                        if (!failed) {
                                if (!w->in_txn) {
                                        r = acs_store_begin(w->store, false);
                                        w->in_txn = r == 0;
                                }
                                if (r == 0)
                                        r = store_message(w->store, j);
                        }
                } else if (failed) {
                        if (w->in_txn)
                                acs_store_rollback(w->store);
                        w->in_txn = false;
                } else {
                        r = do_commit(w, j);
                }

                pthread_mutex_lock(&w->lock);
                if (r < 0 && w->error == 0)
                        w->error = r;
                if (j->kind == JOB_MSG)
                        w->queued_bytes -= j->len;
                else
                        w->committed_seq = j->seq;
                w->busy = false;
                pthread_cond_broadcast(&w->changed);
                pthread_mutex_unlock(&w->lock);
                job_free(j);
                pthread_mutex_lock(&w->lock);
        }
        pthread_mutex_unlock(&w->lock);
        if (w->in_txn)
                acs_store_rollback(w->store);
        w->in_txn = false;
        return NULL;
}

int writer_start(const char *db_path, writer **ret)
{
        writer *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        char *err = NULL;
        int r = acs_store_open(db_path, 0, &w->store, &err);
        if (r < 0) {
                acs_log(LOG_ERR, "writer: cannot open the cache: %s", err ? err : strerror(-r));
                free(err);
                free(w);
                return r;
        }
        pthread_mutex_init(&w->lock, NULL);
        pthread_cond_init(&w->changed, NULL);
        r = -pthread_create(&w->thread, NULL, writer_main, w);
        if (r < 0) {
                acs_store_close(w->store);
                free(w);
                return r;
        }
        *ret = w;
        return 0;
}

writer *writer_stop(writer *w)
{
        if (!w)
                return NULL;
        pthread_mutex_lock(&w->lock);
        w->quit = true;
        pthread_cond_broadcast(&w->changed);
        pthread_mutex_unlock(&w->lock);
        pthread_join(w->thread, NULL);
        for (job *j = w->head, *n; j; j = n) {
                n = j->next;
                job_free(j);
        }
        acs_store_close(w->store);
        pthread_cond_destroy(&w->changed);
        pthread_mutex_destroy(&w->lock);
        free(w);
        return NULL;
}

static void enqueue(writer *w, job *j)
{
        j->next = NULL;
        if (w->tail)
                w->tail->next = j;
        else
                w->head = j;
        w->tail = j;
        pthread_cond_broadcast(&w->changed);
}

int writer_push_msg(writer *w, int64_t mailbox_id, srvmsg *m, char *body, size_t len)
{
        job *j = calloc(1, sizeof(*j));
        if (!j) {
                free(body);
                free(m->keywords);
                m->keywords = NULL;
                return -ENOMEM;
        }
        j->kind = JOB_MSG;
        j->mailbox_id = mailbox_id;
        j->m = *m;
        m->keywords = NULL;
        j->body = body;
        j->len = len;
        pthread_mutex_lock(&w->lock);
        while (w->error == 0 && w->head && w->queued_bytes + len > QUEUE_MAX_BYTES)
                pthread_cond_wait(&w->changed, &w->lock);
        int r = w->error;
        if (r == 0) {
                w->queued_bytes += len;
                enqueue(w, j);
                j = NULL;
        }
        pthread_mutex_unlock(&w->lock);
        job_free(j);
        return r;
}

int writer_commit(writer *w, int64_t mailbox_id, bool set_state, uint32_t uidvalidity, uint32_t uidnext,
                  uint64_t highestmodseq, uint64_t *ret_seq)
{
        job *j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        j->kind = JOB_COMMIT;
        j->mailbox_id = mailbox_id;
        j->set_state = set_state;
        j->uidvalidity = uidvalidity;
        j->uidnext = uidnext;
        j->highestmodseq = highestmodseq;
        pthread_mutex_lock(&w->lock);
        int r = w->error;
        if (r == 0) {
                j->seq = ++w->next_seq;
                *ret_seq = j->seq;
                enqueue(w, j);
                j = NULL;
        }
        pthread_mutex_unlock(&w->lock);
        job_free(j);
        return r;
}

int writer_wait(writer *w, uint64_t seq)
{
        pthread_mutex_lock(&w->lock);
        while (w->error == 0 && w->committed_seq < seq)
                pthread_cond_wait(&w->changed, &w->lock);
        int r = w->error;
        pthread_mutex_unlock(&w->lock);
        return r;
}

int writer_error(writer *w)
{
        pthread_mutex_lock(&w->lock);
        int r = w->error;
        pthread_mutex_unlock(&w->lock);
        return r;
}

int writer_reset(writer *w)
{
        /* Waits until the queue is empty (whatever failed was rolled back), then clears the error. */
        pthread_mutex_lock(&w->lock);
        while (w->head || w->busy)
                pthread_cond_wait(&w->changed, &w->lock);
        /* the writer sleeps on the condition now: its handle is ours for a moment */
        if (w->in_txn)
                acs_store_rollback(w->store);
        w->in_txn = false;
        int r = w->error;
        w->error = 0;
        w->committed_seq = w->next_seq;
        pthread_mutex_unlock(&w->lock);
        return r;
}
