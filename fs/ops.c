/* SPDX-License-Identifier: MIT */
/* The FUSE low-level operations of acs-fs: the read path over the cache (writes are in write.c). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <dirent.h>
#include <limits.h>

#include "acs/maildir.h"
#include "acs/util.h"
#include "fs.h"

#define DIR_BATCH 1024 /* messages read from the store per refill of a directory handle */

static inline fs_ctx *req_ctx(fuse_req_t req)
{
        return fuse_req_userdata(req);
}

void fs_stat_message(const fs_ctx *ctx, const acs_message *m, struct stat *st)
{
        *st = (struct stat){
                .st_ino = fs_ino_message(m->id),
                .st_mode = S_IFREG | (ctx->mode & 0444),
                .st_nlink = 1,
                .st_uid = ctx->uid,
                .st_gid = ctx->gid,
                .st_size = (off_t)m->size,
                .st_blksize = 4096,
                .st_blocks = (blkcnt_t)((m->size + 511) / 512),
        };
        st->st_mtim.tv_sec = m->internaldate;
        st->st_atim = st->st_ctim = st->st_mtim;
}

static void stat_dir(const fs_ctx *ctx, uint64_t ino, unsigned nsubdirs, int64_t mtime_ns,
                     struct stat *st)
{
        *st = (struct stat){
                .st_ino = ino,
                .st_mode = S_IFDIR | (ctx->read_only ? ctx->mode & ~0222u : ctx->mode),
                .st_nlink = 2 + nsubdirs,
                .st_uid = ctx->uid,
                .st_gid = ctx->gid,
                .st_size = 4096,
                .st_blksize = 4096,
                .st_blocks = 8,
        };
        st->st_mtim.tv_sec = mtime_ns / 1000000000;
        st->st_mtim.tv_nsec = mtime_ns % 1000000000;
        st->st_atim = st->st_ctim = st->st_mtim;
}

/* The current mtime of a tree node (mailbox mtimes move with every message change). */
static int node_mtime(acs_store *s, const fs_ctx *ctx, const fs_node *n, int64_t *ret_ns)
{
        int64_t t = 0;
        int r;

        if (n->ino == FS_INO_ROOT || n->mailbox_id == 0) {
                r = acs_store_root_mtime(s, &t);
                if (r < 0)
                        return r;
        }
        if (n->mailbox_id != 0) {
                acs_mailbox mb = { 0 };
                r = acs_store_mailbox_get_by_id(s, n->mailbox_id, &mb);
                if (r < 0)
                        return r;
                if (mb.mtime_ns > t)
                        t = mb.mtime_ns;
                acs_mailbox_clear(&mb);
        }
        *ret_ns = t;
        return 0;
}

int fs_what_is(const fs_tree *t, uint64_t ino, fs_what *ret)
{
        fs_what w = { .tag = (int)FS_INO_TAG(ino) };

        switch (w.tag) {
        case FS_TAG_ROOT:
                if (ino != FS_INO_ROOT)
                        return -ENOENT;
                w.node = &t->nodes[0];
                w.sub = FS_SUB_FOLDER;
                break;
        case FS_TAG_DIR:
                w.node = fs_tree_find(t, ino);
                if (!w.node)
                        return -ENOENT;
                w.sub = FS_SUB_FOLDER;
                break;
        case FS_TAG_MAILBOX: {
                int64_t mid = (int64_t)(FS_INO_LOW(ino) >> 2);
                w.sub = (enum fs_mbox_sub)(ino & 3);
                w.node = fs_tree_find_mailbox(t, mid);
                if (!w.node)
                        return -ENOENT;
                if (w.sub == FS_SUB_FOLDER && w.node->ino != ino)
                        return -ENOENT; /* Maildir++ INBOX is the root, not its own folder inode */
                if (w.sub != FS_SUB_FOLDER && !w.node->selectable)
                        return -ENOENT;
                break;
        }
        case FS_TAG_MESSAGE:
                w.message_id = (int64_t)FS_INO_LOW(ino);
                break;
        default:
                return -ENOENT;
        }
        *ret = w;
        return 0;
}

static uint64_t what_dir_ino(const fs_what *w)
{
        return w->sub == FS_SUB_FOLDER ? w->node->ino : fs_ino_mailbox(w->node->mailbox_id, w->sub);
}

