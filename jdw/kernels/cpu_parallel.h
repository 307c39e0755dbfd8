// Work sharing for jdw's XLA:CPU handlers: chunks of work run on the calling thread and XLA's
// intra-op thread pool (included by cpu_depthwise.cc and cpu_batch_norm.cc).

#ifndef JDW_KERNELS_CPU_PARALLEL_H_
#define JDW_KERNELS_CPU_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace jdw {
namespace {

namespace ffi = xla::ffi;

// A spinning thread's pause: on x86 it lets the core's other work run and saves power.
inline void Pause() {
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// Runs body(chunk) for chunk in [0, chunks) on the calling thread and the pool. The caller claims
// chunks too and waits only for chunks another thread has claimed, so a pool that is busy (or has
// no free thread) delays nothing and cannot deadlock; tasks that start late find nothing to do.
//
// The caller's wait spins before it sleeps. When it runs out of chunks, the ones left are running
// on other threads and end within about a chunk's time; a thread put to sleep on a condition
// variable wakes 40-50 us after it is notified (measured here), which is a sixth of a 0.3 ms
// layer. So it spins (with pause) for up to twice its own chunks' average time, at least
// kMinSpin and at most kMaxSpin, and only then sleeps.
template <typename Body>
void ParallelFor(ffi::ThreadPool& pool, int64_t chunks, const Body& body) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kMinSpin = std::chrono::microseconds(100), kMaxSpin = std::chrono::microseconds(2000);
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto state = std::make_shared<State>();
  auto work = [state, chunks, &body] {
    int64_t mine = 0;
    for (int64_t c; (c = state->next.fetch_add(1)) < chunks; ++mine) body(c);
    return mine;
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, chunks - 1);
  for (int64_t h = 0; h < helpers; ++h) {
    // A helper that starts after the caller returned must not touch `body`: it then finds every
    // chunk claimed (state->next >= chunks) before it would call it.
    pool.Schedule([state, chunks, work] {
      if (state->next.load() >= chunks) return;
      const int64_t mine = work();
      if (mine == 0 || state->done.fetch_add(mine) + mine != chunks) return;
      std::lock_guard<std::mutex> lock(state->mutex);  // (the caller may be asleep)
      state->finished.notify_all();
    });
  }
  const Clock::time_point start = Clock::now();
  const int64_t mine = work();
  if (state->done.fetch_add(mine) + mine == chunks) return;
  const Clock::time_point end = Clock::now();
  const Clock::duration per_chunk = (end - start) / std::max<int64_t>(1, mine);
  const Clock::duration spin = std::min<Clock::duration>(kMaxSpin, std::max<Clock::duration>(kMinSpin, 2 * per_chunk));
  while (state->done.load() < chunks && Clock::now() - end < spin) Pause();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] { return state->done.load() == chunks; });
}

// Chunks of work to share out: about four per thread, so that a thread slowed by other work
// delays the call by a fraction of its share.
int64_t Workers(ffi::ThreadPool& pool) { return 4 * std::max<int64_t>(1, pool.num_threads()); }

}  // namespace
}  // namespace jdw

#endif  // JDW_KERNELS_CPU_PARALLEL_H_
