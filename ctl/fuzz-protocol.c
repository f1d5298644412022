/* SPDX-License-Identifier: MIT */
/* libFuzzer target for the client protocol: parse/format/parse invariants for commands and replies, the line reader, the %XX codec. */
/*
 * Build and run (docs/protocol.md, "Fuzzing"):
 *   mkdir -p build-fuzz
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *         -D_GNU_SOURCE -Iinclude -Ictl ctl/fuzz-protocol.c ctl/protocol.c -lsodium \
 *         -o build-fuzz/fuzz-protocol
 *   cp -r ctl/fuzz-corpus build-fuzz/corpus
 *   build-fuzz/fuzz-protocol -dict=ctl/fuzz-protocol.dict -max_len=9000 \
 *         -max_total_time=300 build-fuzz/corpus
 * Without libFuzzer (-DACS_FUZZ_STANDALONE) main() runs every file named on the command
 * line through the same checks: meson's test 'fuzz-protocol-corpus' does that with the
 * seed corpus, so the invariants are checked in every build.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"

#define MUST(cond)                                                                   \
        do {                                                                         \
                if (!(cond)) {                                                       \
                        fprintf(stderr, "fuzz-protocol: %s:%d: %s\n", __FILE__,      \
                                __LINE__, #cond);                                    \
                        abort();                                                     \
                }                                                                    \
        } while (0)

static bool all_zero(const void *p, size_t n)
{
        const unsigned char *b = p;
        for (size_t i = 0; i < n; i++)
                if (b[i])
                        return false;
        return true;
}

static void check_cmd(const char *line, size_t len)
{
        static acs_proto_cmd c, c2;
        static char out[ACS_PROTO_LINE_MAX + 1], out2[ACS_PROTO_LINE_MAX + 1];
        enum acs_proto_err err = ACS_ERR_NONE;
        const char *why = NULL;
        size_t olen, olen2;

        int r = acs_proto_parse_cmd(line, len, &c, &err, &why);
        if (r < 0) {
                MUST(r == -EINVAL || r == -EMSGSIZE);
                MUST((r == -EMSGSIZE) == (err == ACS_ERR_TOOLONG));
                MUST(err >= ACS_ERR_TOOLONG && err <= ACS_ERR_VALUE);
                MUST(why != NULL && strlen(why) > 0);
                MUST(all_zero(&c, sizeof(c)));
                return;
        }
        MUST(len <= ACS_PROTO_LINE_MAX && line[len - 1] == '\n');
        MUST(acs_proto_cmd_name(c.type) != NULL);
        MUST(!c.has_user || (c.user_len >= 1 && c.user_len <= ACS_PROTO_USER_MAX && strlen(c.user) == c.user_len));
        MUST(c.password_len <= ACS_PROTO_PASSWORD_MAX && strlen(c.password) == c.password_len);
        MUST(!c.has_mailbox || (c.mailbox_len >= 1 && strlen(c.mailbox) == c.mailbox_len));
        MUST(c.type != ACS_CMD_OPEN || c.password_len >= 1);

        /* canonical form: formats, fits a line, parses back to the same struct, is a fixpoint */
        MUST(acs_proto_format_cmd(&c, out, sizeof(out), &olen) == 0);
        MUST(olen <= ACS_PROTO_LINE_MAX && olen == strlen(out) && out[olen - 1] == '\n');
        MUST(acs_proto_parse_cmd(out, olen, &c2, &err, &why) == 0);
        MUST(memcmp(&c, &c2, sizeof(c)) == 0);
        MUST(acs_proto_format_cmd(&c2, out2, sizeof(out2), &olen2) == 0);
        MUST(olen == olen2 && memcmp(out, out2, olen) == 0);
        acs_proto_cmd_wipe(&c);
        acs_proto_cmd_wipe(&c2);
}

static void check_reply(const char *line, size_t len)
{
        static acs_proto_reply r, r2;
        static char out[ACS_PROTO_LINE_MAX + 1], out2[ACS_PROTO_LINE_MAX + 1];
        const char *why = NULL;
        size_t olen, olen2;

        int ret = acs_proto_parse_reply(line, len, &r, &why);
        if (ret < 0) {
                MUST(ret == -EINVAL || ret == -EMSGSIZE);
                MUST(why != NULL);
                MUST(all_zero(&r, sizeof(r)));
                return;
        }
        MUST(r.n_kv <= ACS_PROTO_KV_MAX && r.buf_used <= sizeof(r.buf));
        for (size_t i = 0; i < r.n_kv; i++) {
                size_t vl;
                const char *k = acs_proto_reply_key(&r, i), *v = acs_proto_reply_value(&r, i, &vl);
                MUST(k && v && strlen(v) == vl);
                MUST(acs_proto_reply_get(&r, k, NULL) == v);
        }
        MUST(acs_proto_format_reply(&r, out, sizeof(out), &olen) == 0);
        MUST(olen <= ACS_PROTO_LINE_MAX && olen == strlen(out));
        MUST(acs_proto_parse_reply(out, olen, &r2, &why) == 0);
        MUST(memcmp(&r, &r2, sizeof(r)) == 0);
        MUST(acs_proto_format_reply(&r2, out2, sizeof(out2), &olen2) == 0);
        MUST(olen == olen2 && memcmp(out, out2, olen) == 0);
}

