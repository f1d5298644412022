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

/* Binds socket.path (mode 0666 or 0660 with socket.allow_group) and starts accepting. 0, -errno. */
int acsd_server_start(acsd *d);
/* Closes the listener and every connection (sessions stay). */
void acsd_server_stop(acsd *d);

/*
 * Queues one formatted line (with its LF) for conn. When the connection's output queue is
 * full (a client that does not read), the connection is closed (later, from the loop) and
 * -ENOBUFS returned. 0, -ENOBUFS, -EPIPE (connection is closing).
 */
int acsd_conn_send(struct acsd_conn *c, const char *line, size_t len);
/* Formats and queues a reply; a reply that does not format queues ERR internal. */
int acsd_conn_reply(struct acsd_conn *c, const acs_proto_reply *r);
int acsd_conn_err(struct acsd_conn *c, enum acs_proto_err code, const char *text);
/* Closes the connection after its queued output is sent. */
void acsd_conn_close_after_flush(struct acsd_conn *c);
/* Peer credentials checked at accept. */
uid_t acsd_conn_uid(const struct acsd_conn *c);
gid_t acsd_conn_gid(const struct acsd_conn *c);
pid_t acsd_conn_pid(const struct acsd_conn *c);
/* Whether the peer is an admin: uid 0, or in session.admin_group (checked at accept). */
bool acsd_conn_is_admin(const struct acsd_conn *c);
/* The session.c state of a connection (NULL until session.c sets it). */
void *acsd_conn_state(const struct acsd_conn *c);
void acsd_conn_set_state(struct acsd_conn *c, void *state);
