/* SPDX-License-Identifier: MIT */
/*
 * Text the daemon did not write itself (client strings, cgroup paths, configuration words)
 * passes through here before it reaches a reply or a log line: replies must decode under
 * strict proto3 decoders, which refuse a string that is not UTF-8, and a log line must stay
 * one line whatever a client sent.
 *
 * UTF-8 here is the strict kind those decoders check: no overlong forms, no surrogates,
 * nothing above U+10FFFF.
 */
#ifndef IOMMUD_TEXT_H
#define IOMMUD_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* The offset of the first byte of s[0, len) that does not start a valid character, or len. */
size_t utf8_invalid_at(const char *s, size_t len);
static inline bool utf8_valid(const char *s, size_t len)
{
	return utf8_invalid_at(s, len) == len;
}

/* The longest prefix of s[0, len) of at most max bytes that does not end inside a character;
 * reads only s[0, max), so s may be a buffer already cut at max. */
size_t utf8_cut(const char *s, size_t len, size_t max);

/* Copies s[0, len) into out (size bytes, at least 1; NUL-terminated) with every byte that is
 * not part of a valid character written as \xHH and the backslash as \\, so that an escape
 * cannot be taken for text that merely looks like one; with one_line also control characters
 * (a newline...) as \xHH, so the copy cannot be taken for anything around it. Cut where a
 * character or an escape ends if out is too small. Returns the length the copy has uncut, so
 * a caller with size 1 learns the size it needs. */
size_t text_escape(char *out, size_t size, const char *s, size_t len, bool one_line);

#endif
