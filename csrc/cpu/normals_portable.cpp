// The generator for baseline x86-64 (SSE2) and every other architecture.
#include "normals_kernel.h"

namespace corp {
namespace cpu {

const NoiseKernels kPortableKernels = CORP_NOISE_KERNELS("portable");

}  // namespace cpu
}  // namespace corp
