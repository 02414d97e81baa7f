// Training-mode BatchNorm -> 2x2 max-pool (stride 2) -> ReLU, the tail of every Conv4 block, fused for
// channels-last CPU tensors (float32 or bfloat16; statistics and arithmetic in float, per-channel sums in double).
//
// Why our own kernel: after the convolutions run on oneDNN (bf16, AMX or AVX-512-BF16), PyTorch's own batch norm,
// max-pool and ReLU kernels take most of a Conv4 training step (about two thirds of the ProtoNet step on an AMX
// Xeon: docs/speed.md), at a small fraction of the memory bandwidth: each of them reads and writes the full-size
// activation, the pool stores int64 indices and its backward zero-fills and scatters a full-size gradient.  No
// maintained library offers this fusion for the CPU (torch.compile's inductor kernels for the same three ops
// were slower than eager when tried, as was oneDNN's own batch norm and pool on its blocked tensors, with the
// conversions around them).  Here the forward reads the
// activation once for the statistics and once for the pooled output; the backward reads it twice (the pooled
// sums, then the input gradient) and writes the gradient once.
//
// Semantics are those of nn.BatchNorm2d (biased variance in the normalisation) -> nn.MaxPool2d(2) -> nn.ReLU
// applied in the tensor's dtype: for bfloat16 the normalised values are rounded to bfloat16 before the pool, so
// the pooled values, the argmax (the first maximum of each window in row-major order, as max_pool2d) and the
// ReLU mask are the eager ones.  Trailing odd rows/columns are dropped by the pool, as nn.MaxPool2d does.
// One deliberate difference: a channel whose statistics are not finite in float32 (a NaN or infinite input, or a
// variance that overflows, as in a diverging run) is NaN throughout, so that the loss is NaN and the trainer
// stops the run; PyTorch's float32 kernel normalises an overflowing variance by infinity into a constant.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

inline float bf16_to_f(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t f_to_bf16(float f) {     // round to nearest even, as c10::BFloat16; branch-free (it vectorises)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : r);   // NaN stays NaN
}

template <bool BF> struct Elem;
template <> struct Elem<false> {
  using T = float;
  static inline float ld(const T* p, int64_t i) { return p[i]; }
  static inline void st(T* p, int64_t i, float v) { p[i] = v; }
  static inline float rnd(float v) { return v; }
};
template <> struct Elem<true> {
  using T = uint16_t;
  static inline float ld(const T* p, int64_t i) { return bf16_to_f(p[i]); }
  static inline void st(T* p, int64_t i, float v) { p[i] = f_to_bf16(v); }
  static inline float rnd(float v) { return bf16_to_f(f_to_bf16(v)); }
};

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, ": expected a CPU tensor");
  TORCH_CHECK(x.dim() == 4, name, ": expected (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              name, ": expected float32 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), name, ": expected channels-last strides");
}

void check_vec(const at::Tensor& v, int64_t C, const char* name) {
  TORCH_CHECK(v.device().is_cpu() && v.scalar_type() == at::kFloat && v.dim() == 1 && v.size(0) == C &&
              v.is_contiguous(), name, ": expected a contiguous float32 vector of ", C, " channels");
}

