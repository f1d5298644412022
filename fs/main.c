/* SPDX-License-Identifier: MIT */
/* acs-fs: mounts one user's cache as a Maildir tree (FUSE low-level API, multithreaded). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "acs/agent.h"
#include "acs/bus.h"
#include "acs/log.h"
#include "acs/util.h"
#include "fs.h"

#define DEFAULT_TIMEOUT 3600.0 /* seconds; changes are pushed by invalidation */

static void store_destroy(void *p)
{
        acs_store_close(p);
}

acs_store *fs_thread_store(fs_ctx *ctx, int *ret_err)
{
        acs_store *s = pthread_getspecific(ctx->store_key);
        char *err = NULL;
        int r;

        if (s)
                return s;
        r = acs_store_open(ctx->db_path, ACS_STORE_READONLY, &s, &err);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot open the cache: %s", err ? err : strerror(-r));
                free(err);
                *ret_err = -EIO;
                return NULL;
        }
        r = pthread_setspecific(ctx->store_key, s);
        if (r != 0) {
                acs_store_close(s);
                *ret_err = -r;
                return NULL;
        }
        return s;
}

int fs_ctx_reload_tree(fs_ctx *ctx, acs_store *s, fs_tree **ret_old)
{
        fs_tree *t = NULL;

        pthread_mutex_lock(&ctx->reload_lock);
        int r = fs_tree_build(s, ctx->layout, &t);
        if (r < 0) {
                pthread_mutex_unlock(&ctx->reload_lock);
                return r;
        }
        pthread_rwlock_wrlock(&ctx->tree_lock);
        fs_tree *old = ctx->tree;
        ctx->tree = t;
        pthread_rwlock_unlock(&ctx->tree_lock);
        pthread_mutex_unlock(&ctx->reload_lock);
        if (ret_old)
                *ret_old = old;
        else
                fs_tree_free(old);
        return 0;
}

/* --bus: acsd's STOP (or its bus going away) ends the loop like SIGTERM, in the main thread. */
static pthread_t main_thread;

static void on_agent_stop(void *userdata)
{
        acs_log(LOG_NOTICE, "bus: STOP from acsd, or its bus is gone: unmounting");
        pthread_kill(main_thread, SIGTERM);
}

static void usage(FILE *f)
{
        fprintf(f,
                "usage: acs-fs --db PATH [--layout fs|maildir++] [--timeout SECONDS]\n"
                "              [--open-calls skip|send] [--read-only] [--spool DIR]\n"
                "              [--owner UID:GID] [--mode MODE]\n"
                "              [--log-level LEVEL] [--bus ADDRESS --key-fd N] [-o FUSE-OPTIONS] [-f] [-d] [-s]\n"
                "              MOUNTPOINT\n"
                "Mounts the acs cache PATH as a Maildir tree; what clients change there goes to\n"
                "the cache's op log (acs-syncd replays it to the server).\n"
                "  --read-only   every write fails with EROFS (a read-only mount)\n"
                "  --spool       where files of tmp/ directories live (default PATH.spool)\n"
                "  --owner       owner and group shown for every file (default: this process's);\n"
                "                with default_permissions they decide who may read and write\n"
                "  --mode        permission bits of directories (default 0755; write bits are\n"
                "                dropped with --read-only); message files get its read bits\n"
                "  --layout      fs (INBOX/, Archive/2024/; default) or maildir++ (.Archive.2024/)\n"
                "  --timeout     seconds the kernel keeps names and attributes (default 3600;\n"
                "                changes are invalidated as they are committed)\n"
                "  --open-calls  skip (default): the kernel stops sending open/release for\n"
                "                messages once allowed; send: every open reaches acs-fs\n"
                "  --bus, --key-fd  acsd's agent: keys from descriptor N, hello and status to acsd\n"
                "                on its bus at ADDRESS, stop when acsd says so\n"
                "  -f foreground, -d FUSE debug, -s single-threaded\n");
}

