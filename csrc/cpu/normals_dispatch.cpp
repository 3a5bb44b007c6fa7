// Picks the noise kernels for this CPU once, at first use. Baseline code only.
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <string>

#include "normals.h"

namespace corp {
namespace cpu {
namespace {

bool cpu_has_avx2() {
#if defined(__GNUC__) && defined(__x86_64__)
  // libgcc's check also requires the OS to save the YMM registers (XGETBV), not only the CPUID bit.
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

bool avx2_usable() { return kAvx2KernelsOrNull != nullptr && cpu_has_avx2(); }

const char* no_avx2_reason() {
  return kAvx2KernelsOrNull == nullptr ? "portable (the AVX2 path was not compiled)"
                                       : "portable (this CPU has no AVX2)";
}

// Constant-initialized, so there is no static-initialization-order question.
std::atomic<const NoiseKernels*> g_kernels{nullptr};
std::string g_description;  // written under the first-use once-guard, or by set_isa (tests)

const NoiseKernels* choose_from_environment() {
  const char* requested = getenv("CORP_KERNELS_CPU_ISA");
  const std::string want = requested ? requested : "auto";
  if (want == "portable") {
    g_description = "portable (CORP_KERNELS_CPU_ISA=portable)";
    return &kPortableKernels;
  }
  if (want != "avx2" && want != "auto") {
    // A typo must not stop the import; take the path that runs everywhere and say why.
    g_description = "portable (unknown CORP_KERNELS_CPU_ISA=" + want + "; use portable|avx2|auto)";
    return &kPortableKernels;
  }
  if (avx2_usable()) {
    g_description = want == "avx2" ? "avx2 (CORP_KERNELS_CPU_ISA=avx2)" : "avx2";
    return kAvx2KernelsOrNull;
  }
  g_description = no_avx2_reason();
  return &kPortableKernels;
}

const NoiseKernels* initialize_once() {
  static const NoiseKernels* const chosen = choose_from_environment();  // thread-safe once
  const NoiseKernels* expected = nullptr;
  g_kernels.compare_exchange_strong(expected, chosen);
  return g_kernels.load(std::memory_order_acquire);
}

}  // namespace

const NoiseKernels& active_kernels() {
  const NoiseKernels* k = g_kernels.load(std::memory_order_acquire);
  return *(k != nullptr ? k : initialize_once());
}

const char* active_isa_description() {
  active_kernels();
  return g_description.c_str();
}

bool set_isa(const char* name) {
  active_kernels();
  if (strcmp(name, "portable") == 0) {
    g_kernels.store(&kPortableKernels, std::memory_order_release);
    g_description = "portable (set at run time)";
    return true;
  }
  if (strcmp(name, "avx2") == 0 && avx2_usable()) {
    g_kernels.store(kAvx2KernelsOrNull, std::memory_order_release);
    g_description = "avx2 (set at run time)";
    return true;
  }
  if (strcmp(name, "auto") == 0) {
    const bool avx2 = avx2_usable();
    g_kernels.store(avx2 ? kAvx2KernelsOrNull : &kPortableKernels, std::memory_order_release);
    g_description = avx2 ? "avx2" : no_avx2_reason();
    return true;
  }
  return false;
}

}  // namespace cpu
}  // namespace corp