int fs_stat_what(acs_store *s, const fs_ctx *ctx, const fs_what *w, struct stat *st)
{
        int r;

        if (w->tag == FS_TAG_MESSAGE) {
                acs_message m = { 0 };
                r = acs_store_message_get(s, w->message_id, &m);
                if (r < 0)
                        return r;
                fs_stat_message(ctx, &m, st);
                acs_message_clear(&m);
                return 0;
        }
        int64_t mt;
        r = node_mtime(s, ctx, w->node, &mt);
        if (r < 0)
                return r;
        stat_dir(ctx, what_dir_ino(w), w->sub == FS_SUB_FOLDER ? w->node->nsubdirs : 0, mt, st);
        return 0;
}

void fs_fill_entry(const fs_ctx *ctx, struct fuse_entry_param *e)
{
        e->ino = e->attr.st_ino;
        e->generation = 0;
        e->attr_timeout = ctx->entry_timeout;
        e->entry_timeout = ctx->entry_timeout;
}

/* ---- lookup ---- */

static bool kwbits_of(acs_store *s, const char *keywords, uint32_t *ret)
{
        return fs_message_kwbits(s, keywords, ret) == 0;
}

int fs_message_by_name(acs_store *s, int64_t mailbox_id, bool in_new, const char *name,
                       acs_message *ret)
{
        acs_mdname parsed = { 0 };
        acs_message m = { 0 };
        _cleanup_free_ char *want = NULL;
        const char *why;
        uint32_t kw;
        int r;

        if (acs_mdname_parse(name, &parsed, &why) < 0)
                return -ENOENT;
        r = acs_store_message_get_by_uniq(s, mailbox_id, parsed.uniq, &m);
        if (r < 0)
                goto out;
        r = -ENOENT;
        if (!!(m.state & ACS_MSG_NEW) != in_new)
                goto out;
        if (fs_message_name(s, m.uniq, m.size, m.vsize, m.flags, m.keywords, &want) < 0)
                goto out;
        if (strcmp(want, name) != 0) {
                /* an alias: what a client renamed the file to (no or equal S=/W=, same flags) */
                if ((parsed.has_size && parsed.size != m.size) ||
                    (parsed.has_vsize && parsed.vsize != m.vsize) || parsed.flags != m.flags ||
                    !kwbits_of(s, m.keywords, &kw) || parsed.keywords != kw)
                        goto out;
        }
        *ret = m;
        m = (acs_message){ 0 };
        r = 0;
out:
        acs_mdname_clear(&parsed);
        acs_message_clear(&m);
        return r;
}

static int lookup_message(acs_store *s, const fs_ctx *ctx, int64_t mailbox_id, bool in_new,
                          const char *name, struct fuse_entry_param *e)
{
        acs_message m = { 0 };
        int r = fs_message_by_name(s, mailbox_id, in_new, name, &m);

        if (r < 0)
                return r;
        fs_stat_message(ctx, &m, &e->attr);
        fs_fill_entry(ctx, e);
        acs_message_clear(&m);
        return 0;
}

/* Lookup of a message file in cur/ or new/ (after lookup_dir_do found no directory). */
static int lookup_do(fuse_req_t req, fuse_ino_t parent, const char *name,
                     struct fuse_entry_param *ret)
{
        fs_ctx *ctx = req_ctx(req);
        struct fuse_entry_param e = { 0 };
        fs_what w;
        int r;

        acs_store *s = fs_thread_store(ctx, &r);
        if (!s)
                return r;
        pthread_rwlock_rdlock(&ctx->tree_lock);
        r = fs_what_is(ctx->tree, parent, &w);
        int64_t mid = r == 0 && w.tag != FS_TAG_MESSAGE ? w.node->mailbox_id : 0;
        pthread_rwlock_unlock(&ctx->tree_lock);
        if (r < 0)
                return r;
        if (w.tag == FS_TAG_MESSAGE)
                return -ENOTDIR;
        if (w.sub == FS_SUB_TMP) {
                r = fs_spool_lookup(ctx, mid, name, &e);
                if (r == 0)
                        *ret = e;
                return r;
        }
        if (name[0] == '.')
                return -ENOENT; /* no dot-files in cur/ and new/ */
        if (w.sub != FS_SUB_CUR && w.sub != FS_SUB_NEW)
                return -ENOENT;
        r = lookup_message(s, ctx, mid, w.sub == FS_SUB_NEW, name, &e);
        if (r == 0)
                *ret = e;
        return r;
}

