/* SPDX-License-Identifier: MIT */
/* acs-syncd push: NOTIFY (every mailbox) or IDLE, waking up to apply server changes at once. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acs/log.h"
#include "acs/util.h"
#include "syncd.h"

/* Re-IDLE well before the 30-minute inactivity limit of RFC 3501. */
#define IDLE_RENEW_SEC (25 * 60)
/* Without NOTIFY only the selected mailbox pushes; the others are checked this often. */
#define POLL_OTHERS_SEC 30

static int ensure_selected(syncd *sd)
{
        if (sd->selected)
                return 0;
        int r = mailimap_select(sd->imap, "INBOX");
        if (r != MAILIMAP_NO_ERROR)
                return syncd_etpan_error(r);
        sd->selected = strdup("INBOX");
        return sd->selected ? 0 : -ENOMEM;
}

/*
 * INBOX stays selected while idle: Dovecot reports the selected mailbox through its own
 * mailbox watch, which keeps working when its NOTIFY for other mailboxes falls silent
 * (see docs/sync.md), so the most important mailbox is always pushed at once.
 */
static int ensure_inbox(syncd *sd)
{
        if (sd->selected && strcmp(sd->selected, "INBOX") == 0)
                return 0;
        sd->selected = acs_free(sd->selected);
        return ensure_selected(sd);
}

static int64_t mono_sec(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec;
}

