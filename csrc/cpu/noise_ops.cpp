// CPU (OpenMP) kernels of corp-kernels, registered as torch ops in the `corp_cpu` namespace.
//
// Python validates every argument (corp_kernels/_validation.py) with messages for users; the ops
// here still check everything they read (shapes, lengths of seeds and sigmas, dtypes), so calling
// torch.ops.corp_cpu.* directly raises an error instead of reading out of bounds or dividing by
// zero. Seeds and stream positions arrive as int64 carrying the bits of an unsigned 64-bit value.
//
// Every op gives bitwise the same result for any thread count: work is split by shape, never by
// the number of threads, and reductions add their parts in a fixed order (FixedOrderSlots).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "../philox.h"
#include "noise_stream.h"

namespace corp {
namespace cpu {
namespace {

// Rows of W per panel: the panel of W + sigma * eps is built in this many floats (128 KiB) so it
// stays in L2 while the BLAS multiplies it.
constexpr int64_t kPanelFloats = 32768;
// Elements per parallel chunk of an elementwise op.
constexpr int64_t kChunk = 16384;

// at::parallel_for runs its body on OpenMP workers without the caller's thread-local state: there
// grad mode is on and inference mode off whatever the caller set, so an ATen op in the body on a
// tensor that requires grad (x under autograd) or an inference tensor (y made in inference mode)
// is refused. Bodies that call ATen ops take the caller's state with them.
template <class F>
void parallel_for_with_state(int64_t begin, int64_t end, int64_t grain, const F& body) {
  const at::ThreadLocalState state;
  at::parallel_for(begin, end, grain, [&](int64_t b, int64_t e) {
    at::ThreadLocalStateGuard guard(state);
    body(b, e);
  });
}


uint64_t as_u64(int64_t bits) { return static_cast<uint64_t>(bits); }

int64_t panel_rows(int64_t rows, int64_t cols) {
  return std::max<int64_t>(1, std::min<int64_t>(rows, kPanelFloats / std::max<int64_t>(cols, 1)));
}

// Panel rows for a product with `tokens` columns: every panel's GEMM streams all of x^T, so with
// many tokens small panels starve the BLAS. Grow the panel with the token count (up to
// kMaxPanelFloats, 4 MiB), and make the panel count a multiple of kPanelCountMultiple so that the
// rows split evenly over 1, 2, 3, 4, 6, 8, 12 or 24 threads. The split depends on the shape only:
// the same rows go through the same GEMM whatever the thread count, so results are bitwise equal.
constexpr int64_t kMaxPanelFloats = 1 << 20;
constexpr int64_t kPanelCountMultiple = 24;
constexpr int64_t kTokensPerPanelStep = 32;
// From this many tokens on, perturbed_panels switches to big sequential panels.
constexpr int64_t kManyTokens = 128;

int64_t linear_panel_rows(int64_t rows, int64_t cols, int64_t tokens) {
  const int64_t scale = std::max<int64_t>(1, tokens / kTokensPerPanelStep);
  const int64_t floats = std::min<int64_t>(kMaxPanelFloats, kPanelFloats * scale);
  const int64_t max_rows = std::max<int64_t>(1, floats / std::max<int64_t>(cols, 1));
  int64_t panels = (rows + max_rows - 1) / max_rows;
  panels = std::min<int64_t>(
      rows, (panels + kPanelCountMultiple - 1) / kPanelCountMultiple * kPanelCountMultiple);
  panels = std::max<int64_t>(1, panels);  // rows == 0: one empty panel, never a division by zero
  return std::max<int64_t>(1, (rows + panels - 1) / panels);
}

template <class scalar_t>
float to_float(scalar_t v) {
  return static_cast<float>(v);
}

// A sum over work items [0, items) that gives the same bits for any thread count: the items are
// cut into `count` contiguous groups by the shape alone; group g is accumulated in item order into
// slot g (by whichever thread runs it), and the slots are then added in order 0, 1, 2, ...
// Summing per-thread partials instead (the obvious way) makes the result depend on how the work
// was split: 1 vs 2 threads differed by up to 7.6e-6 on values ~67 in noise_sketch(left).
struct FixedOrderSlots {
  int64_t count;
  int64_t items;
  // At most max_slots groups, and at most budget_bytes of slots (but always at least one).
  FixedOrderSlots(int64_t items_, int64_t slot_bytes, int64_t max_slots, int64_t budget_bytes)
      : items(items_) {
    const int64_t by_memory = std::max<int64_t>(1, budget_bytes / std::max<int64_t>(slot_bytes, 1));
    count = std::max<int64_t>(1, std::min({items_, max_slots, by_memory}));
  }
  int64_t begin(int64_t slot) const { return slot * items / count; }
  int64_t end(int64_t slot) const { return (slot + 1) * items / count; }
  // slots: [count, ...] contiguous float or double; returns slots[0] + slots[1] + ... added left
  // to right, element by element, in one parallel pass (one add_ per slot would open a parallel
  // region per slot, each costing a scheduler wake-up on a loaded machine).
  static at::Tensor sum_in_order(const at::Tensor& slots) {
    auto total = at::empty(slots.sizes().slice(1), slots.options());
    const int64_t count = slots.size(0), n = total.numel();
    AT_DISPATCH_FLOATING_TYPES(slots.scalar_type(), "sum_in_order", [&] {
      const scalar_t* src = slots.data_ptr<scalar_t>();
      scalar_t* dst = total.data_ptr<scalar_t>();
      at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          scalar_t acc = src[i];
          for (int64_t g = 1; g < count; ++g) acc += src[g * n + i];
          dst[i] = acc;
        }
      });
    });
    return total;
  }
};
constexpr int64_t kMaxReduceSlots = 32;
constexpr int64_t kReduceBudgetBytes = 32 << 20;

