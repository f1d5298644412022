/* SPDX-License-Identifier: MIT */
/* The write path of acs-fs: renames, unlinks, folders and tmp/ files become local changes in the cache (lib/local.c). */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "acs/local.h"
#include "acs/log.h"
#include "acs/maildir.h"
#include "acs/util.h"
#include "fs.h"

/*
 * Crash safety of an append (rename of tmp/X into new/ or cur/): before the transaction a
 * marker "<spool>/.commit-<src mailbox>-<hash of X>" is written and synced, holding the
 * source mailbox id, X, the target mailbox id and the unique part (NUL-separated). After
 * the commit the spool file and then the marker are removed. On start, each marker left
 * behind is settled: when the target mailbox has a message with that unique part, the
 * transaction committed and the spool file (if still there) is removed; otherwise the
 * append never happened and the file stays in tmp/. Either way the marker goes.
 */
#define MARKER_PREFIX ".commit-"

typedef struct spool_node {
        uint64_t ino;
        int64_t mailbox_id;
        char *name;
} spool_node;

static inline fs_ctx *req_ctx(fuse_req_t req)
{
        return fuse_req_userdata(req);
}

/* ---- the spool: files of tmp/ ---- */

int fs_spool_mbox_dir(const fs_ctx *ctx, int64_t mailbox_id, char *buf)
{
        if (!ctx->spool_dir)
                return -ENOENT;
        if (snprintf(buf, PATH_MAX, "%s/%" PRId64, ctx->spool_dir, mailbox_id) >= PATH_MAX)
                return -ENAMETOOLONG;
        return 0;
}

static int spool_path(const fs_ctx *ctx, int64_t mailbox_id, const char *name, char *buf)
{
        if (!ctx->spool_dir)
                return -ENOENT;
        if (snprintf(buf, PATH_MAX, "%s/%" PRId64 "/%s", ctx->spool_dir, mailbox_id, name) >= PATH_MAX)
                return -ENAMETOOLONG;
        return 0;
}

static int fsync_path(const char *path)
{
        _cleanup_close_ int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        if (fd < 0 || fsync(fd) < 0)
                return -errno;
        return 0;
}

/* The spool directory of a mailbox, created when missing. */
static int spool_mbox_dir_make(const fs_ctx *ctx, int64_t mailbox_id, char *buf)
{
        int r = fs_spool_mbox_dir(ctx, mailbox_id, buf);

        if (r < 0)
                return r;
        if (mkdir(buf, 0700) < 0) {
                if (errno != EEXIST)
                        return -errno;
                return 0;
        }
        return fsync_path(ctx->spool_dir);
}

int fs_spool_remember(fs_ctx *ctx, uint64_t ino, int64_t mailbox_id, const char *name)
{
        char *copy = strdup(name);
        int r = 0;

        if (!copy)
                return -ENOMEM;
        pthread_mutex_lock(&ctx->spool_lock);
        for (size_t i = 0; i < ctx->n_spool; i++) {
                if (ctx->spool[i].ino == ino) {
                        free(ctx->spool[i].name);
                        ctx->spool[i].name = copy;
                        ctx->spool[i].mailbox_id = mailbox_id;
                        copy = NULL;
                        break;
                }
        }
        if (copy) {
                if (ACS_GROW(ctx->spool, ctx->cap_spool, ctx->n_spool, 16) < 0) {
                        free(copy);
                        r = -ENOMEM;
                } else {
                        ctx->spool[ctx->n_spool++] = (spool_node){ ino, mailbox_id, copy };
                }
        }
        pthread_mutex_unlock(&ctx->spool_lock);
        return r;
}

static void spool_forget(fs_ctx *ctx, uint64_t ino)
{
        pthread_mutex_lock(&ctx->spool_lock);
        for (size_t i = 0; i < ctx->n_spool; i++) {
                if (ctx->spool[i].ino == ino) {
                        free(ctx->spool[i].name);
                        ctx->spool[i] = ctx->spool[--ctx->n_spool];
                        break;
                }
        }
        pthread_mutex_unlock(&ctx->spool_lock);
}

/* The spool path of an inode, and the file's mailbox. */
static int spool_find(fs_ctx *ctx, uint64_t ino, char *path, int64_t *ret_mailbox_id)
{
        int r = -ENOENT;

        pthread_mutex_lock(&ctx->spool_lock);
        for (size_t i = 0; i < ctx->n_spool; i++) {
                if (ctx->spool[i].ino == ino) {
                        r = spool_path(ctx, ctx->spool[i].mailbox_id, ctx->spool[i].name, path);
                        if (r == 0 && ret_mailbox_id)
                                *ret_mailbox_id = ctx->spool[i].mailbox_id;
                        break;
                }
        }
        pthread_mutex_unlock(&ctx->spool_lock);
        return r;
}

static void spool_stat(const fs_ctx *ctx, const struct stat *real, struct stat *st)
{
        *st = (struct stat){
                .st_ino = fs_ino_spool(real->st_ino),
                .st_mode = S_IFREG | (real->st_mode & 07777),
                .st_nlink = 1,
                .st_uid = ctx->uid,
                .st_gid = ctx->gid,
                .st_size = real->st_size,
                .st_blksize = real->st_blksize,
                .st_blocks = real->st_blocks,
                .st_atim = real->st_atim,
                .st_mtim = real->st_mtim,
                .st_ctim = real->st_ctim,
        };
}

void fs_spool_fill_entry(struct fuse_entry_param *e)
{
        /* tmp/ files change under calls the kernel makes itself; keep nothing cached */
        e->ino = e->attr.st_ino;
        e->generation = 0;
        e->attr_timeout = 0;
        e->entry_timeout = 0;
}

int fs_spool_lookup(fs_ctx *ctx, int64_t mailbox_id, const char *name, struct fuse_entry_param *ret)
{
        char path[PATH_MAX];
        struct stat real;
        int r;

        if (ctx->read_only)
                return -ENOENT;
        r = spool_path(ctx, mailbox_id, name, path);
        if (r < 0)
                return r;
        if (lstat(path, &real) < 0)
                return -errno;
        if (!S_ISREG(real.st_mode))
                return -ENOENT;
        r = fs_spool_remember(ctx, fs_ino_spool(real.st_ino), mailbox_id, name);
        if (r < 0)
                return r;
        *ret = (struct fuse_entry_param){ 0 };
        spool_stat(ctx, &real, &ret->attr);
        fs_spool_fill_entry(ret);
        return 0;
}

