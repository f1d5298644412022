/* SPDX-License-Identifier: MIT */
/* acs-syncd progress on stderr: one updating line on a terminal, or JSON lines with --progress=json. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "syncd.h"

static struct {
        bool json, tty, line_open;
        char mailbox[512];
        uint64_t done, total, bytes, total_bytes;
        double start, last_print;
        uint64_t all_msgs, all_bytes;
        double run_start;
} P;

static double now(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Writes s as a JSON string body (quotes and control characters escaped). */
static void json_str(FILE *f, const char *s)
{
        fputc('"', f);
        for (const unsigned char *p = (const unsigned char *)s; p && *p; p++) {
                if (*p == '"' || *p == '\\')
                        fprintf(f, "\\%c", *p);
                else if (*p < 0x20)
                        fprintf(f, "\\u%04x", *p);
                else
                        fputc(*p, f);
        }
        fputc('"', f);
}

void progress_init(bool json)
{
        /* stderr is unbuffered: every fputc of a JSON line was a write(2) of its own (~80 per
         * event). Buffered, each event is one write at its fflush; log lines bypass stdio. */
        static char buf[4096];
        static bool buffered;
        if (!buffered) {
                setvbuf(stderr, buf, _IOFBF, sizeof(buf));
                buffered = true;
        }
        memset(&P, 0, sizeof(P));
        P.json = json;
        P.tty = !json && isatty(STDERR_FILENO);
        P.run_start = now();
}

static void print(bool final)
{
        double t = now();
        double el = t - P.start;
        double rate = el > 0 ? (double)P.bytes / el : 0;
        if (P.json) {
                fprintf(stderr, "{\"event\":\"%s\",\"mailbox\":", final ? "mailbox_done" : "progress");
                json_str(stderr, P.mailbox);
                fprintf(stderr,
                        ",\"done\":%llu,\"total\":%llu,\"bytes\":%llu,\"total_bytes\":%llu,"
                        "\"rate_bytes_per_sec\":%.0f,\"elapsed_sec\":%.3f}\n",
                        (unsigned long long)P.done, (unsigned long long)P.total, (unsigned long long)P.bytes,
                        (unsigned long long)P.total_bytes, rate, el);
                fflush(stderr);
        } else if (P.tty) {
                fprintf(stderr, "\r\033[K%s: %llu/%llu messages, %.1f/%.1f MB, %.1f MB/s", P.mailbox,
                        (unsigned long long)P.done, (unsigned long long)P.total, (double)P.bytes / 1e6,
                        (double)P.total_bytes / 1e6, rate / 1e6);
                P.line_open = true;
                if (final) {
                        fputc('\n', stderr);
                        P.line_open = false;
                }
                fflush(stderr);
        }
        P.last_print = t;
}

void progress_mailbox_begin(const char *mailbox, uint64_t total_msgs, uint64_t total_bytes)
{
        snprintf(P.mailbox, sizeof(P.mailbox), "%s", mailbox ? mailbox : "");
        P.done = P.bytes = 0;
        P.total = total_msgs;
        P.total_bytes = total_bytes;
        P.start = now();
        P.last_print = 0;
        print(false);
}

void progress_add(uint64_t msgs, uint64_t bytes)
{
        P.done += msgs;
        P.bytes += bytes;
        P.all_msgs += msgs;
        P.all_bytes += bytes;
        /* JSON: one line per committed batch; tty: at most 5 updates a second */
        if (P.json || now() - P.last_print >= 0.2)
                print(false);
}

void progress_mailbox_end(void)
{
        print(true);
}

void progress_event_kv(const char *event, const char *mailbox, const char *key, const char *value)
{
        if (!P.json)
                return;
        fprintf(stderr, "{\"event\":");
        json_str(stderr, event);
        if (mailbox) {
                fprintf(stderr, ",\"mailbox\":");
                json_str(stderr, mailbox);
        }
        if (key && value) {
                fprintf(stderr, ",");
                json_str(stderr, key);
                fprintf(stderr, ":");
                json_str(stderr, value);
        }
        fprintf(stderr, "}\n");
        fflush(stderr);
}

void progress_event(const char *event, const char *mailbox)
{
        progress_event_kv(event, mailbox, NULL, NULL);
}

void progress_finish(void)
{
        if (P.json) {
                fprintf(stderr,
                        "{\"event\":\"done\",\"messages\":%llu,\"bytes\":%llu,\"elapsed_sec\":%.3f}\n",
                        (unsigned long long)P.all_msgs, (unsigned long long)P.all_bytes, now() - P.run_start);
                fflush(stderr);
        } else if (P.line_open) {
                fputc('\n', stderr);
                fflush(stderr);
                P.line_open = false;
        }
        P.all_msgs = P.all_bytes = 0;
}
