// Linux facilities that Swift cannot call directly: prctl is variadic in C,
// pipe2 is declared only under _GNU_SOURCE, and shared-memory atomics need the compiler.
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

// Sequentially consistent atomics on 64-bit words, for headers that several processes
// share (weights in a node's shared memory). Swift's own atomics need a package.
#include <stdint.h>
static inline uint64_t kat_atomic_load(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void kat_atomic_store(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t kat_atomic_add(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline uint64_t kat_atomic_sub(uint64_t *p, uint64_t v) { return __atomic_sub_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline int kat_atomic_cas(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