int fs_spool_getattr(fs_ctx *ctx, uint64_t ino, struct stat *ret)
{
        char path[PATH_MAX];
        struct stat real;
        int r = spool_find(ctx, ino, path, NULL);

        if (r < 0)
                return r;
        if (lstat(path, &real) < 0)
                return -errno;
        if (fs_ino_spool(real.st_ino) != ino)
                return -ENOENT; /* replaced meanwhile */
        spool_stat(ctx, &real, ret);
        return 0;
}

/* Open flags for the real file: no O_APPEND (FUSE passes explicit offsets), no O_CREAT. */
static int real_flags(int flags)
{
        return (flags & (O_ACCMODE | O_TRUNC)) | O_CLOEXEC | O_NOFOLLOW;
}

int fs_spool_open(fs_ctx *ctx, uint64_t ino, struct fuse_file_info *fi)
{
        char path[PATH_MAX];
        int fd, r = spool_find(ctx, ino, path, NULL);

        if (r < 0)
                return r;
        fd = open(path, real_flags(fi->flags));
        if (fd < 0)
                return -errno;
        fi->fh = (uint64_t)fd + 1;
        fi->direct_io = 0;
        fi->keep_cache = 0;
        return 0;
}

/*
 * The descriptor for a call on a spool file: the handle's, or (the kernel stopped sending
 * opens, see ops.c) one opened for this call, closed again by the caller when *own.
 */
static int spool_fd(fs_ctx *ctx, uint64_t ino, const struct fuse_file_info *fi, int flags,
                    bool *own)
{
        char path[PATH_MAX];
        int fd, r;

        if (fi && fi->fh) {
                *own = false;
                return (int)(fi->fh - 1);
        }
        r = spool_find(ctx, ino, path, NULL);
        if (r < 0)
                return r;
        fd = open(path, flags | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        *own = true;
        return fd;
}

int fs_spool_read(fs_ctx *ctx, uint64_t ino, size_t size, off_t off, struct fuse_file_info *fi,
                  char **ret_buf, size_t *ret_len)
{
        bool own = false;
        ssize_t n;
        int fd = spool_fd(ctx, ino, fi, O_RDONLY, &own);

        if (fd < 0)
                return fd;
        char *buf = malloc(size ? size : 1);
        if (!buf) {
                if (own)
                        close(fd);
                return -ENOMEM;
        }
        n = pread(fd, buf, size, off);
        int err = errno;
        if (own)
                close(fd);
        if (n < 0) {
                free(buf);
                return -err;
        }
        *ret_buf = buf;
        *ret_len = (size_t)n;
        return 0;
}

/* ---- what a directory inode is (copied out of the tree) ---- */

typedef struct dir_info {
        int tag;
        enum fs_mbox_sub sub;
        int64_t mailbox_id;      /* 0 for root (fs layout) and path-only dirs */
        uint64_t node_ino;       /* the folder's inode */
        char path[PATH_MAX];     /* the folder's path relative to the root */
} dir_info;

static int dir_of(fs_ctx *ctx, uint64_t ino, dir_info *ret)
{
        fs_what w;
        int r;

        if (FS_INO_TAG(ino) == FS_TAG_MESSAGE || FS_INO_TAG(ino) == FS_TAG_SPOOL)
                return -ENOTDIR;
        pthread_rwlock_rdlock(&ctx->tree_lock);
        r = fs_what_is(ctx->tree, ino, &w);
        if (r == 0) {
                ret->tag = w.tag;
                ret->sub = w.sub;
                ret->mailbox_id = w.node->mailbox_id;
                ret->node_ino = w.node->ino;
                if (snprintf(ret->path, sizeof(ret->path), "%s", w.node->path) >= (int)sizeof(ret->path))
                        r = -ENAMETOOLONG;
        }
        pthread_rwlock_unlock(&ctx->tree_lock);
        return r;
}

/* The child folder named name of a folder-level directory: its mailbox id (0 = path-only). */
static int child_folder(fs_ctx *ctx, uint64_t parent, const char *name, int64_t *ret_mailbox_id,
                        bool *ret_has_children)
{
        fs_what w;
        int r;

        pthread_rwlock_rdlock(&ctx->tree_lock);
        r = fs_what_is(ctx->tree, parent, &w);
        if (r == 0 && (w.tag == FS_TAG_MESSAGE || w.sub != FS_SUB_FOLDER))
                r = -ENOENT;
        if (r == 0) {
                const fs_node *c = fs_tree_child(w.node, name);
                if (!c) {
                        r = -ENOENT;
                } else {
                        *ret_mailbox_id = c->mailbox_id;
                        *ret_has_children = c->first_child != NULL;
                }
        }
        pthread_rwlock_unlock(&ctx->tree_lock);
        return r;
}

/*
 * Drops the cached attributes (mtime) of the folder directories of mailboxes a and b (0 =
 * none): their mtimes moved with the change. Safe before the reply: attribute
 * invalidation takes no directory lock (the kernel itself refreshes the cur/ and new/
 * directories a rename or unlink touched).
 */
static void inval_folders(fs_ctx *ctx, int64_t a, int64_t b)
{
        uint64_t ino[2] = { 0, 0 };

        pthread_rwlock_rdlock(&ctx->tree_lock);
        for (int i = 0; i < 2; i++) {
                const fs_node *n = (i ? b : a) ? fs_tree_find_mailbox(ctx->tree, i ? b : a) : NULL;
                ino[i] = n ? n->ino : 0;
        }
        pthread_rwlock_unlock(&ctx->tree_lock);
        for (int i = 0; i < 2; i++)
                if (ino[i] && (i == 0 || ino[1] != ino[0]))
                        fuse_lowlevel_notify_inval_inode(ctx->se, ino[i], -1, 0);
}

/* The read-write store handle; call with write_lock held. */
static acs_store *wstore(fs_ctx *ctx, int *ret_err)
{
        char *err = NULL;
        int r;

        if (ctx->wstore)
                return ctx->wstore;
        r = acs_store_open(ctx->db_path, 0, &ctx->wstore, &err);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot open the cache for writing: %s", err ? err : strerror(-r));
                free(err);
                *ret_err = -EIO;
                return NULL;
        }
        return ctx->wstore;
}

