// SPDX-License-Identifier: MIT
#include "daemon_lock.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "fdstore.h"

/* A ticket lock: holders of the daemon lock take turns in the order they asked, so that a
 * thread letting go and asking again at once (a costly call's slices) cannot keep another
 * waiting; map paths share it while no holder has asked. Holders and map paths that must wait
 * do so on guard and turn. A map path that finds nobody asking only counts itself in sharers,
 * without guard: two map paths a request, on every loop thread, would otherwise all take the
 * one mutex. Every field is read and written atomically, as that path reads them without
 * guard; the order of a sharer's count and of a holder's ticket (each written, then the
 * other read, all sequentially consistent) is what keeps either from missing the other. */
static pthread_mutex_t guard = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn = PTHREAD_COND_INITIALIZER;
static uint64_t next_ticket, serving; /* equal: nobody holds the daemon lock or waits for it */
static unsigned sharers;	      /* map paths running */

static bool asked(void)
{
	return __atomic_load_n(&next_ticket, __ATOMIC_SEQ_CST) !=
	       __atomic_load_n(&serving, __ATOMIC_SEQ_CST);
}

void daemon_lock(void)
{
	uint64_t ticket;

	(void)pthread_mutex_lock(&guard);
	ticket = __atomic_fetch_add(&next_ticket, 1, __ATOMIC_SEQ_CST);
	while (ticket != __atomic_load_n(&serving, __ATOMIC_SEQ_CST) ||
	       __atomic_load_n(&sharers, __ATOMIC_SEQ_CST))
		(void)pthread_cond_wait(&turn, &guard);
	(void)pthread_mutex_unlock(&guard);
}

uint64_t daemon_lock_asked(void)
{
	return __atomic_load_n(&next_ticket, __ATOMIC_RELAXED);
}

void daemon_unlock(void)
{
	fdstore_sync();
	(void)pthread_mutex_lock(&guard);
	__atomic_fetch_add(&serving, 1, __ATOMIC_SEQ_CST);
	(void)pthread_cond_broadcast(&turn);
	(void)pthread_mutex_unlock(&guard);
}

void map_path_lock(void)
{
	if (!asked()) {
		__atomic_fetch_add(&sharers, 1, __ATOMIC_SEQ_CST);
		if (!asked())
			return;
		/* A holder asked meanwhile and may have seen the count: it goes first. */
		map_path_unlock();
	}
	(void)pthread_mutex_lock(&guard);
	while (asked())
		(void)pthread_cond_wait(&turn, &guard);
	__atomic_fetch_add(&sharers, 1, __ATOMIC_SEQ_CST);
	(void)pthread_mutex_unlock(&guard);
}

void map_path_unlock(void)
{
	/* A holder that asked saw this map path's count, or this sees its ticket: the last map
	 * path out then wakes it, under guard, so that the wake-up cannot come between its look
	 * at the count and its wait. */
	if (__atomic_sub_fetch(&sharers, 1, __ATOMIC_SEQ_CST) || !asked())
		return;
	(void)pthread_mutex_lock(&guard);
	(void)pthread_cond_broadcast(&turn);
	(void)pthread_mutex_unlock(&guard);
}
