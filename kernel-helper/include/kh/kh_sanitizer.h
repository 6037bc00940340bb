/* SPDX-License-Identifier: MIT */
/*
 * KH_ASAN: 1 where AddressSanitizer instruments the build (GCC says so by a macro, clang by a
 * feature test), else 0. Code that carves many objects out of one allocation reads it: the
 * sanitizer knows only whole allocations, so such code marks the objects' bounds itself or
 * gives each its own allocation there, and overruns and uses after free are still reported.
 */
#ifndef KH_SANITIZER_H
#define KH_SANITIZER_H

#if defined(__SANITIZE_ADDRESS__)
#define KH_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KH_ASAN 1
#endif
#endif
#ifndef KH_ASAN
#define KH_ASAN 0
#endif

#endif