/* Logs a failed local change once with the store's reason (errors the client caused are debug). */
static int logged(fs_ctx *ctx, int r, const char *what)
{
        int prio = r == -EIO || r == -EBUSY || r == -ENOSPC || r == -ENOMEM ? LOG_ERR : LOG_DEBUG;

        if (r < 0)
                acs_log(prio, "%s: %s (%s)", what, strerror(-r),
                        ctx->wstore ? acs_store_errmsg(ctx->wstore) : "-");
        return r;
}

/* Keyword names of the letters a..z set in bits (letters without a keyword are dropped). */
static int keywords_of(acs_store *s, uint32_t bits, char **ret)
{
        size_t len = 0, cap = 0;
        char *out = NULL;

        for (int i = 0; i < 26; i++) {
                _cleanup_free_ char *name = NULL;
                if (!(bits & (UINT32_C(1) << i)))
                        continue;
                int r = acs_store_keyword_name(s, i, &name);
                if (r == -ENOENT)
                        continue;
                if (r < 0) {
                        free(out);
                        return r;
                }
                size_t n = strlen(name);
                while (len + n + 2 > cap) {
                        cap = cap ? cap * 2 : 64;
                        char *nv = realloc(out, cap);
                        if (!nv) {
                                free(out);
                                return -ENOMEM;
                        }
                        out = nv;
                }
                if (len)
                        out[len++] = ' ';
                memcpy(out + len, name, n);
                len += n;
                out[len] = '\0';
        }
        *ret = out ? out : strdup("");
        return *ret ? 0 : -ENOMEM;
}

/*
 * Adds to *kw the keywords of cur that have no letter (past the 26th): a name cannot show
 * them, so a rename must not remove them.
 */
static int keep_letterless(acs_store *s, const char *cur, char **kw)
{
        _cleanup_free_ char *copy = cur ? strdup(cur) : NULL;
        char *save = NULL;

        if (cur && !copy)
                return -ENOMEM;
        for (char *k = copy ? strtok_r(copy, " ", &save) : NULL; k; k = strtok_r(NULL, " ", &save)) {
                int idx = -1, r = acs_store_keyword_index(s, k, false, &idx);
                if (r == 0 && idx >= 0 && idx < 26)
                        continue;
                if (r < 0 && r != -ENOENT)
                        return r;
                char *n = NULL;
                if (asprintf(&n, "%s%s%s", *kw, **kw ? " " : "", k) < 0)
                        return -ENOMEM;
                free(*kw);
                *kw = n;
        }
        return 0;
}

/* ---- attributes ---- */

static int setattr_spool(fs_ctx *ctx, uint64_t ino, const struct stat *attr, int to_set,
                         struct fuse_file_info *fi, struct stat *ret)
{
        char path[PATH_MAX];
        int r = spool_find(ctx, ino, path, NULL);

        if (r < 0)
                return r;
        if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID))
                return -EPERM;
        if (to_set & FUSE_SET_ATTR_SIZE) {
                if (fi && fi->fh) {
                        if (ftruncate((int)(fi->fh - 1), attr->st_size) < 0)
                                return -errno;
                } else if (truncate(path, attr->st_size) < 0) {
                        return -errno;
                }
        }
        if ((to_set & FUSE_SET_ATTR_MODE) && chmod(path, attr->st_mode & 07777) < 0)
                return -errno;
        if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
                      FUSE_SET_ATTR_MTIME_NOW)) {
                struct timespec ts[2] = { { .tv_nsec = UTIME_OMIT }, { .tv_nsec = UTIME_OMIT } };
                if (to_set & FUSE_SET_ATTR_ATIME_NOW)
                        ts[0].tv_nsec = UTIME_NOW;
                else if (to_set & FUSE_SET_ATTR_ATIME)
                        ts[0] = attr->st_atim;
                if (to_set & FUSE_SET_ATTR_MTIME_NOW)
                        ts[1].tv_nsec = UTIME_NOW;
                else if (to_set & FUSE_SET_ATTR_MTIME)
                        ts[1] = attr->st_mtim;
                if (utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW) < 0)
                        return -errno;
        }
        return fs_spool_getattr(ctx, ino, ret);
}

/*
 * Messages and directories: what keeps the attributes as they are is accepted (chmod to
 * the same mode, chown to the same owner, setting the mtime of a message to its
 * INTERNALDATE, atime alone: atime is not kept); any real change is EPERM: contents and
 * dates never change, and modes and owners are the mount's.
 */
static int setattr_fixed(fs_ctx *ctx, uint64_t ino, const struct stat *attr, int to_set,
                         struct stat *ret)
{
        acs_store *s;
        fs_what w;
        struct stat cur;
        int r;

        s = fs_thread_store(ctx, &r);
        if (!s)
                return r;
        pthread_rwlock_rdlock(&ctx->tree_lock);
        r = fs_what_is(ctx->tree, ino, &w);
        if (r == 0)
                r = fs_stat_what(s, ctx, &w, &cur);
        pthread_rwlock_unlock(&ctx->tree_lock);
        if (r < 0)
                return r;
        if ((to_set & FUSE_SET_ATTR_SIZE) && attr->st_size != cur.st_size)
                return -EPERM;
        if ((to_set & FUSE_SET_ATTR_MODE) && (attr->st_mode & 07777) != (cur.st_mode & 07777))
                return -EPERM;
        if (((to_set & FUSE_SET_ATTR_UID) && attr->st_uid != cur.st_uid) ||
            ((to_set & FUSE_SET_ATTR_GID) && attr->st_gid != cur.st_gid))
                return -EPERM;
        if (to_set & FUSE_SET_ATTR_MTIME_NOW)
                return -EPERM;
        if ((to_set & FUSE_SET_ATTR_MTIME) &&
            (w.tag != FS_TAG_MESSAGE || attr->st_mtim.tv_sec != cur.st_mtim.tv_sec ||
             attr->st_mtim.tv_nsec != cur.st_mtim.tv_nsec))
                return -EPERM;
        *ret = cur;
        return 0;
}

