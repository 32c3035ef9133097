// Row packing of 0/1 spikes, 8 per byte (bit j of byte b = x[8 b + j]), shared by the packing
// ops and the attention kernels that save or read packed spikes. Free of torch headers.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__SSE2__) && !defined(__CUDACC__)
#include <emmintrin.h>
#endif
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

#include "lif_math.h"

namespace spikeclip {

SC_INLINE int64_t packed_row_bytes(int64_t n) { return (n + 7) / 8; }

// Eight 0/1 values as the bits of one byte; *bad is set if one is neither 0 nor 1.
template <typename S>
SC_INLINE uint8_t pack8(const S* x, int64_t len, bool* bad) {
#if defined(__SSE2__) && !defined(__CUDACC__)
  if constexpr (std::is_same_v<S, float>) {
    if (len == 8) {  // two compares and movemasks give the byte directly
      const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f);
      const __m128 a = _mm_loadu_ps(x), b = _mm_loadu_ps(x + 4);
      const int nz = _mm_movemask_ps(_mm_cmpneq_ps(a, zero)) |
                     (_mm_movemask_ps(_mm_cmpneq_ps(b, zero)) << 4);
      const int ok = _mm_movemask_ps(_mm_or_ps(_mm_cmpeq_ps(a, zero), _mm_cmpeq_ps(a, one))) &
                     _mm_movemask_ps(_mm_or_ps(_mm_cmpeq_ps(b, zero), _mm_cmpeq_ps(b, one)));
      *bad |= ok != 0xF;
      return static_cast<uint8_t>(nz);
    }
  }
#endif
  uint8_t byte = 0;
  for (int64_t j = 0; j < len; ++j) {
    const float v = static_cast<float>(x[j]);
    *bad |= (v != 0.0f) & (v != 1.0f);
    byte |= static_cast<uint8_t>(v != 0.0f) << j;
  }
  return byte;
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__CUDACC__)
#define SC_PACK_AVX2 1
// pack_row of floats with AVX2, for CPUs that have it (built portable, called at run time):
// a byte per compare and movemask; the 0/1 check stays in a register for the whole row.
__attribute__((target("avx2"))) inline bool pack_row_avx2(const float* x, uint8_t* bits,
                                                          int64_t n) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
  __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  int64_t b = 0;
  for (; b * 8 + 8 <= n; ++b) {
    const __m256 v = _mm256_loadu_ps(x + b * 8);
    bits[b] = static_cast<uint8_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ)));
    ok = _mm256_and_ps(ok, _mm256_or_ps(_mm256_cmp_ps(v, zero, _CMP_EQ_OQ),
                                        _mm256_cmp_ps(v, one, _CMP_EQ_OQ)));
  }
  bool bad = _mm256_movemask_ps(ok) != 0xFF;
  if (b * 8 < n) bits[b] = pack8(x + b * 8, n - b * 8, &bad);
  return !bad;
}

inline bool cpu_has_avx2() {
  static const bool yes = (__builtin_cpu_init(), __builtin_cpu_supports("avx2"));
  return yes;
}
#endif

// Packs one row of n values; returns false if a value is neither 0 nor 1.
template <typename S>
SC_INLINE bool pack_row(const S* x, uint8_t* bits, int64_t n) {
#if defined(SC_PACK_AVX2)
  if constexpr (std::is_same_v<S, float>) {
    if (cpu_has_avx2()) return pack_row_avx2(x, bits, n);
  }
#endif
  bool bad = false;
  for (int64_t b = 0; b * 8 < n; ++b) bits[b] = pack8(x + b * 8, n - b * 8 < 8 ? n - b * 8 : 8, &bad);
  return !bad;
}

// Byte -> eight bytes holding its bits as 0/1, little-endian (a 2 KiB table).
struct BitSpread {
  uint64_t word[256];
  constexpr BitSpread() : word() {
    for (int v = 0; v < 256; ++v) {
      uint64_t w = 0;
      for (int j = 0; j < 8; ++j) w |= static_cast<uint64_t>((v >> j) & 1) << (8 * j);
      word[v] = w;
    }
  }
};
inline constexpr BitSpread kBitSpread{};

