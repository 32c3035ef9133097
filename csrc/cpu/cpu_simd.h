// CPU kernels are built portable (no -march) yet run AVX2 code where the machine has it:
// GCC emits a baseline and an AVX2 clone of each function marked SC_CPU_CLONES and picks one at
// load time. Elsewhere the macro is empty.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SC_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SC_CPU_CLONES
#endif

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace spikeclip {

// Outputs at least this large go around the caches (they would not stay there anyway):
// 16 MiB, or SPIKECLIP_STREAM_BYTES from the environment (read once; -1 turns streaming off).
inline int64_t stream_threshold_bytes() {
  static const int64_t bytes = [] {
    const char* env = std::getenv("SPIKECLIP_STREAM_BYTES");
    const long long v = env ? std::atoll(env) : (16LL << 20);
    return v < 0 ? INT64_MAX : static_cast<int64_t>(v);
  }();
  return bytes;
}

// Writes n values from a small (L1-resident) buffer to their destination. With `stream` (an
// output larger than the caches) float goes out through non-temporal stores: they skip the
// read-for-ownership of every destination line, a third of a write-once kernel's memory
// traffic (memcpy does the same for large copies). Smaller outputs stay cached for the next
// layer. Call stream_fence() before the data is handed over.
template <typename S>
inline void stream_out(S* dst, const S* src, int64_t n, bool stream) {
#if defined(__SSE2__)
  if (std::is_same_v<S, float> && stream) {
    int64_t i = 0;
    for (; i < n && (reinterpret_cast<uintptr_t>(dst + i) & 15) != 0; ++i) dst[i] = src[i];
    for (; i + 4 <= n; i += 4)
      _mm_stream_ps(reinterpret_cast<float*>(dst + i), _mm_loadu_ps(reinterpret_cast<const float*>(src + i)));
    for (; i < n; ++i) dst[i] = src[i];
    return;
  }
#endif
  std::memcpy(dst, src, n * sizeof(S));
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace spikeclip