void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                struct fuse_file_info *fi)
{
        fs_ctx *ctx = req_ctx(req);
        struct stat st;
        int r;

        if (ctx->read_only)
                r = -EROFS;
        else if (FS_INO_TAG(ino) == FS_TAG_SPOOL)
                r = setattr_spool(ctx, ino, attr, to_set, fi, &st);
        else
                r = setattr_fixed(ctx, ino, attr, to_set, &st);
        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_attr(req, &st, FS_INO_TAG(ino) == FS_TAG_SPOOL ? 0 : ctx->entry_timeout);
}

/* ---- files in tmp/ ---- */

/* Creates a spool file for name in the tmp/ directory parent; fd open when ret_fd. */
static int tmp_create(fs_ctx *ctx, fuse_ino_t parent, const char *name, mode_t mode, int flags,
                      struct fuse_entry_param *ret, int *ret_fd)
{
        char dir[PATH_MAX], path[PATH_MAX];
        dir_info d;
        struct stat real;
        int fd, r;

        if (ctx->read_only)
                return -EROFS;
        r = dir_of(ctx, parent, &d);
        if (r < 0)
                return r;
        if (d.sub != FS_SUB_TMP)
                return -EPERM; /* new files only in tmp/; new mail is tmp/ + rename */
        if (strlen(name) > NAME_MAX)
                return -ENAMETOOLONG;
        r = spool_mbox_dir_make(ctx, d.mailbox_id, dir);
        if (r < 0)
                return r;
        r = spool_path(ctx, d.mailbox_id, name, path);
        if (r < 0)
                return r;
        fd = open(path, real_flags(flags) | O_CREAT | O_EXCL, (mode & 07777) | 0600);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &real) < 0) {
                r = -errno;
                close(fd);
                unlink(path);
                return r;
        }
        r = fs_spool_remember(ctx, fs_ino_spool(real.st_ino), d.mailbox_id, name);
        if (r < 0) {
                close(fd);
                unlink(path);
                return r;
        }
        *ret = (struct fuse_entry_param){ 0 };
        spool_stat(ctx, &real, &ret->attr);
        fs_spool_fill_entry(ret);
        if (ret_fd)
                *ret_fd = fd;
        else
                close(fd);
        return 0;
}

void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
               struct fuse_file_info *fi)
{
        struct fuse_entry_param e;
        int fd = -1;
        int r = tmp_create(req_ctx(req), parent, name, mode, fi->flags, &e, &fd);

        if (r < 0) {
                fuse_reply_err(req, -r);
                return;
        }
        fi->fh = (uint64_t)fd + 1;
        fi->keep_cache = 0;
        if (fuse_reply_create(req, &e, fi) < 0)
                close(fd); /* interrupted: no release will come */
}

void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
        struct fuse_entry_param e;
        int r;

        if (req_ctx(req)->read_only)
                r = -EROFS;
        else if (!S_ISREG(mode))
                r = -EPERM; /* no devices, fifos or sockets in a Maildir */
        else
                r = tmp_create(req_ctx(req), parent, name, mode, O_WRONLY, &e, NULL);
        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_entry(req, &e);
}

void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
              struct fuse_file_info *fi)
{
        fs_ctx *ctx = req_ctx(req);
        bool own = false;
        ssize_t n;
        int fd;

        if (ctx->read_only) {
                fuse_reply_err(req, EROFS);
                return;
        }
        if (FS_INO_TAG(ino) != FS_TAG_SPOOL) {
                fuse_reply_err(req, EPERM); /* message contents never change */
                return;
        }
        fd = spool_fd(ctx, ino, fi, O_WRONLY, &own);
        if (fd < 0) {
                fuse_reply_err(req, -fd);
                return;
        }
        n = pwrite(fd, buf, size, off);
        int err = errno;
        if (own)
                close(fd);
        if (n < 0)
                fuse_reply_err(req, err);
        else
                fuse_reply_write(req, (size_t)n);
}

void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
        if (FS_INO_TAG(ino) == FS_TAG_SPOOL && fi->fh)
                close((int)(fi->fh - 1));
        fuse_reply_err(req, 0);
}

void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
        fs_ctx *ctx = req_ctx(req);
        bool own = false;
        int r = 0, fd;

        /* messages: what a call changed was committed durably before it returned */
        if (FS_INO_TAG(ino) == FS_TAG_SPOOL) {
                fd = spool_fd(ctx, ino, fi, O_RDONLY, &own);
                if (fd < 0) {
                        r = fd;
                } else {
                        if ((datasync ? fdatasync(fd) : fsync(fd)) < 0)
                                r = -errno;
                        if (own)
                                close(fd);
                }
        }
        fuse_reply_err(req, -r);
}

void fs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
        fs_ctx *ctx = req_ctx(req);
        char path[PATH_MAX];
        dir_info d;
        int r = 0;

        /* tmp/: the spool directory holds the names; elsewhere every change is committed */
        if (!ctx->read_only && dir_of(ctx, ino, &d) == 0 && d.sub == FS_SUB_TMP &&
            fs_spool_mbox_dir(ctx, d.mailbox_id, path) == 0) {
                r = fsync_path(path);
                if (r == -ENOENT)
                        r = 0;
        }
        fuse_reply_err(req, -r);
}

void fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                  struct fuse_file_info *fi)
{
        fs_ctx *ctx = req_ctx(req);
        bool own = false;
        int r = 0, fd;

        if (ctx->read_only) {
                fuse_reply_err(req, EROFS);
                return;
        }
        if (FS_INO_TAG(ino) != FS_TAG_SPOOL) {
                fuse_reply_err(req, EPERM);
                return;
        }
        fd = spool_fd(ctx, ino, fi, O_WRONLY, &own);
        if (fd < 0) {
                fuse_reply_err(req, -fd);
                return;
        }
        if (fallocate(fd, mode, offset, length) < 0)
                r = -errno;
        if (own)
                close(fd);
        fuse_reply_err(req, -r);
}

