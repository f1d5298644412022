/* SPDX-License-Identifier: MIT */
/* acsd's private D-Bus: starting its dbus-daemon, and one connection carrying sealed acs_wire messages. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Owner: helper "bus" (lib/bus.c). Users: acsd (daemon + its connection), lib/agent.c
 * (the agents' side), tests.
 *
 * The bus carries only acs_wire messages (include/acs/wire.h): each is one D-Bus method
 * call, flagged NO_REPLY, to path ACS_BUS_PATH, interface ACS_BUS_INTERFACE, member
 * ACS_BUS_MEMBER, with one `ay` argument (the sealed bytes). acsd owns the well-known name
 * ACS_BUS_NAME; agents send to that name; acsd sends to an agent's unique name (":1.42").
 * The sender unique name a receiver sees is set by the dbus-daemon and cannot be forged.
 *
 * libdbus has no async-signal safety and its thread support is best avoided: use one
 * connection per thread, never from a signal handler. No libdbus main loop is used:
 * poll acs_bus_fd() for acs_bus_poll_events() and call acs_bus_dispatch() when it is
 * ready (and after any blocking call below, which may queue incoming messages).
 */

#define ACS_BUS_NAME "org.acs.Acsd1"
#define ACS_BUS_PATH "/org/acs/Acsd1"
#define ACS_BUS_INTERFACE "org.acs.Wire1"
#define ACS_BUS_MEMBER "Message"
/* Largest sealed message a connection accepts (>= ACS_WIRE_MSG_MAX, with D-Bus framing room). */
#define ACS_BUS_MESSAGE_MAX (80 * 1024)

/* ---- acsd's own dbus-daemon ---- */

typedef struct acs_bus_daemon_opts {
        const char *dir;          /* holds bus.conf and the socket bus.sock; must exist (0755,
                                   * owned by acsd); its path must fit a Unix socket (< 100 bytes) */
        unsigned max_agents;      /* agent connections the bus must take (limits are sized on it) */
        unsigned max_per_uid;     /* connections one uid may hold; 0: max_agents + 8 */
        const uid_t *agent_uids;  /* uids allowed to connect besides owner_uid and root... */
        size_t n_agent_uids;      /* ...; 0: any uid may connect (sending is still restricted) */
        uid_t owner_uid;          /* the uid that may own ACS_BUS_NAME (acsd's; usually 0) */
        const char *daemon_path;  /* NULL: "dbus-daemon" found through PATH */
        const char *daemon_user;  /* NULL: the daemon keeps the caller's uid; else it switches
                                   * to this user (<user>, e.g. "messagebus") after it made
                                   * its socket: a bug in it no longer runs as root */
} acs_bus_daemon_opts;

/*
 * Writes <dir>/bus.conf (see acs_bus_daemon_config) and starts `dbus-daemon --fork
 * --print-address --print-pid` on it. On success *ret_address (malloc'd, e.g.
 * "unix:path=/run/acs/bus/bus.sock,guid=...") and *ret_pid (the forked daemon, not a child
 * of the caller: stop it with acs_bus_daemon_stop). Waits at most 10 s for it to start
 * (with daemon_user: until it runs as that user).
 * 0, -EINVAL (bad opts, path too long), -ENOENT (no dbus-daemon), -EIO (it failed to start:
 * its stderr went to the caller's), -ETIMEDOUT, -ENOMEM, -errno.
 */
int acs_bus_daemon_start(const acs_bus_daemon_opts *o, char **ret_address, pid_t *ret_pid);

/*
 * The <busconfig> text for o (malloc'd in *ret): unix socket <dir>/bus.sock, EXTERNAL
 * auth only, no service activation, policy: owner_uid alone may own ACS_BUS_NAME and send
 * to anyone; everyone else may send only ACS_BUS_MEMBER method calls to ACS_BUS_NAME (and
 * the bus driver's own methods), no signals, no unrequested replies, no eavesdropping
 * (root may BecomeMonitor); limits written out explicitly and sized on max_agents.
 */
int acs_bus_daemon_config(const acs_bus_daemon_opts *o, char **ret);

/* SIGTERM to the daemon, then waits up to 5 s for it to go (SIGKILL after). 0 or -errno. */
int acs_bus_daemon_stop(pid_t pid);

/* ---- a connection ---- */

typedef struct acs_bus acs_bus;