/* Lookup of directories in a folder (cur/new/tmp and child folders, dot-named in Maildir++). */
static int lookup_dir_do(fuse_req_t req, fuse_ino_t parent, const char *name,
                         struct fuse_entry_param *ret)
{
        fs_ctx *ctx = req_ctx(req);
        struct fuse_entry_param e = { 0 };
        fs_what w, cw;
        int r;

        acs_store *s = fs_thread_store(ctx, &r);
        if (!s)
                return r;
        pthread_rwlock_rdlock(&ctx->tree_lock);
        r = fs_what_is(ctx->tree, parent, &w);
        if (r < 0)
                goto out;
        r = -ENOENT;
        if (w.tag == FS_TAG_MESSAGE || w.sub != FS_SUB_FOLDER)
                goto out;
        cw = (fs_what){ .tag = FS_TAG_MAILBOX, .node = w.node };
        if (w.node->selectable && strcmp(name, "cur") == 0)
                cw.sub = FS_SUB_CUR;
        else if (w.node->selectable && strcmp(name, "new") == 0)
                cw.sub = FS_SUB_NEW;
        else if (w.node->selectable && strcmp(name, "tmp") == 0)
                cw.sub = FS_SUB_TMP;
        else {
                const fs_node *c = fs_tree_child(w.node, name);
                if (!c)
                        goto out;
                cw = (fs_what){ .tag = FS_TAG_MAILBOX, .node = c, .sub = FS_SUB_FOLDER };
        }
        r = fs_stat_what(s, ctx, &cw, &e.attr);
        if (r < 0)
                goto out;
        fs_fill_entry(ctx, &e);
        *ret = e;
out:
        pthread_rwlock_unlock(&ctx->tree_lock);
        return r;
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
        struct fuse_entry_param e;
        int r = lookup_dir_do(req, parent, name, &e);

        if (r == -ENOENT)
                r = lookup_do(req, parent, name, &e);
        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_entry(req, &e);
}

/* ---- attributes ---- */

static int getattr_do(fuse_req_t req, fuse_ino_t ino, struct stat *ret)
{
        fs_ctx *ctx = req_ctx(req);
        fs_what w;
        int r;

        if (FS_INO_TAG(ino) == FS_TAG_SPOOL)
                return fs_spool_getattr(ctx, ino, ret);
        acs_store *s = fs_thread_store(ctx, &r);
        if (!s)
                return r;
        pthread_rwlock_rdlock(&ctx->tree_lock);
        r = fs_what_is(ctx->tree, ino, &w);
        if (r == 0)
                r = fs_stat_what(s, ctx, &w, ret);
        pthread_rwlock_unlock(&ctx->tree_lock);
        return r;
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
        struct stat st;
        int r = getattr_do(req, ino, &st);

        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_attr(req, &st, FS_INO_TAG(ino) == FS_TAG_SPOOL ? 0 : req_ctx(req)->entry_timeout);
}

/* ---- directories ---- */

typedef struct dir_entry {
        uint64_t next_off;
        char *name;
        struct stat st;
} dir_entry;

/*
 * An open directory. Message directories (cur/, new/) are streamed DIR_BATCH rows at a
 * time; the offset cookie of a message entry is its id + 2 (0 = start, 1 = after ".",
 * 2 = after ".."). Folder directories are small and listed whole from the tree snapshot.
 */
typedef struct dir_handle {
        struct dir_handle *prev, *next; /* protected by fs_ctx.dirs_lock */
        bool messages;          /* cur/ or new/ */
        bool tmp;               /* tmp/: always empty */
        int64_t mailbox_id;
        bool in_new;
        uint64_t ino, parent_ino;
        /* the current batch; valid for offsets >= batch_after + 2 */
        dir_entry *v;
        size_t n;
        int64_t batch_after;    /* the id the batch started after */
        int64_t batch_last;     /* last id visited (matching or not) */
        bool eof;               /* no rows after batch_last */
        bool have_batch;
} dir_handle;

/* Links an open directory into ctx->dirs, so the ones the kernel never released are freed at exit. */
static void dir_link(fs_ctx *ctx, dir_handle *h)
{
        pthread_mutex_lock(&ctx->dirs_lock);
        h->prev = NULL;
        h->next = ctx->dirs;
        if (h->next)
                h->next->prev = h;
        ctx->dirs = h;
        pthread_mutex_unlock(&ctx->dirs_lock);
}