static void check_codec(const uint8_t *data, size_t size)
{
        static char dec[ACS_PROTO_LINE_MAX * 3], enc[ACS_PROTO_LINE_MAX * 9], dec2[ACS_PROTO_LINE_MAX * 3];
        size_t n = size < ACS_PROTO_LINE_MAX * 2 ? size : ACS_PROTO_LINE_MAX * 2;
        size_t dl, el, dl2;
        const char *why = NULL;
        if (acs_proto_pct_decode((const char *)data, n, dec, sizeof(dec), &dl, &why) == 0) {
                MUST(dl <= n && strlen(dec) == dl);
                MUST(acs_proto_pct_encode(dec, dl, enc, sizeof(enc), &el) == 0);
                MUST(acs_proto_pct_decode(enc, el, dec2, sizeof(dec2), &dl2, &why) == 0);
                MUST(dl2 == dl && memcmp(dec, dec2, dl) == 0);
        } else {
                MUST(why != NULL);
        }
        /* encoding anything, even NUL, and decoding gives it back unless it had NUL */
        MUST(acs_proto_pct_encode(data, n, enc, sizeof(enc), &el) == 0);
        int r = acs_proto_pct_decode(enc, el, dec2, sizeof(dec2), &dl2, &why);
        MUST((r == 0) == (memchr(data, 0, n) == NULL));
        MUST(r != 0 || (dl2 == n && memcmp(dec2, data, n) == 0));
}

/* Feeds the input through a reader in chunks whose sizes come from the input itself. */
static void check_reader(const uint8_t *data, size_t size)
{
        static acs_proto_reader rd;
        acs_proto_reader_init(&rd);
        size_t pos = 0, chunk = size ? (size_t)data[0] * 37 + 1 : 1;
        size_t lines = 0, bytes_in_lines = 0;
        for (;;) {
                const char *line;
                size_t ll;
                int k;
                while ((k = acs_proto_reader_next(&rd, &line, &ll)) != 0) {
                        if (k < 0) {
                                MUST(k == -EMSGSIZE);
                                continue;
                        }
                        MUST(ll >= 1 && ll <= ACS_PROTO_LINE_MAX && line[ll - 1] == '\n');
                        MUST(memchr(line, '\n', ll - 1) == NULL);
                        lines++;
                        bytes_in_lines += ll;
                        check_cmd(line, ll);
                }
                if (pos == size)
                        break;
                char *space;
                size_t room;
                acs_proto_reader_space(&rd, &space, &room);
                MUST(room > 0 && room <= ACS_PROTO_LINE_MAX);
                size_t n = size - pos < chunk ? size - pos : chunk;
                n = n < room ? n : room;
                memcpy(space, data + pos, n);
                acs_proto_reader_commit(&rd, n);
                pos += n;
        }
        MUST(bytes_in_lines <= size);
        acs_proto_reader_wipe(&rd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        check_cmd((const char *)data, size);
        check_reply((const char *)data, size);
        check_codec(data, size);
        check_reader(data, size);
        return 0;
}

#ifdef ACS_FUZZ_STANDALONE
int main(int argc, char **argv)
{
        printf("1..%d\n", argc - 1);
        for (int i = 1; i < argc; i++) {
                FILE *f = fopen(argv[i], "rb");
                if (!f) {
                        printf("not ok %d - %s: cannot open\n", i, argv[i]);
                        return 1;
                }
                static uint8_t buf[1 << 16];
                size_t n = fread(buf, 1, sizeof(buf), f);
                fclose(f);
                /* every prefix, so that the seeds' unfinished lines are covered too */
                for (size_t k = 0; k <= n; k++)
                        LLVMFuzzerTestOneInput(buf, k);
                printf("ok %d - %s (%zu bytes)\n", i, argv[i], n);
        }
        return 0;
}
#endif