// Per-channel mean and biased variance over rows [0, rows) of W * C elements, in one read of the tensor: each
// row's mean and sum of squared deviations in float (the row, a few KB, stays in the L1 cache for its second
// look), merged across rows and threads in double with Chan et al.'s pairwise update.
template <bool BF>
void channel_stats(const typename Elem<BF>::T* xp, int64_t rows, int64_t W, int64_t C, std::vector<double>& mean,
                   std::vector<double>& var) {
  using E = Elem<BF>;
  using T = typename E::T;
  const int nt = at::get_num_threads();
  std::vector<double> pn(nt, 0.0), pm(static_cast<size_t>(nt) * C, 0.0), pq(static_cast<size_t>(nt) * C, 0.0);
  at::parallel_for(0, rows, 1, [&](int64_t b, int64_t e) {
    const int t = at::get_thread_num();
    double* am = pm.data() + static_cast<size_t>(t) * C;
    double* aq = pq.data() + static_cast<size_t>(t) * C;
    std::vector<float> rs(C), rq(C);
    float* __restrict__ rsp = rs.data();
    float* __restrict__ rqp = rq.data();
    const float inv_w = 1.f / static_cast<float>(W);
    for (int64_t r = b; r < e; ++r) {
      const T* __restrict__ row = xp + r * W * C;
      std::fill(rs.begin(), rs.end(), 0.f);
      std::fill(rq.begin(), rq.end(), 0.f);
      for (int64_t w = 0; w < W; ++w) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) rsp[c] += E::ld(row + w * C, c);
      }
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) rsp[c] *= inv_w;                       // the row's mean
      for (int64_t w = 0; w < W; ++w) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float d = E::ld(row + w * C, c) - rsp[c];
          rqp[c] += d * d;
        }
      }
      const double n0 = pn[t], n = n0 + W;
      for (int64_t c = 0; c < C; ++c) {
        const double d = rs[c] - am[c];
        am[c] += d * W / n;
        aq[c] += rq[c] + d * d * n0 * W / n;
      }
      pn[t] = n;
    }
  });
  double n = 0.0;
  mean.assign(C, 0.0);
  var.assign(C, 0.0);
  for (int t = 0; t < nt; ++t) {
    if (pn[t] == 0.0) continue;
    const double n1 = n + pn[t];
    for (int64_t c = 0; c < C; ++c) {
      const double d = pm[static_cast<size_t>(t) * C + c] - mean[c];
      mean[c] += d * pn[t] / n1;
      var[c] += pq[static_cast<size_t>(t) * C + c] + d * d * n * pn[t] / n1;
    }
    n = n1;
  }
  for (int64_t c = 0; c < C; ++c) var[c] /= n;
}

template <bool BF>
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     double eps) {
  using E = Elem<BF>;
  using T = typename E::T;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H / 2, Wo = W / 2;
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();

  std::vector<double> mean_d, var_d;
  channel_stats<BF>(xp, N * H, W, C, mean_d, var_d);
  std::vector<float> mean(C);
  for (int64_t c = 0; c < C; ++c) mean[c] = static_cast<float>(mean_d[c]);
  auto mean_t = at::empty({C}, weight.options());
  auto invstd_t = at::empty({C}, weight.options());
  auto var_t = at::empty({C}, weight.options());
  std::vector<float> scale(C), shift(C), nan_add(C);
  for (int64_t c = 0; c < C; ++c) {
    double var = var_d[c];
    // statistics that are not finite in float32 (a diverging run): NaN, not a silent normalisation by infinity,
    // so that the trainer's non-finite loss check stops the run
    if (!std::isfinite(var) || !std::isfinite(mean[c]) || var > std::numeric_limits<float>::max()) {
      var = std::numeric_limits<double>::quiet_NaN();
      mean[c] = std::numeric_limits<float>::quiet_NaN();
    }
    const float invstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    mean_t.data_ptr<float>()[c] = mean[c];
    invstd_t.data_ptr<float>()[c] = invstd;
    var_t.data_ptr<float>()[c] = static_cast<float>(var);
    scale[c] = wp[c] * invstd;
    shift[c] = bp[c] - mean[c] * scale[c];
    // a NaN in a channel's statistics makes the whole channel NaN, as the eager pool and ReLU pass it on
    // (added to the output: the channel loop keeps no NaN branches)
    nan_add[c] = (std::isnan(scale[c]) || std::isnan(shift[c])) ? std::numeric_limits<float>::quiet_NaN() : 0.f;
  }
  auto out = at::empty({N, C, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  T* op = reinterpret_cast<T*>(out.data_ptr());
  if (Ho > 0 && Wo > 0) {
    at::parallel_for(0, N * Ho, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t n = r / Ho, i = r % Ho;
        for (int64_t j = 0; j < Wo; ++j) {
          const T* __restrict__ a0 = xp + ((n * H + 2 * i) * W + 2 * j) * C;
          const T* __restrict__ a1 = a0 + C;
          const T* __restrict__ a2 = a0 + W * C;
          const T* __restrict__ a3 = a2 + C;
          T* __restrict__ o = op + (r * Wo + j) * C;
          const float* __restrict__ scp = scale.data();
          const float* __restrict__ shp = shift.data();
          const float* __restrict__ nanp = nan_add.data();
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const float sc = scp[c], sh = shp[c];
            float m = E::rnd(E::ld(a0, c) * sc + sh);
            m = std::max(m, E::rnd(E::ld(a1, c) * sc + sh));
            m = std::max(m, E::rnd(E::ld(a2, c) * sc + sh));
            m = std::max(m, E::rnd(E::ld(a3, c) * sc + sh));
            E::st(o, c, (m > 0.f ? m : 0.f) + nanp[c]);
          }
        }
      }
    });
  }
  return {out, mean_t, invstd_t, var_t};
}

