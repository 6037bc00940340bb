/* SPDX-License-Identifier: MIT */
/*
 * A process's threads and their time on a CPU, as iommud's benchmarks read a daemon's: its
 * event-loop threads serve the requests, its main thread accepts, so the process's time is the
 * sum over /proc/PID/task. The scheduler's count (schedstat) is exact to the nanosecond where
 * /proc/PID/stat counts clock ticks, too coarse for the few hundred requests a figure spans,
 * and a loaded machine's waiting does not inflate it as it does wall time.
 */
#ifndef IOMMUD_BENCH_THREADS_H
#define IOMMUD_BENCH_THREADS_H

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>

/* Calls fn with each thread of process pid; -errno when its threads cannot be listed. */
static inline int each_thread(pid_t pid, void (*fn)(pid_t tid, void *arg), void *arg)
{
	char path[64];
	struct dirent *task;
	DIR *tasks;

	(void)snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	if (!(tasks = opendir(path)))
		return -errno;
	while ((task = readdir(tasks)))
		if (task->d_name[0] != '.')
			fn((pid_t)atoi(task->d_name), arg);
	(void)closedir(tasks);
	return 0;
}

/* A thread's time on a CPU; 0 for a thread gone meanwhile, which took its time with it (none
 * of the daemon's go). */
static inline uint64_t thread_cpu_ns_of(pid_t tid)
{
	char path[64];
	unsigned long long ns = 0;
	FILE *f;

	(void)snprintf(path, sizeof(path), "/proc/%d/schedstat", (int)tid);
	if (!(f = fopen(path, "re")))
		return 0;
	if (fscanf(f, "%llu", &ns) != 1)
		ns = 0;
	(void)fclose(f);
	return ns;
}

static inline void bench_add_cpu_ns(pid_t tid, void *sum)
{
	*(uint64_t *)sum += thread_cpu_ns_of(tid);
}

/* The time on a CPU of every thread of process pid, in *ret_ns; -errno as each_thread. */
static inline int process_cpu_ns(pid_t pid, uint64_t *ret_ns)
{
	uint64_t sum = 0;
	int rc = each_thread(pid, bench_add_cpu_ns, &sum);

	if (rc < 0)
		return rc;
	*ret_ns = sum;
	return 0;
}

#endif