static void dir_free(fs_ctx *ctx, dir_handle *h);

void fs_dirs_free_all(fs_ctx *ctx)
{
        while (ctx->dirs)
                dir_free(ctx, ctx->dirs);
}

static void dir_batch_clear(dir_handle *h)
{
        for (size_t i = 0; i < h->n; i++)
                free(h->v[i].name);
        free(h->v);
        h->v = NULL;
        h->n = 0;
        h->have_batch = false;
}

typedef struct fill_state {
        dir_handle *h;
        acs_store *s;
        const fs_ctx *ctx;
        size_t cap, visited;
        int64_t last;
        int err;
} fill_state;

static int fill_cb(const acs_message *m, void *userdata)
{
        fill_state *f = userdata;
        dir_handle *h = f->h;

        f->visited++;
        f->last = m->id;
        if (!!(m->state & ACS_MSG_NEW) != h->in_new)
                return 0;
        if (ACS_GROW(h->v, f->cap, h->n, 64) < 0)
                return -ENOMEM;
        char *name = NULL;
        int r = fs_message_name(f->s, m->uniq, m->size, m->vsize, m->flags, m->keywords, &name);
        if (r < 0)
                return 0; /* a row that cannot be named is not shown */
        dir_entry *e = &h->v[h->n++];
        e->name = name;
        e->next_off = (uint64_t)m->id + 2;
        fs_stat_message(f->ctx, m, &e->st);
        return 0;
}

/* Loads the batch of matching messages with id > after (skipping batches with no match). */
static int dir_fill(acs_store *s, const fs_ctx *ctx, dir_handle *h, int64_t after)
{
        fill_state f = { .h = h, .s = s, .ctx = ctx };

        dir_batch_clear(h);
        h->batch_after = after;
        for (;;) {
                f.visited = 0;
                f.last = after;
                int r = acs_store_message_list(s, h->mailbox_id, after, DIR_BATCH, fill_cb, &f);
                if (r < 0) {
                        dir_batch_clear(h);
                        return r;
                }
                h->batch_last = f.last;
                h->eof = f.visited < DIR_BATCH;
                if (h->n > 0 || h->eof)
                        break;
                after = f.last;
        }
        h->have_batch = true;
        return 0;
}

static int opendir_do(fuse_req_t req, fuse_ino_t ino, dir_handle **ret)
{
        fs_ctx *ctx = req_ctx(req);
        fs_what w;
        int r;

        pthread_rwlock_rdlock(&ctx->tree_lock);
        r = fs_what_is(ctx->tree, ino, &w);
        if ((r == 0 && w.tag == FS_TAG_MESSAGE) || FS_INO_TAG(ino) == FS_TAG_SPOOL)
                r = -ENOTDIR;
        if (r < 0) {
                pthread_rwlock_unlock(&ctx->tree_lock);
                return r;
        }
        dir_handle *h = calloc(1, sizeof(*h));
        if (!h) {
                pthread_rwlock_unlock(&ctx->tree_lock);
                return -ENOMEM;
        }
        h->ino = ino;
        h->messages = w.sub == FS_SUB_CUR || w.sub == FS_SUB_NEW;
        h->in_new = w.sub == FS_SUB_NEW;
        h->tmp = w.sub == FS_SUB_TMP;
        h->mailbox_id = w.node->mailbox_id;
        h->parent_ino = w.sub == FS_SUB_FOLDER ? (w.node->ino == FS_INO_ROOT ? FS_INO_ROOT : w.node->parent_ino)
                                               : w.node->ino;
        pthread_rwlock_unlock(&ctx->tree_lock);
        *ret = h;
        return 0;
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
        dir_handle *h = NULL;
        int r = opendir_do(req, ino, &h);

        if (r < 0) {
                fuse_reply_err(req, -r);
                return;
        }
        fi->fh = (uint64_t)(uintptr_t)h;
        /* the kernel may keep listings; the watcher invalidates a directory that changed
         * (tmp/ lists real files changed by calls the kernel sees itself: never cached) */
        fi->cache_readdir = !h->tmp;
        fi->keep_cache = !h->tmp;
        dir_link(req_ctx(req), h);
        if (fuse_reply_open(req, fi) == -ENOENT)
                dir_free(req_ctx(req), h); /* interrupted: no releasedir will come */
}

