/* deadline: absolute times for pthread_cond_timedwait.
 *
 * A condition variable created with default attributes measures its
 * timeout against CLOCK_REALTIME; deadline_after_ms gives the absolute
 * time ms milliseconds from now on that clock, normalised (tv_nsec below
 * one second), for such a wait. */
#ifndef PIPEPS_DEADLINE_H
#define PIPEPS_DEADLINE_H

#include <time.h>

/* CLOCK_REALTIME now + ms (ms >= 0). */
struct timespec deadline_after_ms(int ms);

#endif