/* ---- unlink ---- */

static int unlink_do(fs_ctx *ctx, fuse_ino_t parent, const char *name)
{
        char path[PATH_MAX];
        acs_message m = { 0 };
        struct stat real;
        dir_info d;
        int r;

        if (ctx->read_only)
                return -EROFS;
        r = dir_of(ctx, parent, &d);
        if (r < 0)
                return r;
        if (d.sub == FS_SUB_TMP) {
                r = spool_path(ctx, d.mailbox_id, name, path);
                if (r < 0)
                        return r;
                if (lstat(path, &real) < 0)
                        return -errno;
                if (unlink(path) < 0)
                        return -errno;
                spool_forget(ctx, fs_ino_spool(real.st_ino));
                return 0;
        }
        if (d.sub != FS_SUB_CUR && d.sub != FS_SUB_NEW)
                return d.sub == FS_SUB_FOLDER ? -EISDIR : -EPERM;
        pthread_mutex_lock(&ctx->write_lock);
        acs_store *s = wstore(ctx, &r);
        if (s) {
                r = fs_message_by_name(s, d.mailbox_id, d.sub == FS_SUB_NEW, name, &m);
                if (r == 0)
                        r = logged(ctx, acs_local_expunge(s, m.id), "expunge");
        }
        pthread_mutex_unlock(&ctx->write_lock);
        acs_message_clear(&m);
        if (r == 0)
                inval_folders(ctx, d.mailbox_id, 0);
        return r;
}

void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
        int r = unlink_do(req_ctx(req), parent, name);

        fuse_reply_err(req, -r);
}

/* ---- renames of files ---- */

/* Flags and keyword names from a target file name (its S=/W= are ignored: ours count). */
static int parse_target(acs_store *s, const char *name, acs_mdname *ret_parsed, char **ret_kw)
{
        const char *why;
        int r = acs_mdname_parse(name, ret_parsed, &why);

        if (r < 0)
                return -EINVAL;
        r = keywords_of(s, ret_parsed->keywords, ret_kw);
        if (r < 0)
                acs_mdname_clear(ret_parsed);
        return r;
}

/* cur/ or new/ -> cur/ or new/: flags (same folder) or a move (another folder). */
static int rename_message(fs_ctx *ctx, const dir_info *from, const char *name, const dir_info *to,
                          const char *newname)
{
        acs_message m = { 0 }, other = { 0 };
        acs_mdname t = { 0 };
        _cleanup_free_ char *kw = NULL;
        unsigned state = to->sub == FS_SUB_NEW ? ACS_MSG_NEW : 0;
        int r;

        pthread_mutex_lock(&ctx->write_lock);
        acs_store *s = wstore(ctx, &r);
        if (!s)
                goto out;
        r = fs_message_by_name(s, from->mailbox_id, from->sub == FS_SUB_NEW, name, &m);
        if (r < 0)
                goto out;
        r = parse_target(s, newname, &t, &kw);
        if (r == 0)
                r = keep_letterless(s, m.keywords, &kw);
        if (r < 0)
                goto out;
        /* a different message under the target name is never replaced (that would expunge) */
        if (fs_message_by_name(s, to->mailbox_id, to->sub == FS_SUB_NEW, newname, &other) == 0 &&
            other.id != m.id) {
                r = -EEXIST;
                goto out;
        }
        /* what the client's name showed: the delta is from that, never from a row acs-syncd
         * changed since (acs_local_set_flags_seen) */
        const acs_local_seen seen = { .flags = m.flags, .keywords = m.keywords };
        if (to->mailbox_id == from->mailbox_id) {
                if (strcmp(t.uniq, m.uniq) != 0) {
                        r = -EINVAL; /* the unique part is stable while the message stays */
                        goto out;
                }
                r = logged(ctx, acs_local_set_flags_seen(s, m.id, &seen, t.flags, kw, state), "flags");
        } else {
                r = logged(ctx, acs_local_move_seen(s, m.id, &seen, to->mailbox_id, t.uniq, t.flags, kw, state),
                           "move");
        }
out:
        pthread_mutex_unlock(&ctx->write_lock);
        acs_mdname_clear(&t);
        acs_message_clear(&m);
        acs_message_clear(&other);
        if (r == 0)
                inval_folders(ctx, from->mailbox_id, to->mailbox_id);
        return r;
}

