// SPDX-License-Identifier: MIT
#include "text.h"

#include <stdio.h>
#include <string.h>

/* The length of the valid character at s (len bytes left), 0 when there is none. */
static size_t char_len(const unsigned char *s, size_t len)
{
	/* The smallest code point each length may encode: a smaller one is an overlong form. */
	static const unsigned min[] = {[2] = 0x80, [3] = 0x800, [4] = 0x10000};
	unsigned c = s[0], cp;
	size_t n;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (n > len)
		return 0;
	cp = c & (0x7fu >> n);
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

size_t utf8_invalid_at(const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t at = 0, n;

	while (at < len && (n = char_len(u + at, len - at)))
		at += n;
	return at;
}

size_t utf8_cut(const char *s, size_t len, size_t max)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t lead;
	unsigned c;

	if (len <= max)
		return len;
	if (max == 0)
		return 0;
	/* The start of the last character before max, and whether all of it is before max;
	 * only s[0, max) is read, as a cut buffer has nothing after it. */
	lead = max - 1;
	while (lead > 0 && max - lead < 4 && (u[lead] & 0xc0) == 0x80)
		lead--;
	c = u[lead];
	if (c >= 0xf0)
		return lead + 4 <= max ? max : lead;
	if (c >= 0xe0)
		return lead + 3 <= max ? max : lead;
	if (c >= 0xc0)
		return lead + 2 <= max ? max : lead;
	return max;
}

/* Whether text_escape writes the one-byte character c as \xHH. */
static bool control(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

size_t text_escape(char *out, size_t size, const char *s, size_t len, bool one_line)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t written = 0, total = 0;
	bool full = false;

	for (size_t at = 0; at < len;) {
		size_t n = char_len(u + at, len - at);
		char unit[5];
		size_t unit_len;

		if (n == 0 || (one_line && n == 1 && control(u[at]))) {
			unit_len = (size_t)snprintf(unit, sizeof(unit), "\\x%02x", u[at]);
			n = 1;
		} else if (u[at] == '\\') {
			unit_len = (size_t)snprintf(unit, sizeof(unit), "\\\\");
		} else {
			unit_len = n;
			memcpy(unit, u + at, n);
		}
		at += n;
		total += unit_len;
		/* Whole units only, so the copy never ends inside a character or an escape. */
		full = full || written + unit_len >= size;
		if (!full) {
			memcpy(out + written, unit, unit_len);
			written += unit_len;
		}
	}
	out[written] = '\0';
	return total;
}
