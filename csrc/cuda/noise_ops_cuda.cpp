// Registers the CUDA kernels as torch ops in the `corp_cuda` namespace (built only where torch has
// CUDA; see setup.py). Python validates arguments; seeds/offsets arrive as int64 bits.
//
// Every op switches to the device of its tensors first (a tensor on a GPU other than the current
// one would otherwise be written by a kernel launched on the wrong device, leaving the output
// uninitialised), and checks for a launch error right after the launch, so a failure is reported
// by the op that caused it rather than by whatever synchronizes next.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "noise_kernels.h"

namespace {

void noise_fill_(at::Tensor out, int64_t seed, int64_t offset, double alpha, bool accumulate) {
  TORCH_CHECK(out.is_cuda() && out.is_contiguous(), "noise_fill_: out must be contiguous CUDA");
  const c10::cuda::CUDAGuard device_guard(out.device());
  auto stream = c10::cuda::getCurrentCUDAStream(out.device().index()).stream();
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
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor weighted_noise_sum(at::IntArrayRef shape, const at::Tensor& seeds,
                              const at::Tensor& weights, int64_t offset, at::Device device) {
  TORCH_CHECK(device.is_cuda(), "weighted_noise_sum: device must be CUDA, got ", device);
  TORCH_CHECK(seeds.dim() == 1 && seeds.numel() > 0 && weights.numel() == seeds.numel(),
              "weighted_noise_sum: seeds and weights must be 1-D of one length >= 1, got ",
              seeds.sizes(), " and ", weights.sizes());
  const c10::cuda::CUDAGuard device_guard(device);
  auto out = at::empty(shape, at::TensorOptions().dtype(at::kFloat).device(device));
  auto s = seeds.to(at::TensorOptions().dtype(at::kLong).device(device)).contiguous();
  auto w = weights.to(at::TensorOptions().dtype(at::kFloat).device(device)).contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  corp::cuda::weighted_noise_sum_f32(out.data_ptr<float>(), out.numel(),
                                     reinterpret_cast<const uint64_t*>(s.data_ptr<int64_t>()),
                                     w.data_ptr<float>(), s.numel(), static_cast<uint64_t>(offset),
                                     stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