static uint64_t fnv1a(const char *s)
{
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (; *s; s++) {
                h ^= (unsigned char)*s;
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

static int marker_path(const fs_ctx *ctx, int64_t src_mailbox, const char *name, char *buf)
{
        if (snprintf(buf, PATH_MAX, "%s/" MARKER_PREFIX "%" PRId64 "-%016" PRIx64, ctx->spool_dir,
                     src_mailbox, fnv1a(name)) >= PATH_MAX)
                return -ENAMETOOLONG;
        return 0;
}

/* Writes and syncs the marker of an append about to commit (see MARKER_PREFIX). */
static int marker_write(const fs_ctx *ctx, const char *path, int64_t src, const char *name,
                        int64_t target, const char *uniq)
{
        char head[64], mid[64];
        int hl = snprintf(head, sizeof(head), "%" PRId64, src);
        int ml = snprintf(mid, sizeof(mid), "%" PRId64, target);
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        struct iovec {
                const void *p;
                size_t n;
        } parts[] = {
                { head, (size_t)hl + 1 }, { name, strlen(name) + 1 },
                { mid, (size_t)ml + 1 },  { uniq, strlen(uniq) + 1 },
        };

        if (fd < 0)
                return -errno;
        for (size_t i = 0; i < ACS_ARRAY_SIZE(parts); i++) {
                const char *p = parts[i].p;
                size_t left = parts[i].n;
                while (left > 0) {
                        ssize_t n = write(fd, p, left);
                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                return -errno;
                        }
                        p += n;
                        left -= (size_t)n;
                }
        }
        if (fsync(fd) < 0)
                return -errno;
        return fsync_path(ctx->spool_dir);
}

/* tmp/X -> new/ or cur/: the file's contents become a new message (an APPEND). */
static int rename_append(fs_ctx *ctx, const dir_info *from, const char *name, const dir_info *to,
                         const char *newname)
{
        char path[PATH_MAX], marker[PATH_MAX];
        acs_message other = { 0 };
        acs_mdname t = { 0 };
        _cleanup_free_ char *kw = NULL;
        _cleanup_close_ int fd = -1;
        struct stat st;
        void *data = NULL;
        bool marked = false;
        int r;

        r = spool_path(ctx, from->mailbox_id, name, path);
        if (r < 0)
                return r;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        if (st.st_size > INT_MAX)
                return -EFBIG;
        /* read, not mmap: a client truncating the file meanwhile must not SIGBUS us */
        data = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
        if (!data)
                return -ENOMEM;
        for (size_t got = 0; got < (size_t)st.st_size;) {
                ssize_t n = pread(fd, (char *)data + got, (size_t)st.st_size - got, (off_t)got);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = -errno;
                        goto out_free;
                }
                if (n == 0) {
                        st.st_size = (off_t)got; /* shrank meanwhile: what is there */
                        break;
                }
                got += (size_t)n;
        }
        r = marker_path(ctx, from->mailbox_id, name, marker);
        if (r < 0)
                goto out_free;

        pthread_mutex_lock(&ctx->write_lock);
        acs_store *s = wstore(ctx, &r);
        if (!s)
                goto out;
        r = parse_target(s, newname, &t, &kw);
        if (r < 0)
                goto out;
        r = acs_store_message_get_by_uniq(s, to->mailbox_id, t.uniq, &other);
        acs_message_clear(&other);
        if (r == 0) {
                r = -EEXIST;
                goto out;
        }
        if (r != -ENOENT)
                goto out;
        r = marker_write(ctx, marker, from->mailbox_id, name, to->mailbox_id, t.uniq);
        if (r < 0)
                goto out;
        marked = true;
        /* the file's mtime is the INTERNALDATE; contents as written (LF) */
        r = logged(ctx, acs_local_append(s, to->mailbox_id, t.uniq, t.flags, kw, st.st_mtim.tv_sec,
                                         to->sub == FS_SUB_NEW ? ACS_MSG_NEW : 0, data,
                                         (size_t)st.st_size, NULL), "append");
        if (r == 0) {
                if (unlink(path) < 0 && errno != ENOENT)
                        acs_log(LOG_WARNING, "cannot remove spool file %s: %m", path);
                spool_forget(ctx, fs_ino_spool(st.st_ino));
        }
out:
        pthread_mutex_unlock(&ctx->write_lock);
        if (marked && unlink(marker) < 0)
                acs_log(LOG_WARNING, "cannot remove %s: %m", marker);
        if (r == 0)
                inval_folders(ctx, to->mailbox_id, 0);
        acs_mdname_clear(&t);
out_free:
        free(data);
        return r;
}

/* tmp/ -> tmp/ (any folder's): a rename of the spool file. */
static int rename_spool(fs_ctx *ctx, const dir_info *from, const char *name, const dir_info *to,
                        const char *newname, unsigned flags)
{
        char src[PATH_MAX], dst[PATH_MAX], dir[PATH_MAX];
        struct stat real;
        int r;

        if (strlen(newname) > NAME_MAX)
                return -ENAMETOOLONG;
        r = spool_path(ctx, from->mailbox_id, name, src);
        if (r == 0)
                r = spool_mbox_dir_make(ctx, to->mailbox_id, dir);
        if (r == 0)
                r = spool_path(ctx, to->mailbox_id, newname, dst);
        if (r < 0)
                return r;
        if (lstat(src, &real) < 0)
                return -errno;
        if (renameat2(AT_FDCWD, src, AT_FDCWD, dst, flags & RENAME_NOREPLACE) < 0)
                return -errno;
        return fs_spool_remember(ctx, fs_ino_spool(real.st_ino), to->mailbox_id, newname);
}

/* ---- folders ---- */

/* The mailbox name for a new directory name under a folder-level directory. */
static int folder_name(fs_ctx *ctx, const dir_info *parent, const char *name, char delim,
                       char **ret)
{
        char path[PATH_MAX];
        const char *why;

        if (parent->sub != FS_SUB_FOLDER)
                return -EPERM; /* no directories inside cur/, new/ or tmp/ */
        if (ctx->layout == ACS_LAYOUT_MAILDIRPP) {
                if (parent->node_ino != FS_INO_ROOT)
                        return -EPERM; /* Maildir++ folders all live at the root */
                if (name[0] != '.')
                        return -EPERM; /* cur, new, tmp exist; other names are not folders */
                if (snprintf(path, sizeof(path), "%s", name) >= (int)sizeof(path))
                        return -ENAMETOOLONG;
        } else if (snprintf(path, sizeof(path), "%s%s%s", parent->path, *parent->path ? "/" : "",
                            name) >= (int)sizeof(path)) {
                return -ENAMETOOLONG;
        }
        if (acs_path_to_mbox(path, delim, ctx->layout, ret, &why) < 0)
                return -EINVAL;
        return 0;
}

/* Re-reads the folder tree after a folder change; *ret_old is the tree before. */
static int reload_tree(fs_ctx *ctx, acs_store *s, fs_tree **ret_old)
{
        int r = fs_ctx_reload_tree(ctx, s, ret_old);

        if (r < 0)
                acs_log(LOG_ERR, "cannot reload the folder tree: %s", strerror(-r));
        return r;
}