bool is_float_dtype(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

// seeds and a per-seed float vector, both 1-D of one length (>= 1 unless allow_empty).
void check_seed_vector(const char* op, const at::Tensor& seeds, const at::Tensor& values,
                       const char* values_name, int64_t expected) {
  TORCH_CHECK(seeds.dim() == 1, op, ": seeds must be 1-D, got ", seeds.sizes());
  TORCH_CHECK(values.dim() <= 1, op, ": ", values_name, " must be 1-D, got ", values.sizes());
  TORCH_CHECK(seeds.numel() == expected, op, ": seeds has ", seeds.numel(), " entries, expected ",
              expected);
  TORCH_CHECK(values.numel() == expected, op, ": ", values_name, " has ", values.numel(),
              " entries, expected ", expected);
}

// buf[i] = float(w[i]) + sigma * noise(position + i) for i in [0, n). float32 and bfloat16 weights
// use the kernels compiled for this CPU's instruction set; fp16 and fp64 a baseline sink.
template <class scalar_t>
void perturbed_into(const scalar_t* w, uint64_t position, int64_t n, uint32_t k0, uint32_t k1,
                    float sigma, float* buf) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    active_kernels().perturbed_f32(w, position, n, k0, k1, sigma, buf);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    active_kernels().perturbed_bf16(reinterpret_cast<const uint16_t*>(w), position, n, k0, k1,
                                    sigma, buf);
  } else {
    for_each_noise_piece(position, n, k0, k1, [&](int64_t at, const float* z, int64_t count) {
      const scalar_t* wi = w + at;
      float* o = buf + at;
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) o[i] = to_float(wi[i]) + sigma * z[i];
    });
  }
}

at::Tensor philox_op(const at::Tensor& counters, const at::Tensor& keys) {
  TORCH_CHECK(counters.dim() == 2 && counters.size(1) == 4, "counters must be [n, 4]");
  TORCH_CHECK(keys.dim() == 2 && keys.size(1) == 2 && keys.size(0) == counters.size(0),
              "keys must be [n, 2]");
  auto c = counters.to(at::kLong).contiguous();
  auto k = keys.to(at::kLong).contiguous();
  auto out = at::empty_like(c);
  const int64_t* cp = c.data_ptr<int64_t>();
  const int64_t* kp = k.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < c.size(0); ++i) {
    const Philox4 x = corp::philox4x32_10(
        static_cast<uint32_t>(cp[4 * i]), static_cast<uint32_t>(cp[4 * i + 1]),
        static_cast<uint32_t>(cp[4 * i + 2]), static_cast<uint32_t>(cp[4 * i + 3]),
        static_cast<uint32_t>(kp[2 * i]), static_cast<uint32_t>(kp[2 * i + 1]));
    op[4 * i] = x.x0;
    op[4 * i + 1] = x.x1;
    op[4 * i + 2] = x.x2;
    op[4 * i + 3] = x.x3;
  }
  return out;
}

