/* SPDX-License-Identifier: MIT */
/* Mailbox names: IMAP modified UTF-7 <-> UTF-8, and mailbox names <-> paths in the tree. */
#pragma once

#include <stddef.h>

/*
 * Modified UTF-7 (RFC 3501 section 5.1.3) to UTF-8. Strict: rejects (-EINVAL, *error_r
 * set to a static reason) non-minimal encodings ("&" sequences that encode printable
 * ASCII, "&-" spelled otherwise), bad base64 characters, nonzero padding bits, unpaired
 * surrogates, adjacent encoded runs ("&...-&...-"), raw bytes outside 0x20..0x7e, and
 * an unterminated "&". *ret is malloc'd.
 */
int acs_mutf7_to_utf8(const char *in, char **ret, const char **error_r);

/* UTF-8 to modified UTF-7. Rejects invalid UTF-8 (overlong, surrogates, > U+10FFFF) and NUL. */
int acs_utf8_to_mutf7(const char *in, char **ret, const char **error_r);

/*
 * Layout of the tree:
 * - ACS_LAYOUT_FS: "INBOX/cur", "Archive/2024/cur": one directory per level.
 * - ACS_LAYOUT_MAILDIRPP: INBOX at the root ("cur"), others as ".Archive.2024/cur".
 */
enum acs_layout {
        ACS_LAYOUT_FS = 0,
        ACS_LAYOUT_MAILDIRPP = 1,
};

/*
 * Escape for one path component (one level of a mailbox name). Escaped as %XX (upper-case
 * hex): '%', '/', a leading '.', in the Maildir++ layout every '.', and a whole component
 * that equals "cur", "new" or "tmp" (its first byte) in the fs layout. Empty components
 * are rejected (-EINVAL). *ret is malloc'd.
 */
int acs_mbox_component_escape(const char *component, enum acs_layout layout, char **ret);
/* Inverse of the above; rejects malformed escapes and anything the escape would have escaped. */
int acs_mbox_component_unescape(const char *component, enum acs_layout layout, char **ret,
                                const char **error_r);

/*
 * Full mailbox name (UTF-8, levels separated by delim; delim 0 = flat) to the directory
 * path relative to the tree root, per layout: fs "Archive/2024", Maildir++ ".Archive.2024"
 * ("" for INBOX). *ret is malloc'd.
 */
int acs_mbox_to_path(const char *name, char delim, enum acs_layout layout, char **ret);
/* Inverse: relative directory path to full mailbox name using delim. -EINVAL when the
 * path cannot come from acs_mbox_to_path or a level contains delim after unescaping. */
int acs_path_to_mbox(const char *path, char delim, enum acs_layout layout, char **ret,
                     const char **error_r);
