/* SPDX-License-Identifier: MIT */
/* acsd's FUSE mounts: opens /dev/fuse and mounts it at a user's tree as root, detaches dead or stale mounts. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "acs/util.h"
#include "instance.h"

#define FUSE_FSTYPE "fuse.acs"

int inst_mount_fuse(const char *mountpoint, uid_t user_id, gid_t group_id, int *ret_fd)
{
        _cleanup_close_ int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return -errno;

        char opts[160];
        int n = snprintf(opts, sizeof(opts),
                         "fd=%d,rootmode=40000,user_id=%u,group_id=%u,allow_other,default_permissions",
                         fd, (unsigned)user_id, (unsigned)group_id);
        if (n < 0 || (size_t)n >= sizeof(opts))
                return -EINVAL;
        /* nosuid, nodev: the tree holds mail, never programs or devices */
        if (mount("acs", mountpoint, FUSE_FSTYPE, MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) < 0)
                return -errno;
        *ret_fd = TAKE_FD(fd);
        return 0;
}

int inst_umount(const char *mountpoint)
{
        /* MNT_DETACH: a dead FUSE mount (ENOTCONN) or one still in use goes at once; the
         * kernel ends the FUSE connection when its last user lets go */
        if (umount2(mountpoint, MNT_DETACH | UMOUNT_NOFOLLOW) == 0)
                return 0;
        if (errno == EINVAL || errno == ENOENT)
                return 0; /* not a mount point (any more) */
        return -errno;
}

/* Undoes the octal escapes of /proc/self/mountinfo (\040 for a space, ...) in place. */
static void unescape_mountinfo(char *s)
{
        char *w = s;
        for (char *r = s; *r; ) {
                if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
                    r[3] >= '0' && r[3] <= '7') {
                        *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
                        r += 4;
                } else
                        *w++ = *r++;
        }
        *w = 0;
}

/*
 * Calls fn(ud, mountpoint, minor) for each fuse.acs mount in /proc/self/mountinfo (the
 * kernel's table: nothing asks a file system, so a hung one cannot block this); stops
 * when fn returns non-zero and returns that, 0 at the end, -errno if unreadable.
 */
static int each_acs_mount(int (*fn)(void *ud, const char *mp, unsigned minor), void *ud)
{
        FILE *f = fopen("/proc/self/mountinfo", "re");
        if (!f)
                return -errno;
        int ret = 0;
        char *line = NULL;
        size_t cap = 0;
        while (ret == 0 && getline(&line, &cap, f) > 0) {
                /* id parent major:minor root mountpoint options [optional...] - fstype source super */
                char *save = NULL, *mp = NULL, *dev = NULL, *fstype = NULL;
                int field = 0;
                bool after_dash = false;
                for (char *t = strtok_r(line, " \n", &save); t; t = strtok_r(NULL, " \n", &save), field++) {
                        if (field == 2)
                                dev = t;
                        else if (field == 4)
                                mp = t;
                        else if (after_dash) {
                                fstype = t;
                                break;
                        } else if (field > 5 && strcmp(t, "-") == 0)
                                after_dash = true;
                }
                const char *colon = dev ? strchr(dev, ':') : NULL;
                if (!mp || !colon || !fstype || strcmp(fstype, FUSE_FSTYPE) != 0)
                        continue;
                unescape_mountinfo(mp);
                ret = fn(ud, mp, (unsigned)strtoul(colon + 1, NULL, 10));
        }
        free(line);
        fclose(f);
        return ret;
}

struct stale {
        const char *root;
        size_t rootlen;
        unsigned count;
        int err;
};

static int detach_stale(void *ud, const char *mp, unsigned minor)
{
        struct stale *st = ud;
        (void)minor;
        if (strncmp(mp, st->root, st->rootlen) != 0 || mp[st->rootlen] != '/' || strchr(mp + st->rootlen + 1, '/'))
                return 0;
        /* detaching while reading mountinfo is fine: each line is read once, and a vanished
         * line only ends the listing early, caught by the next start's umount */
        int r = inst_umount(mp);
        if (r < 0 && st->err == 0)
                st->err = r;
        if (r == 0)
                st->count++;
        return 0;
}

int inst_umount_stale(const char *tree_root, unsigned *ret_count)
{
        struct stale st = { .root = tree_root, .rootlen = strlen(tree_root) };
        int r = each_acs_mount(detach_stale, &st);
        if (r < 0)
                return r;
        if (st.err < 0)
                return st.err;
        if (ret_count)
                *ret_count = st.count;
        return 0;
}

struct find_conn {
        const char *mp;
        unsigned minor;
};

static int match_conn(void *ud, const char *mp, unsigned minor)
{
        struct find_conn *fc = ud;
        if (strcmp(mp, fc->mp) != 0)
                return 0;
        fc->minor = minor; /* the last match: a mount on top of an older one wins */
        return 0;
}

int inst_fuse_conn(const char *mountpoint, unsigned *ret)
{
        struct find_conn fc = { .mp = mountpoint, .minor = 0 };
        int r = each_acs_mount(match_conn, &fc);
        if (r < 0)
                return r;
        if (fc.minor == 0)
                return -ENOENT;
        *ret = fc.minor;
        return 0;
}

#define FUSECTL_DIR "/sys/fs/fuse/connections"

int inst_fuse_abort(unsigned conn)
{
        char path[64];
        snprintf(path, sizeof(path), FUSECTL_DIR "/%u/abort", conn);
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
                /* many hosts (containers, minimal VMs, no systemd) never mount the FUSE
                 * control filesystem: mount it once and look again */
                if (mount("fusectl", FUSECTL_DIR, "fusectl", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0 &&
                    errno != EBUSY)
                        return -errno;
                fd = open(path, O_WRONLY | O_CLOEXEC);
        }
        if (fd < 0)
                return -errno;
        if (write(fd, "1", 1) != 1)
                return -errno;
        return 0;
}