// out = alpha * noise, or out += alpha * noise (computed in fp32, rounded once to out's dtype).
void noise_fill_(at::Tensor out, int64_t seed, int64_t offset, double alpha, bool accumulate) {
  TORCH_CHECK(out.is_contiguous(), "noise_fill_: out must be contiguous");
  uint32_t k0, k1;
  split_seed(as_u64(seed), &k0, &k1);
  const uint64_t base = as_u64(offset);
  const float a = static_cast<float>(alpha);
  const int64_t n = out.numel();
  if (out.scalar_type() == at::kFloat) {
    float* p = out.data_ptr<float>();
    at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
      noise_into(base + begin, end - begin, k0, k1, a, accumulate, p + begin);
    });
    return;
  }
  if (out.scalar_type() == at::kBFloat16 && accumulate) {
    // The in-place perturbation of bf16 weights (RandOpt's search): one pass, no float copy.
    uint16_t* p = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
    at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
      active_kernels().add_noise_bf16(p + begin, base + begin, end - begin, k0, k1, a);
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "noise_fill_", [&] {
    scalar_t* p = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
      alignas(64) float tmp[kChunk];
      for (int64_t s = begin; s < end; s += kChunk) {
        const int64_t len = std::min(kChunk, end - s);
        if (accumulate) {
          for (int64_t i = 0; i < len; ++i) tmp[i] = static_cast<float>(p[s + i]);
        }
        noise_into(base + s, len, k0, k1, a, accumulate, tmp);
        for (int64_t i = 0; i < len; ++i) p[s + i] = static_cast<scalar_t>(tmp[i]);
      }
    });
  });
}

// out = float(src) + sigma * noise, out float32, src any float dtype, both contiguous and of one
// size: the perturbed copy of a block of W rows that the chunked linear strategy multiplies.
void perturbed_copy_(at::Tensor out, const at::Tensor& src, int64_t seed, int64_t offset,
                     double sigma) {
  TORCH_CHECK(out.is_contiguous() && src.is_contiguous(), "perturbed_copy_: tensors must be "
              "contiguous");
  TORCH_CHECK(out.scalar_type() == at::kFloat, "perturbed_copy_: out must be float32");
  TORCH_CHECK(out.numel() == src.numel(), "perturbed_copy_: out and src sizes differ");
  uint32_t k0, k1;
  split_seed(as_u64(seed), &k0, &k1);
  const uint64_t base = as_u64(offset);
  float* o = out.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "perturbed_copy_",
                                  [&] {
    const scalar_t* w = src.data_ptr<scalar_t>();
    at::parallel_for(0, src.numel(), kChunk, [&](int64_t begin, int64_t end) {
      perturbed_into(w + begin, base + begin, end - begin, k0, k1, static_cast<float>(sigma),
                     o + begin);
    });
  });
}

// sum_k weights[k] * noise(seeds[k]) over `shape`, in fp32. Each output chunk stays in cache while
// every seed's noise for it is generated and accumulated: memory is the output only.
at::Tensor weighted_noise_sum(at::IntArrayRef shape, const at::Tensor& seeds,
                              const at::Tensor& weights, int64_t offset) {
  TORCH_CHECK(seeds.numel() > 0, "weighted_noise_sum: needs at least one seed");
  check_seed_vector("weighted_noise_sum", seeds, weights, "weights", seeds.numel());
  auto s = seeds.to(at::kLong).contiguous();
  auto w = weights.to(at::kFloat).contiguous();
  auto out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  const int64_t n = out.numel();
  const int64_t K = s.numel();
  const int64_t* sp = s.data_ptr<int64_t>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const uint64_t base = as_u64(offset);
  at::parallel_for(0, n, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; c += kChunk) {
      const int64_t len = std::min(kChunk, end - c);
      for (int64_t k = 0; k < K; ++k) {
        uint32_t k0, k1;
        split_seed(as_u64(sp[k]), &k0, &k1);
        noise_into(base + c, len, k0, k1, wp[k], /*accumulate=*/k > 0, op + c);
      }
    }
  });
  return out;
}

