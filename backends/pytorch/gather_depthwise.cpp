// A depthwise 3x3 convolution (padding 1, stride 1 or 2) of a gathered set of channels, for the
// fused inference path (backends/pytorch/fused.py), on channels_last float32 CPU tensors:
//
//     out = conv2d(x[:, index], weight, stride=stride, padding=1, groups=len(index))
//
// without materialising x[:, index]. Each thread gathers the input rows it needs into a ring of
// three zero-padded rows (a row is gathered once per thread, then read by up to three output
// rows), and computes its output rows from the ring in blocks of 16 channels whose 9 weights stay
// in registers. Built on first use by native.py (torch.utils.cpp_extension, -O3 -march=native).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kBlock = 16;  // channels per compute block (one AVX-512 register of float32)

using One = std::integer_sequence<int, 0>;
using Four = std::make_integer_sequence<int, 4>;
using Eight = std::make_integer_sequence<int, 8>;

// Channels index[0..K) of the pixels Q... at `src` (C floats apart) into `dst` (Kp floats apart),
// zero from K to Kp: one index load per len(Q) pixels. The fold expression writes the pixels'
// copies out one by one; over the paper network's 108 reads this was 8% faster than a loop over
// the pixels unrolled by gcc 12; sixteen pixels per load took 1.24x the time of eight (measured).
template <int... Q>
inline void gather_pixels(const float* src, float* dst, int64_t C, const int32_t* index, int64_t K, int64_t Kp,
                          std::integer_sequence<int, Q...>) {
  for (int64_t k = 0; k < K; ++k) {
    const int32_t j = index[k];
    ((dst[Q * Kp + k] = src[Q * C + j]), ...);
  }
  ((std::fill(dst + Q * Kp + K, dst + (Q + 1) * Kp, 0.f)), ...);
}

}  // namespace

torch::Tensor gather_depthwise3x3(const torch::Tensor& x, const torch::Tensor& index, const torch::Tensor& weight_t,
                                  int64_t stride) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat && x.device().is_cpu(),
              "gather_depthwise3x3: x must be a float32 CPU tensor (N, C, H, W)");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "gather_depthwise3x3: x must be channels_last");
  TORCH_CHECK(index.dim() == 1 && index.scalar_type() == torch::kInt && index.is_contiguous(),
              "gather_depthwise3x3: index must be a contiguous int32 vector");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = index.size(0);
  TORCH_CHECK(weight_t.dim() == 2 && weight_t.size(0) == 9 && weight_t.size(1) == K &&
                  weight_t.scalar_type() == torch::kFloat && weight_t.is_contiguous(),
              "gather_depthwise3x3: weight_t must be a contiguous float32 (9, len(index))");
  TORCH_CHECK(stride == 1 || stride == 2, "gather_depthwise3x3: stride must be 1 or 2");
  const int32_t* ip = index.data_ptr<int32_t>();
  for (int64_t k = 0; k < K; ++k)
    TORCH_CHECK(ip[k] >= 0 && ip[k] < C, "gather_depthwise3x3: index out of range: ", ip[k], " of ", C, " channels");
  const int64_t Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
  auto out = torch::empty({N, K, Ho, Wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (N == 0 || K == 0 || H == 0 || W == 0) return out;
  const int64_t Kp = (K + kBlock - 1) / kBlock * kBlock;
  std::vector<float> w(9 * Kp, 0.f);  // weights (9, Kp), zero beyond K
  for (int t = 0; t < 9; ++t) std::memcpy(w.data() + t * Kp, weight_t.data_ptr<float>() + t * K, K * sizeof(float));
  const float* wp = w.data();
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t Wp = W + 2;

  at::parallel_for(0, N * Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> ring(3 * Wp * Kp), zero(Wp * Kp, 0.f);
    int64_t held[3] = {-1, -1, -1};  // the input row (n * H + y) each ring slot holds
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / Ho, yo = r % Ho;
      const float* rows[3];
      for (int ty = 0; ty < 3; ++ty) {
        const int64_t yi = yo * stride - 1 + ty;
        if (yi < 0 || yi >= H) {
          rows[ty] = zero.data();
          continue;
        }
        const int64_t key = n * H + yi;
        float* row = ring.data() + (yi % 3) * Wp * Kp;
        rows[ty] = row;
        if (held[yi % 3] == key) continue;
        held[yi % 3] = key;
        // Row `key` of x, channels index[0..K), into `row`: W + 2 pixels of Kp floats, a zero
        // pixel on each side, zero channels from K to Kp.
        for (int64_t k = 0; k < Kp; ++k) row[k] = row[(W + 1) * Kp + k] = 0.f;
        const float* src = xp + key * W * C;
        int64_t xi = 0;
        for (; xi + 8 <= W; xi += 8) gather_pixels(src + xi * C, row + (xi + 1) * Kp, C, ip, K, Kp, Eight{});
        for (; xi + 4 <= W; xi += 4) gather_pixels(src + xi * C, row + (xi + 1) * Kp, C, ip, K, Kp, Four{});
        for (; xi < W; ++xi) gather_pixels(src + xi * C, row + (xi + 1) * Kp, C, ip, K, Kp, One{});
      }
      float* o = op + r * Wo * K;
      for (int64_t kb = 0; kb < Kp; kb += kBlock) {
        float wb[9][kBlock];
        for (int t = 0; t < 9; ++t)
          for (int j = 0; j < kBlock; ++j) wb[t][j] = wp[t * Kp + kb + j];
        for (int64_t xo = 0; xo < Wo; ++xo) {
          const int64_t at = xo * stride * Kp + kb;
          const float* a0 = rows[0] + at;
          const float* a1 = rows[1] + at;
          const float* a2 = rows[2] + at;
          float acc[kBlock];
          for (int j = 0; j < kBlock; ++j)
            acc[j] = a0[j] * wb[0][j] + a0[Kp + j] * wb[1][j] + a0[2 * Kp + j] * wb[2][j] + a1[j] * wb[3][j] +
                     a1[Kp + j] * wb[4][j] + a1[2 * Kp + j] * wb[5][j] + a2[j] * wb[6][j] + a2[Kp + j] * wb[7][j] +
                     a2[2 * Kp + j] * wb[8][j];
          float* d = o + xo * K + kb;
          if (kb + kBlock <= K) {
            for (int j = 0; j < kBlock; ++j) d[j] = acc[j];
          } else {
            for (int64_t j = 0; j < K - kb; ++j) d[j] = acc[j];
          }
        }
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gather_depthwise3x3", &gather_depthwise3x3, "depthwise 3x3 conv of x[:, index] (channels_last, float32)");
}
