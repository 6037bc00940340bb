// SPDX-License-Identifier: MIT
#include "daemon_lock.h"

#include <pthread.h>
#include <stdint.h>

#include "fdstore.h"

/* A ticket lock: holders of the daemon lock take turns in the order they asked, so that a
 * thread letting go and asking again at once (a costly call's slices) cannot keep another
 * waiting; map paths share it while no holder has asked. */
static pthread_mutex_t guard = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn = PTHREAD_COND_INITIALIZER;
static uint64_t next_ticket, serving; /* equal: nobody holds the daemon lock or waits for it */
static unsigned sharers;	      /* map paths running */

void daemon_lock(void)
{
	uint64_t ticket;

	(void)pthread_mutex_lock(&guard);
	ticket = __atomic_fetch_add(&next_ticket, 1, __ATOMIC_RELAXED);
	while (ticket != serving || sharers)
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
	serving++;
	(void)pthread_cond_broadcast(&turn);
	(void)pthread_mutex_unlock(&guard);
}

void map_path_lock(void)
{
	(void)pthread_mutex_lock(&guard);
	while (next_ticket != serving)
		(void)pthread_cond_wait(&turn, &guard);
	sharers++;
	(void)pthread_mutex_unlock(&guard);
}

void map_path_unlock(void)
{
	(void)pthread_mutex_lock(&guard);
	if (!--sharers)
		(void)pthread_cond_broadcast(&turn);
	(void)pthread_mutex_unlock(&guard);
}
