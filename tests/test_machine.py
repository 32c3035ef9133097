"""spikeclip.bench.machine.cpu_name: results files tell an AVX2 machine from an AVX-512 one
of the same model name."""

from spikeclip.bench.machine import cpu_name

EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 {}\n\n"


def test_cpu_name_says_the_widest_vector_extension():
    assert cpu_name(EPYC.format("")) == "AMD EPYC (AVX2)"
    assert cpu_name(EPYC.format("avx512f avx512bw")) == "AMD EPYC (AVX-512)"
    assert cpu_name("model name\t: Some CPU\nflags\t\t: fpu sse2\n") == "Some CPU"


def test_cpu_name_without_cpuinfo_is_still_a_name():
    assert isinstance(cpu_name(""), str) and cpu_name("") != ""
    assert cpu_name() != ""