static void dir_free(fs_ctx *ctx, dir_handle *h)
{
        pthread_mutex_lock(&ctx->dirs_lock);
        if (h->prev)
                h->prev->next = h->next;
        else
                ctx->dirs = h->next;
        if (h->next)
                h->next->prev = h->prev;
        pthread_mutex_unlock(&ctx->dirs_lock);
        dir_batch_clear(h);
        free(h);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
        dir_free(req_ctx(req), (dir_handle *)(uintptr_t)fi->fh);
        fuse_reply_err(req, 0);
}

/*
 * Appends one entry; returns false when it does not fit. In readdirplus replies the dot
 * entries carry node id 0, so the kernel neither links nor counts a lookup for them.
 */
enum entry_kind { ENTRY_NORMAL, ENTRY_DOT, ENTRY_SPOOL };

static bool add_entry(fuse_req_t req, const fs_ctx *ctx, bool plus, char *buf, size_t size,
                      size_t *pos, const char *name, const struct stat *st, uint64_t next_off,
                      int kind)
{
        size_t need;

        if (plus) {
                struct fuse_entry_param e = { .attr = *st };
                if (kind == ENTRY_NORMAL)
                        fs_fill_entry(ctx, &e);
                else if (kind == ENTRY_SPOOL)
                        fs_spool_fill_entry(&e);
                need = fuse_add_direntry_plus(req, buf + *pos, size - *pos, name, &e, (off_t)next_off);
        } else {
                need = fuse_add_direntry(req, buf + *pos, size - *pos, name, st, (off_t)next_off);
        }
        if (need > size - *pos)
                return false;
        *pos += need;
        return true;
}

static int readdir_dots(fuse_req_t req, const fs_ctx *ctx, const dir_handle *h, bool plus,
                        char *buf, size_t size, size_t *pos, uint64_t *off)
{
        struct stat st = { .st_mode = S_IFDIR };

        if (*off == 0) {
                st.st_ino = h->ino;
                if (!add_entry(req, ctx, plus, buf, size, pos, ".", &st, 1, ENTRY_DOT))
                        return 0;
                *off = 1;
        }
        if (*off == 1) {
                st.st_ino = h->parent_ino;
                if (!add_entry(req, ctx, plus, buf, size, pos, "..", &st, 2, ENTRY_DOT))
                        return 0;
                *off = 2;
        }
        return 1;
}

static int readdir_messages(fuse_req_t req, const fs_ctx *ctx, acs_store *s, dir_handle *h,
                            bool plus, char *buf, size_t size, size_t *pos, uint64_t off)
{
        int64_t after = (int64_t)off - 2;
        int r;

        if (!h->have_batch || after < h->batch_after || (after >= h->batch_last && !h->eof)) {
                r = dir_fill(s, ctx, h, after);
                if (r < 0)
                        return r;
        }
        for (;;) {
                size_t i = 0;
                while (i < h->n && (int64_t)h->v[i].next_off - 2 <= after)
                        i++;
                for (; i < h->n; i++) {
                        dir_entry *e = &h->v[i];
                        if (!add_entry(req, ctx, plus, buf, size, pos, e->name, &e->st, e->next_off, ENTRY_NORMAL))
                                return 0;
                        after = (int64_t)e->next_off - 2;
                }
                if (h->eof)
                        return 0;
                after = h->batch_last;
                r = dir_fill(s, ctx, h, after);
                if (r < 0)
                        return r;
        }
}

static int readdir_folder(fuse_req_t req, fs_ctx *ctx, acs_store *s, dir_handle *h, bool plus,
                          char *buf, size_t size, size_t *pos, uint64_t off)
{
        static const char *const subs[] = { "cur", "new", "tmp" };
        fs_what w;
        int r;

        pthread_rwlock_rdlock(&ctx->tree_lock);
        r = fs_what_is(ctx->tree, h->ino, &w);
        if (r < 0)
                goto out;
        /* entries after the dots: cur, new, tmp (selectable folders), then children; cookie 3 + index */
        uint64_t idx = 0;
        if (w.node->selectable) {
                for (unsigned k = 0; k < 3; k++, idx++) {
                        if (off > 2 + idx)
                                continue;
                        fs_what cw = { .tag = FS_TAG_MAILBOX, .node = w.node, .sub = (enum fs_mbox_sub)(k + 1) };
                        struct stat st;
                        r = fs_stat_what(s, ctx, &cw, &st);
                        if (r < 0)
                                goto out;
                        if (!add_entry(req, ctx, plus, buf, size, pos, subs[k], &st, 3 + idx, ENTRY_NORMAL))
                                goto out;
                }
        }
        for (const fs_node *c = w.node->first_child; c; c = c->next_sibling, idx++) {
                if (off > 2 + idx)
                        continue;
                fs_what cw = { .tag = FS_TAG_MAILBOX, .node = c, .sub = FS_SUB_FOLDER };
                struct stat st;
                r = fs_stat_what(s, ctx, &cw, &st);
                if (r < 0)
                        goto out;
                if (!add_entry(req, ctx, plus, buf, size, pos, c->name, &st, 3 + idx, ENTRY_NORMAL))
                        goto out;
        }
out:
        pthread_rwlock_unlock(&ctx->tree_lock);
        return r;
}