static int mkdir_do(fs_ctx *ctx, fuse_ino_t parent, const char *name, struct fuse_entry_param *ret,
                    fs_tree **ret_old)
{
        _cleanup_free_ char *mbox = NULL;
        acs_mailbox mb = { 0 };
        dir_info d;
        char delim;
        int r;

        if (ctx->read_only)
                return -EROFS;
        r = dir_of(ctx, parent, &d);
        if (r < 0)
                return r;
        pthread_mutex_lock(&ctx->write_lock);
        acs_store *s = wstore(ctx, &r);
        if (!s)
                goto out;
        r = acs_local_delimiter(s, &delim);
        if (r < 0)
                goto out;
        r = folder_name(ctx, &d, name, delim, &mbox);
        if (r < 0)
                goto out;
        r = logged(ctx, acs_local_mailbox_create(s, mbox), "create folder");
        if (r < 0)
                goto out;
        r = acs_store_mailbox_get(s, mbox, &mb);
        if (r == 0)
                r = reload_tree(ctx, s, ret_old);
        if (r == 0) {
                fs_what w = { .tag = FS_TAG_MAILBOX, .sub = FS_SUB_FOLDER };
                pthread_rwlock_rdlock(&ctx->tree_lock);
                w.node = fs_tree_find_mailbox(ctx->tree, mb.id);
                r = w.node ? fs_stat_what(s, ctx, &w, &ret->attr) : -EIO;
                pthread_rwlock_unlock(&ctx->tree_lock);
                if (r == 0)
                        fs_fill_entry(ctx, ret);
        }
out:
        pthread_mutex_unlock(&ctx->write_lock);
        acs_mailbox_clear(&mb);
        return r;
}

void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
        fs_ctx *ctx = req_ctx(req);
        struct fuse_entry_param e = { 0 };
        fs_tree *old = NULL;
        int r = mkdir_do(ctx, parent, name, &e, &old);

        if (r < 0)
                fuse_reply_err(req, -r);
        else
                fuse_reply_entry(req, &e);
        if (old)
                fs_tree_replaced(ctx, old);
}

static bool is_sub_name(const char *name)
{
        return strcmp(name, "cur") == 0 || strcmp(name, "new") == 0 || strcmp(name, "tmp") == 0;
}

static bool spool_dir_empty(fs_ctx *ctx, int64_t mailbox_id)
{
        char path[PATH_MAX];
        struct dirent *de;
        bool empty = true;
        DIR *dir;

        if (fs_spool_mbox_dir(ctx, mailbox_id, path) < 0 || !(dir = opendir(path)))
                return true;
        while ((de = readdir(dir)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
                        empty = false;
                        break;
                }
        closedir(dir);
        return empty;
}

static int rmdir_do(fs_ctx *ctx, fuse_ino_t parent, const char *name, fs_tree **ret_old)
{
        char path[PATH_MAX];
        dir_info d;
        int64_t mid = 0;
        bool children = false;
        int r;

        if (ctx->read_only)
                return -EROFS;
        r = dir_of(ctx, parent, &d);
        if (r < 0)
                return r;
        if (d.sub != FS_SUB_FOLDER)
                return -ENOTDIR;
        r = child_folder(ctx, parent, name, &mid, &children);
        if (r == -ENOENT && d.mailbox_id && is_sub_name(name))
                return -EPERM; /* a folder's cur/new/tmp go with the folder (rmdir it) */
        if (r < 0)
                return r;
        if (mid == 0 || children)
                return -ENOTEMPTY; /* a path-only directory exists for its children */
        if (!spool_dir_empty(ctx, mid))
                return -ENOTEMPTY;
        pthread_mutex_lock(&ctx->write_lock);
        acs_store *s = wstore(ctx, &r);
        if (s) {
                r = logged(ctx, acs_local_mailbox_delete(s, mid), "delete folder");
                if (r == 0)
                        (void)reload_tree(ctx, s, ret_old);
        }
        pthread_mutex_unlock(&ctx->write_lock);
        if (r == 0 && fs_spool_mbox_dir(ctx, mid, path) == 0)
                (void)rmdir(path);
        return r;
}

void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
        fs_ctx *ctx = req_ctx(req);
        fs_tree *old = NULL;
        int r = rmdir_do(ctx, parent, name, &old);

        fuse_reply_err(req, -r);
        if (old)
                fs_tree_replaced(ctx, old);
}

static int rename_folder(fs_ctx *ctx, fuse_ino_t parent, const char *name, const dir_info *to,
                         const char *newname, fs_tree **ret_old)
{
        _cleanup_free_ char *mbox = NULL;
        acs_mailbox mb = { 0 };
        int64_t mid = 0;
        bool children;
        int r = child_folder(ctx, parent, name, &mid, &children);

        if (r == -ENOENT && is_sub_name(name))
                return -EPERM; /* a folder's cur/new/tmp go with the folder */
        if (r < 0)
                return r;
        if (mid == 0)
                return -EPERM; /* a path-only directory: rename the folders below it */
        pthread_mutex_lock(&ctx->write_lock);
        acs_store *s = wstore(ctx, &r);
        if (!s)
                goto out;
        r = acs_store_mailbox_get_by_id(s, mid, &mb);
        if (r < 0)
                goto out;
        r = folder_name(ctx, to, newname, mb.delim ? mb.delim : '/', &mbox);
        if (r < 0)
                goto out;
        r = logged(ctx, acs_local_mailbox_rename(s, mid, mbox), "rename folder");
        if (r == 0)
                (void)reload_tree(ctx, s, ret_old);
out:
        pthread_mutex_unlock(&ctx->write_lock);
        acs_mailbox_clear(&mb);
        return r;
}

static int rename_do(fs_ctx *ctx, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
                     const char *newname, unsigned flags, fs_tree **ret_old, bool *ret_appended)
{
        dir_info from, to;
        int r;

        if (ctx->read_only)
                return -EROFS;
        if (flags & ~(unsigned)RENAME_NOREPLACE)
                return -EINVAL; /* RENAME_EXCHANGE, RENAME_WHITEOUT */
        r = dir_of(ctx, parent, &from);
        if (r == 0)
                r = dir_of(ctx, newparent, &to);
        if (r < 0)
                return r;
        switch (from.sub) {
        case FS_SUB_FOLDER:
                if (to.sub != FS_SUB_FOLDER)
                        return -EPERM;
                return rename_folder(ctx, parent, name, &to, newname, ret_old);
        case FS_SUB_TMP:
                if (to.sub == FS_SUB_TMP)
                        return rename_spool(ctx, &from, name, &to, newname, flags);
                if (to.sub != FS_SUB_CUR && to.sub != FS_SUB_NEW)
                        return -EPERM;
                r = rename_append(ctx, &from, name, &to, newname);
                *ret_appended = r == 0;
                return r;
        case FS_SUB_CUR:
        case FS_SUB_NEW:
                if (to.sub != FS_SUB_CUR && to.sub != FS_SUB_NEW)
                        return -EPERM; /* messages live in cur/ and new/ */
                return rename_message(ctx, &from, name, &to, newname);
        }
        return -EPERM;
}