// One 2x2 window of one channel: which input holds the window's first maximum after the affine map (rounded to
// the tensor's dtype, as the eager BatchNorm output is; k = 0..3 in row-major order, as a float), that input, and
// whether the ReLU lets the gradient through (open = 1 or 0).  Only float selects, so the channel loops vectorise
// (random data would mispredict every branch).
template <bool BF>
inline void window(float a, float b, float c, float d, float sc, float sh, float& k, float& xm, float& open) {
  using E = Elem<BF>;
  float m = E::rnd(a * sc + sh);
  const float v1 = E::rnd(b * sc + sh), v2 = E::rnd(c * sc + sh), v3 = E::rnd(d * sc + sh);
  k = 0.f;
  xm = a;
  k = v1 > m ? 1.f : k;
  xm = v1 > m ? b : xm;
  m = v1 > m ? v1 : m;
  k = v2 > m ? 2.f : k;
  xm = v2 > m ? c : xm;
  m = v2 > m ? v2 : m;
  k = v3 > m ? 3.f : k;
  xm = v3 > m ? d : xm;
  m = v3 > m ? v3 : m;
  open = m > 0.f ? 1.f : 0.f;   // (NaN statistics make the whole channel's gradient NaN through k1 and k0)
}

template <bool BF>
std::vector<at::Tensor> backward_impl(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias, const at::Tensor& mean_t, const at::Tensor& invstd_t) {
  using E = Elem<BF>;
  using T = typename E::T;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = H / 2, Wo = W / 2, M = N * H * W;
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  const T* gp = reinterpret_cast<const T*>(grad.data_ptr());
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* mp = mean_t.data_ptr<float>();
  const float* ip = invstd_t.data_ptr<float>();
  std::vector<float> scale(C), shift(C);
  for (int64_t c = 0; c < C; ++c) {
    scale[c] = wp[c] * ip[c];
    shift[c] = bp[c] - mp[c] * scale[c];
  }
  const float* __restrict__ scp = scale.data();
  const float* __restrict__ shp = shift.data();
  // pass 1, over the pooled grid: the per-channel sums of the gradient reaching the BatchNorm output (at each
  // window's maximum, where the ReLU is open) and of that gradient times the centred input there
  const int nt = at::get_num_threads();
  std::vector<double> part(static_cast<size_t>(nt) * 2 * C, 0.0);
  at::parallel_for(0, N * Ho, 1, [&](int64_t b, int64_t e) {
    double* acc = part.data() + static_cast<size_t>(at::get_thread_num()) * 2 * C;
    std::vector<float> sg(C), sgx(C);
    float* __restrict__ sgp = sg.data();
    float* __restrict__ sgxp = sgx.data();
    for (int64_t r = b; r < e; ++r) {
      std::fill(sg.begin(), sg.end(), 0.f);
      std::fill(sgx.begin(), sgx.end(), 0.f);
      const int64_t n = r / Ho, i = r % Ho;
      for (int64_t j = 0; j < Wo; ++j) {
        const T* __restrict__ a0 = xp + ((n * H + 2 * i) * W + 2 * j) * C;
        const T* __restrict__ a1 = a0 + C;
        const T* __restrict__ a2 = a0 + W * C;
        const T* __restrict__ a3 = a2 + C;
        const T* __restrict__ gr = gp + (r * Wo + j) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          float k, xm, open;
          window<BF>(E::ld(a0, c), E::ld(a1, c), E::ld(a2, c), E::ld(a3, c), scp[c], shp[c], k, xm, open);
          const float g = open * E::ld(gr, c);
          sgp[c] += g;
          sgxp[c] += g * (xm - mp[c]);
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        acc[c] += sg[c];
        acc[C + c] += sgx[c];
      }
    }
  });
  std::vector<double> sum_g(C, 0.0), sum_gxc(C, 0.0);
  for (int t = 0; t < nt; ++t)
    for (int64_t c = 0; c < C; ++c) {
      sum_g[c] += part[static_cast<size_t>(t) * 2 * C + c];
      sum_gxc[c] += part[static_cast<size_t>(t) * 2 * C + C + c];
    }
  auto gw = at::empty({C}, weight.options());
  auto gb = at::empty({C}, weight.options());
  // grad_x = scale * (G - sum_g / M - xhat * sum(G * xhat) / M), xhat = (x - mean) * invstd
  //        = scale * G + k1 * (x - mean) + k0
  std::vector<float> k1(C), k0(C);
  for (int64_t c = 0; c < C; ++c) {
    const double gxhat = sum_gxc[c] * ip[c];                  // sum(G * xhat)
    gw.data_ptr<float>()[c] = static_cast<float>(gxhat);
    gb.data_ptr<float>()[c] = static_cast<float>(sum_g[c]);
    k1[c] = static_cast<float>(-scale[c] * ip[c] * gxhat / M);
    k0[c] = static_cast<float>(-scale[c] * sum_g[c] / M);
  }
  const float* __restrict__ k1p = k1.data();
  const float* __restrict__ k0p = k0.data();
  // pass 2, over the pooled grid again: each window's four input gradients (the argmax recomputed)
  auto gx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  T* gxp = reinterpret_cast<T*>(gx.data_ptr());
  at::parallel_for(0, N * Ho, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / Ho, i = r % Ho;
      for (int64_t j = 0; j < Wo; ++j) {
        const int64_t off = ((n * H + 2 * i) * W + 2 * j) * C;
        const T* __restrict__ a0 = xp + off;
        const T* __restrict__ a1 = a0 + C;
        const T* __restrict__ a2 = a0 + W * C;
        const T* __restrict__ a3 = a2 + C;
        T* __restrict__ o0 = gxp + off;
        T* __restrict__ o1 = o0 + C;
        T* __restrict__ o2 = o0 + W * C;
        T* __restrict__ o3 = o2 + C;
        const T* __restrict__ gr = gp + (r * Wo + j) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const float x0 = E::ld(a0, c), x1 = E::ld(a1, c), x2 = E::ld(a2, c), x3 = E::ld(a3, c);
          float k, xm, open;
          window<BF>(x0, x1, x2, x3, scp[c], shp[c], k, xm, open);
          const float sg = open * scp[c] * E::ld(gr, c);
          const float mc = mp[c], kk1 = k1p[c], kk0 = k0p[c];
          E::st(o0, c, (k == 0.f ? sg : 0.f) + kk1 * (x0 - mc) + kk0);
          E::st(o1, c, (k == 1.f ? sg : 0.f) + kk1 * (x1 - mc) + kk0);
          E::st(o2, c, (k == 2.f ? sg : 0.f) + kk1 * (x2 - mc) + kk0);
          E::st(o3, c, (k == 3.f ? sg : 0.f) + kk1 * (x3 - mc) + kk0);
        }
      }
    }
  });
  // the rows and columns the pool drops (odd H or W): no gradient from the pool, only through the statistics
  if (H % 2 == 1 || W % 2 == 1) {
    at::parallel_for(0, N * H, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t h = r % H;
        for (int64_t w = (h >= 2 * Ho ? 0 : 2 * Wo); w < W; ++w) {
          const T* __restrict__ a = xp + (r * W + w) * C;
          T* __restrict__ o = gxp + (r * W + w) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) E::st(o, c, k1p[c] * (E::ld(a, c) - mp[c]) + k0p[c]);
        }
      }
    });
  }
  return {gx, gw, gb};
}

