/* SPDX-License-Identifier: MIT */
/* The change watcher of acs-fs: follows commits to the cache and invalidates exactly what they changed in the kernel. */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "acs/log.h"
#include "acs/util.h"
#include "fs.h"

#define POLL_MS 500 /* fallback poll of the journal when inotify says nothing */
/*
 * Every round's notifications are sent once more this much later: a lookup that read the
 * old state just before a commit may answer the kernel after the first invalidation.
 */
#define AGAIN_MS 200
/*
 * A write to the -wal file can wake us before the commit is visible: SQLite writes the WAL
 * frames first and publishes them in the -shm index afterwards, through a shared mapping
 * that inotify does not report. So after an event of ours that showed nothing new, look
 * again a few times shortly after, instead of waiting for the POLL_MS fallback.
 */
#define RECHECK_MS 5
#define RECHECKS 20

/* A name to drop from the kernel's dentry cache. */
typedef struct inval_name {
        uint64_t parent;
        char *name;
} inval_name;

/* Pending kernel notifications: directory inodes (deduplicated) and names. */
typedef struct inval_set {
        uint64_t *inos;
        size_t n_inos, cap_inos;
        inval_name *names;
        size_t n_names, cap_names;
} inval_set;

struct fs_watch {
        fs_ctx *ctx;
        pthread_t thread;
        int inotify_fd;
        int stop_fd;
        char *db_name, *wal_name;
        acs_store *s;
        int64_t last_seq;
        bool tree_changed;

        inval_set round; /* this round's invalidations */
        inval_set again; /* sent since the last repeat; sent once more at again_at */
        int64_t again_at; /* CLOCK_MONOTONIC ms; 0 = nothing to repeat */
};

static int set_add_ino(inval_set *set, uint64_t ino)
{
        for (size_t i = 0; i < set->n_inos; i++)
                if (set->inos[i] == ino)
                        return 0;
        if (ACS_GROW(set->inos, set->cap_inos, set->n_inos, 32) < 0)
                return -ENOMEM;
        set->inos[set->n_inos++] = ino;
        return 0;
}

/* Adds a name; takes ownership of name (freed on failure). */
static int set_add_name_owned(inval_set *set, uint64_t parent, char *name)
{
        if (ACS_GROW(set->names, set->cap_names, set->n_names, 32) < 0) {
                free(name);
                return -ENOMEM;
        }
        set->names[set->n_names++] = (inval_name){ .parent = parent, .name = name };
        return 0;
}

static int set_add_name(inval_set *set, uint64_t parent, const char *name)
{
        char *copy = strdup(name);

        return copy ? set_add_name_owned(set, parent, copy) : -ENOMEM;
}

static void set_clear(inval_set *set)
{
        for (size_t i = 0; i < set->n_names; i++)
                free(set->names[i].name);
        set->n_names = 0;
        set->n_inos = 0;
}

static void set_free(inval_set *set)
{
        set_clear(set);
        free(set->names);
        free(set->inos);
        *set = (inval_set){ 0 };
}

/* Moves everything of src into dst (src is left empty). */
static int set_merge(inval_set *dst, inval_set *src)
{
        int r = 0;

        for (size_t i = 0; i < src->n_inos && r == 0; i++)
                r = set_add_ino(dst, src->inos[i]);
        for (size_t i = 0; i < src->n_names; i++) {
                char *name = TAKE_PTR(src->names[i].name);
                if (r == 0)
                        r = set_add_name_owned(dst, src->names[i].parent, name);
                else
                        free(name);
        }
        set_clear(src);
        return r;
}

/* Sends a set: names first, then directories; no lock is held (the kernel may call back). */
static void set_send(fs_ctx *ctx, const inval_set *set)
{
        for (size_t i = 0; i < set->n_names; i++)
                fuse_lowlevel_notify_inval_entry(ctx->se, set->names[i].parent, set->names[i].name,
                                                 strlen(set->names[i].name));
        for (size_t i = 0; i < set->n_inos; i++)
                fuse_lowlevel_notify_inval_inode(ctx->se, set->inos[i], 0, 0);
}

/* The directory inode of a mailbox's cur/ or new/ and its folder, from the current tree. */
static int add_message_dir(fs_watch *w, int64_t mailbox_id, bool in_new, const char *name)
{
        uint64_t dir = fs_ino_mailbox(mailbox_id, in_new ? FS_SUB_NEW : FS_SUB_CUR);
        int r;

        if (name) {
                r = set_add_name(&w->round, dir, name);
                if (r < 0)
                        return r;
        }
        r = set_add_ino(&w->round, dir);
        if (r < 0)
                return r;
        /* the folder shows the same mtime */
        pthread_rwlock_rdlock(&w->ctx->tree_lock);
        const fs_node *n = fs_tree_find_mailbox(w->ctx->tree, mailbox_id);
        uint64_t folder = n ? n->ino : 0;
        pthread_rwlock_unlock(&w->ctx->tree_lock);
        if (folder)
                r = set_add_ino(&w->round, folder);
        return r;
}