// For each panel of rows, the panel W[rows] + sigma * eps[rows] times x; the panel is the only
// W-like buffer, at most kMaxPanelFloats long. Two layouts, chosen by the token count T, because
// the BLAS is fast only when the short dimension is the one it expects short (measured on 2
// x86-64 cores, fp32, materialize-then-GEMM / fused):
// - T < kFewTokens: y[:, rows] = x @ panel^T, written straight into y's columns (row stride N).
//   With y^T[rows] = panel @ x^T instead, T = 2-8 ran a skinny GEMM at ~4 GFLOP/s (4096 x 4096,
//   T = 2: 34 ms against 24 ms; 576 x 1536, T = 2-8: 0.88-0.98x of materialize).
// - T >= kFewTokens: y^T[rows] = panel @ x^T (x_t: [P, K, T], y_t: [P, N, T]); the first layout
//   was 1.2-1.4x slower there (2048 x 2048, T = 16-64).
constexpr int64_t kFewTokens = 16;

template <class scalar_t>
void perturbed_panels(const scalar_t* w, int64_t N, int64_t K, int64_t T, const at::Tensor& x,
                      const uint32_t* keys, const float* sigmas, int64_t members,
                      uint64_t base, at::Tensor& y) {
  const bool tokens_first = T < kFewTokens;  // x: [P, T, K], y: [P, T, N]; else transposed
  // Fills buf's first `rows` rows with W[r0:r0+rows] + sigma_m * eps_m and multiplies them in.
  auto panel_product = [&](at::Tensor& buf, int64_t r0, int64_t rows, int64_t m,
                           bool parallel_fill) {
    float* bp = buf.data_ptr<float>();
    const uint64_t position = base + static_cast<uint64_t>(r0 * K);
    if (parallel_fill) {
      at::parallel_for(0, rows * K, kChunk, [&](int64_t b, int64_t e) {
        perturbed_into(w + r0 * K + b, position + b, e - b, keys[2 * m], keys[2 * m + 1],
                       sigmas[m], bp + b);
      });
    } else {
      perturbed_into(w + r0 * K, position, rows * K, keys[2 * m], keys[2 * m + 1], sigmas[m], bp);
    }
    auto panel = buf.narrow(0, 0, rows);
    if (tokens_first) {
      auto out = y.select(0, m).narrow(1, r0, rows);  // [T, rows], row stride N
      at::mm_out(out, x.select(0, m), panel.t());
    } else {
      auto out = y.select(0, m).narrow(0, r0, rows);  // [rows, T]
      at::mm_out(out, panel, x.select(0, m));
    }
  };
  if (T >= kManyTokens) {
    // Many tokens: the GEMM dominates. Big panels one after another, each filled by all threads
    // and multiplied by the multi-threaded BLAS.
    // At least two panels, so that even a small W is never copied whole.
    const int64_t R = std::max<int64_t>(1, std::min<int64_t>((N + 1) / 2, kMaxPanelFloats / K));
    auto buf = at::empty({R, K}, at::TensorOptions().dtype(at::kFloat));
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t rows = std::min(R, N - r0);
      for (int64_t m = 0; m < members; ++m) {
        panel_product(buf, r0, rows, m, true);
      }
    }
    return;
  }
  // Few tokens: noise generation dominates. Cache-sized panels, one thread each.
  const int64_t R = linear_panel_rows(N, K, T);
  const int64_t panels = (N + R - 1) / R;
  parallel_for_with_state(0, panels, 1, [&](int64_t begin, int64_t end) {
    auto buf = at::empty({R, K}, at::TensorOptions().dtype(at::kFloat));
    for (int64_t pi = begin; pi < end; ++pi) {
      const int64_t r0 = pi * R;
      const int64_t rows = std::min(R, N - r0);
      for (int64_t m = 0; m < members; ++m) {
        panel_product(buf, r0, rows, m, false);
      }
    }
  });
}

