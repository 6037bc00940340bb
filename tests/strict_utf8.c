// SPDX-License-Identifier: MIT
#include "strict_utf8.h"

/* Unicode 15, table 3-7: the second byte's range depends on the first; the others are
 * 0x80-0xbf. */
bool strict_utf8(const char *text)
{
	const unsigned char *s = (const unsigned char *)text;

	while (*s) {
		unsigned char lo = 0x80, hi = 0xbf;
		int more;

		if (s[0] < 0x80) {
			s++;
			continue;
		}
		if (s[0] >= 0xc2 && s[0] <= 0xdf)
			more = 1;
		else if (s[0] >= 0xe0 && s[0] <= 0xef)
			more = 2;
		else if (s[0] >= 0xf0 && s[0] <= 0xf4)
			more = 3;
		else
			return false;
		if (s[0] == 0xe0)
			lo = 0xa0;
		else if (s[0] == 0xed)
			hi = 0x9f;
		else if (s[0] == 0xf0)
			lo = 0x90;
		else if (s[0] == 0xf4)
			hi = 0x8f;
		if (s[1] < lo || s[1] > hi)
			return false;
		for (int i = 2; i <= more; i++)
			if ((s[i] & 0xc0) != 0x80)
				return false;
		s += more + 1;
	}
	return true;
}
