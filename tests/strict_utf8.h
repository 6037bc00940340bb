/* SPDX-License-Identifier: MIT */
/*
 * UTF-8 as strict proto3 decoders (Python, Go) take it, for the tests to judge the daemon's
 * text by: written from Unicode's table of well-formed byte sequences, apart from the daemon's
 * own checker (daemon/text.c), so that the two cannot share a mistake. One copy, used by the
 * daemon tests and the fuzz harness alike.
 */
#ifndef IOMMUD_TESTS_STRICT_UTF8_H
#define IOMMUD_TESTS_STRICT_UTF8_H

#include <stdbool.h>

/* Whether the NUL-terminated text is well-formed UTF-8. */
bool strict_utf8(const char *text);

#endif
