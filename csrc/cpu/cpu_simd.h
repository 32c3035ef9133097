// CPU kernels are built portable (no -march) yet run AVX2 code where the machine has it:
// GCC emits a baseline and an AVX2 clone of each function marked SC_CPU_CLONES and picks one at
// load time. Elsewhere the macro is empty.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SC_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SC_CPU_CLONES
#endif

// Kernels written on generic vectors of a chosen width run Body<bytes>::run(args...) compiled
// once per x86 level (run_widest): a vector wider than the target's registers is not split into
// registers but goes through the stack (GCC 12's AVX2 code for a 64-byte accumulator runs ~7x
// slower than 32-byte ones), so each level takes vectors of its own register width.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SC_X86_LEVELS 1
#endif

#include <algorithm>
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

// The vector width (bytes) run_widest uses on this CPU: 64 with AVX-512F, 32 with AVX2, else
// 16; SPIKECLIP_CPU_VECTOR_BYTES (16, 32 or 64, read once) lowers it, never past the CPU's.
inline int cpu_vector_bytes() {
  static const int bytes = [] {
#ifdef SC_X86_LEVELS
    int widest = __builtin_cpu_supports("avx512f") ? 64 : __builtin_cpu_supports("avx2") ? 32 : 16;
#else
    int widest = 16;
#endif
    const char* env = std::getenv("SPIKECLIP_CPU_VECTOR_BYTES");
    const int asked = env ? std::atoi(env) : widest;
    return asked == 16 || asked == 32 || asked == 64 ? std::min(asked, widest) : widest;
  }();
  return bytes;
}

#ifdef SC_X86_LEVELS
template <template <int> class Body, typename... A>
__attribute__((target("avx512f"))) void run_vec64(A... a) {
  Body<64>::run(a...);
}
template <template <int> class Body, typename... A>
__attribute__((target("avx2"))) void run_vec32(A... a) {
  Body<32>::run(a...);
}
#endif

// Body<cpu_vector_bytes()>::run(args...), compiled for that level's instructions.
template <template <int> class Body, typename... A>
void run_widest(A... a) {
#ifdef SC_X86_LEVELS
  switch (cpu_vector_bytes()) {
    case 64: return run_vec64<Body>(a...);
    case 32: return run_vec32<Body>(a...);
  }
#endif
  Body<16>::run(a...);
}

inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

}  // namespace spikeclip