/*
 * tmp/: the real files of the mailbox's spool directory (a handful at most), listed again
 * on each call; the cookie of the i-th file is 3 + i.
 */
static int readdir_tmp(fuse_req_t req, fs_ctx *ctx, dir_handle *h, bool plus, char *buf,
                       size_t size, size_t *pos, uint64_t off)
{
        char path[PATH_MAX];
        DIR *d;
        struct dirent *de;
        uint64_t idx = 0;
        int r = fs_spool_mbox_dir(ctx, h->mailbox_id, path);

        if (r < 0)
                return r;
        d = opendir(path);
        if (!d)
                return errno == ENOENT ? 0 : -errno;
        while ((de = readdir(d))) {
                struct stat st;
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                        continue;
                if (off > 2 + idx++)
                        continue;
                uint64_t ino = fs_ino_spool(st.st_ino);
                st = (struct stat){ .st_ino = ino, .st_mode = S_IFREG | (st.st_mode & 07777),
                                    .st_nlink = 1, .st_uid = ctx->uid, .st_gid = ctx->gid,
                                    .st_size = st.st_size, .st_blksize = st.st_blksize,
                                    .st_blocks = st.st_blocks, .st_atim = st.st_atim,
                                    .st_mtim = st.st_mtim, .st_ctim = st.st_ctim };
                if (plus && fs_spool_remember(ctx, ino, h->mailbox_id, de->d_name) < 0)
                        break;
                if (!add_entry(req, ctx, plus, buf, size, pos, de->d_name, &st, 2 + idx, ENTRY_SPOOL))
                        break;
        }
        closedir(d);
        return 0;
}

static int readdir_do(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi,
                      bool plus, char **ret_buf, size_t *ret_len)
{
        fs_ctx *ctx = req_ctx(req);
        dir_handle *h = (dir_handle *)(uintptr_t)fi->fh;
        uint64_t o = (uint64_t)off;
        size_t pos = 0;
        int r;

        acs_store *s = fs_thread_store(ctx, &r);
        if (!s)
                return r;
        _cleanup_free_ char *buf = malloc(size);
        if (!buf)
                return -ENOMEM;
        r = 0;
        if (readdir_dots(req, ctx, h, plus, buf, size, &pos, &o)) {
                if (h->messages)
                        r = readdir_messages(req, ctx, s, h, plus, buf, size, &pos, o);
                else if (h->tmp)
                        r = readdir_tmp(req, ctx, h, plus, buf, size, &pos, o);
                else
                        r = readdir_folder(req, ctx, s, h, plus, buf, size, &pos, o);
                if (r < 0 && pos == 0)
                        return r;
        }
        *ret_buf = TAKE_PTR(buf);
        *ret_len = pos;
        return 0;
}

static void readdir_reply(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi, bool plus)
{
        char *buf = NULL;
        size_t len = 0;
        int r = readdir_do(req, size, off, fi, plus, &buf, &len);

        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_buf(req, buf, len);
        free(buf);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
        readdir_reply(req, size, off, fi, false);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
        readdir_reply(req, size, off, fi, true);
}

/* ---- files ---- */

