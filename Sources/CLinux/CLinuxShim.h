// Linux process controls that Swift cannot call directly: prctl is variadic in C, and
// pipe2 is declared only under _GNU_SOURCE.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

/// Asks the kernel to send `sig` to this process when its parent dies.
static inline int kat_set_parent_death_signal(int sig) { return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0); }

/// Makes this process the reaper of its orphaned descendants (they are re-parented to it).
static inline int kat_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1UL, 0, 0, 0); }

/// A pipe whose two ends are closed on exec.
static inline int kat_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
