// Registers the CUDA kernels as torch ops in the `corp_cuda` namespace (built only where torch has
// CUDA; see setup.py). Python validates arguments; seeds/offsets arrive as int64 bits.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include "noise_kernels.h"

namespace {

void noise_fill_(at::Tensor out, int64_t seed, int64_t offset, double alpha, bool accumulate) {
  TORCH_CHECK(out.is_cuda() && out.is_contiguous(), "noise_fill_: out must be contiguous CUDA");
  auto stream = at::cuda::getCurrentCUDAStream(out.device().index()).stream();
  const auto s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  const float a = static_cast<float>(alpha);
  switch (out.scalar_type()) {
    case at::kFloat:
      corp::cuda::noise_fill_f32(out.data_ptr<float>(), out.numel(), s, o, a, accumulate, stream);
      break;
    case at::kHalf:
      corp::cuda::noise_fill_f16(out.data_ptr(), out.numel(), s, o, a, accumulate, stream);
      break;
    case at::kBFloat16:
      corp::cuda::noise_fill_bf16(out.data_ptr(), out.numel(), s, o, a, accumulate, stream);
      break;
    default:
      TORCH_CHECK(false, "noise_fill_: unsupported dtype ", out.scalar_type());
  }
}

at::Tensor weighted_noise_sum(at::IntArrayRef shape, const at::Tensor& seeds,
                              const at::Tensor& weights, int64_t offset, at::Device device) {
  auto out = at::empty(shape, at::TensorOptions().dtype(at::kFloat).device(device));
  auto s = seeds.to(at::TensorOptions().dtype(at::kLong).device(device)).contiguous();
  auto w = weights.to(at::TensorOptions().dtype(at::kFloat).device(device)).contiguous();
  auto stream = at::cuda::getCurrentCUDAStream(device.index()).stream();
  corp::cuda::weighted_noise_sum_f32(out.data_ptr<float>(), out.numel(),
                                     reinterpret_cast<const uint64_t*>(s.data_ptr<int64_t>()),
                                     w.data_ptr<float>(), s.numel(), static_cast<uint64_t>(offset),
                                     stream);
  return out;
}

}  // namespace

TORCH_LIBRARY(corp_cuda, m) {
  m.def("noise_fill_(Tensor(a!) out, int seed, int offset, float alpha, bool accumulate) -> ()");
  m.def("weighted_noise_sum(int[] shape, Tensor seeds, Tensor weights, int offset, Device device)"
        " -> Tensor");
  m.impl("noise_fill_", c10::DispatchKey::CUDA, &noise_fill_);
  m.impl("weighted_noise_sum", c10::DispatchKey::CompositeExplicitAutograd, &weighted_noise_sum);
}
