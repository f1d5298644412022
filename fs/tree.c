/* SPDX-License-Identifier: MIT */
/* The folder tree of acs-fs: an immutable snapshot of all mailbox directories, rebuilt on mailbox changes. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "acs/maildir.h"
#include "acs/util.h"
#include "fs.h"

uint64_t fs_ino_dir(const char *path)
{
        uint64_t h = UINT64_C(0xcbf29ce484222325);

        for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
                h ^= *p;
                h *= UINT64_C(0x100000001b3);
        }
        h &= (UINT64_C(1) << FS_INO_TAG_SHIFT) - 1;
        if (h == 0)
                h = 1;
        return (UINT64_C(2) << FS_INO_TAG_SHIFT) | h;
}

/* Build-time node: links are indexes because the array moves while it grows. */
typedef struct bnode {
        fs_node n;
        ssize_t first_child, next_sibling;
} bnode;

typedef struct builder {
        bnode *v;
        size_t n, cap;
        enum acs_layout layout;
        int64_t root_mtime;
} builder;

static void builder_free(builder *b)
{
        for (size_t i = 0; i < b->n; i++) {
                free(b->v[i].n.name);
                free(b->v[i].n.path);
        }
        free(b->v);
        b->v = NULL;
        b->n = b->cap = 0;
}

/* Appends a node; returns its index or -ENOMEM. Takes ownership of name and path. */
static ssize_t builder_add(builder *b, size_t parent, char *name, char *path, uint64_t ino)
{
        if (ACS_GROW(b->v, b->cap, b->n, 64) < 0) {
                free(name);
                free(path);
                return -ENOMEM;
        }
        size_t i = b->n++;
        b->v[i] = (bnode){
                .n = { .ino = ino, .name = name, .path = path, .mtime_ns = b->root_mtime },
                .first_child = -1,
                .next_sibling = -1,
        };
        if (i == parent)
                return (ssize_t)i; /* the root */
        b->v[i].n.parent_ino = b->v[parent].n.ino;
        /* insert into the parent's child list in byte order of names */
        ssize_t *link = &b->v[parent].first_child;
        while (*link >= 0 && strcmp(b->v[*link].n.name, name) < 0)
                link = &b->v[*link].next_sibling;
        b->v[i].next_sibling = *link;
        *link = (ssize_t)i;
        return (ssize_t)i;
}

static ssize_t builder_child(builder *b, size_t parent, const char *name)
{
        for (ssize_t c = b->v[parent].first_child; c >= 0; c = b->v[c].next_sibling)
                if (strcmp(b->v[c].n.name, name) == 0)
                        return c;
        return -ENOENT;
}

static int builder_put_mailbox(const acs_mailbox *mb, void *userdata)
{
        builder *b = userdata;
        _cleanup_free_ char *path = NULL;
        int r;

        r = acs_mbox_to_path(mb->name, mb->delim, b->layout, &path);
        if (r < 0)
                return 0; /* a name the tree cannot show; skipped (acs-syncd logs it) */

        size_t cur = 0;
        const char *p = path;
        while (*p) {
                const char *slash = strchr(p, '/');
                size_t len = slash ? (size_t)(slash - p) : strlen(p);
                _cleanup_free_ char *comp = strndup(p, len);
                if (!comp)
                        return -ENOMEM;
                ssize_t c = builder_child(b, cur, comp);
                if (c < 0) {
                        size_t plen = (size_t)(p - path) + len;
                        char *prefix = strndup(path, plen);
                        if (!prefix)
                                return -ENOMEM;
                        c = builder_add(b, cur, TAKE_PTR(comp), prefix, fs_ino_dir(prefix));
                        if (c < 0)
                                return (int)c;
                }
                cur = (size_t)c;
                p += len;
                if (*p == '/')
                        p++;
        }
        /* cur is now the mailbox's directory (the root for Maildir++ INBOX) */
        fs_node *n = &b->v[cur].n;
        n->mailbox_id = mb->id;
        n->selectable = !(mb->attrs & ACS_MBOX_NOSELECT);
        if (cur != 0) {
                uint64_t ino = fs_ino_mailbox(mb->id, FS_SUB_FOLDER);
                /* children already added point at the old (path-only) inode */
                for (ssize_t c = b->v[cur].first_child; c >= 0; c = b->v[c].next_sibling)
                        b->v[c].n.parent_ino = ino;
                n->ino = ino;
                n->mtime_ns = mb->mtime_ns;
        } else if (mb->mtime_ns > n->mtime_ns) {
                n->mtime_ns = mb->mtime_ns;
        }
        return 0;
}

static size_t hash_ino(uint64_t ino, size_t cap)
{
        ino ^= ino >> 33;
        ino *= UINT64_C(0xff51afd7ed558ccd);
        ino ^= ino >> 33;
        return (size_t)ino & (cap - 1);
}