template <typename S>
SC_INLINE void unpack_row(const uint8_t* bits, S* x, int64_t n) {
  int64_t b = 0;
#if defined(__GNUC__) && !defined(__CUDACC__)
  if constexpr (std::is_same_v<S, float>) {  // a byte's 8 floats at once: 1.0f where its bit is set
    typedef int32_t Lanes8 __attribute__((vector_size(32)));
    const Lanes8 lane_bit = {1, 2, 4, 8, 16, 32, 64, 128};
    const Lanes8 one = Lanes8{} + 0x3F800000;
    for (; b * 8 + 8 <= n; ++b) {
      const Lanes8 x8 = (((Lanes8{} + bits[b]) & lane_bit) != 0) & one;
      std::memcpy(x + b * 8, &x8, sizeof(x8));
    }
  }
#endif
  uint8_t tmp[8];
  for (; b * 8 < n; ++b) {
    std::memcpy(tmp, &kBitSpread.word[bits[b]], 8);
    const int64_t len = n - b * 8 < 8 ? n - b * 8 : 8;
    if (len == 8) {
      for (int j = 0; j < 8; ++j) x[b * 8 + j] = static_cast<S>(static_cast<float>(tmp[j]));
    } else {
      for (int64_t j = 0; j < len; ++j) x[b * 8 + j] = static_cast<S>(static_cast<float>(tmp[j]));
    }
  }
}

#if !defined(__CUDACC__)
// The len (1 to 7) bytes at p as a little-endian word, by two overlapping loads that stay inside
// [p, p + len): SpikeCLIP's rows of 48 spikes are 6 bytes, whose byte-by-byte assembly took ~4%
// of SSA's CPU backward.
SC_INLINE uint64_t load_short_word(const uint8_t* p, int64_t len) {
  if (len >= 4) {
    uint32_t lo, hi;
    std::memcpy(&lo, p, 4);
    std::memcpy(&hi, p + len - 4, 4);
    return lo | (static_cast<uint64_t>(hi) << (8 * (len - 4)));
  }
  if (len >= 2) {
    uint16_t lo, hi;
    std::memcpy(&lo, p, 2);
    std::memcpy(&hi, p + len - 2, 2);
    return lo | (static_cast<uint64_t>(hi) << (8 * (len - 2)));
  }
  return p[0];
}

// Bits of the last byte of a packed row of n spikes that hold spikes (the rest are padding).
SC_INLINE unsigned last_byte_mask(int64_t n) { return n % 8 ? (1u << (n % 8)) - 1u : 0xFFu; }

// Calls fn(j) for every set bit j < n of a packed row of n spikes: the spikes' indices, with no
// branch per zero (cheaper than testing each of n values at typical firing rates).
// Reads the row 8 bytes at a time (bit j of byte b is bit 8 b + j of the little-endian word).
// Padding bits past n are masked off whatever they hold: bits packed from a wider row must not
// send fn past the row (the callers index buffers of n rows by j).
template <typename Fn>
SC_INLINE void for_each_spike(const uint8_t* bits, int64_t n, Fn&& fn) {
  const int64_t nb = packed_row_bytes(n);
  int64_t b = 0;
  for (; (b + 8) * 8 <= n; b += 8) {  // whole words of spikes
    uint64_t w;
    std::memcpy(&w, bits + b, 8);
    for (; w; w &= w - 1) fn(b * 8 + __builtin_ctzll(w));
  }
  if (b < nb) {  // 1 to 8 bytes holding the last n - 8 b (< 64) spikes
    uint64_t w;
    if (nb - b == 8)
      std::memcpy(&w, bits + b, 8);
    else
      w = load_short_word(bits + b, nb - b);
    w &= (uint64_t{1} << (n - b * 8)) - 1;
    for (; w; w &= w - 1) fn(b * 8 + __builtin_ctzll(w));
  }
}

#endif

#if defined(SPIKECLIP_WITH_CUDA) || defined(__CUDACC__)
// csrc/cuda/spike_pack_kernels.cu: rows of n values <-> rows of ceil(n / 8) bytes. `dtype` is a
// DType (lif_launch.h) code; *not_spikes (device) is set when a value is neither 0 nor 1.
enum class DType : int;
void pack_spikes_cuda(DType dtype, const void* x, uint8_t* bits, int64_t rows, int64_t n,
                      int* not_spikes, void* stream);
void unpack_spikes_cuda(DType dtype, const uint8_t* bits, void* x, int64_t rows, int64_t n,
                        void* stream);
#endif

}  // namespace spikeclip