/* The directory where a message shows now (its new name appears there). */
static int add_current_message(fs_watch *w, int64_t message_id)
{
        acs_message m = { 0 };
        int r;

        if (acs_store_message_get(w->s, message_id, &m) < 0)
                return 0; /* gone again; a later journal row says so */
        r = add_message_dir(w, m.mailbox_id, m.state & ACS_MSG_NEW, NULL);
        acs_message_clear(&m);
        return r;
}

static int on_change(const acs_change *c, void *userdata)
{
        fs_watch *w = userdata;
        int r = 0;

        if (w->last_seq > 0 && c->seq != w->last_seq + 1)
                w->tree_changed = true; /* journal rows we never saw: refresh every directory */
        w->last_seq = c->seq;

        switch (c->kind) {
        case ACS_CHANGE_MAILBOX_ADDED:
        case ACS_CHANGE_MAILBOX_REMOVED:
        case ACS_CHANGE_MAILBOX_CHANGED:
                w->tree_changed = true;
                r = add_message_dir(w, c->mailbox_id, false, NULL);
                if (r == 0)
                        r = add_message_dir(w, c->mailbox_id, true, NULL);
                break;
        case ACS_CHANGE_MESSAGE_REMOVED:
        case ACS_CHANGE_MESSAGE_CHANGED: {
                /* the old name disappears from the old directory */
                _cleanup_free_ char *old = NULL;
                int64_t old_mb = c->old_mailbox_id ? c->old_mailbox_id : c->mailbox_id;
                if (c->old_uniq &&
                    fs_message_name(w->s, c->old_uniq, c->old_size, c->old_vsize, c->old_flags,
                                    c->old_keywords, &old) == 0) {
                        r = add_message_dir(w, old_mb, c->old_state & ACS_MSG_NEW, old);
                } else {
                        r = add_message_dir(w, old_mb, false, NULL);
                        if (r == 0)
                                r = add_message_dir(w, old_mb, true, NULL);
                }
                if (r == 0 && c->kind == ACS_CHANGE_MESSAGE_CHANGED)
                        r = add_current_message(w, c->message_id);
                break;
        }
        case ACS_CHANGE_MESSAGE_ADDED:
                r = add_current_message(w, c->message_id);
                break;
        default:
                break;
        }
        return r;
}