// Shared by perturbed_linear (one member) and population_linear (P members over one W).
// x: [P, T, K] float; returns y: [P, T, N] in fp32.
at::Tensor population_forward(const at::Tensor& x3, const at::Tensor& weight,
                              const std::vector<uint64_t>& seeds, const std::vector<float>& sigmas,
                              int64_t offset) {
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous");
  // The ATen calls below (views of y and x, one product per panel) are internal: no autograd
  // kernel or view tracking is wanted for them, and that bookkeeping was most of the cost of a
  // panel on small layers (perf: VariableType, DifferentiableViewMeta, as_view).
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t P = x3.size(0), T = x3.size(1), K = x3.size(2), N = weight.size(0);
  if (P == 0 || T == 0 || N == 0 || K == 0) {
    // Nothing to multiply: the product over an empty in_features is zero (y is then the bias).
    return at::zeros({P, T, N}, at::TensorOptions().dtype(at::kFloat));
  }
  const bool tokens_first = T < kFewTokens;  // the layout perturbed_panels uses for this T
  auto x = tokens_first ? x3.to(at::kFloat).contiguous()                      // [P, T, K]
                        : x3.to(at::kFloat).transpose(1, 2).contiguous();     // [P, K, T]
  auto y = tokens_first ? at::empty({P, T, N}, at::TensorOptions().dtype(at::kFloat))
                        : at::empty({P, N, T}, at::TensorOptions().dtype(at::kFloat));
  std::vector<uint32_t> keys(2 * P);
  for (int64_t m = 0; m < P; ++m) split_seed(seeds[m], &keys[2 * m], &keys[2 * m + 1]);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "perturbed", [&] {
    perturbed_panels<scalar_t>(weight.data_ptr<scalar_t>(), N, K, T, x, keys.data(),
                               sigmas.data(), P, as_u64(offset), y);
  });
  return tokens_first ? y : y.transpose(1, 2);  // [P, T, N]
}

// Product of x's dims in [from, x.dim() - 1): the token count. reshape(-1) cannot infer it when
// in_features is 0.
int64_t leading_numel(const at::Tensor& x, int64_t from) {
  int64_t n = 1;
  for (int64_t d = from; d < x.dim() - 1; ++d) n *= x.size(d);
  return n;
}

// x: [..., K] (population: [P, ..., K]), weight: [N, K], bias: [N] or none, all floating point.
void check_linear(const char* op, const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias, int64_t min_x_dims) {
  TORCH_CHECK(weight.dim() == 2, op, ": weight must be 2-D [out_features, in_features], got ",
              weight.sizes());
  TORCH_CHECK(x.dim() >= min_x_dims, op, ": x must have at least ", min_x_dims, " dims, got ",
              x.sizes());
  TORCH_CHECK(x.size(-1) == weight.size(1), op, ": x's last dim ", x.size(-1),
              " != weight's in_features ", weight.size(1));
  TORCH_CHECK(is_float_dtype(x) && is_float_dtype(weight), op,
              ": x and weight must be floating point, got ", x.scalar_type(), " and ",
              weight.scalar_type());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), op, ": bias must be [",
                weight.size(0), "], got ", bias->sizes());
  }
}

at::Tensor finish_linear(at::Tensor y, const std::optional<at::Tensor>& bias,
                         at::ScalarType dtype) {
  if (bias.has_value() && bias->defined()) y = y + bias->to(at::kFloat);
  return y.to(dtype).contiguous();
}

at::Tensor perturbed_linear(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t seed, int64_t offset,
                            double sigma) {
  check_linear("perturbed_linear", x, weight, bias, 1);
  const int64_t K = weight.size(1);
  auto x3 = x.reshape({1, leading_numel(x, 0), K});
  auto y = population_forward(x3, weight, {as_u64(seed)}, {static_cast<float>(sigma)}, offset);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = weight.size(0);
  return finish_linear(y.reshape(out_shape), bias, x.scalar_type());
}

at::Tensor population_linear(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, const at::Tensor& seeds,
                             const at::Tensor& sigmas, int64_t offset) {
  check_linear("population_linear", x, weight, bias, 2);
  const int64_t P = x.size(0), K = weight.size(1);
  check_seed_vector("population_linear", seeds, sigmas, "sigmas", P);
  auto s = seeds.to(at::kLong).contiguous();
  auto g = sigmas.to(at::kFloat).contiguous();
  std::vector<uint64_t> seed_v(P);
  std::vector<float> sigma_v(P);
  for (int64_t m = 0; m < P; ++m) {
    seed_v[m] = as_u64(s.data_ptr<int64_t>()[m]);
    sigma_v[m] = g.data_ptr<float>()[m];
  }
  auto y = population_forward(x.reshape({P, leading_numel(x, 1), K}), weight, seed_v, sigma_v,
                              offset);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = weight.size(0);
  return finish_linear(y.reshape(out_shape), bias, x.scalar_type());
}