static int open_do(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
        fs_ctx *ctx = req_ctx(req);
        acs_message m = { 0 };
        int r;

        if (FS_INO_TAG(ino) == FS_TAG_SPOOL)
                return fs_spool_open(ctx, ino, fi);
        if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
                return ctx->read_only ? -EROFS : -EPERM; /* message contents never change */
        if (FS_INO_TAG(ino) != FS_TAG_MESSAGE)
                return -EISDIR;
        acs_store *s = fs_thread_store(ctx, &r);
        if (!s)
                return r;
        r = acs_store_message_get(s, (int64_t)FS_INO_LOW(ino), &m);
        if (r < 0)
                return r;
        int64_t body = m.body_id;
        acs_message_clear(&m);
        if (body == 0)
                return -EIO; /* body not cached: streaming large mail is a later stage */
        fi->fh = (uint64_t)body;
        fi->keep_cache = 1; /* contents never change */
        return 0;
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
        int r = open_do(req, ino, fi);

        /*
         * A read-only open of a message that checked out: with FUSE_CAP_NO_OPEN_SUPPORT,
         * ENOSYS tells the kernel to stop sending opens (and releases) at all; it keeps the
         * page cache, so warm reads never reach us. From then on opens of tmp/ files do not
         * reach us either: their reads, writes and fsyncs come with fh 0 and open the
         * spool file by inode (write.c). Writable opens of messages then fail at write().
         */
        if (r == 0 && req_ctx(req)->no_open && FS_INO_TAG(ino) == FS_TAG_MESSAGE) {
                fuse_reply_err(req, ENOSYS);
                return;
        }

        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_open(req, fi);
}

static int read_do(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi,
                   char **ret_buf, size_t *ret_len)
{
        fs_ctx *ctx = req_ctx(req);
        size_t n = 0;
        int r;

        if (FS_INO_TAG(ino) == FS_TAG_SPOOL)
                return fs_spool_read(ctx, ino, size, off, fi, ret_buf, ret_len);
        acs_store *s = fs_thread_store(ctx, &r);
        if (!s)
                return r;
        _cleanup_free_ char *buf = malloc(size ? size : 1);
        if (!buf)
                return -ENOMEM;
        if (fi->fh == 0) {
                acs_message m = { 0 };
                r = acs_store_message_get(s, (int64_t)FS_INO_LOW(ino), &m);
                if (r < 0)
                        return r;
                fi->fh = (uint64_t)m.body_id;
                acs_message_clear(&m);
        }
        r = acs_store_body_read(s, (int64_t)fi->fh, (uint64_t)off, buf, size, &n);
        if (r < 0)
                return r == -ENOENT ? -EIO : r;
        *ret_buf = TAKE_PTR(buf);
        *ret_len = n;
        return 0;
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
        char *buf = NULL;
        size_t len = 0;
        int r = read_do(req, ino, size, off, fi, &buf, &len);

        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_buf(req, buf, len);
        free(buf);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
        fs_ctx *ctx = req_ctx(req);
        struct statvfs sv = {
                .f_bsize = 4096,
                .f_frsize = 4096,
                .f_namemax = 255,
        };

        /* free space is the spool's (and the cache's, next to it): writers look at it */
        if (!ctx->read_only && ctx->spool_dir && statvfs(ctx->spool_dir, &sv) == 0)
                sv.f_namemax = 255;
        if (ctx->read_only)
                sv.f_flag |= ST_RDONLY;
        fuse_reply_statfs(req, &sv);
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
        fs_ctx *ctx = userdata;

        ctx->no_open = ctx->allow_no_open && (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT);
        /* mtimes of messages never change: no need to drop pages on attribute refresh */
        conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
        if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
                conn->want |= FUSE_CAP_PARALLEL_DIROPS;
}

const struct fuse_lowlevel_ops fs_ops = {
        .init = fs_init,
        .lookup = fs_lookup,
        .getattr = fs_getattr,
        .setattr = fs_setattr,
        .mknod = fs_mknod,
        .mkdir = fs_mkdir,
        .unlink = fs_unlink,
        .rmdir = fs_rmdir,
        .symlink = fs_symlink,
        .rename = fs_rename,
        .link = fs_link,
        .open = fs_open,
        .read = fs_read,
        .write = fs_write,
        .opendir = fs_opendir,
        .readdir = fs_readdir,
        .readdirplus = fs_readdirplus,
        .releasedir = fs_releasedir,
        .statfs = fs_statfs,
        .setxattr = fs_setxattr,
        .removexattr = fs_removexattr,
        .create = fs_create,
        .fallocate = fs_fallocate,
        .release = fs_release,
        .fsync = fs_fsync,
        .fsyncdir = fs_fsyncdir,
};