static int64_t mono_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * SQLite makes a commit visible in the -shm index after writing the -wal, and inotify only
 * sees the -wal write: after an event that shows no op yet, look again every 5 ms for
 * 100 ms (as acs-fs's watcher does).
 */
#define OPS_RECHECK_MS 5
#define OPS_RECHECK_FOR_MS 500
/* Safety net for a missed event: the op log is also looked at this often while idle (one read). */
#define OPS_LOOK_EVERY_MS 1000

/* Replays the op log if it has anything; returns 0 or -errno. */
static int replay_if_pending(syncd *sd, bool *ret_did)
{
        bool more = false;
        int r = syncd_ops_pending(sd, &more);
        if (r < 0 || !more) {
                *ret_did = false;
                return r;
        }
        *ret_did = true;
        return syncd_replay(sd);
}

#define NOTIFY_SET                                                                                   \
        "NOTIFY SET (selected (MessageNew MessageExpunge FlagChange)) "                              \
        "(personal (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))"

/* Logs which step of the push loop ended it (the caller logs the reset itself). */
static int failed(const char *step, int r)
{
        if (r < 0 && r != -EINTR)
                acs_log(LOG_INFO, "push loop: %s: %s", step, strerror(-r));
        return r;
}

/*
 * IDLE, sent by hand: libetpan 1.9.4's mailimap_idle() takes an untagged line that arrives
 * before the "+" (NOTIFY's STATUS lines do, at any time) for the start of a final response
 * and waits for a tagged one the server never sends, until the I/O timeout. Here untagged
 * lines (and their literals) before the "+" are read and reported in *ret_early: the caller
 * ends this IDLE at once and syncs.
 */
static int idle_start(syncd *sd, bool *ret_early)
{
        mailimap *imap = sd->imap;
        bool early = false;
        imap->imap_idle_timestamp = time(NULL);
        if (mailimap_send_current_tag(imap) != MAILIMAP_NO_ERROR ||
            mailstream_write(imap->imap_stream, "IDLE\r\n", 6) < 0 || mailstream_flush(imap->imap_stream) == -1)
                return -ECONNRESET;
        for (;;) {
                char *line = mailimap_read_line(imap);
                if (!line)
                        return -ECONNRESET;
                if (line[0] == '+')
                        break;
                if (line[0] != '*')
                        return -EPROTO; /* a tagged answer: IDLE refused */
                early = true;
                /* an untagged line may end in a literal {n}: skip its n bytes, then the rest */
                for (;;) {
                        size_t len = strlen(line);
                        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                                len--;
                        if (!len || line[len - 1] != '}')
                                break;
                        const char *open = memrchr(line, '{', len);
                        if (!open)
                                break;
                        unsigned long n = strtoul(open + 1, NULL, 10);
                        char buf[4096];
                        while (n > 0) {
                                ssize_t got = mailstream_read(imap->imap_stream, buf, n < sizeof(buf) ? n : sizeof(buf));
                                if (got <= 0)
                                        return -ECONNRESET;
                                n -= (unsigned long)got;
                        }
                        line = mailimap_read_line(imap);
                        if (!line)
                                return -ECONNRESET;
                }
        }
        *ret_early = early;
        return 0;
}

int syncd_push_loop(syncd *sd)
{
        bool notify = false;
        int r;

        r = ensure_inbox(sd);
        if (r < 0)
                return r;
        if (sd->caps.notify) {
                r = syncd_raw_command(sd, NOTIFY_SET);
                if (r == 0)
                        notify = true;
                else if (r == -EREMOTEIO || r == -EPROTO)
                        acs_log(LOG_WARNING, "NOTIFY refused; pushing the selected mailbox only");
                else
                        return r;
        }
        if (!sd->caps.idle && !notify)
                acs_log(LOG_WARNING, "server has neither IDLE nor NOTIFY; polling every %d s", POLL_OTHERS_SEC);
        /*
         * Mail that arrived between the sync before this loop and NOTIFY taking effect was
         * announced, if at all, inside the responses to SELECT and NOTIFY SET, where it is
         * lost: one STATUS round catches it (seen after an agent restart under acsd).
         */
        r = syncd_sync_all(sd, true);
        if (r == 0)
                r = ensure_inbox(sd);
        if (r < 0)
                return failed("STATUS round after NOTIFY", r);

        int64_t last_full = mono_sec();
        int ops_fd = syncd_ops_watch_fd(sd);
        int64_t recheck_until = mono_ms() + OPS_RECHECK_FOR_MS;
        while (!syncd_stop) {
                bool idling = false;
                bool did = false;
                /* a commit seen by inotify may not be visible yet: keep looking for a while */
                if (syncd_ops_watch_drain(sd))
                        recheck_until = mono_ms() + OPS_RECHECK_FOR_MS;
                r = replay_if_pending(sd, &did);
                if (r < 0)
                        return failed("replay", r);
                if (did) {
                        /* what the server announced while we replayed was parsed inside those
                         * responses and is lost: the mailbox list and one STATUS round pick it
                         * up (the uids we learned make our own appends known already) */
                        r = syncd_sync_list(sd);
                        if (r == 0)
                                r = syncd_sync_all(sd, true);
                        if (r == 0)
                                r = ensure_inbox(sd);
                        if (r < 0)
                                return failed("sync after replay", r);
                        progress_event("synced", NULL);
                }
                bool early = false;
                if (sd->caps.idle) {
                        r = idle_start(sd, &early);
                        if (r < 0)
                                return failed("IDLE", r);
                        idling = true;
                }
                int timeout = notify ? IDLE_RENEW_SEC : POLL_OTHERS_SEC;
                unsigned poll_sec = sd->opts->poll_sec;
                if (poll_sec && (int)poll_sec < timeout)
                        timeout = (int)poll_sec; /* --poll: a STATUS round also when nothing was pushed */
                int64_t start = mono_ms();
                bool ready = early || sd->imap->imap_stream->read_buffer_len > 0;
                bool ops = false, forced = false;
                while (!ready && !ops && !syncd_stop) {
                        int64_t now = mono_ms();
                        int64_t left = (int64_t)timeout * 1000 - (now - start);
                        if (left <= 0)
                                break;
                        if (recheck_until > now && left > OPS_RECHECK_MS)
                                left = OPS_RECHECK_MS;
                        else if (left > OPS_LOOK_EVERY_MS)
                                left = OPS_LOOK_EVERY_MS;
                        struct pollfd p[3] = {
                                {.fd = mailimap_idle_get_fd(sd->imap), .events = POLLIN},
                                {.fd = sd->wake_fd, .events = POLLIN},
                                {.fd = ops_fd, .events = POLLIN},
                        };
                        int n = poll(p, ops_fd >= 0 ? 3 : 2, (int)left);
                        if (n < 0 && errno != EINTR)
                                return -errno;
                        if (n > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR)))
                                ready = true;
                        if (n > 0 && (p[1].revents & POLLIN) && !syncd_stop) {
                                char b[64];
                                while (read(sd->wake_fd, b, sizeof(b)) > 0)
                                        ;
                        }
                        if (syncd_sync_requested) {
                                syncd_sync_requested = 0;
                                ready = forced = true; /* acsd: sync now, every mailbox */
                        }
                        bool look = recheck_until > mono_ms() || n == 0;
                        if (n > 0 && ops_fd >= 0 && (p[2].revents & POLLIN) && syncd_ops_watch_drain(sd)) {
                                look = true;
                                recheck_until = mono_ms() + OPS_RECHECK_FOR_MS;
                        }
                        if (look) {
                                r = syncd_ops_pending(sd, &ops);
                                if (r < 0)
                                        return failed("op log", r);
                                if (ops)
                                        recheck_until = 0;
                        }
                }
                if (idling) {
                        r = mailimap_idle_done(sd->imap);
                        if (r != MAILIMAP_NO_ERROR)
                                return syncd_etpan_error(r);
                }
                if (syncd_stop)
                        break;
                if (ops && !ready) {
                        /* local changes: replay at once (top of the loop), then IDLE again */
                        progress_event("local_changes", NULL);
                        continue;
                }
                struct mailimap_response_info *ri = sd->imap->imap_response_info;
                if (ri && ri->rsp_mailbox_list && clist_count(ri->rsp_mailbox_list) > 0)
                        sd->list_dirty = true;
                if (!ready && notify && !poll_sec) {
                        /* renewal only: nothing happened */
                        continue;
                }
                if (!ready)
                        sd->list_dirty = true; /* a timed round: NOTIFY may have missed new folders too */
                if (forced)
                        syncd_bus_round(false);
                if (ready)
                        progress_event("wakeup", NULL);
                /*
                 * Notifications that arrive while we run commands are parsed inside those
                 * commands' responses and would be lost; so repeat the (cheap, pipelined)
                 * STATUS round until one finds nothing to do and sees no untagged news.
                 * Dovecot delays notifications by 500 ms, so a change after that quiet round
                 * is announced while we IDLE.
                 */
                bool first = true;
                for (unsigned round = 0; round < 20 && !syncd_stop; round++) {
                        sd->unsolicited = false;
                        uint64_t before = sd->synced_mailboxes;
                        if (sd->list_dirty) {
                                r = syncd_sync_list(sd);
                                if (r < 0)
                                        return failed("mailbox list", r);
                        }
                        /* The selected mailbox first (its events need no STATUS to be known). */
                        if (first && sd->selected && ready) {
                                _cleanup_free_ char *sel = strdup(sd->selected);
                                if (!sel)
                                        return -ENOMEM;
                                sd->synced_mailboxes++;
                                r = syncd_sync_mailbox(sd, sel);
                                if (r < 0 && r != -ENOENT && r != -EREMOTEIO)
                                        return failed("selected mailbox", r);
                        }
                        first = false;
                        if (notify || !ready || forced || mono_sec() - last_full >= POLL_OTHERS_SEC) {
                                r = syncd_sync_all(sd, true);
                                if (r < 0)
                                        return failed("STATUS round", r);
                                last_full = mono_sec();
                        }
                        if (sd->synced_mailboxes == before && !sd->unsolicited && !sd->list_dirty)
                                break;
                        if (!notify)
                                break;
                }
                r = ensure_inbox(sd);
                if (r < 0)
                        return r;
                progress_event("synced", NULL);
                if (forced)
                        syncd_bus_round(true);
        }
        return 0;
}