// (sum_k w_k eps_k) @ omega  (left=false, omega: [cols, r])  or  psi @ (sum_k w_k eps_k)
// (left=true, psi: [r, rows]), with the sum built one row panel at a time.
at::Tensor noise_sketch(int64_t rows, int64_t cols, const at::Tensor& seeds,
                        const at::Tensor& weights, const at::Tensor& test_matrix, bool left,
                        int64_t offset) {
  TORCH_CHECK(rows >= 0 && cols >= 0, "noise_sketch: rows and cols must be >= 0, got ", rows, ", ",
              cols);
  TORCH_CHECK(seeds.numel() > 0, "noise_sketch: needs at least one seed");
  check_seed_vector("noise_sketch", seeds, weights, "weights", seeds.numel());
  TORCH_CHECK(test_matrix.dim() == 2 && is_float_dtype(test_matrix),
              "noise_sketch: test_matrix must be a 2-D floating-point tensor, got ",
              test_matrix.sizes(), " ", test_matrix.scalar_type());
  TORCH_CHECK(left ? test_matrix.size(1) == rows : test_matrix.size(0) == cols,
              "noise_sketch: test_matrix must be ", left ? "[r, rows]" : "[cols, r]", " for ",
              rows, "x", cols, ", got ", test_matrix.sizes());
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // see population_forward
  auto s = seeds.to(at::kLong).contiguous();
  auto w = weights.to(at::kFloat).contiguous();
  auto tm = test_matrix.to(at::kFloat).contiguous();
  const int64_t K = s.numel();
  const int64_t r = left ? tm.size(0) : tm.size(1);
  const int64_t R = panel_rows(rows, cols);
  const int64_t panels = (rows + R - 1) / R;
  const uint64_t base = as_u64(offset);
  const int64_t* sp = s.data_ptr<int64_t>();
  const float* wp = w.data_ptr<float>();
  // Writes sum_k w_k eps_k for rows [r0, r0 + nr) into bp.
  auto fill_panel = [&](float* bp, int64_t r0, int64_t nr) {
    for (int64_t k = 0; k < K; ++k) {
      uint32_t k0, k1;
      split_seed(as_u64(sp[k]), &k0, &k1);
      noise_into(base + static_cast<uint64_t>(r0 * cols), nr * cols, k0, k1, wp[k], k > 0, bp);
    }
  };
  if (!left) {
    // Each panel owns its rows of the result: no reduction at all.
    auto out = at::empty({rows, r}, tm.options());
    parallel_for_with_state(0, panels, 1, [&](int64_t begin, int64_t end) {
      auto buf = at::empty({R, cols}, tm.options());
      for (int64_t pi = begin; pi < end; ++pi) {
        const int64_t r0 = pi * R, nr = std::min(R, rows - r0);
        fill_panel(buf.data_ptr<float>(), r0, nr);
        auto dst = out.narrow(0, r0, nr);
        at::mm_out(dst, buf.narrow(0, 0, nr), tm);
      }
    });
    return out;
  }
  // Left: every panel adds psi[:, its rows] @ panel into the whole [r, cols] result.
  if (panels == 0) return at::zeros({r, cols}, tm.options());
  const FixedOrderSlots slots(panels, r * cols * 4, kMaxReduceSlots, kReduceBudgetBytes);
  auto partial = at::zeros({slots.count, r, cols}, tm.options());
  parallel_for_with_state(0, slots.count, 1, [&](int64_t begin, int64_t end) {
    auto buf = at::empty({R, cols}, tm.options());
    for (int64_t g = begin; g < end; ++g) {
      auto acc = partial.select(0, g);
      for (int64_t pi = slots.begin(g); pi < slots.end(g); ++pi) {
        const int64_t r0 = pi * R, nr = std::min(R, rows - r0);
        fill_panel(buf.data_ptr<float>(), r0, nr);
        acc.addmm_(tm.narrow(1, r0, nr), buf.narrow(0, 0, nr));
      }
    }
  });
  return FixedOrderSlots::sum_in_order(partial);
}


// Gram matrix of K seeded noises over `numel` stream positions: G[i][j] = sum_e eps_i[e] eps_j[e].
// Each chunk of positions holds all K noises ([K, L] floats, at most kGramChunkFloats); its fp32
// Gram goes through the BLAS and is added to a per-thread fp64 accumulator, so every noise value
// is generated once and memory is O(K * L + K^2), never K * numel.
constexpr int64_t kGramChunkFloats = 1 << 20;