int main(int argc, char **argv)
{
        static const struct option longopts[] = {
                { "db", required_argument, NULL, 'D' },
                { "layout", required_argument, NULL, 'L' },
                { "timeout", required_argument, NULL, 'T' },
                { "log-level", required_argument, NULL, 'l' },
                { "open-calls", required_argument, NULL, 'O' },
                { "read-only", no_argument, NULL, 'R' },
                { "spool", required_argument, NULL, 'S' },
                { "owner", required_argument, NULL, 'U' },
                { "mode", required_argument, NULL, 'M' },
                { "bus", required_argument, NULL, 'B' },
                { "key-fd", required_argument, NULL, 'K' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        fs_ctx ctx = {
                .layout = ACS_LAYOUT_FS,
                .entry_timeout = DEFAULT_TIMEOUT,
                .uid = getuid(),
                .gid = getgid(),
                .allow_no_open = true,
                .mode = 0755,
        };
        struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
        struct fuse_cmdline_opts opts = { 0 };
        struct fuse_loop_config *cfg = NULL;
        acs_store *s = NULL;
        fs_watch *w = NULL;
        const char *db = NULL, *spool = NULL, *bus_address = NULL;
        int key_fd = -1;
        acs_agent *agent = NULL;
        acs_agent_thread *agent_thr = NULL;
        int prio = LOG_INFO, c, r, ret = 1;
        char *err = NULL;

        if (fuse_opt_add_arg(&args, argv[0]) < 0)
                return 1;
        opterr = 0;
        while ((c = getopt_long(argc, argv, "+o:fdsh", longopts, NULL)) != -1) {
                switch (c) {
                case 'B':
                        bus_address = optarg;
                        break;
                case 'K': {
                        char *end;
                        long v = strtol(optarg, &end, 10);
                        if (!*optarg || *end || v < 3 || v > 65535) {
                                fprintf(stderr, "acs-fs: --key-fd needs a descriptor number (>= 3)\n");
                                ret = 2;
                                goto out_args;
                        }
                        key_fd = (int)v;
                        break;
                }
                case 'D':
                        db = optarg;
                        break;
                case 'L':
                        if (strcmp(optarg, "fs") == 0)
                                ctx.layout = ACS_LAYOUT_FS;
                        else if (strcmp(optarg, "maildir++") == 0)
                                ctx.layout = ACS_LAYOUT_MAILDIRPP;
                        else {
                                fprintf(stderr, "acs-fs: unknown layout '%s' (fs or maildir++)\n", optarg);
                                ret = 2;
                                goto out_args;
                        }
                        break;
                case 'T': {
                        char *end;
                        ctx.entry_timeout = strtod(optarg, &end);
                        if (*end || ctx.entry_timeout < 0) {
                                fprintf(stderr, "acs-fs: bad --timeout '%s'\n", optarg);
                                ret = 2;
                                goto out_args;
                        }
                        break;
                }
                case 'O':
                        if (strcmp(optarg, "skip") == 0)
                                ctx.allow_no_open = true;
                        else if (strcmp(optarg, "send") == 0)
                                ctx.allow_no_open = false;
                        else {
                                fprintf(stderr, "acs-fs: --open-calls takes skip or send\n");
                                ret = 2;
                                goto out_args;
                        }
                        break;
                case 'R':
                        ctx.read_only = true;
                        break;
                case 'S':
                        spool = optarg;
                        break;
                case 'M': {
                        char *end;
                        errno = 0;
                        unsigned long m = strtoul(optarg, &end, 8);
                        if (errno || end == optarg || *end || m > 07777) {
                                fprintf(stderr, "acs-fs: --mode takes octal permission bits (e.g. 0750)\n");
                                ret = 2;
                                goto out_args;
                        }
                        ctx.mode = (mode_t)m;
                        break;
                }
                case 'U': {
                        unsigned long u, g;
                        char *end;
                        errno = 0;
                        u = strtoul(optarg, &end, 10);
                        if (errno || end == optarg || *end != ':' || u >= (uid_t)-1) {
                                fprintf(stderr, "acs-fs: --owner takes UID:GID\n");
                                ret = 2;
                                goto out_args;
                        }
                        const char *gs = end + 1;
                        g = strtoul(gs, &end, 10);
                        if (errno || end == gs || *end || g >= (gid_t)-1) {
                                fprintf(stderr, "acs-fs: --owner takes UID:GID\n");
                                ret = 2;
                                goto out_args;
                        }
                        ctx.uid = (uid_t)u;
                        ctx.gid = (gid_t)g;
                        break;
                }
                case 'l':
                        if (acs_log_parse_level(optarg, &prio) < 0) {
                                fprintf(stderr, "acs-fs: bad --log-level '%s'\n", optarg);
                                ret = 2;
                                goto out_args;
                        }
                        break;
                case 'o':
                        if (fuse_opt_add_arg(&args, "-o") < 0 || fuse_opt_add_arg(&args, optarg) < 0)
                                goto out_args;
                        break;
                case 'f':
                        if (fuse_opt_add_arg(&args, "-f") < 0)
                                goto out_args;
                        break;
                case 'd':
                        if (fuse_opt_add_arg(&args, "-d") < 0)
                                goto out_args;
                        break;
                case 's':
                        if (fuse_opt_add_arg(&args, "-s") < 0)
                                goto out_args;
                        break;
                case 'h':
                        usage(stdout);
                        ret = 0;
                        goto out_args;
                default:
                        usage(stderr);
                        ret = 2;
                        goto out_args;
                }
        }
        if (!db || optind != argc - 1 || !bus_address != (key_fd < 0)) {
                usage(stderr);
                ret = 2;
                goto out_args;
        }
        if (fuse_opt_add_arg(&args, argv[optind]) < 0 ||
            fuse_opt_add_arg(&args, "-o") < 0 ||
            fuse_opt_add_arg(&args, ctx.read_only ? "ro,default_permissions,fsname=acs,subtype=acs" :
                                                    "rw,default_permissions,fsname=acs,subtype=acs") < 0)
                goto out_args;

        acs_log_init("acs-fs", ACS_LOG_AUTO, prio);
        if (fuse_parse_cmdline(&args, &opts) != 0 || !opts.mountpoint) {
                usage(stderr);
                goto out_args;
        }
        ctx.db_path = realpath(db, NULL);
        if (!ctx.db_path) {
                acs_log(LOG_ERR, "cache %s: %m", db);
                goto out_args;
        }

        if (!ctx.read_only) {
                if (spool) {
                        if (mkdir(spool, 0700) < 0 && errno != EEXIST) {
                                acs_log(LOG_ERR, "spool %s: %m", spool);
                                goto out_args;
                        }
                        ctx.spool_dir = realpath(spool, NULL);
                } else if (asprintf(&ctx.spool_dir, "%s.spool", ctx.db_path) < 0) {
                        ctx.spool_dir = NULL;
                }
                if (!ctx.spool_dir) {
                        acs_log(LOG_ERR, "spool %s: %m", spool ? spool : "");
                        goto out_args;
                }
                r = fs_spool_init(&ctx);
                if (r < 0) {
                        acs_log(LOG_ERR, "spool %s: %s", ctx.spool_dir, strerror(-r));
                        goto out_args;
                }
        }

        /* the journal position first, then the tree: nothing committed in between is missed */
        r = acs_store_open(ctx.db_path, ACS_STORE_READONLY, &s, &err);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot open the cache: %s", err ? err : strerror(-r));
                free(err);
                goto out_args;
        }
        int64_t seq = 0;
        r = acs_store_change_last(s, &seq);
        if (r == 0)
                r = fs_tree_build(s, ctx.layout, &ctx.tree);
        s = acs_store_close(s);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot read the mailboxes of %s: %s", ctx.db_path, strerror(-r));
                goto out_args;
        }
        pthread_rwlock_init(&ctx.tree_lock, NULL);
        pthread_mutex_init(&ctx.reload_lock, NULL);
        pthread_mutex_init(&ctx.dirs_lock, NULL);
        pthread_mutex_init(&ctx.write_lock, NULL);
        pthread_mutex_init(&ctx.spool_lock, NULL);
        if (pthread_key_create(&ctx.store_key, store_destroy) != 0)
                goto out_tree;

        ctx.se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), &ctx);
        if (!ctx.se)
                goto out_key;
        if (fuse_set_signal_handlers(ctx.se) != 0)
                goto out_session;
        if (fuse_session_mount(ctx.se, opts.mountpoint) != 0)
                goto out_signals;
        if (fuse_daemonize(opts.foreground) != 0)
                goto out_unmount;
        /* threads start after daemonizing (fork keeps only the caller) */
        r = fs_watch_start(&ctx, seq, &w);
        if (r < 0) {
                acs_log(LOG_ERR, "cannot watch %s for changes: %s", ctx.db_path, strerror(-r));
                goto out_unmount;
        }
        if (bus_address) {
                main_thread = pthread_self();
                r = acs_agent_open(bus_address, key_fd, ACS_AGENT_FS, &agent);
                key_fd = -1; /* consumed */
                if (r == 0)
                        r = acs_agent_thread_start(agent, on_agent_stop, NULL, NULL, &agent_thr);
                if (r == 0)
                        r = acs_agent_thread_send_status(agent_thr, ACS_AGENT_STATE_ONLINE, 0);
                if (r < 0) {
                        acs_log(LOG_ERR, "cannot join acsd's bus at %s: %s", bus_address, strerror(-r));
                        goto out_agent;
                }
        }
        acs_log(LOG_INFO, "serving %s at %s (%s layout, %s)", ctx.db_path, opts.mountpoint,
                ctx.layout == ACS_LAYOUT_FS ? "fs" : "maildir++",
                ctx.read_only ? "read-only" : "read-write");

        if (opts.singlethread) {
                ret = fuse_session_loop(ctx.se);
        } else {
                cfg = fuse_loop_cfg_create();
                if (!cfg)
                        goto out_agent;
                fuse_loop_cfg_set_clone_fd(cfg, opts.clone_fd);
                if (opts.max_idle_threads != UINT_MAX)
                        fuse_loop_cfg_set_idle_threads(cfg, opts.max_idle_threads);
                if (opts.max_threads != UINT_MAX && opts.max_threads > 0)
                        fuse_loop_cfg_set_max_threads(cfg, opts.max_threads);
                ret = fuse_session_loop_mt(ctx.se, cfg);
                fuse_loop_cfg_destroy(cfg);
        }
        /* a positive value is the signal that ended the loop: a clean unmount */
        ret = ret < 0 ? 1 : 0;
        acs_log(LOG_INFO, "unmounting %s", opts.mountpoint);

