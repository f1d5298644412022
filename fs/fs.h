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
        double entry_timeout;   /* seconds the kernel may keep names and attributes */
        struct fuse_session *se;
        bool allow_no_open;     /* --open-calls=skip (default): let the kernel skip opens */
        bool no_open;           /* the kernel agreed (set in init) */

        pthread_rwlock_t tree_lock;
        fs_tree *tree;          /* protected by tree_lock; swapped by the watcher */
        int64_t root_mtime_ns;  /* protected by tree_lock */

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

/* Frees directory handles the kernel never released (at exit, after the loop ended). */
void fs_dirs_free_all(fs_ctx *ctx);

/* The low-level operation table (fs/ops.c). */
extern const struct fuse_lowlevel_ops fs_ops;

/*
 * Re-reads the folder tree from s and publishes it in ctx (takes tree_lock for writing).
 * On success *ret_old (if non-NULL) gets the previous tree, owned by the caller.
 */
int fs_ctx_reload_tree(fs_ctx *ctx, acs_store *s, fs_tree **ret_old);

/* The change watcher thread (fs/watch.c): inotify on the WAL plus a fallback poll. */
typedef struct fs_watch fs_watch;
/* Follows journal rows after after_seq (read before the first tree was built). */
int fs_watch_start(fs_ctx *ctx, int64_t after_seq, fs_watch **ret);
/* Stops and joins the thread; accepts NULL; returns NULL. */
fs_watch *fs_watch_stop(fs_watch *w);