at::Tensor noise_gram(int64_t numel, const at::Tensor& seeds, int64_t offset) {
  TORCH_CHECK(seeds.dim() == 1 && seeds.numel() > 0, "noise_gram: seeds must be 1-D and non-empty, "
              "got ", seeds.sizes());
  TORCH_CHECK(numel >= 0, "noise_gram: numel must be >= 0, got ", numel);
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // see population_forward
  auto s = seeds.to(at::kLong).contiguous();
  const int64_t K = s.numel();
  const int64_t L = std::max<int64_t>(256, std::min<int64_t>(numel, kGramChunkFloats / K) / 16 * 16);
  const int64_t chunks = (numel + L - 1) / L;
  const int64_t* sp = s.data_ptr<int64_t>();
  const uint64_t base = as_u64(offset);
  if (chunks == 0) return at::zeros({K, K}, at::TensorOptions().dtype(at::kDouble));
  const FixedOrderSlots slots(chunks, K * K * 8, kMaxReduceSlots, kReduceBudgetBytes);
  auto partial = at::zeros({slots.count, K, K}, at::TensorOptions().dtype(at::kDouble));
  parallel_for_with_state(0, slots.count, 1, [&](int64_t begin, int64_t end) {
    auto buf = at::empty({K, L}, at::TensorOptions().dtype(at::kFloat));
    float* bp = buf.data_ptr<float>();
    for (int64_t g = begin; g < end; ++g) {
      auto acc = partial.select(0, g);
      for (int64_t ci = slots.begin(g); ci < slots.end(g); ++ci) {
        const int64_t e0 = ci * L;
        const int64_t len = std::min(L, numel - e0);
        for (int64_t k = 0; k < K; ++k) {
          uint32_t k0, k1;
          split_seed(as_u64(sp[k]), &k0, &k1);
          noise_into(base + static_cast<uint64_t>(e0), len, k0, k1, 1.0f, false, bp + k * L);
        }
        auto block = buf.narrow(1, 0, len);
        acc.add_(at::mm(block, block.t()).to(at::kDouble));
      }
    }
  });
  return FixedOrderSlots::sum_in_order(partial);
}

// Which noise generator runs ("avx2" or "portable", with the reason when it is not the default).
std::string cpu_isa() { return active_isa_description(); }

// Test hook: switch the generator ("portable", "avx2" or "auto") in this process.
std::string set_cpu_isa(const std::string& name) {
  TORCH_CHECK(set_isa(name.c_str()), "set_cpu_isa: cannot use '", name, "' here (", cpu_isa(),
              "); choose portable, avx2 (on an AVX2 CPU) or auto");
  return cpu_isa();
}

}  // namespace
}  // namespace cpu
}  // namespace corp

TORCH_LIBRARY(corp_cpu, m) {
  m.def("cpu_isa() -> str", &corp::cpu::cpu_isa);
  m.def("set_cpu_isa(str name) -> str", &corp::cpu::set_cpu_isa);
  m.def("philox4x32_10(Tensor counters, Tensor keys) -> Tensor");
  m.def("noise_fill_(Tensor(a!) out, int seed, int offset, float alpha, bool accumulate) -> ()");
  m.def("perturbed_copy_(Tensor(a!) out, Tensor src, int seed, int offset, float sigma) -> ()");
  m.def("weighted_noise_sum(int[] shape, Tensor seeds, Tensor weights, int offset) -> Tensor");
  m.def(
      "perturbed_linear(Tensor x, Tensor weight, Tensor? bias, int seed, int offset, float sigma)"
      " -> Tensor");
  m.def(
      "population_linear(Tensor x, Tensor weight, Tensor? bias, Tensor seeds, Tensor sigmas,"
      " int offset) -> Tensor");
  m.def(
      "noise_sketch(int rows, int cols, Tensor seeds, Tensor weights, Tensor test_matrix,"
      " bool left, int offset) -> Tensor");
  m.def("noise_gram(int numel, Tensor seeds, int offset) -> Tensor");
}

TORCH_LIBRARY_IMPL(corp_cpu, CPU, m) {
  m.impl("philox4x32_10", &corp::cpu::philox_op);
  m.impl("noise_fill_", &corp::cpu::noise_fill_);
  m.impl("perturbed_copy_", &corp::cpu::perturbed_copy_);
  m.impl("perturbed_linear", &corp::cpu::perturbed_linear);
  m.impl("population_linear", &corp::cpu::population_linear);
  m.impl("noise_sketch", &corp::cpu::noise_sketch);
  m.impl("weighted_noise_sum", &corp::cpu::weighted_noise_sum);
  m.impl("noise_gram", &corp::cpu::noise_gram);
}
