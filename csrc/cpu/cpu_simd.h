// CPU kernels are built portable (no -march) yet run AVX2 code where the machine has it:
// GCC emits a baseline and an AVX2 clone of each function marked SC_CPU_CLONES and picks one at
// load time. Elsewhere the macro is empty.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SC_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SC_CPU_CLONES
#endif