std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  check_input(x, "x");
  check_vec(weight, x.size(1), "weight");
  check_vec(bias, x.size(1), "bias");
  TORCH_CHECK(x.numel() > 0, "x: expected a non-empty tensor");
  return x.scalar_type() == at::kBFloat16 ? forward_impl<true>(x, weight, bias, eps)
                                          : forward_impl<false>(x, weight, bias, eps);
}

std::vector<at::Tensor> backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& invstd) {
  check_input(x, "x");
  check_input(grad, "grad");
  TORCH_CHECK(grad.scalar_type() == x.scalar_type(), "grad: expected the dtype of x");
  TORCH_CHECK(grad.size(0) == x.size(0) && grad.size(1) == x.size(1) && grad.size(2) == x.size(2) / 2 &&
              grad.size(3) == x.size(3) / 2, "grad: expected the pooled shape of x, got ", grad.sizes());
  const int64_t C = x.size(1);
  check_vec(weight, C, "weight");
  check_vec(bias, C, "bias");
  check_vec(mean, C, "mean");
  check_vec(invstd, C, "invstd");
  return x.scalar_type() == at::kBFloat16 ? backward_impl<true>(grad, x, weight, bias, mean, invstd)
                                          : backward_impl<false>(grad, x, weight, bias, mean, invstd);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "BatchNorm (training) -> 2x2 max-pool -> ReLU, channels-last");
  m.def("backward", &backward, "gradient of forward with respect to x, weight and bias");
}