/*
 * Called by acs_bus_dispatch for each well-formed ACS_BUS_MEMBER call: sender is the
 * unique name the daemon stamped on it (never NULL), msg/len the `ay` argument (borrowed
 * until the callback returns). Messages of any other shape are dropped.
 */
typedef void (*acs_bus_message_fn)(void *userdata, const char *sender, const uint8_t *msg, size_t len);
/*
 * Called when a unique name left the bus (NameOwnerChanged with an empty new owner),
 * once acs_bus_watch_departures() was called.
 */
typedef void (*acs_bus_gone_fn)(void *userdata, const char *unique_name);

/*
 * Opens a private connection to address and registers on the bus (Hello). *ret owned by
 * the caller. 0, -ECONNREFUSED/-ENOENT (no bus there), -EACCES (auth or policy refused),
 * -EINVAL (bad address), -ENOMEM, -EIO.
 */
int acs_bus_connect(const char *address, acs_bus **ret);
/* Closes and frees (NULL is fine); returns NULL. */
acs_bus *acs_bus_free(acs_bus *b);
static inline void acs_bus_freep(acs_bus **b) { acs_bus_free(*b); }
#define _cleanup_bus_ __attribute__((cleanup(acs_bus_freep)))

/* Our unique name (":1.7"); valid while b lives. */
const char *acs_bus_unique_name(const acs_bus *b);

/* Sets the callbacks (either may be NULL). */
void acs_bus_set_handlers(acs_bus *b, acs_bus_message_fn on_message, acs_bus_gone_fn on_gone,
                          void *userdata);

/*
 * Becomes the primary owner of name (no queueing, no replacement). 0, -EEXIST (someone
 * else owns it), -EACCES (policy), -ECONNRESET, -EIO. Blocking (a round trip).
 */
int acs_bus_request_name(acs_bus *b, const char *name);

/*
 * The unique name owning a well-known name, malloc'd in *ret. 0, -ENOENT (no owner),
 * -ECONNRESET, -EIO. Blocking.
 */
int acs_bus_name_owner(acs_bus *b, const char *name, char **ret);

/*
 * Peer credentials of a unique name, from the daemon (GetConnectionCredentials: the pid
 * and uid it read with SO_PEERCRED when the peer connected). 0, -ENOENT (no such name),
 * -EPROTO (the daemon did not report both), -ECONNRESET, -EIO. Blocking.
 */
int acs_bus_peer_creds(acs_bus *b, const char *unique_name, pid_t *ret_pid, uid_t *ret_uid);

/* Subscribes to NameOwnerChanged for unique names going away (acsd). 0 or -errno. Blocking. */
int acs_bus_watch_departures(acs_bus *b);

/*
 * Queues one sealed message (len <= ACS_BUS_MESSAGE_MAX) to dest (a unique or well-known
 * name) as a NO_REPLY method call; it leaves when acs_bus_dispatch or acs_bus_flush
 * writes. 0, -EINVAL, -EMSGSIZE, -ECONNRESET, -ENOMEM.
 */
int acs_bus_send(acs_bus *b, const char *dest, const void *msg, size_t len);

/* Writes everything queued, blocking up to timeout_ms (-1: no limit). 0, -ETIMEDOUT, -ECONNRESET. */
int acs_bus_flush(acs_bus *b, int timeout_ms);

/* Descriptor to poll, and the events to poll it for (POLLIN, plus POLLOUT while output is queued). */
int acs_bus_fd(const acs_bus *b);
short acs_bus_poll_events(const acs_bus *b);

/*
 * Reads what is available and writes what is queued without blocking, then calls the
 * handlers for every complete message. 0, or -ECONNRESET once the connection is gone
 * (the daemon died or dropped us); -ENOMEM.
 */
int acs_bus_dispatch(acs_bus *b);

/*
 * Waits up to timeout_ms (-1: no limit) for the connection to become ready, then
 * dispatches once. 0 (also on timeout), -ECONNRESET, -EINTR, -errno of poll.
 */
int acs_bus_wait(acs_bus *b, int timeout_ms);

/* True when complete messages already wait in memory (e.g. queued during a blocking call):
 * dispatch at once, polling the fd would not report them. */
bool acs_bus_has_pending(const acs_bus *b);

/* Frees libdbus's global state (dbus_shutdown); only once no connection is left, at exit. */
void acs_bus_shutdown(void);
