/* SPDX-License-Identifier: MIT */
/* Internal interfaces of acs-fs: inode numbers, the folder tree model, the FUSE ops and the change watcher. */
#pragma once

#define FUSE_USE_VERSION 314

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "acs/mboxname.h"
#include "acs/store.h"

/*
 * Inode numbers (stable across mounts; documented in docs/fs.md):
 *   1                                root
 *   1<<60 | mailbox_id<<2 | k        mailbox folder (k=0), its cur (1), new (2), tmp (3)
 *   2<<60 | fnv1a64(path) & 2^60-1   a directory on the path of a mailbox that does not
 *                                    exist itself (fs layout only)
 *   3<<60 | message_id               a message file
 *   4<<60 | st_ino of the spool file a file in a tmp/ directory (a real file in the spool)
 */
#define FS_INO_ROOT ((uint64_t)1)
#define FS_INO_TAG_SHIFT 60
#define FS_INO_TAG(ino) ((uint64_t)(ino) >> FS_INO_TAG_SHIFT)
#define FS_INO_LOW(ino) ((uint64_t)(ino) & ((UINT64_C(1) << FS_INO_TAG_SHIFT) - 1))

enum fs_ino_tag {
        FS_TAG_ROOT = 0,
        FS_TAG_MAILBOX = 1,
        FS_TAG_DIR = 2,
        FS_TAG_MESSAGE = 3,
        FS_TAG_SPOOL = 4,
};

enum fs_mbox_sub {
        FS_SUB_FOLDER = 0,
        FS_SUB_CUR = 1,
        FS_SUB_NEW = 2,
        FS_SUB_TMP = 3,
};

static inline uint64_t fs_ino_mailbox(int64_t mailbox_id, enum fs_mbox_sub sub)
{
        return (UINT64_C(1) << FS_INO_TAG_SHIFT) | ((uint64_t)mailbox_id << 2) | (uint64_t)sub;
}

static inline uint64_t fs_ino_message(int64_t message_id)
{
        return (UINT64_C(3) << FS_INO_TAG_SHIFT) | (uint64_t)message_id;
}

static inline uint64_t fs_ino_spool(uint64_t real_ino)
{
        return (UINT64_C(4) << FS_INO_TAG_SHIFT) | (real_ino & ((UINT64_C(1) << FS_INO_TAG_SHIFT) - 1));
}

/* The inode of a path-only directory (fs layout), from its path relative to the root. */
uint64_t fs_ino_dir(const char *path);

/* One directory of the folder tree (root, mailbox folder or path-only directory). */
typedef struct fs_node {
        uint64_t ino;
        uint64_t parent_ino;
        char *name;             /* path component under the parent (malloc'd; "" for the root) */
        char *path;             /* path relative to the root (malloc'd; "" for the root) */
        int64_t mailbox_id;     /* 0 = no mailbox here (root in fs layout, path-only dir) */
        bool selectable;        /* has cur/new/tmp */
        int64_t mtime_ns;
        unsigned nsubdirs;      /* child directories, cur/new/tmp included */
        struct fs_node *first_child, *next_sibling; /* children in name order */
} fs_node;

/* An immutable snapshot of the folder tree; replaced whole when mailboxes change. */
typedef struct fs_tree {
        fs_node *nodes;         /* nodes[0] is the root */
        size_t n_nodes;
        fs_node **by_ino;       /* open-addressing hash, size cap (power of two) */
        size_t cap;
} fs_tree;

/*
 * Builds the tree of all mailboxes in the store for layout. *ret is malloc'd, free it
 * with fs_tree_free(). Returns 0 or -errno.
 */
int fs_tree_build(acs_store *s, enum acs_layout layout, fs_tree **ret);
fs_tree *fs_tree_free(fs_tree *t);
/* The node with this inode (folder or path-only dir or root), NULL when none. Borrowed. */
const fs_node *fs_tree_find(const fs_tree *t, uint64_t ino);
/* The node of a mailbox's folder, NULL when none. Borrowed. */
const fs_node *fs_tree_find_mailbox(const fs_tree *t, int64_t mailbox_id);
/* The child directory named name under parent, NULL when none. Borrowed. */
const fs_node *fs_tree_child(const fs_node *parent, const char *name);

/* Everything the FUSE ops share; the fuse_req_userdata of the session. */
typedef struct fs_ctx {
        char *db_path;
        enum acs_layout layout;
        uid_t uid;
        gid_t gid;
        mode_t mode;            /* directories' permission bits (--mode); files get its read bits */
        double entry_timeout;   /* seconds the kernel may keep names and attributes */
        struct fuse_session *se;
        bool allow_no_open;     /* --open-calls=skip (default): let the kernel skip opens */
        bool no_open;           /* the kernel agreed (set in init) */

        pthread_rwlock_t tree_lock;
        fs_tree *tree;          /* protected by tree_lock; swapped by the watcher */
        pthread_mutex_t reload_lock; /* one tree build + swap at a time (fs_ctx_reload_tree) */
        int64_t root_mtime_ns;  /* protected by tree_lock */

        bool read_only;         /* --read-only: every write answers EROFS (issue 4 behaviour) */
        char *spool_dir;        /* real files of the tmp/ directories: <spool>/<mailbox_id>/<name> */
        pthread_mutex_t write_lock;
        acs_store *wstore;      /* the read-write handle; protected by write_lock */
        pthread_mutex_t spool_lock;
        struct spool_node *spool; /* inode -> spool file; protected by spool_lock */
        size_t n_spool, cap_spool;

        pthread_key_t store_key; /* per-thread read-only acs_store */
        pthread_mutex_t dirs_lock;
        struct dir_handle *dirs; /* open directory handles; protected by dirs_lock */
} fs_ctx;