int fs_tree_build(acs_store *s, enum acs_layout layout, fs_tree **ret)
{
        builder b = { .layout = layout };
        int r;

        r = acs_store_root_mtime(s, &b.root_mtime);
        if (r < 0)
                return r;
        char *rn = strdup(""), *rp = strdup("");
        if (!rn || !rp) {
                free(rn);
                free(rp);
                return -ENOMEM;
        }
        r = (int)builder_add(&b, 0, rn, rp, FS_INO_ROOT);
        if (r < 0)
                goto fail;
        r = acs_store_mailbox_foreach(s, builder_put_mailbox, &b);
        if (r < 0)
                goto fail;

        fs_tree *t = calloc(1, sizeof(*t));
        if (!t) {
                r = -ENOMEM;
                goto fail;
        }
        t->n_nodes = b.n;
        t->nodes = calloc(b.n, sizeof(fs_node));
        t->cap = 16;
        while (t->cap < 2 * b.n)
                t->cap *= 2;
        t->by_ino = calloc(t->cap, sizeof(fs_node *));
        if (!t->nodes || !t->by_ino) {
                free(t->nodes);
                free(t->by_ino);
                free(t);
                r = -ENOMEM;
                goto fail;
        }
        for (size_t i = 0; i < b.n; i++) {
                fs_node *n = &t->nodes[i];
                *n = b.v[i].n;
                b.v[i].n.name = b.v[i].n.path = NULL;
                n->first_child = b.v[i].first_child >= 0 ? &t->nodes[b.v[i].first_child] : NULL;
                n->next_sibling = b.v[i].next_sibling >= 0 ? &t->nodes[b.v[i].next_sibling] : NULL;
        }
        for (size_t i = 0; i < b.n; i++) {
                fs_node *n = &t->nodes[i];
                n->nsubdirs = n->selectable ? 3 : 0;
                for (fs_node *c = n->first_child; c; c = c->next_sibling)
                        n->nsubdirs++;
                size_t h = hash_ino(n->ino, t->cap);
                while (t->by_ino[h])
                        h = (h + 1) & (t->cap - 1);
                t->by_ino[h] = n;
        }
        builder_free(&b);
        *ret = t;
        return 0;
fail:
        builder_free(&b);
        return r;
}

fs_tree *fs_tree_free(fs_tree *t)
{
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n_nodes; i++) {
                free(t->nodes[i].name);
                free(t->nodes[i].path);
        }
        free(t->nodes);
        free(t->by_ino);
        free(t);
        return NULL;
}

const fs_node *fs_tree_find(const fs_tree *t, uint64_t ino)
{
        size_t h = hash_ino(ino, t->cap);

        while (t->by_ino[h]) {
                if (t->by_ino[h]->ino == ino)
                        return t->by_ino[h];
                h = (h + 1) & (t->cap - 1);
        }
        return NULL;
}

const fs_node *fs_tree_find_mailbox(const fs_tree *t, int64_t mailbox_id)
{
        const fs_node *n = fs_tree_find(t, fs_ino_mailbox(mailbox_id, FS_SUB_FOLDER));

        if (n)
                return n;
        if (t->n_nodes > 0 && t->nodes[0].mailbox_id == mailbox_id)
                return &t->nodes[0];
        return NULL;
}

const fs_node *fs_tree_child(const fs_node *parent, const char *name)
{
        for (const fs_node *c = parent->first_child; c; c = c->next_sibling)
                if (strcmp(c->name, name) == 0)
                        return c;
        return NULL;
}

int fs_message_kwbits(acs_store *s, const char *keywords, uint32_t *ret)
{
        uint32_t kw = 0;

        if (keywords && *keywords) {
                _cleanup_free_ char *copy = strdup(keywords);
                if (!copy)
                        return -ENOMEM;
                char *save = NULL;
                for (char *k = strtok_r(copy, " ", &save); k; k = strtok_r(NULL, " ", &save)) {
                        int idx;
                        /* keywords without a letter (more than 26) do not show in names */
                        if (acs_store_keyword_index(s, k, false, &idx) == 0 && idx >= 0 && idx < 26)
                                kw |= UINT32_C(1) << idx;
                }
        }
        *ret = kw;
        return 0;
}

int fs_message_name(acs_store *s, const char *uniq, uint64_t size, uint64_t vsize,
                    unsigned flags, const char *keywords, char **ret)
{
        uint32_t kw = 0;
        int r = fs_message_kwbits(s, keywords, &kw);

        if (r < 0)
                return r;
        return acs_mdname_build(uniq, size, vsize, flags & ACS_FLAG_ALL, kw, "", ret);
}
