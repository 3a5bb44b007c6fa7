// Runs of the noise stream on the CPU, handed to a sink in L1-sized pieces.
//
// The normals themselves come from the generator chosen at run time for this CPU (normals.h);
// this header, like the rest of the extension, is compiled for baseline x86-64.
#pragma once

#include "normals.h"

namespace corp {
namespace cpu {

// Batches generated per call of the generator: 256 normals (1 KiB), small enough for L1 and
// large enough that the indirect call costs nothing measurable.
constexpr int64_t kPieceBatches = 4;
constexpr int64_t kPieceNormals = kPieceBatches * kBatchNormals;

// Calls sink(dst_index, normals, count) for consecutive pieces of the stream positions
// [position, position + n); normals[0] is the normal at stream position `position + dst_index`.
// Pieces are at most kPieceNormals long and live in a stack buffer. For the dtypes without a
// kernel of their own in NoiseKernels (the sink then runs as baseline code).
template <class Sink>
inline void for_each_noise_piece(uint64_t position, int64_t n, uint32_t k0, uint32_t k1,
                                 Sink&& sink) {
  alignas(64) float buf[kPieceNormals];
  const NormalsFn generate = active_normals();
  uint64_t counter = position >> 2;
  int64_t skip = static_cast<int64_t>(position & 3u);  // normals of the first counter before us
  int64_t done = 0;
  while (done < n) {
    // Only as many batches as this run still needs: short runs stay cheap.
    const int64_t needed = skip + (n - done);
    int64_t batches = (needed + kBatchNormals - 1) / kBatchNormals;
    if (batches > kPieceBatches) batches = kPieceBatches;
    generate(counter, batches, k0, k1, buf);
    int64_t count = batches * kBatchNormals - skip;
    if (count > n - done) count = n - done;
    sink(done, buf + skip, count);
    done += count;
    skip = 0;
    counter += static_cast<uint64_t>(batches) * kLanes;
  }
}

// out[i] = alpha * noise(position + i), or out[i] += alpha * noise(position + i) when accumulating.
inline void noise_into(uint64_t position, int64_t n, uint32_t k0, uint32_t k1, float alpha,
                       bool accumulate, float* out) {
  active_kernels().noise_into(position, n, k0, k1, alpha, accumulate, out);
}

inline void split_seed(uint64_t seed, uint32_t* k0, uint32_t* k1) {
  *k0 = static_cast<uint32_t>(seed);
  *k1 = static_cast<uint32_t>(seed >> 32);
}

}  // namespace cpu
}  // namespace corp
