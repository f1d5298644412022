/* SPDX-License-Identifier: MIT */
/* Maildir file names (<unique>,S=<n>,W=<n>:2,<flags>) and line-end conversions. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * A parsed Maildir file name. Flags use the bits of enum acs_flag (acs/store.h):
 * D F P R S T. Keyword letters a..z are bits 0..25 of keywords. Any other info letters
 * (upper case other than DFPRST, digits, ...) are kept in other, in the order found,
 * so that a rename that only changes known flags preserves them.
 */
typedef struct acs_mdname {
        char *uniq;        /* up to the first ',' or ':' (malloc'd) */
        bool has_size;     /* ,S=<n> present */
        uint64_t size;
        bool has_vsize;    /* ,W=<n> present */
        uint64_t vsize;
        bool has_info;     /* ":2," present */
        unsigned flags;    /* enum acs_flag */
        uint32_t keywords; /* bit i = letter 'a'+i */
        char *other;       /* unknown info letters, "" when none (malloc'd) */
} acs_mdname;

void acs_mdname_clear(acs_mdname *n);

/*
 * Parses a file name as found in new/, cur/ or tmp/. Rejects (-EINVAL, *error_r set to a
 * static reason) an empty name, one with '/', a leading '.', a unique part that is
 * empty, malformed or out-of-range S=/W= values, and an info part that is not ":2,"
 * followed by flag letters. Flags may come in any order when parsing.
 */
int acs_mdname_parse(const char *name, acs_mdname *ret, const char **error_r);

/*
 * Builds "<uniq>,S=<size>,W=<vsize>:2,<flags>" with the flags in ASCII order (D F P R S T,
 * then 'other' letters merged in byte order, then keyword letters a..z). uniq must be
 * valid (no ',', ':', '/', not starting with '.'), else -EINVAL. *ret is malloc'd.
 */
int acs_mdname_build(const char *uniq, uint64_t size, uint64_t vsize, unsigned flags,
                     uint32_t keywords, const char *other, char **ret);

/* Writes the flag letters (system, other, keywords; ASCII order) into buf; returns length. buf needs 64 bytes. */
size_t acs_mdname_flag_letters(unsigned flags, uint32_t keywords, const char *other, char *buf);

/* Converts CRLF to LF in place (bare CR and bare LF untouched); returns the new length. */
size_t acs_crlf_to_lf(char *buf, size_t len);

/*
 * The size of LF text once every LF not preceded by CR becomes CRLF (Dovecot's W= and
 * what IMAP's RFC822.SIZE is for a message stored with LF line ends).
 */
uint64_t acs_lf_vsize(const char *buf, size_t len);

/*
 * Streaming LF -> CRLF conversion for appends: converts in into out, which must have
 * room for 2 * in_len bytes; *last_cr carries whether the previous chunk ended in CR
 * across calls (start with false). Returns bytes written to out.
 */
size_t acs_lf_to_crlf(const char *in, size_t in_len, char *out, bool *last_cr);
