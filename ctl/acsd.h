/* SPDX-License-Identifier: MIT */
/* What the parts of acsd share: the daemon state (config, loop, vault, bus, instances) and the calls between the parts. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "acs/config.h"
#include "instance.h"
#include "loop.h"
#include "protocol.h"

/*
 * Owner: helper "acsd" (acsd.c, server.c, session.c, session-table.c). instance.c (helper
 * "inst") has its own header, ctl/instance.h.
 *
 * acsd is one process and one thread (ctl/loop.h). Its parts, one file each:
 *   ctl/acsd.c     main: config, privileges, the bus, signals, startup and shutdown order
 *   ctl/server.c   the client socket: connections, peer credentials, bounded I/O
 *   ctl/session.c  commands of a connection: HELLO/OPEN/RESUME/CLOSE/STATUS/SYNC/WATCH/WHO,
 *                  session tokens, login rate limits
 *   ctl/instance.c per-user instances (helper inst): children, mounts, the bus handshake
 * The struct below is created by main and lives until exit; every part may read it, and
 * each field is written only by the part named in its comment.
 */

struct acsd_server;   /* ctl/server.c */
struct acsd_sessions; /* ctl/session.c */
struct acsd_conn;     /* ctl/server.c: one client connection */

typedef struct acsd {
        acs_config cfg;             /* main: loaded once at start (SIGHUP does not reload) */
        const char *config_path;    /* main */
        acs_loop *loop;             /* main */
        inst_mgr *inst;             /* main creates it; instance.c: instances, vault, bus */
        struct acsd_server *server; /* server.c */
        struct acsd_sessions *sessions; /* session.c */

        /* resolved from the config by main (getgrnam at start) */
        bool has_admin_gid;         /* session.admin_group set */
        gid_t admin_gid;
        bool has_allow_gid;         /* socket.allow_group set */
        gid_t allow_gid;

        bool foreground;            /* main: --foreground */
        bool stopping;              /* main: SIGTERM/SIGINT seen, shutting down */
} acsd;

/* ---- server.c: the client socket ---- */

/* A connection with nothing going on (no command in progress, not watching) this long is closed. */
#define ACSD_CONN_IDLE_USEC (600 * 1000000ull)

/*
 * Binds socket.path (under a temporary name, renamed into place once listening: the
 * file's existence means acsd accepts), mode socket.mode, group socket.allow_group.
 * 0, -errno (logged).
 */
int acsd_server_start(acsd *d);
/* Stops accepting and removes the socket file (connections stay). */
void acsd_server_close_listener(acsd *d);
/* Closes the listener and every connection (session.c hears of each), frees the server. */
void acsd_server_stop(acsd *d);
unsigned acsd_server_connections(const acsd *d);
/* mkdir -p: path and its missing parents, with mode (existing ones are kept as they are). 0, -errno. */
int acsd_mkdir_parents(const char *path, mode_t mode);

/*
 * A client connection. Valid from acsd_session_conn_new() until acsd_session_conn_closed()
 * returns (both called by server.c from the loop); a connection that failed in between
 * stays valid (acsd_conn_dead() is true, sends are dropped) until then.
 */
struct acsd_conn;

/*
 * Queues one formatted line (with its LF). When the queue would exceed its bound (a
 * client that does not read), the connection is closed. 0, -ENOBUFS (closed now),
 * -EPIPE (already closing).
 */
int acsd_conn_send(struct acsd_conn *c, const char *line, size_t len);
/* Formats and queues a reply (a reply that does not format queues ERR internal). */
int acsd_conn_reply(struct acsd_conn *c, const acs_proto_reply *r);
int acsd_conn_err(struct acsd_conn *c, enum acs_proto_err code, const char *text);
/* Bytes queued, not yet taken by the client. */
size_t acsd_conn_queued(const struct acsd_conn *c);
/* Closes the connection once its queued output is sent (reads nothing more). */
void acsd_conn_close_after_flush(struct acsd_conn *c);
/* Stops handing lines to session.c (a command is in progress) / starts again. */
void acsd_conn_pause(struct acsd_conn *c);
void acsd_conn_resume(struct acsd_conn *c);
/*
 * A producer fills the queue of a long answer piece by piece: called from the loop
 * whenever less than 16 KiB are queued; returns 0 for "more to come", 1 when done
 * (then it is dropped). NULL clears. Set while paused; resume when done.
 */
typedef int (*acsd_conn_producer)(acsd *d, struct acsd_conn *c);
void acsd_conn_set_producer(struct acsd_conn *c, acsd_conn_producer fn);
/* Never closed as idle (a WATCH stream). */
void acsd_conn_set_keepalive(struct acsd_conn *c, bool on);
bool acsd_conn_dead(const struct acsd_conn *c);
/* Peer credentials (SO_PEERCRED at accept). */
uid_t acsd_conn_uid(const struct acsd_conn *c);
gid_t acsd_conn_gid(const struct acsd_conn *c);
pid_t acsd_conn_pid(const struct acsd_conn *c);
/* Number for logs. */
uint64_t acsd_conn_id(const struct acsd_conn *c);
/* Whether the peer is an admin: uid 0, or in session.admin_group (checked at accept). */
bool acsd_conn_is_admin(const struct acsd_conn *c);
/* session.c's state of the connection. */
void *acsd_conn_state(const struct acsd_conn *c);
void acsd_conn_set_state(struct acsd_conn *c, void *state);

/* ---- session.c: the commands ---- */

/* Creates the session table and rate limiter, and the expiry timer. 0, -errno. */
int acsd_sessions_start(acsd *d);
/* Drops every session (releasing their instance references unless the instances are going anyway). */
void acsd_sessions_stop(acsd *d, bool release_refs);
size_t acsd_sessions_count(const acsd *d);
/* Frees what acsd_sessions_start made (after acsd_sessions_stop and acsd_server_stop). */
void acsd_sessions_free(acsd *d);

/* Called by server.c: a new connection; one complete line; an oversized line was dropped; the connection is gone. */
void acsd_session_conn_new(acsd *d, struct acsd_conn *c);
void acsd_session_line(acsd *d, struct acsd_conn *c, const char *line, size_t len);
void acsd_session_toolong(acsd *d, struct acsd_conn *c);
void acsd_session_conn_closed(acsd *d, struct acsd_conn *c);