out_agent:
        agent_thr = acs_agent_thread_stop(agent_thr);
        if (agent) {
                agent = acs_agent_free(agent);
                acs_bus_shutdown();
        }
        w = fs_watch_stop(w);
out_unmount:
        fuse_session_unmount(ctx.se);
out_signals:
        fuse_remove_signal_handlers(ctx.se);
out_session:
        fuse_session_destroy(ctx.se);
        fs_dirs_free_all(&ctx);
out_key:
        /* this thread may hold a handle too (single-threaded loop) */
        store_destroy(pthread_getspecific(ctx.store_key));
        pthread_key_delete(ctx.store_key);
out_tree:
        fs_write_free(&ctx);
        pthread_mutex_destroy(&ctx.spool_lock);
        pthread_mutex_destroy(&ctx.write_lock);
        pthread_mutex_destroy(&ctx.dirs_lock);
        pthread_mutex_destroy(&ctx.reload_lock);
        pthread_rwlock_destroy(&ctx.tree_lock);
        ctx.tree = fs_tree_free(ctx.tree);
out_args:
        if (key_fd >= 0)
                close(key_fd);
        free(ctx.spool_dir);
        free(ctx.db_path);
        free(opts.mountpoint);
        fuse_opt_free_args(&args);
        return ret;
}