/* The thread's own read-only store handle (opened on first use). NULL + *ret_err on failure. */
acs_store *fs_thread_store(fs_ctx *ctx, int *ret_err);

/*
 * The file name of a message in its folder (Maildir name with S=, W=, flags and
 * keyword letters). *ret is malloc'd.
 */
int fs_message_name(acs_store *s, const char *uniq, uint64_t size, uint64_t vsize,
                    unsigned flags, const char *keywords, char **ret);

/* The set of keyword letters (bit i = 'a' + i) of a keyword string. */
int fs_message_kwbits(acs_store *s, const char *keywords, uint32_t *ret);

/*
 * The message a file name in cur/ (in_new false) or new/ of a mailbox stands for: its
 * canonical name, or an alias the kernel may have from a client's rename (same unique
 * part and flags, S=/W= absent or equal). -ENOENT otherwise. *ret to be cleared by caller.
 */
int fs_message_by_name(acs_store *s, int64_t mailbox_id, bool in_new, const char *name,
                       acs_message *ret);

/*
 * What an inode is. For directories node is the tree node (for cur/new/tmp the folder's
 * node); sub says which of folder/cur/new/tmp. Valid while the caller holds tree_lock.
 */
typedef struct fs_what {
        int tag;
        const fs_node *node;
        enum fs_mbox_sub sub;
        int64_t message_id;
} fs_what;

int fs_what_is(const fs_tree *t, uint64_t ino, fs_what *ret);
void fs_stat_message(const fs_ctx *ctx, const acs_message *m, struct stat *st);
int fs_stat_what(acs_store *s, const fs_ctx *ctx, const fs_what *w, struct stat *st);
void fs_fill_entry(const fs_ctx *ctx, struct fuse_entry_param *e);

/* ---- the write path (fs/write.c) ---- */

/* Creates the spool directory and finishes or undoes appends a crash interrupted. */
int fs_spool_init(fs_ctx *ctx);
/* Frees the spool table and closes the write handle (at exit). */
void fs_write_free(fs_ctx *ctx);
/* <spool>/<mailbox_id> into buf (PATH_MAX bytes). */
int fs_spool_mbox_dir(const fs_ctx *ctx, int64_t mailbox_id, char *buf);
/* Lookup of a name in a tmp/ directory. */
int fs_spool_lookup(fs_ctx *ctx, int64_t mailbox_id, const char *name, struct fuse_entry_param *ret);
/* Remembers a spool file's inode (readdirplus hands inodes out too). */
int fs_spool_remember(fs_ctx *ctx, uint64_t ino, int64_t mailbox_id, const char *name);
int fs_spool_getattr(fs_ctx *ctx, uint64_t ino, struct stat *ret);
void fs_spool_fill_entry(struct fuse_entry_param *e);
/* open/read of a spool file (ops.c dispatches by inode tag). */
int fs_spool_open(fs_ctx *ctx, uint64_t ino, struct fuse_file_info *fi);
int fs_spool_read(fs_ctx *ctx, uint64_t ino, size_t size, off_t off, struct fuse_file_info *fi,
                  char **ret_buf, size_t *ret_len);

void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                struct fuse_file_info *fi);
void fs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev);
void fs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode);
void fs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name);
void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name);
void fs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
               const char *newname, unsigned int flags);
void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname);
void fs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
               struct fuse_file_info *fi);
void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
              struct fuse_file_info *fi);
void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void fs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);
void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                 size_t size, int flags);
void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name);
void fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                  struct fuse_file_info *fi);

/* Frees directory handles the kernel never released (at exit, after the loop ended). */
void fs_dirs_free_all(fs_ctx *ctx);

/* The low-level operation table (fs/ops.c). */
extern const struct fuse_lowlevel_ops fs_ops;

/*
 * Re-reads the folder tree from s and publishes it in ctx (takes tree_lock for writing).
 * On success *ret_old (if non-NULL) gets the previous tree, owned by the caller. Builds
 * and swaps are serialized (reload_lock), so a tree read from an older snapshot (the
 * watcher's, begun before a mkdir committed) can never replace a newer one (the mkdir's).
 */
int fs_ctx_reload_tree(fs_ctx *ctx, acs_store *s, fs_tree **ret_old);

/*
 * After a folder change made here (write.c replaced the tree): drops the names of old that
 * vanished or moved and every directory's attributes from the kernel, then frees old.
 * Call after the reply (the kernel holds the directories locked until then).
 */
void fs_tree_replaced(fs_ctx *ctx, fs_tree *old);

/* The change watcher thread (fs/watch.c): inotify on the WAL plus a fallback poll. */
typedef struct fs_watch fs_watch;
/* Follows journal rows after after_seq (read before the first tree was built). */
int fs_watch_start(fs_ctx *ctx, int64_t after_seq, fs_watch **ret);
/* Stops and joins the thread; accepts NULL; returns NULL. */
fs_watch *fs_watch_stop(fs_watch *w);