/* Invalidations for a new folder tree: vanished or moved names, and every directory. */
static int diff_trees_into(inval_set *set, const fs_tree *old, const fs_tree *cur)
{
        int r;

        for (size_t i = 0; i < old->n_nodes; i++) {
                const fs_node *o = &old->nodes[i];
                if (o->ino != FS_INO_ROOT) {
                        const fs_node *n = fs_tree_find(cur, o->ino);
                        if (!n || n->parent_ino != o->parent_ino || strcmp(n->name, o->name) != 0 ||
                            n->selectable != o->selectable) {
                                r = set_add_name(set, o->parent_ino, o->name);
                                if (r < 0)
                                        return r;
                        }
                }
                r = set_add_ino(set, o->ino);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < cur->n_nodes; i++) {
                r = set_add_ino(set, cur->nodes[i].ino);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int diff_trees(fs_watch *w, const fs_tree *old, const fs_tree *cur)
{
        return diff_trees_into(&w->round, old, cur);
}

void fs_tree_replaced(fs_ctx *ctx, fs_tree *old)
{
        inval_set set = { 0 };
        int r;

        pthread_rwlock_rdlock(&ctx->tree_lock);
        r = diff_trees_into(&set, old, ctx->tree);
        pthread_rwlock_unlock(&ctx->tree_lock);
        if (r < 0)
                acs_log(LOG_WARNING, "folder change: invalidations incomplete: %s", strerror(-r));
        set_send(ctx, &set);
        set_free(&set);
        fs_tree_free(old);
}

static int64_t now_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Reads new journal rows and sends the kernel what they invalidate. */
static int watch_round(fs_watch *w)
{
        fs_ctx *ctx = w->ctx;
        int r;

        r = acs_store_changes_since(w->s, w->last_seq, on_change, w);
        if (r < 0)
                return r;
        if (w->tree_changed) {
                fs_tree *old = NULL;
                r = fs_ctx_reload_tree(ctx, w->s, &old);
                if (r < 0)
                        return r;
                w->tree_changed = false; /* else the next round tries again */
                pthread_rwlock_rdlock(&ctx->tree_lock);
                r = diff_trees(w, old, ctx->tree);
                pthread_rwlock_unlock(&ctx->tree_lock);
                fs_tree_free(old);
                if (r < 0)
                        return r;
        }
        set_send(ctx, &w->round);
        if (w->round.n_names + w->round.n_inos > 0) {
                acs_log(LOG_DEBUG, "invalidated %zu names and %zu directories up to journal seq %lld",
                        w->round.n_names, w->round.n_inos, (long long)w->last_seq);
                if (!w->again_at)
                        w->again_at = now_ms() + AGAIN_MS;
        }
        return set_merge(&w->again, &w->round);
}

static bool event_is_ours(fs_watch *w)
{
        char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
        bool ours = false;

        for (;;) {
                ssize_t len = read(w->inotify_fd, buf, sizeof(buf));
                if (len <= 0)
                        break;
                for (char *p = buf; p < buf + len;) {
                        const struct inotify_event *ev = (const struct inotify_event *)p;
                        if (ev->len > 0 && (strcmp(ev->name, w->wal_name) == 0 ||
                                            strcmp(ev->name, w->db_name) == 0))
                                ours = true;
                        if (ev->mask & IN_Q_OVERFLOW)
                                ours = true;
                        p += sizeof(*ev) + ev->len;
                }
        }
        return ours;
}

static void *watch_main(void *arg)
{
        fs_watch *w = arg;
        bool failed = false;
        unsigned rechecks = 0; /* quick looks left after an event that showed nothing new */

        for (;;) {
                struct pollfd p[2] = {
                        { .fd = w->stop_fd, .events = POLLIN },
                        { .fd = w->inotify_fd, .events = POLLIN },
                };
                int timeout = rechecks > 0 ? RECHECK_MS : POLL_MS;
                if (w->again_at) {
                        int64_t left = w->again_at - now_ms();
                        timeout = left < 0 ? 0 : left < timeout ? (int)left : timeout;
                }
                int n = poll(p, w->inotify_fd >= 0 ? 2 : 1, timeout);
                if (n < 0 && errno != EINTR)
                        break;
                if (n > 0 && (p[0].revents & POLLIN))
                        break;
                if (w->again_at && now_ms() >= w->again_at) {
                        set_send(w->ctx, &w->again);
                        set_clear(&w->again);
                        w->again_at = 0;
                }
                bool event = n > 0 && (p[1].revents & POLLIN);
                if (event && !event_is_ours(w))
                        continue;
                if (event)
                        rechecks = RECHECKS;
                else if (rechecks > 0)
                        rechecks--;
                /* on an event or the timeout: anything new in the journal? */
                int64_t last;
                if (acs_store_change_last(w->s, &last) < 0 || (last == w->last_seq && !w->tree_changed))
                        continue;
                rechecks = 0;
                int r = watch_round(w);
                if (r < 0 && !failed)
                        acs_log(LOG_ERR, "cannot follow cache changes: %s (%s)", strerror(-r),
                                acs_store_errmsg(w->s));
                failed = r < 0;
                if (failed) {
                        /* rows may have been skipped: next round refreshes every directory */
                        set_clear(&w->round);
                        w->tree_changed = true;
                }
        }
        return NULL;
}

int fs_watch_start(fs_ctx *ctx, int64_t after_seq, fs_watch **ret)
{
        _cleanup_free_ char *dir = NULL, *base = NULL;
        char *err = NULL;
        int r;

        fs_watch *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->ctx = ctx;
        w->inotify_fd = -1;
        w->stop_fd = -1;
        w->last_seq = after_seq;
        dir = strdup(ctx->db_path);
        base = strdup(ctx->db_path);
        if (!dir || !base) {
                r = -ENOMEM;
                goto fail;
        }
        w->db_name = strdup(basename(base));
        if (!w->db_name || asprintf(&w->wal_name, "%s-wal", w->db_name) < 0) {
                w->wal_name = NULL;
                r = -ENOMEM;
                goto fail;
        }
        r = acs_store_open(ctx->db_path, ACS_STORE_READONLY, &w->s, &err);
        if (r < 0) {
                acs_log(LOG_ERR, "watcher: %s", err ? err : strerror(-r));
                free(err);
                goto fail;
        }
        w->stop_fd = eventfd(0, EFD_CLOEXEC);
        if (w->stop_fd < 0) {
                r = -errno;
                goto fail;
        }
        w->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (w->inotify_fd >= 0 &&
            inotify_add_watch(w->inotify_fd, dirname(dir), IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE |
                                                                   IN_MOVED_TO) < 0) {
                acs_log(LOG_WARNING, "inotify on %s: %m; polling every %d ms", dir, POLL_MS);
                close(w->inotify_fd);
                w->inotify_fd = -1;
        }
        r = -pthread_create(&w->thread, NULL, watch_main, w);
        if (r < 0)
                goto fail;
        *ret = w;
        return 0;
fail:
        if (w->inotify_fd >= 0)
                close(w->inotify_fd);
        if (w->stop_fd >= 0)
                close(w->stop_fd);
        acs_store_close(w->s);
        free(w->db_name);
        free(w->wal_name);
        free(w);
        return r;
}

fs_watch *fs_watch_stop(fs_watch *w)
{
        if (!w)
                return NULL;
        uint64_t one = 1;
        if (write(w->stop_fd, &one, sizeof(one)) < 0)
                acs_log(LOG_WARNING, "cannot stop the watcher: %m");
        pthread_join(w->thread, NULL);
        close(w->stop_fd);
        if (w->inotify_fd >= 0)
                close(w->inotify_fd);
        set_free(&w->round);
        set_free(&w->again);
        acs_store_close(w->s);
        free(w->db_name);
        free(w->wal_name);
        free(w);
        return NULL;
}
