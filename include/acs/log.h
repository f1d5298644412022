/* SPDX-License-Identifier: MIT */
/* Logging for the programs (never the library): journald with ACS_* fields, else stderr. */
#pragma once

#include <stdarg.h>
#include <syslog.h>

#include "acs/util.h"

enum acs_log_target {
        ACS_LOG_AUTO = 0,    /* journald when stderr is the journal (JOURNAL_STREAM), else stderr */
        ACS_LOG_STDERR = 1,
        ACS_LOG_JOURNAL = 2,
};

/* ident names the program; max_prio filters (LOG_DEBUG shows all). Call once at start. */
void acs_log_init(const char *ident, enum acs_log_target target, int max_prio);
/* Sets the user shown as ACS_USER on every following line (NULL clears); copied. */
void acs_log_set_user(const char *user);
/* Parses "debug", "info", "notice", "warning", "err"; -EINVAL otherwise. */
int acs_log_parse_level(const char *s, int *ret_prio);

void acs_log(int prio, const char *fmt, ...) ACS_PRINTF(2, 3);
/* The same with ACS_MAILBOX=mailbox. */
void acs_log_mb(int prio, const char *mailbox, const char *fmt, ...) ACS_PRINTF(3, 4);
void acs_logv(int prio, const char *mailbox, const char *fmt, va_list ap) ACS_PRINTF(3, 0);
/* Logs at LOG_CRIT and exits with status. */
ACS_NORETURN void acs_die(int status, const char *fmt, ...) ACS_PRINTF(2, 3);