void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
               const char *newname, unsigned int flags)
{
        fs_ctx *ctx = req_ctx(req);
        fs_tree *old = NULL;
        bool appended = false;
        int r = rename_do(ctx, parent, name, newparent, newname, flags, &old, &appended);

        fuse_reply_err(req, -r);
        /*
         * After an append the kernel's dentry new/X points at the spool file's inode: drop
         * it, so the next lookup finds the message. (Sent after the reply: the kernel holds
         * the directory locked until the rename is done, and this waits for that.)
         */
        if (appended)
                fuse_lowlevel_notify_inval_entry(ctx->se, newparent, newname, strlen(newname));
        if (old)
                fs_tree_replaced(ctx, old);
}

/* ---- what has no mail meaning ---- */

void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
        /* EPERM: mutt and neomutt then fall back to rename() (see docs/fs.md) */
        fuse_reply_err(req, req_ctx(req)->read_only ? EROFS : EPERM);
}

void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
        fuse_reply_err(req, req_ctx(req)->read_only ? EROFS : EPERM);
}

void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                 size_t size, int flags)
{
        fuse_reply_err(req, req_ctx(req)->read_only ? EROFS : ENOTSUP);
}

void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
        fuse_reply_err(req, req_ctx(req)->read_only ? EROFS : ENOTSUP);
}

/* ---- start and stop ---- */

/*
 * Settles one marker left by a crash (see MARKER_PREFIX). A marker that cannot be read
 * whole was being written when the crash came: the transaction had not begun. When the
 * cache cannot answer, the marker stays and the error is returned (acs-fs does not start
 * rather than guess).
 */
static int settle_marker(fs_ctx *ctx, acs_store *s, const char *marker)
{
        char buf[PATH_MAX * 2 + 64], path[PATH_MAX];
        _cleanup_close_ int fd = open(marker, O_RDONLY | O_CLOEXEC);
        acs_message m = { 0 };
        ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
        const char *part[4];
        size_t at = 0;
        int i, r = 0;

        if (n > 0) {
                buf[n] = '\0';
                for (i = 0; i < 4 && at < (size_t)n; i++) {
                        part[i] = buf + at;
                        at += strlen(buf + at) + 1;
                }
                if (i == 4 && at <= (size_t)n) {
                        int64_t src = strtoll(part[0], NULL, 10), target = strtoll(part[2], NULL, 10);
                        r = acs_store_message_get_by_uniq(s, target, part[3], &m);
                        acs_message_clear(&m);
                        if (r == 0) {
                                /* committed: the message is there; the tmp/ file must go */
                                if (spool_path(ctx, src, part[1], path) == 0 && unlink(path) == 0)
                                        acs_log(LOG_INFO, "append of tmp/%s was committed before a crash; spool file removed",
                                                part[1]);
                        } else if (r == -ENOENT) {
                                acs_log(LOG_INFO, "append of tmp/%s did not commit before a crash; it stays in tmp/",
                                        part[1]);
                                r = 0;
                        } else {
                                acs_log(LOG_ERR, "%s: cannot look the append up: %s (%s)", marker,
                                        strerror(-r), acs_store_errmsg(s));
                                return r;
                        }
                }
        }
        if (unlink(marker) < 0 && errno != ENOENT)
                return -errno;
        return r;
}

int fs_spool_init(fs_ctx *ctx)
{
        char marker[PATH_MAX];
        acs_store *s = NULL;
        struct dirent *de;
        char *err = NULL;
        DIR *dir;
        int r;

        if (mkdir(ctx->spool_dir, 0700) < 0 && errno != EEXIST)
                return -errno;
        /* before the tree is read and served: a change of the acs-fs killed before us that
         * is in limbo (acs_store_settle) is settled now, so the tree cannot change its mind
         * about it later, and the markers below are checked against a state that stays */
        r = acs_store_open(ctx->db_path, 0, &s, &err);
        if (r == 0)
                r = acs_store_settle(s);
        if (r < 0) {
                acs_log(LOG_WARNING, "cannot settle the cache's last transaction: %s",
                        err ? err : s ? acs_store_errmsg(s) : strerror(-r));
                free(err);
                s = acs_store_close(s);
        }
        int settled = r;
        dir = opendir(ctx->spool_dir);
        if (!dir) {
                r = -errno;
                acs_store_close(s);
                return r;
        }
        while ((de = readdir(dir))) {
                if (strncmp(de->d_name, MARKER_PREFIX, strlen(MARKER_PREFIX)) != 0)
                        continue;
                if (settled < 0) {
                        /* a marker is checked against the cache only once it is settled */
                        acs_log(LOG_ERR, "cannot settle the spool's markers without a writable cache");
                        closedir(dir);
                        return settled;
                }
                if (snprintf(marker, sizeof(marker), "%s/%s", ctx->spool_dir, de->d_name) >=
                    (int)sizeof(marker))
                        continue;
                r = settle_marker(ctx, s, marker);
                if (r < 0) {
                        acs_store_close(s);
                        closedir(dir);
                        return r;
                }
        }
        closedir(dir);
        acs_store_close(s);
        return fsync_path(ctx->spool_dir);
}

void fs_write_free(fs_ctx *ctx)
{
        for (size_t i = 0; i < ctx->n_spool; i++)
                free(ctx->spool[i].name);
        free(ctx->spool);
        ctx->spool = NULL;
        ctx->n_spool = ctx->cap_spool = 0;
        ctx->wstore = acs_store_close(ctx->wstore);
}
